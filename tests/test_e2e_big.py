"""
End to end, memory first: a real `twistd electric` between two stock
PostgreSQL 15 databases and real electric-sql@0.4.3 clients, with Electric's
resident memory (VmRSS / VmHWM of the twistd process) measured.

* A 200,000-row transaction from A reaches B and a live client, then a
  200,000-row update accumulates while B's subscription and the client are
  stopped, then both catch up, then a new client syncs every row: each phase
  stays under idle + 200 MB (bench/bench_e2e_memory.py runs 1,000,000 rows).
* 100 clients that stop reading in the middle of their initial sync of a
  250,000-row hub cost at most 50 MB, while another client syncs completely
  and the databases keep replicating; their memory is released when they go.
"""

from __future__ import annotations

import shutil
import tempfile

from twisted.internet import defer, threads
from twisted.trial import unittest

from electric.satellite import codec
from electric.satellite.codec import ORIGINAL
from tests.big_e2e import BigMesh, RssSampler, mb, report
from tests.polling import wait_until
from tests.publisher_helpers import subscriber_errors
from tests.satellite_helpers import WsClient, msg, start_req

BOUND_MB = 200
STALL_BOUND_MB = 50


class BigTransactionEndToEnd(unittest.TestCase):
    timeout = 1800
    ROWS = 200_000

    @defer.inlineCallbacks
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="e2e-big-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.mesh = BigMesh(self.tmp)
        self.addCleanup(self.mesh.stop)
        yield threads.deferToThread(self.mesh.start)

    def phase(self, name, idle_kb, rows, sampler):
        e = self.mesh.electric
        peak = e.peak_rss_kb()
        report(f"{name}: {rows} rows; Electric peak RSS {mb(peak):.0f} MB = idle {mb(idle_kb):.0f} MB "
               f"+ {mb(peak - idle_kb):.0f} MB (sampled max {mb(sampler.max_kb):.0f} MB)")
        self.assertLess(peak - idle_kb, BOUND_MB * 1024, f"{name}: Electric's RSS grew {mb(peak - idle_kb):.0f} MB")

    @defer.inlineCallbacks
    def test_big_transaction_backlog_and_sync_in_bounded_memory(self):
        m, n = self.mesh, self.ROWS
        a, b, e = m.a, m.b, m.electric
        live = yield m.node("live")
        a.psql("INSERT INTO big VALUES (0, 'warm-up', 0)")
        yield m.wait_pg(b, 1, what="warm-up row in B")
        yield m.wait_node(live, 1, what="warm-up row in the client")
        idle = e.rss_kb()

        # 1. One transaction of n rows, A -> B and the live client.
        e.reset_peak_rss()
        with RssSampler(e) as s:
            yield threads.deferToThread(
                a.psql, f"INSERT INTO big SELECT g, 'row number ' || g, g FROM generate_series(1, {n}) g")
            yield m.wait_pg(b, n + 1, what=f"{n} rows in B")
            yield m.wait_node(live, n + 1, what=f"{n} rows in the client")
        self.phase("insert to B and a live client", idle, n, s)

        # 2. B's subscription and the client stop; an n-row update accumulates behind them.
        b.psql("ALTER SUBSCRIPTION postgres_2 DISABLE")
        yield live.stop()
        head = m.hub_head()
        e.reset_peak_rss()
        with RssSampler(e) as s:
            yield threads.deferToThread(a.psql, "UPDATE big SET n = n + 1")
            yield wait_until(lambda: m.hub_head() > head, timeout=600, what="the update in the hub", interval=0.5)
        self.phase("update accumulating behind stopped subscribers", idle, n + 1, s)
        self.assertEqual(m.count(b, "WHERE n = id + 1"), 0)

        # 3. Both come back and catch up.
        e.reset_peak_rss()
        with RssSampler(e) as s:
            b.psql("ALTER SUBSCRIPTION postgres_2 ENABLE")
            again = yield m.node("live")
            yield m.wait_pg(b, n + 1, where="WHERE n = id + 1", what="the update in B")
            yield m.wait_node(again, n + 1, where="WHERE n = id + 1", what="the update in the client")
        self.phase("catch-up of B and the client", idle, n + 1, s)

        # 4. A new client: initial sync of every row.
        e.reset_peak_rss()
        with RssSampler(e) as s:
            late = yield m.node("late", user="bob")
            yield m.wait_node(late, n + 1, where="WHERE n = id + 1", what="initial sync of the new client")
        self.phase("initial sync of a new client", idle, n + 1, s)

        self.assertEqual(m.count(a, "WHERE n = id + 1"), n + 1)
        self.assertEqual(subscriber_errors(a), [])
        self.assertEqual(subscriber_errors(b), [])
        for node in (again, late):
            self.assertEqual(node.crashes(), [])


class StalledInitialSync(unittest.TestCase):
    timeout = 1800
    ROWS = 250_000
    STALLED = 100

    @defer.inlineCallbacks
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="e2e-stall-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.mesh = BigMesh(self.tmp)
        self.addCleanup(self.mesh.stop)
        yield threads.deferToThread(self.mesh.start)
        self.clients = []
        self.addCleanup(self._drop_clients)

    @defer.inlineCallbacks
    def _drop_clients(self):
        for c in self.clients:
            if c.proto is not None and not c.closed.called:
                c.proto.dropConnection(abort=True)
        for c in self.clients:
            if c.proto is not None:
                yield c.wait_closed()

    @defer.inlineCallbacks
    def stalled_client(self, i):
        """Authenticates, asks for an initial sync and never reads again."""
        c = WsClient(self.mesh.electric.ws_port)
        self.clients.append(c)
        yield c.connect()
        c.send(codec.auth_request(ORIGINAL, f"stalled-{i}", f"user-{i}"))
        resp = yield c.recv_message(ORIGINAL, timeout=60)
        self.assertEqual(codec.message_name(resp), "SatAuthResp")
        yield c.recv_message(ORIGINAL, timeout=60)  # the server's SatInStartReplicationReq
        c.send(msg(ORIGINAL, "SatInStartReplicationResp"))
        c.proto.transport.pauseProducing()  # stop reading: the server's socket buffers fill
        c.send(start_req(ORIGINAL, b"0"))
        return c

    def hub_status(self):
        return (self.mesh.electric.details() or {}).get("hub") or {}

    @defer.inlineCallbacks
    def test_clients_stalled_mid_initial_sync_cost_bounded_memory(self):
        m, n = self.mesh, self.ROWS
        a, b, e = m.a, m.b, m.electric
        yield threads.deferToThread(
            a.psql, f"INSERT INTO big SELECT g, 'row number ' || g, g FROM generate_series(1, {n}) g")
        yield m.wait_pg(b, n, what=f"{n} rows in B")
        probe = yield m.node("probe")  # one full sync first: the code paths are warm when idle is taken
        yield m.wait_node(probe, n, what="initial sync of the probe client")
        yield probe.stop()
        yield wait_until(lambda: ((e.details() or {}).get("satellite") or {}).get("connections") == 0,
                         timeout=60, what="the probe client gone", interval=0.2)
        idle = e.rss_kb()

        e.reset_peak_rss()
        with RssSampler(e) as s:
            yield defer.gatherResults([self.stalled_client(i) for i in range(self.STALLED)])
            yield wait_until(lambda: self.hub_status().get("snapshot_readers") == self.STALLED, timeout=120,
                             what="every stalled client holding a snapshot reader", interval=0.2)
            stalled_rss = e.rss_kb()
            stalled_peak = e.peak_rss_kb()
            # While they stall (the heartbeat drops a silent client after 5 to 15 s), the databases
            # keep replicating and another client syncs every row.
            a.psql("INSERT INTO big VALUES (0, 'written while clients stall', 0)")
            yield m.wait_pg(b, n + 1, timeout=60, what="a new row in B while clients stall")
            other = yield m.node("other", user="bob")
            still = self.hub_status().get("snapshot_readers")
            yield m.wait_node(other, n + 1, timeout=600, what="a full initial sync while clients stall")
        peak = e.peak_rss_kb()
        report(f"{self.STALLED} clients stalled mid initial sync of {n} rows: Electric RSS idle {mb(idle):.0f} MB, "
               f"stalled {mb(stalled_rss):.0f} MB (+{mb(stalled_rss - idle):.0f} MB, peak +{mb(stalled_peak - idle):.0f}"
               f" MB); another client's full sync started with {still} readers open, peak +{mb(peak - idle):.0f} MB "
               f"(sampled max {mb(s.max_kb):.0f} MB)")
        self.assertLess(stalled_peak - idle, STALL_BOUND_MB * 1024)
        self.assertLess(peak - idle, BOUND_MB * 1024)

        # Silent clients are dropped by the heartbeat (or here, go): their readers and memory are released.
        yield self._drop_clients()
        yield wait_until(lambda: self.hub_status().get("snapshot_readers") == 0, timeout=60,
                         what="readers released", interval=0.5)
        after = e.rss_kb()
        report(f"after the stalled clients went: RSS {mb(after):.0f} MB (+{mb(after - idle):.0f} MB over idle)")
        self.assertLessEqual(after - idle, STALL_BOUND_MB * 1024)
        self.assertEqual(subscriber_errors(a), [])
        self.assertEqual(subscriber_errors(b), [])
        self.assertEqual(other.crashes(), [])
