"""
One replication connection to a Postgres, client side, as a state machine:
bytes and events in, actions out (the twin of `electric.postgres.publisher.session`).

Everything that is protocol lives here, free of sockets, of the reactor and
of the file system, so every step is tested by feeding it server messages:
libpq's TLS negotiation per sslmode, authentication (through
`electric.postgres.protocol.auth.ClientAuth`), IDENTIFY_SYSTEM,
START_REPLICATION and the CopyBoth stream.  The Twisted protocol
(`electric.postgres.source.replication`) only moves bytes, runs the TLS
handshake the session asks for, keeps the timers and hands stream data to
the consumer.

States::

    new ──start()──▶ tls-request ──'S'──▶ tls-handshake ──tls_established()──▶ auth
           │              │ 'N' (allow, prefer)                                ▲
           │              └────────────────────────────────────────────────────┤
           └──(this attempt without TLS)───────────────────────────────────────┘
    auth ──AuthenticationOk … ReadyForQuery──▶ identify ──ReadyForQuery──▶ start
    identify ──ReadyForQuery (create_slot)──▶ create ──ReadyForQuery──▶ hold ──start_streaming()──▶ start
    start ──CopyBothResponse──▶ streaming
    any ──ErrorResponse, protocol error, refused TLS, close()──▶ failed
    any ──connection_lost()──▶ closed

A session is one TCP connection.  libpq makes a second one in two modes —
``prefer`` retries without TLS, ``allow`` with TLS, when the first attempt
fails before the login completes — and `next_attempt()` gives the session
for it.

With ``create_slot`` the session first creates the slot with
``CREATE_REPLICATION_SLOT ... LOGICAL pgoutput (SNAPSHOT 'export')`` and
reports `SlotCreated` (its consistent point and the exported snapshot's
name), then holds: the snapshot stays importable exactly as long as this
connection runs no other command, so the caller imports it into its own
transaction (``SET TRANSACTION SNAPSHOT``) and only then calls
`start_streaming` -- or `close`, for a ``temporary`` slot taken only for its
snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass
import struct
from typing import Callable, List, NamedTuple, Optional

from electric.postgres.protocol import auth
from electric.postgres.protocol.cursor import ProtocolError
from electric.postgres.protocol.lsn import parse_lsn, pg_now
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
    SSLRequest,
    SSLResponse,
    StartupMessage,
)
from electric.postgres.protocol.parsers import BackendParser
from electric.postgres.protocol.replication_messages import PrimaryKeepalive, StandbyStatusUpdate, XLogData
from electric.postgres.tls import TLSSettings

NEW, TLS_REQUEST, TLS_HANDSHAKE = "new", "tls-request", "tls-handshake"
AUTH, IDENTIFY, START, STREAMING = "auth", "identify", "start", "streaming"
CREATE, HOLD = "create", "hold"
FAILED, CLOSED = "failed", "closed"

MAX_MESSAGE_SIZE = (1 << 30) + 1024
"""XLogData carrying one pgoutput message; a 1 GB row is Postgres's own limit."""


# --- actions handed to the driver --------------------------------------------


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class StartTLS:
    """Run the TLS client handshake on this connection, then call `tls_established()` or `tls_failed()`."""


@dataclass(frozen=True)
class Streaming:
    """CopyBoth began: XLogData follows.  `system`: IDENTIFY_SYSTEM's row."""

    system: tuple


@dataclass(frozen=True)
class SlotCreated:
    """
    CREATE_REPLICATION_SLOT answered: the slot's `consistent_point` (the
    first WAL position its stream will send, and the point the exported
    `snapshot` shows the database at).  The session now holds until
    `start_streaming()` or `close()`.
    """

    slot: str
    consistent_point: int
    snapshot: str


class Deliver(NamedTuple):
    """
    One XLogData: a pgoutput message ending at WAL position `wal_end`.  A
    tuple, not a dataclass: there is one per WAL record, and building it
    must cost next to nothing.
    """

    wal_start: int
    wal_end: int
    data: bytes


@dataclass(frozen=True)
class Keepalive:
    """
    A primary keepalive.  Answer with `report(flushed, force=reply_requested)`:
    the server wants a status update when it asks, and one is worth sending
    whenever the flush position moved.
    """

    wal_end: int
    reply_requested: bool


@dataclass(frozen=True)
class Fail:
    """Drop the connection; `reason` says why (also kept in `ReplicationSession.error`)."""

    reason: str


_XLOG_HEAD = struct.Struct("!QQ")  # wal_start, wal_end after the 'w' (then the send time)
_XLOG_MIN = 1 + 8 + 8 + 8
_new_deliver = tuple.__new__


def start_replication_command(slot: str, publication: str, proto_version: int = 1) -> str:
    pub = publication.replace("'", "''")
    return (f"START_REPLICATION SLOT {slot} LOGICAL 0/0 "
            f"(proto_version '{proto_version}', publication_names '{pub}')")


def create_slot_command(slot: str, temporary: bool = False) -> str:
    """PG15 syntax; the slot name is Postgres's [a-z0-9_]{1,63}, quoted anyway."""
    temp = " TEMPORARY" if temporary else ""
    return f'CREATE_REPLICATION_SLOT "{slot}"{temp} LOGICAL pgoutput (SNAPSHOT \'export\')'


def server_error_text(msg: ErrorResponse) -> str:
    return f"{msg.severity or 'ERROR'} {msg.sqlstate or ''}: {msg.message or ''}".replace("  ", " ")


class ReplicationSession:
    """
    One connection attempt.  `start()` once connected, `feed(bytes)` for
    everything the server sends, `tls_established()`/`tls_failed(text)` after
    a `StartTLS`, `report(flushed)` for acknowledgements, `close(why)` to
    give up, `connection_lost(text)` when the socket is gone; each returns
    the actions to run, in order.

    `tls` gives libpq's rules; `attempt` is the index into `tls.attempts`
    (0, or 1 for libpq's second try).  `clock` returns Postgres timestamps
    for status updates.
    """

    def __init__(self, user: str, password: Optional[str], database: str, slot: str, publication: str,
                 *, application_name: str = "", tls: TLSSettings = TLSSettings(), attempt: int = 0,
                 clock: Callable[[], int] = pg_now, max_message_size: int = MAX_MESSAGE_SIZE,
                 create_slot: bool = False, temporary: bool = False):
        self.user = user
        self.create_slot = create_slot
        self.temporary = temporary
        self.created: Optional[SlotCreated] = None
        self.password = password
        self.database = database
        self.slot = slot
        self.publication = publication
        self.application_name = application_name
        self.tls = tls
        self.attempt = attempt
        self.use_tls = tls.attempts[attempt]
        self._clock = clock
        self._max_message_size = max_message_size
        self._parser = BackendParser(max_message_size)
        self._auth: Optional[auth.ClientAuth] = None
        self.state = NEW
        self.encrypted = False
        self.logged_in = False
        self.error: Optional[str] = None
        self.system: Optional[tuple] = None
        self.last_received = 0
        self.last_flushed = 0

    # --- events ------------------------------------------------------------------

    def start(self) -> list:
        """The TCP connection is up: ask for TLS, or log in."""
        if self.state != NEW:
            return []
        if self.use_tls:
            self.state = TLS_REQUEST
            self._parser.expect_ssl_response()
            return [Send(SSLRequest().encode())]
        return self._startup()

    def feed(self, data: bytes) -> list:
        """Bytes from the server (decrypted, once TLS is up) → actions."""
        if self.state == STREAMING:
            return self._feed_stream(data)
        if self.state in (FAILED, CLOSED, NEW):
            return []
        try:
            messages = self._parser.feed(data)
        except ProtocolError as e:
            return self._fail(f"protocol error from server: {e}")
        out: list = []
        for i, msg in enumerate(messages):
            if self.state in (FAILED, CLOSED):
                break
            if isinstance(msg, SSLResponse) and msg.accepted and (i + 1 < len(messages) or self._parser.buffered):
                # Bytes behind the 'S' arrived before any encryption: someone
                # in the path injects them (CVE-2021-23222), refuse as libpq does.
                return out + self._fail("received unencrypted data after the server accepted TLS")
            try:
                out += self._handle(msg)
            except ProtocolError as e:
                out += self._fail(f"protocol error: {e}")
        return out

    def tls_established(self) -> list:
        """The handshake succeeded and the certificate suits the sslmode: log in."""
        if self.state != TLS_HANDSHAKE:
            return []
        self.encrypted = True
        return self._startup()

    def tls_failed(self, reason: str, handshake: bool = True) -> list:
        """
        The handshake or the certificate check failed, or (`handshake`
        false) TLS could not even be set up here (a missing root
        certificate file, an unreadable key).
        """
        if self.state in (FAILED, CLOSED):
            return []
        return self._fail(f"TLS handshake failed: {reason}" if handshake else f"cannot set up TLS: {reason}")

    def report(self, flushed: int, force: bool = False) -> list:
        """
        A standby status update with `flushed` (and everything received so
        far as written): always when `force`, else only when `flushed` moved.
        """
        if self.state != STREAMING:
            return []
        advanced = flushed > self.last_flushed
        if advanced:
            self.last_flushed = flushed
        if not (force or advanced):
            return []
        written = max(self.last_received, self.last_flushed)
        update = StandbyStatusUpdate(written, self.last_flushed, self.last_flushed, self._clock(), False)
        return [Send(update.frame())]

    def close(self, why: str) -> list:
        """Give up on this connection (Postgres resends everything after the last flush)."""
        if self.state in (FAILED, CLOSED):
            return []
        return self._fail(why)

    def connection_lost(self, text: str) -> list:
        """The socket is gone; `text` is the transport's reason (already worded for a TLS failure)."""
        was = self.state
        if was == CLOSED:
            return []
        self.state = CLOSED
        if self.error is None and was != STREAMING:
            if was == TLS_HANDSHAKE:
                self.error = f"TLS handshake failed: {text}"
            elif was == TLS_REQUEST:
                self.error = f"connection closed in answer to the TLS request: {text}"
            else:
                self.error = f"connection closed during {was}: {text}"
        return []

    # --- what next -------------------------------------------------------------------

    def next_attempt(self) -> Optional["ReplicationSession"]:
        """
        libpq's second connection: when this one failed before the login
        completed and the sslmode has another way to try (prefer: without
        TLS; allow: with TLS).  None otherwise.
        """
        if self.state not in (FAILED, CLOSED) or self.logged_in or self.error is None:
            return None
        if self.attempt + 1 >= len(self.tls.attempts):
            return None
        return ReplicationSession(
            self.user, self.password, self.database, self.slot, self.publication,
            application_name=self.application_name, tls=self.tls, attempt=self.attempt + 1,
            clock=self._clock, max_message_size=self._max_message_size,
            create_slot=self.create_slot, temporary=self.temporary)

    # --- internals ---------------------------------------------------------------------

    def _fail(self, reason: str) -> list:
        # The first reason is the real one; what follows it is fallout.
        if self.error is None:
            self.error = reason
        self.state = FAILED
        return [Fail(self.error)]

    def _startup(self) -> list:
        params = {"user": self.user, "database": self.database, "replication": "database"}
        if self.application_name:
            params["application_name"] = self.application_name
        self.state = AUTH
        return [Send(StartupMessage(params).encode())]

    def _query(self, sql: str) -> list:
        return [Send(Query(sql).encode())]

    def _handle(self, msg) -> list:
        if isinstance(msg, ErrorResponse):
            return self._fail(server_error_text(msg))
        if isinstance(msg, (NoticeResponse, ParameterStatus, BackendKeyData)):
            return []
        state = self.state
        if state == TLS_REQUEST:
            return self._tls_answer(msg)
        if state == AUTH:
            return self._authenticate(msg)
        if state == IDENTIFY:
            if isinstance(msg, DataRow):
                self.system = tuple(msg.texts())
                return []
            if isinstance(msg, ReadyForQuery):
                if self.create_slot:
                    self.state = CREATE
                    return self._query(create_slot_command(self.slot, self.temporary))
                self.state = START
                return self._query(start_replication_command(self.slot, self.publication))
            if isinstance(msg, (RowDescription, CommandComplete)):
                return []
            raise ProtocolError(f"unexpected {type(msg).__name__} after IDENTIFY_SYSTEM")
        if state == CREATE:
            return self._creating(msg)
        if state == START:
            if isinstance(msg, CopyBothResponse):
                self.state = STREAMING
                return [Streaming(self.system or ())]
            if isinstance(msg, (RowDescription, DataRow, CommandComplete)):
                return []
            raise ProtocolError(f"unexpected {type(msg).__name__} after START_REPLICATION")
        if state == STREAMING:
            return self._stream(msg)
        raise ProtocolError(f"unexpected {type(msg).__name__} while {state}")

    def _creating(self, msg) -> list:
        if isinstance(msg, DataRow):
            row = msg.texts()
            if len(row) < 3 or row[1] is None or row[2] is None:
                raise ProtocolError(f"CREATE_REPLICATION_SLOT answered {row!r}, without a consistent point and snapshot")
            try:
                point = parse_lsn(row[1])
            except ValueError as e:
                raise ProtocolError(f"CREATE_REPLICATION_SLOT answered a bad consistent point: {e}") from None
            self.created = SlotCreated(row[0] or self.slot, point, row[2])
            return []
        if isinstance(msg, (RowDescription, CommandComplete)):
            return []
        if isinstance(msg, ReadyForQuery):
            if self.created is None:
                raise ProtocolError("CREATE_REPLICATION_SLOT completed without a result row")
            self.state = HOLD
            return [self.created]
        raise ProtocolError(f"unexpected {type(msg).__name__} after CREATE_REPLICATION_SLOT")

    def start_streaming(self) -> list:
        """After `SlotCreated`: the snapshot was imported (or is not wanted); stream from the slot."""
        if self.state != HOLD:
            return []
        self.state = START
        return self._query(start_replication_command(self.slot, self.publication))

    def _tls_answer(self, msg) -> list:
        if not isinstance(msg, SSLResponse):
            raise ProtocolError(f"unexpected {type(msg).__name__} in answer to the TLS request")
        if msg.accepted:
            self.state = TLS_HANDSHAKE
            return [StartTLS()]
        if self.tls.required:
            return self._fail("server does not support TLS, but TLS was required")
        return self._startup()

    def _authenticate(self, msg) -> list:
        if isinstance(msg, ReadyForQuery):
            if self._auth is None or not self._auth.done:
                raise ProtocolError("server sent ReadyForQuery before authentication completed")
            self._auth = None
            self.logged_in = True
            self.state = IDENTIFY
            return self._query("IDENTIFY_SYSTEM")
        if isinstance(msg, Authentication):
            if self._auth is None:
                self._auth = auth.ClientAuth(self.user, self.password or None)
            try:
                replies = self._auth.receive(msg)
            except auth.AuthenticationError as e:
                return self._fail(str(e))
            return [Send(reply.encode()) for reply in replies]
        raise ProtocolError(f"unexpected {type(msg).__name__} during authentication")

    def _feed_stream(self, data: bytes) -> list:
        """
        `feed` while streaming: XLogData payloads are split off the
        CopyData straight into `Deliver` tuples (no CopyData, no XLogData
        object, one copy of the bytes); everything else takes the general path.
        """
        try:
            messages = self._parser.feed_copy_both(data)
        except ProtocolError as e:
            return self._fail(f"protocol error from server: {e}")
        out: list = []
        append = out.append
        last = self.last_received
        new_deliver = _new_deliver
        unpack = _XLOG_HEAD.unpack_from
        for msg in messages:
            if type(msg) is bytes and len(msg) >= _XLOG_MIN and msg[0] == 0x77:  # 'w' XLogData
                start, end = unpack(msg, 1)
                if end > last:
                    last = end
                append(new_deliver(Deliver, (start, end, msg[_XLOG_MIN:])))
                continue
            self.last_received = last
            if type(msg) is bytes:
                msg = CopyData(msg)
            try:
                out += self._handle(msg)
            except ProtocolError as e:
                out += self._fail(f"protocol error: {e}")
            last = self.last_received
            if self.state != STREAMING:
                break
        self.last_received = last
        return out

    def _stream(self, msg) -> List:
        if isinstance(msg, CopyData):
            rep = msg.replication_message()
            if isinstance(rep, XLogData):
                if rep.wal_end > self.last_received:
                    self.last_received = rep.wal_end
                return [Deliver(rep.wal_start, rep.wal_end, rep.data)]
            if isinstance(rep, PrimaryKeepalive):
                if rep.wal_end > self.last_received:
                    self.last_received = rep.wal_end
                return [Keepalive(rep.wal_end, rep.reply_requested)]
            raise ProtocolError(f"unexpected {type(rep).__name__} from the server in the replication stream")
        if isinstance(msg, (CopyDone, CommandComplete, ReadyForQuery)):
            return self._fail("server ended the replication stream")
        raise ProtocolError(f"unexpected {type(msg).__name__} in the replication stream")
