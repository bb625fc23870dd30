"""
One port-5433 connection as a state machine: bytes in, actions out.

Postgres subscribers talk to Electric as to a logical walsender: startup,
password authentication, a few simple queries, then either a COPY (table
sync) or a CopyBoth replication stream.  Everything that is only protocol —
framing, authentication, which answer a query gets, which messages are legal
in which state — lives here, free of sockets and of the reactor, so it can be
tested byte for byte.  The Twisted protocol (`electric.postgres.publisher.service`)
executes the actions and does what needs the hub (snapshots, streaming).

States::

    startup ──StartupMessage──▶ auth ──ok──▶ ready ⇄ (busy: waiting for the driver)
                                               │ START_REPLICATION accepted
                                               ▼
                                           streaming ──CopyDone──▶ ready
    any state ──Terminate / FATAL──▶ closed

While busy (CREATE_REPLICATION_SLOT, a COPY's snapshot or a START_REPLICATION
check is in the driver's hands, or a COPY is being written) further input is
queued, so requests are always answered in order (at most `MAX_QUEUED`
messages: a client that floods instead of waiting is cut off).

Strangers are cheap to refuse.  Until the password is checked a message may
be as large as Postgres allows there — the startup packet 10000 bytes, a
SASL message 1024, an md5 password packet 65535 — and the parser refuses a
larger one from its length field, before buffering its body.  Once
authenticated, the subscriber's messages may be up to `MAX_MESSAGE_SIZE`
(its largest is a COPY command naming every column of a table).

TLS: with `tls_available` an SSLRequest is answered ``S`` and the driver
starts TLS (`StartTLS`); bytes the client sent after its SSLRequest in
cleartext are refused (they could be an attacker's, spliced in before the
handshake), and a StartupMessage that did not come over TLS is refused: a
connector's subscription always asks for TLS when Electric offers it.

Slots: a connector's credentials open only that connector's slots (see
`slot_refusal`; the driver keeps who made which slot).

Table sync: ``CREATE_REPLICATION_SLOT ... (SNAPSHOT 'use')`` inside a
transaction makes this connection a sync connection for that slot; its
``COPY`` is served from a hub snapshot of that one table, taken when the COPY
arrives (the worker names its table only then) and written chunk by chunk as
the subscriber reads it.  The driver records the
snapshot's position as the slot's start, so the catch-up stream that follows
begins exactly after the copied state: no gap, nothing twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, List, Optional, Protocol, Sequence

from electric.postgres.publisher import catalog_answers as ca
from electric.postgres.protocol.cursor import ProtocolError
from electric.postgres.protocol.messages import (
    AuthenticationOk,
    BackendKeyData,
    Bind,
    CancelRequest,
    Close,
    CommandComplete,
    CopyBothResponse,
    CopyData,
    CopyDone,
    CopyFail,
    CopyOutResponse,
    DataRow,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Execute,
    FieldDescription,
    Flush,
    GSSENCRequest,
    NoticeResponse,
    ParameterStatus,
    Parse,
    PasswordMessage,
    Query,
    ReadyForQuery,
    RowDescription,
    SSLRequest,
    SSLResponse,
    StartupMessage,
    Sync,
    Terminate,
    encode_all,
)
from electric.postgres.protocol.parsers import FrontendParser
from electric.postgres.protocol.replication_messages import (
    HotStandbyFeedback,
    StandbyStatusUpdate,
    decode_replication,
)
from electric.postgres.protocol.copy_text import copy_text_row
from electric.postgres.protocol.auth import ServerAuth
from electric.postgres.protocol.lsn import format_lsn
from electric.schema import SchemaRegistry, Table

SERVER_VERSION = "15.0 (Electric)"

STARTUP, AUTH, READY, BUSY, STREAMING, CLOSED = "startup", "auth", "ready", "busy", "streaming", "closed"

REPLICATION_REQUIRED = "Electric mesh allows connection only in `replication=database` mode"

SYNC_APPLICATION_NAME = re.compile(r"\Apg_\d+_sync_\d+_\d+\Z")

MAX_SLOT_NAME = 63
"""NAMEDATALEN - 1, as Postgres checks slot names."""

MAX_STARTUP_PACKET = 10000
"""Postgres' MAX_STARTUP_PACKET_LENGTH."""
MAX_SASL_MESSAGE = 1024
"""Postgres' PG_MAX_SASL_MESSAGE_LENGTH: a SCRAM message before authentication."""
MAX_PASSWORD_MESSAGE = 65535
"""Postgres' PG_MAX_AUTH_TOKEN_LENGTH: an md5/cleartext password packet."""
MAX_MESSAGE_SIZE = 1024 * 1024
"""Largest message an authenticated subscriber may send."""
MAX_QUEUED = 1024
"""Messages kept while the session waits for the driver; beyond that the client is flooding."""

INSUFFICIENT_PRIVILEGE = "42501"
INVALID_NAME = "42602"

COPY_CHUNK = 64 * 1024
"""Bytes of COPY text rows per CopyData message (the subscriber reads a byte stream)."""


# --- actions handed to the driver --------------------------------------------


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class Disconnect:
    reason: str


@dataclass(frozen=True)
class Authenticated:
    user: str
    database: Optional[str]
    application_name: str


@dataclass(frozen=True)
class CreateSlotRequest:
    """Answer with `Session.slot_created(...)` or `Session.command_failed(...)`."""

    command: ca.CreateSlot


@dataclass(frozen=True)
class CopyRequest:
    """Answer with `Session.copy_start()`, `copy_data(rows)`... `copy_end()`, or `Session.command_failed(...)`."""

    command: ca.CopyTable
    columns: tuple
    slot: str


@dataclass(frozen=True)
class StartRequest:
    """Answer with `Session.start_streaming()` or `Session.command_failed(...)`."""

    command: ca.StartReplication


@dataclass(frozen=True)
class StatusUpdate:
    update: StandbyStatusUpdate


@dataclass(frozen=True)
class StreamStopped:
    reason: str


@dataclass(frozen=True)
class CancelRequested:
    pid: int
    key: int


@dataclass(frozen=True)
class StartTLS:
    """Start the TLS handshake now (the ``S`` answer has just been sent), then `Session.tls_started()`."""


@dataclass(frozen=True)
class LoginFailed:
    """Authentication failed (for the driver's log and counters; never a secret in `reason`)."""

    user: str
    reason: str


def slot_refusal(origin: str, name: str, connectors: Iterable[str]) -> Optional[ca.QueryError]:
    """
    Why connector `origin` may not use a replication slot called `name`, or
    None when it may.  Names follow Postgres' rule; the name of another
    connector is that connector's apply slot (each subscription's slot is
    named after it) and is refused.  Slots a connector made belong to it (the
    driver checks that too).
    """
    if (not name or len(name) > MAX_SLOT_NAME
            or any(ch not in "abcdefghijklmnopqrstuvwxyz0123456789_" for ch in name)):
        return ca.QueryError(
            INVALID_NAME,
            f'replication slot name "{name[:80]}" is invalid: use lower case letters, digits and _'
            f" (at most {MAX_SLOT_NAME})")
    if name != origin and name in set(connectors):
        return ca.QueryError(
            INSUFFICIENT_PRIVILEGE,
            f'permission denied for replication slot "{name}": it is the slot of connector "{name}";'
            f' connector "{origin}" may use only its own slots')
    return None


# --- the session ---------------------------------------------------------------


class Session:
    """
    One connection.  `feed(bytes)` returns actions; answers to requests the
    driver handles asynchronously come back through `slot_created`,
    `copy_start`/`copy_data`/`copy_end`, `start_streaming` or `command_failed`, each returning the
    next actions.  The authenticated user is the connection's origin: it is
    the connector whose database subscribes, so every answer (table lists,
    column lists, COPY) describes that database's own tables.
    """

    def __init__(self, backend: Backend, pid: int, secret: int, auth_method: str = "scram-sha-256",
                 max_message_size: int = MAX_MESSAGE_SIZE, tls_available: bool = False):
        self.backend = backend
        self.pid = pid
        self.secret = secret
        self.auth_method = auth_method
        self.state = STARTUP
        self.max_message_size = max_message_size
        # Strangers get Postgres' pre-authentication limits (see the module docstring).
        self.parser = FrontendParser(
            max_message_size=MAX_SASL_MESSAGE if auth_method == "scram-sha-256" else MAX_PASSWORD_MESSAGE,
            max_startup_size=MAX_STARTUP_PACKET)
        self.tls_available = tls_available
        self.tls_active = False
        self.parameters: dict = {}
        self.user: Optional[str] = None
        self.application_name = ""
        self.txn = "I"  # ReadyForQuery status: I, T, E
        self.sync_slot: Optional[str] = None  # slot made with SNAPSHOT 'use' in the open transaction
        self._copy_columns: tuple = ()
        self._copied = 0
        self._auth: Optional[ServerAuth] = None
        self._queue: List[object] = []
        self._skip_until_sync = False
        self.stream: Optional[ca.StartReplication] = None

    # --- identity ---------------------------------------------------------

    @property
    def origin(self) -> Optional[str]:
        """The connector this connection serves: its (authenticated) user."""
        return self.user if self.state not in (STARTUP, AUTH) else None

    @property
    def is_sync_worker(self) -> bool:
        """A table-sync worker: its stream is short-lived and must not move the origin's hub ack."""
        return bool(SYNC_APPLICATION_NAME.match(self.application_name))

    # --- input --------------------------------------------------------------

    def feed(self, data: bytes) -> list:
        """Bytes from the socket → actions, in order."""
        if self.state == CLOSED:
            return []
        try:
            messages = self.parser.feed(data)
        except ProtocolError as e:
            return self._flush_queue() + self._fatal(e.sqlstate, e.message)
        self._queue.extend(messages)
        if len(self._queue) > MAX_QUEUED:
            self._queue = []
            return self._fatal("54000", f"more than {MAX_QUEUED} messages sent without waiting for the answers")
        return self._flush_queue()

    def tls_started(self) -> list:
        """The driver switched the connection to TLS: the next startup packet comes encrypted."""
        self.tls_active = True
        return []

    def connection_lost(self) -> list:
        was = self.state
        self.state = CLOSED
        self._queue = []
        self.sync_slot = None
        if was == STREAMING:
            return [StreamStopped("connection closed")]
        return []

    def resume(self) -> list:
        """The driver finished what made us busy (a COPY written): go on with queued input."""
        if self.state == BUSY:
            self.state = READY
        return self._flush_queue()

    def _flush_queue(self) -> list:
        out: list = []
        while self._queue and self.state not in (BUSY, CLOSED):
            msg = self._queue.pop(0)
            out.extend(self._handle(msg))
        if self.state == CLOSED:
            self._queue = []
        return out

    def _handle(self, msg) -> list:
        if self.state == STARTUP:
            return self._startup(msg)
        if self.state == AUTH:
            return self._authenticate(msg)
        if self.state == STREAMING:
            return self._streaming(msg)
        return self._ready(msg)

    # --- errors -------------------------------------------------------------

    def _fatal(self, sqlstate: str, message: str, why: str = "protocol violation: ") -> list:
        self.state = CLOSED
        err = ErrorResponse.build("FATAL", sqlstate, message)
        out: list = []
        if self.stream is not None:
            self.stream = None
            out.append(StreamStopped(f"{why}{message}"))
        return out + [Send(err.encode()), Disconnect(f"FATAL {sqlstate}: {message}")]

    def _error(self, sqlstate: str, message: str) -> list:
        if self.txn == "T":
            self.txn = "E"
        err = ErrorResponse.build("ERROR", sqlstate, message)
        return [Send(err.encode() + ReadyForQuery(self.txn).encode())]

    # --- startup and authentication -------------------------------------------

    def _startup(self, msg) -> list:
        if isinstance(msg, SSLRequest) and self.tls_available and not self.tls_active:
            if self._queue or self.parser.buffered:
                # As Postgres (CVE-2021-23214): bytes after the SSLRequest that
                # came before the handshake did not come through TLS.
                return self._fatal("08P01", "received unencrypted data after SSL request")
            return [Send(SSLResponse(True).encode()), StartTLS()]
        if isinstance(msg, SSLRequest) and self.tls_active:
            return self._fatal("08P01", "SSLRequest over an established TLS connection")
        if isinstance(msg, (SSLRequest, GSSENCRequest)):
            return [Send(SSLResponse(False).encode())]
        if isinstance(msg, CancelRequest):
            self.state = CLOSED
            return [CancelRequested(msg.pid, msg.key), Disconnect("cancel request")]
        if not isinstance(msg, StartupMessage):
            return self._fatal("08P01", "Unexpected message during connection establishment")
        if self.tls_available and not self.tls_active:
            return self._fatal(
                "28000", "Electric's port 5433 accepts only TLS connections: connect with sslmode=require or"
                " verify-full")
        params = dict(msg.parameters)
        self.parameters = params
        self.application_name = params.get("application_name", "")
        if params.get("replication", "").lower() != "database":
            return self._fatal("08004", REPLICATION_REQUIRED)
        user = params.get("user")
        if not user:
            return self._fatal("28000", "no PostgreSQL user name specified in startup packet")
        encoding = params.get("client_encoding", "UTF8").upper().replace("-", "").replace("_", "")
        if encoding not in ("UTF8", "UNICODE", "SQLASCII"):
            return self._fatal(
                "22023",
                f"client_encoding {params.get('client_encoding')!r} is not supported:"
                " Electric sends UTF8 (use a UTF8 database on the subscriber)",
            )
        self.user = user
        self.state = AUTH
        self._auth = ServerAuth(user, self.backend.password_for(user), self.auth_method)
        return [Send(encode_all(self._auth.start()))]

    def _authenticate(self, msg) -> list:
        if not isinstance(msg, PasswordMessage):
            return self._fatal("08P01", f"expected password response, got message type {msg.TAG!r}")
        try:
            replies = self._auth.receive(msg)
        except ProtocolError as e:
            return self._fatal(e.sqlstate, e.message)
        out = [Send(encode_all(replies))] if replies else []
        if self._auth.failed:
            return out + [LoginFailed(self.user, self._auth.failure_reason or "authentication failed")] + self._fatal(
                "28P01", f'password authentication failed for user "{self.user}"')
        if not self._auth.done:
            return out
        self._auth = None
        if not self.backend.registry.has_database(self.user):
            # Until its connector has read the catalog (and installed the
            # upsert triggers) we do not know which tables this database has:
            # streaming now would skip rows it should get.  Its apply worker
            # retries after wal_retrieve_retry_interval.
            return out + self._fatal("08004", f"Electric replication is not ready, missing schema for {self.user}")
        self.state = READY
        self.parser.max_message_size = self.max_message_size
        params = [
            ("application_name", self.application_name),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("default_transaction_read_only", "off"),
            ("in_hot_standby", "off"),
            ("integer_datetimes", "on"),
            ("IntervalStyle", "postgres"),
            ("is_superuser", "off"),
            ("server_encoding", "UTF8"),
            ("server_version", SERVER_VERSION),
            ("session_authorization", self.user),
            ("standard_conforming_strings", "on"),
            ("TimeZone", "Etc/UTC"),
        ]
        body = encode_all(
            [AuthenticationOk()]
            + [ParameterStatus(k, v) for k, v in params]
            + [BackendKeyData(self.pid, self.secret), ReadyForQuery("I")]
        )
        return out + [
            Send(body),
            Authenticated(self.user, self.parameters.get("database"), self.application_name),
        ]

    # --- ready: simple queries ---------------------------------------------------

    def _ready(self, msg) -> list:
        if isinstance(msg, Query):
            if self._skip_until_sync:
                return []
            return self._query(msg.sql)
        if isinstance(msg, Terminate):
            self.state = CLOSED
            self.sync_slot = None
            return [Disconnect("client terminated")]
        if isinstance(msg, (Parse, Bind, Describe, Execute, Close, Flush)):
            if self._skip_until_sync:
                return []
            self._skip_until_sync = True
            err = ErrorResponse.build(
                "ERROR", "08P01", "extended query protocol not supported in a replication connection")
            return [Send(err.encode())]
        if isinstance(msg, Sync):
            self._skip_until_sync = False
            return [Send(ReadyForQuery(self.txn).encode())]
        if isinstance(msg, (CopyData, CopyDone, CopyFail)):
            # As Postgres does: stray COPY traffic after a failed COPY is ignored.
            return []
        return self._fatal("08P01", f"Unexpected message during connection: type {msg.TAG!r}")

    def _result(self, rs: ca.ResultSet) -> list:
        msgs = [RowDescription(tuple(FieldDescription.text(c.name, c.type_oid) for c in rs.columns))]
        msgs += [DataRow(row) for row in rs.rows]
        msgs += [CommandComplete(rs.tag), ReadyForQuery(self.txn)]
        return [Send(encode_all(msgs))]

    def _complete(self, tag: str) -> list:
        return [Send(CommandComplete(tag).encode() + ReadyForQuery(self.txn).encode())]

    def _query(self, sql: str) -> list:
        try:
            cmd = ca.parse(sql)
            if self.txn == "E" and not isinstance(cmd, (ca.Commit, ca.Rollback)):
                raise ca.QueryError(
                    ca.IN_FAILED_TRANSACTION,
                    "current transaction is aborted, commands ignored until end of transaction block")
            return self._dispatch(cmd)
        except ca.QueryError as e:
            return self._error(e.sqlstate, e.message)

    def _database_tables(self) -> List[Table]:
        reg = self.backend.registry
        out = []
        for t in reg.database_tables(self.origin):
            own = reg.database_table(self.origin, t.schema, t.name)
            out.append(own if own is not None else t)
        return out

    def _table_by_relid(self, relid: int) -> Optional[Table]:
        reg = self.backend.registry
        t = reg.by_relation_id(relid)
        if t is None:
            return None
        return reg.database_table(self.origin, t.schema, t.name)

    def _dispatch(self, cmd) -> list:
        backend = self.backend
        if isinstance(cmd, ca.EmptyQuery):
            return [Send(EmptyQueryResponse().encode() + ReadyForQuery(self.txn).encode())]
        if isinstance(cmd, ca.SetConfig):
            return self._result(ca.set_config_result())
        if isinstance(cmd, ca.PublicationCheck):
            return self._result(ca.publication_check_result(cmd.publications, [backend.publication]))
        if isinstance(cmd, ca.TableList):
            ca.check_publications(cmd.publications, [backend.publication])
            return self._result(ca.table_list_result(self._database_tables(), cmd.with_attnames))
        if isinstance(cmd, ca.IdentifySystem):
            return self._result(ca.identify_system_result(
                backend.system_id, format_lsn(backend.current_lsn(self.origin)), self.parameters.get("database")))
        if isinstance(cmd, ca.CreateSlot):
            if cmd.snapshot == "export":
                raise ca.QueryError(
                    ca.FEATURE_NOT_SUPPORTED,
                    "Electric replication does not support snapshot exporting; use SNAPSHOT 'nothing' or 'use'")
            if cmd.snapshot == "use" and self.txn != "T":
                raise ca.QueryError(
                    "25001", "CREATE_REPLICATION_SLOT ... (SNAPSHOT 'use') must be called inside a transaction")
            if cmd.snapshot != "use" and self.txn != "I":
                raise ca.QueryError(
                    "25001", "CREATE_REPLICATION_SLOT ... (SNAPSHOT 'nothing') must not be called inside a transaction")
            self.state = BUSY
            return [CreateSlotRequest(cmd)]
        if isinstance(cmd, ca.DropSlot):
            backend.drop_slot(cmd.name, self.origin)
            return self._complete("DROP_REPLICATION_SLOT")
        if isinstance(cmd, ca.Begin):
            out: list = []
            if self.txn != "I":
                notice = NoticeResponse.build("WARNING", "25001", "there is already a transaction in progress")
                out.append(Send(notice.encode()))
            self.txn = "T" if self.txn == "I" else self.txn
            return out + self._complete("BEGIN")
        if isinstance(cmd, (ca.Commit, ca.Rollback)):
            tag = "COMMIT" if isinstance(cmd, ca.Commit) and self.txn != "E" else "ROLLBACK"
            out = []
            if self.txn == "I":
                notice = NoticeResponse.build("WARNING", "25P01", "there is no transaction in progress")
                out.append(Send(notice.encode()))
            self.txn = "I"
            self.sync_slot = None
            return out + self._complete(tag)
        if isinstance(cmd, ca.RelationInfo):
            own = backend.registry.database_table(self.origin, cmd.schema, cmd.table)
            reg = backend.registry.find(cmd.schema, cmd.table)
            relid = reg.relation_id if (own is not None and reg is not None) else None
            return self._result(ca.relation_info_result(relid, "d"))
        if isinstance(cmd, ca.ColumnList):
            ca.check_publications(cmd.publications, [backend.publication])
            return self._result(ca.column_list_result())
        if isinstance(cmd, ca.Attributes):
            return self._result(ca.attributes_result(self._table_by_relid(cmd.relid), cmd.with_attnum))
        if isinstance(cmd, ca.RowFilter):
            ca.check_publications(cmd.publications, [backend.publication])
            return self._result(ca.row_filter_result())
        if isinstance(cmd, ca.CopyTable):
            return self._copy(cmd)
        if isinstance(cmd, ca.StartReplication):
            if self.txn != "I":
                raise ca.QueryError("25001", "cannot execute START_REPLICATION inside a transaction block")
            ca.check_publications(cmd.publications, [backend.publication])
            self.state = BUSY
            return [StartRequest(cmd)]
        raise ca.QueryError(ca.FEATURE_NOT_SUPPORTED, f"unsupported command {type(cmd).__name__}")

    # --- answers from the driver --------------------------------------------------

    def slot_created(self, name: str, consistent_lsn: int, use_snapshot: bool = False) -> list:
        """The driver made the slot; with SNAPSHOT 'use' this transaction may now COPY."""
        if self.state == CLOSED:
            return []
        self.state = READY
        if use_snapshot:
            self.sync_slot = name
        return self._result(ca.create_slot_result(name, format_lsn(consistent_lsn))) + self._flush_queue()

    def command_failed(self, sqlstate: str, message: str) -> list:
        """The driver refused the pending command: ErrorResponse, connection lives."""
        if self.state == CLOSED:
            return []
        self.state = READY
        return self._error(sqlstate, message) + self._flush_queue()

    def start_streaming(self, command: ca.StartReplication) -> list:
        """The driver accepted START_REPLICATION: enter CopyBoth mode."""
        if self.state == CLOSED:
            return []
        self.state = STREAMING
        self.stream = command
        return [Send(CopyBothResponse(0, ()).encode())]

    def cancel(self) -> list:
        """A CancelRequest named this connection: end a running stream with an error."""
        if self.state != STREAMING:
            return []
        self.state = READY
        self.stream = None
        err = ErrorResponse.build("ERROR", "57014", "canceling statement due to user request")
        return [StreamStopped("cancelled"), Send(err.encode() + ReadyForQuery("I").encode())] + self._flush_queue()

    def end_stream(self, sqlstate: str, message: str) -> list:
        """
        The driver cannot go on streaming (shutting down, hub closed, ...):
        FATAL and close, the subscriber retries.  Our own decision, not the
        subscriber's fault, so the stream stops without "protocol violation".
        """
        return self._fatal(sqlstate, message, why="")

    # --- COPY ---------------------------------------------------------------------

    def _copy(self, cmd: ca.CopyTable) -> list:
        reg = self.backend.registry
        own = reg.database_table(self.origin, cmd.schema, cmd.table)
        if own is None:
            raise ca.QueryError(ca.UNDEFINED_TABLE, f'relation "{cmd.schema}.{cmd.table}" does not exist')
        columns = ca.copy_columns(own, cmd.columns)
        if self.sync_slot is None:
            raise ca.QueryError(
                ca.FEATURE_NOT_SUPPORTED,
                "COPY is served only in a table-sync transaction, after"
                " CREATE_REPLICATION_SLOT ... (SNAPSHOT 'use')")
        self.state = BUSY
        self._copy_columns = columns
        return [CopyRequest(cmd, columns, self.sync_slot)]

    def copy_start(self) -> list:
        """
        The driver has the table's rows to send (a hub snapshot reader): the
        COPY's header.  Then `copy_data` for each chunk of rows as the
        subscriber takes them, `copy_end`, and `resume()`.
        """
        if self.state == CLOSED:
            return []
        self._copied = 0
        return [Send(CopyOutResponse(0, tuple(0 for _ in self._copy_columns)).encode())]

    def copy_data(self, rows: Sequence) -> list:
        """CopyData messages for a chunk of the snapshot (ResolvedChanges; deleted ones are skipped)."""
        if self.state == CLOSED:
            return []
        columns = self._copy_columns
        out: List[bytes] = []
        buf: List[bytes] = []
        size = 0
        for r in rows:
            if r.deleted:
                continue
            self._copied += 1
            row = r.row
            line = copy_text_row([row.get(c) for c in columns])
            buf.append(line)
            size += len(line)
            if size >= COPY_CHUNK:
                out.append(CopyData(b"".join(buf)).encode())
                buf, size = [], 0
        if buf:
            out.append(CopyData(b"".join(buf)).encode())
        return [Send(b"".join(out))] if out else []

    def copy_end(self) -> list:
        """The COPY's end; the driver then calls `resume()` to answer input queued meanwhile."""
        if self.state == CLOSED:
            return []
        return [Send(encode_all([CopyDone(), CommandComplete(f"COPY {self._copied}"), ReadyForQuery(self.txn)]))]

    # --- streaming ------------------------------------------------------------------

    def _streaming(self, msg) -> list:
        if isinstance(msg, CopyData):
            try:
                rep = decode_replication(msg.data)
            except ProtocolError as e:
                return self._fatal(e.sqlstate, e.message)
            if isinstance(rep, StandbyStatusUpdate):
                return [StatusUpdate(rep)]
            if isinstance(rep, HotStandbyFeedback):
                return []
            return self._fatal("08P01", f"unexpected replication message {type(rep).__name__} from the subscriber")
        if isinstance(msg, CopyDone):
            self.state = READY
            self.stream = None
            done = encode_all([
                CopyDone(), CommandComplete("COPY 0"),
                CommandComplete("START_REPLICATION"), ReadyForQuery("I"),
            ])
            return [StreamStopped("subscriber ended the stream (CopyDone)"), Send(done)]
        if isinstance(msg, Terminate):
            self.state = CLOSED
            self.stream = None
            return [StreamStopped("subscriber terminated"), Disconnect("client terminated")]
        if isinstance(msg, CopyFail):
            self.state = READY
            self.stream = None
            err = ErrorResponse.build("ERROR", "57014", f"COPY from stdin failed: {msg.message}")
            return [StreamStopped("subscriber failed the copy"), Send(err.encode() + ReadyForQuery("I").encode())]
        return self._fatal("08P01", f"unexpected message type {msg.TAG!r} during COPY")
