"""
Electric's transaction records in Vaxine: what the Vaxine hub writes and reads back (pure functions).

Why records at all: the Vaxine hub (`electric.vaxine.hub`) uses Vaxine as
the *ordered, shared log* and resolves every transaction itself, with the
embedded hub's rule (`electric.hub.resolution`), in stream order.  That
rule needs the producer's transaction exactly as it was given (which
columns it set, ``old_values``, UNCHANGED columns, write guards, TRUNCATE,
RESEND), and the row objects of the data model (`electric.vaxine.datamodel`)
cannot carry all of it.  So every Vaxine transaction Electric writes has,
besides the data model's row objects, a per-transaction metadata object
whose registers hold the record:

* the data model's ``commit_timestamp``, ``id``, ``origin``, ``origin_id``,
  ``publication``;
* ``kind``: ``txn`` (a whole transaction), ``chunk`` (one chunk of a big
  transaction), ``commit`` (the big transaction's commit marker) or
  ``abort`` (its abort marker);
* ``changes`` (``txn`` and ``chunk``): the `RowChange`s, JSON, zlib-compressed;
* ``attempt`` (hex of 8 random bytes; ``chunk``/``commit``/``abort``),
  ``seq`` (``chunk``: 0, 1, ...), ``chunks`` (``commit``: how many).

Metadata object keys (one object per Vaxine transaction, never the shared
``metadata:0``: see `electric.vaxine.datamodel`): ``txn`` and ``commit``
use `datamodel.metadata_key` (``metadata:<origin>:<origin_id hex>``), a
chunk ``metadata:<origin>:chunk:<attempt>:<seq>``, an abort
``metadata:<origin>:abort:<attempt>``.

Big transactions are written as several Vaxine transactions (one per chunk)
and a commit marker, because one Vaxine transaction of a million rows would
come back through the stream as one frame of hundreds of megabytes.  The
reader stages chunks and applies the whole transaction at its commit marker,
as one hub position: atomic, since the marker is one Vaxine transaction.

A stream transaction without a ``kind`` register (written by the original
service, or by an Electric writing only the data model) is read from its row
objects instead: each row becomes an UPSERT of the row (or a DELETE of it) --
the converged row when the stream carries states (`datamodel.from_wal`), the
columns the transaction wrote when it carries only effects (the Vaxine hub
starts the stream with ``raw_values``: decoding states costs four times as
much, and Electric's own records need only the effects).

Errors: `electric.vaxine.datamodel.InvalidWalTransaction` (and its
`ForeignTransaction`) for anything that cannot be read; the caller logs and
skips it.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Union

from electric.hub.interface import (
    DELETE, RESEND, TRUNCATE, UNCHANGED, UPSERT, RowChange, Transaction, WriteGuard,
)
from electric.vaxine import crdt, datamodel as D
from electric.vaxine.pb import antidote_pb2 as pb
from electric.vaxine.stream import WalTransaction

M_KIND = b"kind"
M_CHANGES = b"changes"
M_ATTEMPT = b"attempt"
M_SEQ = b"seq"
M_CHUNKS = b"chunks"

KIND_TXN = b"txn"
KIND_CHUNK = b"chunk"
KIND_COMMIT = b"commit"
KIND_ABORT = b"abort"

MAX_RECORD = 64 * 1024 * 1024
"""Largest decompressed ``changes`` register accepted (a chunk is ~2,000 changes; this is generous)."""

_OPS = (UPSERT, DELETE, TRUNCATE, RESEND)
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


# --------------------------------------------------------------------------- changes <-> bytes


def encode_changes(changes: Sequence[RowChange]) -> bytes:
    """`RowChange`s as the ``changes`` register: zlib of a JSON list, one list per change.

    ``[schema, table, op, key, values, unchanged, old_values, guard]``:
    `values` with UNCHANGED columns as null and those columns listed in
    `unchanged`; `guard` null or ``[owner_column, owner, [not_null...]]``.
    """
    out = []
    for c in changes:
        values = None
        unchanged: List[str] = []
        if c.values is not None:
            values = {}
            for col, v in c.values.items():
                if v is UNCHANGED:
                    unchanged.append(col)
                    values[col] = None
                else:
                    values[col] = v
        guard = None
        if c.guard is not None:
            guard = [c.guard.owner_column, c.guard.owner, sorted(c.guard.not_null)]
        out.append([c.schema, c.table, c.op, list(c.key), values, unchanged,
                    None if c.old_values is None else dict(c.old_values), guard])
    return zlib.compress(_dumps(out).encode("utf-8"), 1)


def _fail(what: str):
    raise D.InvalidWalTransaction(f"change record: {what}")


def _is_text(v) -> bool:
    return v is None or isinstance(v, str)


def _text_map(what: str, m) -> Optional[dict]:
    if m is None:
        return None
    if not isinstance(m, dict) or not all(isinstance(k, str) and _is_text(v) for k, v in m.items()):
        _fail(f"{what} is not a map of column -> text or null")
    return m


def decode_changes(blob: bytes) -> Tuple[RowChange, ...]:
    """Inverse of `encode_changes`; `InvalidWalTransaction` for anything malformed (bounded: `MAX_RECORD`)."""
    try:
        d = zlib.decompressobj()
        raw = d.decompress(bytes(blob), MAX_RECORD)
        if d.unconsumed_tail:
            _fail(f"more than {MAX_RECORD} bytes")
        data = json.loads(raw.decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, ValueError) as e:
        if isinstance(e, D.InvalidWalTransaction):
            raise
        _fail(f"not zlib-compressed JSON: {e}")
    if not isinstance(data, list):
        _fail("not a list")
    changes = []
    for item in data:
        if not (isinstance(item, list) and len(item) == 8):
            _fail(f"change {str(item)[:80]} is not an 8-element list")
        schema, table, op, key, values, unchanged, old, guard = item
        if not (isinstance(schema, str) and isinstance(table, str) and op in _OPS):
            _fail(f"change {str(item)[:80]}: bad schema, table or op")
        if not (isinstance(key, list) and all(_is_text(v) for v in key)):
            _fail(f"change {str(item)[:80]}: bad key")
        values = _text_map("values", values)
        old = _text_map("old_values", old)
        if not (isinstance(unchanged, list) and all(isinstance(c, str) for c in unchanged)):
            _fail("unchanged columns are not a list of names")
        if unchanged:
            if values is None or any(c not in values for c in unchanged):
                _fail("an unchanged column is not among the values")
            values = {c: (UNCHANGED if c in unchanged else v) for c, v in values.items()}
        g = None
        if guard is not None:
            if not (isinstance(guard, list) and len(guard) == 3 and _is_text(guard[0]) and _is_text(guard[1])
                    and isinstance(guard[2], list) and all(isinstance(c, str) for c in guard[2])):
                _fail("bad write guard")
            g = WriteGuard(guard[0], guard[1], frozenset(guard[2]))
        changes.append(RowChange(schema, table, op, tuple(key), values, old, g))
    return tuple(changes)


# --------------------------------------------------------------------------- writing


def new_attempt() -> str:
    """A fresh attempt id for one big transaction (16 hex digits)."""
    return os.urandom(8).hex()


def chunk_key(origin: str, attempt: str, seq: int) -> bytes:
    return D.METADATA_PREFIX + f"{D._escape(origin)}:chunk:{attempt}:{seq}".encode("utf-8")


def abort_key(origin: str, attempt: str) -> bytes:
    return D.METADATA_PREFIX + f"{D._escape(origin)}:abort:{attempt}".encode("utf-8")


def _reg(obj, name: bytes, value: bytes) -> pb.ApbUpdateOp:
    return D._register(obj, name, value)


def merge_ops(ops: Sequence[pb.ApbUpdateOp]) -> pb.ApbUpdateOp:
    """Map updates of ONE object (as `datamodel` builds them, one per entry) as one UpdateOp.

    The resulting state is the same (each entry is updated once, the
    columns' nested updates are gathered under one ``row`` entry), but
    Vaxine handles -- and logs -- one update instead of five or more: on the
    real node each UpdateOp costs about as much as a whole small transaction.
    """
    merged = pb.ApbUpdateOp()
    merged.boundobject.CopyFrom(ops[0].boundobject)
    target = merged.operation.mapop
    row = None
    for op in ops:
        if op.boundobject.key != merged.boundobject.key or not op.operation.HasField("mapop"):
            raise ValueError("merge_ops takes map updates of one object")
        for nested in op.operation.mapop.updates:
            if nested.key.key == D.F_ROW and nested.update.HasField("mapop"):
                if row is None:
                    row = target.updates.add()
                    row.key.key, row.key.type = D.F_ROW, nested.key.type
                row.update.mapop.updates.extend(nested.update.mapop.updates)
            else:
                target.updates.add().CopyFrom(nested)
        target.removedKeys.extend(op.operation.mapop.removedKeys)
    return merged


def _mirror(changes: Sequence[RowChange]) -> List[pb.ApbUpdateOp]:
    """The data model's row-object updates, one UpdateOp per change (TRUNCATE travels in the record only)."""
    return [merge_ops(D.row_updates(c)) for c in changes if c.op != TRUNCATE]


def _header(obj, origin: str, origin_id: bytes, commit_timestamp: int, kind: bytes, publication: str = ""):
    return [
        _reg(obj, D.M_COMMIT_TIMESTAMP, D.format_timestamp(commit_timestamp).encode()),
        _reg(obj, D.M_ID, b"0"),
        _reg(obj, D.M_ORIGIN, origin.encode("utf-8")),
        _reg(obj, D.M_ORIGIN_ID, bytes(origin_id)),
        _reg(obj, D.M_PUBLICATION, publication.encode("utf-8")),
        _reg(obj, M_KIND, kind),
    ]


def transaction_ops(txn: Transaction) -> List[pb.ApbUpdateOp]:
    """One whole transaction: its metadata object with the record, then its row objects."""
    obj = D.metadata_object(D.metadata_key(txn.origin, txn.origin_id))
    ops = _header(obj, txn.origin, txn.origin_id, txn.commit_timestamp, KIND_TXN)
    ops.append(_reg(obj, M_CHANGES, encode_changes(txn.changes)))
    return [merge_ops(ops)] + _mirror(txn.changes)


def chunk_ops(origin: str, attempt: str, seq: int, commit_timestamp: int,
              changes: Sequence[RowChange]) -> List[pb.ApbUpdateOp]:
    """Chunk `seq` of big transaction `attempt` of `origin`."""
    obj = D.metadata_object(chunk_key(origin, attempt, seq))
    ops = _header(obj, origin, b"", commit_timestamp, KIND_CHUNK)
    ops += [_reg(obj, M_ATTEMPT, attempt.encode()), _reg(obj, M_SEQ, str(seq).encode()),
            _reg(obj, M_CHANGES, encode_changes(changes))]
    return [merge_ops(ops)] + _mirror(changes)


def commit_ops(origin: str, origin_id: bytes, attempt: str, chunks: int, commit_timestamp: int) -> List[pb.ApbUpdateOp]:
    """The commit marker of big transaction `attempt`: `chunks` chunks make transaction (origin, origin_id)."""
    obj = D.metadata_object(D.metadata_key(origin, origin_id))
    ops = _header(obj, origin, origin_id, commit_timestamp, KIND_COMMIT)
    return [merge_ops(ops + [_reg(obj, M_ATTEMPT, attempt.encode()), _reg(obj, M_CHUNKS, str(chunks).encode())])]


def abort_ops(origin: str, attempt: str, commit_timestamp: int) -> List[pb.ApbUpdateOp]:
    obj = D.metadata_object(abort_key(origin, attempt))
    ops = _header(obj, origin, b"", commit_timestamp, KIND_ABORT)
    return [merge_ops(ops + [_reg(obj, M_ATTEMPT, attempt.encode())])]


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Whole:
    """A whole transaction (kind ``txn``, or a row-state transaction without a record)."""

    transaction: Transaction
    from_states: bool = False


@dataclass(frozen=True)
class Chunk:
    origin: str
    attempt: str
    seq: int
    changes: Tuple[RowChange, ...]


@dataclass(frozen=True)
class CommitMark:
    origin: str
    origin_id: bytes
    attempt: str
    chunks: int
    commit_timestamp: int


@dataclass(frozen=True)
class AbortMark:
    origin: str
    attempt: str


Record = Union[Whole, Chunk, CommitMark, AbortMark]


def _int(name: str, data: Optional[bytes]) -> int:
    if data is None or not data.isdigit() or len(data) > 12:
        _fail(f"{name} {data!r} is not a decimal number")
    return int(data)


def _attempt(data: Optional[bytes]) -> str:
    if data is None or len(data) != 16 or any(c not in b"0123456789abcdef" for c in data):
        _fail(f"attempt {data!r} is not 16 hex digits")
    return data.decode()


def _from_effects(wal: WalTransaction, fields) -> Whole:
    """A record-less transaction streamed with ``raw_values`` (no states): its rows from their effects."""
    if D.M_ORIGIN not in fields or D.M_COMMIT_TIMESTAMP not in fields:
        raise D.InvalidWalTransaction(f"transaction at {wal.offset}: metadata lacks origin or commit_timestamp")
    try:
        ts = D.parse_timestamp(D._text("commit_timestamp", fields[D.M_COMMIT_TIMESTAMP]))
    except ValueError as e:
        raise D.InvalidWalTransaction(f"transaction at {wal.offset}: {e}") from None
    effects = {}
    for op in wal.ops:
        if op.key.startswith(D.ROWS_PREFIX):
            effects.setdefault(op.key, []).extend(op.effects)
    rows = []
    try:
        for key, effs in effects.items():
            row = D.row_from_state(crdt.make_dict([]), effs)
            if row is not None:
                rows.append(row)
    except crdt.CrdtError as e:
        raise D.InvalidWalTransaction(f"transaction at {wal.offset}: {e}") from None
    return _as_whole(D._text("origin", fields[D.M_ORIGIN]), fields.get(D.M_ORIGIN_ID, b""), ts, rows)


def _as_whole(origin, origin_id, ts, rows) -> Whole:
    changes = []
    for c in rows:
        if c.deleted:
            changes.append(RowChange(c.schema, c.table, DELETE, c.key, dict(c.row)))
        else:
            changes.append(RowChange(c.schema, c.table, UPSERT, c.key, dict(c.row)))
    return Whole(Transaction(origin, origin_id, ts, tuple(changes)), from_states=True)


def _from_states(wal: WalTransaction) -> Whole:
    w = D.from_wal(wal)
    return _as_whole(w.origin, w.origin_id, w.commit_timestamp, w.changes)


def parse(wal: WalTransaction) -> Record:
    """What one stream transaction means to the Vaxine hub (see the module docstring)."""
    # (with raw_values each update of an object is an op of its own: gather them by key)
    found = [op for op in wal.ops if op.key.startswith(D.METADATA_PREFIX)]
    if not found:
        raise D.ForeignTransaction(f"transaction at {wal.offset} has no metadata object: not Electric's")
    keys = {op.key for op in found}
    if len(keys) > 1:
        raise D.InvalidWalTransaction(f"transaction at {wal.offset} has {len(keys)} metadata objects")
    try:
        fields = D.metadata_from_effects([e for op in found for e in op.effects])
    except ValueError as e:
        raise D.InvalidWalTransaction(f"transaction at {wal.offset}: {e}") from None
    kind = fields.get(M_KIND)
    if kind is None:
        if any(op.state is None for op in wal.ops):
            return _from_effects(wal, fields)
        return _from_states(wal)
    if D.M_ORIGIN not in fields or D.M_COMMIT_TIMESTAMP not in fields:
        raise D.InvalidWalTransaction(f"transaction at {wal.offset}: metadata lacks origin or commit_timestamp")
    origin = D._text("origin", fields[D.M_ORIGIN])
    origin_id = fields.get(D.M_ORIGIN_ID, b"")
    try:
        ts = D.parse_timestamp(D._text("commit_timestamp", fields[D.M_COMMIT_TIMESTAMP]))
    except ValueError as e:
        raise D.InvalidWalTransaction(f"transaction at {wal.offset}: {e}") from None
    if kind == KIND_TXN:
        changes = decode_changes(fields.get(M_CHANGES, b""))
        return Whole(Transaction(origin, origin_id, ts, changes))
    if kind == KIND_CHUNK:
        return Chunk(origin, _attempt(fields.get(M_ATTEMPT)), _int("seq", fields.get(M_SEQ)),
                     decode_changes(fields.get(M_CHANGES, b"")))
    if kind == KIND_COMMIT:
        return CommitMark(origin, origin_id, _attempt(fields.get(M_ATTEMPT)), _int("chunks", fields.get(M_CHUNKS)), ts)
    if kind == KIND_ABORT:
        return AbortMark(origin, _attempt(fields.get(M_ATTEMPT)))
    raise D.InvalidWalTransaction(f"transaction at {wal.offset}: unknown record kind {kind[:20]!r}")


__all__ = [
    "encode_changes", "decode_changes", "merge_ops", "new_attempt", "transaction_ops", "chunk_ops", "commit_ops", "abort_ops",
    "Whole", "Chunk", "CommitMark", "AbortMark", "Record", "parse",
]
