"""
The Satellite websocket service: listener, per-connection driver, client-id registry.

`SatelliteService` listens on ``LISTEN_HOST:WEBSOCKET_PORT`` (path ``/ws``).
For every websocket it runs a `ClientConnection`, which owns one sans-IO
`SatelliteSession` and carries out the session's actions against the hub
(append, snapshot, subscribe), the offset store and the socket, feeding the
results back into the session.  The outgoing stream is pulled from the hub
subscription only while the session wants more *and* the socket is not
pushing back (the transport pauses us as its producer when the kernel buffer
is full), so a slow client never makes Electric buffer for it.  Clients
that are caught up are fed by one shared hub cursor instead of pulling each
(`electric.satellite.fanout`); a client leaves it the moment it cannot take
more and goes on with its own subscription.
"""

from __future__ import annotations

import collections
import dataclasses
import resource
import time
from typing import Deque, Dict, List, Optional

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.logger import Logger, LogLevel

from electric.hub.interface import HubError, SubscriptionClosed
from electric.listener import Listener
from electric.logs import bind
from electric.satellite import auth as auth_mod
from electric.satellite import codec
from electric.satellite import session as sm
from electric.satellite.fanout import Fanout

log = Logger()

HEARTBEAT_INTERVAL = 5.0
"""Seconds between heartbeat ticks: ping after one silent interval, close after another."""

AUTH_DEADLINE = 10.0
"""Seconds a new connection has to authenticate."""

CLAIM_WAIT = 1.0
"""How long a second connection with a live client id waits for the old one to go."""

PULL_BATCH = 100
"""Most hub items asked for per subscription pull (the hub also bounds an answer to CHUNK_CHANGES changes)."""

SYNC_ROWS = sm.SNAPSHOT_ROWS_PER_TRANSACTION
"""
Rows read from the hub per initial-sync pull: one client transaction.  The
frames of a pull are written whole even when the socket pushes back midway
(they wait in the transport's buffer), so this bounds what a client that
stopped reading holds.
"""

SYNC_READS = 4
"""
Most initial-sync chunks being read or encoded at once, over all clients (a
FIFO semaphore, so clients take turns).  A chunk's rows are decoded into
Python objects (~300 KB for 500 rows) and live until the session has encoded
them; without a cap a connect storm of N clients starting their sync at once
holds N chunks in flight, and the heap keeps that high-water mark after the
storm (freed memory scattered between live objects is not returned to the
system: measured ~800 KB of resident memory per stalled client).  The hub
reads with 3 threads, so one more keeps them busy while the reactor encodes.
"""

STOP_TIMEOUT = 5.0
"""stopService waits this long for connections to finish closing, then drops them."""

RECENT_REFUSALS = 20
"""How many refused client transactions /api/status/details lists (the count covers all)."""

SEND_MIGRATION_NOTIFICATIONS = False
"""
Default of `SatelliteService(migration_notifications=...)`.  Off because the
published electric-sql@0.4.3 client has no handler for the
SatMigrationNotification its own .proto defines: receiving one throws inside
its websocket message handler and kills the client process (seen with the
real client, see tests/test_satellite_e2e.py).  The real peer wins.
"""


LISTEN_BACKLOG = 1024
"""
Connections the kernel queues before Electric accepts them (Twisted's
default is 50): when thousands of clients reconnect at once, a full queue
drops their SYNs and each waits a second or more to retry.
"""

OPEN_FILES_WANTED = 16384
"""Open files (sockets) Electric asks for at start: room for 10,000 clients and everything else."""


def raise_open_files_limit(wanted: int = OPEN_FILES_WANTED):
    """
    Raise the soft RLIMIT_NOFILE to the hard limit (each client is a socket;
    the usual soft default of 1024 would refuse connections long before
    memory or CPU run out) and say so when even the hard limit is low.
    Returns the (soft, hard) limits in force.
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    except (ValueError, OSError) as e:
        log.warn("satellite: cannot raise the open files limit: {e}", e=e)
        return None
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warn("satellite: the open files limit is {n} (hard limit); fewer than {n} clients can connect"
                 " -- raise it (ulimit -n, LimitNOFILE=) to {wanted} or more", n=soft, wanted=wanted)
    return soft, hard


_ERROR_KINDS = {
    codec.INTERNAL: "internal",
    codec.AUTH_REQUIRED: "auth_required",
    codec.AUTH_FAILED: "auth_failed",
    codec.REPLICATION_FAILED: "replication_failed",
    codec.INVALID_REQUEST: "invalid_request",
    codec.PROTO_VSN_MISSMATCH: "protocol_version",
}
"""Error kind (in /metrics) of each SatErrorResp code a session closes with."""


class ClientConnection:
    """
    Drives one session.  `transport` is the websocket protocol; it must offer
    ``send_frame(bytes)``, ``close_connection(abort: bool)``.
    """

    def __init__(self, owner: "SatelliteService", transport, peer: str = "?"):
        self.owner = owner
        self.transport = transport
        self.peer = peer
        self.log = bind(log, peer=peer)
        self.reactor = owner.reactor
        self.clock = owner.clock
        self.hub = owner.hub
        self.session = sm.SatelliteSession(
            owner.registry,
            owner.authenticator,
            owner.config.regional_id,
            lsn_of=self.hub.client_lsn,
            position_of=self.hub.position_from_client_lsn,
            log_at=self._log_at,
            logger=self._log,
            on_refused=self._refused,
            totals=owner.totals,
        )
        self._subscription = None  # this client's own hub subscription, while it is not fed by the shared cursor
        self._sync = None  # the snapshot reader while an initial sync is under way
        self._pulling = False
        # The live stream: `_at` is the last complete transaction handed to the
        # session; `_part` the position and number of changes of one handed
        # in part; `_skip` the same, still to be dropped from a re-read of it.
        self._live = False
        self._attached = False  # fed by the service's shared cursor (`Fanout`)
        self._at = 0
        self._part_pos: Optional[int] = None
        self._part_n = 0
        self._skip_pos: Optional[int] = None
        self._skip_n = 0
        self._paused = False
        self._stream_generation = 0
        self._heartbeat = None  # the next heartbeat tick (an IDelayedCall)
        self._auth_timer = None
        self._lost = False
        self._claimed = False
        self._persisting = False
        self._persist_next: Optional[sm.PersistClientLsn] = None
        self.closed = defer.Deferred()

    def _log(self, text: str) -> None:
        self.log.info("satellite: {text}", text=text)

    def _log_at(self, level: str, text: str) -> None:
        self.log.emit(LogLevel.levelWithName(level), "satellite: {text}", text=text)

    def _refused(self, reason: str) -> None:
        self.owner._note_refusal(self.session.client_id, self.session.user_id, reason, self.log)

    # --- from the transport ----------------------------------------

    def opened(self) -> None:
        self._auth_timer = self.clock.callLater(AUTH_DEADLINE, self._auth_deadline)
        self._heartbeat = self.clock.callLater(HEARTBEAT_INTERVAL, self._beat)

    def _beat(self) -> None:
        # A plain timer rather than a LoopingCall: with thousands of clients
        # the Deferred machinery of a LoopingCall tick is a visible share of the reactor.
        self._heartbeat = self.clock.callLater(HEARTBEAT_INTERVAL, self._beat)
        actions = self.session.tick()
        if actions:
            self._run(actions)

    def frame(self, data: bytes, binary: bool) -> None:
        self._run(self.session.receive(data, binary))

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._pump()

    def lost(self) -> None:
        if self._lost:
            return
        self._lost = True
        if self._claimed:
            self.log.info("satellite: client disconnected")
        self.session.disconnected()
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        if self._heartbeat is not None and self._heartbeat.active():
            self._heartbeat.cancel()
        self._stop_stream()
        if self._claimed:
            self.owner._release(self.session.client_id, self)
        self.owner._connection_lost(self)
        self.closed.callback(None)

    # --- actions ---------------------------------------------------

    def _run(self, actions: List) -> None:
        for action in actions:
            if self._lost:
                if isinstance(action, sm.PersistClientLsn):
                    self._persist(action)
                continue
            if isinstance(action, sm.Send):
                self.transport.send_frame(action.data)
            elif isinstance(action, sm.Close):
                self._stop_stream()
                if action.detail:
                    self.transport.close_connection(action.abort, action.detail)
                else:
                    self.transport.close_connection(action.abort)
            elif isinstance(action, sm.ClaimClient):
                self._claim(action)
            elif isinstance(action, sm.StartOutgoing):
                self._start_stream(action)
            elif isinstance(action, sm.StopOutgoing):
                self._stop_stream()
            elif isinstance(action, sm.Append):
                self._append(action)
            elif isinstance(action, sm.PersistClientLsn):
                self._persist(action)
            else:
                raise TypeError(f"unknown session action {action!r}")
        self._pump()

    def _auth_deadline(self) -> None:
        self._auth_timer = None
        self._run(self.session.auth_deadline())

    @defer.inlineCallbacks
    def _claim(self, action: sm.ClaimClient):
        # The client id must be this user's (bound durably on first use)
        # before it may even wait for the id's live connection slot, so no
        # other user can hold that slot or act under the id.
        self.log = self.log.bind(client_id=action.client_id, user_id=action.user_id)
        try:
            ours = yield threads.deferToThreadPool(
                self.reactor, self.reactor.getThreadPool(),
                self.owner.offsets.claim_client, action.client_id, action.user_id,
            )
        except Exception as e:  # a broken offset store must not leave the client hanging
            self.log.failure("satellite: binding the client id to its user failed", level=LogLevel.error)
            if not self._lost:
                self._run(self.session.stream_failed(f"offset store: {e}"))
            return
        if self._lost:
            return
        if not ours:
            self.owner.foreign_client_ids += 1
            self._run(self.session.claim_refused_other_user())
            return
        granted = yield self.owner._claim(action.client_id, self)
        if self._lost:
            if granted:
                self.owner._release(action.client_id, self)
            return
        if not granted:
            self._run(self.session.claim_refused())
            return
        self._claimed = True
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        try:
            stored = yield defer.maybeDeferred(self.owner.offsets.client_lsn, action.client_id)
        except Exception as e:  # a broken offset store must not leave the client hanging
            self.log.failure("satellite: reading the client's stored LSN failed", level=LogLevel.error)
            self._run(self.session.stream_failed(f"offset store: {e}"))
            return
        if not self._lost:
            raise_limits = getattr(self.transport, "authenticated", None)
            if raise_limits is not None:
                raise_limits()  # before the session's answers: they may already be large
            self._run(self.session.claim_granted(stored))

    def _append(self, action: sm.Append) -> None:
        try:
            d = self.hub.append(action.transaction)
        except Exception as e:
            d = defer.fail(e)

        def done(_result):
            self._run(self.session.append_done(action.lsn))

        def failed(failure):
            reason = failure.getErrorMessage()
            rejected = reason.startswith("invalid transaction")
            if rejected:
                self.log.info("satellite: hub refused a transaction: {reason}", reason=reason)
            else:
                self.log.failure("satellite: append failed", failure, level=LogLevel.error)
            self._run(self.session.append_failed(reason, rejected=rejected))

        d.addCallbacks(done, failed)
        d.addErrback(lambda f: self.log.failure("satellite: after append", f))

    def _persist(self, action: sm.PersistClientLsn) -> None:
        """
        Store the client's last acknowledged LSN off the reactor thread (each
        store is an fsync), coalescing: while one write runs only the newest
        LSN waits, since only the latest one is ever read back.
        """
        self._persist_next = action
        if self._persisting:
            return
        self._persisting = True

        def write_next(_=None):
            action, self._persist_next = self._persist_next, None
            if action is None:
                self._persisting = False
                return None
            d = threads.deferToThreadPool(
                self.reactor, self.reactor.getThreadPool(),
                self.owner.offsets.set_client_lsn, action.client_id, action.lsn,
            )
            d.addErrback(lambda f: self.log.failure("satellite: storing the client's LSN failed", f, level=LogLevel.error))
            self.owner._pending_writes.add(d)
            d.addBoth(lambda r: (self.owner._pending_writes.discard(d), r)[1])
            d.addCallback(write_next)
            return d

        write_next()

    @defer.inlineCallbacks
    def _start_stream(self, action: sm.StartOutgoing):
        self._stop_stream()
        self._stream_generation += 1
        generation = self._stream_generation
        kind, position = action.kind, action.position
        try:
            if kind == sm.FROM_POSITION and position > self.hub.head():
                self._log(f"start position {position} is beyond this hub's head {self.hub.head()}: initial sync instead")
                kind = sm.FROM_START
            if kind == sm.FROM_START:
                reader = yield self.hub.snapshot()
                if generation != self._stream_generation or self._lost:
                    reader.close()
                    return
                # The initial sync is pulled chunk by chunk by `_pump`, like the live stream.
                self._sync = reader
            elif kind == sm.FROM_HEAD:
                position = self.hub.head()
            if generation != self._stream_generation or self._lost:
                return
            if self._sync is None:
                self.session.streaming_from(position)
                self._go_live(position)
        except HubError as e:
            if generation == self._stream_generation:
                self._run(self.session.stream_failed(str(e)))
            return
        self._pump()

    def _go_live(self, position: int) -> None:
        """The live stream starts after `position`: from the shared cursor if it is there, else pulled on our own."""
        self._live = True
        self._at = position
        self._part_pos = self._skip_pos = None
        self._part_n = self._skip_n = 0
        if not self.owner.fanout.attach(self, position):
            self._subscription = self.hub.subscribe(position)

    def _stop_stream(self) -> None:
        self._stream_generation += 1
        self._live = False
        self._part_pos = self._skip_pos = None
        if self._attached:
            self._attached = False
            self.owner.fanout.detach(self)
        self.owner.fanout.unwatch(self)
        sub, self._subscription = self._subscription, None
        if sub is not None:
            sub.close()
        reader, self._sync = self._sync, None
        if reader is not None:
            reader.close()

    def _pump(self) -> None:
        """Pull the next chunk (initial sync, then hub items) only while the session and the socket want more."""
        if self._pulling or self._paused or self._lost or not self.session.wants_transactions:
            return
        if self._sync is not None:
            return self._pull_sync(self._sync)
        sub = self._subscription
        if sub is None:
            return
        if self._join():
            return
        self._pulling = True
        self.owner.fanout.watch(self)
        try:
            d = sub.next(PULL_BATCH)
        except Exception as e:
            d = defer.fail(e)

        def got(items):
            self._pulling = False
            if sub is not self._subscription or self._lost:
                return
            self.owner.fanout.unwatch(self)
            items = self._trim(items)
            self._handed(items)
            if items:
                self._run(self.session.outgoing(items))
            else:
                self._pump()

        def failed(failure):
            self._pulling = False
            if sub is not self._subscription or self._lost:
                return None
            self.owner.fanout.unwatch(self)
            if failure.check(SubscriptionClosed):
                reason = "hub subscription closed"
            else:
                self.log.failure("satellite: hub subscription failed", failure, level=LogLevel.error)
                reason = failure.getErrorMessage()
            self._subscription = None
            self._run(self.session.stream_failed(reason))

        d.addCallbacks(got, failed)
        d.addErrback(lambda f: self.log.failure("satellite: delivering transactions", f))

    # --- the shared cursor (`Fanout`) --------------------------------

    def _join(self) -> bool:
        """Caught up with the shared cursor, at a transaction boundary: close our own subscription and join it."""
        if not self._live or self._part_pos is not None or self._skip_pos is not None:
            return False
        sub, pulling = self._subscription, self._pulling
        self._subscription, self._pulling = None, False
        if not self.owner.fanout.attach(self, self._at):
            self._subscription, self._pulling = sub, pulling
            return False
        if sub is not None:
            sub.close()  # an outstanding next() fails; its handlers see it is no longer ours
        return True

    def join_if_caught_up(self) -> None:
        """Called by the shared cursor after a delivery while our own pull waits."""
        if self._pulling and not self._lost and not self._paused:
            self._join()

    def shared(self, items, cache: sm.FrameCache) -> None:
        """Items from the shared cursor; a client that cannot take them now goes on on its own."""
        if self._lost or not self._attached:
            return
        if self._paused or not self.session.wants_transactions:
            return self._detach()
        self._handed(items)
        self._run(self.session.outgoing(items, cache))
        if self._attached and (self._paused or not self.session.wants_transactions):
            self._detach()

    def shared_failed(self, reason: str) -> None:
        self._attached = False
        if self._lost:
            return
        self._live = False
        self._run(self.session.stream_failed(reason))

    def _detach(self) -> None:
        """Leave the shared cursor: our own subscription from the last complete transaction we were handed."""
        self._attached = False
        self.owner.fanout.detach(self)
        if self._part_pos is not None:
            self._skip_pos, self._skip_n = self._part_pos, self._part_n
        try:
            self._subscription = self.hub.subscribe(self._at)
        except HubError as e:
            self._live = False
            self._run(self.session.stream_failed(str(e)))
            return
        self._pump()

    def _handed(self, items) -> None:
        for item in items:
            if item.more:
                if self._part_pos != item.position:
                    self._part_pos, self._part_n = item.position, 0
                self._part_n += len(item.changes)
            else:
                self._at = item.position
                self._part_pos, self._part_n = None, 0

    def _trim(self, items):
        """
        Drop what this client already has of a transaction it was handed in
        part before it left the shared cursor: its own subscription hands the
        whole transaction again, in the same order (a catch-up is not
        re-read identically, so it goes again whole, as after a reconnect).
        """
        if self._skip_pos is None:
            return items
        out = []
        for item in items:
            if self._skip_pos is not None:
                if item.position != self._skip_pos or item.catch_up:
                    self._skip_pos = None
                else:
                    n = len(item.changes)
                    if n <= self._skip_n and item.more:
                        self._skip_n -= n
                        continue
                    item = dataclasses.replace(item, changes=item.changes[min(n, self._skip_n):])
                    self._skip_pos = None
            out.append(item)
        return out

    def _pull_sync(self, reader) -> None:
        """
        Read and send the next chunk of the initial sync, holding one of the
        service's SYNC_READS slots from the read until its frames are written.
        """
        self._pulling = True
        generation = self._stream_generation

        def read():
            if reader is not self._sync or self._lost:  # the sync stopped while waiting for a slot
                self._pulling = False
                self._pump()  # a stream started meanwhile waited for this pull to end
                return None
            d = reader.next(SYNC_ROWS)
            d.addCallbacks(got, failed)
            return d

        def got(rows):
            self._pulling = False
            if reader is not self._sync or self._lost:
                return
            if rows:
                self._run(self.session.initial_sync(rows))
                return
            self._sync = None
            reader.close()
            # The end of the sync goes to the session before any live item can.
            self._run(self.session.initial_sync_done(reader.position))
            if self._lost or generation != self._stream_generation:
                return
            try:
                self._go_live(reader.position)
            except HubError as e:
                self._run(self.session.stream_failed(str(e)))
                return
            self._pump()

        def failed(failure):
            self._pulling = False
            if reader is not self._sync or self._lost:
                return None
            self._sync = None
            reader.close()
            self.log.failure("satellite: initial sync failed", failure, level=LogLevel.error)
            self._run(self.session.stream_failed(f"initial sync: {failure.getErrorMessage()}"))

        d = self.owner.sync_reads.run(read)
        d.addErrback(lambda f: self.log.failure("satellite: delivering the initial sync", f))

    # --- service-initiated -------------------------------------------

    def send_migration(self, old_version: str, old_hash: str, new_version: str, new_hash: str) -> bool:
        gen = self.session.gen
        if self._lost or self.session.state != sm.READY or not gen.has("SatMigrationNotification"):
            return False
        msg = gen.pb.SatMigrationNotification(
            old_schema_version=old_version,
            old_schema_hash=old_hash,
            new_schema_version=new_version,
            new_schema_hash=new_hash,
        )
        self.transport.send_frame(codec.encode(gen, msg))
        return True

    def shutdown(self) -> None:
        if not self._lost:
            self._stop_stream()
            self.transport.close_connection(False)


class SatelliteService(service.Service):
    """
    `config`: `electric.config.Config` (listen_host, websocket_port,
    regional_id, auth settings).  `hub`: an `electric.hub.interface.IHub`.
    `offsets`: the `OffsetStore` (``claim_client``, ``client_lsn``,
    ``set_client_lsn``; claims and writes run in the thread pool).
    """

    name = "satellite"

    def __init__(self, config, hub, registry, offsets, reactor=None, authenticator=None,
                 migration_notifications=None, clock=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        # The authentication deadline, heartbeats, the claim wait and the stop
        # timeout run on `clock` (an IReactorTime: the reactor unless a test
        # passes a task.Clock).
        self.clock = clock if clock is not None else reactor
        self.config = config
        self.hub = hub
        self.registry = registry
        self.offsets = offsets
        self.authenticator = authenticator if authenticator is not None else auth_mod.from_config(config)
        self.migration_notifications = (
            SEND_MIGRATION_NOTIFICATIONS if migration_notifications is None else migration_notifications
        )
        self.listener = Listener(reactor, "Satellite websocket", "wss" if config.websocket_tls else "ws",
                                 config.listen_host, config.websocket_port, None, tls=config.websocket_tls,
                                 backlog=LISTEN_BACKLOG)
        self.connections: List[ClientConnection] = []
        self._clients: Dict[str, ClientConnection] = {}
        self._claim_waiters: Dict[str, List[defer.Deferred]] = {}
        self._pending_writes = set()
        self.refused_transactions = 0
        self.foreign_client_ids = 0
        self._recent_refusals: Deque[dict] = collections.deque(maxlen=RECENT_REFUSALS)
        self.fanout = Fanout(hub, PULL_BATCH)
        self.totals = sm.SessionTotals()  # every session adds to it (for /metrics)
        self.sync_reads = defer.DeferredSemaphore(SYNC_READS)  # initial-sync chunks in flight, all clients

    @property
    def port(self) -> int:
        """The TCP port actually listened on (useful with WEBSOCKET_PORT=0 in tests)."""
        return self.listener.bound_port

    @property
    def listening(self) -> defer.Deferred:
        """Fires with the IListeningPort once bound; errbacks (CannotListenError) when the port is taken."""
        return self.listener.listening

    def startService(self):
        from electric.satellite.transport import SatelliteServerFactory

        service.Service.startService(self)
        raise_open_files_limit()
        tls = self.config.websocket_tls
        self.listener.factory = SatelliteServerFactory(self, secure=tls is not None)
        self.listener.startService()
        if self.listener.port is None:
            self.running = False
            return
        log.info("satellite websocket on path /ws ({mode} auth)", mode=self.authenticator.mode)

    @defer.inlineCallbacks
    def stopService(self):
        service.Service.stopService(self)
        yield self.listener.stopService()
        waiting = [c.closed for c in self.connections]
        for c in list(self.connections):
            c.shutdown()
        if waiting:
            done = defer.DeferredList(waiting, consumeErrors=True)
            timer = self.clock.callLater(STOP_TIMEOUT, lambda: [c.transport.close_connection(True) for c in list(self.connections)])
            yield done
            if timer.active():
                timer.cancel()
        self.fanout.close()
        while self._pending_writes:  # client LSNs being stored: let them land before the store closes
            yield defer.DeferredList(list(self._pending_writes), consumeErrors=True)

    # --- connections --------------------------------------------------

    def connection_opened(self, transport, peer: str = "?") -> ClientConnection:
        conn = ClientConnection(self, transport, peer)
        self.connections.append(conn)
        conn.opened()
        return conn

    def _connection_lost(self, conn: ClientConnection) -> None:
        if conn in self.connections:
            self.connections.remove(conn)

    def _claim(self, client_id: str, conn: ClientConnection) -> defer.Deferred:
        """Fires True once `conn` is the one live connection of `client_id`, False after CLAIM_WAIT."""
        if client_id not in self._clients:
            self._clients[client_id] = conn
            return defer.succeed(True)
        d = defer.Deferred()
        self._claim_waiters.setdefault(client_id, []).append(d)

        def give_up():
            waiters = self._claim_waiters.get(client_id, [])
            if d in waiters:
                waiters.remove(d)
                if not waiters:
                    del self._claim_waiters[client_id]
                d.callback(False)

        timer = self.clock.callLater(CLAIM_WAIT, give_up)

        def settled(result):
            if timer.active():
                timer.cancel()
            if result:
                self._clients[client_id] = conn
            return result

        d.addCallback(settled)
        return d

    def _release(self, client_id: str, conn: ClientConnection) -> None:
        if self._clients.get(client_id) is not conn:
            return
        del self._clients[client_id]
        waiters = self._claim_waiters.get(client_id)
        if waiters:
            d = waiters.pop(0)
            if not waiters:
                del self._claim_waiters[client_id]
            self._clients[client_id] = None  # reserved until `settled` stores the new owner
            d.callback(True)

    def _note_refusal(self, client_id: Optional[str], user_id: Optional[str], reason: str, logger=None) -> None:
        self.refused_transactions += 1
        self._recent_refusals.append(
            {"client_id": client_id, "user_id": user_id, "reason": reason, "at": round(time.time(), 3)})
        (logger or log).warn("satellite: refused a transaction of client {client_id} (user {user_id}): {reason}",
                             client_id=client_id, user_id=user_id, reason=reason)

    def status(self) -> dict:
        """A JSON-able summary for /api/status."""
        return {
            "listening": self.listener.port is not None,
            "port": self.port,
            "tls": self.config.websocket_tls is not None,
            "auth": self.authenticator.mode,
            "connections": len(self.connections),
            "refused_transactions": self.refused_transactions,
            "refused_foreign_client_ids": self.foreign_client_ids,
            "recent_refusals": list(self._recent_refusals),
            "clients": [
                {
                    "client_id": c.session.client_id,
                    "user_id": c.session.user_id,
                    "protocol": c.session.gen.name,
                    "state": c.session.state,
                    "outgoing": c.session.outgoing_state,
                    "incoming": c.session.incoming_state,
                    "appended": c.session.appended,
                    "delivered": c.session.delivered,
                    "refused": c.session.refused,
                }
                for c in self.connections
                if c.session.client_id is not None
            ],
        }

    def metrics(self) -> dict:
        """
        Plain numbers for /metrics (`electric.metrics`), totals over every
        client (never per client id): open websocket `connections`,
        authenticated `clients` (each holding its client id),
        `transactions_in` (client transactions the hub made durable),
        `transactions_out` (client transactions sent, initial-sync batches
        included; a hub transaction bigger than one chunk is sent as one
        client transaction per chunk and counts once per chunk),
        `refused_writes` (client transactions refused by validation or the
        hub's write guards, nothing of them stored: `refused_transactions`),
        `auth_failures` (connections closed for failed or missing
        authentication, the deadline included), and `errors` by kind:
        ``satellite_<reason>`` for each SatErrorResp reason a connection was
        closed with (``auth_required``, ``auth_failed``, ``invalid_request``
        (refused writes and foreign client ids among them),
        ``protocol_version``, ``replication_failed``, ``internal``),
        ``satellite_foreign_client_id`` (a client id bound to another user)
        and ``satellite_heartbeat_timeout``.
        """
        t = self.totals
        closed = t.closed_by_error
        errors = {f"satellite_{kind}": closed.get(code, 0) for code, kind in _ERROR_KINDS.items()}
        errors["satellite_heartbeat_timeout"] = t.heartbeat_timeouts
        errors["satellite_foreign_client_id"] = self.foreign_client_ids
        return {
            "connections": len(self.connections),
            "clients": sum(1 for conn in self._clients.values() if conn is not None),
            "transactions_in": t.transactions_in,
            "transactions_out": t.transactions_out,
            "refused_writes": self.refused_transactions,
            "auth_failures": closed.get(codec.AUTH_REQUIRED, 0) + closed.get(codec.AUTH_FAILED, 0),
            "errors": errors,
        }

    def connected_clients(self) -> List[str]:
        return sorted(k for k, v in self._clients.items() if v is not None)

    def notify_migration(self, old_version: str, old_hash: str, new_version: str, new_hash: str) -> int:
        """
        Tell every authenticated client of a generation that has
        SatMigrationNotification (V0_2) that the schema changed; returns how
        many were told.  Sends nothing unless the service was made with
        ``migration_notifications=True`` (see SEND_MIGRATION_NOTIFICATIONS).
        """
        if not self.migration_notifications:
            log.info(
                "satellite: migration {old} -> {new} applied; notifications are off (the electric-sql@0.4.3 client cannot take them)",
                old=old_version, new=new_version,
            )
            return 0
        sent = 0
        for conn in list(self.connections):
            if conn.send_migration(old_version, old_hash, new_version, new_hash):
                sent += 1
        return sent
