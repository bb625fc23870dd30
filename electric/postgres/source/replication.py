"""
The logical-replication client connection to one Postgres (connection B of
postgres-inbound.md section 2).

A thin Twisted protocol over the sans-IO wire codec: it authenticates,
identifies the system, starts pgoutput v1 from the slot's confirmed
position and then only moves bytes: XLogData payloads go to the consumer,
keepalives that ask for it are answered with the consumer's flush position,
and the consumer's acknowledgements go out as standby status updates.
Everything about transactions, acknowledgement order and flow control lives
in the consumer (`electric.postgres.source.connector`).
"""

from __future__ import annotations

from typing import Optional

from twisted.internet import defer, protocol
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.logger import Logger
from zope.interface import Interface

from electric.postgres.protocol import auth
from electric.postgres.protocol.cursor import ProtocolError
from electric.postgres.protocol.messages import (
    Authentication,
    BackendKeyData,
    CommandComplete,
    CopyBothResponse,
    CopyData,
    CopyDone,
    DataRow,
    ErrorResponse,
    NoticeResponse,
    ParameterStatus,
    Query,
    ReadyForQuery,
    RowDescription,
    StartupMessage,
)
from electric.postgres.protocol.parsers import BackendParser
from electric.postgres.protocol.replication_messages import PrimaryKeepalive, StandbyStatusUpdate, XLogData
from electric.postgres.protocol.lsn import pg_now

log = Logger(namespace="electric.postgres.source.replication")

# XLogData carrying one pgoutput message; a 1 GB row is Postgres's own limit.
MAX_MESSAGE_SIZE = (1 << 30) + 1024


class ReplicationError(Exception):
    """The server refused or broke the replication connection; the text says why."""


class IStreamConsumer(Interface):
    def stream_started(client):
        """CopyBoth began: XLogData follows."""

    def xlog_data(wal_start, wal_end, data):
        """One pgoutput message (bytes) ending at WAL position `wal_end`."""

    def keepalive(wal_end):
        """A keepalive; return the LSN to report as flushed."""


def start_replication_command(slot: str, publication: str, proto_version: int = 1) -> str:
    pub = publication.replace("'", "''")
    return (f"START_REPLICATION SLOT {slot} LOGICAL 0/0 "
            f"(proto_version '{proto_version}', publication_names '{pub}')")


class ReplicationClient(protocol.Protocol):
    """
    States: ``startup`` → ``auth`` → ``identify`` → ``start`` → ``streaming``
    → (``failed`` →) ``closed``.  `started` fires when streaming begins (or fails with a
    `ReplicationError` carrying the server's message); `done` fires with the
    reason text when the connection ends.
    """

    def __init__(self, user: str, password: str, database: str, slot: str, publication: str,
                 consumer, label: str = "", clock=pg_now):
        self.user = user
        self.password = password
        self.database = database
        self.slot = slot
        self.publication = publication
        self.consumer = consumer
        self.label = label or database
        self._clock = clock
        self._parser = BackendParser(MAX_MESSAGE_SIZE)
        self._auth = None
        self.state = "startup"
        self.error: Optional[str] = None
        self.system: Optional[tuple] = None
        self.last_received = 0
        self.last_flushed = 0
        self.started: defer.Deferred = defer.Deferred()
        self.done: defer.Deferred = defer.Deferred()
        self._paused = False

    # -- connection --

    def connectionMade(self):
        params = {"user": self.user, "database": self.database, "replication": "database",
                  "application_name": f"electric_{self.label}"}
        self.transport.write(StartupMessage(params).encode())
        self.state = "auth"

    def dataReceived(self, data: bytes):
        try:
            messages = self._parser.feed(data)
        except ProtocolError as e:
            self._fail(f"protocol error from server: {e}")
            return
        for msg in messages:
            if self.state in ("closed", "failed"):
                return
            try:
                self._handle(msg)
            except ProtocolError as e:
                self._fail(f"protocol error: {e}")
                return
            except Exception as e:  # a consumer bug must not wedge the stream
                log.failure("replication {label}: failed handling {kind}", label=self.label, kind=type(msg).__name__)
                self._fail(f"internal error: {e}")
                return

    def connectionLost(self, reason=protocol.connectionDone):
        was = self.state
        self.state = "closed"
        text = self.error or reason.getErrorMessage()
        if not self.started.called:
            self.started.errback(ReplicationError(self.error or f"connection closed during {was}: {text}"))
        if not self.done.called:
            self.done.callback(text)

    # -- control from the consumer --

    def send_status(self, flushed: int, reply_requested: bool = False) -> None:
        """Report `flushed` (and everything received so far as written)."""
        if self.state != "streaming":
            return
        self.last_flushed = max(self.last_flushed, flushed)
        written = max(self.last_received, self.last_flushed)
        msg = StandbyStatusUpdate(written, self.last_flushed, self.last_flushed, self._clock(), reply_requested)
        self.transport.write(msg.frame())

    def pause(self) -> None:
        if not self._paused and self.transport is not None and self.state != "closed":
            self._paused = True
            self.transport.pauseProducing()

    def resume(self) -> None:
        if self._paused and self.transport is not None and self.state != "closed":
            self._paused = False
            self.transport.resumeProducing()

    def close(self, why: str = "closed by Electric") -> None:
        """Drop the connection; Postgres resends everything after the last flush."""
        if self.transport is not None and self.state not in ("closed", "failed"):
            self._fail(why)

    # -- message handling --

    def _fail(self, text: str) -> None:
        # The first reason is the real one; what follows it is fallout.
        if self.error is None:
            self.error = text
        self.state = "failed"
        if self.transport is not None:
            self.transport.abortConnection()

    def _send(self, msg) -> None:
        self.transport.write(msg.encode())

    def _query(self, sql: str) -> None:
        self._send(Query(sql))

    def _handle(self, msg):
        if isinstance(msg, ErrorResponse):
            self._fail(f"{msg.severity or 'ERROR'} {msg.sqlstate or ''}: {msg.message or ''}".replace("  ", " "))
            return
        if isinstance(msg, (NoticeResponse, ParameterStatus, BackendKeyData)):
            return
        state = self.state
        if state == "auth":
            self._handle_auth(msg)
        elif state == "identify":
            if isinstance(msg, DataRow):
                self.system = tuple(msg.texts())
            elif isinstance(msg, ReadyForQuery):
                self.state = "start"
                self._query(start_replication_command(self.slot, self.publication))
        elif state == "start":
            if isinstance(msg, CopyBothResponse):
                self.state = "streaming"
                self.consumer.stream_started(self)
                self.started.callback(self)
            elif not isinstance(msg, (RowDescription, DataRow, CommandComplete)):
                raise ProtocolError(f"unexpected {type(msg).__name__} after START_REPLICATION")
        elif state == "streaming":
            self._handle_stream(msg)

    def _handle_auth(self, msg):
        if isinstance(msg, ReadyForQuery):
            if self._auth is None or not self._auth.done:
                raise ProtocolError("server sent ReadyForQuery before authentication completed")
            self.state = "identify"
            self._query("IDENTIFY_SYSTEM")
            return
        if isinstance(msg, Authentication):
            if self._auth is None:
                self._auth = auth.ClientAuth(self.user, self.password or None)
            try:
                replies = self._auth.receive(msg)
            except auth.AuthenticationError as e:
                self._fail(str(e))
                return
            for reply in replies:
                self._send(reply)
            return
        raise ProtocolError(f"unexpected {type(msg).__name__} during authentication")

    def _handle_stream(self, msg):
        if isinstance(msg, CopyData):
            rep = msg.replication_message()
            if isinstance(rep, XLogData):
                if rep.wal_end > self.last_received:
                    self.last_received = rep.wal_end
                self.consumer.xlog_data(rep.wal_start, rep.wal_end, rep.data)
            elif isinstance(rep, PrimaryKeepalive):
                if rep.wal_end > self.last_received:
                    self.last_received = rep.wal_end
                flushed = self.consumer.keepalive(rep.wal_end)
                if rep.reply_requested or flushed > self.last_flushed:
                    self.send_status(flushed)
            return
        if isinstance(msg, (CopyDone, CommandComplete, ReadyForQuery)):
            self._fail("server ended the replication stream")
            return
        raise ProtocolError(f"unexpected {type(msg).__name__} in the replication stream")


def connect(reactor, host: str, port: int, client: ReplicationClient, timeout: float = 5.0):
    """
    Deferred firing with `client` once streaming started (errback on failure).
    A server that accepts the connection but never gets to streaming within
    a few timeouts is dropped rather than waited for forever.
    """
    endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    d = connectProtocol(endpoint, client)

    def connected(_):
        handshake = max(10.0, 3 * timeout)
        timer = reactor.callLater(handshake, client.close,
                                  f"no replication stream after {handshake:.0f} s (stuck in {client.state})")

        def stop_timer(result):
            if timer.active():
                timer.cancel()
            return result

        return client.started.addBoth(stop_timer)

    def failed(f):
        raise ReplicationError(f"cannot connect to {host}:{port}: {f.getErrorMessage()}")

    d.addCallbacks(connected, failed)
    return d
