"""
The Vaxine hub (``VAXINE_HOST`` set): Vaxine orders the writes, every Electric resolves them alike.

Why it is built this way:

* **Vaxine is the shared, ordered log.**  Several Electrics write into one
  Vaxine (PB API, `electric.vaxine.pb_client`) and each reads the whole
  replication stream back (`electric.vaxine.replication`).  The stream's
  order (Vaxine's commit order) is the one total order every Electric sees.
* **Resolution is the embedded hub's rule, applied in stream order**
  (`electric.hub.resolution`): it is a pure function of (row states,
  transaction), so every Electric that reads the same stream from the same
  start computes the same row states -- deterministic from the stream alone,
  whatever Vaxine's own CRDT merge of the row objects says.  To make that
  possible each Vaxine transaction carries the producer's transaction
  exactly (`electric.vaxine.records`), next to the data model's row objects.
* **A local copy, fed only by the stream.**  This class *is* the embedded
  hub (`EmbeddedHub`: SQLite store, chunked log, in-memory tail,
  subscriptions, snapshots, catch-up, compaction, durable consumers) with a
  different sequencer: `append`/`begin` never touch the local store; they
  write into Vaxine and wait until the transaction came back through the
  stream and was stored locally (matched by (origin, origin_id)).  Positions
  are local to each Electric; the publisher, Satellite and migrations run
  unchanged on top.
* **Exact restarts.**  Each stream transaction is submitted with the stream
  offset to resume from (`_submit_append(..., meta)`), stored in the same
  SQLite transaction as its log entry, so after a restart the stream resumes
  right after the last transaction stored (resumption is exclusive); what
  comes again is dropped by (origin, origin_id).  While a big transaction's
  chunks are staged (not yet committed), the stored offset stays before its
  first chunk, so a restart stages them again.
* **Big transactions** (`begin`): each ``add`` is one Vaxine transaction
  (a chunk: record + row objects), the commit one more (the marker); the
  reader stages chunks in spill files (`electric.hub.spill`) and applies the
  whole at the marker as one position.  Nothing is visible before the marker,
  and an abort (or a producer that never commits) leaves only staged chunks
  that no reader applies.  One origin has at most one big transaction open
  at a time (a new ``begin`` aborts the previous one).
* **Availability.**  `ready` is True only while both links are up.  A write
  is retried whole with backoff (10 ms doubling, capped at 1 s) for up to
  `write_retry_budget` seconds, then fails with HubError: the producer keeps
  it (Postgres resends from its slot, a client resends) -- nothing is lost,
  and everything resumes once Vaxine is back (the links reconnect by
  themselves).
"""

from __future__ import annotations

import collections
import random
import time
from typing import Dict, List, Optional, Tuple

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from electric.hub import store
from electric.hub.embedded import EmbeddedHub, buffer_usable, commit_arguments
from electric.hub.interface import (
    Committed, HubError, IAppendBuffer, IHub, ResolvedTransaction, Transaction,
)
from electric.hub.resolution import InvalidTransaction, check_transaction
from electric.vaxine import datamodel as D, records as R
from electric.vaxine.errors import VaxineError
from electric.vaxine.pb_client import AntidoteClient
from electric.vaxine.replication import ReplicationClient, WalQueue
from electric.vaxine.stream import BEGINNING, offset_from_bytes, offset_to_bytes

log = Logger(namespace="electric.vaxine.hub")

OFFSET_META = "vaxine_offset"
"""Key (in the local store's meta) of the stream offset to resume from."""

WAL_QUEUE = 16
"""Decoded stream transactions held between the stream and the reader before the stream is paused."""

MAX_PENDING = 2000
"""Stream transactions submitted to the local store and not yet durable, before the reader waits."""


class _Staging:
    """A big transaction's chunks read from the stream, waiting for its commit marker (spill file)."""

    def __init__(self, origin, attempt, file, resume):
        self.origin = origin
        self.attempt = attempt
        self.origin_id: Optional[bytes] = None
        self._file = file
        self.resume = resume  # the offset to restart from to see its first chunk again
        self.next_seq = 0
        self.broken: Optional[str] = None


class _Write:
    __slots__ = ("ops", "what", "deferred", "done")

    def __init__(self, ops, what):
        self.ops = ops
        self.what = what
        self.deferred = defer.Deferred()
        self.done = False


class _OrderedWriter:
    """
    Vaxine writes in call order, pipelined, retried whole in that order.

    Order matters: two transactions of one origin must reach the stream in
    the order the origin committed them (the later one wins a conflict).  On
    one PB connection pipelined interactive transactions commit in request
    order.  When one fails (the connection went away), new writes wait;
    once every write in flight has settled, all that did not commit are
    issued again, in order, after a backoff (10 ms doubling, up to 1 s, with
    jitter).  After `write_retry_budget` seconds of failures every waiting
    write fails with HubError -- the later ones too, so that none overtakes
    a failed one -- and their producers resend them.  A write that committed
    but whose reply was lost is written again; its copy in the stream is
    dropped by (origin, origin_id).
    """

    def __init__(self, hub: "VaxineHub"):
        self.hub = hub
        self.queue: "collections.deque[_Write]" = collections.deque()
        self.inflight = 0
        self.recovering = False
        self.first_failure: Optional[float] = None
        self.delay = 0.01
        self.last_error = ""
        self._timer = None

    def write(self, ops, what) -> defer.Deferred:
        w = _Write(ops, what)
        self.queue.append(w)
        if not self.recovering:
            self._issue(w)
        return w.deferred

    def _issue(self, w: _Write) -> None:
        self.inflight += 1
        self.hub.pb.write(w.ops).addCallbacks(self._ok, self._failed, (w,), None, (w,))

    def _ok(self, _, w: _Write) -> None:
        self.inflight -= 1
        w.done = True
        self.first_failure = None
        self.delay = 0.01
        while self.queue and self.queue[0].done:
            self.queue.popleft()
        self.hub._vstats["writes"] += 1
        w.deferred.callback(None)
        self._settled()

    def _failed(self, failure: Failure, w: _Write) -> None:
        self.inflight -= 1
        self.last_error = failure.getErrorMessage()
        if not failure.check(VaxineError):
            log.failure("Vaxine hub: unexpected write failure", failure)
        if not self.recovering:
            self.recovering = True
            if self.first_failure is None:
                self.first_failure = self.hub._clock.seconds()
        self._settled()

    def _settled(self) -> None:
        if self.hub._closing or not self.hub._open:
            return
        if self.recovering and self.inflight == 0 and self._timer is None:
            wait = min(self.delay * (1 + self.hub._rng.random()), 1.0)
            self.delay *= 2
            self._timer = self.hub._clock.callLater(wait, self._reissue)

    def _reissue(self) -> None:
        self._timer = None
        pending = [w for w in self.queue if not w.done]
        stopped = not self.hub._open or self.hub._closing
        spent = self.hub._clock.seconds() - (self.first_failure or self.hub._clock.seconds())
        if stopped or spent >= self.hub.write_retry_budget:
            self.queue.clear()
            self.recovering = False
            self.first_failure = None
            self.delay = 0.01
            for w in pending:
                why = "the hub stopped" if stopped else f"Vaxine did not take it for {spent:.0f} s: {self.last_error}"
                w.deferred.errback(Failure(HubError(f"{w.what} was not written: {why}")))
            return
        self.recovering = False
        self.hub._vstats["write_retries"] += len(pending)
        for w in pending:
            self._issue(w)

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        pending = [w for w in self.queue if not w.done]
        self.queue.clear()
        self.recovering = False
        for w in pending:
            w.deferred.errback(Failure(HubError(f"{w.what} was not written: the hub stopped")))


@implementer(IAppendBuffer)
class _VaxineAppendBuffer:
    """IAppendBuffer writing each chunk into Vaxine as one transaction (see the module docstring)."""

    def __init__(self, hub: "VaxineHub", origin, origin_id, commit_timestamp):
        self._hub = hub
        self.origin = origin
        self.origin_id = origin_id
        self.commit_timestamp = commit_timestamp
        self.attempt = R.new_attempt()
        self.staged = 0
        self._seq = 0
        self._state = "open"  # open -> committing -> done, or broken
        self._error: Optional[HubError] = None
        self._adding = False

    _usable = buffer_usable

    def add(self, changes):
        err = self._usable()
        if err is not None:
            return defer.fail(err)
        changes = tuple(changes)
        try:
            check_transaction(Transaction(self.origin, self.origin_id or b"", 0, changes))
            ops_list = [R.chunk_ops(self.origin, self.attempt, self._seq + i, self._ts(), changes[s:s + self._hub.chunk])
                        for i, s in enumerate(range(0, len(changes), self._hub.chunk))]
        except (InvalidTransaction, D.UnsupportedChange) as e:
            self._break(HubError(f"invalid transaction: {e}"))
            return defer.fail(self._error)
        self._adding = True

        async def write():
            for ops in ops_list:
                await self._hub._write(ops, f"chunk {self._seq} of a transaction from {self.origin}")
                self._seq += 1

        def done(_):
            self._adding = False
            if self._state != "open":
                raise self._error or HubError("append buffer was aborted")
            self.staged += len(changes)

        def failed(f):
            self._adding = False
            self._break(f.value if f.check(HubError) else HubError(f.getErrorMessage()))
            raise self._error

        return defer.ensureDeferred(write()).addCallbacks(done, failed)

    def _ts(self):
        return self.commit_timestamp if self.commit_timestamp is not None else int(time.time() * 1_000_000)

    def commit(self, commit_timestamp=None, origin_id=None, origin_applied=None):
        # `origin_applied` (the echo decision's input) is checked and then
        # ignored: this hub never sets `ResolvedChange.origin_holds`, so every
        # change goes back to its origin too, which is always correct.
        err = self._usable()
        if err is not None:
            return defer.fail(err)
        ts, err = commit_arguments(self, commit_timestamp, origin_id, origin_applied)
        if err is not None:
            return defer.fail(err)
        self._state = "committing"
        hub = self._hub

        ident = (self.origin, self.origin_id)
        if hub._known(ident) or ident in hub._waiters:
            # Already stored or on its way: no commit marker; the staged chunks are dropped.
            hub._abort_attempt(self.origin, self.attempt, self._seq)
            self._state = "done"
            hub._buffers.discard(self)
            if ident in hub._waiters:
                d = defer.Deferred()
                hub._waiters[ident].append((d, Committed))
                return d
            return hub.applied(*ident).addCallback(
                lambda pos: Committed(pos, self.origin, self.origin_id, ts, 0, duplicate=True))

        async def run():
            result = await hub._write_and_wait(
                (self.origin, self.origin_id), Committed,
                R.commit_ops(self.origin, self.origin_id, self.attempt, self._seq, ts),
                f"the commit of a transaction from {self.origin}")
            return result

        def finished(result):
            self._state = "done"
            hub._buffers.discard(self)
            return result

        return defer.ensureDeferred(run()).addBoth(finished)

    def abort(self):
        if self._state == "committing":
            return defer.fail(HubError("append buffer is committing; it can no longer be aborted"))
        if self._state != "done":
            self._state = "done"
            self._hub._buffers.discard(self)
            self._hub._abort_attempt(self.origin, self.attempt, self._seq + (1 if self._adding else 0))
        return defer.succeed(None)

    def _break(self, exc: HubError):
        if self._state == "open":
            self._state = "broken"
            self._error = exc
            self._hub._buffers.discard(self)
            self._hub._abort_attempt(self.origin, self.attempt, self._seq + 1)

    def __repr__(self):
        return f"<Vaxine append buffer {self.origin} attempt {self.attempt} {self._state} staged={self.staged}>"


@implementer(IHub)
class VaxineHub(EmbeddedHub):
    """
    IHub over Vaxine (see the module docstring).  `data_dir` holds the local
    copy (the embedded hub's store, fed only by the stream); `host`,
    `api_port`, `replication_port`, `connect_timeout` (seconds) are the
    ``VAXINE_*`` settings; `write_retry_budget` (seconds) bounds how long a
    write is retried (see `_OrderedWriter`); `retry_policy` is the links'
    reconnect backoff (tests make it short); `rng` draws the retry jitter.
    Other keyword arguments go to `EmbeddedHub`.
    """

    name = "hub"

    def __init__(self, data_dir: str, host: str = "127.0.0.1", api_port: int = 8087,
                 replication_port: int = 8088, connect_timeout: float = 5.0, reactor=None, *,
                 write_retry_budget: float = 10.0, retry_policy=None, rng: Optional[random.Random] = None,
                 **kwargs):
        super().__init__(data_dir, reactor, **kwargs)
        self.host = host
        self.api_port = api_port
        self.replication_port = replication_port
        self.connect_timeout = connect_timeout
        self.write_retry_budget = write_retry_budget
        self._retry_policy = retry_policy
        self._rng = rng or random.Random()
        self._vwriter = _OrderedWriter(self)
        self.pb = AntidoteClient(host, api_port, connect_timeout=connect_timeout, reactor=self._reactor,
                                 clock=self._clock, retry_policy=retry_policy)
        self.stream: Optional[ReplicationClient] = None
        self._wal: Optional[WalQueue] = None
        self._reader: Optional[defer.Deferred] = None
        self._waiters: Dict[Tuple[str, bytes], List[Tuple[defer.Deferred, type]]] = {}
        self._stagings: "collections.OrderedDict[Tuple[str, str], _Staging]" = collections.OrderedDict()
        self._offset = BEGINNING  # offset of the last stream transaction taken
        self._pending = 0
        # Set when a stream transaction could not be stored for a reason of
        # Electric's own (a disk error, not a refused write): reading stops
        # there and the hub is not ready, so nothing goes on past a hole.
        self.store_failure: Optional[str] = None
        self._drained: Optional[defer.Deferred] = None
        self._vstats = {"stream_transactions": 0, "skipped": 0, "chunks": 0, "write_retries": 0,
                        "writes": 0, "refused": 0}
        self._last_skip: Optional[str] = None
        self._probe = None  # a read connection to the local store, for `_known`

    @classmethod
    def from_config(cls, config, reactor=None, **kwargs) -> "VaxineHub":
        return cls(config.data_dir, config.vaxine_host, config.vaxine_api_port, config.vaxine_replication_port,
                   config.vaxine_connection_timeout_ms / 1000.0, reactor, **kwargs)

    # --- life cycle ----------------------------------------------------

    def startService(self):
        if self._open:
            return
        super().startService()
        self._probe = store.connect(self.path, writer=False)
        stored = store.read_meta(self._probe, "x:" + OFFSET_META)
        try:
            self._offset = offset_from_bytes(stored) if stored is not None else BEGINNING
        except ValueError as e:
            raise HubError(f"{self.path}: stored Vaxine offset is unreadable ({e})") from None
        self._stagings.clear()
        # A stream transaction may be a whole chunk (2,000 rows with their states): hold few.
        self._wal = WalQueue(high_water=WAL_QUEUE)
        self.stream = ReplicationClient(self._wal, self.host, self.replication_port, offset=self._offset,
                                        connect_timeout=self.connect_timeout, reactor=self._reactor,
                                        clock=self._clock, retry_policy=self._retry_policy, raw_values=True)
        self.pb.startService()
        self.stream.startService()
        self._reader = defer.ensureDeferred(self._read_stream())
        self._reader.addErrback(lambda f: log.failure("Vaxine hub: the stream reader stopped", f))
        log.info("Vaxine hub: {host} PB {api} stream {repl}, resuming the stream from {offset!r}",
                 host=self.host, api=self.api_port, repl=self.replication_port, offset=self._offset)

    @defer.inlineCallbacks
    def stopService(self):
        if not self._open or self._stop_requested:
            yield super().stopService()
            return
        self._closing = True
        waiters, self._waiters = self._waiters, {}
        for ws in waiters.values():
            for d, _ in ws:
                d.errback(Failure(HubError("hub stopped")))
        self._vwriter.stop()
        if self._wal is not None:
            self._wal.close()
        if self.stream is not None:
            yield self.stream.stopService()
        yield self.pb.stopService()
        if self._reader is not None:
            yield self._reader
        self._closing = False  # let the embedded hub's stop run its course
        yield super().stopService()
        self._stagings.clear()
        if self._probe is not None:
            self._probe.close()
            self._probe = None

    @property
    def ready(self) -> bool:
        """True while the hub runs and both Vaxine links are up."""
        return (self._open and not self._closing and self.store_failure is None and self.pb.connected
                and self.stream is not None and self.stream.streaming)

    # --- writing: into Vaxine ------------------------------------------

    def _write(self, ops, what: str) -> defer.Deferred:
        """Deferred[None] once one Vaxine transaction with `ops` committed (in call order; see `_OrderedWriter`)."""
        try:
            self._check_open()
        except HubError as e:
            return defer.fail(e)
        return self._vwriter.write(ops, what)

    async def _write_and_wait(self, ident, want, ops, what):
        d = defer.Deferred()
        self._waiters.setdefault(ident, []).append((d, want))
        try:
            await self._write(ops, what)
        except Exception:
            ws = self._waiters.get(ident, [])
            ws[:] = [w for w in ws if w[0] is not d]
            if not ws:
                self._waiters.pop(ident, None)
            raise
        return await d

    def append(self, transaction):
        try:
            self._check_open()
            check_transaction(transaction)
            ops = R.transaction_ops(transaction)
        except (InvalidTransaction, D.UnsupportedChange) as e:
            self._stats["rejected"] += 1
            return defer.fail(HubError(f"invalid transaction: {e}"))
        except HubError as e:
            return defer.fail(e)
        ident = (transaction.origin, bytes(transaction.origin_id))

        if self._known(ident):
            # Already stored: the embedded sequencer answers with the earlier entry, nothing is written.
            return EmbeddedHub._submit_append(self, transaction)
        if ident in self._waiters:
            # The same transaction is on its way (a producer resending): wait for that copy.
            d = defer.Deferred()
            self._waiters[ident].append((d, ResolvedTransaction))
            return d
        return defer.ensureDeferred(self._write_and_wait(ident, ResolvedTransaction, ops,
                                                         f"a transaction from {transaction.origin}"))

    def _known(self, ident) -> bool:
        """
        Whether the local copy holds (origin, origin_id): one primary-key
        lookup, made right here (not in a thread) so that no later write can
        overtake this one on its way to Vaxine.
        """
        return store.read_applied(self._probe, ident[0], ident[1]) is not None

    def begin(self, origin, origin_id=None, commit_timestamp=None):
        self._check_open()
        if not isinstance(origin, str) or not origin:
            raise HubError(f"invalid transaction: origin {origin!r} must be a non-empty str")
        if origin_id is not None and not isinstance(origin_id, (bytes, bytearray)):
            raise HubError(f"invalid transaction: origin_id {origin_id!r} must be bytes")
        if commit_timestamp is not None and (not isinstance(commit_timestamp, int) or isinstance(commit_timestamp, bool)):
            raise HubError(f"invalid transaction: commit_timestamp {commit_timestamp!r} must be an int (µs since epoch)")
        try:
            check_transaction(Transaction(origin, bytes(origin_id or b""), 0, ()))
        except InvalidTransaction as e:
            raise HubError(f"invalid transaction: {e}") from None
        # One big transaction per origin at a time: readers stage by (origin, attempt).
        for buf in list(self._buffers):
            if buf.origin == origin and buf._state == "open":
                buf._break(HubError(f"a newer transaction from {origin} began"))
        buf = _VaxineAppendBuffer(self, origin, None if origin_id is None else bytes(origin_id), commit_timestamp)
        self._buffers.add(buf)
        return buf

    def _abort_attempt(self, origin, attempt, chunks_written):
        """Tell every reader to drop the chunks of `attempt` (best effort; only if any were written)."""
        if chunks_written <= 0 or not self._open or self._closing:
            return
        d = self._write(R.abort_ops(origin, attempt, int(time.time() * 1_000_000)),
                        f"the abort of a transaction from {origin}")
        d.addErrback(lambda f: log.warn("Vaxine hub: could not write the abort of {origin} attempt {attempt}: {e}",
                                        origin=origin, attempt=attempt, e=f.getErrorMessage()))

    # --- reading: the stream into the local store ------------------------

    async def _read_stream(self):
        while True:
            try:
                batch = await self._wal.next(100)
            except VaxineError:
                return  # closed
            for wal in batch:
                if self._closing or not self._open or self.store_failure is not None:
                    return
                await self._take(wal)

    def _resume(self, offset):
        """The offset to store with an entry taken at `offset`: before the oldest staged chunk, if any."""
        for st in self._stagings.values():
            return st.resume
        return offset

    async def _take(self, wal):
        self._vstats["stream_transactions"] += 1
        previous = self._offset
        try:
            rec = R.parse(wal)
        except D.InvalidWalTransaction as e:
            self._skip(f"{e}")
            self._offset = wal.offset
            return
        self._offset = wal.offset
        if isinstance(rec, R.Whole):
            txn = rec.transaction
            try:
                check_transaction(txn)
            except InvalidTransaction as e:
                self._skip(f"transaction from {txn.origin} at {wal.offset}: {e}")
                self._fire((txn.origin, bytes(txn.origin_id)), Failure(HubError(f"invalid transaction: {e}")))
                return
            meta = {OFFSET_META: offset_to_bytes(self._resume(wal.offset))}
            d = EmbeddedHub._submit_append(self, txn, meta)
            self._track_stored(d, (txn.origin, bytes(txn.origin_id)))
        elif isinstance(rec, R.Chunk):
            key = (rec.origin, rec.attempt)
            st = self._stagings.get(key)
            if st is None:
                if rec.seq != 0:
                    self._skip(f"chunk {rec.seq} of {rec.origin} attempt {rec.attempt} without its first chunk")
                    return
                st = self._stagings[key] = _Staging(rec.origin, rec.attempt, self._spill.open(), previous)
            if rec.seq < st.next_seq or st.broken:
                return  # a chunk written twice (a retried write), or a broken staging
            if rec.seq != st.next_seq:
                st.broken = f"chunk {rec.seq} came after chunk {st.next_seq - 1}"
                return
            try:
                check_transaction(Transaction(rec.origin, b"", 0, rec.changes))
                await self._thread(st._file.write, rec.changes)
            except InvalidTransaction as e:
                st.broken = f"invalid transaction: {e}"
            st.next_seq += 1
            self._vstats["chunks"] += 1
        elif isinstance(rec, R.CommitMark):
            ident = (rec.origin, bytes(rec.origin_id))
            st = self._stagings.pop((rec.origin, rec.attempt), None)
            if st is None and rec.chunks == 0:
                st = _Staging(rec.origin, rec.attempt, self._spill.open(), previous)
            problem = None
            if st is None:
                problem = "its chunks were not seen"
            elif st.broken:
                problem = st.broken
            elif st.next_seq != rec.chunks:
                problem = f"{st.next_seq} of its {rec.chunks} chunks were seen"
            if problem is not None:
                if st is not None:
                    st._file.discard()
                self._skip(f"commit of {rec.origin} {rec.origin_id.hex()} at {wal.offset}: {problem}")
                exc = HubError(problem if problem.startswith("invalid transaction") else
                               f"the transaction could not be assembled from Vaxine: {problem}")
                self._fire(ident, Failure(exc))
                return
            st.origin_id = ident[1]
            meta = {OFFSET_META: offset_to_bytes(self._resume(wal.offset))}
            d = EmbeddedHub._submit_commit(self, st, rec.commit_timestamp, meta)
            self._track_stored(d, ident)
        elif isinstance(rec, R.AbortMark):
            st = self._stagings.pop((rec.origin, rec.attempt), None)
            if st is not None:
                st._file.discard()
        if self._pending >= MAX_PENDING:
            self._drained = defer.Deferred()
            await self._drained

    def _skip(self, why: str):
        self._vstats["skipped"] += 1
        self._last_skip = why
        log.warn("Vaxine hub: skipped a stream transaction: {why}", why=why)

    def _track_stored(self, d, ident):
        self._pending += 1

        def done(result):
            self._pending -= 1
            if isinstance(result, Failure) and result.check(HubError) and "invalid transaction" in str(result.value):
                self._vstats["refused"] += 1
            elif isinstance(result, Failure):
                if self.store_failure is None:
                    self.store_failure = (f"a stream transaction from {ident[0]} could not be stored: "
                                          f"{result.getErrorMessage()}; reading stopped there (restart"
                                          f" Electric once the cause is fixed: it resumes from the stored offset)")
                log.failure("Vaxine hub: a stream transaction could not be stored; the hub stops reading"
                            " Vaxine's stream and is not ready", result)
            self._fire(ident, result)
            if self._drained is not None and self._pending <= MAX_PENDING // 2:
                dr, self._drained = self._drained, None
                dr.callback(None)
            return None

        d.addBoth(done)

    def _fire(self, ident, result):
        for d, want in self._waiters.pop(ident, ()):
            if isinstance(result, Failure):
                d.errback(Failure(result.value))
            elif isinstance(result, want):
                d.callback(result)
            elif want is Committed:  # a whole transaction answered a commit
                d.callback(Committed(result.position, result.origin, result.origin_id, result.commit_timestamp,
                                     len(result.changes), duplicate=True))
            else:  # a big transaction answered an append
                d.callback(ResolvedTransaction(result.position, result.origin, result.origin_id,
                                               result.commit_timestamp, ()))

    # --- status --------------------------------------------------------

    def status(self):
        s = super().status()
        s["hub"] = "vaxine"
        s["vaxine"] = {
            "ready": self.ready,
            "pb": self.pb.status(),
            "stream": self.stream.status() if self.stream is not None else None,
            "offset": repr(self._offset),
            "staged_big_transactions": len(self._stagings),
            "pending": self._pending,
            "last_skipped": self._last_skip,
            "store_failure": self.store_failure,
            **self._vstats,
        }
        return s


__all__ = ["VaxineHub", "OFFSET_META"]
