"""
The hub's durable state in one SQLite file: the log, the row states, the
(origin, origin_id) dedup table and the durable consumers.

This module knows *how* a transaction is stored, resolved and read back; it
does not decide *in which order* transactions come (that is the sequencer:
`electric.hub.embedded.EmbeddedHub` takes them in arrival order; a hub fed by
another log can drive the same `StoreWriter` in that log's order and keep its
own offset in `meta` through `StoreWriter.set_meta`, in the same SQLite
transaction).  No threads, no reactor: every function blocks, and the caller
picks the thread.

Bounded memory for any transaction size:

* The log stores each entry's resolved changes in chunks of at most
  ``chunk`` changes: the first in ``log.payload`` (so a small entry is one
  row, as cheap as ever), the others in ``log_chunk``.  Readers fetch one
  chunk at a time (`read_log`, `read_chunk`).
* `StoreWriter.apply_chunks` resolves a transaction chunk by chunk: each
  chunk's row states go into ``rows`` before the next chunk is resolved, so
  the next chunk sees them exactly as one `resolve` over the whole
  transaction would, and a TRUNCATE is expanded from the store in key order
  through a temporary table rather than a Python list.  The whole entry is
  one SQLite transaction, so it becomes visible atomically.
* Catch-ups and snapshots are read in chunks by key order with a cursor
  (the last key read), each chunk in its own short read transaction, so a
  reader that waits costs no connection, no open transaction and no memory.
  They stay consistent without holding a transaction because every write
  moves a row's ``position``: a row with ``position <= P`` has had the same
  state since P, and rows written after P are left out (the log after P
  carries them, complete).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from electric.hub.interface import TRUNCATE, HubError, ResolvedChange, ResolvedTransaction, RowChange, Transaction
from electric.hub.positions import HUB_ID_SIZE
from electric.hub.resolution import Resolution, RowState, StateView, resolve, resolved_change

DB_NAME = "hub.sqlite3"
SCHEMA_VERSION = 2
CATCH_UP_ORIGIN = "electric:catch-up"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (
    position INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    origin_id BLOB NOT NULL,
    commit_ts INTEGER NOT NULL,
    payload BLOB NOT NULL,
    chunks INTEGER NOT NULL DEFAULT 1,
    n INTEGER
);
CREATE TABLE IF NOT EXISTS log_chunk (
    position INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (position, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rows (
    schema_name TEXT NOT NULL,
    table_name TEXT NOT NULL,
    key TEXT NOT NULL,
    vals TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (schema_name, table_name, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS applied (
    origin TEXT NOT NULL,
    origin_id BLOB NOT NULL,
    position INTEGER NOT NULL,
    commit_ts INTEGER NOT NULL,
    PRIMARY KEY (origin, origin_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS consumers (name TEXT PRIMARY KEY, acked INTEGER NOT NULL) WITHOUT ROWID;
"""

# Version 1 had one payload per log entry; its entries read as one chunk.
_MIGRATE_1_TO_2 = """
ALTER TABLE log ADD COLUMN chunks INTEGER NOT NULL DEFAULT 1;
ALTER TABLE log ADD COLUMN n INTEGER;
"""

_dumps_slow = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_loads = json.loads


def _unserializable(o):
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


try:
    # The C encoder JSONEncoder.encode builds anew on every call, built
    # once: the same text, without the per-call set-up that dominated
    # encoding a key or a small row.
    _c_encode = json.encoder.c_make_encoder(
        None, _unserializable, json.encoder.encode_basestring, None, ":", ",", False, False, True)
except (AttributeError, TypeError):  # pragma: no cover - no C accelerator
    _c_encode = None


def _dumps(o) -> str:
    if _c_encode is None or isinstance(o, str):  # pragma: no cover
        return _dumps_slow(o)
    return "".join(_c_encode(o, 0))


def encode_key(key) -> str:
    return _dumps(list(key))


def decode_key(text: str) -> tuple:
    return tuple(_loads(text))


def encode_changes(changes) -> bytes:
    # A sixth element only when the hub decided the origin holds the row (`origin_holds`).
    return _dumps([
        [c.schema, c.table, list(c.key), c.row, 1 if c.deleted else 0] if c.origin_holds is None
        else [c.schema, c.table, list(c.key), c.row, 1 if c.deleted else 0, c.origin_holds]
        for c in changes
    ]).encode()


def decode_changes(blob) -> tuple:
    return tuple([
        resolved_change(c[0], c[1], tuple(c[2]), c[3], bool(c[4])) if len(c) == 5
        else resolved_change(c[0], c[1], tuple(c[2]), c[3], bool(c[4]), c[5])
        for c in _loads(bytes(blob))
    ])


def key_order_bytes(text: str) -> bytes:
    """
    A stored key's sort key as bytes, ordering exactly like
    `electric.hub.resolution._key_order` (None first, then text by code
    point; UTF-8 byte order is code point order).  NUL bytes are escaped so
    the terminator sorts below every character.
    """
    out = bytearray()
    for v in _loads(text):
        if v is None:
            out += b"\x00"
        else:
            out += b"\x01" + v.encode("utf-8").replace(b"\x00", b"\x00\x01") + b"\x00\x00"
    return bytes(out)


def connect(path: str, *, writer: bool) -> sqlite3.Connection:
    """
    A connection to the store.  No memory-mapped I/O: mapped pages of a big
    store count as the process's resident memory, which is what the hub
    bounds; the page cache is bounded per connection instead.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout=60000")
        if writer:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA cache_size=-32768")
            # A big transaction grows the WAL; give the disk back after the checkpoint.
            conn.execute("PRAGMA journal_size_limit=67108864")
            conn.create_function("electric_key_order", 1, key_order_bytes, deterministic=True)
        else:
            conn.execute("PRAGMA cache_size=-4096")
    except BaseException:
        conn.close()
        raise
    return conn


def meta(conn, k, default=None):
    row = conn.execute("SELECT v FROM meta WHERE k = ?", (k,)).fetchone()
    return default if row is None else row[0]


def head(conn) -> int:
    """The last position: the newest log entry, or what compaction recorded when it emptied the log."""
    (last,) = conn.execute("SELECT max(position) FROM log").fetchone()
    return max(last or 0, meta(conn, "head", 0))


class OpenInfo(NamedTuple):
    hub_id: bytes
    head: int
    horizon: int
    live_rows: int
    consumers: Dict[str, int]


def open_store(path: str) -> Tuple[sqlite3.Connection, OpenInfo]:
    """Open (creating or upgrading) the store: the writer connection and what the hub needs to start."""
    try:
        conn = connect(path, writer=True)
    except sqlite3.Error as e:
        raise HubError(f"{path}: cannot open the hub store: {e}") from None
    try:
        conn.executescript(_SCHEMA)
        conn.execute("BEGIN IMMEDIATE")
        version = meta(conn, "schema_version")
        if version is None:
            conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        elif version == 1:
            for stmt in _MIGRATE_1_TO_2.strip().splitlines():
                conn.execute(stmt)
            conn.execute("UPDATE meta SET v = ? WHERE k = 'schema_version'", (SCHEMA_VERSION,))
        elif version != SCHEMA_VERSION:
            conn.execute("ROLLBACK")
            raise HubError(f"{path}: schema version {version}, this Electric reads {SCHEMA_VERSION}")
        hub_id = meta(conn, "hub_id")
        if hub_id is None:
            hub_id = os.urandom(HUB_ID_SIZE)
            conn.execute("INSERT INTO meta VALUES ('hub_id', ?)", (hub_id,))
        conn.execute("COMMIT")
        info = OpenInfo(
            bytes(hub_id),
            head(conn),
            meta(conn, "horizon", 0),
            conn.execute("SELECT count(*) FROM rows WHERE deleted = 0").fetchone()[0],
            dict(conn.execute("SELECT name, acked FROM consumers")),
        )
    except sqlite3.Error as e:
        conn.close()
        raise HubError(f"{path}: cannot open the hub store: {e}") from None
    except BaseException:
        conn.close()
        raise
    return conn, info


_GET_MANY_CHUNK = 500  # keys per query (SQLite's default variable limit is far higher)


class SqliteState(StateView):
    """Row states as the writer's open SQLite transaction sees them."""

    def __init__(self, conn):
        self.conn = conn
        self._encoded = {}

    def encode_key(self, key) -> str:
        """A key's stored text, encoded once per chunk (lookups and writes both need it)."""
        text = self._encoded.get(key)
        if text is None:
            text = self._encoded[key] = encode_key(key)
        return text

    def get_many(self, rids):
        """One query per table and chunk of keys instead of one per row."""
        out = dict.fromkeys(rids)
        by_table = {}
        for rid in out:
            by_table.setdefault((rid[0], rid[1]), []).append(rid[2])
        for (schema, table), keys in by_table.items():
            for i in range(0, len(keys), _GET_MANY_CHUNK):
                chunk = keys[i:i + _GET_MANY_CHUNK]
                texts = {self.encode_key(k): k for k in chunk}
                cur = self.conn.execute(
                    "SELECT key, vals, deleted, position FROM rows WHERE schema_name = ? AND table_name = ?"
                    " AND key IN (%s)" % ",".join("?" * len(texts)),
                    (schema, table, *texts),
                )
                for text, vals, deleted, position in cur:
                    out[(schema, table, texts[text])] = RowState(_loads(vals), bool(deleted), position)
        return out

    def forget_keys(self) -> None:
        self._encoded.clear()

    def get(self, schema, table, key):
        row = self.conn.execute(
            "SELECT vals, deleted, position FROM rows WHERE schema_name = ? AND table_name = ? AND key = ?",
            (schema, table, self.encode_key(key)),
        ).fetchone()
        if row is None:
            return None
        return RowState(_loads(row[0]), bool(row[1]), row[2])

    def live_keys(self, schema, table):
        cur = self.conn.execute(
            "SELECT key FROM rows WHERE schema_name = ? AND table_name = ? AND deleted = 0", (schema, table)
        )
        return [decode_key(k) for (k,) in cur]


_IDENT_CHUNK = 400  # (origin, origin_id) pairs per dedup query
_ROWS_PER_INSERT = 400  # rows per multi-row INSERT (at most 7 columns: 2,800 variables)


def _insert_rows(conn, head: str, width: int, rows: Sequence[tuple]) -> None:
    """
    INSERT `rows` with as few statements as possible: a multi-row VALUES
    list is one sqlite3_step (one GIL release), where executemany steps,
    and so releases the GIL, once per row.
    """
    one = "(" + ",".join("?" * width) + ")"
    for i in range(0, len(rows), _ROWS_PER_INSERT):
        part = rows[i:i + _ROWS_PER_INSERT]
        conn.execute(head + " " + ",".join([one] * len(part)), [v for r in part for v in r])


class _RunState(StateView):
    """
    Row states for a run of appends (`StoreWriter.append_many`): what the
    store held before the run, fetched at once, overlaid with what the run's
    earlier transactions resolved.
    """

    def __init__(self, store_state: "SqliteState", rows):
        self.store_state = store_state
        self.rows = rows

    def get(self, schema, table, key):
        rid = (schema, table, tuple(key))
        if rid in self.rows:
            return self.rows[rid]
        state = self.rows[rid] = self.store_state.get(schema, table, key)
        return state

    def get_many(self, rids):
        rows = self.rows
        missing = [rid for rid in rids if rid not in rows]
        if missing:
            rows.update(self.store_state.get_many(missing))
        return {rid: rows[rid] for rid in rids}

    def live_keys(self, schema, table):
        raise HubError("a TRUNCATE cannot be resolved in a run of appends")


class Applied(NamedTuple):
    """One transaction stored by `StoreWriter`."""

    position: int
    changes: Optional[Tuple[ResolvedChange, ...]]
    """All resolved changes when the caller asked to keep them or they fit in one chunk, else None."""
    change_count: int
    chunks: int
    live_delta: int
    conflicts: int = 0
    """Changes that met a concurrent write (`Resolution.conflicts`), summed over every chunk: for /metrics."""


class Earlier(NamedTuple):
    """What the store knows of an (origin, origin_id) it already holds."""

    position: int
    commit_timestamp: int
    changes: Tuple[ResolvedChange, ...]
    """The entry's changes when it is still in the log as one chunk (and they were asked for), else ()."""
    change_count: int


class _LogWriter:
    """Cuts an entry's resolved changes into stored chunks as they are produced."""

    def __init__(self, conn, position: int, chunk: int, keep_all: bool):
        self.conn = conn
        self.position = position
        self.chunk = chunk
        self.keep_all = keep_all
        self.kept: List[ResolvedChange] = []
        self.first_payload: Optional[bytes] = None
        self.first: List[ResolvedChange] = []
        self.buf: List[ResolvedChange] = []
        self.seq = 0
        self.n = 0

    def extend(self, changes: Sequence[ResolvedChange]) -> None:
        if self.keep_all:
            self.kept.extend(changes)
        self.n += len(changes)
        i = 0
        while i < len(changes):
            take = min(self.chunk - len(self.buf), len(changes) - i)
            self.buf.extend(changes[i:i + take])
            i += take
            if len(self.buf) == self.chunk:
                self._flush()

    def _flush(self) -> None:
        payload = encode_changes(self.buf)
        if self.seq == 0:
            self.first_payload = payload
            self.first = self.buf
        else:
            self.conn.execute("INSERT INTO log_chunk VALUES (?, ?, ?)", (self.position, self.seq, payload))
        self.seq += 1
        self.buf = []

    def finish(self) -> Tuple[bytes, int]:
        if self.buf or self.seq == 0:
            self._flush()
        return self.first_payload, self.seq

    def changes(self) -> Optional[Tuple[ResolvedChange, ...]]:
        if self.keep_all:
            return tuple(self.kept)
        if self.seq == 1:
            return tuple(self.first)
        return None


class StoreWriter:
    """
    Writes into the store through the one writer connection.  The caller
    brackets work in `begin` / `commit` (or `rollback`); inside, each
    `append` / `apply_chunks` is atomic on its own (a savepoint): one that
    raises leaves nothing behind and the others still commit.
    """

    def __init__(self, conn: sqlite3.Connection, head: int, chunk: int):
        self.conn = conn
        self.head = head
        self.chunk = chunk
        self.state = SqliteState(conn)
        self._start = head

    # --- transaction bracket ---------------------------------------------

    def begin(self) -> None:
        self._start = self.head
        self.conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.state.forget_keys()
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        """After a failed `commit` (or anything else): nothing of this bracket was stored."""
        self.state.forget_keys()
        self.head = self._start
        try:
            self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    # --- entries ---------------------------------------------------------

    def earlier(self, origin: str, origin_id: bytes, with_changes: bool) -> Optional[Earlier]:
        row = self.conn.execute(
            "SELECT position, commit_ts FROM applied WHERE origin = ? AND origin_id = ?", (origin, origin_id)
        ).fetchone()
        if row is None:
            return None
        pos, ts = row
        entry = self.conn.execute(
            "SELECT chunks, n, CASE WHEN ? AND chunks = 1 THEN payload END FROM log WHERE position = ?",
            (1 if with_changes else 0, pos),
        ).fetchone()
        if entry is None:
            # Compacted away: the position and identity are still right; the
            # changes were delivered long ago and are part of the row state.
            return Earlier(pos, ts, (), 0)
        chunks, n, payload = entry
        changes = decode_changes(payload) if payload is not None else ()
        if n is None:
            n = len(changes) if payload is not None else 0
        return Earlier(pos, ts, changes, n)

    def append(self, txn: Transaction) -> Applied:
        """Resolve and store a whole transaction at the next position; keep all its resolved changes."""

        origin, origin_id, ts = txn.origin, bytes(txn.origin_id), txn.commit_timestamp
        pos = self.head + 1
        self.conn.execute("SAVEPOINT entry")
        try:
            res = resolve(self.state, txn)
            self._store_states(res.states, pos)
            changes = res.changes
            if len(changes) <= self.chunk:  # the common case, without the chunk writer
                payload, chunks = encode_changes(changes), 1
            else:
                out = _LogWriter(self.conn, pos, self.chunk, keep_all=False)
                out.extend(changes)
                payload, chunks = out.finish()
            self._finish_entry(pos, origin, origin_id, ts, payload, chunks, len(changes))
        except BaseException:
            self._undo_entry()
            raise
        self.head = pos
        return Applied(pos, changes, len(changes), chunks, res.live_delta, res.conflicts)

    def known(self, idents: Sequence[Tuple[str, bytes]]) -> set:
        """Which of these (origin, origin_id) the store already holds: one query per few hundred, not one each."""
        found = set()
        idents = list(dict.fromkeys(idents))
        for i in range(0, len(idents), _IDENT_CHUNK):
            part = idents[i:i + _IDENT_CHUNK]
            args = [v for ident in part for v in ident]
            cur = self.conn.execute(
                "SELECT origin, origin_id FROM applied WHERE (origin, origin_id) IN (VALUES %s)"
                % ",".join(["(?, ?)"] * len(part)), args)
            found.update((o, bytes(oid)) for o, oid in cur)
        return found

    def append_many(self, txns: Sequence[Transaction]) -> List[object]:
        """
        Resolve and store a run of small transactions at the next positions,
        exactly as `append` one after the other would, but with a fixed
        number of statements for the whole run: one lookup of every row the
        run touches, then one multi-row INSERT each for the row states, the
        log and the dedup table.  Every SQLite call releases and re-takes the
        GIL, and the writer thread competes for it with a busy reactor, so
        calls per transaction, not fsyncs, were what bounded single-row
        throughput.

        Each transaction must have at most `chunk` changes and no TRUNCATE
        (`batchable`), and an identity the store does not hold (`known`).
        Returns, per transaction, its `Applied`, or the exception that
        refused it (a failed WriteGuard): a refused transaction leaves
        nothing behind and the others go on, as with `append`.  A failure
        of the writes themselves raises with nothing of the run stored; the
        caller may then replay the run one `append` at a time.
        """
        rids = {}
        for txn in txns:
            for ch in txn.changes:
                rids[(ch.schema, ch.table, tuple(ch.key))] = None
        view = _RunState(self.state, self.state.get_many(rids))
        rows = view.rows
        written: Dict[tuple, tuple] = {}
        log_rows = []
        applied_rows = []
        results: List[object] = []
        pos = self.head
        encode = encode_changes
        for txn in txns:
            try:
                res = resolve(view, txn)
            except Exception as e:  # resolve is pure: nothing to undo
                results.append(e)
                continue
            pos += 1
            for rid, st in res.states.items():
                # With the position that wrote it, as the store would give it to
                # the next transaction (the echo decision reads RowState.position).
                rows[rid] = st._replace(position=pos)
                written[rid] = (st, pos)
            changes = res.changes
            origin_id = bytes(txn.origin_id)
            ts = txn.commit_timestamp
            log_rows.append((pos, txn.origin, origin_id, ts, encode(changes), 1, len(changes)))
            applied_rows.append((txn.origin, origin_id, pos, ts))
            results.append(Applied(pos, changes, len(changes), 1, res.live_delta, res.conflicts))
        if not log_rows:
            return results
        key_text = self.state.encode_key
        state_rows = [(rid[0], rid[1], key_text(rid[2]), _dumps(st.values), 1 if st.deleted else 0, p)
                      for rid, (st, p) in written.items()]
        conn = self.conn
        conn.execute("SAVEPOINT run")
        try:
            _insert_rows(conn, "INSERT OR REPLACE INTO rows VALUES", 6, state_rows)
            _insert_rows(conn, "INSERT INTO log (position, origin, origin_id, commit_ts, payload, chunks, n) VALUES",
                         7, log_rows)
            _insert_rows(conn, "INSERT INTO applied VALUES", 4, applied_rows)
            conn.execute("RELEASE run")
        except BaseException:
            conn.execute("ROLLBACK TO run")
            conn.execute("RELEASE run")
            self.state.forget_keys()
            raise
        self.head = pos
        return results

    def batchable(self, txn: Transaction) -> bool:
        """Whether `append_many` can take `txn` (one stored chunk, no TRUNCATE to expand from the store)."""
        changes = txn.changes
        if len(changes) > self.chunk:
            return False
        for ch in changes:
            if ch.op == TRUNCATE:
                return False
        return True

    def apply_chunks(self, origin: str, origin_id: bytes, commit_timestamp: int,
                     chunks: Iterable[Sequence[RowChange]], origin_applied=None) -> Applied:
        """
        Resolve and store a transaction given as successive chunks of
        `RowChange`s at the next position, holding one chunk at a time.  The
        result is what `append` of the concatenated changes would store --
        except for the echo decision (`ResolvedChange.origin_holds`), which
        is made per segment: a row touched again in a later segment has this
        entry's own position as its previous one there, so its later change
        is always echoed (an earlier one of it may be left out: the origin
        gets the final state all the same).  A TRUNCATE's rows never qualify.
        """

        def produce(pos, out):
            live = conflicts = 0
            for chunk in chunks:
                segment: List[RowChange] = []
                for ch in chunk:
                    if ch.op == TRUNCATE:
                        if segment:
                            res = self._resolve_segment(origin, origin_id, commit_timestamp, segment, pos, out,
                                                        origin_applied)
                            live += res.live_delta
                            conflicts += res.conflicts
                            segment = []
                        live += self._truncate(ch.schema, ch.table, pos, out)
                    else:
                        segment.append(ch)
                if segment:
                    res = self._resolve_segment(origin, origin_id, commit_timestamp, segment, pos, out,
                                                origin_applied)
                    live += res.live_delta
                    conflicts += res.conflicts
                self.state.forget_keys()
            return live, conflicts

        return self._entry(origin, bytes(origin_id), commit_timestamp, produce, keep_all=False)

    def _resolve_segment(self, origin, origin_id, ts, segment, pos, out, origin_applied=None) -> Resolution:
        """
        Resolve one segment against the rows stored so far (earlier segments
        of the same entry included), so live rows and conflicts add up over
        the segments as if the whole transaction were resolved at once.
        """
        res = resolve(self.state, Transaction(origin, origin_id, ts, tuple(segment), origin_applied))
        self._store_states(res.states, pos)
        out.extend(res.changes)
        return res

    def _truncate(self, schema: str, table: str, pos: int, out: _LogWriter) -> int:
        """
        TRUNCATE as `resolve` does it (a tombstone for every live row, in
        key order), with the keys sorted by SQLite in a temporary table
        instead of a Python list: a table of any size costs one chunk.
        """
        conn = self.conn
        # Created on first use: a temp schema makes every later statement a little dearer.
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS electric_truncate (o BLOB NOT NULL, key TEXT NOT NULL, vals TEXT NOT NULL)")
        conn.execute("DELETE FROM temp.electric_truncate")
        conn.execute(
            "INSERT INTO temp.electric_truncate SELECT electric_key_order(key), key, vals FROM main.rows "
            "WHERE schema_name = ? AND table_name = ? AND deleted = 0",
            (schema, table),
        )
        cur = conn.execute("SELECT key, vals FROM temp.electric_truncate ORDER BY o")
        n = 0
        while True:
            batch = cur.fetchmany(self.chunk)
            if not batch:
                break
            conn.executemany(
                "UPDATE main.rows SET deleted = 1, position = ? WHERE schema_name = ? AND table_name = ? AND key = ?",
                [(pos, schema, table, k) for k, _ in batch],
            )
            out.extend([ResolvedChange(schema, table, decode_key(k), _loads(v), True) for k, v in batch])
            n += len(batch)
        conn.execute("DELETE FROM temp.electric_truncate")
        return -n

    def _store_states(self, states, pos) -> None:
        key_text = self.state.encode_key
        _insert_rows(self.conn, "INSERT OR REPLACE INTO rows VALUES", 6, [
            (s, t, key_text(k), _dumps(dict(st.values)), 1 if st.deleted else 0, pos)
            for (s, t, k), st in states.items()
        ])

    def _entry(self, origin, origin_id, ts, produce: Callable, keep_all: bool) -> Applied:
        pos = self.head + 1
        self.conn.execute("SAVEPOINT entry")
        try:
            out = _LogWriter(self.conn, pos, self.chunk, keep_all)
            live, conflicts = produce(pos, out)
            payload, chunks = out.finish()
            self._finish_entry(pos, origin, origin_id, ts, payload, chunks, out.n)
        except BaseException:
            self._undo_entry()
            raise
        self.head = pos
        return Applied(pos, out.changes(), out.n, chunks, live, conflicts)

    def _finish_entry(self, pos, origin, origin_id, ts, payload, chunks, n) -> None:
        self.conn.execute(
            "INSERT INTO log (position, origin, origin_id, commit_ts, payload, chunks, n) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (pos, origin, origin_id, ts, payload, chunks, n),
        )
        self.conn.execute("INSERT INTO applied VALUES (?, ?, ?, ?)", (origin, origin_id, pos, ts))
        self.conn.execute("RELEASE entry")

    def _undo_entry(self) -> None:
        self.conn.execute("ROLLBACK TO entry")
        self.conn.execute("RELEASE entry")
        self.state.forget_keys()

    # --- consumers and meta ----------------------------------------------

    def ack(self, consumer: str, position: int) -> None:
        self.conn.execute(
            "INSERT INTO consumers VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET acked = excluded.acked",
            (consumer, position),
        )

    def forget(self, consumer: str) -> None:
        self.conn.execute("DELETE FROM consumers WHERE name = ?", (consumer,))

    def set_meta(self, k: str, v) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, v))

    # --- compaction ------------------------------------------------------

    def compact(self, floor: int) -> int:
        """Delete log entries at or below `floor` in a transaction of its own; the new horizon."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            horizon = max(meta(conn, "horizon", 0), floor)
            last = head(conn)
            conn.execute("DELETE FROM log WHERE position <= ?", (horizon,))
            conn.execute("DELETE FROM log_chunk WHERE position <= ?", (horizon,))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('horizon', ?)", (horizon,))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('head', ?)", (last,))
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass
        return horizon


# --- readers: each call is one short read transaction on a reader connection ---


class LogRead(NamedTuple):
    items: List[ResolvedTransaction]
    partial: Optional[Tuple[int, int]]
    """(position, chunks) when the last item is the first chunk of a bigger entry."""
    behind_horizon: bool
    """The entries after the start are compacted away: the reader needs a catch-up."""


def read_log(conn, after: int, upto: int, max_items: int, budget: int) -> LogRead:
    """
    Entries after `after` up to `upto`: at most `max_items`, at most `budget`
    changes in all (at least one item).  An entry stored in several chunks
    comes alone, as its first chunk (`LogRead.partial`); `read_chunk` reads
    the rest.
    """
    if after < meta(conn, "horizon", 0):
        return LogRead([], None, True)
    cur = conn.execute(
        "SELECT position, origin, origin_id, commit_ts, chunks, n, payload FROM log "
        "WHERE position > ? AND position <= ? ORDER BY position LIMIT ?",
        (after, upto, max_items),
    )
    items: List[ResolvedTransaction] = []
    total = 0
    for p, o, oid, ts, chunks, n, payload in cur:
        if chunks > 1:
            if items:
                break
            item = ResolvedTransaction(p, o, bytes(oid), ts, decode_changes(payload), more=True)
            return LogRead([item], (p, chunks), False)
        changes = None
        if n is None:  # written by schema version 1
            changes = decode_changes(payload)
            n = len(changes)
        if items and total + n > budget:
            break
        if changes is None:
            changes = decode_changes(payload)
        items.append(ResolvedTransaction(p, o, bytes(oid), ts, changes))
        total += n
    return LogRead(items, None, False)


def read_chunk(conn, position: int, seq: int) -> Optional[Tuple[ResolvedChange, ...]]:
    """Chunk `seq` of the entry at `position`, or None when it is gone (compacted)."""
    if seq == 0:
        row = conn.execute("SELECT payload FROM log WHERE position = ?", (position,)).fetchone()
    else:
        row = conn.execute("SELECT payload FROM log_chunk WHERE position = ? AND seq = ?", (position, seq)).fetchone()
    return None if row is None else decode_changes(row[0])


Cursor = Optional[tuple]


def read_catch_up(conn, after: int, upto: int, cursor: Cursor, limit: int) -> Tuple[Tuple[ResolvedChange, ...], Cursor]:
    """
    The next `limit` rows (live or tombstone) written after `after` and at
    or before `upto`, in key order from `cursor`; and the cursor to go on
    from, or None when these were the last.  Rows written after `upto` are
    left out: the log after `upto` carries them.
    """
    where, args = "", ()
    if cursor is not None:
        where, args = "(schema_name, table_name, key) > (?, ?, ?) AND ", cursor
    cur = conn.execute(
        "SELECT schema_name, table_name, key, vals, deleted FROM rows WHERE " + where
        + "position > ? AND position <= ? ORDER BY schema_name, table_name, key LIMIT ?",
        (*args, after, upto, limit + 1),
    )
    rows = cur.fetchall()
    more = len(rows) > limit
    if more:
        del rows[limit:]
    changes = tuple(ResolvedChange(s, t, decode_key(k), _loads(v), bool(d)) for s, t, k, v, d in rows)
    return changes, ((rows[-1][0], rows[-1][1], rows[-1][2]) if more else None)


def read_snapshot(conn, tables: Optional[Sequence[Tuple[str, str]]], upto: int, cursor: Cursor,
                  limit: int) -> Tuple[List[ResolvedChange], Cursor]:
    """
    The next `limit` live rows of `tables` (sorted (schema, table) pairs;
    None = all) unchanged since `upto`, in key order from `cursor`; and the
    cursor to go on from, or None when the snapshot is complete.
    """
    out: List[ResolvedChange] = []
    if tables is None:
        where, args = "", ()
        if cursor is not None:
            where, args = "(schema_name, table_name, key) > (?, ?, ?) AND ", cursor
        cur = conn.execute(
            "SELECT schema_name, table_name, key, vals FROM rows WHERE " + where
            + "deleted = 0 AND position <= ? ORDER BY schema_name, table_name, key LIMIT ?",
            (*args, upto, limit),
        )
        rows = cur.fetchall()
        out = [ResolvedChange(s, t, decode_key(k), _loads(v)) for s, t, k, v in rows]
        return out, ((rows[-1][0], rows[-1][1], rows[-1][2]) if len(rows) == limit else None)
    index, last = cursor if cursor is not None else (0, None)
    while index < len(tables) and len(out) < limit:
        s, t = tables[index]
        where, args = ("key > ? AND ", (last,)) if last is not None else ("", ())
        cur = conn.execute(
            "SELECT key, vals FROM rows WHERE schema_name = ? AND table_name = ? AND " + where
            + "deleted = 0 AND position <= ? ORDER BY key LIMIT ?",
            (s, t, *args, upto, limit - len(out)),
        )
        rows = cur.fetchall()
        out.extend(ResolvedChange(s, t, decode_key(k), _loads(v)) for k, v in rows)
        if len(out) < limit:
            index, last = index + 1, None
        else:
            last = rows[-1][0]
    return out, ((index, last) if index < len(tables) else None)


def read_meta(conn, k: str):
    return meta(conn, k)


def read_applied(conn, origin: str, origin_id: bytes) -> Optional[int]:
    row = conn.execute("SELECT position FROM applied WHERE origin = ? AND origin_id = ?", (origin, origin_id)).fetchone()
    return None if row is None else row[0]


def catch_up_timestamp() -> int:
    return int(time.time() * 1_000_000)
