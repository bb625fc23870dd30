"""
The conflict rule: how the hub turns an origin's transaction into row states.

Every replica (each Postgres, each Satellite client) applies the resolved
stream in hub order, and the hub sends each touched row's *complete* resolved
state, so all replicas end with the hub's rows no matter in which order they
applied concurrent writes locally.  The rule must therefore be a pure,
deterministic function of (current row states, transaction): replaying the
same log from empty state always yields the same rows.

The rule, per row keyed by (schema, table, primary key), with hub order
(arrival) as the single total order:

* UPSERT overwrites the columns it *sets*.  Without ``old_values`` every
  column the write carries is set.  With ``old_values`` (REPLICA IDENTITY
  FULL, or a client update) only columns whose new value differs from the old
  one count as set, so two origins that concurrently update different columns
  of one row both keep their change.  UNCHANGED columns (unchanged TOAST) are
  never set; they keep the current value.
* The write goes on top of the current row.  A missing row simply becomes
  what the write knows (its values, with UNCHANGED columns taken from
  ``old_values`` when given, otherwise left out).
* DELETE leaves a tombstone that keeps the row's last values, so a delete can
  always be sent as a full old row.
* An UPSERT of a tombstoned row resurrects it: tombstone values overlaid with
  the columns the write sets.  Together with hub order this makes an update
  that arrives after a concurrent delete win (the original's ``update_wins``).
* TRUNCATE tombstones every live row of the table (one resolved delete per
  row, in key order so the output is deterministic).
* RESEND changes nothing: the row's current state (live or tombstone) is
  sent again, so a replica that could not store some columns before a
  migration catches up.  A row the hub does not know is ignored.
* A primary-key change arrives already split into DELETE old + UPSERT new
  (`electric.hub.changes.update`, re-exported here as `split_update`).
* A change carrying a `WriteGuard` (an untrusted producer's: a Satellite
  client) is checked against the row state it resolves on: the owner of a
  live row, the owner the row ends with, NOT NULL columns.  A failed guard
  raises `WriteRefused` and the whole transaction is refused.  The check is
  a pure function of the same inputs, so a replay refuses the same writes.

Output shape: one `ResolvedChange` per input change, in change order (a
TRUNCATE expands to one per live row), each carrying the row's state right
after that change.  A row touched twice in one transaction thus appears
twice; a consumer applying the changes in order ends with the final state.
Keeping one output per input keeps the pairing with the origin's own changes
obvious and keeps a delete-old/insert-new key change in its natural order.

Echo decision: when the transaction says what its origin had applied
(`Transaction.origin_applied`), each output carries `origin_holds` for rows
the origin provably holds already (rule on `ResolvedChange.origin_holds`):
the row's final state in the transaction is exactly the origin's write, and
its previous version -- `RowState.position`, the position the row had
before this transaction -- is at or below what the origin had applied.  A
row whose previous position is unknown never qualifies.
"""

from __future__ import annotations

import dataclasses

from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

from electric.hub.changes import update as split_update  # noqa: F401  (re-export, see RowChange docs)
from electric.hub.interface import (
    DELETE,
    RESEND,
    TRUNCATE,
    UNCHANGED,
    UPSERT,
    OriginApplied,
    ResolvedChange,
    RowChange,
    Transaction,
    WriteGuard,
)

RowId = Tuple[str, str, tuple]
"""(schema, table, key): the identity of one row in the hub."""


_new = object.__new__
# Every field with a default, so an object built below is complete whatever fields the class gains.
_RESOLVED_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ResolvedChange)
                      if f.default is not dataclasses.MISSING}


def resolved_change(schema, table, key, row, deleted=False, origin_holds=None) -> ResolvedChange:
    """
    `ResolvedChange(...)` without the frozen dataclass's __init__: the same
    object, built several times faster (one per resolved row, and one per
    row every time a log chunk is read back).
    """
    rc = _new(ResolvedChange)
    d = rc.__dict__
    d.update(_RESOLVED_DEFAULTS)
    d["schema"] = schema
    d["table"] = table
    d["key"] = key
    d["row"] = row
    d["deleted"] = deleted
    if origin_holds is not None:
        d["origin_holds"] = origin_holds
    return rc


class RowState(NamedTuple):
    """
    What the hub knows about one row: its last values, whether it is a
    tombstone, and the position that wrote it (None when the state view does
    not know it: then no echo decision can rely on it).
    """

    values: Mapping[str, Optional[str]]
    deleted: bool
    position: Optional[int] = None


class Resolution(NamedTuple):
    changes: Tuple[ResolvedChange, ...]
    """Resolved changes, one per input change (a truncate: one per live row)."""
    states: Dict[RowId, RowState]
    """The new state of every touched row (final state if touched twice)."""
    live_delta: int
    """How the number of live rows changed (for status counters)."""
    conflicts: int = 0
    """Changes whose origin saw the row otherwise than the hub had it (see `resolve`): for /metrics."""


class StateView:
    """
    Read access to the current row states that `resolve` needs.

    The embedded hub implements it over SQLite inside its write transaction;
    `MemoryState` implements it over a dict for tests and replicas.
    """

    def get(self, schema: str, table: str, key: tuple) -> Optional[RowState]:
        raise TypeError(f"{type(self).__name__} must implement get()")

    def live_keys(self, schema: str, table: str) -> Iterable[tuple]:
        raise TypeError(f"{type(self).__name__} must implement live_keys()")

    def get_many(self, rids: Iterable[RowId]) -> Dict[RowId, Optional[RowState]]:
        """States of many rows at once (a store may answer in bulk: large transactions)."""
        return {rid: self.get(*rid) for rid in rids}


class InvalidTransaction(ValueError):
    """A transaction handed to the hub is malformed; nothing of it was applied."""


class WriteRefused(InvalidTransaction):
    """A change's `WriteGuard` failed against the hub's row; nothing of the transaction was applied."""


def _shared(owner) -> bool:
    return owner is None or owner == ""


def _row_name(change: RowChange) -> str:
    key = ", ".join("NULL" if v is None else str(v) for v in change.key)
    return f'"{change.schema}"."{change.table}" ({key})'


def _check_guard(change: RowChange, before: Optional["RowState"], after: Optional[Mapping]) -> None:
    """Raise WriteRefused unless the change may turn `before` into `after` (None: a delete)."""
    guard = change.guard
    column = guard.owner_column
    live = before is not None and not before.deleted
    if column is not None:
        before_owner = before.values.get(column) if live else None
        if live and not _shared(before_owner) and before_owner != guard.owner:
            raise WriteRefused(f"{_row_name(change)} belongs to another user")
        if after is not None:
            after_owner = after.get(column)
            if live:
                if (None if _shared(after_owner) else after_owner) != (None if _shared(before_owner) else before_owner):
                    raise WriteRefused(f'{_row_name(change)}: a write may not change the row\'s owner ("{column}")')
            elif not _shared(after_owner) and after_owner != guard.owner:
                raise WriteRefused(f"{_row_name(change)} would belong to another user")
    if after is not None:
        for name in sorted(guard.not_null):
            if after.get(name) is None:
                raise WriteRefused(f'{_row_name(change)}: column "{name}" is NOT NULL and the row has no value for it')


def _check_text(where: str, what: str, text: str):
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidTransaction(f"{where}: {what} is not valid Unicode text ({e.reason} at {e.start})") from None


def _check_value(where: str, col, value, allow_unchanged: bool):
    if not isinstance(col, str):
        raise InvalidTransaction(f"{where}: column name {col!r} is not a str")
    _check_text(where, f"column name {col!r}", col)
    if value is None:
        return
    if isinstance(value, str):
        _check_text(where, f"value of column {col!r}", value)
        return
    if value is UNCHANGED and allow_unchanged:
        return
    raise InvalidTransaction(f"{where}: column {col!r} has value {value!r}; expected str (Postgres text form) or None")


def check_transaction(transaction: Transaction) -> None:
    """Raise `InvalidTransaction` with a clear message unless `transaction` is well formed."""
    if not isinstance(transaction, Transaction):
        raise InvalidTransaction(f"expected a Transaction, got {type(transaction).__name__}")
    if not isinstance(transaction.origin, str) or not transaction.origin:
        raise InvalidTransaction(f"transaction origin {transaction.origin!r} must be a non-empty str")
    _check_text("transaction", "origin", transaction.origin)
    if not isinstance(transaction.origin_id, (bytes, bytearray)):
        raise InvalidTransaction(f"transaction origin_id {transaction.origin_id!r} must be bytes")
    if not isinstance(transaction.commit_timestamp, int) or isinstance(transaction.commit_timestamp, bool):
        raise InvalidTransaction(f"commit_timestamp {transaction.commit_timestamp!r} must be an int (µs since epoch)")
    if not isinstance(transaction.changes, (tuple, list)):
        raise InvalidTransaction("transaction changes must be a tuple of RowChange")
    check_origin_applied(transaction.origin_applied)
    for i, ch in enumerate(transaction.changes):
        where = f"change {i}"
        if not isinstance(ch, RowChange):
            raise InvalidTransaction(f"{where}: expected a RowChange, got {type(ch).__name__}")
        if not isinstance(ch.schema, str) or not ch.schema or not isinstance(ch.table, str) or not ch.table:
            raise InvalidTransaction(f"{where}: schema and table must be non-empty str, got {ch.schema!r}.{ch.table!r}")
        where = f"change {i} ({ch.schema!r}.{ch.table!r} {ch.op})"
        _check_text(where, "schema name", ch.schema)
        _check_text(where, "table name", ch.table)
        if ch.op not in (UPSERT, DELETE, TRUNCATE, RESEND):
            raise InvalidTransaction(f"{where}: unknown op {ch.op!r}")
        if ch.op == TRUNCATE:
            continue
        if not isinstance(ch.key, (tuple, list)) or not ch.key:
            raise InvalidTransaction(f"{where}: key must be a non-empty tuple, got {ch.key!r}")
        for v in ch.key:
            if not (v is None or isinstance(v, str)):
                raise InvalidTransaction(f"{where}: key value {v!r} must be str or None")
            if v is not None:
                _check_text(where, "key value", v)
        if ch.op == UPSERT and ch.values is None:
            raise InvalidTransaction(f"{where}: an upsert needs values")
        if ch.guard is not None and not isinstance(ch.guard, WriteGuard):
            raise InvalidTransaction(f"{where}: guard must be a WriteGuard, got {type(ch.guard).__name__}")
        for mapping, allow_unchanged in ((ch.values, True), (ch.old_values, True)):
            if mapping is None:
                continue
            if not isinstance(mapping, Mapping):
                raise InvalidTransaction(f"{where}: values must be a mapping, got {type(mapping).__name__}")
            for col, value in mapping.items():
                _check_value(where, col, value, allow_unchanged)


def check_origin_applied(applied) -> None:
    """Raise `InvalidTransaction` unless `applied` is None or a well-formed `OriginApplied`."""
    if applied is None:
        return
    if not isinstance(applied, OriginApplied):
        raise InvalidTransaction(f"origin_applied must be an OriginApplied, got {type(applied).__name__}")
    if not isinstance(applied.marker, str) or not applied.marker:
        raise InvalidTransaction(f"origin_applied marker {applied.marker!r} must be a non-empty str")
    _check_text("origin_applied", "marker", applied.marker)
    if not isinstance(applied.position, int) or isinstance(applied.position, bool) or applied.position < 0:
        raise InvalidTransaction(f"origin_applied position {applied.position!r} must be an int ≥ 0")


def _known(values: Optional[Mapping]) -> Dict[str, Optional[str]]:
    if not values:
        return {}
    if UNCHANGED not in values.values():  # the common case, checked in C
        return dict(values)
    return {c: v for c, v in values.items() if v is not UNCHANGED}


def _key_order(key: tuple):
    # Keys hold str or None; order None first, then by text.
    return tuple((v is not None, v or "") for v in key)


def resolve(state: StateView, transaction: Transaction) -> Resolution:
    """
    Resolve `transaction` against `state` (which it does not modify).

    Pure: the same state and transaction always give the same result.  The
    caller stores `Resolution.states` to move the hub forward.

    `Resolution.conflicts` counts the changes that met a concurrent write:
    an UPSERT or DELETE that carries the row as its origin saw it
    (``old_values`` of an upsert, the old row of a delete) while the hub holds
    a different value in a column both know (another origin's write came
    first: the columns merge, or the later write wins), and an upsert with
    ``old_values`` of a row the hub has deleted (the update wins).  Values
    are compared as text, so a replica that prints a value differently (a
    timestamptz under another TimeZone) counts too; writes that carry no old
    values (REPLICA IDENTITY DEFAULT updates) cannot be told apart from
    fresh ones and never count.
    """
    pending: Dict[RowId, RowState] = {}
    out: List[ResolvedChange] = []
    live_delta = 0
    conflicts = 0

    fetched: Dict[RowId, Optional[RowState]] = state.get_many(
        {(ch.schema, ch.table, tuple(ch.key)): None for ch in transaction.changes if ch.op != TRUNCATE}
    )

    def current(rid: RowId) -> Optional[RowState]:
        if rid in pending:
            return pending[rid]
        # Each row is read from `state` at most once (a store lookup can be a
        # database query; a large transaction would otherwise pay it twice).
        if rid not in fetched:
            fetched[rid] = state.get(*rid)
        return fetched[rid]

    applied = transaction.origin_applied
    # Echo decision, per row: does the origin hold the row's final state? (None: no decision asked.)
    holds: Optional[Dict[RowId, bool]] = {} if applied is not None else None
    out_rids: List[RowId] = []

    def put(rid: RowId, new: RowState, exact: bool = False):
        nonlocal live_delta
        before = current(rid)
        was_live = before is not None and not before.deleted
        live_delta += (not new.deleted) - was_live
        pending.pop(rid, None)  # keep dict order = order of last touch
        pending[rid] = new
        out.append(resolved_change(rid[0], rid[1], rid[2], new.values, new.deleted))
        if holds is not None:
            out_rids.append(rid)
            holds[rid] = exact

    for ch in transaction.changes:
        if ch.op == TRUNCATE:
            keys = set()
            for key in state.live_keys(ch.schema, ch.table):
                keys.add(tuple(key))
            for (s, t, k), st in pending.items():
                if s == ch.schema and t == ch.table:
                    (keys.discard if st.deleted else keys.add)(k)
            for key in sorted(keys, key=_key_order):
                rid = (ch.schema, ch.table, key)
                cur = current(rid)
                put(rid, RowState(dict(cur.values), True))  # never "exact": always echoed
            continue

        rid = (ch.schema, ch.table, tuple(ch.key))
        cur = current(rid)
        if ch.op == RESEND:
            # No write: the row's state goes out again, unchanged.
            if cur is not None:
                put(rid, RowState(dict(cur.values), cur.deleted))
            continue
        if ch.op == DELETE:
            if ch.guard is not None:
                _check_guard(ch, cur, None)
            if cur is not None and not cur.deleted and ch.values and _differs(ch.values, cur.values):
                conflicts += 1
            # The hub's last values win; the delete's old row only fills gaps.
            row = dict(cur.values) if cur is not None else {}
            for c, v in _known(ch.values).items():
                row.setdefault(c, v)
            # The origin deleted the row: it holds no row, as the tombstone says.
            put(rid, RowState(row, True), exact=True)
            continue

        # UPSERT
        values = ch.values
        if cur is None:
            if ch.old_values:
                row = _known(ch.old_values)
                row.update(_known(values))
            else:
                row = _known(values)
        else:
            if ch.old_values is not None and (cur.deleted or _differs(ch.old_values, cur.values)):
                conflicts += 1
            if ch.old_values is not None:
                old = ch.old_values
                sets = {
                    c: v
                    for c, v in values.items()
                    if v is not UNCHANGED and (c not in old or old[c] is UNCHANGED or old[c] != v)
                }
            else:
                sets = _known(values)
            row = dict(cur.values)
            row.update(sets)
        if ch.guard is not None:
            _check_guard(ch, cur, row)
        # Exact: the resolved row is the origin's write, column for column
        # (no UNCHANGED filled in, no column merged from the hub's row, the
        # same column set as the origin's table).
        put(rid, RowState(row, False), exact=holds is not None and row == values)

    if holds is not None:
        out = _mark_held(out, out_rids, holds, fetched, applied)
    return Resolution(tuple(out), pending, live_delta, conflicts)


def _differs(seen: Mapping, current: Mapping) -> bool:
    """True when a column known to both (and sent) has another value in `current` than the origin saw."""
    for c, v in seen.items():
        if v is not UNCHANGED and c in current and current[c] != v:
            return True
    return False


def _mark_held(out: List[ResolvedChange], rids: List[RowId], exact: Dict[RowId, bool],
               before: Mapping[RowId, Optional[RowState]], applied: OriginApplied) -> List[ResolvedChange]:
    """
    `origin_holds` on every change of each row whose final state the origin
    provably holds: final change exact, previous version (before this
    transaction) none or at most `applied.position`.
    """
    held = set()
    for rid, ok in exact.items():
        if not ok:
            continue
        prev = before.get(rid)
        if prev is None or (prev.position is not None and prev.position <= applied.position):
            held.add(rid)
    if not held:
        return out
    marker = applied.marker
    return [
        resolved_change(c.schema, c.table, c.key, c.row, c.deleted, marker) if rid in held else c
        for c, rid in zip(out, rids)
    ]


class MemoryState(StateView):
    """
    Row states in a dict: a replica or a reference hub for tests.

    `apply_resolved` is what every replica does with the resolved stream:
    upsert the full row, or delete it.
    """

    def __init__(self):
        self.rows: Dict[RowId, RowState] = {}

    def get(self, schema, table, key):
        return self.rows.get((schema, table, tuple(key)))

    def live_keys(self, schema, table):
        return [k for (s, t, k), st in self.rows.items() if s == schema and t == table and not st.deleted]

    def apply(self, states: Mapping[RowId, RowState]):
        self.rows.update(states)

    def resolve_and_apply(self, transaction: Transaction) -> Resolution:
        res = resolve(self, transaction)
        self.apply(res.states)
        return res

    def apply_resolved(self, changes: Iterable[ResolvedChange]):
        for c in changes:
            self.rows[(c.schema, c.table, tuple(c.key))] = RowState(dict(c.row), c.deleted)

    def live(self) -> Dict[RowId, Dict[str, Optional[str]]]:
        return {rid: dict(st.values) for rid, st in self.rows.items() if not st.deleted}
