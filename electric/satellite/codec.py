"""
Satellite websocket frames: one type byte, then one protobuf message.

Pure functions only (bytes in, messages out) so that the session state machine
and the tests can use them without sockets.  Two *generations* share the same
framing but not the same type-byte table nor every message:

- `ORIGINAL`: the table of the original service (0..12), package
  ``Electric.Satellite`` (``proto/satellite.proto``);
- `V0_2`: the renumbered table of the published ``electric-sql@0.4.3``
  client (0..11), package ``Electric.Satellite.v0_2``.

A session speaks ORIGINAL until the client's SatAuthReq carries the
PROTO_VERSION header ``Electric.Satellite.v0_2``.  Both tables give
SatErrorResp the byte 0 and SatAuthReq the byte 1, which is what makes that
switch possible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Type

from google.protobuf.message import DecodeError, Message

from electric.satellite.pb import satellite_pb2, satellite_v0_2_pb2

# SatErrorResp.ErrorCode values (identical numbers in both generations; the
# last one exists only in V0_2).
INTERNAL = 0
AUTH_REQUIRED = 1
AUTH_FAILED = 2
REPLICATION_FAILED = 3
INVALID_REQUEST = 4
PROTO_VSN_MISSMATCH = 5

# SatInStartReplicationReq.Option values.
OPT_NONE = 0
OPT_LAST_ACKNOWLEDGED = 1
OPT_SYNC_MODE = 2
OPT_FIRST_LSN = 3
OPT_LAST_LSN = 4

# SatAuthHeader values (V0_2).
HEADER_PROTO_VERSION = 1
HEADER_SCHEMA_VERSION = 2

PROTO_VERSION_V0_2 = "Electric.Satellite.v0_2"


@dataclass(frozen=True)
class Generation:
    """One protocol generation: its protobuf module and its type-byte table."""

    name: str
    pb: object
    table: Tuple[Tuple[int, str], ...]
    _by_byte: Dict[int, type] = field(default_factory=dict, compare=False, repr=False)
    _by_name: Dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        for byte, name in self.table:
            self._by_byte[byte] = getattr(self.pb, name)
            self._by_name[name] = byte

    def type_byte(self, name: str) -> int:
        return self._by_name[name]

    def message_class(self, byte: int) -> Optional[Type[Message]]:
        return self._by_byte.get(byte)

    def has(self, name: str) -> bool:
        return name in self._by_name


ORIGINAL = Generation(
    "original",
    satellite_pb2,
    (
        (0, "SatErrorResp"),
        (1, "SatAuthReq"),
        (2, "SatAuthResp"),
        (3, "SatGetServerInfoReq"),
        (4, "SatGetServerInfoResp"),
        (5, "SatPingReq"),
        (6, "SatPingResp"),
        (7, "SatInStartReplicationReq"),
        (8, "SatInStartReplicationResp"),
        (9, "SatInStopReplicationReq"),
        (10, "SatInStopReplicationResp"),
        (11, "SatOpLog"),
        (12, "SatRelation"),
    ),
)

V0_2 = Generation(
    "v0_2",
    satellite_v0_2_pb2,
    (
        (0, "SatErrorResp"),
        (1, "SatAuthReq"),
        (2, "SatAuthResp"),
        (3, "SatPingReq"),
        (4, "SatPingResp"),
        (5, "SatInStartReplicationReq"),
        (6, "SatInStartReplicationResp"),
        (7, "SatInStopReplicationReq"),
        (8, "SatInStopReplicationResp"),
        (9, "SatOpLog"),
        (10, "SatRelation"),
        (11, "SatMigrationNotification"),
    ),
)

GENERATIONS = (ORIGINAL, V0_2)


class FrameError(Exception):
    """A frame or message the server cannot accept; `code` is the SatErrorResp code to answer."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class AuthRequest:
    """
    A decoded SatAuthReq of either generation.

    Decoded by hand because field 3 is a string in ORIGINAL and a repeated
    header message in V0_2, and clients put arbitrary bytes there: it must
    never make the frame undecodable.
    """

    id: str
    token: str
    headers: Tuple[Tuple[int, str], ...] = ()

    @property
    def proto_version(self) -> Optional[str]:
        for key, value in self.headers:
            if key == HEADER_PROTO_VERSION:
                return value
        return None


def message_name(message) -> str:
    if isinstance(message, AuthRequest):
        return "SatAuthReq"
    return message.DESCRIPTOR.name


def encode(gen: Generation, message: Message) -> bytes:
    """The frame for `message` in `gen`'s table (KeyError if `gen` has no such message)."""
    byte = gen.type_byte(message.DESCRIPTOR.name)
    if message.DESCRIPTOR.file.package != gen.pb.DESCRIPTOR.package:
        raise TypeError(f"{message.DESCRIPTOR.full_name} is not a {gen.name} message")
    return bytes((byte,)) + message.SerializeToString(deterministic=True)


def decode(gen: Generation, frame: bytes):
    """
    The message in `frame` (SatAuthReq comes back as `AuthRequest`).
    Raises FrameError(INTERNAL) for an empty frame, an unknown type byte or
    a payload that is not that message.
    """
    if not frame:
        raise FrameError(INTERNAL, "empty frame")
    cls = gen.message_class(frame[0])
    if cls is None:
        raise FrameError(INTERNAL, f"unknown message type byte {frame[0]}")
    payload = bytes(frame[1:])
    if cls.DESCRIPTOR.name == "SatAuthReq":
        return decode_auth_request(payload)
    message = cls()
    try:
        message.ParseFromString(payload)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise FrameError(INTERNAL, f"undecodable {cls.DESCRIPTOR.name}: {e}") from None
    return message


# -- wire-level reading (SatAuthReq only) ------------------------------------


def _varint(data: bytes, pos: int) -> Tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise FrameError(INTERNAL, "truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise FrameError(INTERNAL, "varint too long")


def wire_fields(data: bytes) -> List[Tuple[int, int, object]]:
    """(field number, wire type, value) for every field; length-delimited values are bytes."""
    fields = []
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise FrameError(INTERNAL, "field number 0")
        if wire_type == 0:
            value, pos = _varint(data, pos)
        elif wire_type == 1:
            if pos + 8 > len(data):
                raise FrameError(INTERNAL, "truncated fixed64")
            value, pos = data[pos : pos + 8], pos + 8
        elif wire_type == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise FrameError(INTERNAL, "truncated length-delimited field")
            value, pos = data[pos : pos + length], pos + length
        elif wire_type == 5:
            if pos + 4 > len(data):
                raise FrameError(INTERNAL, "truncated fixed32")
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise FrameError(INTERNAL, f"unsupported wire type {wire_type}")
        fields.append((number, wire_type, value))
    return fields


def decode_auth_request(payload: bytes) -> AuthRequest:
    ident = token = ""
    headers = []
    for number, wire_type, value in wire_fields(payload):
        if wire_type != 2:
            continue
        if number == 1:
            ident = value.decode("utf-8", errors="replace")
        elif number == 2:
            token = value.decode("utf-8", errors="replace")
        elif number == 3:
            pair = satellite_v0_2_pb2.SatAuthHeaderPair()
            try:
                pair.ParseFromString(value)
            except (DecodeError, ValueError, RuntimeError):
                continue  # ORIGINAL's schema_version string, or junk: ignored
            if pair.key:
                headers.append((int(pair.key), pair.value))
    return AuthRequest(ident, token, tuple(headers))


def auth_request(gen: Generation, client_id: str, token: str) -> bytes:
    """A client's SatAuthReq frame (tests, bench): V0_2 adds the PROTO_VERSION header."""
    if gen is V0_2:
        msg = gen.pb.SatAuthReq(
            id=client_id,
            token=token,
            headers=[gen.pb.SatAuthHeaderPair(key=HEADER_PROTO_VERSION, value=PROTO_VERSION_V0_2)],
        )
    else:
        msg = gen.pb.SatAuthReq(id=client_id, token=token)
    return encode(gen, msg)


# -- rows ---------------------------------------------------------------------


def bitmask_length(columns: int) -> int:
    return (columns + 7) // 8


def nulls_bitmask(nulls: Sequence[bool]) -> bytes:
    """Bit i set for a NULL column i, counting from the most significant bit of byte 0."""
    mask = bytearray(bitmask_length(len(nulls)))
    for i, null in enumerate(nulls):
        if null:
            mask[i // 8] |= 0x80 >> (i % 8)
    return bytes(mask)


def is_null(mask: bytes, i: int) -> bool:
    return bool(mask[i // 8] & (0x80 >> (i % 8)))


def encode_row(gen: Generation, columns: Sequence[str], row: Mapping[str, Optional[str]]):
    """A SatOpRow of `row` in `columns` order; a column missing from `row` is NULL."""
    values = []
    nulls = []
    for name in columns:
        value = row.get(name)
        nulls.append(value is None)
        values.append(b"" if value is None else str(value).encode("utf-8"))
    return gen.pb.SatOpRow(nulls_bitmask=nulls_bitmask(nulls), values=values)


def decode_row(row, columns: Sequence[str]) -> Dict[str, Optional[str]]:
    """
    column -> text (None for NULL) of a client's SatOpRow.  Raises
    FrameError(INVALID_REQUEST) when the value count is not the column count
    or the bitmask is too short to cover every column.
    """
    if len(row.values) != len(columns):
        raise FrameError(
            INVALID_REQUEST, f"row has {len(row.values)} values for {len(columns)} columns"
        )
    if len(row.nulls_bitmask) * 8 < len(columns):
        raise FrameError(
            INVALID_REQUEST,
            f"nulls bitmask of {len(row.nulls_bitmask)} bytes is too short for {len(columns)} columns",
        )
    result: Dict[str, Optional[str]] = {}
    for i, name in enumerate(columns):
        if is_null(row.nulls_bitmask, i):
            result[name] = None
        else:
            value = row.values[i]
            if b"\x00" in value:
                # Postgres text cannot hold NUL: refuse here rather than break every subscriber later
                raise FrameError(INVALID_REQUEST, f"value of column {name!r} contains a NUL byte")
            try:
                result[name] = value.decode("utf-8")
            except UnicodeDecodeError:
                raise FrameError(INVALID_REQUEST, f"value of column {name!r} is not UTF-8 text") from None
    return result


# -- column types ---------------------------------------------------------------

# Postgres type names the clients of the period decode (case-insensitively);
# any other name makes them fail the whole transaction.
_CLIENT_TYPES = {
    "text": "text",
    "varchar": "varchar",
    "uuid": "uuid",
    "bpchar": "char",
    "char": "char",
    "int2": "int2",
    "int4": "int4",
    "int8": "int8",
    "integer": "int4",
    "float4": "float4",
    "float8": "float8",
}


def client_type_name(pg_type_name: str) -> str:
    """
    The type name to put in SatRelationColumn.type.  Values always travel as
    Postgres text, so a type the client cannot decode (bool, numeric,
    timestamps, json, arrays such as ``_int4``, enums, ...) is announced as
    ``text``: the client stores the exact text instead of failing the
    transaction.  (``numeric`` stays text on purpose: the client would turn
    a number type into a lossy float.)
    """
    return _CLIENT_TYPES.get(pg_type_name.lower(), "text")
