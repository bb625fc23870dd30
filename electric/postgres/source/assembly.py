"""
From a Postgres's pgoutput stream to hub `Transaction`s (pure, no I/O).

`TransactionAssembler` eats decoded pgoutput messages in stream order and
says, at each Commit, what the hub must get: a `Transaction`, or nothing
(and why), always with the commit's end LSN so the caller can acknowledge
it in order (`AckTracker`).  A transaction bigger than one chunk
(`CHUNK_CHANGES`) is handed over as it grows (`Chunk`), so no transaction is
ever held whole: Postgres's walsender sends a committed transaction as one
message sequence (pgoutput protocol v1), however big.  A transaction with a
TRUNCATE takes that path too, whatever its size: the hub expands a TRUNCATE
into one change per live row, which only the chunked path does in bounded
memory.

What is dropped, and why:

* a transaction whose Origin is Electric's own subscription in that
  database (``pg_<suboid>``, or ``pg_<suboid>_<relid>`` during table sync):
  Electric sent those rows itself, forwarding them again would loop
  (departure 4).  Any other origin is someone else's data and replicates;
* a transaction touching one of Electric's bookkeeping tables
  (`electric.schema.BOOKKEEPING_TABLES`: ``electric.migrations``,
  ``electric.meta``), as the original did.  Any other table of schema
  ``electric`` is a user table and replicates;
* changes to tables Electric skipped (no primary key, unsupported type),
  counted and logged at most once a minute per table;
* changes to a table imported mid-stream from transactions committed
  before its import's snapshot (``Begin.final_lsn`` below the table's
  *horizon*, `set_horizons`): the import holds their effect already
  (`electric.postgres.source.importer`);
* empty transactions (nothing for the hub; still acknowledged in order).

What the database had applied of Electric's stream: each transaction
Electric's own subscription applied (Origin exactly ``pg_<suboid>``; not a
table-sync worker's) carries the port-5433 LSN of the hub position it
applied.  The stream is in commit order, so at each Commit the highest such
LSN seen so far is what the database had applied before it committed this
transaction (`Assembled.applied_lsn`; the echo decision, see
`electric.hub.interface.OriginApplied`).  It is given only when every change
of the transaction is to a table `trusted(schema, name, commit_lsn)` says
the subscription had in its steady state (READY) before the commit: a table
still being synchronised gets rows copied from the hub later, which the
applied position does not cover.

A Relation whose columns differ from what the registry holds for this
database (DDL mid-stream, or a table created after setup) stops the
assembler with `NeedTable`: the caller looks the table up in the catalog,
calls `table_resolved` and feeds on.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from twisted.logger import Logger

from electric.hub import changes as hubchanges
from electric.hub.interface import CHUNK_CHANGES, UPSERT, RowChange, Transaction
from electric.hub.changes import MissingKey
from electric.postgres.protocol import pgoutput as po
from electric.postgres.protocol.lsn import format_lsn, pg_to_unix_us
from electric.schema import Table, is_bookkeeping

log = Logger(namespace="electric.postgres.source.assembly")

# Why a transaction gave the hub nothing.
OWN_ORIGIN = "own-origin"
ELECTRIC_TABLES = "electric-tables"
EMPTY = "empty"


class InboundError(Exception):
    """The stream contradicts itself; the connection must be dropped and resumed."""


def origin_id_of(end_lsn: int) -> bytes:
    """A Postgres transaction's identity within its origin: the commit end LSN."""
    return int(end_lsn).to_bytes(8, "big")


def own_origin_pattern(subscription_oid: Optional[int]):
    if subscription_oid is None:
        return None
    return re.compile(rf"\Apg_{int(subscription_oid)}(_\d+)?\Z")


@dataclass(frozen=True)
class Assembled:
    """
    A committed transaction: append `transaction` (unless None), then ack `end_lsn`.

    `chunked`: the transaction was bigger than a chunk, and its first
    changes went out as `Chunk`s; `transaction` then holds only the changes
    after the last chunk (possibly none) and the identity and timestamp to
    commit with, or is None when the transaction turned out to be dropped
    (discard what the chunks staged).
    """

    end_lsn: int
    transaction: Optional[Transaction]
    dropped: Optional[str] = None  # OWN_ORIGIN / ELECTRIC_TABLES / EMPTY when transaction is None
    chunked: bool = False
    applied_lsn: Optional[int] = None
    """The highest port-5433 LSN the database had applied before this commit (None: unknown, or a table not trusted)."""

    @property
    def rows(self) -> int:
        return len(self.transaction.changes) if self.transaction is not None else 0


@dataclass(frozen=True)
class Chunk:
    """
    The open transaction grew past one chunk: hand these changes (the next
    in order) to the hub now; the rest follow as more `Chunk`s and the
    commit as a chunked `Assembled`.
    """

    changes: Tuple[RowChange, ...]


@dataclass(frozen=True)
class NeedTable:
    """Stop: resolve (schema, name) from the catalog, then `table_resolved`."""

    schema: str
    name: str
    relation: po.Relation


@dataclass
class _Rel:
    relation: po.Relation
    table: Optional[Table] = None  # None: skipped (see reason) or bookkeeping
    skipped: Optional[str] = None
    bookkeeping: bool = False
    names: Tuple[str, ...] = ()  # the relation's column names, once (every row needs them)

    def __post_init__(self):
        self.names = self.relation.column_names


@dataclass
class _Open:
    begin: po.Begin
    origin: Optional[str] = None
    changes: List[RowChange] = field(default_factory=list)
    drop: Optional[str] = None
    chunked: bool = False  # changes went out as Chunks
    trusted: bool = True  # every change so far is to a table trusted at this commit


def relation_matches(relation: po.Relation, table: Table) -> bool:
    """Same columns, in order, with the same types and identity: rows map onto `table`."""
    if relation.replica_identity != table.replica_identity:
        return False
    if len(relation.columns) != len(table.columns):
        return False
    for rc, tc in zip(relation.columns, table.columns):
        if rc.name != tc.name or rc.type_oid != tc.type_oid or rc.type_modifier != tc.type_modifier:
            return False
    return True


class TransactionAssembler:
    """
    `lookup(schema, name)` → (Table or None, skip reason or None): what this
    database's connector currently knows about a table.
    """

    def __init__(self, origin: str, lookup: Callable[[str, str], Tuple[Optional[Table], Optional[str]]],
                 subscription_oid: Optional[int] = None, clock: Callable[[], float] = time.monotonic,
                 skipped_log_interval: float = 60.0, chunk: int = CHUNK_CHANGES,
                 trusted: Optional[Callable[[str, str, int], bool]] = None):
        self.origin = origin
        self.chunk = chunk
        self._lookup = lookup
        self._own = own_origin_pattern(subscription_oid)
        self._apply_origin = None if subscription_oid is None else f"pg_{int(subscription_oid)}"
        self._trusted = trusted
        self.applied_lsn: Optional[int] = None  # highest origin_lsn of our subscription's applies seen
        self._relations: Dict[int, _Rel] = {}
        self._open: Optional[_Open] = None
        self._clock = clock
        self._skip_interval = skipped_log_interval
        self._skip_counts: Dict[Tuple[str, str], int] = {}
        self._skip_logged: Dict[Tuple[str, str], float] = {}
        self.dropped_changes: Dict[Tuple[str, str], int] = {}
        self.pending: Optional[NeedTable] = None
        self._horizons: Dict[Tuple[str, str], int] = {}
        self.before_horizon = 0

    def set_horizons(self, horizons: Dict[Tuple[str, str], int]) -> None:
        """
        (schema, table) -> consistent point of that table's mid-stream
        import: its changes in transactions committed before it are dropped.
        """
        self._horizons = dict(horizons)

    def set_subscription_oid(self, oid: Optional[int]) -> None:
        apply_origin = None if oid is None else f"pg_{int(oid)}"
        if apply_origin != self._apply_origin:
            self.applied_lsn = None  # another subscription: what the old one applied says nothing
        self._own = own_origin_pattern(oid)
        self._apply_origin = apply_origin

    def is_own_origin(self, name: str) -> bool:
        return self._own is not None and self._own.match(name) is not None

    @property
    def in_transaction(self) -> bool:
        return self._open is not None

    @property
    def open_commit_timestamp(self) -> Optional[int]:
        """Commit time (µs since the Unix epoch) of the transaction being read, from its Begin; None between."""
        return pg_to_unix_us(self._open.begin.commit_timestamp) if self._open is not None else None

    # -- feeding --

    def feed(self, msg):
        """
        Returns None, a `Chunk` (a transaction bigger than a chunk is handed
        over as it grows), an `Assembled` (at Commit) or a `NeedTable` (then
        stop feeding).
        """
        if self.pending is not None:
            raise InboundError("fed while waiting for a table lookup")
        kind = type(msg)
        if kind is po.Insert:  # the common cases first, without the cascade below
            return self._insert(msg)
        if kind is po.Commit:
            return self._commit(msg)
        if isinstance(msg, po.Begin):
            if self._open is not None:
                raise InboundError(f"Begin of xid {msg.xid} inside an open transaction")
            self._open = _Open(msg)
            return None
        if isinstance(msg, po.Relation):
            return self._relation(msg)
        if isinstance(msg, (po.Type,)):
            return None
        if isinstance(msg, po.LogicalMessage):
            return None
        if isinstance(msg, po.Commit):
            return self._commit(msg)
        tx = self._open
        if tx is None:
            raise InboundError(f"{type(msg).__name__} outside a transaction")
        if isinstance(msg, po.Origin):
            tx.origin = msg.name
            if self.is_own_origin(msg.name):
                tx.drop = OWN_ORIGIN
                if msg.name == self._apply_origin and msg.origin_lsn and (
                        self.applied_lsn is None or msg.origin_lsn > self.applied_lsn):
                    self.applied_lsn = msg.origin_lsn
            return None
        if tx.drop is not None:
            return None
        if isinstance(msg, po.Insert):
            rel = self._rel(msg.relation_id)
            if self._usable(rel, tx):
                record = self._record(rel, msg.new)
                self._add(tx, rel, lambda: hubchanges.insert(rel.table, record))
            return self._chunk(tx)
        if isinstance(msg, po.Update):
            rel = self._rel(msg.relation_id)
            if self._usable(rel, tx):
                new = self._record(rel, msg.new)
                if msg.old is not None:
                    old = self._record(rel, msg.old)
                elif msg.key is not None:
                    old = self._key_record(rel, msg.key)
                else:
                    old = None
                self._add(tx, rel, lambda: hubchanges.update(rel.table, old, new))
            return self._chunk(tx)
        if isinstance(msg, po.Delete):
            rel = self._rel(msg.relation_id)
            if self._usable(rel, tx):
                if msg.old is not None:
                    old = self._record(rel, msg.old)
                else:
                    old = self._key_record(rel, msg.key)
                self._add(tx, rel, lambda: hubchanges.delete(rel.table, old))
            return self._chunk(tx)
        if isinstance(msg, po.Truncate):
            for relid in msg.relation_ids:
                rel = self._rel(relid)
                if self._usable(rel, tx):
                    self._add(tx, rel, lambda: hubchanges.truncate(rel.table))
                if tx.drop is not None:
                    break
            # The hub expands a TRUNCATE into one change per live row: only the
            # chunked path does that without holding them all.
            return self._chunk(tx, force=True)
        raise InboundError(f"unexpected pgoutput message {type(msg).__name__} (proto_version 1 stream)")

    def _insert(self, msg: po.Insert):
        tx = self._open
        if tx is None:
            raise InboundError("Insert outside a transaction")
        if tx.drop is not None:
            return None
        rel = self._relations.get(msg.relation_id)
        if rel is None:
            rel = self._rel(msg.relation_id)
        if (rel.table is None or rel.bookkeeping or self._horizons) and not self._usable(rel, tx):
            return None  # skipped, bookkeeping, or before its table's import horizon
        values = msg.new
        names = rel.names
        if len(values) != len(names):
            self._record(rel, values)  # raises, naming the table
        record = dict(zip(names, values))
        table = rel.table
        # Through `_add` like every other change (whatever it checks or counts per change applies here too).
        self._add(tx, rel, lambda: (
            hubchanges.row_change(table.schema, table.name, UPSERT, hubchanges.key_of(table, record), record),))
        if len(tx.changes) > self.chunk:
            return self._chunk(tx)
        return None

    def table_resolved(self, table: Optional[Table], skipped: Optional[str]) -> None:
        """Answer to `NeedTable`: the table as the catalog has it, or why it is skipped."""
        need, self.pending = self.pending, None
        if need is None:
            raise InboundError("table_resolved without a pending lookup")
        rel = need.relation
        if table is not None and not relation_matches(rel, table):
            # The catalog moved on (more DDL since this WAL was written): the
            # stream's own column list is what these rows carry.  Keep the
            # catalog's key and types for columns we know.
            table = _table_from_relation(rel, table)
            if table is None and skipped is None:
                skipped = "the stream's columns no longer fit the table's primary key or supported types"
        if table is None and skipped is None:
            skipped = "table is not in the publication"
        self._relations[rel.relation_id] = _Rel(rel, table, None if table is not None else skipped)

    # -- internals --

    def _relation(self, rel: po.Relation):
        if is_bookkeeping(rel.namespace, rel.name):
            self._relations[rel.relation_id] = _Rel(rel, None, None, bookkeeping=True)
            return None
        table, skipped = self._lookup(rel.namespace, rel.name)
        if table is not None and relation_matches(rel, table):
            self._relations[rel.relation_id] = _Rel(rel, table)
            return None
        previous = self._relations.get(rel.relation_id)
        if (
            table is None and skipped is not None and previous is not None
            and previous.relation == rel and previous.skipped is not None
        ):
            self._relations[rel.relation_id] = _Rel(rel, None, skipped)
            return None
        self.pending = NeedTable(rel.namespace, rel.name, rel)
        return self.pending

    def _rel(self, relid: int) -> _Rel:
        rel = self._relations.get(relid)
        if rel is None:
            raise InboundError(f"change for relation id {relid} before its Relation message")
        return rel

    def _usable(self, rel: _Rel, tx: _Open) -> bool:
        if rel.bookkeeping:
            tx.drop = ELECTRIC_TABLES
            return False
        if rel.table is None:
            self._count_skipped(rel)
            return False
        if self._horizons:
            horizon = self._horizons.get((rel.relation.namespace, rel.relation.name))
            if horizon is not None and tx.begin.final_lsn < horizon:
                self.before_horizon += 1
                return False
        return True

    def _chunk(self, tx: _Open, force: bool = False) -> Optional[Chunk]:
        """Past one chunk of changes (or `force`): hand the first chunk over, keep the rest open."""
        if tx.drop is not None or not tx.changes or (len(tx.changes) <= self.chunk and not force):
            return None
        out, tx.changes = tx.changes[:self.chunk], tx.changes[self.chunk:]
        tx.chunked = True
        return Chunk(tuple(out))

    def _add(self, tx: _Open, rel: _Rel, build) -> None:
        if tx.trusted and (self._trusted is None
                           or not self._trusted(rel.table.schema, rel.table.name, tx.begin.final_lsn)):
            tx.trusted = False
        try:
            tx.changes.extend(build())
        except MissingKey as e:
            # Nothing can key this row in the hub; say so loudly, keep going.
            log.error("dropped a change to {schema}.{table}: {error}", connector=self.origin,
                      schema=rel.relation.namespace, table=rel.relation.name, error=str(e))
            self._count_dropped(rel)

    @staticmethod
    def _record(rel: _Rel, values) -> Dict[str, object]:
        names = rel.names
        if len(values) != len(names):
            raise InboundError(
                f"tuple of {len(values)} columns for {rel.relation.namespace}.{rel.relation.name}, "
                f"whose Relation has {len(names)}")
        return dict(zip(names, values))

    @staticmethod
    def _key_record(rel: _Rel, values) -> Dict[str, object]:
        # A key tuple sets only the identity columns; the rest are empty
        # placeholders, not NULLs, so leave them out.
        cols = rel.relation.columns
        if len(values) != len(cols):
            raise InboundError(
                f"key tuple of {len(values)} columns for {rel.relation.namespace}.{rel.relation.name}, "
                f"whose Relation has {len(cols)}")
        return {c.name: v for c, v in zip(cols, values) if c.is_key}

    def _count_dropped(self, rel: _Rel) -> None:
        key = (rel.relation.namespace, rel.relation.name)
        self.dropped_changes[key] = self.dropped_changes.get(key, 0) + 1

    def _count_skipped(self, rel: _Rel) -> None:
        self._count_dropped(rel)
        key = (rel.relation.namespace, rel.relation.name)
        self._skip_counts[key] = self._skip_counts.get(key, 0) + 1
        now = self._clock()
        last = self._skip_logged.get(key)
        if last is None or now - last >= self._skip_interval:
            log.warn(
                "dropped {count} change(s) to skipped table {schema}.{table} ({reason})",
                connector=self.origin, count=self._skip_counts[key], schema=key[0], table=key[1], reason=rel.skipped,
            )
            self._skip_logged[key] = now
            self._skip_counts[key] = 0

    def _commit(self, commit: po.Commit) -> Assembled:
        tx, self._open = self._open, None
        if tx is None:
            raise InboundError(f"Commit at {format_lsn(commit.end_lsn)} without a Begin")
        if commit.commit_lsn != tx.begin.final_lsn:
            raise InboundError(
                f"Commit LSN {format_lsn(commit.commit_lsn)} does not match its Begin's "
                f"final LSN {format_lsn(tx.begin.final_lsn)}")
        if tx.drop is not None:
            return Assembled(commit.end_lsn, None, tx.drop, tx.chunked)
        if not tx.changes and not tx.chunked:
            return Assembled(commit.end_lsn, None, EMPTY)
        return Assembled(
            commit.end_lsn,
            Transaction(
                origin=self.origin,
                origin_id=origin_id_of(commit.end_lsn),
                commit_timestamp=pg_to_unix_us(commit.commit_timestamp),
                changes=tuple(tx.changes),
            ),
            chunked=tx.chunked,
            applied_lsn=(self.applied_lsn or 0) if tx.trusted else None,
        )

    def reset(self) -> None:
        """
        Forget stream state (a new connection starts with fresh Relations).
        What the database had applied is forgotten too (conservatively: the
        new connection resends from the flushed position, so Origin messages
        before it are not seen again; the mark rebuilds from later ones).
        """
        self._relations.clear()
        self._open = None
        self.pending = None
        self.applied_lsn = None


def _table_from_relation(rel: po.Relation, catalog: Table) -> Optional[Table]:
    from electric.postgres.protocol import types
    from electric.schema import Column

    cols = []
    for rc in rel.columns:
        known = catalog.column(rc.name)
        if known is not None and known.type_oid == rc.type_oid:
            cols.append(known)
            continue
        t = types.find_by_oid(rc.type_oid)
        if t is None:
            return None
        cols.append(Column(rc.name, t.name, t.oid, rc.type_modifier,
                           None if rel.replica_identity == "f" else rc.is_key))
    names = {c.name for c in cols}
    if not all(k in names for k in catalog.primary_key):
        return None
    return Table(catalog.schema, catalog.name, tuple(cols), catalog.primary_key, rel.replica_identity)


class AckTracker:
    """
    Which LSN may be reported as flushed.

    Transactions are registered in commit order (`add`) and completed in any
    order (`done`); the flush position is the end LSN of the last transaction
    of the longest completed prefix, so it never covers one the hub has not
    made durable.  Transactions with nothing to append are registered
    already done: covered by the next ack, or at once when nothing is
    pending before them.  Each may carry its commit time, so the age of the
    oldest pending one is known (`oldest_pending_commit`: the connector's lag).
    """

    def __init__(self, flushed: int = 0):
        self.flushed = flushed
        self._entries: List[List] = []  # [end_lsn, done, commit timestamp (µs) or None]
        self._head = 0

    def add(self, end_lsn: int, done: bool = False, commit_timestamp: Optional[int] = None) -> List:
        entry = [end_lsn, done, commit_timestamp]
        self._entries.append(entry)
        if done:
            self._advance()
        return entry

    def done(self, entry: List) -> bool:
        """Mark `entry` complete; True when the flush position moved."""
        entry[1] = True
        return self._advance()

    @property
    def pending(self) -> int:
        return len(self._entries) - self._head

    @property
    def oldest_pending_commit(self) -> Optional[int]:
        """Commit timestamp of the oldest transaction not yet done (None: none pending, or its time unknown)."""
        return self._entries[self._head][2] if self._head < len(self._entries) else None

    def idle_advance(self, lsn: int) -> bool:
        """With nothing pending, move past WAL that held none of our transactions."""
        if self.pending == 0 and lsn > self.flushed:
            self.flushed = lsn
            return True
        return False

    def _advance(self) -> bool:
        moved = False
        entries = self._entries
        while self._head < len(entries) and entries[self._head][1]:
            lsn = entries[self._head][0]
            if lsn > self.flushed:
                self.flushed = lsn
                moved = True
            self._head += 1
        if self._head > 1024 and self._head * 2 > len(entries):
            del entries[:self._head]
            self._head = 0
        return moved
