"""
Migrations across the whole replication stack, in one process: two real
PostgreSQL 15 databases, the real connectors, the real port-5433 publisher
they subscribe to, the embedded hub, and the migrations API on a real socket.

Checks that rows keep flowing both ways before, between and after a
create-table and an add-column migration, that a database migrated later
than the other catches up, and that failed migrations leave replication
running.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import tempfile

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.server import Site

from electric.config import Config
from electric.http.migrations import install_routes
from electric.http.status import HttpApi
from electric.migrations.migrator import Migrator
from electric.hub.embedded import EmbeddedHub
from electric.hub.offsets import OffsetStore
from electric.postgres.source.connector import ConnectorService
from electric.postgres.publisher.credentials import SubscriberCredentials
from electric.postgres.publisher.service import PublisherService
from electric.schema import SchemaRegistry
from tests import pgcluster
from tests.pgcluster import PASSWORD, USER, free_port
from tests.test_migrations import write_migration
from tests.polling import wait_until
from tests.hub_helpers import read_snapshot

_numbers = itertools.count(1)


def clusters():
    """Two clusters shared with the other migration test modules (each test has its own databases)."""
    return [pgcluster.shared_cluster("migrations-a"), pgcluster.shared_cluster("migrations-b")]


BASE_SCHEMA = """
CREATE TABLE entries (id text PRIMARY KEY, content text NOT NULL);
ALTER TABLE entries REPLICA IDENTITY FULL;
"""


class MigrationsAcrossReplication(unittest.TestCase):
    timeout = 300

    def setUp(self):
        self.pgs = clusters()
        n = next(_numbers) + os.getpid() % 1000 * 100
        self.db = f"mig_e2e_{n}"
        self.slot = f"mig_slot_{n}"
        for pg in self.pgs:
            pg.psql(f"CREATE DATABASE {self.db}", dbname="postgres")
            pg.psql(BASE_SCHEMA, dbname=self.db)
            self.addCleanup(self._drop, pg)
        self.tmp = tempfile.mkdtemp(prefix="electric-mig-e2e-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.dir = os.path.join(self.tmp, "migrations")
        urls = [f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{pg.port}/{self.db}" for pg in self.pgs]
        self.config = Config.from_environ({
            "CONNECTORS": f"postgres_1={urls[0]};postgres_2={urls[1]}",
            "POSTGRES_SLOT": self.slot,
            "ELECTRIC_DATA_DIR": self.tmp,
            "ELECTRIC_HOST": "127.0.0.1",
            "LISTEN_HOST": "127.0.0.1",
            "POSTGRES_REPLICATION_PORT": str(free_port()),
            "MIGRATIONS_DIR": self.dir,
        })
        self.hub = EmbeddedHub(os.path.join(self.tmp, "hub"), compact_interval=0)
        self.hub.startService()
        self.addCleanup(self.hub.stopService)
        registry = SchemaRegistry()
        names = [c.name for c in self.config.connectors]
        creds = SubscriberCredentials(self.tmp, names)
        creds.startService()
        offsets = OffsetStore(os.path.join(self.tmp, "offsets.dat"))
        offsets.startService()
        self.addCleanup(offsets.stopService)
        self.publisher = PublisherService(self.config, self.hub, registry, creds, offsets)
        self.publisher.startService()
        self.addCleanup(self.publisher.stopService)
        self.connectors = {}
        for c in self.config.connectors:
            svc = ConnectorService(self.config, c, self.hub, registry, creds,
                                   publisher_ready=self.publisher.when_listening, echo=self.publisher.echo)
            svc.startService()
            self.addCleanup(svc.stopService)
            self.connectors[c.name] = svc
        self.notified = []
        self.migrator = Migrator(self.config, self.connectors,
                                 notify_migration=lambda *a: self.notified.append(a), poll_interval=0,
                                 hub=self.hub, registry=registry)
        api = HttpApi(self.config, self.hub, self.connectors)
        install_routes(api.app, self.migrator)
        self.port = reactor.listenTCP(0, Site(api.resource()), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=self.pool)
        return wait_until(lambda: all(s.state == "ready" for s in self.connectors.values()),
                          what="both connectors ready")

    def _drop(self, pg):
        pg.psql(f'ALTER SUBSCRIPTION "{self._sub(pg)}" DISABLE', dbname=self.db, check=False)
        pg.psql(f'ALTER SUBSCRIPTION "{self._sub(pg)}" SET (slot_name = NONE)', dbname=self.db, check=False)
        pg.psql(f'DROP SUBSCRIPTION IF EXISTS "{self._sub(pg)}"', dbname=self.db, check=False)
        pg.psql(f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                f"WHERE slot_name = '{self.slot}'", dbname="postgres", check=False)
        pg.psql(f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)", dbname="postgres", check=False)

    def _sub(self, pg):
        return "postgres_1" if pg is self.pgs[0] else "postgres_2"

    # -- helpers --

    def sql(self, i, text):
        """psql in a thread: the reactor keeps serving the subscribers meanwhile."""
        return threads.deferToThread(lambda: self.pgs[i].psql(text, dbname=self.db).strip())

    def wait_sql(self, i, text, expected, timeout=60.0):
        @defer.inlineCallbacks
        def check():
            out = yield threads.deferToThread(
                lambda: self.pgs[i].psql(text, dbname=self.db, check=False).strip())
            return out == expected
        d = wait_until(check, timeout, what=f"{text!r} == {expected!r} on database {i + 1}")

        @defer.inlineCallbacks
        def diag(f):
            snap = yield read_snapshot(self.hub, [("public", "items")])
            print("HUB items", [(r.key, dict(r.row)) for r in snap.rows])
            for j in (0, 1):
                print("DB", j, self.pgs[j].psql("SELECT srrelid::regclass, srsubstate FROM pg_subscription_rel", dbname=self.db))
                print("LOG", j, self.pgs[j].log()[-3000:])
            for c in self.connectors.values():
                print(c.status())
            return f
        d.addErrback(diag)
        return d

    @defer.inlineCallbacks
    def put(self, path, vsn):
        headers = Headers({b"content-type": [b"application/json"]})
        body = FileBodyProducer(io.BytesIO(json.dumps({"vsn": vsn}).encode()))
        response = yield self.agent.request(b"PUT", (self.base + path).encode(), headers, body)
        text = yield readBody(response)
        return response.code, text.decode()

    @defer.inlineCallbacks
    def get(self, path):
        response = yield self.agent.request(b"GET", (self.base + path).encode())
        text = yield readBody(response)
        return response.code, text.decode()

    def add(self, vsn, sql):
        write_migration(self.dir, vsn, sql)

    @defer.inlineCallbacks
    def assert_entries_flow(self, key):
        """A row written on each side arrives on the other."""
        yield self.sql(0, f"INSERT INTO entries VALUES ('{key}_a', 'from 1')")
        yield self.sql(1, f"INSERT INTO entries VALUES ('{key}_b', 'from 2')")
        for i in (0, 1):
            yield self.wait_sql(i, f"SELECT count(*) FROM entries WHERE id IN ('{key}_a', '{key}_b')", "2")

    # -- tests --

    @defer.inlineCallbacks
    def test_create_table_then_add_column_on_both(self):
        yield self.assert_entries_flow("before")
        self.add("1_create_items", "CREATE TABLE items (id text PRIMARY KEY, content text);\n"
                                   "ALTER TABLE items REPLICA IDENTITY FULL;")
        code, text = yield self.put("/api/migrations", "1_create_items")
        self.assertEqual(code, 200, text)
        self.assertEqual([c.state for c in self.connectors.values()], ["ready", "ready"])

        yield self.sql(0, "INSERT INTO items VALUES ('i1', 'written on 1')")
        yield self.sql(1, "INSERT INTO items VALUES ('i2', 'written on 2')")
        for i in (0, 1):
            yield self.wait_sql(i, "SELECT string_agg(id || '=' || content, ',' ORDER BY id) FROM items",
                                "i1=written on 1,i2=written on 2")
        yield self.assert_entries_flow("between")

        self.add("2_add_content_b", "ALTER TABLE items ADD COLUMN content_b text;")
        code, text = yield self.put("/api/migrations", "2_add_content_b")
        self.assertEqual(code, 200, text)
        yield self.sql(0, "INSERT INTO items VALUES ('i3', 'new on 1', 'b1')")
        yield self.sql(1, "UPDATE items SET content_b = 'b2' WHERE id = 'i2'")
        expected = "i1=written on 1/-,i2=written on 2/b2,i3=new on 1/b1"
        for i in (0, 1):
            yield self.wait_sql(
                i, "SELECT string_agg(id || '=' || content || '/' || coalesce(content_b, '-'), ',' ORDER BY id) "
                   "FROM items", expected)
        yield self.assert_entries_flow("after")

        code, text = yield self.get("/api/migrations")
        self.assertEqual(code, 200)
        self.assertEqual([(e["origin"], e["vsn"]) for e in json.loads(text)],
                         [("postgres_1", "2_add_content_b"), ("postgres_2", "2_add_content_b")])
        self.assertEqual([n[2] for n in self.notified], ["1_create_items", "2_add_content_b"])

    @defer.inlineCallbacks
    def test_one_database_first_the_other_later_and_failures_keep_replicating(self):
        self.add("10_create_later", "CREATE TABLE later_t (id text PRIMARY KEY, content text);")
        code, text = yield self.put("/api/migrations/postgres_1", "10_create_later")
        self.assertEqual((code, text), (200, "ok"))
        code, text = yield self.get("/api/migrations/postgres_2")
        self.assertEqual(json.loads(text)["pending_migrations"], ["10_create_later"])
        self.assertEqual(self.migrator.status()["postgres_2"]["pending_migrations"], ["10_create_later"])

        # the migrated database writes to the new table; everything else keeps flowing
        yield self.sql(0, "INSERT INTO later_t VALUES ('l1', 'early')")
        yield self.assert_entries_flow("lagging")

        # failures: none of them stops replication
        self.add("11_broken", "CREATE TABLE broken_t (id text PRIMARY KEY);\nALTER TABLE broken_t ADD COLUMN x nosuchtype;")
        code, text = yield self.put("/api/migrations", "11_broken")
        self.assertEqual(code, 422, text)
        for result in json.loads(text)["results"]:
            self.assertIn('type "nosuchtype" does not exist', result["error"])
        code, text = yield self.put("/api/migrations/postgres_1", "10_create_later")
        self.assertEqual(code, 409)
        self.assertIn(":already_migrated", text)
        code, text = yield self.put("/api/migrations", "12_missing")
        self.assertEqual(code, 404)
        self.assertIn(":vsn_not_found", text)
        self.assertEqual([c.state for c in self.connectors.values()], ["ready", "ready"])
        yield self.assert_entries_flow("after_failures")

        # the other database catches up and both write to the new table
        code, text = yield self.put("/api/migrations/postgres_2", "10_create_later")
        self.assertEqual((code, text), (200, "ok"))
        yield self.sql(1, "INSERT INTO later_t VALUES ('l2', 'from 2')")
        yield self.sql(0, "INSERT INTO later_t VALUES ('l3', 'from 1')")
        yield self.wait_sql(0, "SELECT count(*) FROM later_t WHERE id IN ('l2', 'l3')", "2")
        yield self.wait_sql(1, "SELECT count(*) FROM later_t WHERE id IN ('l2', 'l3')", "2")
        # the row written before this database had the table was kept for it, not lost
        yield self.wait_sql(1, "SELECT content FROM later_t WHERE id = 'l1'", "early")
        code, text = yield self.get("/api/migrations")
        self.assertNotIn("pending_migrations", text)

    @defer.inlineCallbacks
    def test_add_column_on_one_database_first(self):
        self.add("20_add_col", "ALTER TABLE entries ADD COLUMN extra text;")
        code, text = yield self.put("/api/migrations/postgres_1", "20_add_col")
        self.assertEqual((code, text), (200, "ok"))
        # database 2 does not have the column yet: rows still arrive there without it
        yield self.sql(0, "INSERT INTO entries VALUES ('c1', 'one', 'extra on 1')")
        yield self.wait_sql(1, "SELECT content FROM entries WHERE id = 'c1'", "one")
        yield self.sql(1, "INSERT INTO entries VALUES ('c2', 'two')")
        yield self.wait_sql(0, "SELECT content || '/' || coalesce(extra, '-') FROM entries WHERE id = 'c2'", "two/-")
        # once migrated, database 2 takes the column too
        code, text = yield self.put("/api/migrations/postgres_2", "20_add_col")
        self.assertEqual((code, text), (200, "ok"))
        # the value written on 1 while 2 lacked the column is not lost
        yield self.wait_sql(1, "SELECT extra FROM entries WHERE id = 'c1'", "extra on 1")
        yield self.sql(0, "UPDATE entries SET extra = 'later' WHERE id = 'c2'")
        yield self.wait_sql(1, "SELECT extra FROM entries WHERE id = 'c2'", "later")
        yield self.sql(1, "INSERT INTO entries VALUES ('c3', 'three', 'extra on 2')")
        yield self.wait_sql(0, "SELECT extra FROM entries WHERE id = 'c3'", "extra on 2")
