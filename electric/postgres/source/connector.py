"""
One connector (one Postgres in CONNECTORS) as a long-lived Service.

State machine::

    init ─► setup ─► [importing] ─► streaming ─► ready
              ▲  │          │               │  (subscription enabled + refreshed)
              │  ▼          ▼               ▼
              backoff ◄─────┴───────────────┘  (any failure; the reason is kept)

* ``setup``: `electric.postgres.source.setup.run_setup` (publication, slot,
  introspection, triggers, subscription), then the replication connection.
* ``importing``: the slot was just created (first start, a database added
  to CONNECTORS, an interrupted import redone) or a table became replicable:
  the rows the database already holds are copied into the hub in the
  slot's exported snapshot before the stream starts
  (`electric.postgres.source.importer`); not ready meanwhile.
* ``streaming``: the stream is live; `ready` is True from here on, and only
  while the stream stays up.
* ``ready``: additionally the subscription back to Electric is enabled and
  refreshed (done once `publisher_ready` fired, i.e. the port-5433 publisher
  can serve this Postgres; retried with backoff on its own).
* ``backoff``: waiting 1 s, doubling to 10 s, plus up to 1 s of jitter
  (Twisted's `backoffPolicy`), then setup again.  A stream that came up
  resets the delay, so a restarted Postgres is back in ~1-2 s.

Every error kept for ``/api/status/details`` (``last_error``) and logged
starts with ``connector <name>:``; failures to connect name the sslmode.

Data path: XLogData → pgoutput decode → `TransactionAssembler` →
`hub.append` (pipelined, in commit order) → `AckTracker` → standby status
update.  A transaction bigger than one chunk goes to the hub as it arrives:
`hub.begin`, one `add` per chunk with the socket paused while an add is
outstanding, `commit` at its Commit (one hub position, atomically).  The flush position only covers transactions the hub made durable;
on any error the connection is dropped and Postgres resends from there (the
hub drops the duplicates by (origin, commit end LSN)).
"""

from __future__ import annotations

from collections import deque
from typing import Awaitable, Callable, Dict, Optional, Tuple

from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from electric.hub import positions
from electric.hub.interface import OriginApplied, Transaction
from electric.logs import bind
from electric.postgres.source import assembly
from electric.postgres.source import importer
from electric.postgres.protocol import pgoutput
from electric.postgres.source import replication
from electric.postgres.source import setup
from electric.postgres.protocol.lsn import format_lsn, parse_lsn
from electric.metrics import seconds_since
from electric.schema import Table

log = Logger(namespace="electric.postgres.source.connector")

_BEGIN, _COMMIT, _ORIGIN = b"BCO"
_ROW_TAGS = frozenset(b"IUDT")  # the pgoutput messages that carry rows

# Appends handed to the hub and not yet durable.  The hub writer stores a
# commit group's small appends together, so it keeps up with thousands in
# flight; the row count is what bounds memory.
MAX_INFLIGHT_TRANSACTIONS = 5000
MAX_INFLIGHT_ROWS = 20_000
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 10.0
READY_CHECK_INTERVAL = 2.0
"""Seconds between looks at which tables the subscription has in steady state, while some are not."""


def retry_policy(jitter: Optional[Callable[[], float]] = None) -> Callable[[int], float]:
    """
    Seconds to wait before retry number `attempt` (0 first): 1 s doubling to
    10 s, plus `jitter()` (default: up to 1 s at random) so connectors and
    Electric instances restarted together do not hit a database in step.
    """
    kwargs = {} if jitter is None else {"jitter": jitter}
    return backoffPolicy(initialDelay=FIRST_BACKOFF, maxDelay=MAX_BACKOFF, factor=2.0, **kwargs)


class InboundCounters:
    """
    What one connector took from its database since Electric started, over
    every replication connection (a `_Stream` lives for one): plain integers
    bumped on the data path, read by `ConnectorService.metrics`.
    """

    __slots__ = ("transactions", "rows", "dropped", "received_bytes", "append_failures")

    def __init__(self):
        self.transactions = 0  # appended to the hub and durable
        self.rows = 0  # row changes in those
        self.dropped = 0  # read and not forwarded (own origin, bookkeeping tables, empty)
        self.received_bytes = 0  # pgoutput payload bytes
        self.append_failures = 0  # hub appends that failed (the stream is then dropped and resumed)


class _Stream:
    """
    The consumer side of one replication connection.

    Gets what it needs when built: the connector's `name` (logs), the `hub`
    it appends to, the connector's `assembler` (reset here: a new connection
    resends from the flushed position), `resolve_table(schema, name)`
    (a coroutine asking the catalog about a table) and `on_error(text)`,
    told once why the stream failed, and the connector's `counters`.  Its
    own `acks.flushed` is the flush position the connector reports.
    """

    def __init__(self, name: str, hub, assembler: assembly.TransactionAssembler,
                 resolve_table: Callable[[str, str], Awaitable], on_error: Callable[[str], None],
                 flushed: int, counters: Optional[InboundCounters] = None, reactor=None, echo=None,
                 subscription_oid: Optional[int] = None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.report_due = False  # a status update is scheduled for the end of this reactor turn
        self.name = name
        self.counters = counters if counters is not None else InboundCounters()
        self.hub = hub
        self.echo = echo  # electric.postgres.echo.EchoLedger, or None: the hub gets no OriginApplied
        self.subscription_oid = subscription_oid
        self.hinted = 0  # transactions handed over with an OriginApplied
        self.assembler = assembler
        self.assembler.reset()
        self.resolve_table = resolve_table
        self.log = bind(log, connector=name)
        self.on_error = on_error
        self.decoder = pgoutput.PgoutputDecoder(1)
        self.acks = assembly.AckTracker(flushed)
        self.client: Optional[replication.ReplicationClient] = None
        self.queue = deque()
        self.waiting = False
        self.inflight_tx = 0
        self.inflight_rows = 0
        self.paused_for = set()
        self.closed = False
        self.appended = 0
        self.dropped = 0
        self.flow_pauses = 0
        self.buffer = None  # the hub append buffer of the open big transaction
        self.buffer_rows = 0  # row changes staged in it so far
        self.big_transactions = 0
        self.staged_rows = 0
        self.add_pauses = 0
        self.ops = deque()  # (buffer, operation, changes) waiting to run, one at a time
        self.op_busy = False
        self.ops_full = False  # an operation waits behind the running one: reading stops
        self.skipping = False  # in a transaction of our own origin: row changes are not decoded
        self.skipped_changes = 0
        self.held = 0  # > 0 while an import of a newly replicable table runs

    def hold(self) -> None:
        """Process nothing more until `release` (a mid-stream import must commit first)."""
        self.held += 1
        self._pause("import")

    def release(self) -> None:
        self.held -= 1
        if self.held == 0 and not self.closed:
            self._resume("import")
            if not self.waiting:
                self.drain()

    # IStreamConsumer

    def stream_started(self, client):
        self.client = client
        if self.closed:
            # Stopped while connecting (libpq's second attempt, say): let go at once.
            client.close("connector stopped")
            return
        # Report where we stand at once, like pg_recvlogical does.
        client.send_status(self.acks.flushed)

    def xlog_data(self, wal_start, wal_end, data):
        if self.closed:
            return
        self.counters.received_bytes += len(data)
        tag = data[0] if data else 0
        if self.skipping:
            # Inside a transaction the assembler will drop whole (Electric's
            # own subscription applied it): its row changes are not even
            # decoded.  Everything else (Relation above all) still is.
            if tag in _ROW_TAGS:
                self.skipped_changes += 1
                return
        try:
            msg = self.decoder.decode(data)
        except pgoutput.PgoutputError as e:
            self.fail(f"cannot decode pgoutput at {format_lsn(wal_end)}: {e}")
            return
        if tag == _ORIGIN:
            self.skipping = self.assembler.is_own_origin(msg.name) and self.decoder.stream_xid is None
        elif tag == _BEGIN or tag == _COMMIT:
            self.skipping = False
        if self.waiting or self.ops_full or self.held or self.queue:
            self.queue.append(msg)
            self.drain()
        else:
            self._feed(msg)

    def keepalive(self, wal_end):
        if not self.queue and not self.waiting and not self.held and not self.assembler.in_transaction:
            self.acks.idle_advance(wal_end)
        return self.acks.flushed

    # processing

    def drain(self):
        while self.queue and not self.waiting and not self.ops_full and not self.held and not self.closed:
            self._feed(self.queue.popleft())

    def _feed(self, msg):
        """One decoded message into the assembler, and whatever it completes to the hub."""
        try:
            event = self.assembler.feed(msg)
        except assembly.InboundError as e:
            self.fail(str(e))
            return
        if event is None:
            return
        if isinstance(event, assembly.Assembled) and self.echo is not None and self.assembler.applied_lsn:
            # Also after our own subscription's transactions, whose row changes
            # `xlog_data` skips undecoded: their Origin and Commit still come here.
            self.echo.saw_applied(self.name, self.subscription_oid, self.assembler.applied_lsn)
        if isinstance(event, assembly.NeedTable):
            self.waiting = True
            self._pause("lookup")
            d = defer.ensureDeferred(self.resolve_table(event.schema, event.name))
            d.addCallbacks(self._resolved, self._resolve_failed)
            return
        if isinstance(event, assembly.Chunk):
            if self.buffer is None:
                self.buffer = self.hub.begin(self.name)
                self.buffer_rows = 0
                self.big_transactions += 1
            self.buffer_rows += len(event.changes)
            self._add(self.buffer, event.changes)
            return
        if event.chunked:
            self._committed_chunked(event)
            return
        self._committed(event)

    def _origin_applied(self, event: assembly.Assembled) -> Optional[OriginApplied]:
        """What the database had applied of Electric's stream before this commit, as the hub takes it."""
        lsn = event.applied_lsn
        if lsn is None or self.echo is None or self.subscription_oid is None:
            return None
        base = self.echo.base_for(self.name)
        marker = self.echo.marker(self.name, base)
        if marker is None or marker != f"pg_{self.subscription_oid}@{base:x}":
            return None
        position = positions.position_for_lsn(lsn, base)
        if position > self.hub.head():
            return None  # an LSN this hub never issued: say nothing
        self.hinted += 1
        return OriginApplied(marker, position)

    # -- big transactions: staged in the hub chunk by chunk ---------------------
    #
    # The buffer's operations (add, add, ..., then commit or abort) run one
    # after another, as IAppendBuffer requires, from `self.ops`.  Reading
    # goes on while one is outstanding, so the next chunk is decoded and
    # assembled while the hub stages the previous one; it stops (the socket
    # is paused) only when a second operation would have to wait, so at most
    # two chunks are held.

    def _stage(self, buffer, op, changes=None) -> None:
        """Queue `op()` (returning a Deferred) for `buffer`; `changes` are counted as staged when it is done."""
        self.ops.append((buffer, op, changes))
        if self.op_busy:
            if not self.ops_full:
                self.ops_full = True
                self.add_pauses += 1
                self._pause("add")
        else:
            self._next_op()

    def _next_op(self) -> None:
        if self.closed:
            return
        if not self.ops:
            self.op_busy = False
            return
        buffer, op, changes = self.ops.popleft()
        self.op_busy = True
        if not self.ops and self.ops_full:
            # Room again: read on while this one runs.
            self.ops_full = False
            self._resume("add")
        try:
            d = op()
        except Exception:
            d = defer.fail()

        def done(_):
            if self.closed:
                return
            if changes is not None:
                self.staged_rows += len(changes)
            self._next_op()
            self.drain()

        def failed(failure):
            if not self.closed:
                self.fail(f"hub could not stage a transaction: {failure.getErrorMessage()}")

        d.addCallbacks(done, failed)

    def _add(self, buffer, changes) -> None:
        self._stage(buffer, lambda: buffer.add(changes), changes)

    def _committed_chunked(self, event: assembly.Assembled) -> None:
        """The Commit of a big transaction: stage its last changes, then commit it as one hub position."""
        buffer, self.buffer = self.buffer, None
        if event.transaction is None:
            # Dropped after all (it touched Electric's bookkeeping): nothing of it may reach the hub.
            self.dropped += 1
            self.counters.dropped += 1
            self.acks.add(event.end_lsn, done=True)
            self._report()
            self.buffer_rows = 0
            self._stage(buffer, lambda: buffer.abort())
            return
        txn = event.transaction
        entry = self.acks.add(event.end_lsn, commit_timestamp=txn.commit_timestamp)
        # Every row change of the transaction (the staged chunks' and these
        # last ones), for the rows-in count; none of them is held in memory
        # any more (they are staged in the hub), so none counts in flight.
        rows = self.buffer_rows + len(txn.changes)
        self.buffer_rows = 0

        def commit():
            self.inflight_tx += 1
            try:
                applied = self._origin_applied(event)
                if applied is None:
                    d = buffer.commit(txn.commit_timestamp, origin_id=txn.origin_id)
                else:
                    d = buffer.commit(txn.commit_timestamp, origin_id=txn.origin_id, origin_applied=applied)
            except Exception:
                d = defer.fail()
            d.addCallbacks(self._appended, self._append_failed,
                           callbackArgs=(entry, rows, 0), errbackArgs=(entry, 0, event.end_lsn))
            return defer.succeed(None)  # the next operation need not wait for durability

        if txn.changes:
            self._add(buffer, txn.changes)
        self._stage(buffer, commit)

    def _resolved(self, result):
        table, skipped = result
        if self.closed:
            return
        self.assembler.table_resolved(table, skipped)
        self.waiting = False
        self._resume("lookup")
        self.drain()

    def _resolve_failed(self, failure):
        self.fail(f"catalog lookup failed: {setup.error_text(failure)}")

    def _committed(self, event: assembly.Assembled):
        if event.transaction is None:
            self.dropped += 1
            self.counters.dropped += 1
            self.acks.add(event.end_lsn, done=True)
            self._report()
            return
        entry = self.acks.add(event.end_lsn, commit_timestamp=event.transaction.commit_timestamp)
        rows = event.rows
        self.inflight_tx += 1
        self.inflight_rows += rows
        if self.inflight_tx > MAX_INFLIGHT_TRANSACTIONS or self.inflight_rows > MAX_INFLIGHT_ROWS:
            if "flow" not in self.paused_for:
                self.flow_pauses += 1
            self._pause("flow")
        try:
            txn = event.transaction
            applied = self._origin_applied(event)
            if applied is not None:
                txn = Transaction(txn.origin, txn.origin_id, txn.commit_timestamp, txn.changes, applied)
            d = self.hub.append(txn)
        except Exception:
            d = defer.fail()
        d.addCallbacks(self._appended, self._append_failed,
                       callbackArgs=(entry, rows, rows), errbackArgs=(entry, rows, event.end_lsn))

    def _appended(self, _result, entry, rows, held):
        """The hub made a transaction of `rows` row changes durable; `held` of them counted in flight."""
        self.inflight_tx -= 1
        self.inflight_rows -= held
        self.appended += 1
        self.counters.transactions += 1
        self.counters.rows += rows
        if self.closed:
            return
        if self.acks.done(entry):
            self._report()
        if self.inflight_tx <= MAX_INFLIGHT_TRANSACTIONS // 2 and self.inflight_rows <= MAX_INFLIGHT_ROWS // 2:
            self._resume("flow")

    def _append_failed(self, failure, entry, held, end_lsn):
        self.inflight_tx -= 1
        self.inflight_rows -= held
        self.counters.append_failures += 1
        if self.closed:
            return
        self.log.error("hub append of the transaction ending at {lsn} failed: {error}; reconnecting",
                       lsn=format_lsn(end_lsn), error=failure.getErrorMessage())
        self.fail(f"hub append failed: {failure.getErrorMessage()}")

    def _report(self):
        """
        Tell Postgres the new flush position, once per reactor turn however
        many transactions completed in it (a hub commit group completes
        hundreds at once).
        """
        if self.client is not None and not self.closed and not self.report_due:
            self.report_due = True
            self.reactor.callLater(0, self._send_report)

    def _send_report(self):
        self.report_due = False
        if self.client is not None and not self.closed:
            self.client.send_status(self.acks.flushed)

    def _pause(self, why):
        self.paused_for.add(why)
        if self.client is not None:
            self.client.pause()

    def _resume(self, why):
        self.paused_for.discard(why)
        if not self.paused_for and self.client is not None:
            self.client.resume()

    def _discard_buffer(self) -> None:
        buffers = {id(b): b for b, _, _ in self.ops}
        self.ops.clear()
        if self.buffer is not None:
            buffers[id(self.buffer)] = self.buffer
        self.buffer = None
        self.buffer_rows = 0
        for buffer in buffers.values():
            try:
                buffer.abort().addErrback(lambda f: None)
            except Exception:
                pass

    def fail(self, text: str):
        if self.closed:
            return
        self.closed = True
        self._discard_buffer()
        self.on_error(text)
        self.log.error("replication stream error: {error}", error=text)
        if self.client is not None:
            self.client.close(text)

    def stop(self):
        self.closed = True
        self._discard_buffer()
        if self.client is not None:
            self.client.close("connector stopped")


class _NoStream:
    """The consumer of a temporary slot taken only for its snapshot: it never streams."""

    def stream_started(self, client):
        client.close("a snapshot slot does not stream")

    def xlog_data(self, wal_start, wal_end, data):
        pass

    def keepalive(self, wal_end):
        return 0


def _temporary_slot_name(slot: str) -> str:
    """Slot names are at most 63 characters of [a-z0-9_]."""
    return (slot[:50] + "_import")[:63]


class ConnectorService(Service):
    """
    One database in CONNECTORS.  Everything it uses is given here: the
    `config` (publication, slot, ELECTRIC_HOST for the subscription), its
    `connector`, the `hub` it appends to, the schema `registry` it fills,
    the subscriber `credentials` it writes into the subscription, and
    `publisher_ready`: None (enable the subscription as soon as streaming),
    a Deferred, or a callable returning one (e.g.
    `PublisherService.when_listening`) — fired when Electric's port-5433
    publisher can serve this connector's subscription.  `clock` (default:
    the reactor) times the retries, `retry_delay(attempt)` spaces them
    (default `retry_policy()`); tests give a `task.Clock` and a fixed jitter.
    `echo` (the publisher's `electric.postgres.echo.EchoLedger`, or None:
    every transaction goes back to this database) is told what the database
    had applied, so the hub can decide which rows need no echo; the
    connector also tracks which tables the subscription has in steady state
    (READY in pg_subscription_rel, and since which WAL position), since
    only those count.
    """

    def __init__(self, config, connector, hub, registry, credentials, publisher_ready=None, reactor=None,
                 clock=None, retry_delay: Optional[Callable[[int], float]] = None, echo=None):
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.connector = connector
        self.hub = hub
        self.registry = registry
        self.credentials = credentials
        self.publisher_ready = publisher_ready
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.retry_delay = retry_delay if retry_delay is not None else retry_policy()
        self.name = f"connector:{connector.name}"
        self.log = bind(log, connector=connector.name)
        self.phase = "init"
        self.subscription_enabled = False
        self.subscription_oid: Optional[int] = None
        self.tables: Dict[Tuple[str, str], Table] = {}
        self.skipped: Dict[Tuple[str, str], str] = {}
        self._logged_skips = set()
        self._oids: Dict[Tuple[str, str], int] = {}
        self._last_error: Optional[str] = None
        self._stream: Optional[_Stream] = None
        self._stopping = False
        self._sleep: Optional[defer.Deferred] = None
        self._loop: Optional[defer.Deferred] = None
        self._enabler: Optional[defer.Deferred] = None
        self._sleep_enable: Optional[defer.Deferred] = None
        self._failures = 0  # setup/stream failures since the stream was last up
        self.echo = echo
        # relid -> WAL insert position after which the subscription had it READY.
        self._ready: Dict[int, int] = {}
        self._ready_loop: Optional[LoopingCall] = None
        self._ready_check: Optional[defer.Deferred] = None
        self.assembler = assembly.TransactionAssembler(connector.name, self._lookup,
                                                       trusted=self._trusted if echo is not None else None)
        self.counters = InboundCounters()
        # Failures since start by kind (see `metrics`).
        self.failures = {"setup": 0, "connect": 0, "stream": 0, "subscription": 0, "internal": 0}
        self.imports = importer.ImportState(config.data_dir, connector.name)
        self._importing: Optional[importer.ImportProgress] = None
        self._last_import: Optional[importer.ImportProgress] = None
        self._imported_rows = 0  # rows of the imports this process committed to the hub
        self._import_sessions = set()  # SQL sessions and slot connections of the running import
        self._import_lock = defer.DeferredLock()

    # -- status --

    @property
    def ready(self) -> bool:
        """True only while the replication stream is live (never while importing) and the hub takes writes (`IHub.ready`)."""
        s = self._stream
        return (self._importing is None and s is not None and not s.closed and s.client is not None
                and s.client.state == "streaming" and bool(getattr(self.hub, "ready", True)))

    @property
    def state(self) -> str:
        if self._importing is not None:
            return "importing"
        if self.ready:
            return "ready" if self.subscription_enabled else "streaming"
        return self.phase

    def status(self) -> dict:
        s = self._stream
        return {
            "connector": self.connector.name,
            "state": self.state,
            "ready": self.ready,
            "last_error": self._last_error,
            "skipped_tables": [
                {"schema": k[0], "table": k[1], "reason": r} for k, r in sorted(self.skipped.items())
            ],
            "subscription_enabled": self.subscription_enabled,
            "sslmode": self.connector.tls.mode,
            "stream_encrypted": s.client.encrypted if s is not None and s.client is not None and self.ready else None,
            "flushed_lsn": format_lsn(s.acks.flushed if s is not None else 0),
            "received_lsn": format_lsn(s.client.last_received) if s is not None and s.client is not None else None,
            "transactions_appended": s.appended if s is not None else 0,
            "transactions_dropped": s.dropped if s is not None else 0,
            "big_transactions": s.big_transactions if s is not None else 0,
            "appends_in_flight": s.inflight_tx if s is not None else 0,
            "echo": None if self.echo is None else {
                **self.echo.status(self.connector.name),
                "transactions_with_applied_position": s.hinted if s is not None else 0,
                "tables_ready": len(self._ready),
            },
            "import": self._import_status(),
        }

    def _import_status(self):
        """The running import, else the last one this process ran (None if none)."""
        p = self._importing or self._last_import
        return p.status() if p is not None else None

    def metrics(self) -> dict:
        """
        Plain numbers for /metrics (`electric.metrics`), counted since start
        over every replication connection: `state`; `transactions` and
        `rows` the hub made durable, `transactions_dropped`,
        `received_bytes` (pgoutput); while streaming, `appends_in_flight`,
        `lag_bytes` (received LSN - flushed LSN) and `lag_seconds` (since the
        commit of the oldest transaction received and not yet durable; 0 when
        none is); and `errors` by kind: ``connector_setup`` (set-up of the
        database failed), ``connector_connect`` (the replication connection
        could not be opened), ``connector_stream`` (a live stream ended),
        ``connector_hub_append`` (the hub failed an append),
        ``connector_subscription`` (enabling the subscription back to
        Electric failed), ``connector_internal``.

        ``import_rows``: existing rows the imports of this process committed
        to the hub; ``import_progress`` (0 to 1, present once an import ran):
        the running import's rows done over its estimate (at most 0.99 until
        it commits), 1 once it is done.

        Keys for figures this build does not measure yet are left out (the
        apply worker's failures: ``apply_failures``), never reported as 0.
        """
        c = self.counters
        out = {
            "state": self.state,
            "transactions": c.transactions,
            "rows": c.rows,
            "transactions_dropped": c.dropped,
            "received_bytes": c.received_bytes,
            "errors": {f"connector_{kind}": n for kind, n in self.failures.items()},
        }
        out["errors"]["connector_hub_append"] = c.append_failures
        out["import_rows"] = self._imported_rows
        progress = self._import_progress_ratio()
        if progress is not None:
            out["import_progress"] = progress
        s = self._stream
        if self.ready:
            out["appends_in_flight"] = s.inflight_tx
            out["lag_bytes"] = max(0, s.client.last_received - s.acks.flushed)
            oldest = s.acks.oldest_pending_commit
            if oldest is None:
                oldest = self.assembler.open_commit_timestamp
            out["lag_seconds"] = 0.0 if oldest is None else seconds_since(self.clock.seconds(), oldest)
        return out

    def _import_progress_ratio(self) -> Optional[float]:
        p = self._importing
        if p is None:
            last = self._last_import
            return None if last is None else (1.0 if last.state == "done" else 0.0)
        est = p.rows_estimated
        if not est:
            return 0.0
        return min(0.99, p.rows_done / est)

    # -- Service --

    def startService(self):
        super().startService()
        self._stopping = False
        self._loop = defer.ensureDeferred(self._run())
        self._loop.addErrback(lambda f: self.log.failure("loop crashed", f))

    def stopService(self):
        super().stopService()
        self._stopping = True
        if self._ready_loop is not None and self._ready_loop.running:
            self._ready_loop.stop()
        if self._sleep is not None and not self._sleep.called:
            self._sleep.cancel()
        for d in (self._enabler, self._sleep_enable):
            if d is not None and not d.called:
                d.cancel()
        if self._stream is not None:
            self._stream.stop()
        for closable in list(self._import_sessions):
            closable.close()
        loop = self._loop
        if loop is None or loop.called:
            return defer.succeed(None)
        done = defer.Deferred()
        loop.addBoth(lambda _: done.callback(None))
        return done

    # -- the loop --

    async def _run(self):
        while not self._stopping:
            try:
                await self._setup_and_stream()
            except defer.CancelledError:
                if self._stopping:
                    break
            except Exception as e:
                if self._stopping:
                    break
                if not isinstance(e, (setup.SetupError, replication.ReplicationError)):
                    self.failures["internal"] += 1
                self._set_error(self._describe(e))
            if self._stopping:
                break
            self.phase = "backoff"
            delay = self.retry_delay(self._failures)
            self._failures += 1
            self.log.info("retrying in {delay:.1f} s", delay=delay)
            self._sleep = deferLater(self.clock, delay, lambda: None)
            try:
                await self._sleep
            except defer.CancelledError:
                break
        self.phase = "stopped"

    def _set_error(self, text: str) -> None:
        """Keep `text` for the status API and log it, both naming this connector."""
        self._last_error = f"connector {self.connector.name}: {text}"
        self.log.error("{error}", error=text)

    def _stream_failed(self, text: str) -> None:
        # _Stream.fail logs it already.
        self._last_error = f"connector {self.connector.name}: replication stream error: {text}"

    def _describe(self, e: Exception) -> str:
        if isinstance(e, (setup.SetupError, replication.ReplicationError)):
            return str(e)
        return f"{type(e).__name__}: {setup.error_text(e)}"

    async def _setup_and_stream(self):
        self.phase = "setup"
        try:
            result = await setup.run_setup(self.config, self.connector, self.credentials, self.reactor,
                                           create_slot=False)
        except Exception as e:
            if not self._stopping:
                self.failures["setup"] += 1
            raise setup.SetupError(f"setup failed: {self._describe(e)}") from e
        if self._stopping:
            return
        self._apply_introspection(result.introspection, replace=True)
        if self.subscription_oid != result.subscription_oid:
            self._ready = {}  # another subscription: nothing known about its tables
        self.subscription_oid = result.subscription_oid
        self.assembler.set_subscription_oid(result.subscription_oid)
        if self.echo is not None:
            self.echo.subscription(self.connector.name, result.subscription_oid)
        slot = self.config.slot_for(self.connector)
        confirmed = result.slot_confirmed_lsn
        create = await self._import_bookkeeping(slot, confirmed)
        if self._stopping:
            return
        if not create:
            # Tables that became replicable while Electric was away.
            await self._import_new_tables(list(self.tables.values()))
            if self._stopping:
                return
        self.assembler.set_horizons(self.imports.horizons)
        stream = _Stream(self.connector.name, self.hub, self.assembler, self._resolve_table,
                         self._stream_failed, confirmed or 0, self.counters, reactor=self.reactor,
                         echo=self.echo, subscription_oid=result.subscription_oid)
        client = replication.ReplicationClient(
            self.connector.user, self.connector.password, self.connector.database,
            slot, self.config.publication, stream, label=self.connector.name,
            tls=self.connector.tls, create_slot=create,
        )
        stream.client = client
        self._stream = stream
        timeout = max(1.0, self.connector.connect_timeout_ms / 1000.0)
        try:
            # Under sslmode prefer/allow this may be the client of a second attempt.
            client = await replication.connect(self.reactor, self.connector.host, self.connector.port, client,
                                               timeout)
        except replication.ReplicationError as e:
            stream.closed = True
            if not self._stopping:
                self.failures["connect"] += 1
            raise replication.ReplicationError(f"replication connection failed: {e}") from e
        if create:
            created = client.created
            stream.acks.flushed = confirmed = created.consistent_point
            try:
                await self._initial_import(slot, created)
            except BaseException:
                stream.closed = True
                client.close("import failed")
                raise
            if self._stopping:
                client.close("connector stopped")
                return
            client.start_streaming()
        self.log.info("streaming from slot {pg_slot} (confirmed {lsn}, {tls})",
                      pg_slot=slot, lsn=format_lsn(confirmed or 0),
                      tls="TLS" if client.encrypted else "no TLS")
        self._failures = 0
        self._last_error = None
        if not self.subscription_enabled and (self._enabler is None or self._enabler.called):
            self._enabler = defer.ensureDeferred(self._enable_when_ready())
        reason = await client.done
        stream.closed = True
        if self._stopping:
            return
        self.failures["stream"] += 1
        raise replication.ReplicationError(f"replication stream ended: {client.error or reason}")

    # -- importing the rows a database already holds --

    async def _import_bookkeeping(self, slot: str, confirmed: Optional[int]) -> bool:
        """
        Decide from the slot and the durable `ImportState` whether the slot
        must be created (and the database imported); finish or undo an import
        a crash interrupted.  True: create the slot and import.
        """
        state = self.imports.load()
        name = self.connector.name
        if confirmed is None:
            if state.pending is not None or state.known:
                self.log.info("replication slot {slot} is gone; creating it and importing the "
                         "database's rows again", connector=name, slot=slot)
            self._start_initial(state)
            return True
        pending = state.pending
        if pending is not None and pending.get("kind") == "initial":
            # Nothing streams before the import commits, so the slot's confirmed
            # position is still its consistent point.
            position = await self.hub.applied(name, importer.import_origin_id(confirmed))
            if position is not None:
                self.log.info("the import at {lsn} is in the hub (position {position})",
                         connector=name, lsn=format_lsn(confirmed), position=position)
                state.pending = None
                state.known = set(self.tables)
                state.save()
                return False
            self.log.warn("the import into slot {slot} was interrupted; its snapshot died with "
                     "it, so the slot is dropped and created again and the import redone",
                     connector=name, slot=slot)
            session = setup.SetupSession(self.connector, self.reactor)
            await session.open()
            try:
                await session.drop_slot(slot)
            finally:
                session.close()
            self._start_initial(state)
            return True
        if pending is not None and pending.get("kind") == "tables":
            point = int(pending["point"])
            tables = [tuple(t) for t in pending.get("tables", ())]
            position = await self.hub.applied(name, importer.import_origin_id(point))
            if position is not None:
                self._tables_imported(state, tables, point)
            # else: not in the hub; those tables are still unknown and are imported again below.
            state.pending = None
            state.save()
        if not state.exists:
            # A slot made before Electric imported existing rows: the tables it
            # carries are taken as they are (drop the slot to import them).
            self.log.info("slot {slot} predates row imports; its tables are not imported "
                     "(drop the slot to import them)", connector=name, slot=slot)
            state.known = set(self.tables)
            state.save()
        elif state.known is None:
            state.known = set(self.tables)
            state.save()
        if state.prune(confirmed):
            state.save()
        return False

    def _start_initial(self, state: importer.ImportState) -> None:
        """Recorded BEFORE the slot exists, so a crash from here on is seen and redone."""
        state.pending = {"kind": "initial"}
        state.known = set()
        state.horizons = {}
        state.save()

    def _tables_imported(self, state: importer.ImportState, tables, point: int) -> None:
        for t in tables:
            state.known.add(tuple(t))
            state.horizons[tuple(t)] = point

    def _ordered(self, tables):
        return sorted(tables, key=lambda t: self._oids.get(t.qualified, 0))

    async def _initial_import(self, slot: str, created) -> None:
        tables = self._ordered(self.tables.values())
        self.log.info("created slot {slot} at {lsn}; importing the rows of {n} table(s) in its "
                 "snapshot before streaming", connector=self.connector.name, slot=slot,
                 lsn=format_lsn(created.consistent_point), n=len(tables))
        await self._copy("initial", created.consistent_point, created.snapshot, tables)
        state = self.imports
        state.pending = None
        state.known = {t.qualified for t in tables}
        state.save()

    async def _import_new_tables(self, candidates) -> None:
        """
        Tables carried now whose rows never reached the hub (published, or
        made replicable, while not streamed): copied in the snapshot of a
        temporary slot, and the stream drops their changes committed before
        its consistent point (the horizon; see `importer`).
        """
        await self._import_lock.acquire()
        try:
            await self._import_new_tables_locked(candidates)
        finally:
            self._import_lock.release()

    async def _import_new_tables_locked(self, candidates) -> None:
        state = self.imports
        if state.known is None or (state.pending or {}).get("kind") == "initial":
            return  # the initial import (running or to redo) covers them
        new = [t for t in self._ordered(candidates) if t.qualified not in state.known]
        if not new:
            return
        temp = replication.ReplicationClient(
            self.connector.user, self.connector.password, self.connector.database,
            _temporary_slot_name(self.config.slot_for(self.connector)), self.config.publication,
            _NoStream(), label=self.connector.name, tls=self.connector.tls, create_slot=True, temporary=True)
        timeout = max(1.0, self.connector.connect_timeout_ms / 1000.0)
        self._import_sessions.add(temp)
        try:
            try:
                temp = await replication.connect(self.reactor, self.connector.host, self.connector.port, temp,
                                                 timeout)
            except replication.ReplicationError as e:
                raise replication.ReplicationError(f"import snapshot connection failed: {e}") from e
            self._import_sessions.add(temp)
            created = temp.created
            names = [list(t.qualified) for t in new]
            self.log.info("table(s) {tables} became replicable; importing their rows in the "
                     "snapshot at {lsn}", connector=self.connector.name,
                     tables=", ".join(f"{s}.{n}" for s, n in names), lsn=format_lsn(created.consistent_point))
            state.pending = {"kind": "tables", "point": created.consistent_point, "tables": names}
            state.save()
            await self._copy("tables", created.consistent_point, created.snapshot, new)
            self._tables_imported(state, [t.qualified for t in new], created.consistent_point)
            state.pending = None
            state.save()
            self.assembler.set_horizons(state.horizons)
        finally:
            temp.close("import done")
            self._import_sessions.discard(temp)

    async def _import_held(self, tables) -> None:
        """
        `_import_new_tables` while the live stream is held: its consistent
        point is ahead of everything the stream has read, so no change the
        horizon lets through reaches the hub before the import.  A failure
        is logged; the tables stay unknown and are imported at the next try
        (a change of theirs in the stream, or the next start).
        """
        if self.imports.known is None or all(t.qualified in self.imports.known for t in tables):
            return
        stream = self._stream
        held = stream is not None and not stream.closed
        if held:
            stream.hold()
        try:
            await self._import_new_tables(tables)
        except Exception as e:
            self._set_error(f"importing new tables failed: {self._describe(e)}")
        finally:
            if held:
                stream.release()

    async def _copy(self, kind: str, point: int, snapshot: str, tables) -> importer.ImportProgress:
        """
        One import: `tables` read in `snapshot` into ONE hub transaction
        identified as ``import:<point>``.  Progress is kept for the status
        API and logged every `importer.LOG_INTERVAL` seconds.
        """
        name = self.connector.name
        progress = importer.ImportProgress(kind, point, self.clock.seconds(), clock=self.clock.seconds)
        self._importing = progress
        self.phase = "importing"
        ticker = LoopingCall(lambda: self.log.info("importing: {line}", connector=name,
                                              line=progress.line()))
        ticker.clock = self.clock
        ticker.start(importer.LOG_INTERVAL, now=False)
        session = setup.SetupSession(self.connector, self.reactor)
        buffer = None
        try:
            await session.open()
            self._import_sessions.add(session)
            await session.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            await session.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
            estimates = await importer.estimate_rows(session.connection, tables, self._oids)
            progress.tables = [importer.TableProgress(t.schema, t.name, estimates.get(t.qualified)) for t in tables]
            buffer = self.hub.begin(name, importer.import_origin_id(point), int(self.clock.seconds() * 1_000_000))
            await importer.copy_tables(session.connection, tables, buffer, progress)
            if progress.rows_done == 0:
                # Nothing to import is no hub transaction (a redo after a
                # crash here finds nothing to redo either).
                buffer, empty = None, buffer
                await empty.abort()
                where = "nothing to import"
            else:
                progress.state = "committing"
                committed = await buffer.commit()
                buffer = None
                progress.position = committed.position
                if not committed.duplicate:
                    self._imported_rows += progress.rows_done
                where = f"hub position {committed.position}" + (" (already in the hub)" if committed.duplicate else "")
            progress.state = "done"
            progress.finished_at = self.clock.seconds()
            self.log.info("imported {rows} row(s) of {n} table(s) in {secs:.1f} s: {where}",
                     connector=name, rows=progress.rows_done, n=len(tables), secs=progress.elapsed(), where=where)
            try:
                await session.execute("COMMIT")
            except Exception:
                pass  # read only: nothing to lose
            return progress
        except BaseException as e:
            progress.state = "failed"
            progress.error = self._describe(e) if isinstance(e, Exception) else type(e).__name__
            progress.finished_at = self.clock.seconds()
            if buffer is not None:
                buffer.abort().addErrback(lambda f: None)
            if isinstance(e, Exception) and not isinstance(e, defer.CancelledError):
                raise setup.SetupError(f"import failed: {progress.error}") from e
            raise
        finally:
            if ticker.running:
                ticker.stop()
            self._import_sessions.discard(session)
            session.close()
            self._importing = None
            self._last_import = progress
            if self.phase == "importing":
                self.phase = "setup"

    # -- schema --

    def _lookup(self, schema: str, name: str):
        key = (schema, name)
        return self.tables.get(key), self.skipped.get(key)

    def _apply_introspection(self, found: setup.Introspection, replace: bool = False,
                             names: Optional[Tuple[str, str]] = None) -> None:
        if replace:
            self.tables = {}
            self.skipped = {}
        elif names is not None:
            self.tables.pop(names, None)
            self.skipped.pop(names, None)
        for t in found.tables:
            self.tables[t.qualified] = t
        self._oids.update(found.oids)
        for s in found.skipped:
            key = (s.schema, s.name)
            self.skipped[key] = s.reason
            if (key, s.reason) not in self._logged_skips:
                self._logged_skips.add((key, s.reason))
                # Skipped by design (no primary key, a type Electric cannot carry): the rest replicates.
                self.log.warn('not replicating table "{schema}"."{table}": {reason}',
                              schema=s.schema, table=s.name, reason=s.reason)
        setup.apply_to_registry(self.registry, self.connector.name,
                                sorted(self.tables.values(), key=lambda t: self._oids.get(t.qualified, 0)))

    async def _resolve_table(self, schema: str, name: str):
        """A Relation showed a table we do not know in this shape: ask the catalog."""
        self.log.info('looking up "{schema}"."{table}" in the catalog', schema=schema, table=name)
        session = setup.SetupSession(self.connector, self.reactor)
        await session.open()
        try:
            found = await session.introspect_table(self.config.publication, schema, name)
            await session.install_upsert_triggers(found.tables, found.oids)
        finally:
            session.close()
        self._apply_introspection(found, names=(schema, name))
        # The stream is held while this runs (a lookup pauses it), so the
        # import commits before any later change of the table is appended.
        await self._import_new_tables([t for t in found.tables if t.qualified == (schema, name)])
        return self._lookup(schema, name)

    # -- which tables the subscription has in steady state --

    def _trusted(self, schema: str, name: str, commit_lsn: int) -> bool:
        """Was (schema, name) READY in the subscription before a commit at `commit_lsn`?"""
        oid = self._oids.get((schema, name))
        if oid is None:
            return False
        since = self._ready.get(oid)
        return since is not None and commit_lsn >= since

    def _all_ready(self) -> bool:
        return all(self._oids.get(k) in self._ready for k in self.tables)

    async def _check_ready(self, session=None) -> None:
        """
        Read which tables the subscription has READY, with the WAL insert
        position read after the catalog snapshot: a commit at or after that
        position came after those tables were READY (READY is final while a
        table stays in the subscription; a table dropped and created again
        has another oid).
        """
        if self.echo is None or self.subscription_oid is None:
            return
        try:
            await self._read_ready(session)
        except defer.CancelledError:
            raise
        except Exception as e:
            # Only costs echoes (tables stay untrusted); never stops replication.
            self.log.info("could not read the subscription's table states: {e}", e=setup.error_text(e))

    async def _read_ready(self, session) -> None:
        own = session is None
        if own:
            session = setup.SetupSession(self.connector, self.reactor)
            await session.open()
        try:
            rows = await session.query(
                "SELECT pg_catalog.pg_current_wal_insert_lsn()::text,"
                " ARRAY(SELECT srrelid::int8 FROM pg_catalog.pg_subscription_rel"
                " WHERE srsubid = %s AND srsubstate = 'r')", (self.subscription_oid,))
        finally:
            if own:
                session.close()
        lsn_text, relids = rows[0]
        since = parse_lsn(lsn_text)
        ready = {}
        for relid in relids or ():
            # Kept from before when it was READY then too; else from now.
            ready[int(relid)] = self._ready.get(int(relid), since)
        self._ready = ready

    def _start_ready_checks(self) -> None:
        if self.echo is None or (self._ready_loop is not None and self._ready_loop.running):
            return
        self._ready_loop = LoopingCall(self._ready_tick)
        self._ready_loop.clock = self.clock
        self._ready_loop.start(READY_CHECK_INTERVAL, now=False)

    def _ready_tick(self) -> None:
        if (self._stopping or not self.subscription_enabled or self._all_ready()
                or (self._ready_check is not None and not self._ready_check.called)):
            return
        self._ready_check = defer.ensureDeferred(self._check_ready())
        self._ready_check.addErrback(lambda f: None)  # _check_ready logs; a cancelled check is fine

    # -- the subscription back to Electric --

    async def _wait_publisher(self):
        ready = self.publisher_ready
        if callable(ready) and not isinstance(ready, defer.Deferred):
            ready = ready()
        if isinstance(ready, defer.Deferred):
            if ready.called:
                return
            waiter = defer.Deferred()
            ready.addBoth(lambda r: (waiter.callback(None), r)[1])
            await waiter

    async def _enable_when_ready(self):
        try:
            await self._wait_publisher()
            attempt = 0
            while not self._stopping and not self.subscription_enabled:
                try:
                    await self._enable_and_refresh()
                    return
                except defer.CancelledError:
                    raise
                except Exception as e:
                    self.failures["subscription"] += 1
                    self._set_error(f"enabling subscription failed: {self._describe(e)}")
                self._sleep_enable = deferLater(self.clock, self.retry_delay(attempt), lambda: None)
                attempt += 1
                await self._sleep_enable
        except defer.CancelledError:
            return

    async def _enable_and_refresh(self):
        session = setup.SetupSession(self.connector, self.reactor)
        await session.open()
        try:
            fresh = not await session.subscription_has_tables(self.connector.name)
            await session.enable_subscription(self.connector.name)
            # A fresh subscription (this database joins) takes no table copy:
            # its apply worker streams the hub from position 0 — the history,
            # or a catch-up of current rows *and tombstones* — in hub order.
            # A table copy could not delete rows this database holds that the
            # hub has deleted since.  Tables added later (migrations) are new
            # and empty here, so they are copied (copy_data = true).
            await session.refresh_subscription(self.connector.name, copy_data=not fresh)
            await self._check_ready(session)
        finally:
            session.close()
        self._start_ready_checks()
        self.registry.allow_streaming(self.connector.name)
        self.subscription_enabled = True
        self.log.info("subscription enabled")

    # -- public controls (migrations call these) --

    def refresh(self):
        """Re-read the catalog, reinstall triggers, refresh the subscription."""
        return defer.ensureDeferred(self._refresh())

    async def _refresh(self):
        session = setup.SetupSession(self.connector, self.reactor)
        await session.open()
        try:
            found = await session.introspect(self.config.publication)
            await session.install_upsert_triggers(found.tables, found.oids)
            self._apply_introspection(found, replace=True)
            await self._import_held(found.tables)
            if self.subscription_enabled:
                await session.refresh_subscription(self.connector.name, copy_data=True)
                await self._check_ready(session)
        finally:
            session.close()

    def disable(self):
        return defer.ensureDeferred(self._disable())

    async def _disable(self):
        session = setup.SetupSession(self.connector, self.reactor)
        await session.open()
        try:
            await session.disable_subscription(self.connector.name)
        finally:
            session.close()
        self.subscription_enabled = False

    def enable(self):
        return defer.ensureDeferred(self._enable_and_refresh())
