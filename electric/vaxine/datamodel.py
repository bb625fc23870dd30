"""
Electric's rows in Vaxine (spec section 2) and back from the stream (section 4): pure functions.

Writing (`transaction_updates`): a hub `Transaction` becomes a list of PB
``ApbUpdateOp``s for one interactive Vaxine transaction:

* a metadata object (RRMAP in bucket ``vax``; **one per transaction**, see
  below, where the spec has the shared ``metadata:0``), one UpdateOp per LWW
  register: ``commit_timestamp`` (``YYYY-MM-DD HH:MM:SS.ffffffZ``), ``id``
  (``"0"``), ``origin``, ``publication`` -- and **``origin_id``**, an
  addition to the spec (below);
* per row change, UpdateOps on ``rows:<schema>:<table>:<pk1>[:<pk2>...]``
  (RRMAP) with the entries ``deleted?`` (FLAG_DW: enabled = tombstone),
  ``id``/``schema``/``table`` (LWWREG, raw UTF-8), ``row`` (RRMAP of one
  LWWREG per column holding ``term_to_binary`` of the value: a binary for
  text, the atom ``nil`` for NULL, written as ``83 64 00 03 6e 69 6c`` like
  the original).  The ``row`` UpdateOp carries one nested update keyed
  ``row`` per column, exactly as the original's client library flattened it.

Reading (`from_wal`): a decoded ``vx_wal_txn`` becomes a `WalChanges`:
origin, origin_id, publication and commit time from the *effects* on the
metadata object (never its state: on ``metadata:0`` concurrent transactions
overwrite it), and
per ``rows:`` object one `electric.hub.interface.ResolvedChange` from its
*materialized state* with the object's own effects applied (see below) --
the converged row as of the commit, every column ever written, ``deleted``
from the flag.

Choices where the spec cannot carry what the hub needs, or where following it
would lose data (each one is a deliberate, documented deviation):

* **One metadata object per transaction** (`metadata_key`:
  ``metadata:<origin>:<origin_id hex>``) instead of the shared ``metadata:0``:
  on the real node every materialization of an object replays that object's
  history, and the stream materializes each transaction's objects, so with
  one object written by *every* transaction, catching up is quadratic.
  Measured on Vaxine bba3ec39 (2-core machine): replaying 400 transactions
  from offset 0 took 20 s with ``metadata:0`` (700 took 56 s; resuming 100
  transactions before the end of those 700 took 9 s), against 0.07 s for
  400 without a shared object (~5,800/s); the live tail kept up in both
  cases.  The per-transaction key also names the
  transaction, so a writer can check with one read whether ``(origin,
  origin_id)`` was already committed.  `from_wal` accepts either form; pass
  ``metadata=METADATA_KEY`` to write the spec's.
* **origin_id**: the spec's metadata has no per-transaction id.  Electric
  needs ``(origin, origin_id)`` back exactly to recognise its own
  transactions and to deduplicate, so it writes a fifth metadata register
  ``origin_id`` holding the raw bytes.  ``origin`` is the hub's origin string
  verbatim (``postgres_1``, ``satellite:<client id>``; the original wrote a
  bare client id).  A transaction without ``origin_id`` (written by the
  original service) reads back with ``b""``.
* **Escaped row ids**: the original joined key values with ``:`` unescaped,
  so ``('a:b',)`` and ``('a', 'b')`` shared one object.  Here each component
  (schema, table, every key value) has ``%`` and ``:`` percent-encoded; ids
  of values without those characters are byte-identical to the original's,
  and `parse_row_id` recovers the exact key, so reading needs no schema.
* **Upserts write ``id``/``schema``/``table`` every time**, not only on
  insert: the hub's UPSERT does not say whether Vaxine has seen the row, and
  the reader rejects a row object without ``id`` (spec 4.1).  Re-assigning
  the same value changes nothing.  Deletes write them too, for the same
  reason, but never column values (a delete must not overwrite concurrent
  column writes with the deleter's stale view).
* **Only changed columns are assigned** when the change carries
  ``old_values`` (the hub's rule: concurrent updates of different columns
  both survive); otherwise every column given, like the spec's update.
  ``UNCHANGED`` (unchanged TOAST) columns are never assigned -- the original
  stored the atom ``unchanged_toast``, a bug the spec says to avoid.
* **RESEND** re-assigns ``id``/``schema``/``table`` only: the row object then
  appears in the stream with its full current state (live or tombstone)
  without any value changing.  A row Vaxine never saw then holds only those
  registers; `from_wal` skips such objects (nothing to resend).
* **TRUNCATE has no Vaxine mapping** (the original crashed; Vaxine cannot
  enumerate keys).  `transaction_updates` raises `UnsupportedChange`; a
  caller that knows the table's live keys turns it into deletes with
  `truncate_as_deletes` first.
* A row object without a ``deleted?`` flag reads as live.

Where the real node disagrees with spec 4.1: the streamed materialized state
is sometimes the state *before* the transaction (so the spec's reader would
reject a new row as "invalid materialized row" and silently lose it, or ship
a row without the columns just written).  `from_wal` therefore applies the
row object's own effects to the streamed state first (`row_from_state`),
which gave the complete row in every case observed.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from electric.hub.interface import (
    DELETE, RESEND, TRUNCATE, UNCHANGED, UPSERT, ResolvedChange, RowChange, Transaction,
)
from electric.vaxine import antidote, crdt, etf
from electric.vaxine.pb import antidote_pb2 as pb
from electric.vaxine.stream import WalOffset, WalTransaction

METADATA_KEY = b"metadata:0"
"""The spec's single shared metadata object (what the original wrote; see `metadata_key`)."""
METADATA_PREFIX = b"metadata:"
ROWS_PREFIX = b"rows:"

# Entry names (map keys) of the objects.
F_DELETED = b"deleted?"
F_ID = b"id"
F_SCHEMA = b"schema"
F_TABLE = b"table"
F_ROW = b"row"
M_COMMIT_TIMESTAMP = b"commit_timestamp"
M_ID = b"id"
M_ORIGIN = b"origin"
M_ORIGIN_ID = b"origin_id"
M_PUBLICATION = b"publication"

NIL = b"\x83d\x00\x03nil"
"""``term_to_binary(nil)`` as OTP 24-25 wrote it (ATOM_EXT): what the original stored for NULL."""


class UnsupportedChange(ValueError):
    """A change the Vaxine data model cannot carry (TRUNCATE), or a malformed one."""


class InvalidWalTransaction(ValueError):
    """A stream transaction that cannot be turned into row changes; drop it (spec 3.7)."""


class ForeignTransaction(InvalidWalTransaction):
    """A stream transaction without a metadata object: not written by Electric (spec 3.7)."""


# --------------------------------------------------------------------------- row ids


def _escape(component: str) -> str:
    return component.replace("%", "%25").replace(":", "%3A")


_ESCAPE = re.compile(r"%(25|3A)")


def _unescape(component: str) -> str:
    return _ESCAPE.sub(lambda m: "%" if m.group(1) == "25" else ":", component)


def row_id(schema: str, table: str, key: Sequence[Optional[str]]) -> str:
    """``<schema>:<table>:<pk1>[:<pk2>...]`` with ``%`` and ``:`` escaped in each component."""
    if not key:
        raise UnsupportedChange(f"{schema}.{table}: a row needs a primary key")
    parts = [schema, table]
    for value in key:
        if not isinstance(value, str):
            raise UnsupportedChange(f"{schema}.{table}: primary-key value {value!r} is not text (NULL?)")
        parts.append(value)
    return ":".join(_escape(p) for p in parts)


def parse_row_id(text: str) -> Tuple[str, str, Tuple[str, ...]]:
    """Inverse of `row_id`: ``(schema, table, key)``."""
    parts = text.split(":")
    if len(parts) < 3:
        raise ValueError(f"row id {text!r} has no primary-key part")
    parts = [_unescape(p) for p in parts]
    return parts[0], parts[1], tuple(parts[2:])


def object_key(schema: str, table: str, key: Sequence[Optional[str]]) -> bytes:
    """The Vaxine key of a row's object: ``rows:`` + `row_id`."""
    return ROWS_PREFIX + row_id(schema, table, key).encode("utf-8")


def row_object(schema: str, table: str, key: Sequence[Optional[str]]) -> pb.ApbBoundObject:
    return antidote.bound_object(object_key(schema, table, key), antidote.RRMAP)


def metadata_key(origin: str, origin_id: bytes) -> bytes:
    """The per-transaction metadata object: ``metadata:<origin, escaped>:<origin_id in hex>``.

    Unique per ``(origin, origin_id)``, i.e. per source transaction (a re-sent
    transaction writes the same object again), and never ``metadata:0``.
    """
    return METADATA_PREFIX + f"{_escape(origin)}:{bytes(origin_id).hex()}".encode("utf-8")


def metadata_object(key: bytes = METADATA_KEY) -> pb.ApbBoundObject:
    return antidote.bound_object(key, antidote.RRMAP)


# --------------------------------------------------------------------------- values and time


def encode_value(value: Optional[str]) -> bytes:
    """A column value as its register bytes: ETF binary of the UTF-8 text, or ``nil`` for NULL."""
    if value is None:
        return NIL
    if not isinstance(value, str):
        raise UnsupportedChange(f"column values are text or None, got {type(value).__name__}")
    return etf.term_to_binary(value.encode("utf-8"))


def decode_value(data: bytes) -> Optional[str]:
    """Inverse of `encode_value`; also accepts OTP 26's ``nil`` (``83 77 03 nil``)."""
    try:
        term = etf.binary_to_term(data)
    except etf.ETFError as e:
        raise InvalidWalTransaction(f"column value {data[:40]!r} is not an ETF term: {e}") from None
    if isinstance(term, bytes):
        try:
            return term.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidWalTransaction(f"column value {term[:40]!r} is not UTF-8 text") from None
    if term == etf.Atom("nil"):
        return None
    raise InvalidWalTransaction(f"column value {term!r} is neither a binary nor nil")


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def format_timestamp(micros: int) -> str:
    """Microseconds since the epoch as Elixir's ``DateTime.to_string``: ``2022-08-17 15:20:06.202865Z``."""
    m = _EPOCH + datetime.timedelta(microseconds=micros)
    return f"{m.year:04d}-{m.month:02d}-{m.day:02d} {m.hour:02d}:{m.minute:02d}:{m.second:02d}.{m.microsecond:06d}Z"


_TIMESTAMP = re.compile(r"^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})(?:\.(\d{1,6}))?Z$")


def parse_timestamp(text: str) -> int:
    """Inverse of `format_timestamp`; any fraction of 0-6 digits (Satellite writes 3)."""
    m = _TIMESTAMP.match(text)
    if not m:
        raise ValueError(f"commit_timestamp {text!r} is not YYYY-MM-DD HH:MM:SS[.fraction]Z")
    try:
        whole = datetime.datetime.strptime(f"{m.group(1)} {m.group(2)}", "%Y-%m-%d %H:%M:%S").replace(
            tzinfo=datetime.timezone.utc)
    except ValueError:
        raise ValueError(f"commit_timestamp {text!r} is not a valid date and time") from None
    fraction = int((m.group(3) or "0").ljust(6, "0"))
    delta = whole - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + fraction


# --------------------------------------------------------------------------- writing


def _map_op(obj: pb.ApbBoundObject, name: bytes, ctype: int, operation: pb.ApbUpdateOperation) -> pb.ApbUpdateOp:
    return antidote.update_op(obj, antidote.map_update([(name, ctype, operation)]))


def _register(obj: pb.ApbBoundObject, name: bytes, value: bytes) -> pb.ApbUpdateOp:
    return _map_op(obj, name, antidote.LWWREG, antidote.assign(value))


def metadata_updates(transaction: Transaction, publication: str = "",
                     key: Optional[bytes] = None) -> List[pb.ApbUpdateOp]:
    """The 5 UpdateOps of the metadata object (the spec's 4 entries plus ``origin_id``), sorted by name.

    `key` None writes the per-transaction object (`metadata_key`); pass
    `METADATA_KEY` for the spec's shared ``metadata:0``.
    """
    obj = metadata_object(key if key is not None else metadata_key(transaction.origin, transaction.origin_id))
    return [
        _register(obj, M_COMMIT_TIMESTAMP, format_timestamp(transaction.commit_timestamp).encode()),
        _register(obj, M_ID, b"0"),
        _register(obj, M_ORIGIN, transaction.origin.encode("utf-8")),
        _register(obj, M_ORIGIN_ID, bytes(transaction.origin_id)),
        _register(obj, M_PUBLICATION, publication.encode("utf-8")),
    ]


def _assigned(change: RowChange) -> List[Tuple[str, Optional[str]]]:
    values = change.values or {}
    old = change.old_values
    assigned = []
    for column, value in values.items():
        if value is UNCHANGED:
            continue
        if old is not None and column in old and old[column] == value:
            continue
        if value is not None and not isinstance(value, str):
            raise UnsupportedChange(
                f"{change.schema}.{change.table}: column {column!r} value is {type(value).__name__}, not text")
        assigned.append((column, value))
    return sorted(assigned)


def row_updates(change: RowChange) -> List[pb.ApbUpdateOp]:
    """The UpdateOps of one row change (see the module docstring); `UnsupportedChange` for TRUNCATE."""
    if change.op == TRUNCATE:
        raise UnsupportedChange(
            f"TRUNCATE of {change.schema}.{change.table} has no Vaxine mapping; "
            "turn it into deletes of the live keys first (truncate_as_deletes)")
    if change.op not in (UPSERT, DELETE, RESEND):
        raise UnsupportedChange(f"unknown change op {change.op!r}")
    rid = row_id(change.schema, change.table, change.key)
    obj = antidote.bound_object(ROWS_PREFIX + rid.encode("utf-8"), antidote.RRMAP)
    ops = []
    if change.op == UPSERT:
        ops.append(_map_op(obj, F_DELETED, antidote.FLAG_DW, antidote.flag(False)))
    elif change.op == DELETE:
        ops.append(_map_op(obj, F_DELETED, antidote.FLAG_DW, antidote.flag(True)))
    ops.append(_register(obj, F_ID, rid.encode("utf-8")))
    if change.op == UPSERT:
        columns = _assigned(change)
        if columns:
            ops.append(antidote.update_op(obj, antidote.map_update([
                (F_ROW, antidote.RRMAP, antidote.map_update([(col.encode("utf-8"), antidote.LWWREG,
                                                              antidote.assign(encode_value(v)))]))
                for col, v in columns
            ])))
    ops.append(_register(obj, F_SCHEMA, change.schema.encode("utf-8")))
    ops.append(_register(obj, F_TABLE, change.table.encode("utf-8")))
    return ops


def transaction_updates(transaction: Transaction, publication: str = "",
                        metadata: Optional[bytes] = None) -> List[pb.ApbUpdateOp]:
    """Every UpdateOp of `transaction`: metadata first, then each change in order.

    Send them in one ``ApbUpdateObjects`` (or several, in this order) inside
    one interactive transaction.  A transaction without changes yields ``[]``:
    the original skipped those entirely (spec 1.4).
    """
    if not transaction.changes:
        return []
    ops = metadata_updates(transaction, publication, metadata)
    for change in transaction.changes:
        ops.extend(row_updates(change))
    return ops


def touched_objects(transaction: Transaction, metadata: Optional[bytes] = None) -> List[pb.ApbBoundObject]:
    """The objects `transaction_updates` writes (metadata first, rows deduplicated, in order)."""
    key = metadata if metadata is not None else metadata_key(transaction.origin, transaction.origin_id)
    seen, objects = set(), [metadata_object(key)]
    for change in transaction.changes:
        if change.op == TRUNCATE:
            continue
        key = object_key(change.schema, change.table, change.key)
        if key not in seen:
            seen.add(key)
            objects.append(antidote.bound_object(key, antidote.RRMAP))
    return objects


def truncate_as_deletes(change: RowChange, live_keys: Iterable[Sequence[str]]) -> List[RowChange]:
    """A TRUNCATE as one DELETE per key the caller knows to be live in that table."""
    if change.op != TRUNCATE:
        raise ValueError(f"not a TRUNCATE: {change.op}")
    return [RowChange(change.schema, change.table, DELETE, tuple(key), None, None) for key in live_keys]


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class WalChanges:
    """One Electric transaction read back from the replication stream.

    `offset` is the stream's resume token for it; `changes` are the converged
    rows (``ResolvedChange``: schema, table, key, row = every column ever
    written, deleted), in the server's (arbitrary) object order.
    """

    offset: WalOffset
    origin: str
    origin_id: bytes
    publication: str
    commit_timestamp: int
    changes: Tuple[ResolvedChange, ...]


def _text(where: str, value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidWalTransaction(f"{where} {value[:40]!r} is not UTF-8") from None


def metadata_from_effects(effects: Iterable[Any]) -> Dict[bytes, bytes]:
    """``{field: value}`` set by the metadata object's effects (later effects win)."""
    fields: Dict[bytes, bytes] = {}
    for effect in effects:
        updates, _ = crdt.map_rr_effect(effect)
        for (name, ctype), nested in updates:
            if ctype == crdt.REGISTER_LWW:
                fields[name] = crdt.register_lww(nested)[1]
    return fields


def row_from_state(state: Any, effects: Sequence[Any] = ()) -> Optional[ResolvedChange]:
    """A row object's streamed RRMAP state, with its own `effects` applied, as a `ResolvedChange`.

    The effects are applied because the real node sometimes streams the
    state from *before* the transaction (see `electric.vaxine.crdt`).  None
    for an object that only carries ``id``/``schema``/``table`` (a RESEND of a
    row Vaxine never saw).  `InvalidWalTransaction` for an empty state or one
    without ``id``.
    """
    entries = crdt.state_from_term(crdt.MAP_RR, state)
    for effect in effects:
        entries = crdt.apply_effect(crdt.MAP_RR, effect, entries)
    if not entries:
        raise InvalidWalTransaction("invalid materialized row: empty state")
    id_state = entries.get((F_ID, crdt.REGISTER_LWW))
    if id_state is None:
        raise InvalidWalTransaction("invalid materialized row: no id")
    rid = _text("row id", id_state[1])
    try:
        schema, table, key = parse_row_id(rid)
    except ValueError as e:
        raise InvalidWalTransaction(f"invalid materialized row: {e}") from None
    for name, expected in ((F_SCHEMA, schema), (F_TABLE, table)):
        found = entries.get((name, crdt.REGISTER_LWW))
        if found is not None and _text(name.decode(), found[1]) != expected:
            raise InvalidWalTransaction(f"invalid materialized row {rid!r}: {name.decode()} register disagrees")
    flag = entries.get((F_DELETED, crdt.FLAG_DW))
    columns = entries.get((F_ROW, crdt.MAP_RR))
    if flag is None and columns is None:
        return None
    row: Dict[str, Optional[str]] = {}
    for (name, ctype), nested in (columns or {}).items():
        if ctype != crdt.REGISTER_LWW:
            raise InvalidWalTransaction(f"row {rid!r}: column {name!r} is a {ctype.name}, not a register")
        row[_text("column name", name)] = decode_value(nested[1])
    deleted = crdt.flag_dw_enabled(flag) if flag is not None else False
    return ResolvedChange(schema, table, key, row, deleted)


def from_wal(txn: WalTransaction) -> WalChanges:
    """Convert one stream transaction (spec 4.1, with the choices of the module docstring).

    The metadata object is the one whose key starts with ``metadata:`` (the
    per-transaction object, or the spec's ``metadata:0``).  Raises
    `ForeignTransaction` when there is none and
    `InvalidWalTransaction` when it cannot be converted; the caller logs and
    drops it without treating its offset as delivered (spec 3.7).
    """
    found = [op for op in txn.ops if op.key.startswith(METADATA_PREFIX)]
    if not found:
        raise ForeignTransaction(f"transaction at {txn.offset} has no metadata object: not Electric's")
    if len(found) > 1:
        raise InvalidWalTransaction(f"transaction at {txn.offset} has {len(found)} metadata objects")
    metadata = found[0]
    try:
        fields = metadata_from_effects(metadata.effects)
        if M_COMMIT_TIMESTAMP not in fields or M_ORIGIN not in fields:
            raise InvalidWalTransaction(
                f"transaction at {txn.offset}: metadata effects lack commit_timestamp or origin")
        try:
            commit_timestamp = parse_timestamp(_text("commit_timestamp", fields[M_COMMIT_TIMESTAMP]))
        except ValueError as e:
            raise InvalidWalTransaction(f"transaction at {txn.offset}: {e}") from None
        changes = []
        for op in txn.ops:
            if op.key.startswith(ROWS_PREFIX):
                if op.type != crdt.MAP_RR or op.state is None:
                    raise InvalidWalTransaction(f"row object {op.key!r} is not a map state")
                change = row_from_state(op.state, op.effects)
                if change is not None:
                    changes.append(change)
    except crdt.CrdtError as e:
        raise InvalidWalTransaction(f"transaction at {txn.offset}: {e}") from None
    return WalChanges(
        offset=txn.offset,
        origin=_text("origin", fields[M_ORIGIN]),
        origin_id=fields.get(M_ORIGIN_ID, b""),
        publication=_text("publication", fields.get(M_PUBLICATION, b"")),
        commit_timestamp=commit_timestamp,
        changes=tuple(changes),
    )


__all__ = [
    "METADATA_KEY", "METADATA_PREFIX", "metadata_key", "ROWS_PREFIX", "UnsupportedChange", "InvalidWalTransaction", "ForeignTransaction",
    "row_id", "parse_row_id", "object_key", "row_object", "metadata_object", "encode_value", "decode_value",
    "format_timestamp", "parse_timestamp", "metadata_updates", "row_updates", "transaction_updates",
    "touched_objects", "truncate_as_deletes", "WalChanges", "metadata_from_effects", "row_from_state",
    "from_wal",
]
