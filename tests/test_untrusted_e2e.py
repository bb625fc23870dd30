"""
Untrusted clients end to end: the real electric-sql@0.4.3 client, two
Postgres 15 databases, Electric in process (connectors, embedded hub,
port-5433 publisher, Satellite service).

* A client write with a value Postgres would refuse is refused with the
  protocol's error; the client sees it, nothing reaches the hub, other
  clients and both databases keep replicating and no apply worker logs an
  ERROR.
* mallory, with a valid token of her own and alice's client id, is refused;
  alice's next write is acknowledged and reaches both databases.
* bob cannot overwrite alice's rows or plant rows owned by her.
"""

from __future__ import annotations

import os
import shutil

from twisted.internet import defer, reactor
from twisted.trial import unittest

from electric.satellite.service import SatelliteService
from tests.hub_helpers import read_snapshot
from tests.mesh import InProcessMesh
from tests.node_client import ITEMS_SQLITE, NodeClient, ensure_installed
from tests.pgcluster import PgCluster
from tests.publisher_helpers import subscriber_errors
from tests.satellite_helpers import drain_autobahn_timers, eventually, satellite_config

NAMES = ("pg_left", "pg_right")

NOTES_SQLITE = {
    "name": "notes",
    "columns": [{"name": "id", "type": "TEXT"}, {"name": "title", "type": "TEXT"}, {"name": "body", "type": "TEXT"}],
    "pk": ["id"],
}
TABLES = (ITEMS_SQLITE, NOTES_SQLITE)
# What electric-sql 0.4.3 logs (debug on) when it receives SatErrorResp{INVALID_REQUEST}; it then
# stops sending, keeps the refused write in its local change log and emits no event of its own.
REFUSED = '"$type":"Electric.Satellite.v0_2.SatErrorResp","errorType":4'


class UntrustedClients(unittest.TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def setUp(self):
        ensure_installed()
        self.pg = PgCluster().start()
        self.addCleanup(self.pg.destroy)
        for name in NAMES:
            self.pg.psql(f"CREATE DATABASE {name}_db", dbname="postgres")
            self.pg.psql(
                "CREATE TABLE public.items (id text PRIMARY KEY, content text, n int4, electric_user_id text);"
                "CREATE TABLE public.notes (id text PRIMARY KEY, title varchar(64), body text NOT NULL);",
                dbname=f"{name}_db",
            )
        self.mesh = InProcessMesh(self.pg, NAMES, prefix="untrusted-e2e")
        self.addCleanup(self.mesh.stop)
        yield self.mesh.start()
        self.satellite = SatelliteService(satellite_config(), self.mesh.hub, self.mesh.registry, self.mesh.offsets,
                                          reactor=reactor)
        self.satellite.startService()
        yield self.satellite.listening
        self.nodes = []
        self.addCleanup(self._stop)
        yield eventually(lambda: self.mesh.registry.find("public", "notes"), message="tables registered")

    @defer.inlineCallbacks
    def _stop(self):
        for node in self.nodes:
            yield node.kill()
        yield self.satellite.stopService()
        yield drain_autobahn_timers()

    @defer.inlineCallbacks
    def node(self, name, token, db=None, debug=False):
        c = NodeClient(db or os.path.join(self.mesh.tmp, f"{name}.db"), self.satellite.port, token, tables=TABLES,
                       debug=debug or bool(os.environ.get("NODE_DEBUG_CLIENT")))
        self.nodes.append(c)
        yield c.start()
        return c

    def pg_rows(self, name, table="items"):
        columns = "id, content, n, electric_user_id" if table == "items" else "id, title, body"
        return self.pg.psql(f"SELECT {columns} FROM {table} ORDER BY id", dbname=f"{name}_db").splitlines()

    def both(self, expected, table="items"):
        return all(self.pg_rows(n, table) == expected for n in NAMES)

    def apply_errors(self):
        return subscriber_errors(self.pg)

    @defer.inlineCallbacks
    def client_rows(self, node):
        rows = yield node.query("SELECT id, content, n, electric_user_id FROM items ORDER BY id")
        return ["|".join("" if r[k] is None else str(r[k]) for k in ("id", "content", "n", "electric_user_id"))
                for r in rows]

    @defer.inlineCallbacks
    def refused_at(self, node):
        """The client received the protocol's error for its write (its own debug log says so)."""
        try:
            yield eventually(lambda: any(REFUSED in line for line in node.log_lines), timeout=60,
                             message="the client saw the error")
        except AssertionError:
            raise AssertionError(f"the client did not see the error: events {node.events}, "
                                 f"log {node.log_lines[-30:]}, stderr {node.stderr_text()[-2000:]}") from None

    def hub_keys(self, table):
        return read_snapshot(self.mesh.hub, [("public", table)]).addCallback(lambda s: {r.key[0] for r in s.rows})

    @defer.inlineCallbacks
    def test_a_bad_value_is_refused_and_everything_else_keeps_replicating(self):
        left, right = NAMES
        bob = yield self.node("bob", "bob")
        yield bob.execute("INSERT INTO items (id, content, n) VALUES (?, ?, ?)", "before", "fine", 1)
        yield eventually(lambda: self.both(["before|fine|1|"]), timeout=60, message="bob's first row everywhere")

        alice = yield self.node("alice", "alice", debug=True)
        yield alice.execute("INSERT INTO items (id, content, n) VALUES (?, ?, ?)", "poison_int", "x", "notanint")
        yield self.refused_at(alice)
        yield eventually(lambda: self.satellite.status()["refused_transactions"] >= 1, message="refusal counted")
        reason = self.satellite.status()["recent_refusals"][0]["reason"]
        self.assertIn('invalid input syntax for type integer: "notanint"', reason)

        # every other path keeps moving: bob -> both databases, Postgres -> Postgres and bob
        yield bob.execute("INSERT INTO items (id, content, n) VALUES (?, ?, ?)", "after", "still fine", 2)
        self.pg.psql("INSERT INTO items VALUES ('from_left', 'pg write', 3, NULL)", dbname=f"{left}_db")
        expected = ["after|still fine|2|", "before|fine|1|", "from_left|pg write|3|"]
        yield eventually(lambda: self.both(expected), timeout=60, message="replication after the refusal")
        yield eventually(lambda: self.client_rows(bob).addCallback(lambda r: r == expected), timeout=60,
                         message="bob has every row")
        self.assertNotIn("poison_int", (yield self.hub_keys("items")))
        self.assertEqual(self.apply_errors(), [])
        self.assertEqual(bob.crashes(), [])

    @defer.inlineCallbacks
    def test_not_null_and_varchar_length(self):
        carol = yield self.node("carol", "carol")
        yield carol.execute("INSERT INTO notes (id, title, body) VALUES (?, ?, ?)", "n0", "ok", "fine")
        yield eventually(lambda: self.both(["n0|ok|fine"], "notes"), timeout=60, message="a valid note everywhere")
        for k, (title, body, reason) in enumerate([
            ("no body", None, 'column "body" is NOT NULL'),
            ("t" * 100, "long title", "value too long for type character varying(64)"),
        ]):
            writer = yield self.node(f"writer{k}", "dave", debug=True)
            yield writer.execute("INSERT INTO notes (id, title, body) VALUES (?, ?, ?)", f"bad{k}", title, body)
            yield self.refused_at(writer)
            yield eventually(lambda k=k: self.satellite.status()["refused_transactions"] >= k + 1,
                             message="refusal counted")
            self.assertIn(reason, self.satellite.status()["recent_refusals"][-1]["reason"])
        yield carol.execute("INSERT INTO notes (id, title, body) VALUES (?, ?, ?)", "n1", "x" * 64, "after")
        yield eventually(lambda: self.both(["n0|ok|fine", f"n1|{'x' * 64}|after"], "notes"), timeout=60,
                         message="notes keep replicating")
        self.assertEqual(self.apply_errors(), [])

    @defer.inlineCallbacks
    def test_mallory_cannot_use_alices_client_id(self):
        alice = yield self.node("alice", "alice")
        yield alice.execute("INSERT INTO items (id, content, n, electric_user_id) VALUES (?, ?, ?, ?)",
                            "a1", "first", 1, "alice")
        yield eventually(lambda: self.both(["a1|first|1|alice"]), timeout=60, message="alice's first row")
        yield eventually(lambda: alice.query("SELECT count(*) AS n FROM _electric_oplog").addCallback(
            lambda r: r[0]["n"] == 0), message="alice's write acknowledged")
        client_id = (yield alice.query("SELECT value FROM _electric_meta WHERE key = 'clientId'"))[0]["value"]
        yield alice.stop()
        self.nodes.remove(alice)
        # mallory runs a client on a copy of alice's database: same client id, her own valid token
        mallory_db = os.path.join(self.mesh.tmp, "mallory.db")
        shutil.copyfile(os.path.join(self.mesh.tmp, "alice.db"), mallory_db)
        mallory = yield self.node("mallory", "mallory", db=mallory_db)
        self.assertEqual(mallory.events[0]["clientId"], client_id)
        yield eventually(lambda: self.satellite.status()["refused_foreign_client_ids"] >= 1, timeout=60,
                         message="mallory refused")
        yield mallory.execute_local("INSERT INTO items (id, content, n) VALUES (?, ?, ?)", "m1", "mallory's", 9)
        self.assertEqual(self.mesh.offsets.client_owner(client_id), "alice")
        # alice comes back and writes with her next lsn: acknowledged, in both databases
        alice = yield self.node("alice", "alice")
        yield alice.execute("INSERT INTO items (id, content, n, electric_user_id) VALUES (?, ?, ?, ?)",
                            "a2", "second", 2, "alice")
        yield eventually(lambda: self.both(["a1|first|1|alice", "a2|second|2|alice"]), timeout=60,
                         message="alice's second row in both databases")
        yield eventually(lambda: alice.query("SELECT count(*) AS n FROM _electric_oplog").addCallback(
            lambda r: r[0]["n"] == 0), message="alice's second write acknowledged")
        self.assertNotIn("m1", (yield self.hub_keys("items")))
        self.assertEqual(self.apply_errors(), [])
        self.assertEqual(alice.crashes(), [])

    @defer.inlineCallbacks
    def test_bob_cannot_write_alices_rows(self):
        left, right = NAMES
        self.pg.psql("INSERT INTO items VALUES ('a1', 'alice''s', 1, 'alice'), ('s1', 'shared', 1, NULL)",
                     dbname=f"{left}_db")
        yield eventually(lambda: self.both(["a1|alice's|1|alice", "s1|shared|1|"]), timeout=60,
                         message="rows everywhere")
        for k, (key, owner) in enumerate([("a1", "alice"), ("a1", "bob"), ("planted", "alice")]):
            bob = yield self.node(f"bob{k}", "bob", debug=True)
            yield bob.execute("INSERT INTO items (id, content, n, electric_user_id) VALUES (?, ?, ?, ?)",
                              key, "bob was here", 6, owner)
            yield self.refused_at(bob)
        bob = yield self.node("bob-ok", "bob")
        yield eventually(lambda: self.client_rows(bob).addCallback(lambda r: r == ["s1|shared|1|"]), timeout=60,
                         message="bob sees the shared row, not alice's")
        yield bob.execute("UPDATE items SET content = ? WHERE id = ?", "bob edits shared", "s1")
        yield eventually(lambda: self.both(["a1|alice's|1|alice", "s1|bob edits shared|1|"]), timeout=60,
                         message="bob's allowed write everywhere, alice's row untouched")
        self.assertNotIn("planted", (yield self.hub_keys("items")))
        self.assertEqual(self.apply_errors(), [])
