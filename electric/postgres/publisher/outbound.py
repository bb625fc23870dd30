"""
Resolved hub transactions → pgoutput, for one Postgres subscriber connection.

A stock PG 15 apply worker must end up with the hub's row state whether or
not it already has a row (departure 1 of the specs), so every live row goes
out as an INSERT of the complete resolved row — Electric's BEFORE INSERT
replica trigger on the subscriber turns a conflicting insert into an update —
and every deleted row as a DELETE by primary key (deleting a missing row is
harmless).  UPDATE is never sent: a stock subscriber silently skips an
UPDATE of a row it does not have.

Each database may define a table differently from the registry (a migration
not applied there yet), so Relation messages and tuples follow that
database's own definition (`SchemaRegistry.database_table`), values looked up
by column name; tables the database lacks are skipped.

LSNs come from `electric.hub.positions`: the transaction at hub position p
commits at ``end_lsn(p, base)``, so a subscriber's origin progress maps back
to a hub position exactly and no transaction is ever sent twice.

Changes an operator set aside for this database (the quarantine,
`electric.postgres.publisher.apply_failures`) are left out: the rest of
their transaction still goes, so one change the database cannot apply does
not hold back everything else.

A big transaction comes from the hub as several items at one position
(`ResolvedTransaction.more`): the encoder keeps it open across items, so
the subscriber sees one transaction, Begin to Commit, whatever its size.

Echo: a change of a transaction that came from this very database is left
out when the hub decided the database holds it already
(`ResolvedChange.origin_holds`) under the marker `echo_marker()` gives now
(see `electric.postgres.echo`).  A transaction left out whole produces no
frames, like one that concerns no table of this database: `wal_end` still
moves past it, so the next keepalive reports it and the subscriber confirms
it (its flush position, and so the hub's ack for it, moves on).  The
change messages shared between streams (`PayloadCache`) are kept per
change, so leaving a row out for its origin changes nothing for the other
subscribers: they still get, and share, every row's bytes.

Pure: no sockets, no reactor.  Frames are produced lazily so a big item is
written under flow control without building its frames in memory.
"""

from __future__ import annotations

import struct
import weakref
from typing import AbstractSet, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from electric.hub import positions
from electric.hub.interface import UNCHANGED, ResolvedTransaction
from electric.postgres.protocol import pgoutput
from electric.postgres.protocol.lsn import pg_now, unix_to_pg_us
from electric.postgres.protocol.pgoutput import encode_tuple
from electric.postgres.protocol.replication_messages import PrimaryKeepalive
from electric.schema import SchemaRegistry, Table


_XLOG_HEAD = struct.Struct("!ciBQQq")  # CopyData tag, length, 'w', dataStart, walEnd, sendTime
_REL = struct.Struct("!I")


def _xlog(start: int, now: int, payload: bytes) -> bytes:
    """One complete CopyData(XLogData) frame with dataStart = walEnd = `start`.

    Same bytes as ``XLogData(start, start, now, payload).frame()``, built
    in one step because a 200k-row transaction makes 200k of them."""
    return _XLOG_HEAD.pack(b"d", len(payload) + 29, 0x77, start, start, now) + payload


class _Shape:
    """What this connection told the subscriber about one table."""

    __slots__ = ("table", "relation_id", "columns", "key_index", "message", "insert_head", "delete_head", "signature")

    def __init__(self, table: Table, relation_id: int):
        self.table = table
        self.relation_id = relation_id
        self.columns = table.column_names
        keys = set(table.primary_key)
        self.key_index = [i for i, name in enumerate(self.columns) if name in keys]
        self.insert_head = b"I" + _REL.pack(relation_id) + b"N"
        self.delete_head = b"D" + _REL.pack(relation_id) + b"K"
        # Everything a change message depends on besides the change: equal
        # signatures, equal bytes (whichever subscriber they go to).
        self.signature = (relation_id, self.columns, tuple(self.key_index))
        self.message = pgoutput.Relation(
            relation_id=relation_id,
            namespace=table.schema,
            name=table.name,
            replica_identity="d",
            columns=tuple(
                pgoutput.RelationColumn(1 if c.name in keys else 0, c.name, c.type_oid, c.type_modifier)
                for c in table.columns
            ),
        )


class PayloadCache:
    """
    Change messages (Insert/Delete) of the items being sent, shared by every
    port-5433 stream: the subscribers whose databases define a table alike
    get the same bytes, encoded once; only the XLogData headers (LSNs, send
    time) are each stream's own.  Keyed by the item object, which the hub's
    in-memory tail hands to every subscriber; an entry goes when its item is
    freed, so the cache holds no more than what the items are kept for.
    """

    def __init__(self):
        self._items: Dict[int, Tuple[weakref.ref, Dict]] = {}
        self.hits = 0
        self.misses = 0

    def for_item(self, rt: ResolvedTransaction) -> Dict:
        """signature -> list of the item's change messages (None until encoded)."""
        key = id(rt)
        entry = self._items.get(key)
        if entry is not None and entry[0]() is rt:
            return entry[1]
        payloads: Dict = {}
        self._items[key] = (weakref.ref(rt, lambda _ref, key=key, items=self._items: items.pop(key, None)), payloads)
        return payloads

    def __len__(self):
        return len(self._items)


def _payload(shape: "_Shape", change) -> bytes:
    row = change.row
    if change.deleted:
        key = [None] * len(shape.columns)
        for k in shape.key_index:
            key[k] = _value(row, shape.columns[k])
        return shape.delete_head + encode_tuple(key)
    get = row.get
    return shape.insert_head + encode_tuple([None if v is UNCHANGED else v for v in (get(c) for c in shape.columns)])


def _value(row, name):
    v = row.get(name)
    # The hub fills UNCHANGED from the current row; one left over (a row the hub
    # never saw complete) has no value to offer, and 'u' is meaningless in an INSERT.
    return None if v is UNCHANGED else v


class _OpenTransaction:
    """The transaction whose items are being encoded: its LSNs and how far it got."""

    __slots__ = ("position", "begin_lsn", "commit_lsn", "end_lsn", "timestamp", "started", "changes")

    def __init__(self, rt: ResolvedTransaction, base: int):
        lsns = positions.transaction_lsns(rt.position, 0, base)
        self.position = rt.position
        self.begin_lsn, self.commit_lsn, self.end_lsn = lsns.begin, lsns.commit, lsns.end
        self.timestamp = unix_to_pg_us(rt.commit_timestamp)
        self.started = False  # Begin sent
        self.changes = 0  # change messages sent


class OutboundEncoder:
    """
    Per-connection encoder.  `wal_end` is the end LSN of the last transaction
    fully produced (what keepalives may report: a subscriber treats an idle
    keepalive's walEnd as flushed, so it must never run ahead of sent data).
    """

    def __init__(self, registry: SchemaRegistry, origin: str, base: int, start_position: int = 0,
                 clock=pg_now, set_aside: Optional[Mapping[int, AbstractSet[tuple]]] = None,
                 payloads: Optional[PayloadCache] = None,
                 echo_marker: Optional[Callable[[], Optional[str]]] = None):
        self.registry = registry
        self.payloads = payloads
        # Changes an operator set aside for this database (the quarantine):
        # position -> {(schema, table, key)}, read live, never sent.
        self.set_aside = set_aside if set_aside is not None else {}
        self.first_sent: Optional[int] = None  # position of the first transaction begun on this connection
        self.set_aside_changes = 0
        self.origin = origin
        self.echo_marker = echo_marker  # None: every change goes out (table sync streams, other hubs)
        self.changes_not_echoed = 0
        self.base = base
        self.position = start_position
        self.wal_end = positions.end_lsn(start_position, base)
        self._clock = clock
        self._shapes: Dict[Tuple[str, str], _Shape] = {}
        self._open: Optional[_OpenTransaction] = None
        self.skipped_changes = 0
        self.transactions_sent = 0
        self.changes_sent = 0

    def keepalive(self, reply_requested: bool = False) -> bytes:
        return PrimaryKeepalive(self.wal_end, self._clock(), reply_requested).frame()

    def _shape(self, schema: str, name: str) -> Tuple[Optional[_Shape], bool]:
        """(shape, is_new_or_changed); None when the database lacks the table."""
        table = self.registry.database_table(self.origin, schema, name)
        if table is None or not table.primary_key:
            return None, False
        known = self._shapes.get((schema, name))
        if known is not None and (known.table is table or known.table == table):
            return known, False
        reg = self.registry.find(schema, name)
        relation_id = reg.relation_id if reg is not None else table.relation_id
        if not relation_id:
            return None, False
        shape = _Shape(table, relation_id)
        self._shapes[(schema, name)] = shape
        return shape, True

    def frames(self, rt: ResolvedTransaction) -> Iterator[bytes]:
        """
        Complete CopyData frames for `rt`, a transaction or one item of a
        big one (`ResolvedTransaction.more`): Begin before its first change
        for this database, Relation as needed, one Insert/Delete per resolved
        row, Commit after the item with ``more`` False.  A transaction none
        of whose rows concern this database yields nothing (but still
        advances `wal_end`).  Transactions at or below the current position
        are dropped: a subscriber must never receive a transaction twice.
        """
        if rt.position <= self.position:
            return
        o = self._open
        if o is None:
            o = self._open = _OpenTransaction(rt, self.base)
        elif o.position != rt.position:
            raise ValueError(f"item of the transaction at position {rt.position} while {o.position} is open")
        now = self._clock()
        begin_lsn, commit_lsn = o.begin_lsn, o.commit_lsn
        i = o.changes
        aside = self.set_aside.get(rt.position) if self.set_aside else None
        marker = self.echo_marker() if self.echo_marker is not None and rt.origin == self.origin else None
        shapes: Dict[Tuple[str, str], Optional[_Shape]] = {}  # looked up once per table per item
        shared = self.payloads.for_item(rt) if self.payloads is not None else None
        changes = rt.changes
        for index, change in enumerate(changes):
            if aside and (change.schema, change.table, tuple(change.key)) in aside:
                # Before _shape: a Relation is sent with the table's first change actually sent.
                self.set_aside_changes += 1
                continue
            if marker is not None and change.origin_holds == marker:
                # Before the shared payloads: they are per change (index), so the
                # rows this stream leaves out are neither encoded nor read here,
                # and every other subscriber still gets them.
                self.changes_not_echoed += 1
                continue
            table = (change.schema, change.table)
            if table in shapes:
                shape, fresh = shapes[table], False
            else:
                shape, fresh = self._shape(*table)
                shapes[table] = shape
            if shape is None:
                self.skipped_changes += 1
                continue
            if not o.started:
                o.started = True
                if self.first_sent is None:
                    self.first_sent = rt.position
                xid = rt.position & 0xFFFFFFFF or 1
                yield _xlog(begin_lsn, now, pgoutput.Begin(commit_lsn, o.timestamp, xid).encode())
            if fresh:
                yield _xlog(0, now, shape.message.encode())
            if shared is None:
                payload = _payload(shape, change)
            else:
                encoded = shared.get(shape.signature)
                if encoded is None:
                    encoded = shared[shape.signature] = [None] * len(changes)
                payload = encoded[index]
                if payload is None:
                    payload = encoded[index] = _payload(shape, change)
                    self.payloads.misses += 1
                else:
                    self.payloads.hits += 1
            lsn = begin_lsn + i if begin_lsn + i < commit_lsn else commit_lsn
            i += 1
            o.changes = i
            yield _xlog(lsn, now, payload)
        if rt.more:
            return
        self._open = None
        if o.started:
            yield _xlog(o.end_lsn, now, pgoutput.Commit(commit_lsn, o.end_lsn, o.timestamp).encode())
            self.transactions_sent += 1
            self.changes_sent += i
        self.position = rt.position
        self.wal_end = o.end_lsn

    @property
    def in_transaction(self) -> bool:
        """True between the first and the last item of a transaction."""
        return self._open is not None

    def encode(self, rt: ResolvedTransaction) -> List[bytes]:
        """All frames of `rt` at once (tests, small transactions)."""
        return list(self.frames(rt))
