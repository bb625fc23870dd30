"""
The quarantine: changes an operator set aside for one database, so that
database's subscription moves past a change its apply worker cannot apply.

Kept in ``quarantine.sqlite3`` in ELECTRIC_DATA_DIR (0600, like the hub's
files), not in a table of the database, because

* an entry names a *hub position*, which only means something together with
  the hub's data: the file lives and dies with that data (a replaced data
  directory takes its quarantine with it; entries also carry the hub's id
  and entries of another hub are ignored);
* it must be readable and writable while the failing database is the
  problem (down, read-only, its schema being fixed), and must not add a
  table to the user's schema that the publication (FOR ALL TABLES) would
  then replicate;
* every entry is durable (synchronous=FULL) before the publisher skips the
  change, so nothing is ever skipped without its full row on disk.

An entry holds the full resolved row as the hub sent it, the transaction it
belonged to and the Postgres error that made it fail.  Entries are never
deleted by Electric: a re-sent entry keeps its row and records the hub
position of the re-send.  Calls are few and small, so they run
synchronously on the reactor thread.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Set, Tuple

from twisted.application import service

from electric import files

FILE_NAME = "quarantine.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hub_id TEXT NOT NULL,
    connector TEXT NOT NULL,
    position INTEGER NOT NULL,
    schema_name TEXT NOT NULL,
    table_name TEXT NOT NULL,
    key TEXT NOT NULL,
    op TEXT NOT NULL,
    row TEXT NOT NULL,
    txn_origin TEXT NOT NULL,
    txn_origin_id TEXT NOT NULL,
    commit_timestamp INTEGER NOT NULL,
    error TEXT NOT NULL,
    quarantined_at REAL NOT NULL,
    resent_position INTEGER,
    resent_at REAL,
    UNIQUE (hub_id, connector, position, schema_name, table_name, key)
);
"""

_COLUMNS = ("id", "hub_id", "connector", "position", "schema_name", "table_name", "key", "op", "row",
            "txn_origin", "txn_origin_id", "commit_timestamp", "error", "quarantined_at", "resent_position",
            "resent_at")


@dataclass(frozen=True)
class Entry:
    """One change set aside for one database."""

    id: int
    connector: str
    position: int
    schema: str
    table: str
    key: Tuple[Optional[str], ...]
    op: str  # "upsert" (the row was sent as an INSERT) or "delete"
    row: dict
    txn_origin: str
    txn_origin_id: str  # hex
    commit_timestamp: int
    error: dict
    quarantined_at: float
    resent_position: Optional[int] = None
    resent_at: Optional[float] = None

    @property
    def held(self) -> bool:
        """Not yet re-sent."""
        return self.resent_position is None

    def to_json(self) -> dict:
        return {
            "id": self.id, "connector": self.connector, "position": self.position,
            "schema": self.schema, "table": self.table, "key": list(self.key), "op": self.op,
            "row": self.row, "transaction": {"origin": self.txn_origin, "origin_id": self.txn_origin_id,
                                             "commit_timestamp": self.commit_timestamp},
            "error": self.error, "quarantined_at": self.quarantined_at,
            "state": "held" if self.held else "resent",
            "resent_position": self.resent_position, "resent_at": self.resent_at,
        }


def _entry(row) -> Entry:
    r = dict(zip(_COLUMNS, row))
    return Entry(r["id"], r["connector"], r["position"], r["schema_name"], r["table_name"],
                 tuple(json.loads(r["key"])), r["op"], json.loads(r["row"]), r["txn_origin"],
                 r["txn_origin_id"], r["commit_timestamp"], json.loads(r["error"]), r["quarantined_at"],
                 r["resent_position"], r["resent_at"])


class QuarantineStore(service.Service):
    """
    `ELECTRIC_DATA_DIR/quarantine.sqlite3`, opened in `startService`.

    `set_aside(connector)` is the live map the port-5433 encoder consults:
    position -> {(schema, table, key)}; `add` updates it after the entry is
    durable.  `hub_id` (hex) scopes every entry to the hub data it names.
    """

    name = "quarantine"

    def __init__(self, data_dir: str, clock=time.time):
        self.path = os.path.join(data_dir, FILE_NAME)
        self.data_dir = data_dir
        self._clock = clock
        self._conn: Optional[sqlite3.Connection] = None
        self._hub_id = ""
        self._maps: Dict[str, Dict[int, Set[tuple]]] = {}

    def startService(self):
        files.private_dir(self.data_dir)
        files.private_sqlite(self.path)
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            conn.close()
            raise ValueError(f"{self.path} is not a usable quarantine file: {e}") from None
        files.private_sqlite(self.path)
        self._conn = conn
        self._maps.clear()
        super().startService()

    def stopService(self):
        super().stopService()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the quarantine store is not running")
        return self._conn

    def use_hub(self, hub_id: Optional[bytes]) -> None:
        """Entries are those of this hub's data (the hub's id, known once it runs)."""
        hub_id_hex = hub_id.hex() if hub_id else ""
        if hub_id_hex != self._hub_id:
            self._hub_id = hub_id_hex
            self._maps.clear()

    # -- the publisher's view ---------------------------------------------------

    def set_aside(self, connector: str) -> Dict[int, Set[tuple]]:
        """Live map position -> {(schema, table, key)} of `connector`'s entries (held or re-sent)."""
        m = self._maps.get(connector)
        if m is None:
            if self._conn is None:
                return {}  # not running: nothing to skip, and nothing cached that would hide entries later
            m = self._maps[connector] = {}
            for position, schema, table, key in self._conn.execute(
                    "SELECT position, schema_name, table_name, key FROM quarantine"
                    " WHERE hub_id = ? AND connector = ?", (self._hub_id, connector)):
                m.setdefault(position, set()).add((schema, table, tuple(json.loads(key))))
        return m

    # -- operations ---------------------------------------------------------------

    def add(self, connector: str, position: int, schema: str, table: str, key: Iterable, op: str, row: dict,
            txn_origin: str, txn_origin_id: bytes, commit_timestamp: int, error: dict) -> Entry:
        """Set one change aside (idempotent: the same change again returns its entry)."""
        key = tuple(key)
        db = self._db()
        key_json = json.dumps(list(key))
        db.execute(
            "INSERT OR IGNORE INTO quarantine (hub_id, connector, position, schema_name, table_name, key, op, row,"
            " txn_origin, txn_origin_id, commit_timestamp, error, quarantined_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self._hub_id, connector, position, schema, table, key_json, op, json.dumps(row, sort_keys=True),
             txn_origin, bytes(txn_origin_id).hex(), int(commit_timestamp), json.dumps(error, sort_keys=True),
             self._clock()))
        found = db.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM quarantine WHERE hub_id = ? AND connector = ? AND position = ?"
            " AND schema_name = ? AND table_name = ? AND key = ?",
            (self._hub_id, connector, position, schema, table, key_json)).fetchone()
        self.set_aside(connector).setdefault(position, set()).add((schema, table, key))
        return _entry(found)

    def entries(self, connector: Optional[str] = None, ids: Optional[Iterable[int]] = None) -> List[Entry]:
        """Entries of this hub's data, oldest first (of one connector, and/or with these ids)."""
        sql = f"SELECT {', '.join(_COLUMNS)} FROM quarantine WHERE hub_id = ?"
        args: list = [self._hub_id]
        if connector is not None:
            sql += " AND connector = ?"
            args.append(connector)
        out = [_entry(r) for r in self._db().execute(sql + " ORDER BY id", args)]
        if ids is not None:
            wanted = set(ids)
            out = [e for e in out if e.id in wanted]
        return out

    def mark_resent(self, ids: Iterable[int], position: int) -> None:
        now = self._clock()
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            for i in ids:
                db.execute("UPDATE quarantine SET resent_position = ?, resent_at = ? WHERE id = ?", (position, now, i))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def counts(self) -> Dict[str, Dict[str, int]]:
        out: Dict[str, Dict[str, int]] = {}
        if self._conn is None:
            return out
        for connector, held, n in self._conn.execute(
                "SELECT connector, resent_position IS NULL, count(*) FROM quarantine WHERE hub_id = ?"
                " GROUP BY 1, 2", (self._hub_id,)):
            out.setdefault(connector, {"held": 0, "resent": 0})["held" if held else "resent"] += n
        return out
