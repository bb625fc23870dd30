"""
OFFSET_STORAGE_FILE: what must survive restarts about the outside world's positions.

* Per Postgres slot (subscription), the LSN *base* its hub positions are
  mapped with (`electric.hub.positions.end_lsn`).  It normally stays 0; when
  the hub's data was replaced while a subscriber holds a higher LSN, the
  publisher raises it so that LSNs keep growing for that subscriber.
* Per Satellite client id, the last client LSN it acknowledged, and the
  user the id belongs to: the first user that authenticated with it.  A
  client id is the identity under which the hub deduplicates a client's
  transactions and under which its position is kept, so another user must
  never act under it (`claim_client`).

The store is a service: the file is opened (and created) in `startService`,
never at construction, so building the service tree touches no disk.  Each
write is its own fsync'd SQLite transaction (the calls are few and small, so
they run synchronously).  Losing the file is safe: bases fall back to 0,
which the publisher detects by the subscriber's LSN being ahead of the hub.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Dict, Optional

from twisted.application import service

from electric import files

_SCHEMA = """
CREATE TABLE IF NOT EXISTS slot_base (slot TEXT PRIMARY KEY, base INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS client_lsn (client_id TEXT PRIMARY KEY, lsn BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS client_owner (client_id TEXT PRIMARY KEY, user_id TEXT NOT NULL) WITHOUT ROWID;
"""


class OffsetStore(service.Service):
    """
    Small durable map; safe to call from any thread while started.  Calls
    before `startService` or after `stopService` raise RuntimeError.
    """

    name = "offsets"

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._conn: Optional[sqlite3.Connection] = None

    def startService(self):
        path = self.path
        # Missing parent directories are made private; an existing one (the
        # working directory, by default) is left alone, the file is 0600.
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=files.DIR_MODE, exist_ok=True)
        conn = None
        try:
            files.private_sqlite(path)
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.executescript(_SCHEMA)
        except (sqlite3.DatabaseError, OSError) as e:
            if conn is not None:
                conn.close()
            raise ValueError(f"OFFSET_STORAGE_FILE {path!r} is not a usable offset store: {e}") from None
        with self._lock:
            self._conn = conn
        super().startService()

    def stopService(self):
        super().stopService()
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _open_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"offset store {self.path} is not open (service not started)")
        return self._conn

    def _write(self, sql, args):
        with self._lock:
            conn = self._open_conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(sql, args)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self, sql, args):
        with self._lock:
            return self._open_conn().execute(sql, args).fetchone()

    def slot_base(self, slot: str) -> int:
        row = self._read("SELECT base FROM slot_base WHERE slot = ?", (slot,))
        return 0 if row is None else row[0]

    def set_slot_base(self, slot: str, base: int) -> None:
        if not isinstance(base, int) or not 0 <= base < 1 << 63:
            raise ValueError(f"LSN base {base!r} must be an int in [0, 2**63)")
        self._write(
            "INSERT INTO slot_base VALUES (?, ?) ON CONFLICT(slot) DO UPDATE SET base = excluded.base", (slot, base)
        )

    def slot_bases(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._open_conn().execute("SELECT slot, base FROM slot_base"))

    def client_lsn(self, client_id: str) -> Optional[bytes]:
        row = self._read("SELECT lsn FROM client_lsn WHERE client_id = ?", (client_id,))
        return None if row is None else bytes(row[0])

    def claim_client(self, client_id: str, user_id: str) -> bool:
        """
        Bind `client_id` to `user_id` if it is not bound yet (durably, before
        returning); True when the id is (now) `user_id`'s, False when it
        belongs to another user.
        """
        if not isinstance(client_id, str) or not isinstance(user_id, str):
            raise ValueError("client and user ids must be str")
        with self._lock:
            conn = self._open_conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT user_id FROM client_owner WHERE client_id = ?", (client_id,)).fetchone()
                if row is None:
                    conn.execute("INSERT INTO client_owner VALUES (?, ?)", (client_id, user_id))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        return row is None or row[0] == user_id

    def client_owner(self, client_id: str) -> Optional[str]:
        row = self._read("SELECT user_id FROM client_owner WHERE client_id = ?", (client_id,))
        return None if row is None else row[0]

    def set_client_lsn(self, client_id: str, lsn: bytes) -> None:
        if not isinstance(lsn, (bytes, bytearray)):
            raise ValueError(f"client LSN must be bytes, got {type(lsn).__name__}")
        self._write(
            "INSERT INTO client_lsn VALUES (?, ?) ON CONFLICT(client_id) DO UPDATE SET lsn = excluded.lsn",
            (client_id, bytes(lsn)),
        )
