"""
The real electric-sql@0.4.3 client and two Postgres 15 databases, in process:
two ConnectorServices read the databases, the EmbeddedHub orders and
resolves, the PublisherService (5433) feeds the databases, SatelliteService
serves the Node client.  A client's local writes must land in both
databases; a write in Postgres must land in the client's SQLite.
"""

from __future__ import annotations

import os

from twisted.internet import defer, reactor
from twisted.trial import unittest

from electric.satellite.service import SatelliteService
from tests.mesh import InProcessMesh
from tests.node_client import NodeClient, ensure_installed
from tests.pgcluster import PgCluster
from tests.satellite_helpers import drain_autobahn_timers, eventually, satellite_config

NAMES = ("postgres_a", "postgres_b")


class ClientAndPostgres(unittest.TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        ensure_installed()
        self.pg = PgCluster().start()
        self.addCleanup(self.pg.destroy)
        for name in NAMES:
            self.pg.psql(f"CREATE DATABASE {name}_db", dbname="postgres")
            self.pg.psql(
                "CREATE TABLE public.items (id text PRIMARY KEY, content text, n int4, electric_user_id text)",
                dbname=f"{name}_db",
            )
        self.mesh = InProcessMesh(self.pg, NAMES, prefix="satellite-pg-e2e")
        self.addCleanup(self.mesh.stop)
        yield self.mesh.start()
        self.tmp = self.mesh.tmp
        self.hub, self.registry, self.offsets = self.mesh.hub, self.mesh.registry, self.mesh.offsets
        self.satellite = SatelliteService(satellite_config(), self.hub, self.registry, self.offsets, reactor=reactor)
        self.satellite.startService()
        yield self.satellite.listening
        self.nodes = []
        self.addCleanup(self._stop)
        yield eventually(lambda: self.registry.find("public", "items"), message="items registered")

    @defer.inlineCallbacks
    def _stop(self):
        for node in self.nodes:
            yield node.kill()
        yield self.satellite.stopService()
        yield drain_autobahn_timers()

    def pg_rows(self, name):
        return self.pg.psql("SELECT id, content, n, electric_user_id FROM items ORDER BY id", dbname=f"{name}_db").splitlines()

    @defer.inlineCallbacks
    def node(self, name, user):
        c = NodeClient(os.path.join(self.tmp, f"{name}.db"), self.satellite.port, user, debug=bool(os.environ.get("NODE_DEBUG_CLIENT")))
        self.nodes.append(c)
        yield c.start()
        return c

    @defer.inlineCallbacks
    def client_rows(self, node):
        rows = yield node.query("SELECT id, content, n, electric_user_id FROM items ORDER BY id")
        return ["|".join("" if r[k] is None else str(r[k]) for k in ("id", "content", "n", "electric_user_id")) for r in rows]

    @defer.inlineCallbacks
    def test_client_writes_reach_both_databases(self):
        node = yield self.node("c1", "alice")
        yield node.execute("INSERT INTO items (id, content, n) VALUES (?, ?, ?)", "c1", "from the client", 5)
        yield node.execute("INSERT INTO items (id, content, n) VALUES (?, ?, ?)", "c2", "second", 6)
        expected = ["c1|from the client|5|", "c2|second|6|"]
        yield eventually(lambda: all(self.pg_rows(n) == expected for n in NAMES), timeout=60,
                         message="client rows in both databases")
        yield node.execute("UPDATE items SET content = ? WHERE id = ?", "changed", "c1")
        yield node.execute("DELETE FROM items WHERE id = ?", "c2")
        yield eventually(lambda: all(self.pg_rows(n) == ["c1|changed|5|"] for n in NAMES), timeout=60,
                         message="update and delete in both databases")
        self.assertEqual(node.crashes(), [])

    @defer.inlineCallbacks
    def test_postgres_writes_reach_the_client(self):
        a, b = NAMES
        self.pg.psql("INSERT INTO items VALUES ('p1', 'before connect', 1, NULL)", dbname=f"{a}_db")
        yield eventually(lambda: self.hub.head() >= 1, message="first row in the hub")
        alice = yield self.node("alice", "alice")
        bob = yield self.node("bob", "bob")
        yield eventually(lambda: self.client_rows(alice).addCallback(lambda r: r == ["p1|before connect|1|"]),
                         timeout=60, message="initial sync at alice")
        self.pg.psql("INSERT INTO items VALUES ('p2', 'alice only', 2, 'alice'), ('p3', 'bob only', 3, 'bob')",
                     dbname=f"{b}_db")
        self.pg.psql("UPDATE items SET content = 'updated in a' WHERE id = 'p1'", dbname=f"{a}_db")
        yield eventually(
            lambda: self.client_rows(alice).addCallback(lambda r: r == ["p1|updated in a|1|", "p2|alice only|2|alice"]),
            timeout=60, message="live rows at alice")
        yield eventually(
            lambda: self.client_rows(bob).addCallback(lambda r: r == ["p1|updated in a|1|", "p3|bob only|3|bob"]),
            timeout=60, message="live rows at bob")
        self.assertEqual(alice.crashes(), [])
        self.assertEqual(bob.crashes(), [])
