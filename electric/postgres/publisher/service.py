"""
Port 5433: Electric as the logical-replication publisher every Postgres subscribes to.

Each connector's Postgres has a subscription pointing back here (created by
`electric.postgres.source.setup`); its apply worker streams the hub's resolved
transactions from the position matching its origin progress, and its
table-sync workers copy the hub's current rows when it joins.  The protocol
itself is the sans-IO `electric.postgres.publisher.session.Session`; this module
moves bytes, owns the slots, and pumps hub subscriptions into sockets under
flow control.

Positions ↔ LSNs: `electric.hub.positions` with a per-origin base kept in the
`OffsetStore`, so a subscriber's origin LSN names exactly the last hub
transaction it applied: a reconnecting subscriber never gets a transaction
twice and never misses one.

Apply failures: every apply-worker stream reports its start, its
confirmations and its end (with the first transaction it began sending) to
the `apply_monitor`, which notices a transaction a subscriber keeps failing
on; each stream's encoder leaves out the changes set aside for its database
(`electric.postgres.publisher.apply_failures`).
"""

from __future__ import annotations

import collections
import itertools
import random
from typing import Deque, Dict, Iterator, List, Optional

from twisted.application import service
from twisted.internet import defer, protocol, task
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger, LogLevel
from zope.interface import implementer

from electric.hub import positions
from electric.hub.interface import CHUNK_CHANGES
from electric.hub.interface import HubError, SubscriptionClosed
from electric.postgres.publisher import catalog_answers as ca
from electric.listener import Listener
from electric.logs import bind
from electric.postgres.protocol.messages import ErrorResponse
from electric.postgres.publisher.session import (
    AUTH,
    STARTUP,
    Authenticated,
    CancelRequested,
    CopyRequest,
    CreateSlotRequest,
    Disconnect,
    LoginFailed,
    Send,
    Session,
    StartRequest,
    StartTLS,
    StatusUpdate,
    StreamStopped,
    slot_refusal,
)
from electric.postgres.protocol.auth import scram_secret
from electric.postgres.protocol.lsn import format_lsn
from electric.postgres.echo import EchoLedger
from electric.postgres.publisher.outbound import OutboundEncoder, PayloadCache
from electric.metrics import seconds_since

log = Logger(namespace="electric.postgres.publisher.service")

BATCH = 100
"""Most items asked from the hub per pull (the hub also bounds an answer to CHUNK_CHANGES changes)."""

COPY_ROWS = CHUNK_CHANGES
"""Rows read from the hub per COPY chunk."""

WRITE_CHUNK = 256 * 1024
"""Bytes of frames gathered into one transport.write."""

MAX_UNAUTHENTICATED = 64
"""Connections that have not yet logged in, at once; more are refused (53300) until some finish."""

MAX_SLOTS_PER_CONNECTOR = 32
"""Slots one connector may hold in Electric's memory (its apply slot and its table-sync slots)."""

UNACKED_COMMITS = 4096
"""
Commit times of sent, unconfirmed transactions a stream remembers (for its
lag in seconds).  Past that the oldest are forgotten, which can only make
the lag read higher than it is, never lower.
"""


def hub_consumer(origin: str) -> str:
    """Durable consumer name holding hub compaction back for `origin`'s subscriber."""
    return "pg:" + origin


class Slot:
    """
    A replication slot as Electric keeps it: in memory only, since the
    subscriber's origin progress (sent with every START_REPLICATION) is the
    authoritative resume point.  `confirmed` is the hub position the slot is
    known to have reached (its creation point, then flushed positions), used
    like Postgres's confirmed_flush_lsn: a START below it starts there.
    """

    def __init__(self, name: str, origin: str, confirmed: int = 0):
        self.name = name
        self.origin = origin
        self.confirmed = confirmed
        self.active: Optional["PublisherProtocol"] = None
        self.stream: Optional["ReplicationStream"] = None
        self.durable = False  # an apply worker (not a table-sync worker) has streamed from it

    @property
    def is_apply_slot(self) -> bool:
        """The subscription's own slot (named after it, i.e. after the connector), not a table-sync slot."""
        return self.durable or self.name == self.origin

    def status(self) -> dict:
        s = {"origin": self.origin, "streaming": self.active is not None, "confirmed_position": self.confirmed}
        if self.stream is not None:
            s.update(self.stream.status())
        return s

    def metrics(self, head: Optional[int], now: float) -> dict:
        """Plain numbers for /metrics (`head` None: the hub cannot say): see `PublisherService.metrics`."""
        stream = self.stream if self.active is not None else None
        acked = stream.acked if stream is not None else self.confirmed
        out = {"connector": self.origin, "connected": stream is not None, "acked_position": acked}
        if stream is not None:
            out["sent_position"] = stream.encoder.position
        if head is None:
            return out
        out["lag_transactions"] = max(0, head - acked)
        if acked >= head:
            out["lag_seconds"] = 0.0
        elif stream is not None:
            oldest = stream.oldest_unacked_commit
            # Nothing sent unconfirmed: what is missing is being committed or pulled right now.
            out["lag_seconds"] = 0.0 if oldest is None else seconds_since(now, oldest)
        return out


@implementer(IPushProducer)
class ReplicationStream:
    """
    One START_REPLICATION: pulls resolved transactions from a hub
    subscription only while the socket accepts more (IPushProducer fed by the
    transport), frames them with an `OutboundEncoder`, and answers status
    updates (hub acks, keepalives).
    """

    def __init__(self, publisher: "PublisherService", conn: "PublisherProtocol", slot: Slot,
                 base: int, start: int, durable: bool):
        self.publisher = publisher
        self.conn = conn
        self.slot = slot
        self.origin = slot.origin
        self.log = bind(log, slot=slot.name, connector=slot.origin, peer=getattr(conn, "peer", None))
        self.base = base
        self.start_position = start
        self.durable = durable
        marker = None
        if durable:
            # Only the apply worker's stream leaves echoes out: a table-sync
            # worker applies its catch-up after copying an older snapshot.
            def marker(ledger=publisher.echo, origin=slot.origin, base=base):
                return ledger.marker(origin, base)
        monitor = publisher.apply_monitor
        self.encoder = OutboundEncoder(publisher.registry, slot.origin, base, start,
                                       set_aside=monitor.set_aside(slot.origin) if monitor is not None else None,
                                       payloads=publisher.payloads, echo_marker=marker)
        self.by_electric = False  # Electric ended it (shutdown, timeout, hub failure): proves nothing about applying
        self.acked = start
        self.paused = False
        self.stopped = False
        self._pumping = False
        self._waiting = False
        self._keepalive_due = False
        self._batch: Deque = collections.deque()
        self._frames: Optional[Iterator[bytes]] = None
        self._sub = None
        self._timer: Optional[task.LoopingCall] = None
        self.last_heard = publisher.clock.seconds()
        # (position, commit timestamp µs) of transactions pulled for this
        # subscriber and not yet confirmed, oldest first: the slot's lag.
        self._unacked: Deque = collections.deque(maxlen=UNACKED_COMMITS)

    # --- life cycle -----------------------------------------------------

    def open(self) -> None:
        """Subscribe to the hub (HubError when it is not running): before any CopyBoth is sent."""
        hub = self.publisher.hub
        consumer = hub_consumer(self.origin) if self.durable else None
        self._sub = hub.subscribe(self.start_position, consumer)
        if self.durable:
            hub.ack(consumer, self.start_position)

    def start(self) -> None:
        monitor = self.publisher.apply_monitor
        if self.durable and monitor is not None:
            monitor.stream_started(self.origin, self.start_position)
        self._write(self.encoder.keepalive())
        self._timer = task.LoopingCall(self._tick)
        self._timer.clock = self.publisher.clock
        self._timer.start(self.publisher.keepalive_interval, now=False)
        self._pump()

    def stop(self, reason: str) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self._timer is not None and self._timer.running:
            self._timer.stop()
        if self._sub is not None:
            self._sub.close()
        self._frames = None
        self._batch.clear()
        self.log.info("stream stopped at position {pos}: {reason}", pos=self.encoder.position, reason=reason)
        monitor = self.publisher.apply_monitor
        if self.durable and monitor is not None:
            monitor.stream_ended(self.origin, self.start_position, self.encoder.first_sent, self.acked,
                                 self.by_electric)

    # --- IPushProducer (forwarded by the protocol) ------------------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._pump()

    def stopProducing(self) -> None:
        self.stop("transport closed")

    # --- subscriber → us ---------------------------------------------------

    def status_update(self, update) -> None:
        self.last_heard = self.publisher.clock.seconds()
        if self.durable and update.flushed:
            pos = positions.position_for_lsn(update.flushed, self.base)
            pos = min(pos, self.encoder.position)
            if pos > self.acked:
                self.acked = pos
                self.slot.confirmed = max(self.slot.confirmed, pos)
                unacked = self._unacked
                while unacked and unacked[0][0] <= pos:
                    unacked.popleft()
                try:
                    self.publisher.hub.ack(hub_consumer(self.origin), pos)
                except HubError as e:
                    self.log.warn("hub refused ack: {e}", e=e)
                if self.publisher.apply_monitor is not None:
                    self.publisher.apply_monitor.acked(self.origin, pos)
        if update.reply_requested and not self.stopped:
            self._write(self.encoder.keepalive())

    def _tick(self) -> None:
        if self.stopped:
            return
        idle = self.publisher.clock.seconds() - self.last_heard
        timeout = self.publisher.sender_timeout
        if timeout and idle > timeout:
            self.publisher.count("sender_timeouts")
            self.log.warn("no reply from the subscriber for {idle:.0f} s; closing", idle=idle)
            self.conn.abandon("terminating walsender process due to replication timeout")
            return
        self._write(self.encoder.keepalive(bool(timeout) and idle > timeout / 2))

    # --- pumping ----------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.conn.transport is not None and not self.stopped:
            self.conn.transport.write(data)

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self.stopped and not self.paused:
                if self._frames is not None:
                    out = []
                    size = 0
                    finished = True
                    try:
                        for frame in self._frames:
                            out.append(frame)
                            size += len(frame)
                            if size >= WRITE_CHUNK:
                                finished = False
                                break
                    except Exception as e:
                        # A row we cannot encode must not wedge the stream silently:
                        # say which transaction, drop the connection (the subscriber retries).
                        self.log.failure("cannot encode the transaction after position {pos}",
                                         pos=self.encoder.position, level=LogLevel.error)
                        self.publisher.count("encode_failures")
                        self.conn.abandon(f"cannot encode the transaction after hub position"
                                          f" {self.encoder.position}: {e}")
                        return
                    if finished:
                        self._frames = None
                    if out:
                        self._write(b"".join(out))
                    continue
                if self._batch:
                    self._frames = self.encoder.frames(self._batch.popleft())
                    continue
                if self._keepalive_due:
                    self._keepalive_due = False
                    self._write(self.encoder.keepalive())
                    continue
                if not self._waiting:
                    self._waiting = True
                    d = self._sub.next(BATCH)
                    d.addCallbacks(self._got, self._failed)
                    if self._batch:
                        continue
                break
        finally:
            self._pumping = False

    def _got(self, items) -> None:
        self._waiting = False
        if self.stopped:
            return
        unacked = self._unacked
        for item in items:
            if not unacked or unacked[-1][0] != item.position:
                unacked.append((item.position, item.commit_timestamp))
        self._batch.extend(items)
        self._keepalive_due = True
        self._pump()

    def _failed(self, failure) -> None:
        self._waiting = False
        if self.stopped:
            return
        if failure.check(SubscriptionClosed):
            reason = "Electric's hub is shutting down"
        else:
            self.log.failure("hub subscription failed", failure, level=LogLevel.error)
            reason = f"Electric's hub failed: {failure.getErrorMessage()}"
        self.conn.abandon(reason)

    @property
    def oldest_unacked_commit(self) -> Optional[int]:
        """Commit timestamp (µs) of the oldest transaction pulled for the subscriber and not confirmed."""
        return self._unacked[0][1] if self._unacked else None

    def status(self) -> dict:
        return {
            "peer": self.conn.peer,
            "tls": self.conn.session.tls_active,
            "application_name": self.conn.session.application_name,
            "sync_worker": not self.durable,
            "start_position": self.start_position,
            "sent_position": self.encoder.position,
            "in_transaction": self.encoder.in_transaction,
            "sent_lsn": format_lsn(self.encoder.wal_end),
            "acked_position": self.acked,
            "transactions_sent": self.encoder.transactions_sent,
            "changes_sent": self.encoder.changes_sent,
            "changes_not_echoed": self.encoder.changes_not_echoed,
            "changes_skipped": self.encoder.skipped_changes,
            "changes_set_aside": self.encoder.set_aside_changes,
            "paused": self.paused,
        }


@implementer(IPushProducer)
class _CopyPump:
    """
    Writes a table-sync COPY from a hub snapshot reader: the next chunk is
    read only while the transport accepts more, so a subscriber that stops
    reading costs one chunk.
    """

    def __init__(self, conn: "PublisherProtocol", reader, describe: str, logger=None):
        self.log = logger if logger is not None else log
        self.conn = conn
        self.reader = reader
        self.describe = describe
        self.paused = False
        self.done = False
        self.rows = 0
        self._pulling = False

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self._pull()

    def stopProducing(self):
        self._finish()

    def start(self):
        self.conn.run(self.conn.session.copy_start())
        self._pull()

    def _pull(self):
        if self.paused or self.done or self._pulling:
            return
        self._pulling = True
        d = self.reader.next(COPY_ROWS)
        d.addCallbacks(self._got, self._failed)

    def _got(self, rows):
        self._pulling = False
        if self.done:
            return
        if not rows:
            self._finish()
            self.log.info("{what}: {n} rows copied", what=self.describe, n=self.rows)
            self.conn.run(self.conn.session.copy_end())
            self.conn.run(self.conn.session.resume())
            return
        self.rows += len(rows)
        self.conn.run(self.conn.session.copy_data(rows))
        self._pull()

    def _failed(self, failure):
        self._pulling = False
        if self.done:
            return
        self._finish()
        self.log.failure("{what} failed", failure, what=self.describe, level=LogLevel.error)
        self.conn.run(self.conn.session.command_failed(
            "55000", f"could not read the hub's rows: {failure.getErrorMessage()}"))

    def _finish(self):
        self.done = True
        self.reader.close()
        if self.conn.copy_writer is self:
            self.conn.copy_writer = None


@implementer(IPushProducer)
class PublisherProtocol(protocol.Protocol):
    """Bytes ↔ `Session`; executes the session's actions."""

    def __init__(self, publisher: "PublisherService", pid: int, secret: int):
        self.publisher = publisher
        self.pid = pid
        self.secret = secret
        self.session = Session(publisher, pid, secret, publisher.auth_method,
                               tls_available=publisher.tls_context is not None)
        self.stream: Optional[ReplicationStream] = None
        self.copy_writer: Optional[_CopyPump] = None
        self.peer = ""
        self.log = log
        self.paused = False  # the transport's buffer is full
        self._waiting_login = False  # counted in publisher.unauthenticated
        self._auth_timer = None
        self._closed = False

    # --- Twisted -------------------------------------------------------------

    def connectionMade(self):
        peer = self.transport.getPeer()
        self.peer = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        self.log = bind(log, peer=self.peer)
        if hasattr(self.transport, "setTcpKeepAlive"):
            self.transport.setTcpKeepAlive(True)
        self.transport.registerProducer(self, True)
        self.publisher.connections.add(self)
        if self.publisher.unauthenticated >= self.publisher.max_unauthenticated:
            # As Postgres past max_connections: refuse at once, before reading anything.
            self.publisher.count("too_many_unauthenticated")
            self.log.warn("5433 connection refused: {n} connections are already waiting to log in",
                          n=self.publisher.unauthenticated)
            self._closed = True
            self.transport.write(ErrorResponse.build(
                "FATAL", "53300", f"too many connections waiting to log in to Electric's port 5433 (at most"
                f" {self.publisher.max_unauthenticated}); try again later").encode())
            self.transport.unregisterProducer()
            self.transport.loseConnection()
            return
        self.publisher.unauthenticated += 1
        self._waiting_login = True
        self._auth_timer = self.publisher.clock.callLater(
            self.publisher.auth_timeout, self._auth_timed_out)

    def dataReceived(self, data):
        if self._closed:
            return
        self.run(self.session.feed(data))

    def connectionLost(self, reason=None):
        self._closed = True
        self._cancel_auth_timer()
        self._leave_unauthenticated()
        self.run(self.session.connection_lost())
        self._stop_stream("connection lost")
        if self.copy_writer is not None:
            self.copy_writer.stopProducing()
        self.publisher.connections.discard(self)

    # --- IPushProducer: forward to whatever is writing -------------------------

    def pauseProducing(self):
        self.paused = True
        for p in (self.stream, self.copy_writer):
            if p is not None:
                p.pauseProducing()

    def resumeProducing(self):
        self.paused = False
        for p in (self.stream, self.copy_writer):
            if p is not None:
                p.resumeProducing()

    def stopProducing(self):
        self._stop_stream("transport closed")
        if self.copy_writer is not None:
            self.copy_writer.stopProducing()

    # --- actions --------------------------------------------------------------------

    def run(self, actions) -> None:
        for action in actions:
            if isinstance(action, Send):
                if self.transport is not None and not self._closed:
                    self.transport.write(action.data)
            elif isinstance(action, Disconnect):
                self._disconnect(action.reason)
            elif isinstance(action, StartTLS):
                self.transport.startTLS(self.publisher.tls_context)
                self.run(self.session.tls_started())
            elif isinstance(action, LoginFailed):
                self.publisher.count("failed_logins")
                self.log.warn("5433 login failed: user {user!r}: {reason}",
                              user=action.user[:80], reason=action.reason)
            elif isinstance(action, Authenticated):
                self._cancel_auth_timer()
                self._leave_unauthenticated()
                self.log = self.log.bind(connector=self.session.origin)
                # A table-sync worker connects once per table: chatter next to its apply worker's.
                self.log.emit(LogLevel.debug if self.session.is_sync_worker else LogLevel.info,
                              "5433 connection: user {user} application {app} authenticated",
                              user=action.user, app=action.application_name)
            elif isinstance(action, CreateSlotRequest):
                self._create_slot(action.command)
            elif isinstance(action, CopyRequest):
                self._copy(action)
            elif isinstance(action, StartRequest):
                self._start(action.command)
            elif isinstance(action, StatusUpdate):
                if self.stream is not None:
                    self.stream.status_update(action.update)
            elif isinstance(action, StreamStopped):
                self._stop_stream(action.reason)
            elif isinstance(action, CancelRequested):
                self.publisher.cancel(action.pid, action.key)

    def _disconnect(self, reason: str) -> None:
        self._stop_stream(reason)
        if self.transport is not None and not self._closed:
            self._closed = True
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def abandon(self, reason: str) -> None:
        """End this connection from our side (shutdown, hub failure, timeout)."""
        if self.stream is not None:
            self.stream.by_electric = True
        self.run(self.session.end_stream("57P01", f"terminating connection: {reason}"))

    def _leave_unauthenticated(self) -> None:
        """Logged in or gone: no longer one of the connections waiting to log in."""
        if self._waiting_login:
            self._waiting_login = False
            self.publisher.unauthenticated -= 1

    def _cancel_auth_timer(self) -> None:
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        self._auth_timer = None

    def _auth_timed_out(self) -> None:
        self._auth_timer = None
        if self.session.state in (STARTUP, AUTH):
            self.publisher.count("auth_timeouts")
            self.log.warn("5433 connection: no authentication within {t} s; closing", t=self.publisher.auth_timeout)
            self.run(self.session.end_stream("08006", "canceling authentication due to timeout"))

    def _stop_stream(self, reason: str) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.stop(reason)
            self.publisher.slots_release(stream.slot, self)

    def _create_slot(self, command) -> None:
        try:
            lsn = self.publisher.create_slot(self.session.origin, command)
        except ca.QueryError as e:
            self.run(self.session.command_failed(e.sqlstate, e.message))
            return
        except Exception as e:
            self.log.failure("CREATE_REPLICATION_SLOT {slot} failed", slot=command.name, level=LogLevel.error)
            self.run(self.session.command_failed("55000", f"could not create replication slot: {e}"))
            return
        self.run(self.session.slot_created(command.name, lsn, command.snapshot == "use"))

    def _copy(self, action) -> None:
        cmd = action.command
        d = self.publisher.copy_snapshot(self.session.origin, action.slot, cmd.schema, cmd.table)

        def taken(reader):
            if self._closed:
                reader.close()
                return
            what = f"COPY {cmd.schema}.{cmd.table}"
            self.copy_writer = _CopyPump(self, reader, what, self.log.bind(slot=action.slot))
            self.copy_writer.paused = self.paused
            self.copy_writer.start()

        def failed(f):
            self.log.failure("COPY {schema}.{table} failed", f, schema=cmd.schema, table=cmd.table,
                             slot=action.slot, level=LogLevel.error)
            if not self._closed:
                self.run(self.session.command_failed("55000", f"could not read the hub's rows: {f.getErrorMessage()}"))

        d.addCallbacks(taken, failed)

    def _start(self, command) -> None:
        try:
            stream = self.publisher.start_stream(self, command)
        except ca.QueryError as e:
            self.run(self.session.command_failed(e.sqlstate, e.message))
            return
        except HubError as e:
            self.run(self.session.command_failed("55000", f"Electric's hub is not available: {e}"))
            return
        except Exception as e:
            self.log.failure("START_REPLICATION {slot} failed", slot=command.slot, level=LogLevel.error)
            self.run(self.session.command_failed("XX000", f"could not start replication: {e}"))
            return
        self.stream = stream
        stream.paused = self.paused
        self.run(self.session.start_streaming(command))
        stream.start()


class _Factory(protocol.Factory):
    def __init__(self, publisher: "PublisherService"):
        self.publisher = publisher
        self._pids = itertools.count(random.randint(10_000, 20_000))

    noisy = False  # no "Starting factory" lines

    def buildProtocol(self, addr):
        return PublisherProtocol(self.publisher, next(self._pids), random.randint(1, 2**31 - 1))


class PublisherService(service.Service):
    """
    The port-5433 publisher.  Built with everything it serves from: the
    `config` (port, publication), the `hub` (an IHub), the schema
    `registry`, the subscriber `credentials` and the `offsets` store (LSN
    bases).  `listening` fires with the IListeningPort once bound;
    `when_listening()` gives each waiter (the connectors enable their
    subscriptions only then) its own Deferred.  `stopService` closes the
    listener and every connection.
    """

    name = "postgres-publisher"

    def __init__(self, config, hub, registry, credentials, offsets, reactor=None, *,
                 auth_method: str = "scram-sha-256", keepalive_interval: float = 10.0,
                 sender_timeout: float = 60.0, auth_timeout: float = 60.0,
                 max_unauthenticated: int = MAX_UNAUTHENTICATED, clock=None, apply_monitor=None):
        if reactor is None:
            from twisted.internet import reactor
        if auth_method not in ("scram-sha-256", "md5"):
            raise ValueError(f"auth_method must be 'scram-sha-256' or 'md5', not {auth_method!r}")
        self.config = config
        self.hub = hub
        self.registry = registry
        self.payloads = PayloadCache()  # change messages shared by the streams (`outbound.PayloadCache`)
        self.credentials = credentials
        self.offsets = offsets
        self.reactor = reactor
        self.auth_method = auth_method
        self.keepalive_interval = keepalive_interval
        self.sender_timeout = sender_timeout
        self.auth_timeout = auth_timeout
        self.max_unauthenticated = max_unauthenticated
        # Watches for changes a subscriber cannot apply and holds the quarantine
        # (electric.postgres.publisher.apply_failures.ApplyFailureMonitor); None: not watched.
        self.apply_monitor = apply_monitor
        if apply_monitor is not None:
            apply_monitor.base_for = self.base_for
        # Timers (login deadline, keepalives, sender timeout); a task.Clock in tests.
        self.clock = clock if clock is not None else reactor
        self.publication = config.publication
        self.tls_context = None  # loaded at start when POSTGRES_REPLICATION_TLS_* are set
        self.listener = Listener(reactor, "Postgres subscribers", "postgresql", config.listen_host,
                                 config.postgres_replication_port, _Factory(self))
        self._listen_waiters: List[defer.Deferred] = []
        self.connections = set()
        self.unauthenticated = 0  # connections that have not logged in yet
        self.counters: Dict[str, int] = {
            "failed_logins": 0, "auth_timeouts": 0, "too_many_unauthenticated": 0, "refused_slots": 0,
            "sender_timeouts": 0, "encode_failures": 0}
        self.slots: Dict[str, Slot] = {}
        self._bases: Dict[str, int] = {}
        self._verifiers: Dict[str, tuple] = {}
        # What the connectors learn from their WAL about what each database applied (echo skipping).
        self.echo = EchoLedger(self.base_for)

    @property
    def listening(self) -> defer.Deferred:
        """Fires with the IListeningPort once bound; errbacks (CannotListenError) when the port is taken."""
        return self.listener.listening

    @property
    def port(self):
        return self.listener.port

    def count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    # --- session.Backend --------------------------------------------------------

    @property
    def system_id(self) -> str:
        hub_id = self.hub.hub_id
        if hub_id:
            return str(int.from_bytes(hub_id[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF)
        return "7000000000000000001"

    def password_for(self, user: str) -> Optional[str]:
        """
        For SCRAM, a verifier computed once per user (as Postgres stores it),
        so a reconnecting subscriber does not cost a PBKDF2 run each time.
        md5 needs the password itself.
        """
        password = self.credentials.password_for_user(user)
        if password is None or self.auth_method != "scram-sha-256":
            return password
        cached = self._verifiers.get(user)
        if cached is None or cached[0] != password:
            cached = self._verifiers[user] = (password, scram_secret(password))
        return cached[1]

    def base_for(self, origin: str) -> int:
        base = self._bases.get(origin)
        if base is None:
            base = self.offsets.slot_base(origin)
            self._bases[origin] = base
        return base

    def current_lsn(self, origin: str) -> int:
        return positions.end_lsn(self.hub.head(), self.base_for(origin))

    def drop_slot(self, name: str, origin: str) -> None:
        """
        DROP SUBSCRIPTION drops the apply slot: the origin then no longer
        holds hub compaction back (a re-created subscription starts afresh,
        with table sync).  Table-sync slots are dropped after every sync and
        change nothing.  Always succeeds, as a refusal would make DROP
        SUBSCRIPTION fail on the subscriber.
        """
        slot = self.slots.get(name)
        if (slot is not None and slot.origin != origin) or slot_refusal(origin, name, self.credentials.names):
            log.warn("connector {connector} asked to drop slot {slot}, which is not its own; ignored",
                     slot=name[:80], connector=origin)
            return
        if slot is not None and slot.active is not None:
            log.info("slot {slot}: drop requested while streaming; kept", slot=name, connector=origin)
            return
        self.slots.pop(name, None)
        apply_slot = (slot.durable if slot is not None else name == origin)
        still_used = any(s.durable and s.origin == origin for s in self.slots.values())
        if apply_slot and not still_used:
            try:
                self.hub.forget(hub_consumer(origin))
            except HubError as e:
                log.warn("slot {slot}: hub could not forget {connector}: {e}", slot=name, connector=origin, e=e)
        # Table-sync slots come and go with every table a subscriber copies.
        log.emit(LogLevel.info if name == origin else LogLevel.debug, "slot {slot} dropped", slot=name,
                 connector=origin)

    # --- slots -------------------------------------------------------------------------

    def _own_slot(self, origin: str, name: str, create: bool) -> Optional[Slot]:
        """
        `origin`'s slot `name` (None if it does not exist yet), or QueryError:
        a bad name, another connector's slot, or too many slots.
        """
        refusal = slot_refusal(origin, name, self.credentials.names)
        slot = self.slots.get(name)
        if refusal is None and slot is not None and slot.origin != origin:
            refusal = ca.QueryError(
                "42501", f'permission denied for replication slot "{name}": it belongs to another connector')
        if refusal is None and slot is None and create:
            held = sum(1 for s in self.slots.values() if s.origin == origin)
            if held >= MAX_SLOTS_PER_CONNECTOR:
                refusal = ca.QueryError(
                    "53400", f"all replication slots are in use: connector {origin} holds {held}"
                    " (drop unused table-sync slots)")
        if refusal is not None:
            self.count("refused_slots")
            log.warn("slot {slot}: refused for connector {connector}: {why}", slot=name[:80], connector=origin,
                     why=refusal.message)
            raise refusal
        return slot

    def create_slot(self, origin: str, command) -> int:
        """
        The slot's consistent point: the hub's head.  With SNAPSHOT 'use' the
        COPY that follows is served from a later snapshot of its one table
        (`copy_snapshot`), which moves the slot's start up to that snapshot.
        """
        slot = self._own_slot(origin, command.name, create=True)
        position = self.hub.head()
        if slot is None or slot.active is None:
            self.slots[command.name] = Slot(command.name, origin, position)
        lsn = positions.end_lsn(position, self.base_for(origin))
        log.emit(LogLevel.info if command.name == origin else LogLevel.debug,
                 "slot {slot} created at {lsn} (position {pos})",
                 slot=command.name, connector=origin, lsn=format_lsn(lsn), pos=position)
        return lsn

    def copy_snapshot(self, origin: str, slot_name: str, schema: str, table: str) -> defer.Deferred:
        """
        Deferred `ISnapshotReader` over the live rows of one table for a table-sync COPY.
        The snapshot's position becomes the sync slot's start: the catch-up
        stream then begins right after the copied state, so nothing between
        the consistent point and the snapshot arrives twice.
        """
        d = self.hub.snapshot([(schema, table)])

        def taken(reader):
            slot = self.slots.get(slot_name)
            if slot is not None and slot.origin != origin:
                raise ca.QueryError("42501", f'replication slot "{slot_name}" belongs to another connector')
            if slot is None:
                slot = self.slots[slot_name] = Slot(slot_name, origin, reader.position)
            slot.confirmed = max(slot.confirmed, reader.position)
            log.debug("COPY {schema}.{table} as of position {pos}",
                      slot=slot_name, connector=origin, schema=schema, table=table, pos=reader.position)
            return reader

        return d.addCallback(taken)

    def start_stream(self, conn: PublisherProtocol, command) -> ReplicationStream:
        """A stream for START_REPLICATION, or QueryError (55006 when the slot is busy)."""
        origin = conn.session.origin
        slot = self._own_slot(origin, command.slot, create=True)
        if slot is None:
            slot = self.slots[command.slot] = Slot(command.slot, origin)
        if slot.active is not None and slot.active is not conn:
            raise ca.QueryError(
                ca.OBJECT_IN_USE,
                f'replication slot "{command.slot}" is active for PID {slot.active.pid}')
        durable = not conn.session.is_sync_worker
        if durable and not self.registry.may_stream(origin):
            # Its connector has not yet refreshed the subscription: Postgres
            # would skip changes to tables missing from it, for good.  The
            # apply worker retries after wal_retrieve_retry_interval.
            raise ca.QueryError(
                ca.OBJECT_NOT_IN_PREREQUISITE_STATE,
                f"Electric replication is not ready for {origin}: its subscription is being refreshed")
        base = self.base_for(origin)
        head = self.hub.head()
        requested = positions.position_for_lsn(command.lsn, base)
        # A subscriber that applied something (LSN above our base) from a hub
        # that never heard of it as a consumer got that LSN from other hub
        # data: the data directory was replaced.  So is one asking beyond our
        # head.  Either way its LSN names nothing here; raise the base above
        # it and replay this hub from the start (upserts make that safe).
        stranger = durable and command.lsn > base and not self.hub.has_consumer(hub_consumer(origin))
        if requested > head or stranger:
            new_base = positions.rebased(command.lsn, 0)
            log.warn(
                "slot {slot} ({connector}) asks for {lsn}, which this hub never issued (head {head} = {head_lsn}{why});"
                " the hub's data was replaced: raising the LSN base to {base} and streaming from the start",
                slot=command.slot, connector=origin, peer=conn.peer, lsn=format_lsn(command.lsn), head=head,
                head_lsn=format_lsn(positions.end_lsn(head, base)), base=format_lsn(new_base),
                why="" if requested > head else ", and no subscriber of this origin ever streamed from it")
            self.offsets.set_slot_base(origin, new_base)
            self._bases[origin] = base = new_base
            requested = positions.position_for_lsn(command.lsn, base)
            slot.confirmed = 0
        start = max(requested, min(slot.confirmed, head))
        if durable:
            self.echo.stream_starting(origin, command.lsn)
        stream = ReplicationStream(self, conn, slot, base, start, durable)
        stream.open()
        slot.active = conn
        slot.stream = stream
        slot.durable = slot.durable or durable
        log.info("slot {slot} streaming from {lsn} (position {pos}) to {peer}",
                 slot=command.slot, connector=origin, lsn=format_lsn(positions.end_lsn(start, base)),
                 pos=start, peer=conn.peer)
        return stream

    def slots_release(self, slot: Slot, conn: PublisherProtocol) -> None:
        if slot.active is conn:
            slot.active = None
            slot.stream = None

    def cancel(self, pid: int, key: int) -> None:
        for conn in list(self.connections):
            if conn.pid == pid and conn.secret == key:
                conn.run(conn.session.cancel())

    # --- service ------------------------------------------------------------------

    def startService(self):
        super().startService()
        tls = self.config.postgres_replication_tls
        if tls is not None:
            from electric.tls import server_context
            try:
                self.tls_context = server_context(tls)
            except Exception as e:  # the files changed since the configuration was checked
                self.running = False
                self.listener.fail(e)
                return
        self.listener.startService()
        if self.listener.port is None:
            self.running = False
            return
        if tls is not None:
            log.info("Postgres subscribers: TLS required on port {port} (certificate {cert})",
                     port=self.listener.bound_port, cert=tls.cert_file)
        waiters, self._listen_waiters = self._listen_waiters, []
        for d in waiters:
            d.callback(None)

    def stopService(self):
        super().stopService()
        d = self.listener.stopService()
        for conn in list(self.connections):
            conn.abandon("Electric is shutting down")
        return d

    def when_listening(self) -> defer.Deferred:
        """Fires (with None) once the port is bound: at once if it is already."""
        if self.port is not None:
            return defer.succeed(None)
        d = defer.Deferred()
        self._listen_waiters.append(d)
        return d

    def status(self) -> dict:
        host = self.port.getHost() if self.port is not None else None
        return {
            "listening": host is not None,
            "port": host.port if host is not None else None,
            "tls": self.config.postgres_replication_tls is not None,
            "connections": len(self.connections),
            "unauthenticated": self.unauthenticated,
            **self.counters,
            "slots": {name: slot.status() for name, slot in sorted(self.slots.items())},
        }

    def metrics(self) -> dict:
        """
        Plain numbers for /metrics (`electric.metrics`): open `connections`,
        `unauthenticated` ones, and per apply slot (each connector's
        subscription slot; short-lived table-sync slots are left out, see
        /api/status/details) whether its subscriber is `connected`, the
        `sent_position` (while connected), the `acked_position` it confirmed,
        `lag_transactions` (hub head - confirmed) and `lag_seconds` (since
        the commit of the oldest transaction sent and not confirmed; 0 once
        the head is confirmed; left out while disconnected and behind).  A
        connector whose subscriber has not come yet since Electric started
        is listed as not connected.  `errors` by kind (counted since start):
        ``pg_failed_login``, ``pg_auth_timeout``,
        ``pg_too_many_unauthenticated``, ``pg_refused_slot`` (see "Limits for
        untrusted peers"), ``pg_sender_timeout`` (a subscriber silent past the
        sender timeout was dropped), ``pg_encode_failed`` (a transaction
        could not be encoded for a subscriber).
        """
        try:
            head = self.hub.head()
        except HubError:
            head = None
        now = self.clock.seconds()
        slots = {name: slot.metrics(head, now) for name, slot in self.slots.items() if slot.is_apply_slot}
        for origin in self.credentials.names:
            if origin not in slots:
                slots[origin] = {"connector": origin, "connected": False}
        c = self.counters
        return {
            "connections": len(self.connections),
            "unauthenticated": self.unauthenticated,
            "slots": slots,
            "errors": {
                "pg_failed_login": c["failed_logins"],
                "pg_auth_timeout": c["auth_timeouts"],
                "pg_too_many_unauthenticated": c["too_many_unauthenticated"],
                "pg_refused_slot": c["refused_slots"],
                "pg_sender_timeout": c["sender_timeouts"],
                "pg_encode_failed": c["encode_failures"],
            },
        }
