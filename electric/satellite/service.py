"""
The Satellite websocket service: listener, per-connection driver, client-id registry.

`SatelliteService` listens on ``LISTEN_HOST:WEBSOCKET_PORT`` (path ``/ws``).
For every websocket it runs a `ClientConnection`, which owns one sans-IO
`SatelliteSession` and carries out the session's actions against the hub
(append, snapshot, subscribe), the offset store and the socket, feeding the
results back into the session.  The outgoing stream is pulled from the hub
subscription only while the session wants more *and* the socket is not
pushing back (the transport pauses us as its producer when the kernel buffer
is full), so a slow client never makes Electric buffer for it.
"""

from __future__ import annotations

import collections
import time
from typing import Deque, Dict, List, Optional

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.logger import Logger

from electric.hub.interface import HubError, SubscriptionClosed
from electric.listener import Listener
from electric.satellite import auth as auth_mod
from electric.satellite import codec
from electric.satellite import session as sm

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
        self.reactor = owner.reactor
        self.clock = owner.clock
        self.hub = owner.hub
        self.session = sm.SatelliteSession(
            owner.registry,
            owner.authenticator,
            owner.config.regional_id,
            lsn_of=self.hub.client_lsn,
            position_of=self.hub.position_from_client_lsn,
            logger=self._log,
            on_refused=self._refused,
            totals=owner.totals,
        )
        self._subscription = None
        self._sync = None  # the snapshot reader while an initial sync is under way
        self._pulling = False
        self._paused = False
        self._stream_generation = 0
        self._heartbeat: Optional[task.LoopingCall] = None
        self._auth_timer = None
        self._lost = False
        self._claimed = False
        self._persisting = False
        self._persist_next: Optional[sm.PersistClientLsn] = None
        self.closed = defer.Deferred()

    def _log(self, text: str) -> None:
        who = self.session.client_id if self.session.client_id is not None else self.peer
        log.info("satellite {who}: {text}", who=who, text=text)

    def _refused(self, reason: str) -> None:
        self.owner._note_refusal(self.session.client_id, self.session.user_id, reason)

    # --- from the transport ----------------------------------------

    def opened(self) -> None:
        self._auth_timer = self.clock.callLater(AUTH_DEADLINE, self._auth_deadline)
        self._heartbeat = task.LoopingCall(lambda: self._run(self.session.tick()))
        self._heartbeat.clock = self.clock
        self._heartbeat.start(HEARTBEAT_INTERVAL, now=False)

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
        self.session.disconnected()
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
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
        try:
            ours = yield threads.deferToThreadPool(
                self.reactor, self.reactor.getThreadPool(),
                self.owner.offsets.claim_client, action.client_id, action.user_id,
            )
        except Exception as e:  # a broken offset store must not leave the client hanging
            log.failure("satellite: binding client id {client} to its user failed", client=action.client_id)
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
            log.failure("satellite: reading the stored LSN of {client} failed", client=action.client_id)
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
                log.info("satellite {client}: hub refused a transaction: {reason}", client=self.session.client_id, reason=reason)
            else:
                log.failure("satellite {client}: append failed", failure, client=self.session.client_id)
            self._run(self.session.append_failed(reason, rejected=rejected))

        d.addCallbacks(done, failed)
        d.addErrback(lambda f: log.failure("satellite: after append", f))

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
            d.addErrback(lambda f: log.failure("satellite: storing the LSN of {client} failed", f, client=action.client_id))
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
                self._subscription = self.hub.subscribe(position)
                self.session.streaming_from(position)
        except HubError as e:
            if generation == self._stream_generation:
                self._run(self.session.stream_failed(str(e)))
            return
        self._pump()

    def _stop_stream(self) -> None:
        self._stream_generation += 1
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
        self._pulling = True
        try:
            d = sub.next(PULL_BATCH)
        except Exception as e:
            d = defer.fail(e)

        def got(items):
            self._pulling = False
            if sub is not self._subscription or self._lost:
                return
            self._run(self.session.outgoing(items))

        def failed(failure):
            self._pulling = False
            if sub is not self._subscription or self._lost:
                return None
            if failure.check(SubscriptionClosed):
                reason = "hub subscription closed"
            else:
                log.failure("satellite {client}: hub subscription failed", failure, client=self.session.client_id)
                reason = failure.getErrorMessage()
            self._subscription = None
            self._run(self.session.stream_failed(reason))

        d.addCallbacks(got, failed)
        d.addErrback(lambda f: log.failure("satellite: delivering transactions", f))

    def _pull_sync(self, reader) -> None:
        self._pulling = True
        d = reader.next(SYNC_ROWS)

        def got(rows):
            self._pulling = False
            if reader is not self._sync or self._lost:
                return
            if rows:
                self._run(self.session.initial_sync(rows))
                return
            self._sync = None
            reader.close()
            try:
                self._subscription = self.hub.subscribe(reader.position)
            except HubError as e:
                self._run(self.session.stream_failed(str(e)))
                return
            self._run(self.session.initial_sync_done(reader.position))

        def failed(failure):
            self._pulling = False
            if reader is not self._sync or self._lost:
                return None
            self._sync = None
            reader.close()
            log.failure("satellite {client}: initial sync failed", failure, client=self.session.client_id)
            self._run(self.session.stream_failed(f"initial sync: {failure.getErrorMessage()}"))

        d.addCallbacks(got, failed)
        d.addErrback(lambda f: log.failure("satellite: delivering the initial sync", f))

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
                                 config.listen_host, config.websocket_port, None, tls=config.websocket_tls)
        self.connections: List[ClientConnection] = []
        self._clients: Dict[str, ClientConnection] = {}
        self._claim_waiters: Dict[str, List[defer.Deferred]] = {}
        self._pending_writes = set()
        self.refused_transactions = 0
        self.foreign_client_ids = 0
        self._recent_refusals: Deque[dict] = collections.deque(maxlen=RECENT_REFUSALS)
        self.totals = sm.SessionTotals()  # every session adds to it (for /metrics)

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

    def _note_refusal(self, client_id: Optional[str], user_id: Optional[str], reason: str) -> None:
        self.refused_transactions += 1
        self._recent_refusals.append(
            {"client_id": client_id, "user_id": user_id, "reason": reason, "at": round(time.time(), 3)})
        log.warn("satellite: refused a transaction of client {client} (user {user}): {reason}",
                 client=client_id, user=user_id, reason=reason)

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
