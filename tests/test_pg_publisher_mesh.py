"""
Two stock PostgreSQL 15 databases active-active through Electric, wired from
its components in-process: EmbeddedHub, a ConnectorService per database
(inbound stream, setup, upsert triggers, subscription back to port 5433)
and the PublisherService.  Each database's own apply worker writes what the
hub resolved; the tests only write SQL into the databases and compare them.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from electric.config import Config, parse_connectors
from electric.hub.embedded import EmbeddedHub
from electric.hub.offsets import OffsetStore
from electric.postgres.source.connector import ConnectorService
from electric.postgres.publisher.credentials import SubscriberCredentials
from electric.postgres.publisher.service import PublisherService
from electric.schema import SchemaRegistry
from tests.publisher_helpers import eventually, subscriber_errors
from tests.pgcluster import PASSWORD, PGBIN, USER, PgCluster, free_port
from tests.hub_helpers import read_snapshot
from tests.polling import poll

SCHEMA = """
CREATE TABLE items (id text PRIMARY KEY, content text, n int);
CREATE TABLE conflict_t (id int PRIMARY KEY, content text, other text);
ALTER TABLE conflict_t REPLICA IDENTITY FULL;
CREATE SEQUENCE load_seq;
"""


def table_text(pg, table):
    return pg.psql(f"SELECT coalesce(string_agg(t::text, '|' ORDER BY t::text), '') FROM {table} t").strip()


def same(a, b, table, expect=None, timeout=60.0):
    """Blocking (run in a thread): wait until `table` is identical on both (and equals `expect`)."""
    seen = {"a": "", "b": ""}

    def converged():
        ta, tb = seen["a"], seen["b"] = table_text(a, table), table_text(b, table)
        return ta == tb and (expect is None or ta == expect) and (ta,)

    try:
        return poll(converged, timeout=timeout, what=f"{table} identical on both", interval=0.2)[0]
    except AssertionError:
        raise AssertionError(f"{table} did not converge:\nA={seen['a'][:1500]!r}\nB={seen['b'][:1500]!r}"
                             f"\nexpected={expect!r}") from None


def pgbench(pg, script, transactions, clients=2):
    path = tempfile.mktemp(suffix=".sql")
    with open(path, "w") as f:
        f.write(script)
    try:
        import subprocess
        subprocess.run(
            [f"{PGBIN}/pgbench", "-n", "-h", "127.0.0.1", "-p", str(pg.port), "-U", USER,
             "-c", str(clients), "-t", str(transactions // clients), "-f", path, "electric"],
            env=dict(os.environ, PGPASSWORD=PASSWORD), check=True, capture_output=True, text=True)
    finally:
        os.unlink(path)



class ActiveActive(unittest.TestCase):
    timeout = 400

    @defer.inlineCallbacks
    def setUp(self):
        self.a, self.b = yield threads.deferToThread(lambda: (PgCluster().start(), PgCluster().start()))
        self.addCleanup(lambda: threads.deferToThread(self.b.destroy))
        self.addCleanup(lambda: threads.deferToThread(self.a.destroy))
        for pg in (self.a, self.b):
            yield threads.deferToThread(pg.psql, SCHEMA)
        self.dir = tempfile.mkdtemp(prefix="electric-mesh-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        problems = []
        connectors = parse_connectors(f"pg_a={self.a.url};pg_b={self.b.url}", problems)
        self.assertEqual(problems, [])
        config = Config(connectors=connectors, electric_host="127.0.0.1", postgres_replication_port=free_port(),
                        listen_host="127.0.0.1", data_dir=self.dir,
                        offset_storage_file=os.path.join(self.dir, "offsets.sqlite3"))
        self.hub = EmbeddedHub(os.path.join(self.dir, "hub"), reactor)
        registry = SchemaRegistry()
        credentials = SubscriberCredentials(self.dir, [c.name for c in connectors])
        self.offsets = OffsetStore(config.offset_storage_file)
        self.publisher = PublisherService(config, self.hub, registry, credentials, self.offsets, reactor)
        self.connectors = [ConnectorService(config, c, self.hub, registry, credentials,
                                            publisher_ready=self.publisher.when_listening, reactor=reactor,
                                            echo=self.publisher.echo)
                           for c in connectors]
        self.services = [self.hub, self.offsets, credentials, self.publisher] + self.connectors
        for s in self.services:
            s.startService()
        self.addCleanup(self._stop)
        yield eventually(lambda: all(c.state == "ready" for c in self.connectors), timeout=90)
        for pg in (self.a, self.b):
            yield threads.deferToThread(
                pg.wait_for, "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'", "0", 60)
            yield threads.deferToThread(
                pg.wait_for, "SELECT count(*) FROM pg_stat_subscription WHERE pid IS NOT NULL", "1", 60)

    @defer.inlineCallbacks
    def _stop(self):
        for s in reversed(self.services):
            yield defer.maybeDeferred(s.stopService)

    def run_sql(self, pg, sql):
        return threads.deferToThread(pg.psql, sql)

    def converge(self, table, expect=None, timeout=60.0):
        return threads.deferToThread(same, self.a, self.b, table, expect, timeout)

    @defer.inlineCallbacks
    def test_active_active(self):
        a, b = self.a, self.b
        # Writes on either side appear on the other: insert, update, delete, NULLs.
        yield self.run_sql(a, "INSERT INTO items VALUES ('a1', 'from A', 1), ('n1', NULL, NULL)")
        yield self.run_sql(b, "INSERT INTO items VALUES ('b1', 'from B', 2)")
        yield self.converge("items", "(a1,\"from A\",1)|(b1,\"from B\",2)|(n1,,)")
        yield self.run_sql(b, "UPDATE items SET content = 'changed on B', n = 10 WHERE id = 'a1'")
        yield self.run_sql(a, "DELETE FROM items WHERE id = 'b1'")
        yield self.converge("items", "(a1,\"changed on B\",10)|(n1,,)")

        # The same key written on both while B's subscription is disabled: one row, the same on both.
        yield self.run_sql(b, "ALTER SUBSCRIPTION pg_b DISABLE")
        yield eventually(lambda: not self.publisher.status()["slots"].get("pg_b", {}).get("streaming"))
        yield self.run_sql(a, "INSERT INTO items VALUES ('k', 'written on A', 1)")
        yield eventually(lambda: self.hub_row("items", ("k",)).addCallback(
            lambda row: row is not None and row.get("content") == "written on A"), timeout=30)
        yield self.run_sql(b, "INSERT INTO items VALUES ('k', 'written on B', 2)")
        # An update on B concurrent with a delete on A: the update wins on both.
        yield self.run_sql(a, "INSERT INTO conflict_t VALUES (1, 'start', 'x')")
        yield self.run_sql(b, "ALTER SUBSCRIPTION pg_b ENABLE")
        yield self.converge("conflict_t", "(1,start,x)")
        yield self.run_sql(b, "ALTER SUBSCRIPTION pg_b DISABLE")
        yield eventually(lambda: not self.publisher.status()["slots"].get("pg_b", {}).get("streaming"))
        yield self.run_sql(a, "DELETE FROM conflict_t WHERE id = 1")
        yield threads.deferToThread(a.wait_for, "SELECT count(*) FROM conflict_t", "0")
        # "Concurrent" means B's update reaches the hub after A's delete: wait for the delete there.
        yield eventually(lambda: self.hub_row("conflict_t", ("1",)).addCallback(lambda row: row is None), timeout=30)
        yield self.run_sql(b, "UPDATE conflict_t SET other = 'updated on B' WHERE id = 1")
        yield self.run_sql(b, "ALTER SUBSCRIPTION pg_b ENABLE")
        yield self.converge("conflict_t", "(1,start,\"updated on B\")")
        k = yield self.converge("items")
        self.assertIn("(k,\"written on B\",2)", k)  # B's write reached the hub last

        # Load in both directions at once.
        load_a = threads.deferToThread(
            pgbench, a, "INSERT INTO items VALUES ('A-' || nextval('load_seq'), 'load from A', 1);\n", 1000)
        load_b = threads.deferToThread(
            pgbench, b, "INSERT INTO items VALUES ('B-' || nextval('load_seq'), 'load from B', 2);\n", 1000)
        yield defer.gatherResults([load_a, load_b])
        rows = yield self.converge("items", timeout=120)
        self.assertEqual(rows.count("load from A"), 1000)
        self.assertEqual(rows.count("load from B"), 1000)
        self.assertEqual(subscriber_errors(a), [])
        self.assertEqual(subscriber_errors(b), [])

    @defer.inlineCallbacks
    def hub_row(self, table, key):
        snap = yield read_snapshot(self.hub, [("public", table)])
        for ch in snap.rows:
            if ch.key == key and not ch.deleted:
                return ch.row
        return None
