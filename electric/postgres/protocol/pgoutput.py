"""
The pgoutput logical-decoding format (protocol versions 1 to 3), both ways.

Electric reads pgoutput from every Postgres (the inbound stream) and writes
it to every Postgres that subscribes to port 5433, so each message here both
decodes (`decode`) and encodes (``message.encode()``), and the two are exact
inverses: ``decode(m.encode()) == m``.

Values in tuples stay in the form they travelled in: ``str`` for text
(``t``), ``bytes`` for binary (``b``), None for NULL (``n``) and
`electric.hub.interface.UNCHANGED` for an unchanged TOASTed value (``u``),
which the hub later fills in from the current row.

Differences between protocol versions:

* v1: the base messages (B C O R Y I U D T M).
* v2: streamed transactions (S E c A); inside a stream block every
  R Y I U D T M carries the transaction's xid right after the type byte.
  Which messages carry the xid depends on being inside a block, so
  `PgoutputDecoder` tracks it; `decode(payload, in_stream=...)` is the
  stateless form.
* v3: two-phase commit messages (b P K r p).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

from electric.hub.interface import UNCHANGED
from electric.postgres.protocol.types import find_by_oid
from electric.postgres.protocol.cursor import I16, I32, U32, U64, Cursor, ProtocolError

__all__ = [
    "PgoutputError", "decode", "PgoutputDecoder", "encode_tuple", "Begin", "Commit", "Origin",
    "Relation", "RelationColumn", "Type", "Insert", "Update", "Delete", "Truncate",
    "LogicalMessage", "StreamStart", "StreamStop", "StreamCommit", "StreamAbort", "BeginPrepare",
    "Prepare", "CommitPrepared", "RollbackPrepared", "StreamPrepare", "TRUNCATE_CASCADE",
    "TRUNCATE_RESTART_IDENTITY",
]


class PgoutputError(ProtocolError):
    """A pgoutput payload that cannot be decoded (or a message that cannot be encoded)."""

    def __init__(self, message: str):
        super().__init__(message, "08P01")


TupleValue = Union[None, str, bytes, type(UNCHANGED)]
TupleData = Tuple[TupleValue, ...]

_BEGIN = struct.Struct("!QqI")
_COMMIT = struct.Struct("!BQQq")
_REL_COL_TAIL = struct.Struct("!Ii")
_STREAM_COMMIT = struct.Struct("!IBQQq")
_PREPARE_HEAD = struct.Struct("!BQQqI")
_BEGIN_PREPARE_HEAD = struct.Struct("!QQqI")
_ROLLBACK_PREPARED_HEAD = struct.Struct("!BQQqqI")
_MESSAGE_HEAD = struct.Struct("!BQ")

TRUNCATE_CASCADE = 1
TRUNCATE_RESTART_IDENTITY = 2

REPLICA_IDENTITIES = ("d", "n", "f", "i")


def _tuple_data(c: Cursor) -> TupleData:
    """TupleData at the cursor (inlined reads: this is the hot path of every change)."""
    buf = c.buf
    size = len(buf)
    n = c.int16()
    if n < 0:
        raise c.error(f"negative column count {n} in tuple data")
    vals = []
    append = vals.append
    pos = c.pos
    unpack = I32.unpack_from
    for _ in range(n):
        if pos >= size:
            raise c.error(f"tuple data ends after {len(vals)} of {n} columns")
        kind = buf[pos]
        pos += 1
        if kind == 0x74 or kind == 0x62:  # 't' text, 'b' binary
            if pos + 4 > size:
                raise c.error(f"value length at offset {pos} overruns the message")
            ln = unpack(buf, pos)[0]
            pos += 4
            end = pos + ln
            what = "text" if kind == 0x74 else "binary"
            if ln < 0 or end > size:
                raise c.error(f"{what} value of length {ln} at offset {pos} overruns the message")
            if kind == 0x74:
                try:
                    append(buf[pos:end].decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise c.error(f"text is not valid UTF-8 ({e})") from None
            else:
                append(bytes(buf[pos:end]))
            pos = end
        elif kind == 0x6E:  # 'n'
            append(None)
        elif kind == 0x75:  # 'u'
            append(UNCHANGED)
        else:
            raise c.error(
                f"unknown tuple data kind {bytes([kind])!r} at offset {pos - 1} "
                "(expected t, n, u or b)")
    c.pos = pos
    return tuple(vals)


def _cstr(s: str) -> bytes:
    b = s.encode("utf-8")
    if b"\0" in b:
        raise PgoutputError(f"string {s!r} contains a NUL byte")
    return b + b"\0"


def _unencodable(m, e: Exception) -> PgoutputError:
    """
    A field the wire cannot carry (an integer out of its range, text that is
    not Unicode, a wrong type): refused with the message's name, never sent
    masked or truncated, and never a bare struct.error.
    """
    return PgoutputError(f"cannot encode pgoutput {type(m).__name__}: {e}")


def encode_tuple(values: TupleData) -> bytes:
    """TupleData: Int16 count, then per column n / u / t+len+text / b+len+bytes."""
    parts = [I16.pack(len(values))]
    append = parts.append
    pack = I32.pack
    for v in values:
        if v is None:
            append(b"n")
        elif v is UNCHANGED:
            append(b"u")
        elif isinstance(v, str):
            try:
                b = v.encode("utf-8")
            except UnicodeEncodeError as e:
                raise PgoutputError(f"cannot encode tuple value {v!r}: not Unicode text ({e})") from None
            append(b"t" + pack(len(b)) + b)
        elif isinstance(v, (bytes, bytearray, memoryview)):
            b = bytes(v)
            append(b"b" + pack(len(b)) + b)
        else:
            raise PgoutputError(
                f"cannot encode tuple value {v!r}: expected str, bytes, None or UNCHANGED")
    return b"".join(parts)


def _xid_prefix(xid: Optional[int]) -> bytes:
    return b"" if xid is None else U32.pack(xid)


# --------------------------------------------------------------------------
# Messages

@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_timestamp: int
    """µs since 2000-01-01Z."""
    xid: int
    TAG = b"B"

    def encode(self) -> bytes:
        try:
            return b"B" + _BEGIN.pack(self.final_lsn, self.commit_timestamp, self.xid)
        except (struct.error, ValueError) as e:
            raise _unencodable(self, e) from None


@dataclass(frozen=True, slots=True)
class Commit:
    commit_lsn: int
    end_lsn: int
    commit_timestamp: int
    flags: int = 0
    TAG = b"C"

    @property
    def lsn(self) -> int:
        return self.commit_lsn

    def encode(self) -> bytes:
        try:
            return b"C" + _COMMIT.pack(self.flags, self.commit_lsn, self.end_lsn, self.commit_timestamp)
        except (struct.error, ValueError) as e:
            raise _unencodable(self, e) from None


@dataclass(frozen=True, slots=True)
class Origin:
    origin_lsn: int
    name: str
    TAG = b"O"

    def encode(self) -> bytes:
        try:
            return b"O" + U64.pack(self.origin_lsn) + _cstr(self.name)
        except (struct.error, ValueError) as e:
            raise _unencodable(self, e) from None


@dataclass(frozen=True, slots=True)
class RelationColumn:
    flags: int
    """1 = part of the replica identity (key)."""
    name: str
    type_oid: int
    type_modifier: int = -1

    @property
    def is_key(self) -> bool:
        return self.flags == 1

    @property
    def type_name(self) -> Optional[str]:
        """The built-in type's name (``_int4`` for arrays); None for other OIDs."""
        t = find_by_oid(self.type_oid)
        return t.name if t is not None else None


@dataclass(frozen=True, slots=True)
class Relation:
    relation_id: int
    namespace: str
    name: str
    replica_identity: str
    """``d`` default, ``n`` nothing, ``f`` full, ``i`` index."""
    columns: Tuple[RelationColumn, ...]
    xid: Optional[int] = None
    TAG = b"R"

    def encode(self) -> bytes:
        try:
            if self.replica_identity not in REPLICA_IDENTITIES:
                raise PgoutputError(f"replica identity must be one of d, n, f or i, not {self.replica_identity!r}")
            parts = [b"R", _xid_prefix(self.xid), U32.pack(self.relation_id), _cstr(self.namespace),
                     _cstr(self.name), self.replica_identity.encode("ascii"), I16.pack(len(self.columns))]
            for c in self.columns:
                parts.append(bytes((c.flags,)))
                parts.append(_cstr(c.name))
                parts.append(_REL_COL_TAIL.pack(c.type_oid, c.type_modifier))
            return b"".join(parts)
        except (struct.error, ValueError) as e:
            raise _unencodable(self, e) from None

    @property
    def column_names(self) -> Tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def key_columns(self) -> Tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.is_key)


@dataclass(frozen=True, slots=True)
class Type:
    type_oid: int
    namespace: str
    name: str
    xid: Optional[int] = None
    TAG = b"Y"

    def encode(self) -> bytes:
        try:
            return b"Y" + _xid_prefix(self.xid) + U32.pack(self.type_oid) + _cstr(self.namespace) + _cstr(self.name)
        except (struct.error, ValueError) as e:
            raise _unencodable(self, e) from None


@dataclass(frozen=True, slots=True)
class Insert:
    relation_id: int
    new: TupleData
    xid: Optional[int] = None
    TAG = b"I"

    def encode(self) -> bytes:
        try:
            return b"I" + _xid_prefix(self.xid) + U32.pack(self.relation_id) + b"N" + encode_tuple(self.new)
        except (struct.error, ValueError) as e:
            raise _unencodable(self, e) from None


@dataclass(frozen=True, slots=True)
class Update:
    """
    `old` is the full old row (``O``, REPLICA IDENTITY FULL), `key` the old
    key columns with other columns NULL (``K``, the key changed); at most one
    of them is set.
    """
    relation_id: int
    new: TupleData
    old: Optional[TupleData] = None
    key: Optional[TupleData] = None
    xid: Optional[int] = None
    TAG = b"U"

    def encode(self) -> bytes:
        try:
            if self.old is not None and self.key is not None:
                raise PgoutputError("an Update carries an old tuple (O) or a key tuple (K), not both")
            parts = [b"U", _xid_prefix(self.xid), U32.pack(self.relation_id)]
            if self.key is not None:
                parts += [b"K", encode_tuple(self.key)]
            elif self.old is not None:
                parts += [b"O", encode_tuple(self.old)]
            parts += [b"N", encode_tuple(self.new)]
            return b"".join(parts)
        except (struct.error, ValueError) as e:
            raise _unencodable(self, e) from None


@dataclass(frozen=True, slots=True)
class Delete:
    relation_id: int
    old: Optional[TupleData] = None
    key: Optional[TupleData] = None
    xid: Optional[int] = None
    TAG = b"D"

    def encode(self) -> bytes:
        try:
            if (self.old is None) == (self.key is None):
                raise PgoutputError("a Delete carries exactly one of an old tuple (O) or a key tuple (K)")
            if self.key is not None:
                body = b"K" + encode_tuple(self.key)
            else:
                body = b"O" + encode_tuple(self.old)  # type: ignore[arg-type]
            return b"D" + _xid_prefix(self.xid) + U32.pack(self.relation_id) + body
        except (struct.error, ValueError) as e:
            raise _unencodable(self, e) from None

    @property
    def values(self) -> TupleData:
        return self.old if self.old is not None else self.key  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Truncate:
    relation_ids: Tuple[int, ...]
    options: int = 0
    """Bit 1 CASCADE, bit 2 RESTART IDENTITY (3 = both)."""
    xid: Optional[int] = None
    TAG = b"T"

    @property
    def cascade(self) -> bool:
        return bool(self.options & TRUNCATE_CASCADE)

    @property
    def restart_identity(self) -> bool:
        return bool(self.options & TRUNCATE_RESTART_IDENTITY)

    def encode(self) -> bytes:
        try:
            return (b"T" + _xid_prefix(self.xid) + U32.pack(len(self.relation_ids))
                    + bytes((self.options,)) + b"".join(U32.pack(r) for r in self.relation_ids))
        except (struct.error, ValueError) as e:
            raise _unencodable(self, e) from None


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """``M``: pg_logical_emit_message output (needs the ``messages`` option)."""
    flags: int
    lsn: int
    prefix: str
    content: bytes
    xid: Optional[int] = None
    TAG = b"M"

    @property
    def transactional(self) -> bool:
        return bool(self.flags & 1)

    def encode(self) -> bytes:
        try:
            return (b"M" + _xid_prefix(self.xid) + _MESSAGE_HEAD.pack(self.flags, self.lsn)
                    + _cstr(self.prefix) + I32.pack(len(self.content)) + bytes(self.content))
        except (struct.error, ValueError) as e:
            raise _unencodable(self, e) from None


@dataclass(frozen=True, slots=True)
class StreamStart:
    xid: int
    first_segment: bool
    TAG = b"S"

    def encode(self) -> bytes:
        try:
            return b"S" + U32.pack(self.xid) + (b"\x01" if self.first_segment else b"\x00")
        except (struct.error, ValueError) as e:
            raise _unencodable(self, e) from None


@dataclass(frozen=True, slots=True)
class StreamStop:
    TAG = b"E"

    def encode(self) -> bytes:
        return b"E"


@dataclass(frozen=True, slots=True)
class StreamCommit:
    xid: int
    commit_lsn: int
    end_lsn: int
    commit_timestamp: int
    flags: int = 0
    TAG = b"c"

    def encode(self) -> bytes:
        try:
            return b"c" + _STREAM_COMMIT.pack(self.xid, self.flags, self.commit_lsn, self.end_lsn,
                                              self.commit_timestamp)
        except (struct.error, ValueError) as e:
            raise _unencodable(self, e) from None


@dataclass(frozen=True, slots=True)
class StreamAbort:
    xid: int
    subxid: int
    TAG = b"A"

    def encode(self) -> bytes:
        try:
            return b"A" + U32.pack(self.xid) + U32.pack(self.subxid)
        except (struct.error, ValueError) as e:
            raise _unencodable(self, e) from None


@dataclass(frozen=True, slots=True)
class BeginPrepare:
    prepare_lsn: int
    end_lsn: int
    prepare_timestamp: int
    xid: int
    gid: str
    TAG = b"b"

    def encode(self) -> bytes:
        try:
            return b"b" + _BEGIN_PREPARE_HEAD.pack(self.prepare_lsn, self.end_lsn,
                                                   self.prepare_timestamp, self.xid) + _cstr(self.gid)
        except (struct.error, ValueError) as e:
            raise _unencodable(self, e) from None


@dataclass(frozen=True, slots=True)
class _PrepareLike:
    """Prepare, Commit Prepared and Stream Prepare share one layout; only the tag differs."""

    flags: int
    lsn: int
    """The prepare LSN (Prepare, Stream Prepare) or the commit LSN (Commit Prepared)."""
    end_lsn: int
    timestamp: int
    xid: int
    gid: str

    def encode(self) -> bytes:
        try:
            return self.TAG + _PREPARE_HEAD.pack(  # type: ignore[attr-defined]
                self.flags, self.lsn, self.end_lsn, self.timestamp, self.xid) + _cstr(self.gid)
        except (struct.error, ValueError) as e:
            raise _unencodable(self, e) from None


@dataclass(frozen=True, slots=True)
class Prepare(_PrepareLike):
    TAG = b"P"


@dataclass(frozen=True, slots=True)
class CommitPrepared(_PrepareLike):
    TAG = b"K"


@dataclass(frozen=True, slots=True)
class StreamPrepare(_PrepareLike):
    TAG = b"p"


@dataclass(frozen=True, slots=True)
class RollbackPrepared:
    flags: int
    prepare_end_lsn: int
    rollback_end_lsn: int
    prepare_timestamp: int
    rollback_timestamp: int
    xid: int
    gid: str
    TAG = b"r"

    def encode(self) -> bytes:
        try:
            return b"r" + _ROLLBACK_PREPARED_HEAD.pack(
                self.flags, self.prepare_end_lsn, self.rollback_end_lsn, self.prepare_timestamp,
                self.rollback_timestamp, self.xid) + _cstr(self.gid)
        except (struct.error, ValueError) as e:
            raise _unencodable(self, e) from None


PgoutputMessage = Union[Begin, Commit, Origin, Relation, Type, Insert, Update, Delete, Truncate,
                        LogicalMessage, StreamStart, StreamStop, StreamCommit, StreamAbort,
                        BeginPrepare, Prepare, CommitPrepared, RollbackPrepared, StreamPrepare]


# --------------------------------------------------------------------------
# Decoding

def _xid(c: Cursor, in_stream: bool) -> Optional[int]:
    return c.uint32() if in_stream else None


def _d_begin(c, s):
    return Begin(*c.unpack(_BEGIN))


def _d_commit(c, s):
    flags, commit_lsn, end_lsn, ts = c.unpack(_COMMIT)
    return Commit(commit_lsn, end_lsn, ts, flags)


def _d_origin(c, s):
    return Origin(c.uint64(), c.cstring())


def _d_relation(c, s):
    xid = _xid(c, s)
    rel_id = c.uint32()
    ns = c.cstring()
    name = c.cstring()
    ident = chr(c.uint8())
    if ident not in REPLICA_IDENTITIES:
        raise c.error(f"unknown replica identity {ident!r} (expected d, n, f or i)")
    n = c.int16()
    if n < 0:
        raise c.error(f"negative column count {n}")
    cols = []
    for _ in range(n):
        flags = c.uint8()
        cname = c.cstring()
        oid, typmod = c.unpack(_REL_COL_TAIL)
        cols.append(RelationColumn(flags, cname, oid, typmod))
    return Relation(rel_id, ns, name, ident, tuple(cols), xid)


def _d_type(c, s):
    xid = _xid(c, s)
    return Type(c.uint32(), c.cstring(), c.cstring(), xid)


def _expect(c: Cursor, allowed: bytes, what: str) -> bytes:
    b = c.byte()
    if b not in allowed:
        raise c.error(f"{what}: expected one of {', '.join(chr(x) for x in allowed)}, got {b!r}")
    return b


def _d_insert(c, s):
    xid = _xid(c, s)
    rel = c.uint32()
    _expect(c, b"N", "Insert tuple marker")
    return Insert(rel, _tuple_data(c), xid)


def _d_update(c, s):
    xid = _xid(c, s)
    rel = c.uint32()
    old = key = None
    marker = _expect(c, b"KON", "Update tuple marker")
    if marker == b"K":
        key = _tuple_data(c)
        _expect(c, b"N", "Update new tuple marker")
    elif marker == b"O":
        old = _tuple_data(c)
        _expect(c, b"N", "Update new tuple marker")
    return Update(rel, _tuple_data(c), old, key, xid)


def _d_delete(c, s):
    xid = _xid(c, s)
    rel = c.uint32()
    marker = _expect(c, b"KO", "Delete tuple marker")
    t = _tuple_data(c)
    return Delete(rel, old=t if marker == b"O" else None, key=t if marker == b"K" else None, xid=xid)


def _d_truncate(c, s):
    xid = _xid(c, s)
    n = c.uint32()
    options = c.uint8()
    if n * 4 > len(c.buf) - c.pos:
        raise c.error(f"{n} relation ids announced, only {len(c.buf) - c.pos} bytes left")
    return Truncate(tuple(c.uint32() for _ in range(n)), options, xid)


def _d_message(c, s):
    xid = _xid(c, s)
    flags, lsn = c.unpack(_MESSAGE_HEAD)
    prefix = c.cstring()
    n = c.int32()
    return LogicalMessage(flags, lsn, prefix, c.bytes(n), xid)


def _d_stream_start(c, s):
    xid = c.uint32()
    first = c.uint8()
    # Postgres writes 1 or 0 (and reads only 1 as "first"): anything else is
    # not a Stream Start it could have sent, and would not re-encode the same.
    if first > 1:
        raise c.error(f"first-segment flag must be 0 or 1, not {first}")
    return StreamStart(xid, first == 1)


def _d_stream_stop(c, s):
    return StreamStop()


def _d_stream_commit(c, s):
    xid, flags, commit_lsn, end_lsn, ts = c.unpack(_STREAM_COMMIT)
    return StreamCommit(xid, commit_lsn, end_lsn, ts, flags)


def _d_stream_abort(c, s):
    return StreamAbort(c.uint32(), c.uint32())


def _d_begin_prepare(c, s):
    lsn, end, ts, xid = c.unpack(_BEGIN_PREPARE_HEAD)
    return BeginPrepare(lsn, end, ts, xid, c.cstring())


def _prepare_like(cls):
    def d(c, s):
        flags, lsn, end, ts, xid = c.unpack(_PREPARE_HEAD)
        return cls(flags, lsn, end, ts, xid, c.cstring())
    return d


def _d_rollback_prepared(c, s):
    flags, pend, rend, pts, rts, xid = c.unpack(_ROLLBACK_PREPARED_HEAD)
    return RollbackPrepared(flags, pend, rend, pts, rts, xid, c.cstring())


# tag -> (decoder, name, minimum proto_version)
_DECODERS: Dict[int, tuple] = {
    ord("B"): (_d_begin, "Begin", 1),
    ord("C"): (_d_commit, "Commit", 1),
    ord("O"): (_d_origin, "Origin", 1),
    ord("R"): (_d_relation, "Relation", 1),
    ord("Y"): (_d_type, "Type", 1),
    ord("I"): (_d_insert, "Insert", 1),
    ord("U"): (_d_update, "Update", 1),
    ord("D"): (_d_delete, "Delete", 1),
    ord("T"): (_d_truncate, "Truncate", 1),
    ord("M"): (_d_message, "Message", 1),
    ord("S"): (_d_stream_start, "Stream Start", 2),
    ord("E"): (_d_stream_stop, "Stream Stop", 2),
    ord("c"): (_d_stream_commit, "Stream Commit", 2),
    ord("A"): (_d_stream_abort, "Stream Abort", 2),
    ord("b"): (_d_begin_prepare, "Begin Prepare", 3),
    ord("P"): (_prepare_like(Prepare), "Prepare", 3),
    ord("K"): (_prepare_like(CommitPrepared), "Commit Prepared", 3),
    ord("r"): (_d_rollback_prepared, "Rollback Prepared", 3),
    ord("p"): (_prepare_like(StreamPrepare), "Stream Prepare", 3),
}
# ... plus the name errors give the message, made once.
_DECODERS = {tag: (fn, name, v, f"pgoutput {name} message") for tag, (fn, name, v) in _DECODERS.items()}

# Messages that carry an xid after the type byte inside a stream block.
_STREAMABLE = frozenset(b"RYIUDTM")


def decode(payload: bytes, in_stream: bool = False,
           proto_version: Optional[int] = None) -> PgoutputMessage:
    """
    Decode one pgoutput message (the data of an XLogData).

    `in_stream`: inside a Stream Start/Stop block (v2), where R Y I U D T M
    carry an xid.  `proto_version`: when given, messages newer than it are
    rejected.  Every malformed payload raises PgoutputError naming the message.
    """
    if not payload:
        raise PgoutputError("empty pgoutput message")
    if isinstance(payload, memoryview):
        payload = payload.tobytes()
    tag = payload[0]
    if not in_stream:
        # The messages of every transaction, without the general machinery
        # (same checks, same results; anything unusual takes the long way).
        size = len(payload)
        if tag == 0x42 and size == 21:  # Begin
            return Begin(*_BEGIN.unpack_from(payload, 1))
        if tag == 0x43 and size == 26:  # Commit
            flags, commit_lsn, end_lsn, ts = _COMMIT.unpack_from(payload, 1)
            return Commit(commit_lsn, end_lsn, ts, flags)
        if tag == 0x49 and size >= 8 and payload[5] == 0x4E:  # Insert ... 'N'
            c = Cursor(payload, "pgoutput Insert message", 6, PgoutputError)
            new = _tuple_data(c)
            c.end()
            return Insert(U32.unpack_from(payload, 1)[0], new)
    entry = _DECODERS.get(tag)
    if entry is None:
        raise PgoutputError(
            f"unsupported pgoutput message type {bytes([tag])!r} "
            f"(payload of {len(payload)} bytes starting {bytes(payload[:16]).hex()})")
    fn, name, min_version, what = entry
    if proto_version is not None and proto_version < min_version:
        raise PgoutputError(
            f"pgoutput {name} message is not valid in proto_version {proto_version} "
            f"(needs {min_version} or later)")
    c = Cursor(payload, what, 1, PgoutputError)
    msg = fn(c, in_stream and tag in _STREAMABLE)
    c.end()
    return msg


class PgoutputDecoder:
    """
    Stateful decoder for one replication stream: knows whether a streamed
    block is open (so it knows which messages carry an xid) and rejects
    messages the negotiated protocol version cannot produce.
    """

    def __init__(self, proto_version: int = 1):
        if proto_version not in (1, 2, 3):
            raise ValueError(f"unsupported pgoutput proto_version {proto_version!r}")
        self.proto_version = proto_version
        self.stream_xid: Optional[int] = None

    def decode(self, payload: bytes) -> PgoutputMessage:
        msg = decode(payload, self.stream_xid is not None, self.proto_version)
        if isinstance(msg, StreamStart):
            if self.stream_xid is not None:
                raise PgoutputError(
                    f"Stream Start for xid {msg.xid} while the block of xid {self.stream_xid} is open")
            self.stream_xid = msg.xid
        elif isinstance(msg, StreamStop):
            if self.stream_xid is None:
                raise PgoutputError("Stream Stop without an open stream block")
            self.stream_xid = None
        return msg
