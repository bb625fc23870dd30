"""
Vaxine's replication stream (default port 8088): terms, offsets, and the client state machine.

Sans-IO: `StreamClient` takes the bytes the socket delivered and returns
events; it returns the bytes to send.  `electric.vaxine.replication` puts it
on a Twisted transport.  Every frame is ``uint32 BE length`` + one ETF term
(spec 3.1); the terms are (spec 3.2, 3.3):

====  ==================================================================
C→S   ``{vx_cli_req, Ref, {vx_cli_start_req, [{offset, Offset}]}}``
S→C   ``{vx_srv_res, Ref, {vx_srv_start_res, RepId}}`` -- always first
S→C   ``{vx_wal_txn, TxId, DcId, {L, R}, Ops}`` -- one committed transaction
C→S   ``{vx_cli_req, Ref2, {vx_cli_stop_req, RepId}}``
S→C   ``{vx_srv_res, Ref2, {vx_srv_stop_res}}``
S→C   ``{error, bad_proto}`` -- then the server closes
====  ==================================================================

Offsets (spec 3.5): `BEGINNING` (the integer 0: the whole log), `EOF` (only
what commits from now on) or a `WalOffset` ``(left, right)`` taken from a
received transaction.  Resuming from a `WalOffset` is *exclusive*: the server
skips every transaction whose commit record ends at or before ``right``, so
the first one delivered is the one after.  ``right`` is a byte position of the
transaction's commit record in the WAL file and is stable across sessions and
restarts; ``left`` depends on the streaming session.  Store offsets verbatim
and never use them as transaction identities.

There are no acknowledgements on this link (spec 3.6): the client owns its
position, and flow control is TCP back-pressure (the Twisted side stops
reading the socket).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple, Union

from electric.vaxine import etf
from electric.vaxine.errors import ProtocolError
from electric.vaxine.etf import Atom, Reference
from electric.vaxine.framing import FrameDecoder, frame

VX_CLI_REQ = Atom("vx_cli_req")
VX_CLI_START_REQ = Atom("vx_cli_start_req")
VX_CLI_STOP_REQ = Atom("vx_cli_stop_req")
VX_SRV_RES = Atom("vx_srv_res")
VX_SRV_START_RES = Atom("vx_srv_start_res")
VX_SRV_STOP_RES = Atom("vx_srv_stop_res")
VX_WAL_TXN = Atom("vx_wal_txn")
OFFSET = Atom("offset")
RAW_VALUES = Atom("raw_values")
ERROR = Atom("error")
BAD_PROTO = Atom("bad_proto")

MAX_FRAME = 256 * 1024 * 1024
"""Largest stream frame accepted.  One frame is one whole transaction with the
materialized state of every object it touched, so it can be large; the limit
only stops a corrupt length from being believed."""


# --------------------------------------------------------------------------- offsets


@dataclass(frozen=True, order=True)
class WalOffset:
    """``{L, R}``: a resume token from a received transaction (see the module docstring)."""

    left: int
    right: int

    def __post_init__(self):
        for n in (self.left, self.right):
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ValueError(f"WAL offsets are non-negative integers, got {self.left!r}, {self.right!r}")

    def term(self) -> Tuple[int, int]:
        return (self.left, self.right)


BEGINNING = 0
EOF = Atom("eof")

Offset = Union[int, Atom, WalOffset]
"""`BEGINNING`, `EOF` or a `WalOffset`."""


def check_offset(offset: Offset) -> Offset:
    if isinstance(offset, WalOffset) or offset == EOF:
        return offset
    if isinstance(offset, int) and not isinstance(offset, bool) and offset == 0:
        return offset
    raise ValueError(f"an offset is 0, eof or a WalOffset, got {offset!r}")


def offset_term(offset: Offset) -> Any:
    offset = check_offset(offset)
    return offset.term() if isinstance(offset, WalOffset) else offset


def offset_to_bytes(offset: Offset) -> bytes:
    """Storable bytes of an offset: ``b"0"``, ``b"eof"``, or ``term_to_binary({L, R})``.

    The same bytes the original service handed Satellite clients as their
    ``lsn`` (spec 3.8), e.g. ``83 68 02 62 00 00 14 27 62 00 00 26 d5`` for
    ``{5159, 9941}``.
    """
    offset = check_offset(offset)
    if offset == EOF:
        return b"eof"
    if isinstance(offset, WalOffset):
        return etf.term_to_binary(offset.term())
    return b"0"


def offset_from_bytes(data: bytes) -> Offset:
    """Inverse of `offset_to_bytes`; accepts only ``0``, ``eof`` or a 2-tuple of non-negative ints."""
    data = bytes(data)
    if data == b"0":
        return BEGINNING
    if data == b"eof":
        return EOF
    try:
        term = etf.binary_to_term(data)
    except etf.ETFError as e:
        raise ValueError(f"not a Vaxine offset: {e}") from None
    if (isinstance(term, tuple) and len(term) == 2
            and all(isinstance(n, int) and n >= 0 for n in term)):
        return WalOffset(*term)
    raise ValueError(f"not a Vaxine offset: {term!r} (expected {{L, R}} of non-negative integers)")


def offset_from_term(term: Any) -> WalOffset:
    if (isinstance(term, tuple) and len(term) == 2
            and all(isinstance(n, int) and n >= 0 for n in term) and term[1] >= term[0]):
        return WalOffset(term[0], term[1])
    raise ProtocolError(f"bad WAL offset {_short(term)} (expected {{L, R}} with 0 <= L <= R)")


# --------------------------------------------------------------------------- requests


def new_ref(rng: Optional[random.Random] = None, node: str = "electric@127.0.0.1") -> Reference:
    """A fresh request reference: 3 id words, only the low 18 bits set in the first (spec 3.4)."""
    rng = rng or random.SystemRandom()
    return Reference(Atom(node), 0, (rng.getrandbits(18), rng.getrandbits(32), rng.getrandbits(32)))


def start_request(ref: Reference, offset: Offset, raw_values: bool = False) -> bytes:
    """The framed start request; `raw_values` asks for log effects instead of states (unused by Electric)."""
    options = [(OFFSET, offset_term(offset))]
    if raw_values:
        options.append((RAW_VALUES, True))
    return frame(etf.term_to_binary((VX_CLI_REQ, ref, (VX_CLI_START_REQ, options))))


def stop_request(ref: Reference, rep_id: Reference) -> bytes:
    return frame(etf.term_to_binary((VX_CLI_REQ, ref, (VX_CLI_STOP_REQ, rep_id))))


# --------------------------------------------------------------------------- server messages


@dataclass(frozen=True)
class StartAccepted:
    ref: Reference
    rep_id: Any


@dataclass(frozen=True)
class StartRefused:
    ref: Reference
    reason: Any


@dataclass(frozen=True)
class StopAccepted:
    ref: Reference


@dataclass(frozen=True)
class BadProto:
    """``{error, bad_proto}``: the server did not understand a request and closes."""


@dataclass(frozen=True)
class WalOp:
    """One object a transaction touched: ``{{Key, Bucket}, Type, Materialized, Effects}``.

    `state` is the object's whole CRDT state at the commit snapshot, `effects`
    the downstream effects this transaction logged for it (spec 3.3); both are
    raw terms (see `electric.vaxine.crdt` for reading them).  With the
    ``raw_values`` start option the server sends ``{Key, Type, Effect}``
    instead: then `state` is None and `effects` holds that one effect.
    """

    key: bytes
    bucket: bytes
    type: Atom
    state: Any
    effects: Tuple[Any, ...]


@dataclass(frozen=True)
class WalTransaction:
    """``{vx_wal_txn, TxId, DcId, WalOffset, Ops}``: one committed transaction.

    `txid` (``{tx_id, Micros, Pid}``) and `dcid` are opaque terms; `ops` come
    in the server's (arbitrary) order.
    """

    txid: Any
    dcid: Any
    offset: WalOffset
    ops: Tuple[WalOp, ...]


ServerMessage = Union[StartAccepted, StartRefused, StopAccepted, BadProto, WalTransaction]


def _short(term: Any, limit: int = 120) -> str:
    text = repr(term)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _op(term: Any) -> WalOp:
    if isinstance(term, tuple) and len(term) == 4:
        key, ctype, state, effects = term
    elif isinstance(term, tuple) and len(term) == 3:
        (key, ctype, effect), state, effects = term, None, [term[2]]
    else:
        raise ProtocolError(f"bad vx_wal_txn operation {_short(term)}")
    if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, bytes) for k in key)):
        raise ProtocolError(f"bad object key {_short(key)} in vx_wal_txn (expected {{Key, Bucket}} binaries)")
    if not isinstance(ctype, Atom):
        raise ProtocolError(f"bad CRDT type {_short(ctype)} in vx_wal_txn")
    if not isinstance(effects, list):
        raise ProtocolError(f"bad effects {_short(effects)} in vx_wal_txn (expected a list)")
    return WalOp(key[0], key[1], ctype, state, tuple(effects))


def parse_server_term(term: Any) -> ServerMessage:
    """Classify one server term; `ProtocolError` for any other shape."""
    if isinstance(term, tuple) and term:
        head = term[0]
        if head == VX_WAL_TXN and len(term) == 5:
            _, txid, dcid, offset, ops = term
            if not isinstance(ops, list):
                raise ProtocolError(f"vx_wal_txn with ops {_short(ops)} (expected a list)")
            return WalTransaction(txid, dcid, offset_from_term(offset), tuple(_op(o) for o in ops))
        if head == VX_SRV_RES and len(term) == 3 and isinstance(term[1], Reference):
            ref, body = term[1], term[2]
            if isinstance(body, tuple) and len(body) == 2 and body[0] == VX_SRV_START_RES:
                return StartAccepted(ref, body[1])
            if body == (VX_SRV_STOP_RES,):
                return StopAccepted(ref)
            if isinstance(body, tuple) and len(body) == 2 and body[0] == ERROR:
                return StartRefused(ref, body[1])
        if term == (ERROR, BAD_PROTO):
            return BadProto()
    raise ProtocolError(f"unexpected replication-stream term {_short(term)}")


class StreamDecoder:
    """Bytes in, `ServerMessage`s out; any split of the stream gives the same messages."""

    def __init__(self, max_frame: int = MAX_FRAME):
        self._frames = FrameDecoder(max_frame)

    @property
    def buffered(self) -> int:
        return self._frames.buffered

    def feed(self, data: bytes) -> List[ServerMessage]:
        messages = []
        for body in self._frames.feed(data):
            try:
                term = etf.binary_to_term(body)
            except etf.ETFError as e:
                raise ProtocolError(f"undecodable replication-stream frame: {e}") from None
            messages.append(parse_server_term(term))
        return messages


# --------------------------------------------------------------------------- client state machine


@dataclass(frozen=True)
class Started:
    """The server accepted the start request; transactions follow."""

    rep_id: Any


@dataclass(frozen=True)
class Stopped:
    """The server confirmed the stop request; nothing more comes on this connection."""


StreamEvent = Union[Started, WalTransaction, Stopped]


class StreamClient:
    """
    One connection's replication session: ``idle → starting → streaming
    [→ stopping → stopped]``.

    `start` gives the bytes of the start request; `receive` takes what the
    socket delivered and returns `Started`, then `WalTransaction`s, then
    (after `stop`) `Stopped`.  Anything out of order -- a transaction before
    the start reply, a reply with someone else's reference, a refused start,
    ``{error, bad_proto}``, garbage -- raises `ProtocolError`; the connection
    must then be closed and the session discarded.

    Safety net (spec 3.7): after starting from a `WalOffset`, a transaction
    whose ``right`` is not beyond the resume token's is dropped (the server
    already skips those).  `position` is the offset of the last transaction
    returned, or the start offset before the first.
    """

    IDLE, STARTING, STREAMING, STOPPING, STOPPED = "idle", "starting", "streaming", "stopping", "stopped"

    def __init__(self, rng: Optional[random.Random] = None, max_frame: int = MAX_FRAME):
        self._rng = rng
        self._decoder = StreamDecoder(max_frame)
        self.state = self.IDLE
        self.position: Offset = BEGINNING
        self.rep_id: Any = None
        self._ref: Optional[Reference] = None
        self._stop_ref: Optional[Reference] = None
        self._skip_through: Optional[int] = None

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held by the decoder."""
        return self._decoder.buffered

    def start(self, offset: Offset, raw_values: bool = False) -> bytes:
        if self.state != self.IDLE:
            raise ProtocolError(f"start in state {self.state}: one start per session")
        offset = check_offset(offset)
        self._ref = new_ref(self._rng)
        self.position = offset
        self._skip_through = offset.right if isinstance(offset, WalOffset) else None
        self.state = self.STARTING
        return start_request(self._ref, offset, raw_values)

    def stop(self) -> bytes:
        """Bytes of the stop request; transactions still arriving are dropped until `Stopped`."""
        if self.state != self.STREAMING:
            raise ProtocolError(f"stop in state {self.state}: only a started stream can be stopped")
        self._stop_ref = new_ref(self._rng)
        self.state = self.STOPPING
        return stop_request(self._stop_ref, self.rep_id)

    def receive(self, data: bytes) -> List[StreamEvent]:
        events: List[StreamEvent] = []
        for message in self._decoder.feed(data):
            event = self._handle(message)
            if event is not None:
                events.append(event)
        return events

    def _handle(self, message: ServerMessage) -> Optional[StreamEvent]:
        if isinstance(message, BadProto):
            raise ProtocolError("Vaxine answered {error, bad_proto}: it did not understand a request")
        if self.state == self.STARTING:
            if isinstance(message, StartAccepted) and message.ref == self._ref:
                self.rep_id = message.rep_id
                self.state = self.STREAMING
                return Started(message.rep_id)
            if isinstance(message, StartRefused) and message.ref == self._ref:
                raise ProtocolError(f"Vaxine refused the stream start: {_short(message.reason)}")
            raise ProtocolError(f"expected the start reply first, got {_short(message)}")
        if self.state == self.STREAMING:
            if isinstance(message, WalTransaction):
                if self._skip_through is not None and message.offset.right <= self._skip_through:
                    return None
                self._skip_through = None
                self.position = message.offset
                return message
            raise ProtocolError(f"unexpected message while streaming: {_short(message)}")
        if self.state == self.STOPPING:
            if isinstance(message, WalTransaction):
                return None
            if isinstance(message, StopAccepted) and message.ref == self._stop_ref:
                self.state = self.STOPPED
                return Stopped()
            raise ProtocolError(f"expected the stop reply, got {_short(message)}")
        raise ProtocolError(f"unexpected message in state {self.state}: {_short(message)}")
