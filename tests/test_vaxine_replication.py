"""
The replication-stream link against a running Vaxine (the real node where ../shared/vaxine exists,
else the fake): offsets, exclusive resume, flow control, reconnect after a kill, and the
timeouts on task.Clock.
"""

import uuid

from twisted.internet import defer, protocol, reactor, task
from twisted.trial import unittest

from electric.config import Config
from electric.hub.interface import UPSERT, RowChange, Transaction
from electric.vaxine import datamodel as D, stream as S
from electric.vaxine.errors import Unavailable
from electric.vaxine.pb_client import AntidoteClient
from electric.vaxine.replication import ReplicationClient, WalQueue
from tests.polling import wait_until
from tests.vaxine_helpers import Collector, fast_retry, shared_vaxine, start_vaxine, unread_bytes


class Base(unittest.TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def connect(self, node):
        self.node = node
        self.pb = AntidoteClient(node.host, node.pb_port, retry_policy=fast_retry)
        self.pb.startService()
        self.addCleanup(self.pb.stopService)
        yield self.pb.when_connected()
        self.table = f"t_{uuid.uuid4().hex[:10]}"

    def stream(self, consumer, offset, **kwargs):
        client = ReplicationClient(consumer, self.node.host, self.node.repl_port, offset=offset,
                                   retry_policy=fast_retry, **kwargs)
        client.startService()
        self.addCleanup(client.stopService)
        return client

    def write(self, n, start=0, size=10):
        """n transactions through the PB link, one row each; origin_id = the row number."""
        ds = []
        for i in range(start, start + n):
            row = {"id": str(i), "v": f"{i}:" + "x" * size}
            t = Transaction("postgres_1", i.to_bytes(8, "big"), 1660749606000000 + i,
                            (RowChange("public", self.table, UPSERT, (str(i),), row),))
            ds.append(self.pb.write(D.transaction_updates(t, "all_tables")))
        return defer.gatherResults(ds, consumeErrors=True)


class OnSharedNode(Base):
    @defer.inlineCallbacks
    def setUp(self):
        yield self.connect((yield shared_vaxine(self)))

    @defer.inlineCallbacks
    def test_from_eof_only_new_transactions_arrive(self):
        yield self.write(2, 0)
        collector = Collector()
        client = self.stream(collector, S.EOF)
        yield client.when_streaming()
        yield self.write(3, 100)
        yield wait_until(lambda: len(collector.electric(self.table)) == 3, what="3 new transactions")
        got = collector.electric(self.table)
        self.assertEqual([w.origin_id for w in got], [i.to_bytes(8, "big") for i in (100, 101, 102)])
        self.assertEqual([w.origin for w in got], ["postgres_1"] * 3)
        self.assertEqual([w.commit_timestamp for w in got], [1660749606000000 + i for i in (100, 101, 102)])
        self.assertEqual([c.row for w in got for c in w.changes],
                         [{"id": str(i), "v": f"{i}:" + "x" * 10} for i in (100, 101, 102)])
        rights = [w.offset.right for w in got]
        self.assertEqual(rights, sorted(set(rights)))
        self.assertEqual(client.position, collector.txns[-1].offset)
        self.assertEqual(client.status()["delivered"], len(collector.txns))

    @defer.inlineCallbacks
    def test_raw_values(self):
        collector = Collector()
        client = self.stream(collector, S.EOF, raw_values=True)
        yield client.when_streaming()
        yield self.write(1, 7)
        yield wait_until(lambda: any(op.key.startswith(f"rows:public:{self.table}:".encode())
                                     for t in collector.txns for op in t.ops), what="the raw transaction")
        txn = collector.txns[-1]
        self.assertTrue(all(op.state is None and len(op.effects) == 1 for op in txn.ops))
        self.assertEqual(sum(1 for op in txn.ops if op.key.startswith(D.METADATA_PREFIX)), 5)

    @defer.inlineCallbacks
    def test_offset_the_node_cannot_serve_is_a_failed_start(self):
        client = self.stream(Collector(), S.WalOffset(10 ** 12, 10 ** 12 + 1))
        yield wait_until(lambda: client.connection.failures >= 2, what="two failed starts")
        self.assertFalse(client.streaming)
        self.assertIn("closed the connection before accepting the stream start", client.status()["last_error"])

    @defer.inlineCallbacks
    def test_slow_consumer_pauses_reading_instead_of_buffering(self):
        collector = Collector(pause_after=1)
        client = self.stream(collector, S.EOF)
        yield client.when_streaming()
        n, size = 40, 300_000
        yield self.write(n, 0, size=size)
        # Reading stopped after the first transaction: the rest waits in the kernel (and, once the
        # socket buffers are full, in Vaxine), not in this process.
        yield wait_until(lambda: collector.txns and unread_bytes(client) > 0,
                         what="the first transaction, then unread stream bytes in the kernel")
        self.assertEqual(len(collector.txns), 1)
        self.assertTrue(client.paused)
        self.assertLess(len(client._held), n // 4, "the client decoded far more than one read's worth")
        self.assertLess(client._protocol.session.buffered, 2 * (size + 65536))
        if not self.node.is_real:
            yield wait_until(lambda: any(s.paused for s in self.node.fake.sessions),
                             what="TCP back-pressure to reach the (fake) server")
        self.assertEqual(len(collector.txns), 1)
        collector.pause_after = None
        client.resumeProducing()
        yield wait_until(lambda: len(collector.electric(self.table)) == n, timeout=120, what="all transactions")
        got = collector.electric(self.table)
        self.assertEqual(sorted(w.origin_id for w in got), [i.to_bytes(8, "big") for i in range(n)])
        self.assertEqual(len({w.offset.right for w in got}), n)
        self.assertEqual([c.row["v"] for w in got for c in w.changes],
                         [f"{int.from_bytes(w.origin_id, 'big')}:" + "x" * size for w in got])

    @defer.inlineCallbacks
    def test_paused_before_start_still_starts(self):
        collector = Collector()
        client = ReplicationClient(collector, self.node.host, self.node.repl_port, offset=S.EOF, retry_policy=fast_retry)
        client.pauseProducing()
        client.startService()
        self.addCleanup(client.stopService)
        yield client.when_streaming()
        yield self.write(1, 0)
        yield wait_until(lambda: unread_bytes(client) > 0, what="the transaction waiting unread")
        self.assertEqual(collector.txns, [])
        client.resumeProducing()
        yield wait_until(lambda: len(collector.electric(self.table)) == 1, what="the transaction after resume")

    @defer.inlineCallbacks
    def test_wal_queue_pulls_with_a_high_water_mark(self):
        queue = WalQueue(high_water=3)
        client = self.stream(queue, S.EOF)
        yield client.when_streaming()
        yield self.write(12, 0)
        yield wait_until(lambda: len(queue) >= 3, what="the queue to reach its high-water mark")
        self.assertTrue(client.paused)
        self.assertEqual(len(queue), 3)      # the rest waits unread (or held), not in the queue
        got = []
        while len(got) < 12:
            batch = yield queue.next(2)
            self.assertTrue(1 <= len(batch) <= 2)
            self.assertLessEqual(len(queue), 3)
            got.extend(D.from_wal(txn) for txn in batch)
        self.assertEqual([w.origin_id for w in got], [i.to_bytes(8, "big") for i in range(12)])
        self.assertFalse(client.paused)
        queue.close()
        yield self.assertFailure(queue.next(), Unavailable)

    def test_from_config(self):
        config = Config(vaxine_host="vaxine.example", vaxine_replication_port=18088, vaxine_connection_timeout_ms=1500)
        client = ReplicationClient.from_config(config, Collector(), S.EOF)
        self.assertEqual((client.host, client.port, client.connection.connect_timeout, client.position),
                         ("vaxine.example", 18088, 1.5, S.EOF))


class OnOwnNode(Base):
    @defer.inlineCallbacks
    def setUp(self):
        yield self.connect((yield start_vaxine(self)))

    @defer.inlineCallbacks
    def test_from_the_beginning_and_exclusive_resume(self):
        yield self.write(5, 0)
        first = Collector()
        client = self.stream(first, S.BEGINNING)
        yield wait_until(lambda: len(first.txns) == 5, what="the whole log")
        self.assertEqual([D.from_wal(t).origin_id for t in first.txns], [i.to_bytes(8, "big") for i in range(5)])
        token = S.offset_to_bytes(first.txns[1].offset)          # what a consumer would store
        yield client.stopService()

        second = Collector()
        self.stream(second, S.offset_from_bytes(token))
        yield wait_until(lambda: len(second.txns) == 3, what="the transactions after the token")
        self.assertEqual([t.offset.right for t in second.txns], [t.offset.right for t in first.txns[2:]])
        self.assertEqual([D.from_wal(t).origin_id for t in second.txns], [i.to_bytes(8, "big") for i in (2, 3, 4)])

    @defer.inlineCallbacks
    def test_kill_and_restart_resumes_without_gaps_or_duplicates(self):
        collector = Collector()
        client = self.stream(collector, S.BEGINNING)
        yield client.when_streaming()
        yield self.write(2, 0)
        yield wait_until(lambda: len(collector.txns) == 2, what="two transactions")

        yield self.node.kill()
        yield wait_until(lambda: not client.streaming, what="the stream to notice the kill")
        yield wait_until(lambda: client.connection.failures >= 1, what="a failed reconnect")
        self.assertIsNotNone(client.status()["last_error"])

        yield self.node.restart()
        yield wait_until(lambda: client.streaming and self.pb.connected, timeout=60, what="both links back")
        yield self.write(2, 2)
        yield wait_until(lambda: len(collector.txns) == 4, what="the transactions after the restart")
        self.assertEqual([D.from_wal(t).origin_id for t in collector.txns], [i.to_bytes(8, "big") for i in range(4)])
        self.assertEqual(client.position, collector.txns[-1].offset)
        rights = [t.offset.right for t in collector.txns]
        self.assertEqual(rights, sorted(set(rights)))


class SilentServer(protocol.Protocol):
    def connectionMade(self):
        self.factory.connections.append(self)


class ClockDriven(unittest.TestCase):
    """The stream start timeout and reconnect on task.Clock (the sockets are real)."""

    def listen(self, proto):
        factory = protocol.Factory.forProtocol(proto)
        factory.connections = []
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: [c.transport.abortConnection() for c in factory.connections])
        return factory, port.getHost().port

    @defer.inlineCallbacks
    def test_start_timeout_then_retry(self):
        factory, port = self.listen(SilentServer)
        clock = task.Clock()
        client = ReplicationClient(Collector(), "127.0.0.1", port, clock=clock, start_timeout=10.0,
                                   retry_policy=lambda n: 2.0)
        client.startService()
        self.addCleanup(client.stopService)
        yield wait_until(lambda: len(factory.connections) == 1, what="the first connection")
        yield wait_until(lambda: client.connection.state == "preparing", what="the start request")
        clock.advance(9.9)
        self.assertEqual(client.connection.state, "preparing")
        clock.advance(0.1)
        self.assertEqual(client.connection.state, "waiting")
        self.assertIn("did not accept the stream start within 10 s", client.status()["last_error"])
        clock.advance(2.0)
        yield wait_until(lambda: len(factory.connections) == 2, what="the retry")

    @defer.inlineCallbacks
    def test_garbage_from_the_server_drops_the_connection(self):
        class Garbage(protocol.Protocol):
            def connectionMade(self):
                self.factory.connections.append(self)
                self.transport.write(b"\x00\x00\x00\x02\x83\x00")
        factory, port = self.listen(Garbage)
        client = ReplicationClient(Collector(), "127.0.0.1", port, retry_policy=lambda n: 60.0)
        client.startService()
        self.addCleanup(client.stopService)
        yield wait_until(lambda: client.connection.state == "waiting", what="the failed start")
        self.assertIn("undecodable replication-stream frame", client.status()["last_error"])
