"""
A FAKE Vaxine node for tests on machines without the real one (../shared/vaxine).

This is not Vaxine.  It is an in-memory stand-in, in this test process's
reactor, that speaks both of Vaxine's wire formats as spec/vaxine.md gives
them and as the real node (commit bba3ec39) was checked to behave:

* **PB API** (`FakePbProtocol`): ``{packet, 4}`` frames of a code byte and a
  proto2 message; interactive transactions (start / update / read / commit /
  abort), static read and static update, replies strictly in request order
  (pipelining works), ``ApbErrorResp`` (errcode 0, an Erlang-looking error
  text) for an undecodable or unknown transaction descriptor, and the
  connection closed without a reply for an undecodable frame or unknown code.
  Descriptors are ``term_to_binary({tx_id, Micros, Pid})``, commit times
  ``term_to_binary(#{{Node, {Mega, Sec, Micro}} => Micros})``.
* **CRDTs** Electric uses, with Antidote's semantics: ``antidote_crdt_map_rr``
  (RRMAP; removal resets, entries at bottom vanish), ``..._register_lww``
  (LWWREG; stamped with the clock in microseconds when the update is
  processed -- the fake makes every stamp larger than the last, the real
  node was seen to give the nested assigns of one update equal stamps, which
  spec 2.5's "at least the previous + 1" does not allow; equal stamps are
  broken by the value) and ``..._flag_dw`` (FLAG_DW; enable/disable with
  20-byte random tokens, disable wins).  Each transaction reads the committed
  state as of its start plus its own writes; commits are never refused
  (``txn_cert = false``), so concurrent writers merge like on the real node.
  Other CRDT types are answered with an ``ApbErrorResp`` saying the fake does
  not support them.
* **Replication stream** (`FakeStreamProtocol`): the start / stop request
  and reply terms, ``{error, bad_proto}`` then close for a request it does not
  understand, close without reply for an offset it cannot serve (``R < L`` or
  ``L`` past the end), close on a second start while streaming, and one
  ``vx_wal_txn`` per committed transaction with effects, in commit order,
  with the same term shapes: ``TxId``, ``DcId``, ``{L, R}``, ``Ops`` of
  ``{{Key, Bucket}, Type, MaterializedState, Effects}`` (states as Erlang
  ``dict`` terms) or, with ``raw_values``, ``{{Key, Bucket}, Type, Effect}``.
  The server side honours TCP back-pressure (it is a push producer for its
  transport), so a client that stops reading stalls it as it stalls the real
  node.

The real node sometimes streams an object's state from *before* the
transaction instead of at its commit (see electric.vaxine.crdt); the fake
always streams the committed state, unless built with ``stale_states=True``,
which makes it always stream the state from before (to test readers).

Offsets have the real node's *rules* but not its numbers: the fake keeps a
log of update/commit/abort records whose sizes are their ETF sizes plus 8
bytes, ``R`` is the position of a transaction's commit record, ``L`` the
first-record position of the oldest transaction not yet sent in that
session, resumption from ``{L, R}`` re-reads from ``L`` and skips every
commit at or before ``R``.  Its dict terms place entries by its own hash (the
real node uses ``erlang:phash``), and it never repeats a flag token (the real
node was seen to list one enable token twice after a re-enable): readers must
not depend on either, and Electric's do not.

State lives in this object, so `stop` + `listen` on the same ports is a
"restart with recovery from log".
"""

from __future__ import annotations

import collections
import itertools
import os
import time
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from electric.vaxine import antidote, crdt, etf
from electric.vaxine.errors import ProtocolError
from electric.vaxine.etf import Atom, Pid, Reference
from electric.vaxine.framing import FrameDecoder, frame
from electric.vaxine.pb import antidote_pb2 as pb
from electric.vaxine.stream import (
    BAD_PROTO, EOF, ERROR, OFFSET, RAW_VALUES, VX_CLI_REQ, VX_CLI_START_REQ, VX_CLI_STOP_REQ, VX_SRV_RES,
    VX_SRV_START_RES, VX_SRV_STOP_RES, VX_WAL_TXN,
)

TX_ID = Atom("tx_id")
OK = Atom("ok")
NONE = Atom("none")
SUPPORTED = (antidote.RRMAP, antidote.LWWREG, antidote.FLAG_DW)


class FakeError(Exception):
    """A request the fake answers with ApbErrorResp (errcode 0, this text)."""


# --------------------------------------------------------------------------- CRDT engine
#
# States: LWW (ts, value); flag (enable list, disable list); map dict {(name, type atom): state}.
# Effects are kept as ETF-ready terms, exactly the shapes the stream shows.


def bottom(ctype: int):
    if ctype == antidote.LWWREG:
        return (0, b"")
    if ctype == antidote.FLAG_DW:
        return ([], [])
    return {}


def is_bottom(ctype: int, state) -> bool:
    return state == bottom(ctype)


def type_atom(ctype: int) -> Atom:
    return crdt.TYPE_ATOMS[ctype]


def pb_type(atom: Atom) -> int:
    return crdt.PB_TYPES[atom]


class Engine:
    """Downstream (operation -> effect) and update (effect -> state) for the supported types."""

    def __init__(self, now_us):
        self.now_us = now_us
        self.last_ts = 0

    def stamp(self) -> int:
        self.last_ts = max(self.now_us(), self.last_ts + 1)
        return self.last_ts

    def check(self, ctype: int) -> None:
        if ctype not in SUPPORTED:
            raise FakeError(f"error: {{fake_vaxine, unsupported_type, {ctype}}} (the fake supports "
                            "RRMAP, LWWREG and FLAG_DW only)")

    def downstream(self, ctype: int, op: pb.ApbUpdateOperation, state):
        self.check(ctype)
        kind = _op_kind(op)
        if ctype == antidote.LWWREG and kind == "regop":
            return (self.stamp(), bytes(op.regop.value))
        if ctype == antidote.FLAG_DW and kind == "flagop":
            enable, disable = state
            token = os.urandom(20)
            return (list(enable) + list(disable), [token] if op.flagop.value else [], [] if op.flagop.value else [token])
        if ctype == antidote.RRMAP and kind == "mapop":
            updates = []
            for nested in op.mapop.updates:
                key = (bytes(nested.key.key), type_atom(nested.key.type))
                self.check(nested.key.type)
                current = state.get(key, bottom(nested.key.type))
                updates.append((key, (OK, self.downstream(nested.key.type, nested.update, current))))
            removes = []
            for removed in op.mapop.removedKeys:
                key = (bytes(removed.key), type_atom(removed.type))
                self.check(removed.type)
                reset = self.reset(removed.type, state.get(key, bottom(removed.type)))
                removes.append((key, NONE if reset is None else (OK, reset)))
            return (updates, removes)
        if kind == "resetop":
            reset = self.reset(ctype, state)
            if reset is None:
                raise FakeError("error: {badarg, reset_not_supported}")
            return reset
        raise FakeError(f"error: {{badarg, {{operation, {kind}, type, {ctype}}}}}")

    def reset(self, ctype: int, state):
        if ctype == antidote.LWWREG:
            return None  # registers cannot be reset: removal has no effect
        if ctype == antidote.FLAG_DW:
            return (list(state[0]) + list(state[1]), [], [])
        removes = []
        for key, nested in state.items():
            reset = self.reset(pb_type(key[1]), nested)
            removes.append((key, NONE if reset is None else (OK, reset)))
        return ([], removes)

    def update(self, ctype: int, effect, state):
        return crdt.apply_effect(type_atom(ctype), effect, state)


def _op_kind(op: pb.ApbUpdateOperation) -> Optional[str]:
    for name in ("counterop", "setop", "regop", "mapop", "resetop", "flagop"):
        if op.HasField(name):
            return name
    return None


def state_term(ctype: int, state):
    """The internal state as the stream's ETF term."""
    if ctype == antidote.LWWREG:
        return (state[0], state[1])
    if ctype == antidote.FLAG_DW:
        return (list(state[0]), list(state[1]))
    return crdt.make_dict([(key, state_term(pb_type(key[1]), nested)) for key, nested in state.items()])


def read_value(ctype: int, state) -> pb.ApbReadObjectResp:
    if ctype == antidote.LWWREG:
        return pb.ApbReadObjectResp(reg=pb.ApbGetRegResp(value=state[1]))
    if ctype == antidote.FLAG_DW:
        return pb.ApbReadObjectResp(flag=pb.ApbGetFlagResp(value=bool(state[0]) and not state[1]))
    entries = [pb.ApbMapEntry(key=pb.ApbMapKey(key=name, type=pb_type(t)), value=read_value(pb_type(t), nested))
               for (name, t), nested in sorted(state.items())]
    return pb.ApbReadObjectResp(map=pb.ApbGetMapResp(entries=entries))


# --------------------------------------------------------------------------- transactions and the log


class _Txn:
    def __init__(self, txid, descriptor, snapshot):
        self.txid = txid
        self.descriptor = descriptor
        self.snapshot = snapshot                       # committed objects as of start
        self.local: Dict[Tuple[bytes, bytes], Tuple[int, Any]] = {}   # own view (snapshot + own effects)
        self.effects: List[Tuple[Tuple[bytes, bytes], int, Any]] = []  # (object, type, effect) in order
        self.logged = False


class _Record:
    __slots__ = ("pos", "size", "txid", "kind", "data")

    def __init__(self, pos, size, txid, kind, data=None):
        self.pos, self.size, self.txid, self.kind, self.data = pos, size, txid, kind, data


LOG_RECORD = Atom("log_record")


class FakeVaxine:
    """The fake node's state and its two servers (see the module docstring)."""

    def __init__(self, node: str = "fake_vaxine@127.0.0.1", clock=None, stale_states: bool = False):
        self.stale_states = stale_states
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.node = Atom(node)
        self.creation = int.from_bytes(os.urandom(4), "big")
        started = time.time()
        mega, rest = divmod(int(started), 1_000_000)
        self.dcid = (self.node, (mega, rest, int((started % 1) * 1_000_000)))
        self.engine = Engine(lambda: int(time.time() * 1_000_000))
        self.objects: Dict[Tuple[bytes, bytes], Tuple[int, Any]] = {}
        self.txns: Dict[bytes, _Txn] = {}
        self.records: List[_Record] = []
        self.log_end = 0
        self.commits = 0
        self._pids = itertools.count(1000)
        self._refs = itertools.count(1)
        self.sessions: List["FakeStreamProtocol"] = []
        self.connections: List[protocol.Protocol] = []
        self._ports = []

    # ------------------------------------------------------------------ servers

    def listen(self, pb_port: int = 0, repl_port: int = 0, interface: str = "127.0.0.1", reactor=None) -> Tuple[int, int]:
        """Start both servers; returns their ports (0 = pick free ones)."""
        if reactor is None:
            from twisted.internet import reactor
        pb_factory = protocol.Factory.forProtocol(lambda: FakePbProtocol(self))
        stream_factory = protocol.Factory.forProtocol(lambda: FakeStreamProtocol(self))
        self._ports = [reactor.listenTCP(pb_port, pb_factory, interface=interface),
                       reactor.listenTCP(repl_port, stream_factory, interface=interface)]
        return self._ports[0].getHost().port, self._ports[1].getHost().port

    @defer.inlineCallbacks
    def stop(self):
        """Stop listening and drop every connection (the data stays: `listen` again to restart)."""
        ports, self._ports = self._ports, []
        for port in ports:
            yield port.stopListening()
        closing = []
        for conn in list(self.connections):
            if conn.transport is not None and conn.connected:
                closing.append(conn.closed)
                conn.transport.abortConnection()
        yield defer.DeferredList(closing)
        # Interactive transactions die with their coordinators.
        self.txns.clear()

    # ------------------------------------------------------------------ transactions

    def now_us(self) -> int:
        return int(time.time() * 1_000_000)

    def start(self) -> _Txn:
        pid = Pid(self.node, next(self._pids), 0, self.creation)
        txid = (TX_ID, self.now_us(), pid)
        descriptor = etf.term_to_binary(txid)
        txn = _Txn(txid, descriptor, dict(self.objects))
        self.txns[descriptor] = txn
        return txn

    def find(self, descriptor: bytes) -> _Txn:
        try:
            term = etf.binary_to_term(descriptor)
        except etf.ETFError:
            raise FakeError(f"error: badarg\n[{{erlang,binary_to_term,[{descriptor!r}]}}]") from None
        txn = self.txns.get(descriptor)
        if txn is None:
            raise FakeError(f"exit: {{noproc,{{gen_statem,call,[{term!r},{{prepare,empty}},infinity]}}}}")
        return txn

    def _view(self, txn: _Txn, obj: Tuple[bytes, bytes], ctype: int):
        if obj in txn.local:
            current_type, state = txn.local[obj]
        elif obj in txn.snapshot:
            current_type, state = txn.snapshot[obj]
        else:
            return bottom(ctype)
        if current_type != ctype:
            raise FakeError(f"error: {{badarg, {{type_mismatch, {obj!r}, {current_type}, {ctype}}}}}")
        return state

    def update(self, txn: _Txn, updates) -> None:
        for op in updates:
            obj = (bytes(op.boundobject.key), bytes(op.boundobject.bucket))
            ctype = op.boundobject.type
            self.engine.check(ctype)
            state = self._view(txn, obj, ctype)
            effect = self.engine.downstream(ctype, op.operation, state)
            txn.local[obj] = (ctype, self.engine.update(ctype, effect, state))
            txn.effects.append((obj, ctype, effect))
            self._log(txn.txid, "update", (Atom("update"), obj, type_atom(ctype), effect))

    def read(self, txn: Optional[_Txn], objects) -> List[pb.ApbReadObjectResp]:
        result = []
        for bound in objects:
            obj = (bytes(bound.key), bytes(bound.bucket))
            self.engine.check(bound.type)
            state = self._view(txn, obj, bound.type) if txn else self._committed(obj, bound.type)
            result.append(read_value(bound.type, state))
        return result

    def _committed(self, obj, ctype):
        if obj not in self.objects:
            return bottom(ctype)
        current_type, state = self.objects[obj]
        if current_type != ctype:
            raise FakeError(f"error: {{badarg, {{type_mismatch, {obj!r}}}}}")
        return state

    def commit(self, txn: _Txn) -> bytes:
        self.txns.pop(txn.descriptor, None)
        commit_us = self.now_us()
        if txn.effects:
            touched: Dict[Tuple[bytes, bytes], Tuple[int, List[Any]]] = {}
            before: Dict[Tuple[bytes, bytes], Any] = {}
            for obj, ctype, effect in txn.effects:
                current_type, state = self.objects.get(obj, (ctype, bottom(ctype)))
                before.setdefault(obj, state)
                self.objects[obj] = (ctype, self.engine.update(ctype, effect, state))
                touched.setdefault(obj, (ctype, []))[1].append(effect)
            # stale_states: stream the state from before the transaction, as the real node
            # sometimes does (see electric.vaxine.crdt).
            ops = [(obj, type_atom(ctype),
                    state_term(ctype, before[obj] if self.stale_states else self.objects[obj][1]), effects)
                   for obj, (ctype, effects) in touched.items()]
            raw = [(obj, type_atom(ctype), effect) for obj, ctype, effect in txn.effects]
            self._log(txn.txid, "commit", (Atom("commit"), commit_us), data=(ops, raw))
            self.commits += 1
        return etf.term_to_binary({self.dcid: commit_us})

    def abort(self, txn: _Txn) -> None:
        self.txns.pop(txn.descriptor, None)
        if txn.effects:
            self._log(txn.txid, "abort", (Atom("abort"),))

    def _log(self, txid, kind, body, data=None) -> None:
        size = len(etf.term_to_binary((LOG_RECORD, txid, body))) + 8
        self.records.append(_Record(self.log_end, size, txid, kind, data))
        self.log_end += size
        if kind == "commit":
            for session in list(self.sessions):
                session.pump()


# --------------------------------------------------------------------------- PB server


class FakePbProtocol(protocol.Protocol):
    def __init__(self, fake: FakeVaxine):
        self.fake = fake
        self.decoder = antidote.Decoder()
        self.closed = defer.Deferred()
        self.connected = False

    def connectionMade(self):
        self.connected = True
        self.fake.connections.append(self)

    def connectionLost(self, reason=None):
        self.connected = False
        if self in self.fake.connections:
            self.fake.connections.remove(self)
        self.closed.callback(None)

    def dataReceived(self, data):
        if self.transport.disconnecting:
            return
        try:
            requests = self.decoder.feed(data)
        except ProtocolError:
            # Like antidote_pb_protocol: an undecodable frame closes the connection, no reply.
            self.transport.loseConnection()
            return
        for request in requests:
            if not self.connected or self.transport.disconnecting:
                return
            try:
                reply = self.handle(request)
            except FakeError as e:
                reply = pb.ApbErrorResp(errmsg=str(e).encode(), errcode=0)
            if reply is None:
                self.transport.loseConnection()
                return
            self.transport.write(antidote.encode(reply))

    def handle(self, request):
        fake = self.fake
        if isinstance(request, pb.ApbStartTransaction):
            self._check_timestamp(request)
            txn = fake.start()
            return pb.ApbStartTransactionResp(success=True, transaction_descriptor=txn.descriptor)
        if isinstance(request, pb.ApbUpdateObjects):
            fake.update(fake.find(bytes(request.transaction_descriptor)), request.updates)
            return pb.ApbOperationResp(success=True)
        if isinstance(request, pb.ApbReadObjects):
            objects = fake.read(fake.find(bytes(request.transaction_descriptor)), request.boundobjects)
            return pb.ApbReadObjectsResp(success=True, objects=objects)
        if isinstance(request, pb.ApbCommitTransaction):
            commit_time = fake.commit(fake.find(bytes(request.transaction_descriptor)))
            return pb.ApbCommitResp(success=True, commit_time=commit_time)
        if isinstance(request, pb.ApbAbortTransaction):
            fake.abort(fake.find(bytes(request.transaction_descriptor)))
            return pb.ApbOperationResp(success=True)
        if isinstance(request, pb.ApbStaticUpdateObjects):
            self._check_timestamp(request.transaction)
            txn = fake.start()
            try:
                fake.update(txn, request.updates)
            except FakeError:
                fake.abort(txn)
                raise
            return pb.ApbCommitResp(success=True, commit_time=fake.commit(txn))
        if isinstance(request, pb.ApbStaticReadObjects):
            self._check_timestamp(request.transaction)
            objects = fake.read(None, request.objects)
            return pb.ApbStaticReadObjectsResp(
                objects=pb.ApbReadObjectsResp(success=True, objects=objects),
                committime=pb.ApbCommitResp(success=True, commit_time=etf.term_to_binary({fake.dcid: fake.now_us()})))
        return None  # a reply code sent as a request: the real node drops the connection

    @staticmethod
    def _check_timestamp(start: pb.ApbStartTransaction) -> None:
        if start.HasField("timestamp"):
            try:
                term = etf.binary_to_term(start.timestamp)
            except etf.ETFError:
                raise FakeError("error: badarg (transaction timestamp is not a term)") from None
            if term != Atom("ignore") and not isinstance(term, dict):
                raise FakeError(f"error: {{badarg, {{snapshot_clock, {term!r}}}}}")


# --------------------------------------------------------------------------- replication server


@implementer(IPushProducer)
class FakeStreamProtocol(protocol.Protocol):
    """One replication connection: start/stop requests, and the log from an offset on."""

    def __init__(self, fake: FakeVaxine):
        self.fake = fake
        self.decoder = FrameDecoder(16 * 1024 * 1024)
        self.closed = defer.Deferred()
        self.connected = False
        self.streaming = False
        self.paused = False
        self.rep_id: Optional[Reference] = None
        self.raw_values = False
        self.cursor = 0
        self.open: Dict[Any, int] = collections.OrderedDict()
        self.skip_through = -1
        self.sent = 0

    def connectionMade(self):
        self.connected = True
        self.fake.connections.append(self)
        self.transport.registerProducer(self, True)

    def connectionLost(self, reason=None):
        self.connected = False
        self._stop_streaming()
        if self in self.fake.connections:
            self.fake.connections.remove(self)
        self.closed.callback(None)

    # IPushProducer: the transport tells us when its buffer is full.
    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self.pump()

    def stopProducing(self):
        self._stop_streaming()

    def _send(self, term) -> None:
        self.transport.write(frame(etf.term_to_binary(term)))

    def _bad_proto(self) -> None:
        self._send((ERROR, BAD_PROTO))
        self.transport.loseConnection()

    def dataReceived(self, data):
        if self.transport.disconnecting:
            return
        try:
            frames = self.decoder.feed(data)
        except ProtocolError:
            self._bad_proto()
            return
        for body in frames:
            if not self.connected or self.transport.disconnecting:
                return
            try:
                term = etf.binary_to_term(body)
            except etf.ETFError:
                self._bad_proto()
                return
            self.handle(term)

    def handle(self, term) -> None:
        if not (isinstance(term, tuple) and len(term) == 3 and term[0] == VX_CLI_REQ
                and isinstance(term[1], Reference) and isinstance(term[2], tuple) and term[2]):
            self._bad_proto()
            return
        ref, request = term[1], term[2]
        if request[0] == VX_CLI_START_REQ and len(request) == 2 and isinstance(request[1], list):
            if self.streaming:
                # The real handler crashes on a second start and the connection closes.
                self.transport.loseConnection()
                return
            self.start(ref, request[1])
        elif request[0] == VX_CLI_STOP_REQ and len(request) == 2:
            if not self.streaming or request[1] != self.rep_id:
                self.transport.loseConnection()
                return
            self._stop_streaming()
            self._send((VX_SRV_RES, ref, (VX_SRV_STOP_RES,)))
        else:
            self._bad_proto()

    def start(self, ref, options) -> None:
        offset = 0
        self.raw_values = False
        for option in options:
            if isinstance(option, tuple) and len(option) == 2 and option[0] == OFFSET:
                offset = option[1]
            elif option == (RAW_VALUES, Atom("true")):
                self.raw_values = True
        records = self.fake.records
        if offset == EOF:
            self.cursor, self.skip_through = len(records), -1
        elif offset == 0 and isinstance(offset, int):
            self.cursor, self.skip_through = 0, -1
        elif (isinstance(offset, tuple) and len(offset) == 2 and all(isinstance(n, int) and n >= 0 for n in offset)
              and offset[0] <= offset[1] and offset[0] <= self.fake.log_end):
            self.cursor = next((i for i, r in enumerate(records) if r.pos >= offset[0]), len(records))
            self.skip_through = offset[1]
        else:
            # An offset the real node cannot serve closes the connection without a reply.
            self.transport.loseConnection()
            return
        self.open = collections.OrderedDict()
        self.rep_id = Reference(self.fake.node, self.fake.creation,
                                (next(self.fake._refs) & 0x3FFFF, 0x5EED, 0xFA4E))
        self.streaming = True
        self.fake.sessions.append(self)
        self._send((VX_SRV_RES, ref, (VX_SRV_START_RES, self.rep_id)))
        self.pump()

    def _stop_streaming(self) -> None:
        self.streaming = False
        if self in self.fake.sessions:
            self.fake.sessions.remove(self)

    def pump(self) -> None:
        """Send what the log holds beyond the cursor, until paused by the transport."""
        records = self.fake.records
        while (self.streaming and not self.paused and self.connected and not self.transport.disconnecting
               and self.cursor < len(records)):
            record = records[self.cursor]
            self.cursor += 1
            if record.kind == "update":
                self.open.setdefault(record.txid, record.pos)
            elif record.kind == "abort":
                self.open.pop(record.txid, None)
            elif record.kind == "commit":
                first = self.open.pop(record.txid, record.pos)
                left = min([first] + list(self.open.values()))
                if record.pos <= self.skip_through:
                    continue
                ops, raw = record.data
                self._send((VX_WAL_TXN, record.txid, self.fake.dcid, (left, record.pos), raw if self.raw_values else ops))
                self.sent += 1
