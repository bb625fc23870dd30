"""
The migrations HTTP API and CLI over real sockets: a Klein app with the
migration routes and a `Migrator` over two real PostgreSQL 15 databases.

The connectors here are minimal stand-ins (state + refresh) so the API's
own behaviour is tested in isolation; the full stack (real connectors,
replication across the migration) is in test_migrations_e2e.py.
"""

from __future__ import annotations

import io
import itertools
import json
import shutil
import tempfile
from argparse import Namespace

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.server import Site

from electric.migrations import cli as migrations_cli
from electric.config import Config
from electric.http.migrations import install_routes
from electric.http.status import HttpApi
from electric.migrations.migrator import Migrator
from electric.migrations.migration import migration_hash
from tests import pgcluster
from tests.pgcluster import free_port
from tests.test_migrations import write_migration

_db_numbers = itertools.count(1)


def clusters():
    """Two clusters shared with the other migration test modules (each test has its own databases)."""
    return [pgcluster.shared_cluster("migrations-a"), pgcluster.shared_cluster("migrations-b")]


class StubConnector:
    """Stands in for ConnectorService: a state and a refresh() that records calls."""

    def __init__(self, name):
        self.name = name
        self.state = "ready"
        self.refreshes = 0
        self.refresh_error = None

    @property
    def ready(self):
        return self.state == "ready"

    def status(self):
        return {"state": self.state}

    def refresh(self):
        self.refreshes += 1
        if self.refresh_error is not None:
            return defer.fail(self.refresh_error)
        return defer.succeed(None)


class ApiTestBase(unittest.TestCase):
    def setUp(self):
        self.pgs = clusters()
        n = next(_db_numbers)
        self.dbname = f"mig_http_{n}"
        for pg in self.pgs:
            pg.psql(f"CREATE DATABASE {self.dbname}", dbname="postgres")
        self.dir = tempfile.mkdtemp(prefix="electric-migrations-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        urls = [pg.url.rsplit("/", 1)[0] + "/" + self.dbname for pg in self.pgs]
        self.config = Config.from_environ({
            "CONNECTORS": f"postgres_1={urls[0]};postgres_2={urls[1]}",
            "MIGRATIONS_DIR": self.dir,
        })
        self.connectors = {"postgres_1": StubConnector("postgres_1"), "postgres_2": StubConnector("postgres_2")}
        self.notified = []
        self.migrator = Migrator(self.config, self.connectors,
                                 notify_migration=lambda *a: self.notified.append(a),
                                 poll_interval=0)
        # the real shared app of the status API, as the service wires it
        self.api = HttpApi(self.config, None, self.connectors)
        install_routes(self.api.app, self.migrator)
        self.port = reactor.listenTCP(0, Site(self.api.resource()), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, pool=self.pool)
        self.addCleanup(self.pool.closeCachedConnections)

    def psql(self, i, sql):
        return self.pgs[i].psql(sql, dbname=self.dbname).strip()

    def add(self, vsn, sql):
        write_migration(self.dir, vsn, sql)

    @defer.inlineCallbacks
    def http(self, method, path, body=None, content_type="application/json"):
        headers = Headers({})
        producer = None
        if body is not None:
            from twisted.web.client import FileBodyProducer
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            producer = FileBodyProducer(io.BytesIO(data))
            if content_type:
                headers.addRawHeader(b"content-type", content_type.encode())
        response = yield self.agent.request(method.encode(), (self.base + path).encode(), headers, producer)
        text = yield readBody(response)
        return response.code, text.decode()

    def put(self, path, vsn=None, **kw):
        return self.http("PUT", path, {"vsn": vsn}, **kw)

    def cli(self, *argv, environ=None):
        """Run the CLI in a thread (it blocks on HTTP); (exit code, stdout, stderr)."""
        out, err = io.StringIO(), io.StringIO()
        args = Namespace(name=None, connector=None, url=None, timeout=60.0)
        rest = list(argv)
        while rest:
            item = rest.pop(0)
            if item == "--connector":
                args.connector = rest.pop(0)
            elif item == "--url":
                args.url = rest.pop(0)
            else:
                args.name = item
        env = {"ELECTRIC_URL": self.base} if environ is None else environ
        d = threads.deferToThread(migrations_cli.run, args, env, out, err)
        return d.addCallback(lambda code: (code, out.getvalue(), err.getvalue()))


class ApplyAndListTest(ApiTestBase):
    @defer.inlineCallbacks
    def test_one_database_first_then_the_other(self):
        code, text = yield self.http("GET", "/api/migrations")
        self.assertEqual((code, text), (200, '["unknown","unknown"]'))

        self.add("1666288253_create_items", "CREATE TABLE items (id text PRIMARY KEY, content text);")
        code, text = yield self.put("/api/migrations/postgres_1", "1666288253_create_items")
        self.assertEqual((code, text), (200, "ok"))
        self.assertEqual(self.connectors["postgres_1"].refreshes, 1)
        self.assertEqual(self.connectors["postgres_2"].refreshes, 0)
        self.assertEqual(self.psql(0, "SELECT to_regclass('items') IS NOT NULL"), "t")
        self.assertEqual(self.psql(1, "SELECT to_regclass('items') IS NULL"), "t")

        # fractional seconds exactly as Postgres prints them, in UTC, with T and Z
        applied_at = self.psql(0, "SET timezone = 'UTC'; SET datestyle = 'ISO'; "
                                  "SELECT applied_at::timestamp::text FROM electric.migrations")
        h = migration_hash(open(f"{self.dir}/1666288253_create_items/postgres.sql", "rb").read())
        code, text = yield self.http("GET", "/api/migrations")
        self.assertEqual(code, 200)
        expected_p1 = ('{"applied_at":"%s","hash":"%s","origin":"postgres_1","vsn":"1666288253_create_items"}'
                       % (applied_at.replace(" ", "T") + "Z", h))
        expected_p2 = ('{"applied_at":null,"hash":null,"origin":"postgres_2",'
                       '"pending_migrations":["1666288253_create_items"],"vsn":null}')
        self.assertEqual(text, f"[{expected_p1},{expected_p2}]")
        code, text = yield self.http("GET", "/api/migrations/postgres_1")
        self.assertEqual((code, text), (200, expected_p1))
        code, text = yield self.http("GET", "/api/migrations/postgres_2")
        self.assertEqual((code, text), (200, expected_p2))
        self.assertEqual(self.migrator.status()["postgres_2"]["pending_migrations"], ["1666288253_create_items"])
        code, text = yield self.http("GET", "/api/migrations/nope")
        self.assertEqual((code, text), (200, '"unknown"'))

        # apply to every connector: the first has it already, the second catches up
        code, text = yield self.put("/api/migrations", "1666288253_create_items")
        body = json.loads(text)
        self.assertEqual(code, 207)
        self.assertEqual([(r["origin"], r["status"], r["ok"]) for r in body["results"]],
                         [("postgres_1", 409, False), ("postgres_2", 200, True)])
        self.assertIn(":already_migrated", body["results"][0]["error"])
        self.assertEqual(self.psql(1, "SELECT to_regclass('items') IS NOT NULL"), "t")
        self.assertEqual(self.connectors["postgres_1"].refreshes, 1)
        self.assertEqual(self.connectors["postgres_2"].refreshes, 1)
        self.assertEqual(self.notified, [("", "", "1666288253_create_items", h)])

        code, text = yield self.http("GET", "/api/migrations")
        self.assertNotIn("pending_migrations", text)
        self.assertEqual([e["vsn"] for e in json.loads(text)], ["1666288253_create_items"] * 2)
        self.assertEqual(self.migrator.status()["postgres_2"],
                         {"latest": "1666288253_create_items", "pending_migrations": []})

    @defer.inlineCallbacks
    def test_all_connectors_create_table_then_add_column(self):
        self.add("1_create", "CREATE TABLE things (id text PRIMARY KEY, content text);")
        self.add("2_add_column", "ALTER TABLE things ADD COLUMN content_b text;")
        code, text = yield self.put("/api/migrations", "1_create")
        self.assertEqual(code, 200, text)
        body = json.loads(text)
        self.assertTrue(body["ok"])
        self.assertEqual([r["origin"] for r in body["results"]], ["postgres_1", "postgres_2"])
        self.assertTrue(all(r["applied_at"].endswith("Z") for r in body["results"]))
        for i in (0, 1):
            self.psql(i, "INSERT INTO things VALUES ('a', 'before')")
        code, text = yield self.put("/api/migrations", "2_add_column")
        self.assertEqual(code, 200, text)
        for i in (0, 1):
            self.psql(i, "INSERT INTO things VALUES ('b', 'after', 'extra')")
            self.assertEqual(self.psql(i, "SELECT string_agg(id || ':' || coalesce(content_b, '-'), ',' "
                                          "ORDER BY id) FROM things"), "a:-,b:extra")
            self.assertEqual(self.psql(i, "SELECT string_agg(version, ',' ORDER BY id) FROM electric.migrations"),
                             "1_create,2_add_column")
        h1 = migration_hash(b"CREATE TABLE things (id text PRIMARY KEY, content text);")
        h2 = migration_hash(b"ALTER TABLE things ADD COLUMN content_b text;")
        self.assertEqual(self.notified, [("", "", "1_create", h1), ("1_create", h1, "2_add_column", h2)])
        self.assertEqual(self.connectors["postgres_1"].refreshes, 2)
        self.assertEqual(self.connectors["postgres_2"].refreshes, 2)


class ErrorsTest(ApiTestBase):
    @defer.inlineCallbacks
    def assertNothingApplied(self):
        self.assertEqual([c.refreshes for c in self.connectors.values()], [0, 0])
        self.assertEqual(self.notified, [])
        code, text = yield self.http("GET", "/api/migrations")
        self.assertEqual((code, text), (200, '["unknown","unknown"]'))

    @defer.inlineCallbacks
    def test_unknown_vsn(self):
        for path in ("/api/migrations/postgres_1", "/api/migrations"):
            code, text = yield self.put(path, "999_missing")
            self.assertEqual(code, 404)
            self.assertIn(":vsn_not_found", json.loads(text)["error"])
        yield self.assertNothingApplied()

    @defer.inlineCallbacks
    def test_bad_requests(self):
        cases = [
            ({"vsn": "../x"}, "application/json", 400, "Bad request"),
            ({"vsn": ""}, "application/json", 400, "Bad request"),
            ({"vsn": 5}, "application/json", 400, "Bad request"),
            ({"name": "1_x"}, "application/json", 400, "vsn"),
            (["1_x"], "application/json", 400, "vsn"),
            (b"{not json", "application/json", 400, "not JSON"),
            (b"\xff\xfe", "application/json", 400, "not JSON"),
            ({"vsn": "1_x"}, "text/plain", 415, "application/json"),
            ({"vsn": "1_x"}, None, 415, "application/json"),
        ]
        for body, ctype, status, fragment in cases:
            for path in ("/api/migrations/postgres_1", "/api/migrations"):
                code, text = yield self.http("PUT", path, body, content_type=ctype)
                self.assertEqual(code, status, (body, ctype, path, text))
                self.assertIn(fragment, json.loads(text)["error"])
        yield self.assertNothingApplied()

    @defer.inlineCallbacks
    def test_json_with_charset_is_accepted(self):
        self.add("3_ok", "CREATE TABLE t3 (id int PRIMARY KEY);")
        code, text = yield self.put("/api/migrations/postgres_2", "3_ok",
                                    content_type="application/json; charset=utf-8")
        self.assertEqual((code, text), (200, "ok"))

    @defer.inlineCallbacks
    def test_unknown_connector(self):
        self.add("4_ok", "CREATE TABLE t4 (id int PRIMARY KEY);")
        code, text = yield self.put("/api/migrations/postgres_9", "4_ok")
        self.assertEqual(code, 404)
        self.assertIn("postgres_9", json.loads(text)["error"])
        yield self.assertNothingApplied()

    @defer.inlineCallbacks
    def test_broken_sql(self):
        self.add("5_broken", "CREATE TABLE t5 (id int PRIMARY KEY);\nALTER TABLE t5 ADD COLUMN c nosuchtype;")
        code, text = yield self.put("/api/migrations/postgres_1", "5_broken")
        self.assertEqual(code, 422)
        body = json.loads(text)
        self.assertIn('type "nosuchtype" does not exist', body["error"])
        self.assertEqual(body["sqlstate"], "42704")
        self.assertEqual(self.psql(0, "SELECT to_regclass('t5') IS NULL"), "t")
        code, text = yield self.put("/api/migrations", "5_broken")
        self.assertEqual(code, 422)
        self.assertEqual([r["status"] for r in json.loads(text)["results"]], [422, 422])
        yield self.assertNothingApplied()

    @defer.inlineCallbacks
    def test_file_with_commit_is_refused_before_any_database(self):
        self.add("6_commit", "CREATE TABLE t6 (id int PRIMARY KEY); COMMIT;")
        code, text = yield self.put("/api/migrations", "6_commit")
        self.assertEqual(code, 422)
        self.assertIn("COMMIT", json.loads(text)["error"])
        yield self.assertNothingApplied()

    @defer.inlineCallbacks
    def test_already_applied(self):
        self.add("7_once", "CREATE TABLE t7 (id int PRIMARY KEY);")
        code, _ = yield self.put("/api/migrations/postgres_1", "7_once")
        self.assertEqual(code, 200)
        code, text = yield self.put("/api/migrations/postgres_1", "7_once")
        self.assertEqual(code, 409)
        body = json.loads(text)
        self.assertIn(":already_migrated", body["error"])
        self.assertIn("7_once", body["error"])
        self.assertEqual(self.connectors["postgres_1"].refreshes, 1)
        self.add("7_once", "CREATE TABLE t7_changed (id int PRIMARY KEY);")
        code, text = yield self.put("/api/migrations/postgres_1", "7_once")
        self.assertEqual(code, 409)
        self.assertIn(":already_migrated_bad_md5", json.loads(text)["error"])

    @defer.inlineCallbacks
    def test_connector_not_ready(self):
        self.add("8_wait", "CREATE TABLE t8 (id int PRIMARY KEY);")
        self.connectors["postgres_2"].state = "init"
        code, text = yield self.put("/api/migrations/postgres_2", "8_wait")
        self.assertEqual(code, 503)
        self.assertIn("{:invalid_state, :init}", json.loads(text)["error"])
        self.assertEqual(self.psql(1, "SELECT to_regclass('t8') IS NULL"), "t")
        self.connectors["postgres_2"].state = "ready"
        code, text = yield self.put("/api/migrations/postgres_2", "8_wait")
        self.assertEqual((code, text), (200, "ok"))

    @defer.inlineCallbacks
    def test_refresh_failure_is_reported_and_migration_kept(self):
        self.add("9_refresh", "CREATE TABLE t9 (id int PRIMARY KEY);")
        self.connectors["postgres_1"].refresh_error = RuntimeError("subscription refresh exploded")
        code, text = yield self.put("/api/migrations/postgres_1", "9_refresh")
        self.assertEqual(code, 500)
        error = json.loads(text)["error"]
        self.assertIn(":refresh_failed", error)
        self.assertIn("subscription refresh exploded", error)
        self.assertEqual(self.psql(0, "SELECT version FROM electric.migrations"), "9_refresh")
        self.flushLoggedErrors(RuntimeError)

    @defer.inlineCallbacks
    def test_unreachable_database(self):
        self.add("10_down", "CREATE TABLE t10 (id int PRIMARY KEY);")
        config = Config.from_environ({
            "CONNECTORS": f"postgres_1=postgresql://electric:password@127.0.0.1:{free_port()}/electric",
            "MIGRATIONS_DIR": self.dir,
        })
        migrator = Migrator(config, {"postgres_1": StubConnector("postgres_1")}, poll_interval=0)
        with self.assertRaises(Exception) as cm:
            yield migrator.apply("postgres_1", "10_down")
        self.assertEqual(cm.exception.status, 503)
        entries = yield migrator.migrations_json()
        self.assertEqual(entries, ["unknown"])


class ConcurrencyTest(ApiTestBase):
    @defer.inlineCallbacks
    def test_same_migration_sent_twice_at_once(self):
        self.add("50_race", "CREATE TABLE t50 (id int PRIMARY KEY);")
        results = yield defer.gatherResults([
            self.put("/api/migrations/postgres_1", "50_race"),
            self.put("/api/migrations/postgres_1", "50_race"),
            self.put("/api/migrations", "50_race"),
        ])
        everywhere = {r["origin"]: r["status"] for r in json.loads(results[2][1])["results"]}
        # whichever request came first applied it to postgres_1; the others were told it is there
        postgres_1 = sorted([results[0][0], results[1][0], everywhere["postgres_1"]])
        self.assertEqual(postgres_1, [200, 409, 409])
        self.assertEqual(everywhere["postgres_2"], 200)
        self.assertEqual(self.psql(0, "SELECT count(*) FROM electric.migrations"), "1")
        self.assertEqual(self.psql(1, "SELECT count(*) FROM electric.migrations"), "1")
        self.assertEqual(self.connectors["postgres_1"].refreshes, 1)


class RoutingTest(ApiTestBase):
    @defer.inlineCallbacks
    def test_other_methods_and_paths_are_not_found(self):
        for method, path in (("DELETE", "/api/migrations"), ("POST", "/api/migrations/postgres_1"),
                             ("GET", "/api/migrations/postgres_1/extra")):
            code, _ = yield self.http(method, path)
            self.assertEqual(code, 404, (method, path))

    @defer.inlineCallbacks
    def test_status_routes_still_answer(self):
        code, text = yield self.http("GET", "/api/status")
        self.assertEqual(code, 200)
        self.assertIn('"connectors":{"postgres_1":', text)

    @defer.inlineCallbacks
    def test_connectors_registered_after_construction(self):
        self.connectors["postgres_3"] = StubConnector("postgres_3")
        self.add("30_late", "CREATE TABLE t30 (id int PRIMARY KEY);")
        code, text = yield self.put("/api/migrations/postgres_3", "30_late")
        self.assertEqual(code, 404)
        self.assertIn("not in CONNECTORS", json.loads(text)["error"])
        del self.connectors["postgres_3"]


class CliTest(ApiTestBase):
    @defer.inlineCallbacks
    def test_apply_everywhere_then_again(self):
        self.add("20_cli", "CREATE TABLE t20 (id int PRIMARY KEY);")
        code, out, err = yield self.cli("20_cli")
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertEqual(len(lines), 2)
        self.assertTrue(lines[0].startswith("postgres_1: applied 20_cli (hash "), lines)
        self.assertTrue(lines[1].startswith("postgres_2: applied 20_cli (hash "), lines)
        code, out, err = yield self.cli("20_cli")
        self.assertEqual(code, 1)
        self.assertIn("postgres_1: FAILED (409): :already_migrated", out)
        self.assertIn("postgres_2: FAILED (409): :already_migrated", out)

    @defer.inlineCallbacks
    def test_one_connector(self):
        self.add("21_cli", "CREATE TABLE t21 (id int PRIMARY KEY);")
        code, out, _ = yield self.cli("21_cli", "--connector", "postgres_2")
        self.assertEqual((code, out), (0, "postgres_2: applied 21_cli\n"))
        self.assertEqual(self.psql(0, "SELECT to_regclass('t21') IS NULL"), "t")
        code, out, _ = yield self.cli("21_cli", "--connector", "postgres_2")
        self.assertEqual(code, 1)
        self.assertIn(":already_migrated", out)
        code, out, _ = yield self.cli("21_cli", "--connector", "postgres_7")
        self.assertEqual(code, 1)
        self.assertIn("postgres_7: FAILED (404)", out)

    @defer.inlineCallbacks
    def test_unknown_name_and_broken_sql(self):
        code, out, _ = yield self.cli("22_missing")
        self.assertEqual(code, 1)
        self.assertIn("FAILED (404)", out)
        self.assertIn(":vsn_not_found", out)
        self.add("23_broken", "CREATE TABLE t23 (id nosuchtype PRIMARY KEY);")
        code, out, _ = yield self.cli("23_broken")
        self.assertEqual(code, 1)
        self.assertEqual(out.count('type "nosuchtype" does not exist'), 2)

    @defer.inlineCallbacks
    def test_url_from_status_port_and_usage(self):
        self.add("24_port", "CREATE TABLE t24 (id int PRIMARY KEY);")
        code, out, err = yield self.cli("24_port", environ={"STATUS_PORT": str(self.port.getHost().port)})
        self.assertEqual(code, 0, err)
        code, out, err = yield self.cli(environ={})
        self.assertEqual(code, 1)
        self.assertIn("usage: electric apply-migration NAME", err)
        code, out, err = yield self.cli("bad-name", environ={})
        self.assertEqual(code, 2)
        self.assertIn("invalid migration name", err)
        code, out, err = yield self.cli("24_port", environ={"STATUS_PORT": str(free_port())})
        self.assertEqual(code, 1)
        self.assertIn("cannot reach Electric at http://127.0.0.1:", err)

    @defer.inlineCallbacks
    def test_module_entry_point(self):
        self.add("25_module", "CREATE TABLE t25 (id int PRIMARY KEY);")
        code = yield threads.deferToThread(
            migrations_cli.main, ["apply-migration", "25_module", "--url", self.base, "--connector", "postgres_1"])
        self.assertEqual(code, 0)
        self.assertEqual(self.psql(0, "SELECT version FROM electric.migrations"), "25_module")

