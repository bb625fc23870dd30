"""
One connector (one Postgres in CONNECTORS) as a long-lived Service.

State machine::

    init ─► setup ─► streaming ─► ready
              ▲  │        │  (subscription enabled + refreshed)
              │  ▼        ▼
              backoff ◄───┘  (any failure; the reason is kept)

* ``setup``: `electric.postgres.source.setup.run_setup` (publication, slot,
  introspection, triggers, subscription), then the replication connection.
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
from twisted.internet import defer, task
from twisted.internet.task import deferLater
from twisted.logger import Logger

from electric.hub import positions
from electric.hub.interface import OriginApplied, Transaction
from electric.postgres.source import assembly
from electric.postgres.protocol import pgoutput
from electric.postgres.source import replication
from electric.postgres.source import setup
from electric.postgres.protocol.lsn import format_lsn, parse_lsn
from electric.metrics import seconds_since
from electric.schema import Table

log = Logger(namespace="electric.postgres.source.connector")

MAX_INFLIGHT_TRANSACTIONS = 500
MAX_INFLIGHT_ROWS = 50_000
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
                 flushed: int, counters: Optional[InboundCounters] = None, echo=None,
                 subscription_oid: Optional[int] = None):
        self.name = name
        self.counters = counters if counters is not None else InboundCounters()
        self.hub = hub
        self.echo = echo  # electric.postgres.echo.EchoLedger, or None: the hub gets no OriginApplied
        self.subscription_oid = subscription_oid
        self.hinted = 0  # transactions handed over with an OriginApplied
        self.assembler = assembler
        self.assembler.reset()
        self.resolve_table = resolve_table
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
        try:
            msg = self.decoder.decode(data)
        except pgoutput.PgoutputError as e:
            self.fail(f"cannot decode pgoutput at {format_lsn(wal_end)}: {e}")
            return
        self.queue.append(msg)
        if not self.waiting:
            self.drain()

    def keepalive(self, wal_end):
        if not self.queue and not self.waiting and not self.assembler.in_transaction:
            self.acks.idle_advance(wal_end)
        return self.acks.flushed

    # processing

    def drain(self):
        while self.queue and not self.waiting and not self.closed:
            msg = self.queue.popleft()
            try:
                event = self.assembler.feed(msg)
            except assembly.InboundError as e:
                self.fail(str(e))
                return
            if event is None:
                continue
            if isinstance(event, assembly.Assembled) and self.echo is not None and self.assembler.applied_lsn:
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
                self._add(self.buffer, event.changes, None)
                return
            if event.chunked:
                self._committed_chunked(event)
                if self.waiting:
                    return
                continue
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

    def _add(self, buffer, changes, then) -> None:
        """
        Stage a chunk of the open big transaction.  Nothing else is read
        from the queue or the socket until the hub has it (that is the flow
        control), then `then()` runs (or draining goes on).
        """
        self.waiting = True
        self.add_pauses += 1
        self._pause("add")
        try:
            d = buffer.add(changes)
        except Exception:
            d = defer.fail()

        def added(_):
            if self.closed:
                return
            self.staged_rows += len(changes)
            self.waiting = False
            self._resume("add")
            if then is not None:
                then()
            if not self.waiting:
                self.drain()

        def failed(failure):
            if not self.closed:
                self.fail(f"hub could not stage a transaction: {failure.getErrorMessage()}")

        d.addCallbacks(added, failed)

    def _committed_chunked(self, event: assembly.Assembled) -> None:
        """The Commit of a big transaction: stage its last changes, then commit it as one hub position."""
        buffer = self.buffer
        if event.transaction is None:
            # Dropped after all (it touched Electric's bookkeeping): nothing of it may reach the hub.
            self.dropped += 1
            self.counters.dropped += 1
            self.acks.add(event.end_lsn, done=True)
            self._report()
            self._discard_buffer()
            return
        txn = event.transaction
        entry = self.acks.add(event.end_lsn, commit_timestamp=txn.commit_timestamp)
        # Every row change of the transaction (the staged chunks' and these
        # last ones), for the rows-in count; none of them is held in memory
        # any more (they are staged in the hub), so none counts in flight.
        rows = self.buffer_rows + len(txn.changes)

        def commit():
            self.buffer = None
            self.buffer_rows = 0
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

        if txn.changes:
            self._add(buffer, txn.changes, commit)
        else:
            commit()

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
        log.error("connector {connector}: hub append of the transaction ending at {lsn} failed: {error}; reconnecting",
                  connector=self.name, lsn=format_lsn(end_lsn), error=failure.getErrorMessage())
        self.fail(f"hub append failed: {failure.getErrorMessage()}")

    def _report(self):
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
        buffer, self.buffer = self.buffer, None
        self.buffer_rows = 0
        if buffer is not None:
            buffer.abort().addErrback(lambda f: None)

    def fail(self, text: str):
        if self.closed:
            return
        self.closed = True
        self._discard_buffer()
        self.on_error(text)
        log.error("connector {connector}: replication stream error: {error}", connector=self.name, error=text)
        if self.client is not None:
            self.client.close(text)

    def stop(self):
        self.closed = True
        self._discard_buffer()
        if self.client is not None:
            self.client.close("connector stopped")


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
        self._ready_loop: Optional[task.LoopingCall] = None
        self._ready_check: Optional[defer.Deferred] = None
        self.assembler = assembly.TransactionAssembler(connector.name, self._lookup,
                                                       trusted=self._trusted if echo is not None else None)
        self.counters = InboundCounters()
        # Failures since start by kind (see `metrics`).
        self.failures = {"setup": 0, "connect": 0, "stream": 0, "subscription": 0, "internal": 0}

    # -- status --

    @property
    def ready(self) -> bool:
        """True only while the replication stream is live."""
        s = self._stream
        return s is not None and not s.closed and s.client is not None and s.client.state == "streaming"

    @property
    def state(self) -> str:
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
        }

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

        Keys for figures this build does not measure yet are left out (the
        import of existing rows: ``import_rows``, ``import_progress``; the
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
        s = self._stream
        if self.ready:
            out["appends_in_flight"] = s.inflight_tx
            out["lag_bytes"] = max(0, s.client.last_received - s.acks.flushed)
            oldest = s.acks.oldest_pending_commit
            if oldest is None:
                oldest = self.assembler.open_commit_timestamp
            out["lag_seconds"] = 0.0 if oldest is None else seconds_since(self.clock.seconds(), oldest)
        return out

    # -- Service --

    def startService(self):
        super().startService()
        self._stopping = False
        self._loop = defer.ensureDeferred(self._run())
        self._loop.addErrback(lambda f: log.failure("connector {connector}: loop crashed", f,
                                                    connector=self.connector.name))

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
            log.info("connector {connector}: retrying in {delay:.1f} s", connector=self.connector.name, delay=delay)
            self._sleep = deferLater(self.clock, delay, lambda: None)
            try:
                await self._sleep
            except defer.CancelledError:
                break
        self.phase = "stopped"

    def _set_error(self, text: str) -> None:
        """Keep `text` for the status API and log it, both naming this connector."""
        self._last_error = f"connector {self.connector.name}: {text}"
        log.error("{error}", error=self._last_error)

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
            result = await setup.run_setup(self.config, self.connector, self.credentials, self.reactor)
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
        stream = _Stream(self.connector.name, self.hub, self.assembler, self._resolve_table,
                         self._stream_failed, result.slot_confirmed_lsn, self.counters, self.echo,
                         result.subscription_oid)
        client = replication.ReplicationClient(
            self.connector.user, self.connector.password, self.connector.database,
            self.config.slot_for(self.connector), self.config.publication, stream, label=self.connector.name,
            tls=self.connector.tls,
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
        log.info("connector {connector}: streaming from slot {slot} (confirmed {lsn}, {tls})",
                 connector=self.connector.name, slot=self.config.slot_for(self.connector),
                 lsn=format_lsn(result.slot_confirmed_lsn),
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
                log.error('connector {connector}: not replicating table "{schema}"."{table}": {reason}',
                          connector=self.connector.name, schema=s.schema, table=s.name, reason=s.reason)
        setup.apply_to_registry(self.registry, self.connector.name,
                                sorted(self.tables.values(), key=lambda t: self._oids.get(t.qualified, 0)))

    async def _resolve_table(self, schema: str, name: str):
        """A Relation showed a table we do not know in this shape: ask the catalog."""
        log.info('connector {connector}: looking up "{schema}"."{table}" in the catalog',
                 connector=self.connector.name, schema=schema, table=name)
        session = setup.SetupSession(self.connector, self.reactor)
        await session.open()
        try:
            found = await session.introspect_table(self.config.publication, schema, name)
            await session.install_upsert_triggers(found.tables, found.oids)
        finally:
            session.close()
        self._apply_introspection(found, names=(schema, name))
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
            log.info("connector {connector}: could not read the subscription's table states: {e}",
                     connector=self.connector.name, e=setup.error_text(e))

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
        self._ready_loop = task.LoopingCall(self._ready_tick)
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
        log.info("connector {connector}: subscription enabled", connector=self.connector.name)

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
