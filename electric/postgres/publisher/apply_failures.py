"""
Apply failures on port 5433: a database whose apply worker keeps failing on
a change Electric sent is noticed, diagnosed exactly, shown, and can be
helped past the change without losing anything else.

What a failure looks like from here: the subscriber's apply worker hits an
ERROR (a CHECK or NOT NULL violation, a missing table...), its transaction
is rolled back and the worker exits; Postgres starts a new one, which asks
to START_REPLICATION again from its origin progress -- the end of the last
transaction it applied -- and gets the same transaction again.  So a
stream that ends after sending (at least the beginning of) transaction p
without the subscriber having confirmed p, followed by streams that start
at the same place, is a transaction that does not apply.

* `ApplyFailureDetector` (sans-IO, no clock, no sockets) turns the
  publisher's stream events into `Suspect` (the same transaction sent
  `threshold` times, each time ending without its end LSN confirmed) and
  `Recovered` (the subscriber got past it).
* `ApplyFailureMonitor` (a service) runs the detector, diagnoses a suspect by
  replaying the transaction in that database (`electric.postgres.publisher.replay`:
  the connector's credentials, ``session_replication_role = replica``,
  rolled back, a savepoint per change), keeps the verdict for
  ``/api/status`` and ``/api/status/details``, logs it once, and runs the
  quarantine operations (`electric.postgres.publisher.quarantine`): set a
  change aside for that database (the publisher then never sends it there;
  the rest of its transaction and everything after it still go out) and
  re-send set-aside rows later (a hub RESEND of their current state, after
  the operator fixed the database).

Nothing here reads the Postgres server's log.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import psycopg2
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from electric.hub.interface import RESEND, HubError, ResolvedChange, RowChange, Transaction
from electric.hub import positions
from electric.postgres.protocol.lsn import format_lsn
from electric.postgres.publisher.quarantine import QuarantineStore
from electric.postgres.sql import error_text
from electric.postgres.publisher.replay import FailedChange, Inconclusive, Replayer

log = Logger(namespace="electric.postgres.publisher.apply_failures")

THRESHOLD = 2
"""Deliveries of the same transaction ending without its confirmation before it is diagnosed."""

RESEND_ORIGIN = "electric:quarantine"


# --- the detector (sans-IO) ------------------------------------------------------


@dataclass(frozen=True)
class Suspect:
    """`origin`'s subscriber failed `attempts` times on the transaction at `position` (its streams start at `start`)."""

    origin: str
    position: int
    start: int
    attempts: int


@dataclass(frozen=True)
class Recovered:
    """`origin`'s subscriber got past `position` (after a `Suspect` for it)."""

    origin: str
    position: int


class _Watch:
    __slots__ = ("position", "start", "attempts", "reported", "was_reported", "threshold", "gap")

    def __init__(self, position: int, start: int, threshold: int):
        self.position = position
        self.start = start
        self.attempts = 0
        self.reported = False  # a Suspect is out for the current count
        self.was_reported = False  # ... or was, at some point: its end is news (Recovered)
        self.threshold = threshold
        self.gap = threshold  # failures from one report to the next


class ApplyFailureDetector:
    """
    Per origin: the transaction that its subscriber's last streams ended on
    without confirming it, and how many times.  Feed it the publisher's
    events for durable (apply-worker) streams; each call returns the events
    it concluded.

    `stream_ended(origin, start, first_sent, acked, by_electric)`: a stream
    that started at hub position `start` ended; `first_sent` is the first
    transaction it began sending (None: it sent nothing), `acked` the
    position the subscriber confirmed.  A stream Electric itself ended
    (shutdown, timeout) proves nothing.  `stream_started` / `acked` with a
    position past the watched transaction end the watch (`Recovered` if it
    had been reported).  `again(origin)`: a change was set aside, so a
    transaction still failing is reported afresh.  `inconclusive(origin)`: the diagnosis found nothing
    wrong; the watch starts counting again with a doubled threshold, so a
    subscriber that keeps dropping for other reasons costs a replay ever
    more rarely.
    """

    def __init__(self, threshold: int = THRESHOLD):
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self.threshold = threshold
        self._watch: Dict[str, _Watch] = {}

    def watching(self, origin: str) -> Optional[int]:
        w = self._watch.get(origin)
        return w.position if w is not None else None

    def attempts(self, origin: str) -> int:
        w = self._watch.get(origin)
        return w.attempts if w is not None else 0

    def _progress(self, origin: str, position: int) -> list:
        w = self._watch.get(origin)
        if w is None or position < w.position:
            return []
        del self._watch[origin]
        return [Recovered(origin, w.position)] if w.was_reported else []

    def stream_started(self, origin: str, start: int) -> list:
        return self._progress(origin, start)

    def acked(self, origin: str, position: int) -> list:
        return self._progress(origin, position)

    def stream_ended(self, origin: str, start: int, first_sent: Optional[int], acked: int,
                     by_electric: bool = False) -> list:
        out = self._progress(origin, acked)
        if by_electric or first_sent is None or acked >= first_sent:
            return out
        w = self._watch.get(origin)
        if w is not None and w.position != first_sent:
            # Another transaction now: whatever held the old one back is gone.
            del self._watch[origin]
            if w.was_reported:
                out.append(Recovered(origin, w.position))
            w = None
        if w is None:
            w = self._watch[origin] = _Watch(first_sent, start, self.threshold)
        w.start = start
        w.attempts += 1
        if w.attempts >= w.threshold and not w.reported:
            w.reported = w.was_reported = True
            out.append(Suspect(origin, w.position, start, w.attempts))
        return out

    def again(self, origin: str) -> None:
        """Something changed (a change was set aside): count afresh, and report again if it still fails."""
        w = self._watch.get(origin)
        if w is not None:
            w.attempts = 0
            w.reported = False
            w.threshold = w.gap = self.threshold

    def inconclusive(self, origin: str, position: int) -> None:
        w = self._watch.get(origin)
        if w is not None and w.position == position:
            w.reported = False
            w.gap *= 2
            w.threshold = w.attempts + w.gap


# --- the monitor (IO) -------------------------------------------------------------


@dataclass
class Failure:
    """What is known about a transaction `origin`'s apply worker keeps failing on."""

    origin: str
    position: int
    start: int
    attempts: int
    lsn: str
    txn_origin: str = ""
    txn_origin_id: bytes = b""
    commit_timestamp: int = 0
    failed: Sequence[FailedChange] = ()
    failed_total: int = 0
    replayed: int = 0

    def to_json(self) -> dict:
        return {
            "position": self.position, "lsn": self.lsn, "attempts": self.attempts,
            "transaction": {"origin": self.txn_origin, "origin_id": self.txn_origin_id.hex(),
                            "commit_timestamp": self.commit_timestamp},
            "changes_replayed": self.replayed, "failing_changes": self.failed_total,
            "changes": [f.to_json() for f in self.failed],
        }


class QuarantineError(Exception):
    """A quarantine request that cannot be done; `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class ApplyFailureMonitor(service.Service):
    """
    Built with the `config` (CONNECTORS: whose credentials a replay uses),
    the `hub`, the schema `registry`, the `quarantine` store, a `session_for(connector)`
    factory (default: `electric.postgres.source.setup.SetupSession`) and the
    reactor.  The publisher calls `stream_started`, `stream_ended`, `acked`
    and `set_aside`; the HTTP API `problem`, `status`, `quarantine_changes`,
    `resend` and `entries`.
    """

    name = "apply-failures"

    def __init__(self, config, hub, registry, quarantine: QuarantineStore, reactor=None,
                 threshold: int = THRESHOLD, session_for=None):
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.hub = hub
        self.registry = registry
        self.quarantine = quarantine
        self.reactor = reactor
        self.detector = ApplyFailureDetector(threshold)
        self.connectors = {c.name: c for c in config.connectors}
        self._session_for = session_for
        # The publisher's LSN mapping (origin -> base), for showing LSNs; set by the publisher.
        self.base_for: Optional[Callable[[str], int]] = None
        self.failures: Dict[str, Failure] = {}
        self._diagnosing: Dict[str, defer.Deferred] = {}
        self.counters = {"diagnoses": 0, "inconclusive": 0, "quarantined": 0, "resent": 0}
        # Per connector: diagnosed apply failures (a transaction its database's apply worker keeps failing on).
        self.failed_by_origin: Dict[str, int] = {}

    # -- service --------------------------------------------------------------------

    def startService(self):
        super().startService()
        self.quarantine.use_hub(getattr(self.hub, "hub_id", None))

    def stopService(self):
        super().stopService()
        for d in list(self._diagnosing.values()):
            d.cancel()

    # -- the publisher's events ---------------------------------------------------------

    def set_aside(self, origin: str):
        self.quarantine.use_hub(getattr(self.hub, "hub_id", None))
        return self.quarantine.set_aside(origin)

    def stream_started(self, origin: str, start: int) -> None:
        self._handle(self.detector.stream_started(origin, start))

    def acked(self, origin: str, position: int) -> None:
        if self.detector.watching(origin) is not None:
            self._handle(self.detector.acked(origin, position))

    def stream_ended(self, origin: str, start: int, first_sent: Optional[int], acked: int,
                     by_electric: bool) -> None:
        self._handle(self.detector.stream_ended(origin, start, first_sent, acked, by_electric))

    def _handle(self, events) -> None:
        for ev in events:
            if isinstance(ev, Recovered):
                failure = self.failures.pop(ev.origin, None)
                if failure is not None:
                    log.info("its subscription got past hub position {pos}: applying again",
                             connector=ev.origin, pos=ev.position)
            elif isinstance(ev, Suspect) and self.running and ev.origin not in self._diagnosing:
                d = defer.ensureDeferred(self._diagnose(ev))
                self._diagnosing[ev.origin] = d
                d.addErrback(lambda f, o=ev.origin: None if f.check(defer.CancelledError) else log.failure(
                    "diagnosing an apply failure failed", f, connector=o))
                d.addBoth(lambda _, o=ev.origin: self._diagnosing.pop(o, None) and None)

    # -- diagnosis --------------------------------------------------------------------------

    def _session(self, origin: str):
        connector = self.connectors[origin]
        if self._session_for is not None:
            return self._session_for(connector)
        from electric.postgres.source.setup import SetupSession
        return SetupSession(connector, self.reactor)

    async def _transaction(self, start: int, position: int, each) -> Optional[ResolvedChange]:
        """
        Read the transaction at `position` as the stream from `start` sent
        it, item by item (bounded memory), calling `await each(item)`.
        """
        sub = self.hub.subscribe(start)
        try:
            while True:
                items = await sub.next(100)
                for item in items:
                    if item.position < position:
                        continue
                    if item.position > position:
                        return None
                    await each(item)
                    if not item.more:
                        return None
        finally:
            sub.close()

    async def _diagnose(self, ev: Suspect) -> None:
        origin = ev.origin
        if origin not in self.connectors:
            return
        self.counters["diagnoses"] += 1
        base = self._base(origin)
        failure = Failure(origin, ev.position, ev.start, ev.attempts,
                          format_lsn(positions.end_lsn(ev.position, base)) if base is not None else "")
        aside = self.set_aside(origin).get(ev.position, set())
        session = self._session(origin)
        result = None
        try:
            await session.open()
        except Exception as e:
            session.close()
            why = f"cannot connect to replay it: {e}"
        else:
            result = await self._replay(origin, ev, failure, session, aside)
            if isinstance(result, str):
                result, why = None, result
        if self.detector.watching(origin) != ev.position:
            return  # it recovered meanwhile
        if result is None or not result.failed:
            self.counters["inconclusive"] += 1
            self.detector.inconclusive(origin, ev.position)
            log.warn("its subscription stopped {n} times on hub position {pos}, but replaying"
                     " that transaction raised no error ({why}); watching on",
                     connector=origin, n=ev.attempts, pos=ev.position,
                     why=why if result is None else f"{result.changes} changes replayed")
            return
        failure.failed = list(result.failed)
        failure.failed_total = result.failed_total
        failure.replayed = result.changes
        self.failures[origin] = failure
        self.failed_by_origin[origin] = self.failed_by_origin.get(origin, 0) + 1
        first = result.failed[0]
        log.error(
            "its apply worker fails on the transaction at hub position {pos} (LSN {lsn},"
            " from {txn_origin}), sent {n} times: {what}: {error}{more}. It stops this database's replication:"
            " fix the database and it goes on, or set the change aside: POST /api/quarantine/{connector}",
            connector=origin, pos=ev.position, lsn=failure.lsn, txn_origin=failure.txn_origin, n=ev.attempts,
            what=(f"{first.schema}.{first.table} key {list(first.key)}" if first.op != "commit" else "at commit"),
            error=first.message + (f" ({first.detail})" if first.detail else ""),
            more=f" (and {result.failed_total - 1} more changes)" if result.failed_total > 1 else "")

    async def _replay(self, origin: str, ev: Suspect, failure: Failure, session, aside):
        """The rolled-back replay of the suspect transaction: `Replayed`, or why it could not tell."""
        try:
            replayer = Replayer(session, lambda s, t: self.registry.database_table(origin, s, t),
                                lambda ch: (ch.schema, ch.table, tuple(ch.key)) in aside)
            await replayer.begin()

            async def each(item):
                failure.txn_origin, failure.txn_origin_id = item.origin, bytes(item.origin_id)
                failure.commit_timestamp = item.commit_timestamp
                await replayer.feed(item.changes)

            await self._transaction(ev.start, ev.position, each)
            return await replayer.finish()
        except (Inconclusive, HubError) as e:
            try:
                await session.execute("ROLLBACK")
            except Exception:
                pass
            return str(e)
        except psycopg2.Error as e:
            return f"the replay failed: {error_text(e)}"
        finally:
            session.close()

    def _base(self, origin: str) -> Optional[int]:
        return self.base_for(origin) if self.base_for is not None else None

    # -- what the API shows ---------------------------------------------------------------

    def problem(self, origin: str) -> Optional[dict]:
        """The diagnosed apply failure of `origin` (None while it applies)."""
        f = self.failures.get(origin)
        return f.to_json() if f is not None else None

    def status(self) -> dict:
        counts = self.quarantine.counts() if self.quarantine.running else {}
        return {
            **self.counters,
            "threshold": self.detector.threshold,
            "failing": sorted(self.failures),
            "watching": {o: {"position": self.detector.watching(o), "attempts": self.detector.attempts(o)}
                         for o in sorted(self.connectors) if self.detector.watching(o) is not None},
            "quarantine": counts,
        }

    def apply_failures(self, origin: str) -> int:
        """Apply failures diagnosed on `origin`'s database since start (for /metrics)."""
        return self.failed_by_origin.get(origin, 0)

    def entries(self, origin: Optional[str] = None) -> List[dict]:
        return [e.to_json() for e in self.quarantine.entries(origin)]

    # -- the way out ------------------------------------------------------------------------

    async def quarantine_changes(self, origin: str, position: Optional[int] = None, schema: Optional[str] = None,
                                 table: Optional[str] = None, key: Optional[Sequence] = None) -> List[dict]:
        """
        Set changes aside for `origin`: without arguments, every failing change
        of its diagnosed failure; else the one change (position, schema,
        table, key), read from the hub with its full row.
        """
        if origin not in self.connectors:
            raise QuarantineError(f"no connector named {origin!r}", 404)
        self._use_hub()
        failure = self.failures.get(origin)
        out = []
        if position is None:
            if failure is None:
                raise QuarantineError(f"connector {origin} has no diagnosed apply failure; name the change:"
                                      ' {"position": ..., "schema": ..., "table": ..., "key": [...]}', 409)
            if any(f.op == "commit" for f in failure.failed):
                raise QuarantineError("the failure is a deferred constraint at commit, not one change: fix the"
                                      " database", 409)
            for f in failure.failed:
                out.append(self._add(origin, failure.position, failure.txn_origin, failure.txn_origin_id,
                                     failure.commit_timestamp, f.schema, f.table, f.key,
                                     "delete" if f.op == "delete" else "upsert", dict(f.row), f.error_json()))
            self.detector.again(origin)
            if failure.failed_total > len(failure.failed):
                log.warn("{n} more failing changes at position {pos} than the diagnosis kept;"
                         " they will be diagnosed next", connector=origin, n=failure.failed_total - len(failure.failed),
                         pos=failure.position)
            return out
        if schema is None or table is None or key is None:
            raise QuarantineError("position, schema, table and key are required together")
        key = tuple(None if k is None else str(k) for k in key)
        error = {}
        if failure is not None and failure.position == position:
            for f in failure.failed:
                if (f.schema, f.table, tuple(f.key)) == (schema, table, key):
                    error = f.error_json()
        try:
            head = self.hub.head()
        except HubError as e:
            raise QuarantineError(f"the hub is not available: {e}", 503)
        if position > head:
            raise QuarantineError(f"hub position {position} does not exist yet (the hub is at {head})", 404)
        found = {}

        async def each(item):
            for ch in item.changes:
                if (ch.schema, ch.table, tuple(ch.key)) == (schema, table, key):
                    found.update(change=ch, item=item)

        try:
            await self._transaction(max(0, position - 1), position, each)
        except HubError as e:
            raise QuarantineError(f"cannot read hub position {position}: {e}", 503)
        if not found:
            raise QuarantineError(f"hub position {position} has no change of {schema}.{table} key {list(key)}", 404)
        ch, item = found["change"], found["item"]
        out.append(self._add(origin, position, item.origin, bytes(item.origin_id), item.commit_timestamp,
                             schema, table, key, "delete" if ch.deleted else "upsert", dict(ch.row), error))
        self.detector.again(origin)
        return out

    def _use_hub(self) -> None:
        """Quarantine entries name positions of this hub's data: no hub, no entries."""
        hub_id = getattr(self.hub, "hub_id", None)
        if not hub_id or not self.quarantine.running:
            raise QuarantineError("the hub is not running", 503)
        self.quarantine.use_hub(hub_id)

    def _add(self, origin, position, txn_origin, txn_origin_id, ts, schema, table, key, op, row, error) -> dict:
        entry = self.quarantine.add(origin, position, schema, table, key, op, row, txn_origin, txn_origin_id, ts,
                                    error)
        self.counters["quarantined"] += 1
        log.warn("change set aside (quarantine entry {id}): hub position {pos} {schema}.{table}"
                 " key {key}; the rest of the transaction and everything after it go on",
                 connector=origin, id=entry.id, pos=position, schema=schema, table=table, key=list(key))
        return entry.to_json()

    async def resend(self, origin: str, ids: Optional[Iterable[int]] = None) -> dict:
        """
        Re-send the rows of held entries (all of `origin`'s, or these ids):
        one hub transaction of RESEND changes, which sends each row's
        current state to every replica again.
        """
        if origin not in self.connectors:
            raise QuarantineError(f"no connector named {origin!r}", 404)
        self._use_hub()
        entries = self.quarantine.entries(origin, ids)
        if ids is not None:
            missing = sorted(set(ids) - {e.id for e in entries})
            if missing:
                raise QuarantineError(f"connector {origin} has no quarantine entries {missing}", 404)
        entries = [e for e in entries if e.held]
        if not entries:
            return {"resent": [], "position": None}
        rows = {}
        for e in entries:
            rows.setdefault((e.schema, e.table, e.key), e)
        txn = Transaction(
            origin=RESEND_ORIGIN, origin_id=f"{origin}:{uuid.uuid4()}".encode(),
            commit_timestamp=int(self.reactor.seconds() * 1_000_000),
            changes=tuple(RowChange(s, t, RESEND, k) for (s, t, k) in rows))
        try:
            resolved = await self.hub.append(txn)
        except HubError as e:
            raise QuarantineError(f"the hub did not take the re-send: {e}", 503)
        self.quarantine.mark_resent([e.id for e in entries], resolved.position)
        self.counters["resent"] += len(entries)
        log.info("re-sent {n} set-aside rows at hub position {pos} (quarantine entries {ids})",
                 connector=origin, n=len(rows), pos=resolved.position, ids=[e.id for e in entries])
        return {"resent": [e.id for e in entries], "position": resolved.position}
