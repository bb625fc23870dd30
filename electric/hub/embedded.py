"""
The embedded hub: Electric's own ordered, durable log in one SQLite file.

Why it is built this way:

* Storage, resolution and chunked reads are `electric.hub.store`; this
  module is the *sequencer* (arrival order at this process decides the
  position) and the reactor side (publication, the in-memory tail,
  subscriptions, snapshot readers, append buffers).  A hub fed by another
  ordered log can drive the same store from that log's order.
* Durability = SQLite WAL with ``synchronous=FULL``: an append's (or a
  commit's) Deferred fires only after the COMMIT that contains it returned,
  so an acknowledged transaction survives kill -9 and power loss, and a
  transaction is never half visible (each commit group is one SQLite
  transaction, however big its transactions are).
* Group commit: one writer thread owns the write connection.  Everything
  queued while the previous COMMIT was running goes into the next SQLite
  transaction, so under load many appends share one fsync, and the reactor
  thread never waits for the disk.
* Resolution (`electric.hub.resolution`) runs in the writer thread against
  the rows table inside the same SQLite transaction, so the log entry and the
  row states it produced always commit together.
* Big transactions (`begin`): chunks are staged in `electric.hub.spill`
  files as they come, never held in memory; the commit resolves them chunk
  by chunk into a log entry stored in chunks.
* Publication order: the writer hands each committed group to the reactor
  thread, which fires every append's Deferred *before* the entry becomes
  visible to subscriptions (`ISubscription.next`).  A producer (a Satellite
  session) can thus send its acknowledgement before any consumer sees a
  later transaction.
* Subscriptions are pull-based and bounded: recent small entries come from
  an in-memory tail; older ones, every chunk of a big one, catch-ups and
  snapshots are read from SQLite in a thread pool, at most one chunk
  (``chunk`` changes) per call, so no consumer makes the process buffer for
  it and a consumer that stops reading costs nothing.
* Compaction deletes log entries every durable consumer has acknowledged
  (and, beyond ``retain`` entries, when there is none).  Row states and
  tombstones stay, so a subscriber starting below the compaction horizon
  gets a catch-up transaction with the current state of every row changed
  since its position (chunked), then the live log.

Files: ``<data_dir>/hub.sqlite3`` (+ SQLite's ``-wal``/``-shm``), and
``<data_dir>/spill/`` for staged transactions (emptied at every start).
"""

from __future__ import annotations

import collections
import fcntl
import itertools
import os
import queue
import sqlite3
import threading
import time
from typing import Dict, List, Optional

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.python import threadpool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from electric import files
from electric.hub import store
from electric.hub.interface import (
    CHUNK_CHANGES,
    Committed,
    HubError,
    IAppendBuffer,
    IHub,
    ISnapshotReader,
    ISubscription,
    ResolvedTransaction,
    SubscriptionClosed,
    Transaction,
)
from electric.hub.positions import ClientLsnCodec
from electric.hub.resolution import InvalidTransaction, check_origin_applied, check_transaction
from electric.hub.spill import Spill
from electric.hub.store import CATCH_UP_ORIGIN, DB_NAME  # noqa: F401  (re-exported)
from electric.metrics import LatencyHistogram

log = Logger()

READ_THREADS = 3
"""
Threads reading the store (log chunks, catch-ups, snapshots, staging files).
Few on purpose: decoding holds the GIL, so more threads buy nothing, while
every thread that allocates gets its own malloc arena (and every reader its
own SQLite page cache) that stays resident: with the reactor's 10 threads,
100 clients stalled mid initial sync cost twice the memory.
"""


RUN_CHANGES = 4 * CHUNK_CHANGES
"""
Most changes the writer resolves and stores as one run of small appends
(`StoreWriter.append_many` holds their row states until the run's INSERTs).
"""


# --- writer-thread jobs ------------------------------------------------------


class _Append:
    __slots__ = ("transaction", "deferred", "meta", "outcome", "fresh", "applied", "queued_at")

    def __init__(self, transaction, deferred, meta=None):
        self.transaction = transaction
        self.deferred = deferred
        self.meta = meta
        self.outcome = None  # ResolvedTransaction or Exception
        self.fresh = False
        self.applied: Optional[store.Applied] = None
        self.queued_at = time.monotonic()  # for the append latency histogram

    @property
    def ident(self):
        return (self.transaction.origin, bytes(self.transaction.origin_id))

    def duplicate(self, position, ts, changes, count):
        return ResolvedTransaction(position, self.ident[0], self.ident[1], ts, changes)


class _Commit:
    __slots__ = ("buffer", "commit_timestamp", "deferred", "meta", "outcome", "fresh", "applied", "queued_at")

    def __init__(self, buffer, commit_timestamp, deferred, meta=None):
        self.buffer = buffer
        self.commit_timestamp = commit_timestamp
        self.deferred = deferred
        self.meta = meta
        self.outcome = None  # Committed or Exception
        self.fresh = False
        self.applied: Optional[store.Applied] = None
        # For the append latency histogram: from `commit` (its changes already
        # staged) to durable, as an `_Append` from `append`.
        self.queued_at = time.monotonic()

    @property
    def ident(self):
        return (self.buffer.origin, self.buffer.origin_id)

    def duplicate(self, position, ts, changes, count):
        return Committed(position, self.ident[0], self.ident[1], ts, count, duplicate=True)


class _Stop:
    pass


class _Compact:
    def __init__(self, floor, deferred):
        self.floor = floor
        self.deferred = deferred


class _Big:
    """Tail entry standing for a log entry stored in several chunks (read back from the store)."""

    __slots__ = ("position", "origin", "origin_id", "commit_timestamp", "chunks")

    def __init__(self, position, origin, origin_id, commit_timestamp, chunks):
        self.position = position
        self.origin = origin
        self.origin_id = origin_id
        self.commit_timestamp = commit_timestamp
        self.chunks = chunks


class _Partial:
    """A subscription in the middle of a multi-chunk entry: the next chunk to hand out."""

    __slots__ = ("position", "origin", "origin_id", "commit_timestamp", "chunks", "seq")

    def __init__(self, position, origin, origin_id, commit_timestamp, chunks, seq):
        self.position = position
        self.origin = origin
        self.origin_id = origin_id
        self.commit_timestamp = commit_timestamp
        self.chunks = chunks
        self.seq = seq


class _CatchUp:
    """A subscription in the middle of a catch-up: rows written in (after, upto], read from `cursor` on."""

    __slots__ = ("after", "upto", "cursor", "timestamp")

    def __init__(self, after, upto, timestamp):
        self.after = after
        self.upto = upto
        self.cursor = None
        self.timestamp = timestamp


# --- consumer-facing objects -------------------------------------------------


@implementer(ISubscription)
class _Subscription:
    def __init__(self, hub, from_position, consumer):
        self._hub = hub
        self.position = from_position
        self.consumer = consumer
        self.closed = False
        self._d: Optional[defer.Deferred] = None
        self._max = 0
        self._busy = False  # a SQLite read is in flight for this subscription
        self._partial: Optional[_Partial] = None
        self._catch_up: Optional[_CatchUp] = None

    def next(self, max_items=100):
        if self.closed:
            return defer.fail(SubscriptionClosed("subscription is closed"))
        if self._d is not None:
            return defer.fail(HubError("next() called while a previous next() is still outstanding"))
        if max_items < 1:
            return defer.fail(HubError(f"max_items must be ≥ 1, got {max_items}"))
        d = self._d = defer.Deferred()
        self._max = max_items
        if self._hub._may_serve_now():
            self._hub._serve(self)
        else:
            self._hub._reactor.callLater(0, self._hub._serve, self)
        return d

    def close(self):
        self._close(SubscriptionClosed("subscription closed"))

    @property
    def in_transaction(self) -> Optional[int]:
        """The position of the transaction handed out in part (its remaining items follow), or None."""
        if self._partial is not None:
            return self._partial.position
        if self._catch_up is not None and self._catch_up.cursor is not None:
            return self._catch_up.upto
        return None

    def _close(self, exc):
        if self.closed:
            return
        self.closed = True
        self._hub._subscriptions.discard(self)
        self._hub._waiting.discard(self)
        self._partial = None
        self._catch_up = None
        d, self._d = self._d, None
        if d is not None:
            d.errback(Failure(exc))

    def _fulfil(self, items):
        d, self._d = self._d, None
        if not items[-1].more:
            self.position = items[-1].position
        d.callback(items)

    def __repr__(self):
        return f"<hub subscription at {self.position} consumer={self.consumer!r}>"


@implementer(ISnapshotReader)
class _SnapshotReader:
    def __init__(self, hub, tables, position):
        self._hub = hub
        self._tables = tables
        self.position = position
        self._cursor = None
        self._done = False
        self._closed = False
        self._d: Optional[defer.Deferred] = None
        self.rows_read = 0

    def next(self, max_rows=CHUNK_CHANGES):
        if self._closed:
            return defer.fail(HubError("snapshot reader is closed"))
        try:
            self._hub._check_open()
        except HubError as e:
            return defer.fail(e)
        if self._d is not None:
            return defer.fail(HubError("next() called while a previous next() is still outstanding"))
        if max_rows < 1:
            return defer.fail(HubError(f"max_rows must be ≥ 1, got {max_rows}"))
        if self._done:
            return defer.succeed([])
        limit = min(max_rows, self._hub.chunk)
        d = self._d = self._hub._read(store.read_snapshot, self._tables, self.position, self._cursor, limit)

        def got(result):
            self._d = None
            rows, self._cursor = result
            if self._cursor is None:
                self._done = True
                self._hub._snapshots.discard(self)
            self.rows_read += len(rows)
            if self._closed:
                raise HubError("snapshot reader is closed")
            return rows

        def failed(f):
            self._d = None
            if f.check(HubError):
                return f
            log.failure("hub snapshot read failed", f)
            raise HubError(f"could not read the hub snapshot: {f.getErrorMessage()}")

        return d.addCallbacks(got, failed)

    def close(self):
        self._closed = True
        self._hub._snapshots.discard(self)

    def __repr__(self):
        return f"<hub snapshot at {self.position} tables={self._tables!r} rows_read={self.rows_read}>"


def buffer_usable(buf) -> Optional[HubError]:
    """
    Why an append buffer (either hub's) may not take an add() or commit()
    now, or None: broken, past its commit, one call still outstanding, or
    its hub closed.  Its `_state` is open -> committing -> done, or broken.
    """
    if buf._state == "broken":
        return buf._error
    if buf._state != "open":
        return HubError(f"append buffer of {buf.origin} is {'committing' if buf._state == 'committing' else 'finished'}")
    if buf._adding:
        return HubError("add() or commit() called while a previous add() is still outstanding")
    try:
        buf._hub._check_open()
    except HubError as e:
        return e
    return None


def commit_arguments(buf, commit_timestamp, origin_id, origin_applied):
    """
    The checks every `IAppendBuffer.commit` makes of its arguments, shared
    by the hubs' buffers: `(timestamp, None)`, with `buf.origin_id` set
    from `origin_id` when begin left it open, or `(None, HubError)`.
    """
    try:
        check_origin_applied(origin_applied)
    except InvalidTransaction as e:
        return None, HubError(f"invalid transaction: {e}")
    if origin_id is not None:
        if not isinstance(origin_id, (bytes, bytearray)):
            return None, HubError(f"invalid transaction: origin_id {origin_id!r} must be bytes")
        if buf.origin_id is not None and bytes(origin_id) != buf.origin_id:
            return None, HubError(f"commit names origin_id {bytes(origin_id).hex()}, "
                                  f"begin named {buf.origin_id.hex()}")
        buf.origin_id = bytes(origin_id)
    elif buf.origin_id is None:
        return None, HubError("commit needs the origin_id that begin did not give")
    ts = commit_timestamp if commit_timestamp is not None else buf.commit_timestamp
    if ts is None:
        ts = int(time.time() * 1_000_000)
    if not isinstance(ts, int) or isinstance(ts, bool):
        return None, HubError(f"commit_timestamp {ts!r} must be an int (µs since epoch)")
    return ts, None


@implementer(IAppendBuffer)
class _AppendBuffer:
    """
    Staging for one big transaction.  The (origin, origin_id) is looked up
    once at `begin`: a transaction the hub already holds (a producer
    resending after a crash) is not staged again, and its commit answers
    duplicate=True.
    """

    def __init__(self, hub, origin, origin_id, commit_timestamp):
        self._hub = hub
        self.origin = origin
        self.origin_id = origin_id
        self.commit_timestamp = commit_timestamp
        self.origin_applied = None  # given to commit (see IAppendBuffer.commit)
        self.staged = 0
        self._file = hub._spill.open()
        self._state = "open"  # open -> committing -> done, or broken
        self._error: Optional[HubError] = None
        self._adding = False
        self._known: Optional[int] = None
        if origin_id is None:
            self._lookup = defer.succeed(None)  # the identity comes with the commit
        else:
            self._lookup = hub.applied(origin, origin_id)
            self._lookup.addCallbacks(self._looked_up, lambda f: None)

    def _looked_up(self, position):
        self._known = position
        return None

    _usable = buffer_usable

    def add(self, changes):
        err = self._usable()
        if err is not None:
            return defer.fail(err)
        changes = tuple(changes)
        self._adding = True
        d = defer.Deferred()

        def stage(_):
            if self._known is not None:
                return None  # already in the hub: the commit will say duplicate
            return self._hub._thread(self._stage, changes)

        def staged(_):
            self._adding = False
            if self._state == "done":  # aborted meanwhile
                self._discard()
                raise HubError("append buffer was aborted")
            if self._state == "broken":
                raise self._error
            if self._known is None:
                self.staged += len(changes)
            return None

        def failed(f):
            self._adding = False
            if self._state != "broken":
                self._state = "broken"
                if f.check(InvalidTransaction):
                    self._hub._stats["rejected"] += 1
                    self._error = HubError(f"invalid transaction: {f.getErrorMessage()}")
                elif f.check(HubError):
                    self._error = f.value
                else:
                    log.failure("hub could not stage changes", f)
                    self._error = HubError(f"hub could not stage the changes: {f.getErrorMessage()}")
                self._discard()
            raise self._error

        # Wait for the identity lookup (usually done long before).
        self._lookup.addBoth(lambda r: d.callback(None) or r)
        d.addCallback(stage)
        d.addCallbacks(staged, failed)
        return d

    def _stage(self, changes):
        check_transaction(Transaction(self.origin, self.origin_id or b"", 0, changes))
        self._file.write(changes)

    def commit(self, commit_timestamp=None, origin_id=None, origin_applied=None):
        err = self._usable()
        if err is not None:
            return defer.fail(err)
        ts, err = commit_arguments(self, commit_timestamp, origin_id, origin_applied)
        if err is not None:
            return defer.fail(err)
        self.origin_applied = origin_applied
        self._state = "committing"
        d = defer.Deferred()

        def done(result):
            self._state = "done"
            self._hub._buffers.discard(self)
            return result

        d.addBoth(done)
        self._hub._submit_commit(self, ts).chainDeferred(d)
        return d

    def abort(self):
        if self._state in ("committing",):
            return defer.fail(HubError("append buffer is committing; it can no longer be aborted"))
        if self._state != "done":
            self._state = "done"
            self._hub._buffers.discard(self)
            if self._adding:
                # The staging thread still writes; discard once it is done.
                return defer.succeed(None)
            return self._discard()
        return defer.succeed(None)

    def _discard(self):
        self._hub._buffers.discard(self)
        d = self._hub._thread(self._file.discard)
        d.addErrback(lambda f: log.failure("hub could not remove staged changes", f))
        return d

    def _break(self, exc: HubError):
        if self._state == "open":
            self._state = "broken"
            self._error = exc

    def __repr__(self):
        ident = self.origin_id.hex() if self.origin_id is not None else "?"
        return f"<hub append buffer {self.origin} {ident} {self._state} staged={self.staged}>"


# --- the hub -----------------------------------------------------------------


@implementer(IHub)
class EmbeddedHub(service.Service):
    """
    The default hub (VAXINE_HOST unset).  Opens its database in
    `startService`; every IHub call before that (or after `stopService`)
    fails with HubError.

    `retain`: when no durable consumer holds compaction back, keep at least
    this many recent log entries so a briefly disconnected client resumes
    from history rather than a catch-up.  `tail_budget` bounds the in-memory
    tail by number of resolved changes held.  `compact_interval` is in
    seconds (0 = only when `compact()` is called).  `chunk` is the number of
    changes in one stored chunk and one subscription answer (tests make it
    small to exercise big-transaction paths cheaply).  `read_threads`: see
    `READ_THREADS`.
    """

    name = "hub"

    def __init__(
        self,
        data_dir: str,
        reactor=None,
        *,
        retain: int = 10000,
        tail_budget: int = 100_000,
        tail_entries: int = 10_000,
        compact_interval: float = 30.0,
        max_group: int = 2000,
        chunk: int = CHUNK_CHANGES,
        read_threads: int = READ_THREADS,
        clock=None,
    ):
        if reactor is None:
            from twisted.internet import reactor
        if chunk < 1:
            raise ValueError(f"chunk must be ≥ 1, got {chunk}")
        self._reactor = reactor
        # Periodic compaction runs on `clock` (an IReactorTime: the reactor
        # unless a test passes a task.Clock); everything else needs the reactor.
        self._clock = clock if clock is not None else reactor
        self.data_dir = data_dir
        self.path = os.path.join(data_dir, DB_NAME)
        self.retain = retain
        self.tail_budget = tail_budget
        self.tail_entries = tail_entries
        self.compact_interval = compact_interval
        self.max_group = max_group
        self.chunk = chunk

        self.hub_id: Optional[bytes] = None
        self._open = False
        self._closing = False
        self._stop_requested = False
        self._lock_file = None
        self._queue: "queue.Queue" = queue.Queue()
        self._writer: Optional[threading.Thread] = None
        self._writer_done: Optional[defer.Deferred] = None
        self._readers: List[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._reads = set()
        self._pool: Optional[threadpool.ThreadPool] = None
        self.read_threads = read_threads
        self._spill = Spill(os.path.join(data_dir, "spill"), chunk)

        self._published = 0  # last position subscriptions may see
        self._durable = 0  # last committed position (head())
        self._horizon = 0
        self._row_count = 0
        self._consumers: Dict[str, int] = {}
        self._subscriptions = set()
        self._snapshots = set()
        self._buffers = set()
        self._waiting = set()
        self._position_waiters = []
        self._served_now = 0  # next() calls answered synchronously this reactor turn
        self._reset_call = None
        self._tail = collections.deque()
        self._tail_size = 0
        self._compactor: Optional[task.LoopingCall] = None
        self._stats = {"appends": 0, "commits": 0, "duplicates": 0, "rejected": 0, "failed": 0, "conflicts": 0,
                       "commit_groups": 0, "compactions": 0}
        self._append_latency = LatencyHistogram()
        self._codec: Optional[ClientLsnCodec] = None

    # --- life cycle ----------------------------------------------------

    def startService(self):
        if self._open:
            return
        files.private_dir(self.data_dir)
        # One process per data directory: two writers would hand out the
        # same positions.
        files.private_file(os.path.join(self.data_dir, "hub.lock"))
        lock = open(os.path.join(self.data_dir, "hub.lock"), "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise HubError(f"{self.data_dir} is in use by another Electric process (hub.lock is held)") from None
        try:
            try:
                files.private_sqlite(self.path)
            except OSError as e:
                raise HubError(f"{self.path}: cannot open the hub store: {e}") from None
            conn, info = store.open_store(self.path)
        except BaseException:
            lock.close()
            raise
        try:
            self._spill.reset()
            writer = store.StoreWriter(conn, info.head, self.chunk)
        except (OSError, sqlite3.Error) as e:
            conn.close()
            lock.close()
            raise HubError(f"{self.data_dir}: cannot prepare the hub store: {e}") from None
        self.hub_id = info.hub_id
        self._codec = ClientLsnCodec(self.hub_id)
        self._published = self._durable = info.head
        self._horizon = info.horizon
        self._row_count = info.live_rows
        self._consumers = dict(info.consumers)
        self._lock_file = lock
        self._open = True
        self._closing = False
        self._writer_done = defer.Deferred()
        self._writer = threading.Thread(target=self._writer_main, args=(writer,), name="hub-writer", daemon=True)
        self._writer.start()
        self._pool = threadpool.ThreadPool(0, self.read_threads, name="hub-reader")
        self._pool.start()
        if self.compact_interval:
            self._compactor = task.LoopingCall(self._periodic_compact)
            self._compactor.clock = self._clock
            self._compactor.start(self.compact_interval, now=False)
        service.Service.startService(self)
        log.info("embedded hub {path} open: head {head}, horizon {horizon}, {rows} live rows",
                 path=self.path, head=self._published, horizon=self._horizon, rows=self._row_count)

    @defer.inlineCallbacks
    def stopService(self):
        service.Service.stopService(self)
        if not self._open or self._stop_requested:
            return
        self._stop_requested = True
        self._closing = True
        if self._compactor is not None and self._compactor.running:
            self._compactor.stop()
        for buf in list(self._buffers):
            buf._break(HubError("hub stopped"))
        self._queue.put(_Stop())
        yield self._writer_done
        self._writer.join()
        for sub in list(self._subscriptions):
            sub._close(SubscriptionClosed("hub stopped"))
        self._snapshots.clear()
        waiters, self._position_waiters = self._position_waiters, []
        for _, d in waiters:
            d.errback(Failure(HubError("hub stopped")))
        while self._reads:
            yield defer.DeferredList(list(self._reads), consumeErrors=True)
        self._pool.stop()
        self._pool = None
        with self._readers_lock:
            for c in self._readers:
                c.close()
            self._readers.clear()
        self._buffers.clear()
        try:
            self._spill.reset()
        except OSError:
            pass
        if self._reset_call is not None and self._reset_call.active():
            self._reset_call.cancel()
        self._reset_call = None
        self._served_now = 0
        self._lock_file.close()
        self._lock_file = None
        self._open = False
        self._stop_requested = False
        self._tail.clear()
        self._tail_size = 0

    @property
    def ready(self) -> bool:
        return self._open and not self._closing

    def _check_open(self):
        if not self._open or self._closing:
            raise HubError("hub is not running" if not self._open else "hub is closing")

    # --- IHub: producers -----------------------------------------------

    def append(self, transaction):
        try:
            self._check_open()
            check_transaction(transaction)
        except InvalidTransaction as e:
            self._stats["rejected"] += 1
            return defer.fail(HubError(f"invalid transaction: {e}"))
        except HubError as e:
            return defer.fail(e)
        return self._submit_append(transaction)

    # --- the sequencer seam ------------------------------------------------
    #
    # The order of submissions is the order of positions.  EmbeddedHub
    # submits in arrival order.  A hub fed by another ordered log (Vaxine)
    # keeps everything else of this class and submits what that log says,
    # in its order, with `meta` (e.g. its stream offset) written in the same
    # SQLite transaction as the entry, so a restart resumes exactly
    # (`stored_meta`).  Submissions are assumed valid (`check_transaction`).

    def _submit_append(self, transaction, meta=None):
        """Deferred[ResolvedTransaction] once `transaction` and `meta` ({key: value}) are durable."""
        d = defer.Deferred()
        self._queue.put(_Append(transaction, d, meta))
        return d

    def _submit_commit(self, buffer, commit_timestamp, meta=None):
        """Deferred[Committed] once the staged `buffer` and `meta` are durable as one position."""
        d = defer.Deferred()
        self._queue.put(_Commit(buffer, commit_timestamp, d, meta))
        return d

    def stored_meta(self, key):
        """Deferred firing with the value last written under `key` by a submission's `meta` (None if never)."""
        try:
            self._check_open()
        except HubError as e:
            return defer.fail(e)
        return self._read(store.read_meta, "x:" + key)

    def begin(self, origin, origin_id=None, commit_timestamp=None):
        self._check_open()
        problem = None
        if not isinstance(origin, str) or not origin:
            problem = f"origin {origin!r} must be a non-empty str"
        elif origin_id is not None and not isinstance(origin_id, (bytes, bytearray)):
            problem = f"origin_id {origin_id!r} must be bytes"
        elif commit_timestamp is not None and (not isinstance(commit_timestamp, int)
                                               or isinstance(commit_timestamp, bool)):
            problem = f"commit_timestamp {commit_timestamp!r} must be an int (µs since epoch)"
        else:
            try:
                check_transaction(Transaction(origin, bytes(origin_id or b""), 0, ()))
            except InvalidTransaction as e:
                problem = str(e)
        if problem is not None:
            self._stats["rejected"] += 1
            raise HubError(f"invalid transaction: {problem}")
        buf = _AppendBuffer(self, origin, None if origin_id is None else bytes(origin_id), commit_timestamp)
        self._buffers.add(buf)
        return buf

    def applied(self, origin, origin_id):
        try:
            self._check_open()
        except HubError as e:
            return defer.fail(e)
        return self._read(store.read_applied, origin, bytes(origin_id))

    # --- IHub: consumers -----------------------------------------------

    def subscribe(self, from_position, consumer=None):
        self._check_open()
        if not isinstance(from_position, int) or from_position < 0:
            raise HubError(f"subscription start {from_position!r} must be an int ≥ 0")
        if consumer is not None:
            # Subscribing from P says the consumer holds everything up to P.
            self._set_consumer(consumer, from_position)
        sub = _Subscription(self, from_position, consumer)
        self._subscriptions.add(sub)
        return sub

    def ack(self, consumer, position):
        self._check_open()
        self._set_consumer(consumer, position)

    def forget(self, consumer):
        self._check_open()
        if self._consumers.pop(consumer, None) is not None:
            self._queue.put(("forget", consumer))

    def has_consumer(self, consumer):
        self._check_open()
        return consumer in self._consumers

    def _set_consumer(self, consumer, position):
        if not isinstance(consumer, str) or not consumer:
            raise HubError(f"consumer name {consumer!r} must be a non-empty str")
        if not isinstance(position, int) or position < 0:
            raise HubError(f"position {position!r} must be an int ≥ 0")
        if self._consumers.get(consumer) != position:
            self._consumers[consumer] = position
            self._queue.put(("ack", consumer, position))

    def head(self):
        # Durable head: may run ahead of what subscriptions serve by the
        # group whose append Deferreds are firing right now.
        return self._durable

    @property
    def horizon(self):
        return self._horizon

    def snapshot(self, tables=None):
        try:
            self._check_open()
        except HubError as e:
            return defer.fail(e)
        wanted = None if tables is None else sorted({(s, t) for s, t in tables})
        # As of the durable head (a producer that just heard back sees its
        # write), handed out once consumers can see that far too.  The
        # reader leaves out rows written after it.
        position = self._durable

        def ready(_=None):
            reader = _SnapshotReader(self, wanted, position)
            self._snapshots.add(reader)
            return reader

        if position <= self._published:
            return defer.succeed(ready())
        d = defer.Deferred()
        self._position_waiters.append((position, d))
        return d.addCallback(ready)

    def status(self):
        head = self._durable
        return {
            "hub": "embedded",
            "path": self.path,
            "hub_id": self.hub_id.hex() if self.hub_id else None,
            "head": head,
            "horizon": self._horizon,
            "log_length": max(0, head - self._horizon),
            "row_count": self._row_count,
            "consumers": {
                name: {"acked": acked, "lag": max(0, head - acked)} for name, acked in sorted(self._consumers.items())
            },
            "subscriptions": len(self._subscriptions),
            "snapshot_readers": len(self._snapshots),
            "staging": {"transactions": len(self._buffers), "changes": sum(b.staged for b in self._buffers)},
            "queued": self._queue.qsize(),
            "tail_entries": len(self._tail),
            **self._stats,
        }

    def metrics(self) -> dict:
        """
        Plain numbers for /metrics (`electric.metrics`): head, log length,
        live rows, counters since start: `appends` (every transaction made
        durable, small appends and chunked commits alike), `chunked_commits`
        (those of them committed through `begin`/`add`/`commit`),
        `duplicates`, `conflicts` resolved (summed over every chunk of a
        chunked commit), `commit_groups`; the append latency histogram (one
        observation per transaction made durable: from `append`, or from a
        chunked transaction's `commit` (its changes already staged), to its
        Deferred firing) and errors by kind: ``hub_rejected`` (malformed
        transactions refused by `append`, `begin` or `add`),
        ``hub_append_failed`` (transactions that could not be resolved or
        stored, a failed write guard among them).
        """
        head = self._durable
        stats = self._stats
        return {
            "head": head,
            "log_length": max(0, head - self._horizon),
            "rows": self._row_count,
            "appends": stats["appends"] + stats["commits"],
            "chunked_commits": stats["commits"],
            "duplicates": stats["duplicates"],
            "conflicts": stats["conflicts"],
            "commit_groups": stats["commit_groups"],
            "append_latency": self._append_latency.snapshot(),
            "errors": {"hub_rejected": stats["rejected"], "hub_append_failed": stats["failed"]},
        }

    # --- positions for the outside world --------------------------------

    def client_lsn(self, position: int) -> bytes:
        self._check_open()
        return self._codec.client_lsn(position)

    def position_from_client_lsn(self, data: bytes) -> int:
        self._check_open()
        return self._codec.position_from_client_lsn(data)

    # --- compaction ----------------------------------------------------

    def compact(self):
        """Deferred firing with the new horizon once eligible log entries are deleted."""
        try:
            self._check_open()
        except HubError as e:
            return defer.fail(e)
        floor = self._durable - self.retain
        if self._consumers:
            floor = min(floor, min(self._consumers.values()))
        # Never delete an entry a subscription is in the middle of.
        for sub in self._subscriptions:
            if sub._partial is not None:
                floor = min(floor, sub._partial.position - 1)
        if floor <= self._horizon:
            return defer.succeed(self._horizon)
        d = defer.Deferred()
        self._queue.put(_Compact(floor, d))
        return d

    def _periodic_compact(self):
        d = self.compact()
        d.addErrback(lambda f: log.failure("hub compaction failed", f))

    # --- writer thread: the sequencer ------------------------------------

    def _writer_main(self, writer: store.StoreWriter):
        stop = False
        try:
            while not stop:
                batch = [self._queue.get()]
                while len(batch) < self.max_group:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                entries = [b for b in batch if isinstance(b, (_Append, _Commit))]
                others = [b for b in batch if isinstance(b, tuple)]
                compacts = [b for b in batch if isinstance(b, _Compact)]
                stop = any(isinstance(b, _Stop) for b in batch)
                if entries or others:
                    self._commit_group(writer, entries, others)
                for c in compacts:
                    self._compact_now(writer, c)
                # Let go of the group before waiting for the next one: the
                # reactor owns it now (its transactions could be big).
                batch = entries = others = compacts = None
        except BaseException:
            log.failure("hub writer thread died")
            self._reactor.callFromThread(self._writer_died)
        finally:
            writer.conn.close()
            self._reactor.callFromThread(self._writer_done.callback, None)

    def _commit_group(self, writer, entries, others):
        live_delta = 0
        conflicts = 0
        seen = {}
        try:
            writer.begin()
            # Consecutive small appends with fresh identities are resolved
            # and stored as one run (`StoreWriter.append_many`); anything
            # else (a big commit, a duplicate, a TRUNCATE) ends the run and
            # is taken on its own, so positions follow the queue order.
            known = writer.known([job.ident for job in entries if isinstance(job, _Append)])
            run: List[_Append] = []
            run_idents = set()
            run_changes = 0
            for job in entries:
                ident = job.ident
                if (isinstance(job, _Append) and ident not in known and ident not in seen
                        and ident not in run_idents and writer.batchable(job.transaction)):
                    n = len(job.transaction.changes)
                    if run and run_changes + n > RUN_CHANGES:
                        live_delta, conflicts = _plus((live_delta, conflicts), self._apply_run(writer, run, seen))
                        run, run_idents, run_changes = [], set(), 0
                    run.append(job)
                    run_idents.add(ident)
                    run_changes += n
                    continue
                if run:
                    live_delta, conflicts = _plus((live_delta, conflicts), self._apply_run(writer, run, seen))
                    run, run_idents, run_changes = [], set(), 0
                live_delta, conflicts = _plus((live_delta, conflicts), self._apply_one(writer, job, seen))
            if run:
                live_delta, conflicts = _plus((live_delta, conflicts), self._apply_run(writer, run, seen))
            for job in entries:
                # A submission's meta commits with it (also when it was a duplicate).
                if job.meta and not isinstance(job.outcome, Exception):
                    for k, v in job.meta.items():
                        writer.set_meta("x:" + k, v)
            for item in others:
                if item[0] == "ack":
                    writer.ack(item[1], item[2])
                elif item[0] == "forget":
                    writer.forget(item[1])
            writer.commit()
        except Exception as e:
            log.failure("hub commit failed")
            writer.rollback()
            for job in entries:
                job.outcome = HubError(f"hub could not store the transaction: {e}")
                job.fresh = False
            live_delta = 0
            conflicts = 0
        for job in entries:
            if isinstance(job, _Commit):
                try:
                    job.buffer._file.discard()
                except OSError:
                    pass
        if entries:
            self._reactor.callFromThread(self._publish, entries, live_delta, conflicts)

    def _apply_run(self, writer, run, seen):
        """
        Store a run of fresh small appends together; if the writes fail,
        replay them one by one.  (live rows delta, conflicts) of what was stored.
        """
        try:
            results = writer.append_many([job.transaction for job in run])
        except Exception as e:
            # Which one failed, and why, is logged as each is tried alone.
            log.warn("hub could not store a run of {n} transactions together ({error}); storing them one by one",
                     n=len(run), error=str(e))
            total = (0, 0)
            for job in run:
                total = _plus(total, self._apply_one(writer, job, seen))
            return total
        live_delta = conflicts = 0
        for job, result in zip(run, results):
            ident = job.ident
            if isinstance(result, InvalidTransaction):
                job.outcome = HubError(f"invalid transaction: {result}")
                continue
            if isinstance(result, Exception):
                log.failure("hub rejected a transaction from {origin}", Failure(result), origin=ident[0])
                job.outcome = HubError(f"transaction from {ident[0]} could not be applied: {result}")
                continue
            ts = job.transaction.commit_timestamp
            job.outcome = ResolvedTransaction(result.position, ident[0], ident[1], ts, result.changes)
            live_delta += result.live_delta
            conflicts += result.conflicts
            job.applied = result
            job.fresh = True
            seen[ident] = _Seen(result.position, ts, result.changes, result.change_count)
        return live_delta, conflicts

    def _apply_one(self, writer, job, seen):
        """One submission on its own (a savepoint of its own inside the group): (live rows delta, conflicts)."""
        ident = job.ident
        if ident in seen:
            first = seen[ident]
            job.outcome = job.duplicate(first.position, first.ts, first.changes or (), first.count)
            return 0, 0
        earlier = writer.earlier(ident[0], ident[1], with_changes=isinstance(job, _Append))
        if earlier is not None:
            job.outcome = job.duplicate(earlier.position, earlier.commit_timestamp, earlier.changes,
                                        earlier.change_count)
            return 0, 0
        try:
            if isinstance(job, _Append):
                txn = job.transaction
                ts = txn.commit_timestamp
                applied = writer.append(txn)
                job.outcome = ResolvedTransaction(applied.position, ident[0], ident[1], ts, applied.changes)
            else:
                ts = job.commit_timestamp
                # A buffer from another sequencer (`_submit_commit`: the Vaxine
                # hub's staging) may carry no echo input: then every row is echoed.
                applied = writer.apply_chunks(ident[0], ident[1], ts, job.buffer._file.chunks(),
                                              getattr(job.buffer, "origin_applied", None))
                job.outcome = Committed(applied.position, ident[0], ident[1], ts, applied.change_count)
        except InvalidTransaction as e:
            # A WriteGuard failed: the producer's fault, not the hub's.
            job.outcome = HubError(f"invalid transaction: {e}")
            return 0, 0
        except Exception as e:
            log.failure("hub rejected a transaction from {origin}", origin=ident[0])
            job.outcome = HubError(f"transaction from {ident[0]} could not be applied: {e}")
            return 0, 0
        job.applied = applied
        job.fresh = True
        seen[ident] = _Seen(applied.position, ts, applied.changes if applied.chunks == 1 else (),
                            applied.change_count)
        return applied.live_delta, applied.conflicts

    def _compact_now(self, writer, job):
        try:
            horizon = writer.compact(job.floor)
        except Exception as e:
            self._reactor.callFromThread(job.deferred.errback, Failure(HubError(f"compaction failed: {e}")))
            return
        self._reactor.callFromThread(self._compacted, horizon, job.deferred)

    def _writer_died(self):
        """Fail everything still queued: nothing more can become durable."""
        self._closing = True
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, (_Append, _Commit, _Compact)):
                item.deferred.errback(Failure(HubError("hub writer stopped after an internal error")))

    def _compacted(self, horizon, d):
        self._horizon = max(self._horizon, horizon)
        self._stats["compactions"] += 1
        d.callback(self._horizon)

    # --- reactor side: publication -------------------------------------

    def _publish(self, entries, live_delta, conflicts=0):
        self._row_count += live_delta
        self._stats["commit_groups"] += 1
        self._stats["conflicts"] += conflicts
        now = time.monotonic()
        for job in entries:
            if job.fresh:
                self._durable = max(self._durable, job.applied.position)
        for job in entries:
            if isinstance(job.outcome, Exception):
                self._stats["failed"] += 1
                job.deferred.errback(Failure(job.outcome))
                continue
            if job.fresh:
                self._stats["appends" if isinstance(job, _Append) else "commits"] += 1
                self._append_latency.observe(now - job.queued_at)
            else:
                self._stats["duplicates"] += 1
            job.deferred.callback(job.outcome)
            if job.fresh:
                # Visible to consumers only after the producer heard back.
                a = job.applied
                o = job.outcome
                if a.chunks == 1:
                    self._tail_push(o if isinstance(o, ResolvedTransaction) else
                                    ResolvedTransaction(a.position, o.origin, o.origin_id, o.commit_timestamp, a.changes))
                else:
                    self._tail_push(_Big(a.position, o.origin, o.origin_id, o.commit_timestamp, a.chunks))
                self._published = a.position
        self._wake()

    def _tail_push(self, entry):
        self._tail.append(entry)
        self._tail_size += (len(entry.changes) if isinstance(entry, ResolvedTransaction) else 0) + 1
        while self._tail and (self._tail_size > self.tail_budget or len(self._tail) > self.tail_entries):
            old = self._tail.popleft()
            self._tail_size -= (len(old.changes) if isinstance(old, ResolvedTransaction) else 0) + 1

    def _wake(self):
        if self._position_waiters:
            ready = [w for w in self._position_waiters if w[0] <= self._published]
            self._position_waiters = [w for w in self._position_waiters if w[0] > self._published]
            for _, d in ready:
                d.callback(None)
        for sub in list(self._waiting):
            self._waiting.discard(sub)
            if sub._d is not None and not sub.closed:
                self._serve(sub)

    # --- reactor side: serving subscriptions ---------------------------

    def _may_serve_now(self):
        """
        Answer a next() synchronously only a few times per reactor turn: a
        consumer that loops (next -> callback -> next) over a long backlog
        would otherwise recurse without bound.
        """
        if self._served_now == 0:
            self._reset_call = self._reactor.callLater(0, self._reset_served_now)
        self._served_now += 1
        return self._served_now <= 32

    def _reset_served_now(self):
        self._served_now = 0
        self._reset_call = None

    def _serve(self, sub):
        if sub.closed or sub._d is None or sub._busy:
            return
        if sub._catch_up is not None:
            return self._read_for(sub, self._catch_up_read, store.read_catch_up, sub._catch_up.after,
                                  sub._catch_up.upto, sub._catch_up.cursor, self.chunk)
        if sub._partial is not None:
            return self._read_for(sub, self._chunk_read, store.read_chunk, sub._partial.position, sub._partial.seq)
        pos = sub.position
        if pos >= self._published:
            self._waiting.add(sub)
            return None
        if pos < self._horizon:
            return self._start_catch_up(sub)
        if self._tail and pos + 1 >= self._tail[0].position:
            start = pos + 1 - self._tail[0].position
            items = []
            total = 0
            for entry in itertools.islice(self._tail, start, None):
                if len(items) >= sub._max:
                    break
                if isinstance(entry, _Big):
                    if items:
                        break
                    sub._partial = _Partial(entry.position, entry.origin, entry.origin_id, entry.commit_timestamp,
                                            entry.chunks, 0)
                    return self._serve(sub)
                n = len(entry.changes)
                if items and total + n > self.chunk:
                    break
                items.append(entry)
                total += n
            sub._fulfil(items)
            return None
        return self._read_for(sub, self._log_read, store.read_log, pos, self._published, sub._max, self.chunk)

    def _start_catch_up(self, sub):
        sub._catch_up = _CatchUp(sub.position, self._published, store.catch_up_timestamp())
        self._serve(sub)

    def _read_for(self, sub, handler, fn, *args):
        sub._busy = True
        d = self._read(fn, *args)
        d.addBoth(self._read_done, sub, handler)

    def _read_done(self, result, sub, handler):
        sub._busy = False
        if sub.closed:
            return None
        if isinstance(result, Failure):
            log.failure("hub log read failed", result)
            self._fail_subscription(sub, HubError(f"could not read the hub log: {result.getErrorMessage()}"))
            return None
        if sub._d is not None:
            handler(sub, result)
        return None

    def _fail_subscription(self, sub, exc):
        d, sub._d = sub._d, None
        sub._close(exc)
        if d is not None:
            d.errback(Failure(exc))

    def _log_read(self, sub, result: store.LogRead):
        if result.behind_horizon:
            return self._start_catch_up(sub)
        if not result.items:
            # Nothing readable (cannot normally happen); try again on the next wake.
            self._waiting.add(sub)
            return None
        if result.partial is not None:
            first = result.items[0]
            sub._partial = _Partial(first.position, first.origin, first.origin_id, first.commit_timestamp,
                                    result.partial[1], 1)
        sub._fulfil(result.items)
        return None

    def _chunk_read(self, sub, changes):
        p = sub._partial
        if changes is None:
            return self._fail_subscription(sub, HubError(
                f"the transaction at position {p.position} was compacted away while being read;"
                f" resubscribe from {sub.position}"))
        more = p.seq < p.chunks - 1
        item = ResolvedTransaction(p.position, p.origin, p.origin_id, p.commit_timestamp, changes, more=more)
        if more:
            p.seq += 1
        else:
            sub._partial = None
        sub._fulfil([item])
        return None

    def _catch_up_read(self, sub, result):
        changes, cursor = result
        c = sub._catch_up
        item = ResolvedTransaction(c.upto, CATCH_UP_ORIGIN, b"", c.timestamp, changes, catch_up=True,
                                   more=cursor is not None)
        if cursor is None:
            sub._catch_up = None
        else:
            c.cursor = cursor
        sub._fulfil([item])
        return None

    # --- threads ----------------------------------------------------------

    def _thread(self, fn, *args):
        """Run blocking `fn` in the hub's thread pool; stopService waits for it."""
        d = threads.deferToThreadPool(self._reactor, self._pool, fn, *args)
        return self._track(d)

    def _read(self, fn, *args):
        """Run `fn(conn, *args)` in one read transaction on a pooled reader connection."""
        d = threads.deferToThreadPool(self._reactor, self._pool, self._with_reader, fn, *args)
        return self._track(d)

    def _track(self, d):
        self._reads.add(d)

        def done(result):
            self._reads.discard(d)
            return result

        d.addBoth(done)
        return d

    def _with_reader(self, fn, *args):
        with self._readers_lock:
            conn = self._readers.pop() if self._readers else None
        if conn is None:
            conn = store.connect(self.path, writer=False)
        try:
            conn.execute("BEGIN")
            try:
                return fn(conn, *args)
            finally:
                conn.execute("COMMIT")
        finally:
            with self._readers_lock:
                self._readers.append(conn)


def _plus(a, b):
    return a[0] + b[0], a[1] + b[1]


class _Seen:
    __slots__ = ("position", "ts", "changes", "count")

    def __init__(self, position, ts, changes, count):
        self.position = position
        self.ts = ts
        self.changes = changes
        self.count = count
