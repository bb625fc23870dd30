"""
End to end through Vaxine: two `twistd electric` processes, each with its own database, ports, data
dir and offset file, sharing one Vaxine node (the real node where ../shared/vaxine exists, else the
FAKE tests/fake_vaxine.py in a process of its own): PG A -> Electric 1 -> Vaxine -> Electric 2 ->
PG B and a real electric-sql client, and back; concurrent writes to one row converge; a restarted
Electric resumes from its stored stream offset; Vaxine killed and restarted on the same data.
"""

from __future__ import annotations

import os
import time

from twisted.internet import defer, threads
from twisted.trial import unittest

from tests.electric_process import ElectricProcess
from tests.node_client import NodeClient, ensure_installed
from tests.pgcluster import PgCluster
from tests.polling import poll, wait_until
from tests.publisher_helpers import subscriber_errors
from tests.test_e2e_postgres import wait_same
from tests.vaxine_processes import process_vaxine

SCHEMA = """
CREATE TABLE items (id text PRIMARY KEY, content text, n int4, electric_user_id text);
CREATE TABLE conflict_t (id int PRIMARY KEY, a text, b text);
ALTER TABLE conflict_t REPLICA IDENTITY FULL;
"""


class TwoElectricsOneVaxine(unittest.TestCase):
    timeout = 600

    def setUp(self):
        self.vaxine = process_vaxine(self)
        self.a = PgCluster().start()
        self.b = PgCluster().start()
        self.addCleanup(self.a.destroy)
        self.addCleanup(self.b.destroy)
        for pg in (self.a, self.b):
            pg.psql(SCHEMA)
        self.e1 = self.electric({"postgres_a": self.a.url})
        self.e2 = self.electric({"postgres_b": self.b.url})
        for e in (self.e1, self.e2):
            e.wait_ready(timeout=180)
        self.nodes = []

    def electric(self, connectors, like=None):
        e = ElectricProcess(connectors, extra_env=self.vaxine.env(), workdir=like.workdir if like else None)
        if like is not None:
            e.status_port, e.pg_port, e.ws_port = like.status_port, like.pg_port, like.ws_port
        self.addCleanup(e.stop)
        return e.start()

    def tearDown(self):
        for pg in (self.a, self.b):
            self.assertEqual(subscriber_errors(pg), [], f"apply worker errors in {pg.url}")

    def status_is(self, e, vaxine, connectors):
        s = e.status()
        return s is not None and s["vaxine"] is vaxine and all(v is connectors for v in s["connectors"].values())

    @defer.inlineCallbacks
    def test_writes_from_every_side_reach_all_and_concurrent_writes_converge(self):
        ensure_installed()
        for e in (self.e1, self.e2):
            self.assertEqual(e.status()["vaxine"], True)
        node = NodeClient(os.path.join(self.e2.workdir, "client.db"), self.e2.ws_port, "alice")
        self.addCleanup(node.kill)
        yield node.start()
        # PG A -> Electric 1 -> Vaxine -> Electric 2 -> PG B and the client
        self.a.psql("INSERT INTO items VALUES ('a1', 'from a', 1, NULL)")
        yield threads.deferToThread(self.b.wait_for, "SELECT content FROM items WHERE id = 'a1'", "from a", 120)
        yield wait_until(lambda: node.query("SELECT content FROM items WHERE id = 'a1'").addCallback(
            lambda rows: rows == [{"content": "from a"}]), timeout=120, what="a1 in the client")
        # PG B -> ... -> PG A
        self.b.psql("UPDATE items SET n = 2 WHERE id = 'a1'")
        yield threads.deferToThread(self.a.wait_for, "SELECT n FROM items WHERE id = 'a1'", "2", 120)
        # the client (on Electric 2) -> both databases
        yield node.execute("INSERT INTO items (id, content, n) VALUES (?, ?, ?)", "c1", "from the client", 3)
        for pg in (self.a, self.b):
            yield threads.deferToThread(pg.wait_for, "SELECT content FROM items WHERE id = 'c1'", "from the client", 120)
        # concurrent writes to the same rows on both sides converge everywhere: each side updates
        # its own column of rows both hold (both updates survive), and both write one column
        # of row 1 (one value wins, the same everywhere)
        self.a.psql("INSERT INTO conflict_t SELECT i, 'a' || i, 'b' || i FROM generate_series(1, 5) i")
        yield threads.deferToThread(self.b.wait_for, "SELECT count(*) FROM conflict_t", "5", 120)
        for i in range(1, 6):
            self.a.psql(f"UPDATE conflict_t SET a = 'a-late{i}' WHERE id = {i}")
            self.b.psql(f"UPDATE conflict_t SET b = 'b-late{i}' WHERE id = {i}")
        self.a.psql("UPDATE conflict_t SET a = 'a says' WHERE id = 1")
        self.b.psql("UPDATE conflict_t SET a = 'b says' WHERE id = 1")
        text = yield threads.deferToThread(wait_same, self.a, self.b, "conflict_t", 120, 5)
        for i in range(2, 6):
            self.assertIn(f"({i},a-late{i},b-late{i})", text)
        self.assertTrue('(1,"a says",b-late1)' in text or '(1,"b says",b-late1)' in text, text)
        # a transaction bigger than one hub chunk goes through Vaxine in chunks and lands whole
        self.b.psql("INSERT INTO items SELECT 'big' || i, 'one big transaction', i, NULL FROM generate_series(1, 4500) i")
        yield threads.deferToThread(self.a.wait_for, "SELECT count(*) FROM items WHERE content = 'one big transaction'",
                                    "4500", 300)
        details = self.e2.details()
        self.assertEqual(details["connectors"]["postgres_b"]["big_transactions"], 1)
        yield threads.deferToThread(wait_same, self.a, self.b, "items", 120, 4502)
        yield wait_until(lambda: self.e1.hub_head() == self.e2.hub_head(), timeout=60, what="the same head")

    def test_restart_resumes_from_the_stored_offset(self):
        self.a.psql("INSERT INTO items VALUES ('x0', 'before', 0, NULL)")
        self.b.wait_for("SELECT content FROM items WHERE id = 'x0'", "before", 120)
        self.assertEqual(self.e2.stop(), 0)
        for i in range(1, 21):
            self.a.psql(f"INSERT INTO items VALUES ('x{i}', 'while 2 was down', {i}, NULL)")
        poll(lambda: self.e1.hub_head() >= 21, timeout=120, what="Electric 1 stored all 21")
        e2 = self.electric({"postgres_b": self.b.url}, like=self.e2)
        e2.wait_ready(timeout=180)
        wait_same(self.a, self.b, "items", timeout=180, expect_rows=21)
        poll(lambda: e2.hub_head() == self.e1.hub_head(), timeout=60, what="the same head on both")
        details = e2.details()
        # resumed right after what it had stored: nothing read twice, nothing skipped
        self.assertEqual(details["hub"]["vaxine"]["skipped"], 0)
        self.assertEqual(details["hub"]["duplicates"], 0)
        self.assertEqual(details["hub"]["vaxine"]["stream_transactions"], 20)

    def test_vaxine_killed_and_restarted_nothing_lost(self):
        self.a.psql("INSERT INTO items VALUES ('k0', 'before', 0, NULL)")
        self.b.wait_for("SELECT content FROM items WHERE id = 'k0'", "before", 120)
        self.vaxine.kill_blocking()
        for e in (self.e1, self.e2):
            poll(lambda: self.status_is(e, False, False), timeout=120, what="vaxine false, connectors not ready")
        for i in range(1, 6):
            self.a.psql(f"INSERT INTO items VALUES ('k{i}', 'during the outage', {i}, NULL)")
        self.b.psql("INSERT INTO items VALUES ('kb', 'b during the outage', 9, NULL)")
        time_down = time.monotonic()
        self.vaxine.restart_blocking()
        for e in (self.e1, self.e2):
            poll(lambda: self.status_is(e, True, True), timeout=180, what="vaxine true and connectors ready again")
        print(f"recovered {time.monotonic() - time_down:.1f} s after Vaxine was restarted")
        wait_same(self.a, self.b, "items", timeout=180, expect_rows=7)
        self.assertEqual(self.a.psql("SELECT content FROM items WHERE id = 'kb'").strip(), "b during the outage")
