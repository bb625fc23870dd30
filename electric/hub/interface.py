"""
The hub: the one place where every write meets.  This module is the whole
contract between the hub and everything else.

Every producer (a Postgres connector reading pgoutput, a Satellite client
session, a migration) turns what it saw into `RowChange`s and hands them to
the hub: a small transaction whole (`IHub.append`), a transaction of any size
in chunks (`IHub.begin` -> `IAppendBuffer.add`... -> `commit`).  The hub
gives the transaction a place in one total order (its *position*), resolves
each row change against the current state of that row (see
`electric.hub.resolution` for the rule) and makes the result durable.  Every
consumer (a Postgres subscriber on port 5433, a Satellite client) reads the
*resolved* transactions in position order through an `ISubscription`, in
items of bounded size, so that every replica applies the same row states in
the same order and ends identical; a joining replica first reads the current
rows through an `ISnapshotReader`, chunk by chunk.

Memory is bounded by design on both sides: nothing of the contract needs a
whole transaction, snapshot or catch-up in memory (`CHUNK_CHANGES`).

Values are always the Postgres text representation (``str``) or ``None`` for
NULL; nothing is type-converted on the way through.  `UNCHANGED` stands for a
column the origin did not send (pgoutput's unchanged-TOAST marker): the hub
fills it from the row's current state.

Positions are positive ``int``s, strictly increasing in append order, and
survive restarts.  Position 0 means "before everything".  Outside the
process positions travel as LSNs or opaque byte strings
(`electric.hub.positions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import FrozenSet, Mapping, Optional, Tuple, Union

from twisted.application.service import IService
from zope.interface import Attribute, Interface


class _Unchanged:
    """Marker for a column value the origin did not send (unchanged TOAST)."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self):
        return "UNCHANGED"

    def __reduce__(self):
        return (_Unchanged, ())


UNCHANGED = _Unchanged()

Value = Optional[str]
"""A column value: Postgres text form, or None for SQL NULL."""

Key = Tuple[Value, ...]
"""A row's primary-key values, in the table's primary-key column order."""


CHUNK_CHANGES = 2000
"""
The unit of bounded memory: the most resolved changes in one subscription
answer (`ISubscription.next`), one stored log chunk, one snapshot chunk.  A
producer whose transaction has at most this many changes uses
`IHub.append`; a bigger one uses `IHub.begin` and adds chunks of about this
size.
"""


UPSERT = "upsert"
DELETE = "delete"
TRUNCATE = "truncate"
RESEND = "resend"


@dataclass(frozen=True)
class WriteGuard:
    """
    What an untrusted producer's write must satisfy against the row as the
    hub holds it.  The hub checks it while resolving the write, atomically
    with it, so no concurrent write slips in between a check and the write:
    a transaction with a change whose guard fails is refused whole (`append`
    fails with HubError "invalid transaction: ...") and nothing of it is
    stored.

    `owner_column` / `owner`: the row's owner is the value of `owner_column`
    (NULL or '' = a row shared with everybody).  A live row the write
    touches must be `owner`'s or shared, and the write must leave its owner
    as it was; a row the write creates (or brings back from a tombstone)
    must end up `owner`'s or shared.
    `not_null`: columns the row must hold a non-NULL value in after an
    upsert (the NOT NULL columns of the table in some database).
    """

    owner_column: Optional[str] = None
    owner: Optional[str] = None
    not_null: FrozenSet[str] = frozenset()


@dataclass(frozen=True)
class RowChange:
    """
    One row write, as its origin saw it.

    op == UPSERT: `values` holds the columns the write carries (a full new row
      from an INSERT, or an UPDATE's new tuple; may contain UNCHANGED).
      `old_values` is the row before the write when the origin knows it
      (REPLICA IDENTITY FULL, or a client update); then only the columns whose
      value differs from `old_values` count as set by this write, so that
      concurrent updates of different columns both survive.
    op == DELETE: `values` is the old row as far as the origin knows it (at
      least the key columns), or None.
    op == TRUNCATE: `key` is () and `values` None; the hub deletes every live
      row of the table.
    op == RESEND: the hub changes nothing but sends the row's current state
      (live or tombstone) to every replica again; a row it does not know is
      ignored.  Electric uses it after a migration, so a database that gained
      columns gets the values other replicas wrote into them meanwhile.

    A change of primary key must be given as a DELETE of the old key followed
    by an UPSERT of the new one (`electric.hub.resolution.split_update` does it).

    `guard`, when set, is checked against the hub's row state (`WriteGuard`).
    """

    schema: str
    table: str
    op: str
    key: Key = ()
    values: Optional[Mapping[str, Union[Value, _Unchanged]]] = None
    old_values: Optional[Mapping[str, Value]] = None
    guard: Optional[WriteGuard] = None


@dataclass(frozen=True)
class OriginApplied:
    """
    What a producer knows of the hub's own stream as its origin had applied
    it when it committed a transaction: every hub position up to and
    including `position` had been applied (or was never to be applied) by
    the origin *before* the transaction committed, and no position at or
    below it can ever be applied there again afterwards.  `marker` names the
    origin's subscription and LSN mapping this was read from (the origin's
    consumer compares it with its own: a different marker means the fact no
    longer holds, e.g. the subscription was re-created).

    A Postgres connector learns it from its own WAL stream: each transaction
    Electric's subscription applied carries an Origin message whose
    origin_lsn is the port-5433 LSN of the hub position applied.
    """

    marker: str
    position: int


@dataclass(frozen=True)
class Transaction:
    """
    A transaction as one origin committed it.

    `origin` names the producer: a connector name (``postgres_1``) or
    ``satellite:<client id>``.  `origin_id` identifies the transaction within
    its origin (a Postgres commit end LSN as 8 big-endian bytes, a client's
    LSN bytes) so that a re-sent transaction is appended only once.
    `commit_timestamp` is microseconds since the Unix epoch.

    `origin_applied` (optional, see `OriginApplied`) lets the hub tell which
    resolved rows the origin provably holds already
    (`ResolvedChange.origin_holds`); None = unknown, every row goes back.
    """

    origin: str
    origin_id: bytes
    commit_timestamp: int
    changes: Tuple[RowChange, ...]
    origin_applied: Optional[OriginApplied] = None


@dataclass(frozen=True)
class ResolvedChange:
    """
    The state of one row after the hub resolved a write to it.

    `row` is the complete resolved row (every column the hub knows for it).
    For a deleted row `deleted` is True and `row` holds its last known values
    (so that a delete can always name the key, and old-tuple consumers get a
    full row).

    `origin_holds` is the echo decision (None on every hub that does not make
    it: then every replica gets every change, which is always correct).  The
    hub sets it to the transaction's `OriginApplied.marker` when sending this
    change back to the transaction's own origin is provably redundant:

    (a) the row's final state in this transaction is exactly what the origin
        wrote -- an upsert carrying every column, none UNCHANGED, nothing
        merged from the hub's row (the resolved row has exactly the origin's
        columns and values), or a delete; a TRUNCATE's rows never qualify;
    (b) the row's previous hub version (its position before this
        transaction; none for a new row) is at or below
        `OriginApplied.position`, so the origin had it before it wrote, and
        no older version can reach the origin after its write.

    The decision is per row and covers every change of that row in the
    transaction (an intermediate state is never sent when the final one is
    not).  Only the origin's own consumer, and only while its marker equals
    `origin_holds`, may leave the change out; every other replica applies it.
    """

    schema: str
    table: str
    key: Key
    row: Mapping[str, Value]
    deleted: bool = False
    origin_holds: Optional[str] = None


@dataclass(frozen=True)
class ResolvedTransaction:
    """
    A transaction as every replica must apply it, at its hub position -- or
    one *item* of it.

    A subscription hands out transactions as items of at most
    `CHUNK_CHANGES` changes: a bigger transaction arrives as several
    consecutive items with the same position, origin, origin_id and
    commit_timestamp, each carrying the next slice of the changes in order,
    with `more` True on every item but the last.  A consumer opens a
    transaction at an item whose position differs from the one it has open
    and closes it at the item with `more` False.

    `catch_up` is True for a transaction the hub synthesised for a consumer
    whose start position was older than the compacted log: it carries the
    current state (live rows and tombstones) of every row changed since that
    position, instead of the history.  It is chunked like any other.
    """

    position: int
    origin: str
    origin_id: bytes
    commit_timestamp: int
    changes: Tuple[ResolvedChange, ...]
    catch_up: bool = False
    more: bool = False


@dataclass(frozen=True)
class Committed:
    """
    The outcome of `IAppendBuffer.commit`: the transaction's position.

    `duplicate` is True when (origin, origin_id) had been committed before:
    the position is the earlier one, nothing changed, and `change_count` is
    the earlier entry's count of resolved changes (0 once it is compacted).
    """

    position: int
    origin: str
    origin_id: bytes
    commit_timestamp: int
    change_count: int
    duplicate: bool = False


class ISubscription(Interface):
    """
    A consumer's cursor over resolved transactions, strictly after a position.

    Pull-based so a slow consumer never makes the hub buffer for it: the
    consumer asks for the next items when it is ready to send more.
    """

    position = Attribute(
        "Position of the last *complete* transaction handed out.  A consumer that stops in the middle of a"
        " transaction resumes from here and gets that whole transaction again."
    )

    def next(max_items):
        """
        Deferred firing with a non-empty list of at most `max_items` items
        (`ResolvedTransaction`s, see there for how big transactions are split)
        following the last one handed out, as soon as at least one exists.
        The answer holds at most `CHUNK_CHANGES` changes in all (always at
        least one item), whatever `max_items` says.  Only one call may be
        outstanding.  Fails with `SubscriptionClosed` when the subscription or
        the hub is closed, and with `HubError` when it cannot continue (the
        consumer resubscribes from `position`).
        """

    def close():
        """Stop; an outstanding `next` fails with `SubscriptionClosed`."""


class ISnapshotReader(Interface):
    """
    The hub's live rows of some tables, read chunk by chunk.

    Consistent with `position`: a consumer that applies every row it reads
    and then subscribes from `position` ends with exactly the hub's rows,
    misses nothing and gets nothing twice.  (Rows written after `position`
    may be left out of the snapshot: the log after `position` carries their
    complete state.)  A reader costs no memory between calls, however long
    its consumer waits.
    """

    position = Attribute("The hub position this snapshot is consistent with (already published).")

    def next(max_rows):
        """
        Deferred firing with the next list of at most `max_rows` (and at most
        `CHUNK_CHANGES`) live rows as `ResolvedChange`s, or [] once every row
        has been read.  Only one call may be outstanding.  Fails with
        `HubError` once the reader or the hub is closed.
        """

    def close():
        """Release the reader (also fine after it finished)."""


class IAppendBuffer(Interface):
    """
    One producer transaction of any size, handed over in chunks
    (`IHub.begin`).  Nothing of it is visible to anyone before `commit`, and
    a crash before the commit is durable leaves no trace of it (every
    producer can redo: Postgres resends from its slot, an import restarts).
    """

    origin = Attribute("The origin given to `begin`.")
    origin_id = Attribute("The origin_id given to `begin` (or, once committed, to `commit`); None until known.")

    def add(changes):
        """
        Stage a sequence of `RowChange`s (in order, after those added before).
        Deferred firing with None once they are staged outside the process's
        memory; the producer waits for it before the next `add` (that is the
        flow control: another call while one is outstanding fails).  A
        malformed change fails this add with `HubError`; the buffer is then
        unusable (every later `add`/`commit` fails) and the producer aborts.
        """

    def commit(commit_timestamp=None, origin_id=None, origin_applied=None):
        """
        Resolve every staged change and make the result durable as ONE log
        position, atomically.  Deferred firing with `Committed` (the
        producer hears back before any consumer sees the transaction).
        `commit_timestamp` (µs since the epoch) overrides the one given to
        `begin`.  `origin_id` is required when `begin` had none (a Postgres
        transaction's identity, its commit end LSN, is known only at its
        Commit) and must match otherwise.  `origin_applied` is the
        transaction's `OriginApplied` (known only at its Commit; None =
        unknown).  If (origin, origin_id) was
        committed or appended before, fires with that position and
        duplicate=True and changes nothing.
        """

    def abort():
        """Discard the staged changes.  Deferred firing with None."""


class IHub(IService):
    """
    The ordered, durable transaction log with conflict resolution.

    This is the whole contract between a hub and the rest of Electric
    (connectors, the port-5433 publisher, Satellite, migrations, the status
    API): a second implementation (Vaxine) is a drop-in replacement when it
    provides exactly these.  A hub is a service: it opens its store in
    `startService`, and calls before that (or after `stopService`) fail with
    `HubError`.
    """

    hub_id = Attribute(
        "8 random bytes naming this hub's data (made when its store is created); None until started.")

    ready = Attribute(
        "True while the hub takes and publishes writes: the embedded hub while it runs, the Vaxine hub while"
        " it runs and both Vaxine links are up.  Producers count as ready only while their hub is.")

    def append(transaction):
        """
        Deferred firing with the `ResolvedTransaction` once `transaction` is
        durable (for transactions of at most `CHUNK_CHANGES` changes; bigger
        ones work, but are held whole, so producers use `begin`).  Appending a
        transaction whose (origin, origin_id) was appended before fires with
        the earlier result and changes nothing (its changes are those of the
        earlier entry when it is still in the log and small, else ()).
        Fails with `electric.hub.interface.HubError` (e.g. closed, malformed).
        """

    def begin(origin, origin_id=None, commit_timestamp=None):
        """
        An `IAppendBuffer` for one transaction of any size from `origin`
        (identified within it by `origin_id`, as for `append`; given here
        when known, so a transaction the hub already holds is not staged
        again, else to `IAppendBuffer.commit`).  Raises `HubError` when the
        hub is not running or the identity is malformed.
        """

    def applied(origin, origin_id):
        """Deferred firing with the position of (origin, origin_id) if it is durable in the hub, else None."""

    def subscribe(from_position, consumer=None):
        """
        An `ISubscription` yielding resolved transactions with position >
        `from_position`.  If that history has been compacted away the first
        items are a catch-up transaction (see `ResolvedTransaction.catch_up`),
        read from the store chunk by chunk.  `consumer`, when given, names a
        durable consumer whose acknowledged position holds back compaction
        (see `ack`).
        """

    def ack(consumer, position):
        """Record that durable consumer `consumer` has applied up to `position`."""

    def forget(consumer):
        """Drop a durable consumer so it no longer holds back compaction."""

    def has_consumer(consumer):
        """
        True if durable consumer `consumer` is known to this hub's data (it
        subscribed or acked and was not forgotten).  The publisher uses it
        to tell a returning subscriber from one whose LSNs came from other
        hub data (the data directory was replaced).
        """

    def snapshot(tables=None):
        """
        Deferred firing with an `ISnapshotReader` over the live rows of
        `tables` (an iterable of (schema, table); None = all).
        """

    def head():
        """The position of the last durable transaction (0 if none)."""

    def status():
        """A JSON-able dict for display only (log length, row count, consumers and their lag...)."""

    def client_lsn(position):
        """Opaque bytes naming `position` for a Satellite client (see `electric.hub.positions`)."""

    def position_from_client_lsn(data):
        """The position in bytes made by `client_lsn`; ValueError for another hub's or garbled bytes."""


class HubError(Exception):
    """The hub could not accept or serve a request."""


class SubscriptionClosed(HubError):
    """The subscription (or the whole hub) was closed."""
