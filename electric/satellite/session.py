"""
One Satellite connection as a sans-IO state machine.

The session turns client frames into *actions* (frames to send, a close, a
transaction to append to the hub, a stream to start) and hub events into
frames; it never touches a socket, the hub or a clock itself.  The driver
(`electric.satellite.service.ClientConnection`) carries the actions out and
feeds the results back (`claim_granted`, `append_done`, `outgoing`, ...).
That keeps every protocol rule testable without sockets or time.

States: AWAIT_AUTH -> CLAIMING (token valid, waiting until no other live
connection has the client id) -> READY -> CLOSED.  In READY two independent
streams run:

- outgoing (hub -> client): STOPPED or ACTIVE, started by the client's
  SatInStartReplicationReq;
- incoming (client -> hub): REQUESTED (the server sent its
  SatInStartReplicationReq) -> ACTIVE (client answered) <-> PAUSED.

Every client row operation is checked as it arrives
(`electric.satellite.validation`: values, NOT NULL, write rules) and turned
into guarded hub changes; anything wrong refuses the whole transaction
(INVALID_REQUEST, the reason as the websocket close reason), so nothing a
database could not store is ever acknowledged.

Ordering rule (departure 5): a client merges what it receives with its own
*unacknowledged* writes, so the ack of a client transaction must reach it
before any hub transaction ordered after it.  The session therefore appends
one client transaction at a time and holds every outgoing item back while
an append is in flight or queued.
"""

from __future__ import annotations

import collections
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Callable, Deque, Dict, List, Optional, Sequence, Tuple

from electric.hub import positions
from electric.hub.interface import ResolvedChange, ResolvedTransaction, Transaction
from electric.satellite import codec, validation
from electric.satellite.auth import AuthError
from electric.satellite.codec import (
    AUTH_REQUIRED,
    INTERNAL,
    INVALID_REQUEST,
    ORIGINAL,
    PROTO_VERSION_V0_2,
    PROTO_VSN_MISSMATCH,
    V0_2,
    AuthRequest,
    FrameError,
)
from electric.schema import SchemaRegistry, Table

USER_COLUMN = validation.USER_COLUMN
SNAPSHOT_ROWS_PER_TRANSACTION = 500
"""Initial-sync rows per transaction (and so per SatOpLog), so one frame stays far below the size limit."""

OPS_PER_MESSAGE = SNAPSHOT_ROWS_PER_TRANSACTION
"""
Most row ops in one SatOpLog: a bigger transaction spans several messages
(begin in the first, commit in the last), which the client joins; one frame
stays far below the size limit.
"""

INITIAL_SYNC_LSN = b"0"
"""
LSN given to every initial-sync transaction but the last: a client that drops
in the middle of an initial sync stores it and, asking for "0" again,
restarts the sync instead of resuming after rows it never got.
"""

# session states
AWAIT_AUTH = "await_auth"

MAX_FRAMES_WHILE_CLAIMING = 64
"""Messages a client may send between its SatAuthReq and our SatAuthResp (kept, in order)."""
CLAIMING = "claiming"
READY = "ready"
CLOSED = "closed"

# stream states
STOPPED = "stopped"
REQUESTED = "requested"
ACTIVE = "active"
PAUSED = "paused"

# start kinds
FROM_START = "from_start"  # initial sync from a snapshot, then live
FROM_HEAD = "from_head"  # only new transactions
FROM_POSITION = "from_position"  # exact resume after a position


# --- actions ------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    data: bytes


class SharedFrame(bytes):
    """
    A frame that goes to many clients unchanged (one transaction, encoded
    once for every session of the same generation and visibility class, see
    `FrameCache`).  It is plain bytes to everything else; a websocket
    transport may keep its framed form on it (``ws``) so it is framed once.
    """


class FrameCache:
    """
    The frames of one delivery of hub items to many sessions: each
    transaction is encoded once per (protocol generation, LSN, visibility
    class) instead of once per client.  The class is "everyone" when no row
    carries an owner in `electric_user_id`, else each owner's user id (they
    also see their own rows) and "everyone else" (rows without an owner).
    Valid only while the items it was built for are alive: make one per
    delivery, never keep it.
    """

    __slots__ = ("_owners", "_frames", "_relations", "_lsns")

    def __init__(self):
        self._owners: Dict[int, frozenset] = {}
        self._frames: Dict[Tuple, Tuple[Tuple[Table, ...], Tuple[SharedFrame, ...], int]] = {}
        self._relations: Dict[Tuple, SharedFrame] = {}
        self._lsns: Dict[int, bytes] = {}

    def lsn(self, lsn_of: Callable[[int], bytes], position: int) -> bytes:
        lsn = self._lsns.get(position)
        if lsn is None:
            lsn = self._lsns[position] = lsn_of(position)
        return lsn

    def owners(self, changes: Sequence[ResolvedChange]) -> frozenset:
        key = id(changes)
        owners = self._owners.get(key)
        if owners is None:
            owners = self._owners[key] = frozenset(
                o for o in (c.row.get(USER_COLUMN) for c in changes) if o is not None and o != "")
        return owners


@dataclass(frozen=True)
class Close:
    reason: str
    abort: bool = False  # drop the TCP connection without the closing handshake
    detail: str = ""  # told to the client as the websocket close reason (why a write was refused)


@dataclass(frozen=True)
class ClaimClient:
    """Make this connection the one live connection of `client_id` (answer with claim_granted / claim_refused)."""

    client_id: str
    user_id: str


@dataclass(frozen=True)
class StartOutgoing:
    """Stream the hub to the client: `kind` is FROM_START, FROM_HEAD or FROM_POSITION (`position`)."""

    kind: str
    position: int = 0


@dataclass(frozen=True)
class StopOutgoing:
    pass


@dataclass(frozen=True)
class Append:
    """Append `transaction` to the hub; answer with append_done(lsn) / append_failed."""

    transaction: Transaction
    lsn: bytes


@dataclass(frozen=True)
class PersistClientLsn:
    """Store `lsn` as the last acknowledged transaction of `client_id`."""

    client_id: str
    lsn: bytes


class SessionTotals:
    """
    Counters every session of one service adds to (the service hands the
    same object to each): totals since start over connections that come and
    go, for /metrics.  Plain integers, no client ids.
    """

    __slots__ = ("transactions_in", "transactions_out", "heartbeat_timeouts", "closed_by_error")

    def __init__(self):
        self.transactions_in = 0  # client transactions the hub made durable
        # Client transactions sent (begin ... commit), initial-sync batches
        # included: a hub transaction bigger than one item reaches a client as
        # one client transaction per item (see `_transaction_frames`) and
        # counts once per item, as the client applies it.
        self.transactions_out = 0
        self.heartbeat_timeouts = 0  # clients closed for not answering a ping
        self.closed_by_error: Dict[int, int] = {}  # SatErrorResp code -> connections closed with it


@dataclass(frozen=True)
class _SyncRows:
    """A chunk of initial-sync rows waiting in the outgoing queue."""

    rows: Tuple[ResolvedChange, ...]


@dataclass(frozen=True)
class _SyncDone:
    """The end of the initial sync at `position`, in the outgoing queue."""

    position: int


class WriteRefusal(FrameError):
    """
    A client write Electric does not accept (invalid value, unknown table or
    column, another user's row...): the whole transaction is refused with
    INVALID_REQUEST, the reason goes to the client as the close reason.
    """

    def __init__(self, reason: str):
        super().__init__(INVALID_REQUEST, reason)


class _OpenTransaction:
    __slots__ = ("lsn", "timestamp_ms", "changes")

    def __init__(self, lsn: bytes, timestamp_ms: int):
        self.lsn = lsn
        self.timestamp_ms = timestamp_ms
        self.changes: List = []


class SatelliteSession:
    """
    `authenticator`: `.authenticate(token) -> user_id` (raises AuthError).
    `lsn_of(position) -> bytes` and `position_of(lsn) -> int` (ValueError when
    the bytes are not an LSN of this hub) translate hub positions.
    `logger(text)` receives one line per notable event (never a token);
    `log_at(level, text)`, when given, receives them instead with a level
    name (debug, info, warn, error: a client misbehaving is a warning, a
    client refused by design or leaving is info, a failure of ours an error).
    `on_refused(reason)` hears of every client transaction refused.
    `totals`: the service's `SessionTotals` this session adds to.
    """

    def __init__(
        self,
        registry: SchemaRegistry,
        authenticator,
        regional_id: str,
        lsn_of: Callable[[int], bytes],
        position_of: Callable[[bytes], int],
        log_at: Optional[Callable[[str, str], None]] = None,
        logger: Optional[Callable[[str], None]] = None,
        clock: Callable[[], float] = time.time,
        on_refused: Optional[Callable[[str], None]] = None,
        totals: Optional[SessionTotals] = None,
    ):
        self.registry = registry
        self.authenticator = authenticator
        self.regional_id = regional_id
        self.lsn_of = lsn_of
        self.position_of = position_of
        self.log = logger or (lambda text: None)
        self._log_at = log_at
        self.clock = clock
        self.on_refused = on_refused or (lambda reason: None)
        self.checker = validation.WriteChecker(registry)
        self.totals = totals if totals is not None else SessionTotals()

        self.state = AWAIT_AUTH
        self.gen = ORIGINAL
        self.client_id: Optional[str] = None
        self.user_id: Optional[str] = None
        self.outgoing_state = STOPPED
        self.incoming_state = STOPPED
        self.client_ack_lsn: Optional[bytes] = None  # last server LSN the client says it applied

        self._deferred_frames: List[Tuple[bytes, bool]] = []
        self._client_relations: Dict[int, codec.satellite_pb2.SatRelation] = {}
        self._sent_relations: Dict[Tuple[str, str], Tuple] = {}
        self._open: Optional[_OpenTransaction] = None
        self._append_queue: Deque[Tuple[Transaction, bytes]] = collections.deque()
        self._append_in_flight: Optional[bytes] = None
        self._held: Deque = collections.deque()
        self._resume_position: Optional[int] = None  # the last position the client has complete
        self._sync_last: Optional[bytes] = None  # serialized initial-sync ops waiting to learn whether they are the last
        self._cache: Optional[FrameCache] = None  # set while a shared delivery is being turned into frames
        self._active_since_tick = False
        self._ping_outstanding = False
        self.appended = 0
        self.delivered = 0
        self.refused = 0

    # --- properties the driver polls ---------------------------------

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    @property
    def appends_pending(self) -> bool:
        return self._append_in_flight is not None or bool(self._append_queue)

    @property
    def wants_transactions(self) -> bool:
        """True when the driver should pull more hub transactions for this client."""
        return (
            self.state == READY
            and self.outgoing_state == ACTIVE
            and not self.appends_pending
            and not self._held
        )

    # --- helpers ---------------------------------------------------------

    def _frame(self, name: str, **fields) -> Send:
        return Send(codec.encode(self.gen, getattr(self.gen.pb, name)(**fields)))

    def _say(self, level: str, text: str) -> None:
        if self._log_at is not None:
            self._log_at(level, text)
        else:
            self.log(text)

    def _fail(self, code: int, reason: str, detail: str = "", level: str = "warn") -> List:
        if self.state == CLOSED:
            return []
        self.state = CLOSED
        closed = self.totals.closed_by_error
        closed[code] = closed.get(code, 0) + 1
        self._say(level, f"closing: {reason}")
        return [self._frame("SatErrorResp", error_type=code), Close(reason, detail=detail)]

    def _refuse(self, reason: str) -> List:
        """A client transaction is refused whole: nothing of it reaches the hub, the client hears why."""
        if self.state == CLOSED:
            return []
        self.refused += 1
        self._open = None
        self._append_queue.clear()
        self.on_refused(reason)
        return self._fail(INVALID_REQUEST, reason, detail=reason, level="info")  # the driver warns of refusals

    # --- input: frames -------------------------------------------------

    def receive(self, data: bytes, binary: bool = True) -> List:
        """Actions for one websocket message from the client."""
        if self.state == CLOSED:
            return []
        if self.state == CLAIMING:
            # The client should be waiting for SatAuthResp; keep order anyway,
            # but a client that floods instead of waiting is not buffered for.
            if len(self._deferred_frames) >= MAX_FRAMES_WHILE_CLAIMING:
                return self._fail(INVALID_REQUEST, f"more than {MAX_FRAMES_WHILE_CLAIMING} messages before SatAuthResp")
            self._deferred_frames.append((bytes(data), binary))
            return []
        if not binary:
            return self._fail(INTERNAL, "text frame")
        try:
            message = codec.decode(self.gen, data)
        except FrameError as e:
            return self._fail(e.code, str(e))
        self._active_since_tick = True
        self._ping_outstanding = False
        name = codec.message_name(message)
        if self.state == AWAIT_AUTH:
            if name != "SatAuthReq":
                return self._fail(AUTH_REQUIRED, f"{name} before authentication")
            return self._on_auth(message)
        handler = getattr(self, "_on_" + name, None)
        if handler is None:
            return self._fail(INVALID_REQUEST, f"unexpected {name}")
        try:
            return handler(message)
        except WriteRefusal as e:
            return self._refuse(str(e))
        except FrameError as e:
            return self._fail(e.code, str(e))

    def _on_auth(self, req: AuthRequest) -> List:
        version = req.proto_version
        if version is not None:
            if version != PROTO_VERSION_V0_2:
                self.gen = V0_2  # the client speaks the header-carrying generation
                return self._fail(PROTO_VSN_MISSMATCH, f"unsupported protocol version {version!r}")
            self.gen = V0_2
        if not req.id or not req.token:
            return self._fail(INVALID_REQUEST, "SatAuthReq needs a client id and a token")
        try:
            user_id = self.authenticator.authenticate(req.token)
        except AuthError as e:
            return self._fail(AUTH_REQUIRED, f"client {req.id!r}: authentication failed: {e}")
        self.client_id = req.id
        self.user_id = user_id
        self.state = CLAIMING
        return [ClaimClient(req.id, user_id)]

    def claim_granted(self, stored_lsn: Optional[bytes]) -> List:
        """No other connection holds the client id; `stored_lsn` is its last acknowledged LSN."""
        if self.state != CLAIMING:
            return []
        self.state = READY
        self._say("info", f"client {self.client_id!r} (user {self.user_id!r}) authenticated, protocol {self.gen.name}")
        actions = [self._frame("SatAuthResp", id=self.regional_id)]
        actions.append(
            self._frame(
                "SatInStartReplicationReq",
                lsn=stored_lsn or b"",
                options=[codec.OPT_SYNC_MODE],
                sync_batch_size=1,
            )
        )
        self.incoming_state = REQUESTED
        frames, self._deferred_frames = self._deferred_frames, []
        for data, binary in frames:
            actions.extend(self.receive(data, binary))
        return actions

    def claim_refused(self) -> List:
        if self.state != CLAIMING:
            return []
        return self._fail(INVALID_REQUEST, f"client id {self.client_id!r} is already connected", level="info")

    def claim_refused_other_user(self) -> List:
        """The client id is bound to another user: refused (its positions and transactions are that user's)."""
        if self.state != CLAIMING:
            return []
        return self._fail(
            INVALID_REQUEST, f"client id {self.client_id!r} belongs to another user, not {self.user_id!r}",
            detail="this client id belongs to another user; use a client id of your own")

    def _on_SatAuthReq(self, message) -> List:
        return self._fail(INVALID_REQUEST, "second SatAuthReq")

    def _on_SatErrorResp(self, message) -> List:
        self.state = CLOSED
        self._say("info", f"client sent SatErrorResp {message.error_type}")
        return [Close("client error")]

    def _on_SatPingReq(self, message) -> List:
        return [self._frame("SatPingResp", lsn=b"")]

    def _on_SatPingResp(self, message) -> List:
        if message.HasField("lsn") and message.lsn:
            self.client_ack_lsn = bytes(message.lsn)
        return []

    # --- outgoing stream control -----------------------------------------

    def _on_SatInStartReplicationReq(self, message) -> List:
        options = set(message.options)
        if codec.OPT_SYNC_MODE in options and message.sync_batch_size <= 0:
            raise FrameError(INVALID_REQUEST, "SYNC_MODE needs a positive sync_batch_size")
        lsn = bytes(message.lsn)
        if lsn in (b"", b"0"):
            if lsn == b"" and options - {codec.OPT_FIRST_LSN, codec.OPT_NONE, codec.OPT_SYNC_MODE}:
                raise FrameError(INVALID_REQUEST, f"unsupported start options {sorted(options)} without an lsn")
            start = StartOutgoing(FROM_START)
        elif lsn == b"eof":
            start = StartOutgoing(FROM_HEAD)
        else:
            try:
                position = self.position_of(lsn)
            except ValueError as e:
                if not _looks_issued(lsn):
                    raise FrameError(INVALID_REQUEST, f"bad start lsn: {e}") from None
                # A well-formed LSN of another hub (data directory replaced):
                # the client's data is from a history this hub does not have.
                self._say("info", f"start lsn from another hub ({e}); doing an initial sync instead")
                start = StartOutgoing(FROM_START)
            else:
                start = StartOutgoing(FROM_POSITION, position)
        actions: List = []
        if self.outgoing_state == ACTIVE:
            actions.append(StopOutgoing())
            self._reset_outgoing()
        self.outgoing_state = ACTIVE
        self._sent_relations.clear()
        actions.append(self._frame("SatInStartReplicationResp"))
        actions.append(start)
        return actions

    def _on_SatInStopReplicationReq(self, message) -> List:
        if self.outgoing_state != ACTIVE:
            raise FrameError(INVALID_REQUEST, "SatInStopReplicationReq while not replicating")
        self.outgoing_state = STOPPED
        self._reset_outgoing()
        return [StopOutgoing(), self._frame("SatInStopReplicationResp")]

    def _reset_outgoing(self) -> None:
        """The outgoing stream ends: nothing held, no transaction or initial sync half sent."""
        self._held.clear()
        self._resume_position = None
        self._sync_last = None

    # --- incoming stream -----------------------------------------------

    def _on_SatInStartReplicationResp(self, message) -> List:
        if self.incoming_state == REQUESTED:
            self.incoming_state = ACTIVE
            return []
        if self.incoming_state == PAUSED:
            return [self._frame("SatInStopReplicationReq")]
        raise FrameError(INVALID_REQUEST, f"SatInStartReplicationResp while incoming replication is {self.incoming_state}")

    def _on_SatInStopReplicationResp(self, message) -> List:
        self.incoming_state = PAUSED
        return []

    def _on_SatRelation(self, message) -> List:
        self._client_relations[message.relation_id] = message
        return []

    def _on_SatOpLog(self, message) -> List:
        if self.incoming_state != ACTIVE:
            self._say("warn", "SatOpLog while incoming replication is not active: dropped")
            return []
        actions: List = []
        for op in message.ops:
            kind = op.WhichOneof("op")
            if kind == "begin":
                if self._open is not None:
                    raise FrameError(INVALID_REQUEST, "begin inside an open transaction")
                if not op.begin.lsn:
                    raise FrameError(INVALID_REQUEST, "begin without an lsn")
                self._open = _OpenTransaction(bytes(op.begin.lsn), op.begin.commit_timestamp)
            elif kind == "commit":
                if self._open is None:
                    raise FrameError(INVALID_REQUEST, "commit outside a transaction")
                txn, self._open = self._open, None
                actions.extend(self._queue_append(txn))
            elif kind in ("insert", "update", "delete"):
                if self._open is None:
                    raise FrameError(INVALID_REQUEST, f"{kind} outside a transaction")
                self._open.changes.extend(self._row_op(kind, getattr(op, kind)))
            else:
                raise FrameError(INVALID_REQUEST, "empty SatTransOp")
        return actions

    def _table_for(self, relation_id: int) -> Tuple[Table, List[str]]:
        relation = self._client_relations.get(relation_id)
        if relation is None:
            raise FrameError(INVALID_REQUEST, f"unknown relation id {relation_id}")
        table = self._client_table(relation.schema_name or "public", relation.table_name)
        names = [c.name for c in relation.columns]
        for name in names:
            if table.column(name) is None:
                raise FrameError(INVALID_REQUEST, f'table "{table.schema}"."{table.name}" has no column "{name}"')
        return table, names

    def _client_table(self, schema: str, name: str) -> Table:
        """
        The table a client's relation names.  Clients address tables by name
        (SQLite has no schemas; clients of the period always send "public"),
        so "public".name that does not exist means the one table called
        `name` in another schema, e.g. a table in schema "electric".
        """
        table = self.registry.find(schema, name)
        if table is None and schema == "public":
            same = self.registry.named(name)
            if len(same) > 1:
                schemas = ", ".join(f'"{t.schema}"' for t in same)
                raise FrameError(
                    INVALID_REQUEST, f'table "{name}" is ambiguous: it exists in schemas {schemas}, none of them "public"'
                )
            table = same[0] if same else None
        if table is None:
            raise FrameError(INVALID_REQUEST, f'unknown table "{schema}"."{name}"')
        return table

    def _row_op(self, kind: str, op) -> List:
        """
        The hub changes of one client row operation, each value validated
        against the table in every database (`electric.satellite.validation`);
        anything wrong with the write refuses the whole transaction.
        """
        try:
            table, names = self._table_for(op.relation_id)
            new = old = None
            if kind in ("insert", "update"):
                if not op.HasField("row_data"):
                    raise FrameError(INVALID_REQUEST, f"{kind} without row_data")
                new = codec.decode_row(op.row_data, names)
                if kind == "update" and op.HasField("old_row_data"):
                    old = codec.decode_row(op.old_row_data, names)
            else:
                if not op.HasField("old_row_data"):
                    raise FrameError(INVALID_REQUEST, "delete without old_row_data")
                old = codec.decode_row(op.old_row_data, names)
            return self.checker.changes(table, kind, names, new, old, self.user_id)
        except (FrameError, validation.Refused) as e:
            raise WriteRefusal(str(e)) from None

    def _queue_append(self, txn: _OpenTransaction) -> List:
        transaction = Transaction(
            origin=f"satellite:{self.client_id}",
            origin_id=txn.lsn,
            commit_timestamp=txn.timestamp_ms * 1000,
            changes=tuple(txn.changes),
        )
        self._append_queue.append((transaction, txn.lsn))
        return self._next_append()

    def _next_append(self) -> List:
        if self._append_in_flight is not None or not self._append_queue or self.state != READY:
            return []
        transaction, lsn = self._append_queue.popleft()
        self._append_in_flight = lsn
        return [Append(transaction, lsn)]

    def append_done(self, lsn: bytes) -> List:
        """The transaction with client `lsn` is durable in the hub."""
        if self._append_in_flight != lsn:
            return []
        self._append_in_flight = None
        self.appended += 1
        self.totals.transactions_in += 1
        if self.state == CLOSED:
            return [PersistClientLsn(self.client_id, lsn)]
        actions: List = [self._frame("SatPingResp", lsn=lsn), PersistClientLsn(self.client_id, lsn)]
        actions.extend(self._next_append())
        if not self.appends_pending:
            actions.extend(self._release_held())
        return actions

    def append_failed(self, reason: str, rejected: bool = False) -> List:
        """
        The hub did not store the transaction: `rejected` when the hub found
        it malformed (the client's fault: INVALID_REQUEST), otherwise the hub
        is unavailable (INTERNAL; the client re-sends after reconnecting).
        """
        self._append_in_flight = None
        self._append_queue.clear()
        if rejected:
            return self._refuse(reason.removeprefix("invalid transaction: "))
        return self._fail(INTERNAL, f"could not store a client transaction: {reason}", level="error")

    def disconnected(self) -> None:
        """The connection is gone: an open client transaction is dropped, nothing more is appended."""
        if self._open is not None:
            self._say("info", f"client {self.client_id!r} disconnected inside a transaction: dropped")
        self._open = None
        self._append_queue.clear()
        self.state = CLOSED

    # --- outgoing: hub -> client -------------------------------------

    def outgoing(self, items: Sequence[ResolvedTransaction], cache: Optional[FrameCache] = None) -> List:
        """
        Frames for hub transactions (held back while a client append is
        pending); a big one arrives as several items (see `_transaction_frames`).
        `cache`: the same items go to many sessions now (a shared delivery),
        so their frames are encoded once and shared (`FrameCache`).
        """
        if self.state == CLOSED or self.outgoing_state != ACTIVE:
            return []
        if self.appends_pending or self._held:
            cache = None  # older items go first, and they were not delivered with this cache
        self._held.extend(items)
        if self.appends_pending:
            return []
        self._cache = cache
        try:
            return self._release_held()
        finally:
            self._cache = None

    def initial_sync(self, rows: Sequence[ResolvedChange]) -> List:
        """
        The initial sync, one chunk at a time: frames for these current rows
        the user may see, as transactions with `INITIAL_SYNC_LSN`.  The last
        of them waits until the next chunk or `initial_sync_done`, which
        sends it with the LSN of the snapshot's position.
        """
        if self.state == CLOSED or self.outgoing_state != ACTIVE:
            return []
        self._held.append(_SyncRows(tuple(rows)))
        if self.appends_pending:
            return []
        return self._release_held()

    def initial_sync_done(self, position: int) -> List:
        """Every row of the snapshot at `position` was handed over: the live stream follows from `position`."""
        if self.state == CLOSED or self.outgoing_state != ACTIVE:
            return []
        self._held.append(_SyncDone(position))
        if self.appends_pending:
            return []
        return self._release_held()

    def _release_held(self) -> List:
        actions: List = []
        while self._held and self.outgoing_state == ACTIVE and self.state == READY:
            item = self._held.popleft()
            if isinstance(item, _SyncRows):
                actions.extend(self._sync_frames(item.rows))
            elif isinstance(item, _SyncDone):
                actions.extend(self._sync_done_frames(item.position))
            else:
                actions.extend(self._transaction_frames(item))
        return actions

    def _visible(self, change: ResolvedChange) -> bool:
        owner = change.row.get(USER_COLUMN)
        return owner is None or owner == "" or owner == self.user_id

    def _relation_frames(self, table: Table) -> List:
        shape = tuple((c.name, c.type_name) for c in table.columns)
        if self._sent_relations.get(table.qualified) == shape:
            return []
        self._sent_relations[table.qualified] = shape
        cache = self._cache
        if cache is not None:
            key = (self.gen.name, table.qualified, shape, table.relation_id)
            frame = cache._relations.get(key)
            if frame is None:
                frame = cache._relations[key] = SharedFrame(self._relation_frame(table))
            return [Send(frame)]
        return [Send(self._relation_frame(table))]

    def _relation_frame(self, table: Table) -> bytes:
        pb = self.gen.pb
        relation = pb.SatRelation(
            schema_name=table.schema,
            table_type=0,
            table_name=table.name,
            relation_id=table.relation_id,
            columns=[pb.SatRelationColumn(name=c.name, type=codec.client_type_name(c.type_name)) for c in table.columns],
        )
        return codec.encode(self.gen, relation)

    def _row_ops(self, changes: Sequence[ResolvedChange]) -> Tuple[List, List]:
        """(relation frames, SatTransOps) for the changes this user may see, in order."""
        tables, ops = self._visible_ops(changes, self.user_id)
        relations: List = []
        for table in tables:
            relations.extend(self._relation_frames(table))
        return relations, ops

    def _visible_ops(self, changes: Sequence[ResolvedChange], user_id: Optional[str]) -> Tuple[List[Table], List]:
        """(tables in order of first appearance, SatTransOps) for the changes `user_id` may see."""
        pb = self.gen.pb
        tables: Dict[Tuple[str, str], Table] = {}
        ops: List = []
        for change in changes:
            table = self.registry.find(change.schema, change.table)
            if table is None:
                self._say("debug", f'change of unknown table "{change.schema}"."{change.table}" not sent')
                continue
            owner = change.row.get(USER_COLUMN)
            if not (owner is None or owner == "" or owner == user_id):
                continue
            if table.qualified not in tables:
                tables[table.qualified] = table
            row = codec.encode_row(self.gen, table.column_names, change.row)
            if change.deleted:
                ops.append(pb.SatTransOp(delete=pb.SatOpDelete(relation_id=table.relation_id, old_row_data=row)))
            else:
                ops.append(pb.SatTransOp(update=pb.SatOpUpdate(relation_id=table.relation_id, row_data=row)))
        return list(tables.values()), ops

    def _oplog_frames(self, ops: List, begin=None, commit=None) -> List:
        """
        SatOpLog messages of at most OPS_PER_MESSAGE row ops each, `begin`
        before the first and `commit` after the last (the client joins the
        messages of one transaction by them).
        """
        pb = self.gen.pb
        groups = [ops[i:i + OPS_PER_MESSAGE] for i in range(0, len(ops), OPS_PER_MESSAGE)] or [[]]
        if begin is not None:
            groups[0] = [begin] + groups[0]
        if commit is not None:
            groups[-1] = groups[-1] + [commit]
        return [Send(codec.encode(self.gen, pb.SatOpLog(ops=g))) for g in groups if g]

    def _begin(self, lsn: bytes, timestamp_ms: int):
        pb = self.gen.pb
        return pb.SatTransOp(begin=pb.SatOpBegin(commit_timestamp=timestamp_ms, lsn=lsn))

    def _commit(self, lsn: bytes, timestamp_ms: int):
        pb = self.gen.pb
        return pb.SatTransOp(commit=pb.SatOpCommit(commit_timestamp=timestamp_ms, lsn=lsn))

    def _op_frames(self, changes: Sequence[ResolvedChange], lsn: bytes, timestamp_ms: int) -> List:
        """One whole transaction of the changes this user may see (nothing when there are none)."""
        cache = self._cache
        if cache is not None:
            return self._shared_op_frames(cache, changes, lsn, timestamp_ms)
        relations, ops = self._row_ops(changes)
        if not ops:
            return []  # nothing this user may see
        self.delivered += 1
        self.totals.transactions_out += 1
        return relations + self._oplog_frames(ops, self._begin(lsn, timestamp_ms), self._commit(lsn, timestamp_ms))

    def _shared_op_frames(self, cache: FrameCache, changes: Sequence[ResolvedChange], lsn: bytes,
                          timestamp_ms: int) -> List:
        """`_op_frames` through the delivery's cache: encoded once per generation, LSN and visibility class."""
        user = self.user_id if self.user_id in cache.owners(changes) else None
        key = (id(changes), self.gen.name, lsn, timestamp_ms, user)
        entry = cache._frames.get(key)
        if entry is None:
            tables, ops = self._visible_ops(changes, user)
            frames = () if not ops else tuple(
                SharedFrame(s.data)
                for s in self._oplog_frames(ops, self._begin(lsn, timestamp_ms), self._commit(lsn, timestamp_ms)))
            entry = cache._frames[key] = (tuple(tables), frames)
        tables, frames = entry
        if not frames:
            return []
        self.delivered += 1
        actions: List = []
        for table in tables:
            actions.extend(self._relation_frames(table))
        actions.extend(Send(f) for f in frames)
        return actions

    def _transaction_frames(self, item: ResolvedTransaction) -> List:
        """
        One client transaction per hub item.  A hub transaction bigger than
        one item (`ResolvedTransaction.more`) thus reaches the client in
        pieces of at most CHUNK_CHANGES rows: electric-sql@0.4.3 holds a
        whole transaction in memory and applies it in one call whose
        argument list overflows the JS stack beyond ~100,000 rows.  Every
        piece but the last carries the LSN of the last position this client
        was streamed to completely, so a client that drops midway resumes
        at the start of the transaction (or of the catch-up) and re-applies
        the pieces it had; only the last carries the transaction's own LSN.
        """
        timestamp_ms = item.commit_timestamp // 1000
        if item.more:
            resume = self._resume_position
            lsn = self.lsn_of(resume) if resume is not None else INITIAL_SYNC_LSN
        else:
            cache = self._cache
            lsn = self.lsn_of(item.position) if cache is None else cache.lsn(self.lsn_of, item.position)
            self._resume_position = item.position
        return self._op_frames(item.changes, lsn, timestamp_ms)

    def streaming_from(self, position: int) -> None:
        """The driver subscribed this client's stream after `position` (what it has, complete)."""
        self._resume_position = position

    def _sync_frames(self, rows: Sequence[ResolvedChange]) -> List:
        """
        Initial-sync transactions for a chunk of rows.  The last batch is
        held back until it is known whether it ends the sync (then it
        carries the snapshot's LSN), as serialized row ops rather than rows:
        a client that stopped reading keeps a few kilobytes here, not rows.
        """
        actions: List = []
        visible = [r for r in rows if not r.deleted and self._visible(r)]
        for i in range(0, len(visible), SNAPSHOT_ROWS_PER_TRANSACTION):
            relations, ops = self._row_ops(visible[i:i + SNAPSHOT_ROWS_PER_TRANSACTION])
            actions.extend(relations)
            if self._sync_last is not None:
                actions.append(self._held_sync_frame(INITIAL_SYNC_LSN))
            self._sync_last = self.gen.pb.SatOpLog(ops=ops).SerializeToString(deterministic=True)
        return actions

    def _held_sync_frame(self, lsn: bytes) -> Send:
        """
        The held batch as one SatOpLog: begin + its ops + commit.  A repeated
        field's encoding is the concatenation of its elements', so the ops
        serialized on their own slot in between.
        """
        body, self._sync_last = self._sync_last, None
        pb = self.gen.pb
        ts = self._sync_timestamp()
        head = codec.encode(self.gen, pb.SatOpLog(ops=[self._begin(lsn, ts)]))
        tail = pb.SatOpLog(ops=[self._commit(lsn, ts)]).SerializeToString(deterministic=True)
        self.delivered += 1
        self.totals.transactions_out += 1
        return Send(head + body + tail)

    def _sync_done_frames(self, position: int) -> List:
        self._resume_position = position
        if self._sync_last is None:
            return []
        return [self._held_sync_frame(self.lsn_of(position))]

    def _sync_timestamp(self) -> int:
        return int(self.clock() * 1000)

    # --- timers ----------------------------------------------------------

    def tick(self) -> List:
        """
        Heartbeat, called every HEARTBEAT_INTERVAL: ping a silent client,
        close one that stayed silent for a whole interval after a ping.
        Never pings before the client is answered (clients of the period
        would take the ping for the awaited answer).
        """
        if self.state != READY:
            return []
        if self._active_since_tick:
            self._active_since_tick = False
            return []
        if self._ping_outstanding:
            self.state = CLOSED
            self.totals.heartbeat_timeouts += 1
            self._say("info", f"client {self.client_id!r} did not answer a ping: closing")
            return [Close("heartbeat timeout", abort=True)]
        self._ping_outstanding = True
        return [self._frame("SatPingReq")]

    def auth_deadline(self) -> List:
        """The auth deadline passed: a connection that has not authenticated is closed."""
        if self.state != AWAIT_AUTH:
            return []
        return self._fail(AUTH_REQUIRED, "no SatAuthReq before the deadline", level="info")

    def stream_failed(self, reason: str) -> List:
        """The hub side of the outgoing stream broke (e.g. the hub stopped)."""
        if self.state == CLOSED:
            return []
        return self._fail(INTERNAL, f"replication stream failed: {reason}", level="error")


def _looks_issued(lsn: bytes) -> bool:
    """True for bytes shaped like a client LSN of *some* hub (right size, intact checksum)."""
    if len(lsn) != positions.CLIENT_LSN_SIZE:
        return False
    body, (crc,) = lsn[:-4], struct.unpack("!I", lsn[-4:])
    return zlib.crc32(body) == crc and body[0] == positions.CLIENT_LSN_VERSION
