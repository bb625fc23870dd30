"""
Conformance: one scripted exchange against the real Vaxine node and against tests/fake_vaxine.py,
decoded and compared.  Skipped (with the reason) only where the real node is absent.

What may legitimately differ is normalised away, and nothing else:
* opaque identities (pids, references, node names, descriptors, commit clocks) -> their shapes;
* timestamps (register stamps, txid micros) -> a placeholder, after checking they are microseconds;
* flag tokens (20 random bytes) -> how many there are;
* offsets -> checked by their rules (R strictly increasing, L <= R, resume exclusive), not numbers;
* the order of a transaction's objects (the real node's is arbitrary) -> sorted by key;
* materialized states -> compared as values after applying the transaction's own effects (the
  real node sometimes streams the state from before the transaction; see electric.vaxine.crdt);
  each state must still be a well-formed Erlang dict.
"""

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.trial import unittest

from electric.hub.interface import DELETE, UPSERT, RowChange, Transaction
from electric.vaxine import antidote as A, crdt, datamodel as D, etf, stream as S
from electric.vaxine.errors import RequestFailed
from electric.vaxine.etf import Atom, Pid, Reference
from electric.vaxine.framing import FrameDecoder, frame
from electric.vaxine.pb_client import AntidoteClient
from tests.polling import wait_until
from tests.vaxine_helpers import REAL_MISSING_REASON, FakeNode, RealVaxine, real_available


class RawConnection(protocol.Protocol):
    """Bytes out, frames in, and whether the peer closed."""

    def __init__(self):
        self.frames = []
        self.decoder = FrameDecoder(1 << 28)
        self.closed = False

    def dataReceived(self, data):
        self.frames.extend(self.decoder.feed(data))

    def connectionLost(self, reason=None):
        self.closed = True


@defer.inlineCallbacks
def connect(port):
    conn = yield endpoints.connectProtocol(endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port), RawConnection())
    return conn


def shape(term):
    """Opaque identities replaced by their shapes."""
    if isinstance(term, Pid):
        return "PID"
    if isinstance(term, Reference):
        return f"REF/{len(term.ids)}"
    if isinstance(term, Atom) and "@" in term.name:
        return "NODE"
    if isinstance(term, tuple):
        return tuple(shape(t) for t in term)
    if isinstance(term, list):
        return [shape(t) for t in term]
    if isinstance(term, dict):
        return {shape(k): shape(v) for k, v in term.items()}
    return term


def clock_shape(data):
    """A commit clock: #{{Node, {Mega, Sec, Micro}} => Micros} as its shape."""
    clock = etf.binary_to_term(data)
    return sorted((shape(node), tuple(type(x).__name__ for x in dc), type(v).__name__)
                  for (node, dc), v in clock.items())


class Stamps:
    """Register stamps: microseconds since the epoch, replaced by a placeholder.

    Their identity is not compared: the real node stamps the nested assigns of
    one update with the clock, so they are equal or not depending on timing
    (the fake always increases them).
    """

    def __call__(self, ts):
        assert isinstance(ts, int) and ts > 10 ** 15, ts
        return "ts"


def effect_shape(ctype, effect, stamps):
    if ctype == crdt.REGISTER_LWW:
        return ("lww", stamps(effect[0]), effect[1])
    if ctype == crdt.FLAG_DW:
        return ("flag", len(effect[0]), len(effect[1]), len(effect[2]))
    updates, removes = crdt.map_rr_effect(effect)
    return ("map", [(k, effect_shape(k[1], e, stamps)) for k, e in updates],
            [(k, None if e is None else effect_shape(k[1], e, stamps)) for k, e in removes])


def plain_value(ctype, state):
    if ctype == crdt.REGISTER_LWW:
        return state[1]
    if ctype == crdt.FLAG_DW:
        return crdt.flag_dw_enabled(state)
    return {k: plain_value(k[1], v) for k, v in state.items()}


def txn_shape(term, stamps):
    txn = S.parse_server_term(term)
    assert shape(txn.txid)[:1] == (Atom("tx_id"),) and shape(txn.txid)[2] == "PID", txn.txid
    assert isinstance(txn.txid[1], int)
    assert shape(txn.dcid)[0] == "NODE" and len(txn.dcid[1]) == 3, txn.dcid
    ops = []
    for op in sorted(txn.ops, key=lambda o: o.key):
        if op.state is None:   # raw_values
            ops.append((op.key, op.bucket, op.type, [effect_shape(op.type, e, stamps) for e in op.effects]))
            continue
        if op.type == crdt.MAP_RR:
            assert len(op.state) == 9 and op.state[0] == Atom("dict"), op.state
        state = crdt.state_from_term(op.type, op.state)
        for e in op.effects:
            state = crdt.apply_effect(op.type, e, state)
        ops.append((op.key, op.bucket, op.type, plain_value(op.type, state),
                    [effect_shape(op.type, e, stamps) for e in op.effects]))
    return txn.offset, ops


class Script:
    """The exchange; every step appends (name, normalised outcome) to `self.out`."""

    def __init__(self, node):
        self.node = node
        self.out = []
        self.offsets = {}

    def log(self, name, outcome):
        self.out.append((name, outcome))

    @defer.inlineCallbacks
    def pb_part(self):
        client = AntidoteClient(self.node.host, self.node.pb_port)
        client.startService()
        try:
            yield client.when_connected()
            yield self._pb(client)
        finally:
            yield client.stopService()

    @defer.inlineCallbacks
    def _pb(self, client):
        row = RowChange("public", "items", UPSERT, ("1",), {"id": "1", "v": "hello", "n": None})
        t1 = Transaction("postgres_1", b"\x00" * 7 + b"\x01", 1660749606202865, (row,))
        obj = D.row_object("public", "items", ("1",))
        self.log("probe", (yield client.static_read([A.bound_object(b"probe", A.LWWREG)])))
        self.log("unwritten", (yield client.static_read([A.bound_object(b"none", A.RRMAP), A.bound_object(b"none2", A.LWWREG),
                                                         A.bound_object(b"none3", A.FLAG_DW)])))
        txn = yield client.start_transaction()
        descriptor = etf.binary_to_term(txn.descriptor)
        self.log("descriptor", (shape(descriptor[0]), type(descriptor[1]).__name__, shape(descriptor[2]), len(descriptor)))
        self.log("update", (yield txn.update(D.transaction_updates(t1, "all_tables"))))
        self.log("read own write", (yield txn.read([obj, D.metadata_object()])))
        commit_time = yield txn.commit()
        self.log("commit time", clock_shape(commit_time))
        self.log("static read", (yield client.static_read([obj])))
        reply = yield client.request(A.static_read_objects([obj]))
        self.log("static read commit time", clock_shape(reply.committime.commit_time))
        static = yield client.static_update([A.update_op(A.bound_object(b"reg", A.LWWREG), A.assign(b"one"))])
        self.log("static update", clock_shape(static))
        self.log("static update read", (yield client.static_read([A.bound_object(b"reg", A.LWWREG)])))
        for name, descriptor in (("garbage descriptor", b"garbage"), ("finished transaction", txn.descriptor)):
            try:
                yield client.request(A.commit_transaction(descriptor))
                self.log(name, "accepted")
            except RequestFailed as e:
                self.log(name, (e.errorcode, e.errmsg.split(b"\n")[0][:14]))
        aborted = yield client.start_transaction()
        yield aborted.update([A.update_op(A.bound_object(b"reg", A.LWWREG), A.assign(b"two"))])
        self.log("abort", (yield aborted.abort()))
        self.log("after abort", (yield client.static_read([A.bound_object(b"reg", A.LWWREG)])))
        # Concurrent delete and update of the row: the update wins.
        deleter = yield client.start_transaction()
        updater = yield client.start_transaction()
        yield deleter.update(D.transaction_updates(Transaction("o", b"d", 1, (RowChange("public", "items", DELETE, ("1",)),))))
        yield updater.update(D.transaction_updates(Transaction("o", b"u", 2, (
            RowChange("public", "items", UPSERT, ("1",), {"id": "1", "v": "again"}),))))
        yield deleter.commit()
        yield updater.commit()
        self.log("update beats delete", (yield client.static_read([obj])))
        # Pipelined requests.
        replies = yield defer.gatherResults([client.static_read([A.bound_object(b"reg", A.LWWREG)]) for _ in range(5)])
        self.log("pipelined", replies)
        # Bad frames on raw connections: closed without a reply.
        for name, data in (("undecodable frame", b"\x00\x00\x00\x03\x74\xff\xff"), ("unknown code", b"\x00\x00\x00\x01\x05"),
                           ("reply code as request", A.encode(A.static_read_objects([]))[:4] + bytes([111]) +
                            A.encode(A.static_read_objects([]))[5:])):
            conn = yield connect(self.node.pb_port)
            conn.transport.write(data)
            yield wait_until(lambda: conn.closed, what=f"the PB server to close after {name}")
            self.log(name, ("closed", conn.frames))

    @defer.inlineCallbacks
    def stream_part(self):
        stamps = Stamps()
        ref = Reference(Atom("electric@127.0.0.1"), 0, (1, 2, 3))
        # From the beginning: the start reply, then every transaction of the PB part.
        conn = yield connect(self.node.repl_port)
        conn.transport.write(S.start_request(ref, S.BEGINNING))
        yield wait_until(lambda: len(conn.frames) >= 5, what="the start reply and 4 transactions")
        terms = [etf.binary_to_term(f) for f in conn.frames]
        self.log("start reply", shape(terms[0]))
        self.log("start reply echoes ref", terms[0][1] == ref)
        shapes = [txn_shape(t, stamps) for t in terms[1:]]
        offsets = [o for o, _ in shapes]
        self.log("transactions from 0", [ops for _, ops in shapes])
        self.log("offset rules", (all(o.left <= o.right for o in offsets),
                                  [b.right > a.right for a, b in zip(offsets, offsets[1:])]))
        # Stop, then start again on the same connection (allowed after a stop).
        rep_id = terms[0][2][1]
        stop_ref = Reference(Atom("electric@127.0.0.1"), 0, (4, 5, 6))
        conn.frames.clear()
        conn.transport.write(S.stop_request(stop_ref, rep_id))
        yield wait_until(lambda: conn.frames, what="the stop reply")
        self.log("stop reply", (shape(etf.binary_to_term(conn.frames[-1])), etf.binary_to_term(conn.frames[-1])[1] == stop_ref))
        conn.frames.clear()
        conn.transport.write(S.start_request(ref, S.WalOffset(*offsets[-2].term())))
        yield wait_until(lambda: len(conn.frames) >= 2, what="a restart from the next-to-last offset")
        resumed = [txn_shape(etf.binary_to_term(f), Stamps()) for f in conn.frames[1:]]
        self.log("resume is exclusive", ([o.right for o, _ in resumed] == [offsets[-1].right],
                                         [op[0] for op in resumed[0][1]]))
        # A second start while streaming: the connection closes.
        conn.transport.write(S.start_request(ref, S.EOF))
        yield wait_until(lambda: conn.closed, what="the close after a second start")
        self.log("second start while streaming", "closed")
        # raw_values.
        conn = yield connect(self.node.repl_port)
        conn.transport.write(S.start_request(ref, S.BEGINNING, raw_values=True))
        yield wait_until(lambda: len(conn.frames) >= 2, what="a raw transaction")
        self.log("raw values", txn_shape(etf.binary_to_term(conn.frames[1]), Stamps())[1])
        conn.transport.loseConnection()
        # Offsets that cannot be served, and garbage.
        for name, data in (("R < L", S.start_request(ref, S.WalOffset(50, 10))),
                           ("L past the end", S.start_request(ref, S.WalOffset(10 ** 9, 10 ** 9 + 5))),
                           ("not a request", frame(etf.term_to_binary((Atom("hello"), 1)))),
                           ("not a term", frame(b"\x00junk"))):
            conn = yield connect(self.node.repl_port)
            conn.transport.write(data)
            yield wait_until(lambda: conn.closed, what=f"the close after {name}")
            self.log(name, [shape(etf.binary_to_term(f)) for f in conn.frames])
        # From eof: nothing old, then exactly the next transaction.
        conn = yield connect(self.node.repl_port)
        conn.transport.write(S.start_request(ref, S.EOF))
        yield wait_until(lambda: conn.frames, what="the eof start reply")
        client = AntidoteClient(self.node.host, self.node.pb_port)
        client.startService()
        try:
            yield client.when_connected()
            yield client.static_update([A.update_op(A.bound_object(b"live", A.LWWREG), A.assign(b"pushed"))])
        finally:
            yield client.stopService()
        yield wait_until(lambda: len(conn.frames) >= 2, what="the live transaction")
        live = txn_shape(etf.binary_to_term(conn.frames[1]), Stamps())
        self.log("eof then live", (len(conn.frames), live[1], live[0].right > offsets[-1].right))
        conn.transport.loseConnection()


class RealAgainstFake(unittest.TestCase):
    timeout = 300

    def setUp(self):
        if not real_available():
            raise unittest.SkipTest(REAL_MISSING_REASON)

    @defer.inlineCallbacks
    def run_script(self, node):
        self.addCleanup(node.destroy)
        yield node.start()
        script = Script(node)
        yield script.pb_part()
        yield script.stream_part()
        return script.out

    @defer.inlineCallbacks
    def test_same_exchange_same_answers(self):
        real = yield self.run_script(RealVaxine())
        fake = yield self.run_script(FakeNode())
        self.assertEqual([name for name, _ in real], [name for name, _ in fake])
        for (name, r), (_, f) in zip(real, fake):
            self.assertEqual(r, f, f"step {name!r}: real node {r!r} != fake {f!r}")
