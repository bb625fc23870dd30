"""
Antidote PB API frames (Vaxine's write path, default port 8087): sans-IO.

A frame is ``uint32 BE length | uint8 code | protobuf payload`` with the
length counting the code byte (spec 1.1).  This module maps codes to the
generated messages of ``proto/antidote.proto``, builds the requests Electric
sends, checks replies, and turns read results into plain Python values.  The
Twisted protocol (`electric.vaxine.pb_client`) only moves these bytes.

Read values (`read_value`): a register is its ``bytes``, a flag a ``bool``,
a map a ``dict`` keyed by ``(name bytes, CRDT type number)``, a counter an
``int``, a set or multi-value register a ``list`` of ``bytes``.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from google.protobuf.message import DecodeError, Message

from electric.vaxine import etf
from electric.vaxine.errors import ProtocolError, RequestFailed
from electric.vaxine.framing import FrameDecoder, frame
from electric.vaxine.pb import antidote_pb2 as pb

# CRDT_type numbers.
COUNTER = pb.COUNTER
ORSET = pb.ORSET
LWWREG = pb.LWWREG
MVREG = pb.MVREG
GMAP = pb.GMAP
RWSET = pb.RWSET
RRMAP = pb.RRMAP
FATCOUNTER = pb.FATCOUNTER
FLAG_EW = pb.FLAG_EW
FLAG_DW = pb.FLAG_DW
BCOUNTER = pb.BCOUNTER

BUCKET = b"vax"
"""The bucket of every object Electric writes (spec 2.1)."""

IGNORE = etf.term_to_binary(etf.Atom("ignore"))
"""ETF of the atom ``ignore``: the snapshot "timestamp" of every transaction Electric starts."""

# Top-level message codes (spec 1.2).  Sub-messages (107-117, 125) are never framed.
CODES: Dict[int, type] = {
    0: pb.ApbErrorResp,
    111: pb.ApbOperationResp,
    116: pb.ApbReadObjects,
    118: pb.ApbUpdateObjects,
    119: pb.ApbStartTransaction,
    120: pb.ApbAbortTransaction,
    121: pb.ApbCommitTransaction,
    122: pb.ApbStaticUpdateObjects,
    123: pb.ApbStaticReadObjects,
    124: pb.ApbStartTransactionResp,
    126: pb.ApbReadObjectsResp,
    127: pb.ApbCommitResp,
    128: pb.ApbStaticReadObjectsResp,
}
CODE_OF: Dict[type, int] = {cls: code for code, cls in CODES.items()}

REPLY_TO: Dict[type, type] = {
    pb.ApbReadObjects: pb.ApbReadObjectsResp,
    pb.ApbUpdateObjects: pb.ApbOperationResp,
    pb.ApbStartTransaction: pb.ApbStartTransactionResp,
    pb.ApbAbortTransaction: pb.ApbOperationResp,
    pb.ApbCommitTransaction: pb.ApbCommitResp,
    pb.ApbStaticUpdateObjects: pb.ApbCommitResp,
    pb.ApbStaticReadObjects: pb.ApbStaticReadObjectsResp,
}
"""The reply message each request gets (besides ApbErrorResp)."""

MAX_FRAME = 64 * 1024 * 1024
"""Largest PB frame accepted (a read of many big rows stays far below)."""


# --------------------------------------------------------------------------- frames


def encode(message: Message) -> bytes:
    """The complete frame (length, code, payload) of a top-level message."""
    try:
        code = CODE_OF[type(message)]
    except KeyError:
        raise ValueError(f"{type(message).__name__} is not a top-level Antidote message") from None
    return frame(bytes([code]) + message.SerializeToString())


def decode(body: bytes) -> Message:
    """A frame body (code byte + payload, no length) as its message; `ProtocolError` otherwise."""
    if not body:
        raise ProtocolError("empty Antidote frame (no message code)")
    cls = CODES.get(body[0])
    if cls is None:
        raise ProtocolError(f"unknown Antidote message code {body[0]}")
    message = cls()
    try:
        message.ParseFromString(body[1:])
    except DecodeError as e:
        raise ProtocolError(f"undecodable {cls.__name__} (code {body[0]}): {e}") from None
    if not message.IsInitialized():
        missing = ", ".join(message.FindInitializationErrors())
        raise ProtocolError(f"undecodable {cls.__name__} (code {body[0]}): required fields missing: {missing}")
    return message


class Decoder:
    """Byte stream in, messages out (any split of the stream gives the same messages)."""

    def __init__(self, max_frame: int = MAX_FRAME):
        self._frames = FrameDecoder(max_frame)

    def feed(self, data: bytes) -> List[Message]:
        return [decode(body) for body in self._frames.feed(data)]


# --------------------------------------------------------------------------- requests


def _bytes(value: Union[str, bytes]) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def bound_object(key: Union[str, bytes], crdt_type: int = RRMAP, bucket: Union[str, bytes] = BUCKET) -> pb.ApbBoundObject:
    return pb.ApbBoundObject(key=_bytes(key), type=crdt_type, bucket=_bytes(bucket))


def start_transaction(timestamp: bytes = IGNORE) -> pb.ApbStartTransaction:
    """Start request as the original sent it: ``ignore`` and empty properties (``12 00``)."""
    message = pb.ApbStartTransaction(timestamp=timestamp)
    message.properties.SetInParent()
    return message


def update_objects(descriptor: bytes, updates: Iterable[pb.ApbUpdateOp]) -> pb.ApbUpdateObjects:
    return pb.ApbUpdateObjects(updates=list(updates), transaction_descriptor=descriptor)


def read_objects(descriptor: bytes, objects: Iterable[pb.ApbBoundObject]) -> pb.ApbReadObjects:
    return pb.ApbReadObjects(boundobjects=list(objects), transaction_descriptor=descriptor)


def commit_transaction(descriptor: bytes) -> pb.ApbCommitTransaction:
    return pb.ApbCommitTransaction(transaction_descriptor=descriptor)


def abort_transaction(descriptor: bytes) -> pb.ApbAbortTransaction:
    return pb.ApbAbortTransaction(transaction_descriptor=descriptor)


def static_read_objects(objects: Iterable[pb.ApbBoundObject], timestamp: bytes = IGNORE) -> pb.ApbStaticReadObjects:
    return pb.ApbStaticReadObjects(transaction=start_transaction(timestamp), objects=list(objects))


def static_update_objects(updates: Iterable[pb.ApbUpdateOp], timestamp: bytes = IGNORE) -> pb.ApbStaticUpdateObjects:
    return pb.ApbStaticUpdateObjects(transaction=start_transaction(timestamp), updates=list(updates))


# Update operations (spec 1.3 ApbUpdateOperation).


def assign(value: bytes) -> pb.ApbUpdateOperation:
    """LWW register assign."""
    return pb.ApbUpdateOperation(regop=pb.ApbRegUpdate(value=bytes(value)))


def flag(enable: bool) -> pb.ApbUpdateOperation:
    """Flag enable (True) or disable (False)."""
    return pb.ApbUpdateOperation(flagop=pb.ApbFlagUpdate(value=bool(enable)))


def map_update(
    updates: Iterable[Tuple[Union[str, bytes], int, pb.ApbUpdateOperation]] = (),
    removed: Iterable[Tuple[Union[str, bytes], int]] = (),
) -> pb.ApbUpdateOperation:
    """RRMAP update: nested ``(name, type, operation)`` updates and removed ``(name, type)`` keys.

    Entries are kept in the given order and may repeat a key (the original
    sent one nested update per column, all keyed ``row``).
    """
    return pb.ApbUpdateOperation(mapop=pb.ApbMapUpdate(
        updates=[pb.ApbMapNestedUpdate(key=pb.ApbMapKey(key=_bytes(k), type=t), update=op) for k, t, op in updates],
        removedKeys=[pb.ApbMapKey(key=_bytes(k), type=t) for k, t in removed],
    ))


def update_op(obj: pb.ApbBoundObject, operation: pb.ApbUpdateOperation) -> pb.ApbUpdateOp:
    return pb.ApbUpdateOp(boundobject=obj, operation=operation)


# --------------------------------------------------------------------------- replies


def request_name(request: Message) -> str:
    return type(request).__name__


def check_reply(request: Message, reply: Message) -> Message:
    """`reply` if it is the successful answer to `request`.

    Raises `RequestFailed` for an ApbErrorResp or ``success = false`` and
    `ProtocolError` for a reply of the wrong type (the link is then out of
    step and must be dropped).
    """
    name = request_name(request)
    if isinstance(reply, pb.ApbErrorResp):
        raise RequestFailed(name, reply.errcode, reply.errmsg)
    expected = REPLY_TO.get(type(request))
    if expected is None:
        raise ValueError(f"{name} is not a request")
    if not isinstance(reply, expected):
        raise ProtocolError(f"{name} answered with {type(reply).__name__}, expected {expected.__name__}")
    if isinstance(reply, pb.ApbStaticReadObjectsResp):
        if not reply.objects.success:
            raise RequestFailed(name, _code(reply.objects))
        if not reply.committime.success:
            raise RequestFailed(name, _code(reply.committime))
    elif not reply.success:
        raise RequestFailed(name, _code(reply))
    return reply


def _code(reply: Message) -> Optional[int]:
    return reply.errorcode if reply.HasField("errorcode") else None


def read_value(obj: pb.ApbReadObjectResp) -> Any:
    """The value of one read object as plain Python (see the module docstring)."""
    kind = _which(obj)
    if kind == "reg":
        return bytes(obj.reg.value)
    if kind == "flag":
        return bool(obj.flag.value)
    if kind == "map":
        return {(bytes(e.key.key), e.key.type): read_value(e.value) for e in obj.map.entries}
    if kind == "counter":
        return int(obj.counter.value)
    if kind == "set":
        return [bytes(v) for v in obj.set.value]
    if kind == "mvreg":
        return [bytes(v) for v in obj.mvreg.values]
    raise ProtocolError("read result with no value set")


def _which(obj: pb.ApbReadObjectResp) -> Optional[str]:
    for name in ("reg", "flag", "map", "counter", "set", "mvreg"):
        if obj.HasField(name):
            return name
    return None


def read_values(reply: Union[pb.ApbReadObjectsResp, pb.ApbStaticReadObjectsResp]) -> List[Any]:
    """The values of a (static) read reply, in request order."""
    if isinstance(reply, pb.ApbStaticReadObjectsResp):
        reply = reply.objects
    return [read_value(o) for o in reply.objects]


def descriptor_of(reply: pb.ApbStartTransactionResp) -> bytes:
    """The transaction descriptor of a successful start reply (opaque bytes to echo)."""
    if not reply.HasField("transaction_descriptor"):
        raise ProtocolError("ApbStartTransactionResp without a transaction descriptor")
    return bytes(reply.transaction_descriptor)


__all__ = [
    "BUCKET", "IGNORE", "CODES", "Decoder", "encode", "decode", "bound_object", "start_transaction",
    "update_objects", "read_objects", "commit_transaction", "abort_transaction", "static_read_objects",
    "static_update_objects", "assign", "flag", "map_update", "update_op", "check_reply", "read_value",
    "read_values", "descriptor_of",
]
