"""
End to end with the REAL client: electric-sql@0.4.3 + better-sqlite3 in Node,
against SatelliteService and the embedded hub.
"""

import os

from twisted.internet import defer
from twisted.trial import unittest

from electric.hub.interface import DELETE, UPSERT, RowChange, Transaction

from tests.node_client import NodeClient, ensure_installed
from tests.satellite_helpers import SatelliteFixture, eventually, satellite_config
from tests.hub_helpers import read_snapshot

_n = [0]


def pg_txn(*changes):
    _n[0] += 1
    return Transaction("postgres_1", _n[0].to_bytes(8, "big"), 1_700_000_000_000_000 + _n[0], tuple(changes))


def up(key, content, user=None, n=None):
    return RowChange("public", "items", UPSERT, (key,), {"id": key, "content": content, "n": n, "electric_user_id": user})


def rm(key):
    return RowChange("public", "items", DELETE, (key,), {"id": key})


class RealClient(unittest.TestCase):
    timeout = 120

    @classmethod
    def setUpClass(cls):
        ensure_installed()

    @defer.inlineCallbacks
    def setUp(self):
        self.fx = yield SatelliteFixture(self).start()
        self.nodes = []

    @defer.inlineCallbacks
    def tearDown(self):
        for node in self.nodes:
            yield node.kill()

    @defer.inlineCallbacks
    def node(self, name, token):
        c = NodeClient(os.path.join(self.fx.dir, f"{name}.db"), self.fx.port, token)
        self.nodes.append(c)
        yield c.start()
        return c

    @defer.inlineCallbacks
    def hub_rows(self):
        snap = yield read_snapshot(self.fx.hub, [("public", "items")])
        return {r.key[0]: dict(r.row) for r in snap.rows}

    @defer.inlineCallbacks
    def client_rows(self, node):
        rows = yield node.query("SELECT id, content, n, electric_user_id FROM items ORDER BY id")
        return {r["id"]: r for r in rows}

    def assertAlive(self, node):
        self.assertEqual(node.crashes(), [])
        self.assertIsNone(node.exit_code, node.events)

    @defer.inlineCallbacks
    def test_local_writes_reach_the_hub(self):
        node = yield self.node("writer", "alice")
        yield node.execute("INSERT INTO items (id, content, n) VALUES (?, ?, ?)", "a", "first", 1)
        yield node.execute("INSERT INTO items (id, content, n) VALUES (?, ?, ?)", "b", "second", 2)
        rows = yield eventually(lambda: self.hub_rows().addCallback(lambda r: r if {"a", "b"} <= set(r) else None),
                                message="inserts in the hub")
        self.assertEqual(rows["a"]["content"], "first")
        self.assertEqual(rows["a"]["n"], "1")
        yield node.execute("UPDATE items SET content = ? WHERE id = ?", "changed", "a")
        yield eventually(lambda: self.hub_rows().addCallback(lambda r: r.get("a", {}).get("content") == "changed"),
                         message="update in the hub")
        yield node.execute("DELETE FROM items WHERE id = ?", "b")
        rows = yield eventually(lambda: self.hub_rows().addCallback(lambda r: r if "b" not in r else None),
                                message="delete in the hub")
        self.assertEqual(set(rows), {"a"})
        # every client transaction was acknowledged: the client emptied its oplog
        yield eventually(lambda: node.query("SELECT count(*) AS n FROM _electric_oplog").addCallback(lambda r: r[0]["n"] == 0),
                         message="client oplog acknowledged")
        client_id = (yield node.query("SELECT value FROM _electric_meta WHERE key = 'clientId'"))[0]["value"]
        self.assertIsNotNone(self.fx.offsets.client_lsn(client_id))
        self.assertAlive(node)

    @defer.inlineCallbacks
    def test_hub_rows_reach_the_client(self):
        yield self.fx.hub.append(pg_txn(up("s1", "before connect", n="7")))
        node = yield self.node("reader", "alice")
        rows = yield eventually(lambda: self.client_rows(node).addCallback(lambda r: r if "s1" in r else None),
                                message="initial sync in the client")
        self.assertEqual(rows["s1"], {"id": "s1", "content": "before connect", "n": 7, "electric_user_id": None})
        yield self.fx.hub.append(pg_txn(up("s2", "live"), up("s1", "changed", n="8")))
        rows = yield eventually(
            lambda: self.client_rows(node).addCallback(lambda r: r if "s2" in r and r["s1"]["content"] == "changed" else None),
            message="live transaction in the client",
        )
        self.assertEqual(rows["s1"]["n"], 8)
        yield self.fx.hub.append(pg_txn(rm("s2")))
        yield eventually(lambda: self.client_rows(node).addCallback(lambda r: "s2" not in r), message="delete in the client")
        # the client recorded the LSN Electric issued for the last transaction
        lsn_meta = (yield node.query("SELECT value FROM _electric_meta WHERE key = 'lsn'"))[0]["value"]
        self.assertTrue(lsn_meta)
        self.assertAlive(node)

    @defer.inlineCallbacks
    def test_two_users_see_only_their_rows(self):
        yield self.fx.hub.append(pg_txn(up("a1", "alice's", user="alice"), up("b1", "bob's", user="bob"), up("p1", "public")))
        alice = yield self.node("alice", "alice")
        bob = yield self.node("bob", "bob")
        yield self.fx.hub.append(pg_txn(up("a2", "alice again", user="alice"), up("b2", "bob again", user="bob")))
        want = {"alice": {"a1", "a2", "p1"}, "bob": {"b1", "b2", "p1"}}
        for name, node in (("alice", alice), ("bob", bob)):
            rows = yield eventually(
                lambda node=node, name=name: self.client_rows(node).addCallback(lambda r: r if want[name] <= set(r) else None),
                message=f"{name}'s rows",
            )
            self.assertEqual(set(rows), want[name])
        # a write by alice reaches bob only when it is not alice-owned
        yield alice.execute("INSERT INTO items (id, content, electric_user_id) VALUES (?, ?, ?)", "a3", "private", "alice")
        yield alice.execute("INSERT INTO items (id, content) VALUES (?, ?)", "p2", "shared")
        yield eventually(lambda: self.client_rows(bob).addCallback(lambda r: "p2" in r), message="shared row at bob")
        yield eventually(lambda: self.hub_rows().addCallback(lambda r: "a3" in r), message="private row in the hub")
        self.assertNotIn("a3", (yield self.client_rows(bob)))
        self.assertAlive(alice)
        self.assertAlive(bob)

    @defer.inlineCallbacks
    def test_reconnect_resumes_without_loss(self):
        node = yield self.node("resumer", "alice")
        yield self.fx.hub.append(pg_txn(up("r1", "one")))
        yield eventually(lambda: self.client_rows(node).addCallback(lambda r: "r1" in r), message="first row")
        yield node.stop()
        # while the client is away: Electric gets new rows, the client makes a local write
        yield self.fx.hub.append(pg_txn(up("r2", "two")))
        yield self.fx.hub.append(pg_txn(up("r1", "one, changed")))
        again = NodeClient(node.config["db"], self.fx.port, "alice")
        self.nodes.append(again)
        yield again.start()
        yield again.execute("INSERT INTO items (id, content) VALUES (?, ?)", "local", "made after restart")
        rows = yield eventually(
            lambda: self.client_rows(again).addCallback(
                lambda r: r if "r2" in r and r["r1"]["content"] == "one, changed" else None),
            message="rows missed while away",
        )
        self.assertIn("local", rows)
        yield eventually(lambda: self.hub_rows().addCallback(lambda r: "local" in r), message="local write in the hub")
        self.assertAlive(again)

    @defer.inlineCallbacks
    def test_concurrent_writes_converge(self):
        """A client and another origin write the same row at once: client and hub end identical (hub order decides)."""
        node = yield self.node("racer", "alice")
        yield self.fx.hub.append(pg_txn(up("x", "base"), up("y", "base")))
        yield eventually(lambda: self.client_rows(node).addCallback(lambda r: {"x", "y"} <= set(r)), message="base rows")
        d = self.fx.hub.append(pg_txn(up("x", "other origin")))
        yield node.execute("UPDATE items SET content = ? WHERE id = ?", "client", "x")
        yield node.execute("UPDATE items SET content = ? WHERE id = ?", "client", "y")
        yield d

        @defer.inlineCallbacks
        def same():
            hub = yield self.hub_rows()
            client = yield self.client_rows(node)
            oplog = yield node.query("SELECT count(*) AS n FROM _electric_oplog")
            hub_view = {k: (v["content"],) for k, v in hub.items()}
            client_view = {k: (v["content"],) for k, v in client.items()}
            return oplog[0]["n"] == 0 and hub_view == client_view and hub_view

        view = yield eventually(same, message="client and hub converge")
        self.assertIn(view["x"], {("other origin",), ("client",)})
        self.assertEqual(view["y"], ("client",))
        self.assertAlive(node)

    @defer.inlineCallbacks
    def test_later_write_after_client_write_wins_at_the_client(self):
        """
        Departure 5: another origin writes a row right after the client's write
        to it reached the hub (with an older commit time).  The hub orders it
        later, so it wins; the client must end with it too, which it does only
        if the ack of its own write arrived before the other write.
        """
        node = yield self.node("acker", "alice")
        yield self.fx.hub.append(pg_txn(up("x", "base")))
        yield eventually(lambda: self.client_rows(node).addCallback(lambda r: "x" in r), message="base row")
        sub = self.fx.hub.subscribe(self.fx.hub.head())
        self.addCleanup(sub.close)
        yield node.execute("UPDATE items SET content = ? WHERE id = ?", "client", "x")
        seen = yield sub.next(10)
        self.assertTrue(seen[0].origin.startswith("satellite:"))
        yield self.fx.hub.append(pg_txn(up("x", "later in hub order")))

        @defer.inlineCallbacks
        def converged():
            client = yield self.client_rows(node)
            oplog = yield node.query("SELECT count(*) AS n FROM _electric_oplog")
            return oplog[0]["n"] == 0 and client["x"]["content"] == "later in hub order"

        yield eventually(converged, message="client took the later write")
        self.assertEqual((yield self.hub_rows())["x"]["content"], "later in hub order")
        self.assertAlive(node)

    @defer.inlineCallbacks
    def test_migration_notification_call_leaves_real_client_alive(self):
        node = yield self.node("migr", "alice")
        yield eventually(lambda: self.fx.service.connected_clients(), message="client connected")
        self.assertEqual(self.fx.service.notify_migration("1", "a", "2", "b"), 0)
        yield self.fx.hub.append(pg_txn(up("m1", "after migration")))
        yield eventually(lambda: self.client_rows(node).addCallback(lambda r: "m1" in r), message="row after migration")
        self.assertAlive(node)


class RealClientJWT(unittest.TestCase):
    timeout = 120
    KEY = "an-hs256-key-of-at-least-32-bytes!"

    @defer.inlineCallbacks
    def setUp(self):
        ensure_installed()
        config = satellite_config(auth_signing_key=self.KEY, auth_signing_iss="test.electric-db")
        self.fx = yield SatelliteFixture(self, config=config).start()
        self.nodes = []
        self.addCleanup(lambda: defer.gatherResults([n.kill() for n in self.nodes]))

    @defer.inlineCallbacks
    def test_signed_token_replicates(self):
        from electric.satellite.auth import JWTAuth

        token, _ = JWTAuth(self.KEY, "test.electric-db").generate("alice", ttl=600)
        node = NodeClient(os.path.join(self.fx.dir, "jwt.db"), self.fx.port, token)
        self.nodes.append(node)
        yield node.start()
        yield node.execute("INSERT INTO items (id, content) VALUES (?, ?)", "j1", "signed")
        yield eventually(lambda: read_snapshot(self.fx.hub).addCallback(lambda s: any(r.key == ("j1",) for r in s.rows)),
                         message="row from the JWT client in the hub")
        self.assertEqual(node.crashes(), [])
