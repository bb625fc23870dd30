"""
OFFSET_STORAGE_FILE: what must survive restarts about the outside world's positions.

* Per Postgres slot (subscription), the LSN *base* its hub positions are
  mapped with (`electric.hub.positions.end_lsn`).  It normally stays 0; when
  the hub's data was replaced while a subscriber holds a higher LSN, the
  publisher raises it so that LSNs keep growing for that subscriber.
* Per Satellite client id, the last client LSN it acknowledged.

Each write is its own fsync'd SQLite transaction (the calls are few and small,
so they run synchronously).  Losing the file is safe: bases fall back to 0,
which the publisher detects by the subscriber's LSN being ahead of the hub.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Dict, Optional

_SCHEMA = """
CREATE TABLE IF NOT EXISTS slot_base (slot TEXT PRIMARY KEY, base INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS client_lsn (client_id TEXT PRIMARY KEY, lsn BLOB NOT NULL) WITHOUT ROWID;
"""


class OffsetStore:
    """Small durable map; safe to call from any thread."""

    def __init__(self, path: str):
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA busy_timeout=10000")
            self._conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise ValueError(f"OFFSET_STORAGE_FILE {path!r} is not a usable offset store: {e}") from None

    def _write(self, sql, args):
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(sql, args)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, sql, args):
        with self._lock:
            return self._conn.execute(sql, args).fetchone()

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
            return dict(self._conn.execute("SELECT slot, base FROM slot_base"))

    def client_lsn(self, client_id: str) -> Optional[bytes]:
        row = self._read("SELECT lsn FROM client_lsn WHERE client_id = ?", (client_id,))
        return None if row is None else bytes(row[0])

    def set_client_lsn(self, client_id: str, lsn: bytes) -> None:
        if not isinstance(lsn, (bytes, bytearray)):
            raise ValueError(f"client LSN must be bytes, got {type(lsn).__name__}")
        self._write(
            "INSERT INTO client_lsn VALUES (?, ?) ON CONFLICT(client_id) DO UPDATE SET lsn = excluded.lsn",
            (client_id, bytes(lsn)),
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()
