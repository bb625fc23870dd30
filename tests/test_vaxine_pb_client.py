"""
The PB API link: against a running Vaxine (the real node where ../shared/vaxine exists, else the
fake), and its timeouts, backoff and protocol errors driven by task.Clock.
"""

import uuid

from twisted.internet import defer, error, task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from electric.config import Config
from electric.hub.interface import DELETE, UPSERT, RowChange, Transaction
from electric.vaxine import antidote as A, datamodel as D, etf
from electric.vaxine.connection import Reconnector, default_retry_policy
from electric.vaxine.errors import ProtocolError, RequestFailed, RequestTimeout, Unavailable
from electric.vaxine.pb import antidote_pb2 as pb
from electric.vaxine.pb_client import AntidoteClient, AntidoteProtocol
from tests.polling import wait_until
from tests.vaxine_helpers import fast_retry, shared_vaxine, start_vaxine


def unique(prefix="k"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class AgainstVaxine(unittest.TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        self.node = yield shared_vaxine(self)
        self.client = AntidoteClient(self.node.host, self.node.pb_port, retry_policy=fast_retry)
        self.client.startService()
        self.addCleanup(self.client.stopService)
        yield self.client.when_connected()

    def txn(self, *changes):
        return Transaction("postgres_1", uuid.uuid4().bytes, 1660749606202865, tuple(changes))

    @defer.inlineCallbacks
    def test_ping_and_status(self):
        yield self.client.ping()
        self.assertTrue(self.client.connected)
        self.assertEqual(self.client.status()["state"], "ready")

    @defer.inlineCallbacks
    def test_interactive_transaction_isolation_and_read_back(self):
        table = unique("t")
        change = RowChange("public", table, UPSERT, ("1",), {"id": "1", "v": "hello", "n": None})
        obj = D.row_object("public", table, ("1",))
        writer = yield self.client.start_transaction()
        other = yield self.client.start_transaction()
        yield writer.update(D.transaction_updates(self.txn(change)))
        own = yield writer.read([obj])
        self.assertEqual(own[0][(b"row", A.RRMAP)], {(b"id", A.LWWREG): D.encode_value("1"),
                                                     (b"n", A.LWWREG): D.encode_value(None),
                                                     (b"v", A.LWWREG): D.encode_value("hello")})
        self.assertEqual((yield other.read([obj])), [{}])      # not committed: invisible elsewhere
        commit_time = yield writer.commit()
        clock = etf.binary_to_term(commit_time)
        self.assertIsInstance(clock, dict)
        self.assertTrue(all(isinstance(v, int) for v in clock.values()))
        (after,) = yield self.client.static_read([obj])
        self.assertEqual(after[(b"deleted?", A.FLAG_DW)], False)
        self.assertEqual(after[(b"id", A.LWWREG)], f"public:{table}:1".encode())
        yield other.commit()

    @defer.inlineCallbacks
    def test_write_helper_and_delete(self):
        table = unique("t")
        yield self.client.write(D.transaction_updates(self.txn(RowChange("public", table, UPSERT, ("1",), {"id": "1"}))))
        yield self.client.write(D.transaction_updates(self.txn(RowChange("public", table, DELETE, ("1",), {"id": "1"}))))
        (state,) = yield self.client.static_read([D.row_object("public", table, ("1",))])
        self.assertEqual(state[(b"deleted?", A.FLAG_DW)], True)
        self.assertEqual(state[(b"row", A.RRMAP)], {(b"id", A.LWWREG): D.encode_value("1")})

    @defer.inlineCallbacks
    def test_refusals_carry_the_servers_error(self):
        with self.assertRaises(RequestFailed) as e:
            yield self.client.request(A.commit_transaction(b"garbage"))
        self.assertEqual(e.exception.errorcode, 0)
        self.assertTrue(e.exception.errmsg.startswith(b"error: badarg"), e.exception.errmsg)
        txn = yield self.client.start_transaction()
        yield txn.commit()
        with self.assertRaises(RequestFailed) as e:
            yield self.client.request(A.commit_transaction(txn.descriptor))
        self.assertTrue(e.exception.errmsg.startswith(b"exit: {noproc"), e.exception.errmsg)
        with self.assertRaisesRegex(Exception, "already committed"):
            yield txn.update([])
        # The connection survives refusals.
        yield self.client.ping()

    @defer.inlineCallbacks
    def test_abort(self):
        key = unique()
        txn = yield self.client.start_transaction()
        obj = A.bound_object(key, A.LWWREG)
        yield txn.update([A.update_op(obj, A.assign(b"x"))])
        yield txn.abort()
        self.assertEqual((yield self.client.static_read([obj])), [b""])

    @defer.inlineCallbacks
    def test_pipelined_requests_answer_in_order(self):
        keys = [unique() for _ in range(40)]
        writes = [self.client.static_update([A.update_op(A.bound_object(k, A.LWWREG), A.assign(k.encode()))])
                  for k in keys]
        self.assertGreater(self.client.connection.protocol.outstanding, 1)
        yield defer.gatherResults(writes, consumeErrors=True)
        reads = yield defer.gatherResults(
            [self.client.static_read([A.bound_object(k, A.LWWREG)]) for k in keys], consumeErrors=True)
        self.assertEqual(reads, [[k.encode()] for k in keys])

    def test_from_config(self):
        config = Config(vaxine_host="vaxine.example", vaxine_api_port=18087, vaxine_connection_timeout_ms=2500)
        client = AntidoteClient.from_config(config)
        self.assertEqual((client.host, client.port, client.connection.connect_timeout), ("vaxine.example", 18087, 2.5))


class Restart(unittest.TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def test_kill_fails_requests_then_reconnects_and_data_survives(self):
        node = yield start_vaxine(self)
        client = AntidoteClient(node.host, node.pb_port, retry_policy=fast_retry)
        client.startService()
        self.addCleanup(client.stopService)
        obj = A.bound_object("survivor", A.LWWREG)
        yield client.static_update([A.update_op(obj, A.assign(b"before kill"))])
        open_txn = yield client.start_transaction()

        yield node.kill()
        yield wait_until(lambda: not client.connected, what="the client to notice the kill")
        with self.assertRaises(Unavailable):
            yield client.ping()
        with self.assertRaises(Unavailable):
            yield open_txn.commit()
        self.assertGreaterEqual(client.connection.failures, 1)

        yield node.restart()
        yield wait_until(lambda: client.connected, timeout=60, what="the client to reconnect")
        self.assertEqual((yield client.static_read([obj])), [b"before kill"])
        self.assertIsNone(client.connection.last_error)


class NeverConnects:
    """An endpoint whose connect never completes (a SYN into the void)."""

    def __init__(self):
        self.attempts = 0
        self.cancelled = 0

    def connect(self, factory):
        self.attempts += 1

        def cancel(d):
            self.cancelled += 1
        return defer.Deferred(cancel)


class Refuses:
    def __init__(self):
        self.attempts = 0

    def connect(self, factory):
        self.attempts += 1
        return defer.fail(error.ConnectionRefusedError("127.0.0.1:1"))


class ClockDriven(unittest.TestCase):
    def test_connect_timeout(self):
        clock, endpoint = task.Clock(), NeverConnects()
        client = AntidoteClient(endpoint=endpoint, clock=clock, connect_timeout=5.0, retry_policy=lambda n: 1.5)
        client.startService()
        results = []
        client.ping().addErrback(results.append)
        clock.advance(4.999)
        self.assertEqual(results, [])
        clock.advance(0.001)
        self.assertEqual(len(results), 1)
        results[0].trap(Unavailable)
        self.assertIn("could not connect within 5 s", str(results[0].value))
        self.assertEqual((endpoint.attempts, endpoint.cancelled), (1, 1))
        self.assertEqual(client.status()["state"], "waiting")
        clock.advance(1.499)
        self.assertEqual(endpoint.attempts, 1)
        clock.advance(0.001)
        self.assertEqual(endpoint.attempts, 2)
        d = client.stopService()
        self.assertTrue(d.called)
        self.assertEqual(endpoint.cancelled, 2)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_backoff_between_refused_attempts(self):
        clock, endpoint = task.Clock(), Refuses()
        delays = []

        def policy(n):
            delays.append(n)
            return 0.1 * 2 ** n
        client = AntidoteClient(endpoint=endpoint, clock=clock, retry_policy=policy)
        client.startService()
        for _ in range(4):
            clock.advance(clock.getDelayedCalls()[0].getTime() - clock.seconds())
        self.assertEqual(delays, [1, 2, 3, 4, 5])
        self.assertEqual(endpoint.attempts, 5)
        self.assertAlmostEqual(clock.seconds(), 0.2 + 0.4 + 0.8 + 1.6)
        self.assertIn("ConnectionRefusedError", client.status()["last_error"])
        client.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_default_policy_doubles_from_100ms_to_5s_with_jitter(self):
        policy = default_retry_policy()
        for attempt, low in [(0, 0.1), (1, 0.2), (2, 0.4), (5, 3.2), (6, 5.0), (50, 5.0)]:
            values = {policy(attempt) for _ in range(20)}
            self.assertTrue(all(low <= v <= low + 0.1 for v in values), (attempt, values))
            self.assertGreater(len(values), 1)

    def test_when_ready_on_a_stopped_link(self):
        client = AntidoteClient(endpoint=Refuses(), clock=task.Clock())
        return self.assertFailure(client.ping(), Unavailable)


class ProtocolLevel(unittest.TestCase):
    """AntidoteProtocol on a StringTransport: bytes out, bytes in, timers on a Clock."""

    def setUp(self):
        self.clock = task.Clock()
        self.protocol = AntidoteProtocol(self.clock, request_timeout=10.0, max_pipeline=2)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def reply(self, message):
        self.protocol.dataReceived(A.encode(message))

    def test_request_timeout_closes_the_link(self):
        first = self.protocol.request(A.static_read_objects([]))
        second = self.protocol.request(A.start_transaction())
        self.clock.advance(9.9)
        self.assertFalse(first.called)
        self.clock.advance(0.1)
        self.assertIn("no reply to ApbStaticReadObjects within 10 s", str(self.failureResultOf(first, RequestTimeout).value))
        self.assertIn("closed after another request failed", str(self.failureResultOf(second, Unavailable).value))
        self.assertTrue(self.transport.disconnecting)
        self.failureResultOf(self.protocol.request(A.start_transaction()), RequestTimeout)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_replies_in_order_and_pipeline_depth(self):
        d1 = self.protocol.request(A.commit_transaction(b"T1"))
        d2 = self.protocol.request(A.commit_transaction(b"T2"))
        d3 = self.protocol.request(A.commit_transaction(b"T3"))
        self.assertEqual(self.transport.value(), A.encode(A.commit_transaction(b"T1")) + A.encode(A.commit_transaction(b"T2")))
        self.transport.clear()
        data = A.encode(pb.ApbCommitResp(success=True, commit_time=b"C1")) + A.encode(pb.ApbCommitResp(success=False, errorcode=3))
        for i in range(len(data)):   # byte by byte
            self.protocol.dataReceived(data[i:i + 1])
        self.assertEqual(self.successResultOf(d1).commit_time, b"C1")
        self.assertEqual(self.failureResultOf(d2, RequestFailed).value.errorcode, 3)
        self.assertEqual(self.transport.value(), A.encode(A.commit_transaction(b"T3")))
        self.reply(pb.ApbErrorResp(errmsg=b"exit: noproc", errcode=0))
        self.assertIn("exit: noproc", str(self.failureResultOf(d3, RequestFailed).value))
        self.assertEqual(self.protocol.outstanding, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_garbage_from_the_server(self):
        d = self.protocol.request(A.start_transaction())
        self.protocol.dataReceived(b"\x00\x00\x00\x01\x05")
        self.assertIn("unknown Antidote message code 5", str(self.failureResultOf(d, ProtocolError).value))
        self.assertTrue(self.transport.disconnecting)

    def test_wrong_reply_type(self):
        d = self.protocol.request(A.start_transaction())
        self.reply(pb.ApbOperationResp(success=True))
        self.failureResultOf(d, ProtocolError)
        self.assertTrue(self.transport.disconnecting)

    def test_unsolicited_reply(self):
        self.reply(pb.ApbOperationResp(success=True))
        self.assertTrue(self.transport.disconnecting)
        self.assertIn("unsolicited ApbOperationResp", str(self.failureResultOf(self.protocol.request(A.start_transaction())).value))

    def test_connection_lost(self):
        d1 = self.protocol.request(A.start_transaction())
        d2 = self.protocol.request(A.start_transaction())
        d3 = self.protocol.request(A.start_transaction())
        self.protocol.connectionLost(Failure(error.ConnectionLost("gone")))
        for d in (d1, d2, d3):
            self.assertIn("Vaxine PB connection lost", str(self.failureResultOf(d, Unavailable).value))
        self.failureResultOf(self.protocol.request(A.start_transaction()), Unavailable)
        self.assertTrue(self.protocol.closed.called)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ReconnectorStates(unittest.TestCase):
    def test_stop_while_connecting_and_waiting(self):
        clock, endpoint = task.Clock(), NeverConnects()
        r = Reconnector(endpoint, None, clock, 5.0, retry_policy=lambda n: 1.0)
        r.start()
        self.assertEqual(r.state, r.CONNECTING)
        waiter = r.when_ready(fail_after_failures=None)
        d = r.stop()
        self.assertTrue(d.called)
        self.assertEqual(r.state, r.STOPPED)
        self.failureResultOf(waiter, Unavailable)
        r.start()
        clock.advance(5.0)
        self.assertEqual(r.state, r.WAITING)
        self.assertTrue(r.stop().called)
        self.assertEqual(clock.getDelayedCalls(), [])
