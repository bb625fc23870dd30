"""
The logical-replication client connection to one Postgres (connection B of
postgres-inbound.md section 2).

A thin Twisted protocol over the sans-IO `ReplicationSession`
(`electric.postgres.source.session`), which holds every protocol decision:
TLS negotiation by sslmode, authentication, IDENTIFY_SYSTEM,
START_REPLICATION and the stream.  This module only moves bytes, runs the
TLS handshake the session asks for (`electric.postgres.tls.ClientTLS`), keeps
the handshake timer, pauses the socket for the consumer and hands it the
stream: XLogData payloads go to the consumer, keepalives are answered with
the consumer's flush position, and the consumer's acknowledgements go out
as standby status updates.  Everything about transactions, acknowledgement
order and flow control lives in the consumer
(`electric.postgres.source.connector`).
"""

from __future__ import annotations

from typing import Optional

from OpenSSL import SSL
from twisted.internet import defer, protocol
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from zope.interface import Interface, implementer

from electric.postgres.protocol.lsn import pg_now
from electric.postgres.source.session import (
    CLOSED,
    FAILED,
    NEW,
    TLS_HANDSHAKE,
    Deliver,
    Fail,
    Keepalive,
    ReplicationSession,
    Send,
    SlotCreated,
    StartTLS,
    Streaming,
)
from electric.postgres.tls import ClientTLS, TLSError, TLSSettings

log = Logger(namespace="electric.postgres.source.replication")

__all__ = ["IStreamConsumer", "ReplicationClient", "ReplicationError", "connect"]


class ReplicationError(Exception):
    """The server refused or broke the replication connection; the text says why."""


class IStreamConsumer(Interface):
    def stream_started(client):
        """CopyBoth began: XLogData follows."""

    def xlog_data(wal_start, wal_end, data):
        """One pgoutput message (bytes) ending at WAL position `wal_end`."""

    def keepalive(wal_end):
        """A keepalive; return the LSN to report as flushed."""


@implementer(IHandshakeListener)
class ReplicationClient(protocol.Protocol):
    """
    One connection, driven by its `session` (see there for the states).
    `started` fires when streaming begins (or fails with a `ReplicationError`
    carrying the reason); `done` fires with the reason text when the
    connection ends.  `host` is what TLS checks the certificate against
    (`connect` sets it).
    """

    def __init__(self, user: str, password: str, database: str, slot: str, publication: str,
                 consumer, label: str = "", clock=pg_now, tls: TLSSettings = TLSSettings(),
                 session: Optional[ReplicationSession] = None, tls_home: Optional[str] = None,
                 create_slot: bool = False, temporary: bool = False):
        self.consumer = consumer
        self.label = label or database
        self.host = ""
        self.tls_home = tls_home
        self.session = session or ReplicationSession(
            user, password, database, slot, publication,
            application_name=f"electric_{self.label}", tls=tls, clock=clock,
            create_slot=create_slot, temporary=temporary)
        self.started: defer.Deferred = defer.Deferred()
        self.done: defer.Deferred = defer.Deferred()
        self._tls: Optional[ClientTLS] = None
        self._paused = False

    # -- what the session knows --

    @property
    def state(self) -> str:
        return self.session.state

    @property
    def error(self) -> Optional[str]:
        return self.session.error

    @property
    def system(self) -> Optional[tuple]:
        return self.session.system

    @property
    def last_received(self) -> int:
        return self.session.last_received

    @property
    def last_flushed(self) -> int:
        return self.session.last_flushed

    @property
    def tls(self) -> TLSSettings:
        return self.session.tls

    @property
    def encrypted(self) -> bool:
        return self.session.encrypted

    @property
    def created(self) -> Optional[SlotCreated]:
        """The slot this connection created (consistent point, exported snapshot), if it was asked to."""
        return self.session.created

    def next_attempt(self) -> Optional["ReplicationClient"]:
        """A client for libpq's second try (prefer/allow), or None; see `ReplicationSession.next_attempt`."""
        session = self.session.next_attempt()
        if session is None:
            return None
        client = ReplicationClient(session.user, session.password, session.database, session.slot,
                                   session.publication, self.consumer, label=self.label, session=session,
                                   tls_home=self.tls_home)
        client.host = self.host
        return client

    # -- connection --

    def connectionMade(self):
        self._run(self.session.start())

    def dataReceived(self, data: bytes):
        self._run(self.session.feed(data))

    def handshakeCompleted(self):
        problem = self._tls.check_peer(self.transport.getHandle()) if self._tls is not None else None
        if problem is not None:
            self._run(self.session.tls_failed(problem))
        else:
            self._run(self.session.tls_established())

    def connectionLost(self, reason=protocol.connectionDone):
        self._run(self.session.connection_lost(self._describe(reason)))
        text = self.session.error or reason.getErrorMessage()
        if not self.started.called:
            self.started.errback(ReplicationError(text))
        if not self.done.called:
            self.done.callback(text)

    def _describe(self, reason) -> str:
        error = reason.value
        if isinstance(error, SSL.Error):
            detail = self._tls.describe(error) if self._tls is not None else str(error)
            return detail if self.session.state == TLS_HANDSHAKE else f"TLS error: {detail}"
        return reason.getErrorMessage()

    # -- control from the consumer --

    def send_status(self, flushed: int, reply_requested: bool = False) -> None:
        """Report `flushed` (and everything received so far as written)."""
        self._run(self.session.report(flushed, force=True))

    def start_streaming(self) -> None:
        """A connection that created its slot holds until this: START_REPLICATION now."""
        self._run(self.session.start_streaming())

    def pause(self) -> None:
        if not self._paused and self.transport is not None and self.state != CLOSED:
            self._paused = True
            self.transport.pauseProducing()

    def resume(self) -> None:
        if self._paused and self.transport is not None and self.state != CLOSED:
            self._paused = False
            self.transport.resumeProducing()

    def close(self, why: str = "closed by Electric") -> None:
        """Drop the connection; Postgres resends everything after the last flush."""
        if self.transport is not None:
            self._run(self.session.close(why))

    # -- running the session's actions --

    def _run(self, actions) -> None:
        session = self.session
        for action in actions:
            try:
                if type(action) is Deliver:  # nearly every action while streaming
                    if session.state not in (FAILED, CLOSED):
                        self.consumer.xlog_data(*action)
                    continue
                self._do(action)
            except Exception as e:  # a consumer bug must not wedge the stream
                log.failure("replication stream: failed handling {kind}", connector=self.label,
                            kind=type(action).__name__)
                self._run(self.session.close(f"internal error: {e}"))
                return

    def _do(self, action) -> None:
        if isinstance(action, Send):
            if self.transport is not None:
                self.transport.write(action.data)
        elif isinstance(action, Deliver):
            if self.state not in (FAILED, CLOSED):
                self.consumer.xlog_data(action.wal_start, action.wal_end, action.data)
        elif isinstance(action, Keepalive):
            if self.state not in (FAILED, CLOSED):
                flushed = self.consumer.keepalive(action.wal_end)
                self._run(self.session.report(flushed, force=action.reply_requested))
        elif isinstance(action, Streaming):
            self.consumer.stream_started(self)
            if not self.started.called:
                self.started.callback(self)
        elif isinstance(action, SlotCreated):
            # `started` means "connected and ready for the caller": here,
            # holding the exported snapshot until `start_streaming`.
            if not self.started.called:
                self.started.callback(self)
        elif isinstance(action, StartTLS):
            try:
                self._tls = ClientTLS(self.session.tls, self.host, home=self.tls_home)
            except TLSError as e:
                self._run(self.session.tls_failed(str(e), handshake=False))
                return
            self.transport.startTLS(self._tls)
        elif isinstance(action, Fail):
            if self.transport is not None:
                self.transport.abortConnection()


async def _attempt(reactor, host: str, port: int, client: ReplicationClient, timeout: float):
    endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    try:
        await connectProtocol(endpoint, client)
    except Exception as e:
        raise ReplicationError(f"cannot connect to {host}:{port}: {e}") from None
    handshake = max(10.0, 3 * timeout)
    timer = reactor.callLater(handshake, client.close,
                              f"no replication stream after {handshake:.0f} s (stuck in {client.state})")
    try:
        return await client.started
    finally:
        if timer.active():
            timer.cancel()


def connect(reactor, host: str, port: int, client: ReplicationClient, timeout: float = 5.0):
    """
    Deferred firing with the streaming client (errback with a
    `ReplicationError` on failure).  That is `client`, or under sslmode
    prefer/allow the client of libpq's second attempt when the first one
    failed before logging in.  A server that accepts the connection but never
    gets to streaming within a few timeouts is dropped rather than waited
    for forever.  Failures before streaming name the sslmode.
    """
    return defer.ensureDeferred(_connect(reactor, host, port, client, timeout))


async def _connect(reactor, host: str, port: int, client: ReplicationClient, timeout: float):
    client.host = host
    earlier = ""
    while True:
        try:
            return await _attempt(reactor, host, port, client, timeout)
        except ReplicationError as e:
            text = f"{earlier}{e}"
            retry = client.next_attempt()
            if retry is None:
                if client.session.state != NEW:
                    text += f" (sslmode={client.tls.mode})"
                raise ReplicationError(text) from None
            log.info("replication stream: {how} failed ({error}); trying {next} as sslmode={mode} does",
                     connector=client.label, how="TLS" if client.session.use_tls else "connecting without TLS",
                     error=str(e), next="without TLS" if not retry.session.use_tls else "with TLS",
                     mode=client.tls.mode)
            earlier = f"{text}; then {'with' if retry.session.use_tls else 'without'} TLS: "
            client = retry
