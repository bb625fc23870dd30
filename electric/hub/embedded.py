"""
The embedded hub: Electric's own ordered, durable log in one SQLite file.

Why it is built this way:

* Durability = SQLite WAL with ``synchronous=FULL``: an append's Deferred
  fires only after the COMMIT that contains it returned, so an acknowledged
  transaction survives kill -9 and power loss, and a transaction is never
  half visible (each commit group is one SQLite transaction).
* Group commit: one writer thread owns the write connection.  Everything
  queued while the previous COMMIT was running goes into the next SQLite
  transaction, so under load many appends share one fsync, and the reactor
  thread never waits for the disk.
* Resolution (`electric.hub.resolution`) runs in the writer thread against
  the rows table inside the same SQLite transaction, so the log entry and the
  row states it produced always commit together.
* Publication order: the writer hands each committed group to the reactor
  thread, which fires every append's Deferred *before* the entry becomes
  visible to subscriptions (`head()` and `ISubscription.next`).  A producer
  (a Satellite session) can thus send its acknowledgement before any
  consumer sees a later transaction.
* Subscriptions are pull-based: recent entries come from a bounded in-memory
  tail; older ones are read from SQLite in a thread pool, at most
  ``max_items`` per call, so no consumer makes the process buffer for it.
* Compaction deletes log entries every durable consumer has acknowledged
  (and, beyond ``retain`` entries, when there is none).  Row states and
  tombstones stay, so a subscriber starting below the compaction horizon
  gets one catch-up transaction with the current state of every row changed
  since its position, then the live log.

Files: ``<data_dir>/hub.sqlite3`` (+ SQLite's ``-wal``/``-shm``).
"""

from __future__ import annotations

import collections
import fcntl
import itertools
import json
import os
import queue
import sqlite3
import threading
import time
from typing import Dict, List, Optional

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from electric import files
from electric.hub.interface import (
    HubError,
    IHub,
    ISubscription,
    ResolvedChange,
    ResolvedTransaction,
    Snapshot,
    SubscriptionClosed,
)
from electric.hub.positions import HUB_ID_SIZE, ClientLsnCodec
from electric.hub.resolution import InvalidTransaction, RowState, StateView, check_transaction, resolve
from electric.metrics import LatencyHistogram

log = Logger()

DB_NAME = "hub.sqlite3"
SCHEMA_VERSION = 1
CATCH_UP_ORIGIN = "electric:catch-up"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (
    position INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    origin_id BLOB NOT NULL,
    commit_ts INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS rows (
    schema_name TEXT NOT NULL,
    table_name TEXT NOT NULL,
    key TEXT NOT NULL,
    vals TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (schema_name, table_name, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS applied (
    origin TEXT NOT NULL,
    origin_id BLOB NOT NULL,
    position INTEGER NOT NULL,
    commit_ts INTEGER NOT NULL,
    PRIMARY KEY (origin, origin_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS consumers (name TEXT PRIMARY KEY, acked INTEGER NOT NULL) WITHOUT ROWID;
"""

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_loads = json.loads


def _encode_key(key) -> str:
    return _dumps(list(key))


def _decode_key(text: str) -> tuple:
    return tuple(_loads(text))


def _encode_changes(changes) -> bytes:
    return _dumps([[c.schema, c.table, list(c.key), c.row, 1 if c.deleted else 0] for c in changes]).encode()


def _decode_changes(blob) -> tuple:
    return tuple(ResolvedChange(s, t, tuple(k), row, bool(d)) for s, t, k, row, d in _loads(bytes(blob)))


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=60000")
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute("PRAGMA mmap_size=1073741824")
    except BaseException:
        conn.close()
        raise
    return conn


def _head(conn) -> int:
    """The last position: the newest log entry, or what compaction recorded when it emptied the log."""
    (last,) = conn.execute("SELECT max(position) FROM log").fetchone()
    return max(last or 0, _meta(conn, "head", 0))


def _meta(conn, k, default=None):
    row = conn.execute("SELECT v FROM meta WHERE k = ?", (k,)).fetchone()
    return default if row is None else row[0]


_GET_MANY_CHUNK = 500  # keys per query (SQLite's default variable limit is far higher)


class _SqliteState(StateView):
    """Row states as the writer's open SQLite transaction sees them."""

    def __init__(self, conn):
        self.conn = conn
        self._encoded = {}

    def encode_key(self, key) -> str:
        """A key's stored text, encoded once per commit group (lookups and writes both need it)."""
        text = self._encoded.get(key)
        if text is None:
            text = self._encoded[key] = _encode_key(key)
        return text

    def get_many(self, rids):
        """One query per table and chunk of keys instead of one per row."""
        out = dict.fromkeys(rids)
        by_table = {}
        for rid in out:
            by_table.setdefault((rid[0], rid[1]), []).append(rid[2])
        for (schema, table), keys in by_table.items():
            for i in range(0, len(keys), _GET_MANY_CHUNK):
                chunk = keys[i:i + _GET_MANY_CHUNK]
                texts = {self.encode_key(k): k for k in chunk}
                cur = self.conn.execute(
                    "SELECT key, vals, deleted FROM rows WHERE schema_name = ? AND table_name = ? AND key IN (%s)"
                    % ",".join("?" * len(texts)),
                    (schema, table, *texts),
                )
                for text, vals, deleted in cur:
                    out[(schema, table, texts[text])] = RowState(_loads(vals), bool(deleted))
        return out

    def end_group(self) -> None:
        self._encoded.clear()

    def get(self, schema, table, key):
        row = self.conn.execute(
            "SELECT vals, deleted FROM rows WHERE schema_name = ? AND table_name = ? AND key = ?",
            (schema, table, self.encode_key(key)),
        ).fetchone()
        if row is None:
            return None
        return RowState(_loads(row[0]), bool(row[1]))

    def live_keys(self, schema, table):
        cur = self.conn.execute(
            "SELECT key FROM rows WHERE schema_name = ? AND table_name = ? AND deleted = 0", (schema, table)
        )
        return [_decode_key(k) for (k,) in cur]


class _Append:
    __slots__ = ("transaction", "deferred", "outcome", "fresh", "queued_at")

    def __init__(self, transaction, deferred):
        self.transaction = transaction
        self.deferred = deferred
        self.outcome = None  # ResolvedTransaction or Exception
        self.fresh = False
        self.queued_at = time.monotonic()  # for the append latency histogram


class _Stop:
    pass


class _Compact:
    def __init__(self, floor, deferred):
        self.floor = floor
        self.deferred = deferred


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
        self._parked: Optional[ResolvedTransaction] = None  # catch-up waiting for publication

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

    def _close(self, exc):
        if self.closed:
            return
        self.closed = True
        self._hub._subscriptions.discard(self)
        self._hub._waiting.discard(self)
        self._parked = None
        d, self._d = self._d, None
        if d is not None:
            d.errback(Failure(exc))

    def _fulfil(self, items):
        d, self._d = self._d, None
        self.position = items[-1].position
        d.callback(items)

    def _fail(self, exc):
        d, self._d = self._d, None
        if d is not None:
            d.errback(Failure(exc))

    def __repr__(self):
        return f"<hub subscription at {self.position} consumer={self.consumer!r}>"


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
    seconds (0 = only when `compact()` is called).
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
        clock=None,
    ):
        if reactor is None:
            from twisted.internet import reactor
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

        self._published = 0  # last position subscriptions may see
        self._durable = 0  # last committed position (head())
        self._horizon = 0
        self._row_count = 0
        self._consumers: Dict[str, int] = {}
        self._subscriptions = set()
        self._waiting = set()
        self._served_now = 0  # next() calls answered synchronously this reactor turn
        self._reset_call = None
        self._position_waiters = []
        self._tail = collections.deque()
        self._tail_size = 0
        self._compactor: Optional[task.LoopingCall] = None
        self._stats = {"appends": 0, "duplicates": 0, "rejected": 0, "failed": 0, "conflicts": 0, "commit_groups": 0,
                       "compactions": 0}
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
            files.private_sqlite(self.path)
            conn = _connect(self.path)
        except (sqlite3.Error, OSError) as e:
            lock.close()
            raise HubError(f"{self.path}: cannot open the hub store: {e}") from None
        try:
            conn.executescript(_SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            version = _meta(conn, "schema_version")
            if version is None:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            elif version != SCHEMA_VERSION:
                conn.execute("ROLLBACK")
                raise HubError(f"{self.path}: schema version {version}, this Electric reads {SCHEMA_VERSION}")
            hub_id = _meta(conn, "hub_id")
            if hub_id is None:
                hub_id = os.urandom(HUB_ID_SIZE)
                conn.execute("INSERT INTO meta VALUES ('hub_id', ?)", (hub_id,))
            conn.execute("COMMIT")
            self.hub_id = bytes(hub_id)
            self._codec = ClientLsnCodec(self.hub_id)
            self._published = self._durable = _head(conn)
            self._horizon = _meta(conn, "horizon", 0)
            self._row_count = conn.execute("SELECT count(*) FROM rows WHERE deleted = 0").fetchone()[0]
            self._consumers = dict(conn.execute("SELECT name, acked FROM consumers"))
        except sqlite3.Error as e:
            conn.close()
            lock.close()
            raise HubError(f"{self.path}: cannot open the hub store: {e}") from None
        except BaseException:
            conn.close()
            lock.close()
            raise
        self._lock_file = lock
        self._open = True
        self._closing = False
        self._writer_done = defer.Deferred()
        self._writer = threading.Thread(target=self._writer_main, args=(conn, self._published), name="hub-writer", daemon=True)
        self._writer.start()
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
        self._queue.put(_Stop())
        yield self._writer_done
        self._writer.join()
        for sub in list(self._subscriptions):
            sub._close(SubscriptionClosed("hub stopped"))
        waiters, self._position_waiters = self._position_waiters, []
        for _, d in waiters:
            d.errback(Failure(HubError("hub stopped")))
        while self._reads:
            yield defer.DeferredList(list(self._reads), consumeErrors=True)
        with self._readers_lock:
            for c in self._readers:
                c.close()
            self._readers.clear()
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

    def _check_open(self):
        if not self._open or self._closing:
            raise HubError("hub is not running" if not self._open else "hub is closing")

    # --- IHub ----------------------------------------------------------

    def append(self, transaction):
        try:
            self._check_open()
            check_transaction(transaction)
        except InvalidTransaction as e:
            self._stats["rejected"] += 1
            return defer.fail(HubError(f"invalid transaction: {e}"))
        except HubError as e:
            return defer.fail(e)
        d = defer.Deferred()
        self._queue.put(_Append(transaction, d))
        return d

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
        wanted = None if tables is None else {(s, t) for s, t in tables}
        d = self._read(self._read_snapshot, wanted)
        d.addCallback(self._when_published)
        return d

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
            "queued": self._queue.qsize(),
            "tail_entries": len(self._tail),
            **self._stats,
        }

    def metrics(self) -> dict:
        """
        Plain numbers for /metrics (`electric.metrics`): head, log length,
        live rows, counters since start (appends, duplicates, conflicts
        resolved, commit groups), the append latency histogram (one
        observation per transaction appended: from `append` to its Deferred
        firing) and errors by kind: ``hub_rejected`` (malformed transactions
        refused by `append`), ``hub_append_failed`` (transactions that could
        not be resolved or stored).
        """
        head = self._durable
        stats = self._stats
        return {
            "head": head,
            "log_length": max(0, head - self._horizon),
            "rows": self._row_count,
            "appends": stats["appends"],
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
        if floor <= self._horizon:
            return defer.succeed(self._horizon)
        d = defer.Deferred()
        self._queue.put(_Compact(floor, d))
        return d

    def _periodic_compact(self):
        d = self.compact()
        d.addErrback(lambda f: log.failure("hub compaction failed", f))

    # --- writer thread ---------------------------------------------------

    def _writer_main(self, conn, head):
        state = _SqliteState(conn)
        stop = False
        try:
            while not stop:
                batch = [self._queue.get()]
                while len(batch) < self.max_group:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                appends = [b for b in batch if isinstance(b, _Append)]
                others = [b for b in batch if isinstance(b, tuple)]
                compacts = [b for b in batch if isinstance(b, _Compact)]
                stop = any(isinstance(b, _Stop) for b in batch)
                if appends or others:
                    head = self._commit_group(conn, state, head, appends, others)
                for c in compacts:
                    self._compact_now(conn, c)
        except BaseException:
            log.failure("hub writer thread died")
            self._reactor.callFromThread(self._writer_died)
        finally:
            conn.close()
            self._reactor.callFromThread(self._writer_done.callback, None)

    def _commit_group(self, conn, state, head, appends, others):
        start_head = head
        live_delta = 0
        conflicts = 0
        seen = {}
        try:
            conn.execute("BEGIN IMMEDIATE")
            for a in appends:
                txn = a.transaction
                ident = (txn.origin, bytes(txn.origin_id))
                if ident in seen:
                    a.outcome = seen[ident]
                    continue
                earlier = self._earlier(conn, ident)
                if earlier is not None:
                    a.outcome = earlier
                    continue
                conn.execute("SAVEPOINT txn")
                try:
                    res = resolve(state, txn)
                    pos = head + 1
                    conn.execute(
                        "INSERT INTO log VALUES (?, ?, ?, ?, ?)",
                        (pos, txn.origin, ident[1], txn.commit_timestamp, _encode_changes(res.changes)),
                    )
                    conn.executemany(
                        "INSERT OR REPLACE INTO rows VALUES (?, ?, ?, ?, ?, ?)",
                        [
                            (s, t, state.encode_key(k), _dumps(dict(st.values)), 1 if st.deleted else 0, pos)
                            for (s, t, k), st in res.states.items()
                        ],
                    )
                    conn.execute("INSERT INTO applied VALUES (?, ?, ?, ?)", (txn.origin, ident[1], pos, txn.commit_timestamp))
                    conn.execute("RELEASE txn")
                except InvalidTransaction as e:
                    # A WriteGuard failed: the producer's fault, not the hub's.
                    conn.execute("ROLLBACK TO txn")
                    conn.execute("RELEASE txn")
                    a.outcome = HubError(f"invalid transaction: {e}")
                    continue
                except Exception as e:
                    conn.execute("ROLLBACK TO txn")
                    conn.execute("RELEASE txn")
                    log.failure("hub rejected a transaction from {origin}", origin=txn.origin)
                    a.outcome = HubError(f"transaction from {txn.origin} could not be applied: {e}")
                    continue
                head = pos
                live_delta += res.live_delta
                conflicts += res.conflicts
                a.outcome = ResolvedTransaction(pos, txn.origin, ident[1], txn.commit_timestamp, res.changes)
                a.fresh = True
                seen[ident] = a.outcome
            for item in others:
                if item[0] == "ack":
                    conn.execute(
                        "INSERT INTO consumers VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET acked = excluded.acked",
                        (item[1], item[2]),
                    )
                elif item[0] == "forget":
                    conn.execute("DELETE FROM consumers WHERE name = ?", (item[1],))
            conn.execute("COMMIT")
        except Exception as e:
            log.failure("hub commit failed")
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            for a in appends:
                a.outcome = HubError(f"hub could not store the transaction: {e}")
                a.fresh = False
            head = start_head
            live_delta = 0
            conflicts = 0
        state.end_group()
        if appends:
            self._reactor.callFromThread(self._publish, appends, live_delta, conflicts)
        return head

    def _earlier(self, conn, ident):
        row = conn.execute("SELECT position, commit_ts FROM applied WHERE origin = ? AND origin_id = ?", ident).fetchone()
        if row is None:
            return None
        pos, ts = row
        entry = conn.execute("SELECT payload FROM log WHERE position = ?", (pos,)).fetchone()
        # Compacted away: the position and identity are still right; the
        # changes were delivered long ago and are part of the row state.
        changes = _decode_changes(entry[0]) if entry is not None else ()
        return ResolvedTransaction(pos, ident[0], ident[1], ts, changes)

    def _compact_now(self, conn, job):
        try:
            conn.execute("BEGIN IMMEDIATE")
            horizon = max(_meta(conn, "horizon", 0), job.floor)
            head = _head(conn)
            conn.execute("DELETE FROM log WHERE position <= ?", (horizon,))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('horizon', ?)", (horizon,))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('head', ?)", (head,))
            conn.execute("COMMIT")
        except Exception as e:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._reactor.callFromThread(job.deferred.errback, Failure(HubError(f"compaction failed: {e}")))
            return
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass
        self._reactor.callFromThread(self._compacted, horizon, job.deferred)

    def _writer_died(self):
        """Fail everything still queued: nothing more can become durable."""
        self._closing = True
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, (_Append, _Compact)):
                item.deferred.errback(Failure(HubError("hub writer stopped after an internal error")))

    def _compacted(self, horizon, d):
        self._horizon = max(self._horizon, horizon)
        self._stats["compactions"] += 1
        d.callback(self._horizon)

    # --- reactor side: publication -------------------------------------

    def _publish(self, appends, live_delta, conflicts=0):
        self._row_count += live_delta
        self._stats["commit_groups"] += 1
        self._stats["conflicts"] += conflicts
        now = time.monotonic()
        for a in appends:
            if a.fresh:
                self._durable = max(self._durable, a.outcome.position)
        for a in appends:
            if isinstance(a.outcome, Exception):
                self._stats["failed"] += 1
                a.deferred.errback(Failure(a.outcome))
                continue
            rt = a.outcome
            if a.fresh:
                self._stats["appends"] += 1
                self._append_latency.observe(now - a.queued_at)
            else:
                self._stats["duplicates"] += 1
            a.deferred.callback(rt)
            if a.fresh:
                # Visible to consumers only after the producer heard back.
                self._tail_push(rt)
                self._published = rt.position
        self._wake()

    def _tail_push(self, rt):
        self._tail.append(rt)
        self._tail_size += len(rt.changes) + 1
        while self._tail and (self._tail_size > self.tail_budget or len(self._tail) > self.tail_entries):
            old = self._tail.popleft()
            self._tail_size -= len(old.changes) + 1

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
        if sub._parked is not None:
            if sub._parked.position <= self._published:
                rt, sub._parked = sub._parked, None
                sub._fulfil([rt])
            else:
                self._waiting.add(sub)
            return
        pos = sub.position
        if pos >= self._published:
            self._waiting.add(sub)
            return
        if self._tail and pos + 1 >= self._tail[0].position:
            start = pos + 1 - self._tail[0].position
            sub._fulfil(list(itertools.islice(self._tail, start, start + sub._max)))
            return
        sub._busy = True
        d = self._read(self._read_log, pos, self._published, sub._max)
        d.addBoth(self._log_read, sub)

    def _log_read(self, result, sub):
        sub._busy = False
        if sub.closed:
            return None
        if isinstance(result, Failure):
            log.failure("hub log read failed", result)
            sub._fail(HubError(f"could not read the hub log: {result.getErrorMessage()}"))
            return None
        if not result:
            # Nothing readable (cannot normally happen); try again on the next wake.
            self._waiting.add(sub)
            return None
        if result[0].catch_up and result[0].position > self._published:
            sub._parked = result[0]
            self._waiting.add(sub)
            return None
        if sub._d is not None:
            sub._fulfil(result)
        return None

    def _when_published(self, snapshot):
        """Hold a SQLite-consistent result back until its position is announced."""
        if snapshot.position <= self._published:
            return snapshot
        d = defer.Deferred()
        self._position_waiters.append((snapshot.position, d))
        return d.addCallback(lambda _: snapshot)

    # --- reader threads --------------------------------------------------

    def _read(self, fn, *args):
        d = threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(), self._with_reader, fn, *args)
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
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=60000")
            conn.execute("PRAGMA mmap_size=1073741824")
        try:
            conn.execute("BEGIN")
            try:
                return fn(conn, *args)
            finally:
                conn.execute("COMMIT")
        finally:
            with self._readers_lock:
                self._readers.append(conn)

    @staticmethod
    def _read_log(conn, after, upto, limit):
        horizon = _meta(conn, "horizon", 0)
        if after < horizon:
            head = _head(conn)
            # A full scan: catch-ups are rare and mostly start from 0 anyway,
            # and an index on position would cost every append a random write.
            cur = conn.execute(
                "SELECT schema_name, table_name, key, vals, deleted FROM rows WHERE position > ?", (after,)
            )
            changes = tuple(ResolvedChange(s, t, _decode_key(k), _loads(v), bool(dl)) for s, t, k, v, dl in cur)
            ts = int(time.time() * 1_000_000)
            return [ResolvedTransaction(head, CATCH_UP_ORIGIN, b"", ts, changes, catch_up=True)]
        cur = conn.execute(
            "SELECT position, origin, origin_id, commit_ts, payload FROM log "
            "WHERE position > ? AND position <= ? ORDER BY position LIMIT ?",
            (after, upto, limit),
        )
        return [ResolvedTransaction(p, o, bytes(oid), ts, _decode_changes(pl)) for p, o, oid, ts, pl in cur]

    @staticmethod
    def _read_snapshot(conn, wanted):
        head = _head(conn)
        if wanted is None:
            cur = conn.execute("SELECT schema_name, table_name, key, vals FROM rows WHERE deleted = 0")
            rows = [ResolvedChange(s, t, _decode_key(k), _loads(v)) for s, t, k, v in cur]
        else:
            rows = []
            for s, t in sorted(wanted):
                cur = conn.execute(
                    "SELECT key, vals FROM rows WHERE schema_name = ? AND table_name = ? AND deleted = 0", (s, t)
                )
                rows.extend(ResolvedChange(s, t, _decode_key(k), _loads(v)) for k, v in cur)
        return Snapshot(head, tuple(rows))
