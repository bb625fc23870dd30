"""
User tables in schema "electric" replicate, end to end.  The dev role is
called "electric", so once that schema exists its unqualified CREATE TABLEs
land there (the original service's own load tests worked that way).  Two
databases and the real electric-sql client, in process: only Electric's
bookkeeping tables stay out, and a table skipped for a reason is reported.
"""

from __future__ import annotations

import os

from twisted.internet import defer, reactor
from twisted.trial import unittest

from electric.satellite.service import SatelliteService
from electric.schema import BOOKKEEPING_TABLES
from tests.publisher_helpers import subscriber_errors
from tests.mesh import InProcessMesh
from tests.node_client import NodeClient, ensure_installed
from tests.pgcluster import PgCluster
from tests.satellite_helpers import drain_autobahn_timers, eventually, satellite_config

NAMES = ("postgres_a", "postgres_b")

THINGS_SQLITE = {
    "name": "things",
    "columns": [
        {"name": "id", "type": "TEXT"},
        {"name": "content", "type": "TEXT"},
        {"name": "n", "type": "INTEGER"},
    ],
    "pk": ["id"],
}


class TablesInSchemaElectric(unittest.TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        ensure_installed()
        self.pg = PgCluster().start()
        self.addCleanup(self.pg.destroy)
        for name in NAMES:
            self.pg.psql(f"CREATE DATABASE {name}_db", dbname="postgres")
            # Unqualified, as role "electric" would write them.
            self.sql(name, "CREATE SCHEMA electric;"
                           "CREATE TABLE things (id text PRIMARY KEY, content text, n int4);"
                           "CREATE TABLE keyless (v text)")
            self.assertEqual(self.sql(name, "SELECT to_regclass('electric.things') IS NOT NULL"), "t")
        self.mesh = InProcessMesh(self.pg, NAMES, prefix="electric-schema-e2e")
        self.addCleanup(self.mesh.stop)
        yield self.mesh.start()
        self.registry = self.mesh.registry
        self.satellite = SatelliteService(satellite_config(), self.mesh.hub, self.registry, self.mesh.offsets,
                                          reactor=reactor)
        self.satellite.startService()
        yield self.satellite.listening
        self.nodes = []
        self.addCleanup(self._stop)

    @defer.inlineCallbacks
    def _stop(self):
        for node in self.nodes:
            yield node.kill()
        yield self.satellite.stopService()
        yield drain_autobahn_timers()

    def sql(self, name, text):
        return self.pg.psql(text, dbname=f"{name}_db").strip()

    def rows(self, name):
        return self.sql(name, "SELECT id, content, n FROM electric.things ORDER BY id").splitlines()

    def both(self, expected, message):
        return eventually(lambda: all(self.rows(n) == expected for n in NAMES), timeout=60, message=message)

    @defer.inlineCallbacks
    def test_tables_replicate_and_bookkeeping_stays_out(self):
        a, b = NAMES
        self.assertEqual([t.qualified for t in self.registry.tables()], [("electric", "things")])
        self.sql(a, "INSERT INTO things VALUES ('1', 'from a', 1)")
        yield self.both(["1|from a|1"], "a's row in both databases")
        self.sql(b, "UPDATE things SET content = 'changed on b' WHERE id = '1'")
        yield self.both(["1|changed on b|1"], "b's update in both databases")

        # A transaction that writes a bookkeeping table is not forwarded, with
        # everything else it wrote; the next one is.
        self.sql(a, "BEGIN; INSERT INTO electric.migrations (version, hash) VALUES ('local', 'x');"
                    "INSERT INTO things VALUES ('2', 'with bookkeeping', 2); COMMIT")
        self.sql(a, "INSERT INTO things VALUES ('3', 'after', 3)")
        yield eventually(lambda: self.sql(b, "SELECT count(*) FROM things WHERE id = '3'") == "1", timeout=60,
                         message="the row after the bookkeeping transaction")
        self.assertEqual(self.sql(b, "SELECT count(*) FROM electric.migrations WHERE version = 'local'"), "0")
        self.assertEqual(self.sql(b, "SELECT count(*) FROM things WHERE id = '2'"), "0")

        for svc in self.mesh.connectors.values():
            status = svc.status()
            # Skipped user tables are reported with their reason; the
            # bookkeeping tables are not user tables and are not listed.
            self.assertEqual(status["skipped_tables"],
                             [{"schema": "electric", "table": "keyless", "reason": "table has no primary key"}])
            self.assertIsNone(status["last_error"])
        for schema, table in BOOKKEEPING_TABLES:
            self.assertIsNone(self.registry.find(schema, table))
        self.assertEqual(subscriber_errors(self.pg), [])

    @defer.inlineCallbacks
    def test_satellite_client_reads_and_writes_them_by_name(self):
        a, b = NAMES
        self.sql(a, "INSERT INTO things VALUES ('p1', 'from postgres', 1)")
        node = NodeClient(os.path.join(self.mesh.tmp, "client.db"), self.satellite.port, "alice",
                          tables=(THINGS_SQLITE,))
        self.nodes.append(node)
        yield node.start()

        @defer.inlineCallbacks
        def client_rows():
            rows = yield node.query("SELECT id, content, n FROM things ORDER BY id")
            return [f"{r['id']}|{r['content']}|{r['n']}" for r in rows]

        yield eventually(lambda: client_rows().addCallback(lambda r: r == ["p1|from postgres|1"]), timeout=60,
                         message="the Postgres row in the client")
        yield node.execute("INSERT INTO things (id, content, n) VALUES (?, ?, ?)", "c1", "from the client", 5)
        yield self.both(["c1|from the client|5", "p1|from postgres|1"], "the client's row in both databases")
        self.assertEqual(node.crashes(), [])
        self.assertEqual(subscriber_errors(self.pg), [])
