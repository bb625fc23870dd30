"""
Importing the rows a database already holds into the hub, exactly where its
replication stream begins.

Why: logical replication only carries changes.  Rows a database held before
Electric created its slot (or before a table became replicable) would never
reach the hub, the other databases or the clients, and a key held by two
databases with different values would stay different forever.

How the copy meets the stream exactly (nothing lost, nothing twice):

* **A new slot.**  The connector creates its slot over the replication
  protocol with ``CREATE_REPLICATION_SLOT <slot> LOGICAL pgoutput (SNAPSHOT
  'export')``.  Postgres answers with the slot's *consistent point* C and the
  name of a snapshot that shows the database exactly as of C: every
  transaction committed before C is in it, and the slot streams exactly the
  transactions committing from C on.  A separate SQL session imports that
  snapshot (``BEGIN ISOLATION LEVEL REPEATABLE READ`` + ``SET TRANSACTION
  SNAPSHOT``), reads every replicated table through a server-side cursor,
  ``CHUNK_CHANGES`` rows at a time, and hands the rows to ONE hub transaction
  (`IHub.begin` -> `IAppendBuffer.add` per chunk -> `commit`) with origin =
  the connector and origin_id = ``b"import:" + C`` (8 bytes, big-endian).
  Only after that commit is durable does the connector start the stream,
  from C.
* **A table that becomes replicable mid-stream** (published or given a
  primary key after it was filled, or found replicable at a restart): the
  connector takes a second, TEMPORARY slot with an exported snapshot, whose
  consistent point C2 is ahead of the main stream.  The table's rows are
  copied in that snapshot as one hub transaction (origin_id ``b"import:" +
  C2``), and from then on the main stream drops that table's changes from
  transactions committed before C2 (``Begin.final_lsn < C2``: they are in
  the snapshot) and forwards those committed after it.  The main stream is
  held while the import runs, so no later change of that table reaches the
  hub before the rows it changes.  The horizon C2 is kept durably until
  the stream's flush position passes it.
* **A crash or restart during an import.**  An exported snapshot dies with
  the session that exported it, so an interrupted import cannot resume:
  it is redone.  The staged hub transaction never committed and leaves no
  trace; before creating the slot the connector records that an import is
  pending (`ImportState`, a small file in the data directory).  At the
  next start a pending import whose hub transaction exists (``hub.applied``
  of ``import:`` + the slot's confirmed position, which cannot have moved:
  nothing streams before the import commits) is finished; otherwise the slot
  is dropped and created again, with a new snapshot and consistent point,
  and the copy starts over.  Nothing was streamed from the old slot, so
  nothing is lost, and nothing of the old copy reached the hub, so nothing
  is doubled.

Values are Postgres's text output of each column, exactly what pgoutput
sends: the import session reads every column type through a pass-through
typecaster, so nothing is converted on the way.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import psycopg2
import psycopg2.extensions
from twisted.internet import defer
from twisted.logger import Logger

from electric import files
from electric.hub.interface import CHUNK_CHANGES, UPSERT, RowChange
from electric.postgres.protocol.lsn import format_lsn
from electric.schema import Table

log = Logger(namespace="electric.postgres.source.importer")

IMPORT_PREFIX = b"import:"
LOG_INTERVAL = 5.0
"""Seconds between two progress lines in the log while an import runs."""


def import_origin_id(point: int) -> bytes:
    """The hub identity of the import that meets a stream starting at `point`."""
    return IMPORT_PREFIX + int(point).to_bytes(8, "big")


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# -- progress ----------------------------------------------------------------


@dataclass
class TableProgress:
    schema: str
    table: str
    estimated: Optional[int]
    done: int = 0
    finished: bool = False

    def status(self) -> dict:
        return {"schema": self.schema, "table": self.table, "rows_done": self.done,
                "rows_estimated": self.estimated, "finished": self.finished}


@dataclass
class ImportProgress:
    """
    What an import has done so far, for `/api/status/details` and the log.
    `estimated` totals come from ``pg_class.reltuples`` (the planner's
    estimate where the table was never analysed), so done may pass them.
    """

    kind: str  # "initial" or "tables"
    point: int
    started: float
    clock: Callable[[], float] = time.monotonic
    tables: List[TableProgress] = field(default_factory=list)
    state: str = "copying"  # copying, committing, done, failed
    position: Optional[int] = None
    finished_at: Optional[float] = None
    error: Optional[str] = None

    @property
    def rows_done(self) -> int:
        return sum(t.done for t in self.tables)

    @property
    def rows_estimated(self) -> Optional[int]:
        known = [t.estimated for t in self.tables if t.estimated is not None]
        return sum(known) if known else None

    def elapsed(self) -> float:
        end = self.finished_at if self.finished_at is not None else self.clock()
        return max(0.0, end - self.started)

    def status(self) -> dict:
        elapsed = self.elapsed()
        return {
            "kind": self.kind,
            "state": self.state,
            "consistent_point": format_lsn(self.point),
            "rows_done": self.rows_done,
            "rows_estimated": self.rows_estimated,
            "rows_per_second": round(self.rows_done / elapsed) if elapsed > 0 else None,
            "seconds": round(elapsed, 1),
            "hub_position": self.position,
            "error": self.error,
            "tables": [t.status() for t in self.tables],
        }

    def line(self) -> str:
        """One log line: overall and the table being copied."""
        est = self.rows_estimated
        total = f"{self.rows_done}/~{est}" if est is not None else f"{self.rows_done}/?"
        current = next((t for t in self.tables if not t.finished), None)
        where = f", now {t_name(current)} {current.done}/~{current.estimated}" if current is not None else ""
        return f"{total} rows ({self.state}, {self.elapsed():.0f} s{where})"


def t_name(t: TableProgress) -> str:
    return f"{t.schema}.{t.table}"


# -- the durable record --------------------------------------------------------


class ImportState:
    """
    A connector's import bookkeeping, kept in
    ``ELECTRIC_DATA_DIR/imports/<connector>.json`` (0600, written atomically):

    * ``pending``: an import that was started and is not known to be in the
      hub: ``{"kind": "initial"}`` before the slot is created, or ``{"kind":
      "tables", "point": C2, "tables": [[schema, name], ...]}``;
    * ``known``: the tables whose rows are in the hub (imported, or
      streamed from the slot's start), or None when the slot predates
      imports (then every table it carries is taken as known);
    * ``horizons``: ``"schema.table" -> C2`` of mid-stream imports the
      stream has not passed yet (see the module docstring).
    """

    def __init__(self, data_dir: str, connector: str):
        self.dir = os.path.join(data_dir, "imports")
        self.path = os.path.join(self.dir, f"{connector}.json")
        self.exists = False
        self.pending: Optional[dict] = None
        self.known: Optional[set] = None
        self.horizons: Dict[Tuple[str, str], int] = {}

    def load(self) -> "ImportState":
        try:
            with open(self.path, "r", encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            self.exists, self.pending, self.known, self.horizons = False, None, None, {}
            return self
        self.exists = True
        self.pending = data.get("pending")
        known = data.get("known")
        self.known = None if known is None else {tuple(k) for k in known}
        self.horizons = {tuple(k.split(".", 1)): int(v) for k, v in (data.get("horizons") or {}).items()}
        return self

    def save(self) -> None:
        files.private_dir(self.dir)
        data = {
            "pending": self.pending,
            "known": None if self.known is None else sorted(list(k) for k in self.known),
            "horizons": {f"{s}.{t}": v for (s, t), v in sorted(self.horizons.items())},
        }
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, files.FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self.exists = True

    def prune(self, flushed: int) -> bool:
        """Forget horizons the stream has passed; True when something changed."""
        old = len(self.horizons)
        self.horizons = {k: v for k, v in self.horizons.items() if v > flushed}
        return len(self.horizons) != old


# -- reading a snapshot ----------------------------------------------------------


def _raw(value, cursor):
    return value


def raw_text_type(oids: Iterable[int]):
    """A psycopg2 typecaster giving each of `oids` as the server's text output, untouched."""
    return psycopg2.extensions.new_type(tuple(sorted(set(int(o) for o in oids))), "ELECTRIC_RAW_TEXT", _raw)


_ESTIMATE_SQL = "SELECT c.oid, c.reltuples FROM pg_catalog.pg_class c WHERE c.oid = ANY (%s::oid[])"


@defer.inlineCallbacks
def estimate_rows(conn, tables: Sequence[Table], oids: Dict[Tuple[str, str], int]):
    """
    Rows per table as Postgres estimates them: ``pg_class.reltuples``, or
    where the table was never vacuumed or analysed (-1) the planner's guess
    from its size (``EXPLAIN``), which costs no scan.
    """
    wanted = [oids[t.qualified] for t in tables if t.qualified in oids]
    rows = yield conn.runQuery(_ESTIMATE_SQL, (wanted,)) if wanted else defer.succeed([])
    by_oid = {int(r[0]): float(r[1]) for r in rows}
    out: Dict[Tuple[str, str], Optional[int]] = {}
    for t in tables:
        value = by_oid.get(oids.get(t.qualified, -1))
        if value is None or value < 0:
            try:
                plan = yield conn.runQuery(
                    f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {quote_ident(t.schema)}.{quote_ident(t.name)}")
                doc = plan[0][0]
                if isinstance(doc, str):
                    doc = json.loads(doc)
                value = float(doc[0]["Plan"]["Plan Rows"])
            except (psycopg2.Error, LookupError, TypeError, ValueError):
                value = None
        out[t.qualified] = None if value is None else int(value)
    return out


def row_changes(table: Table, names: Sequence[str], rows) -> List[RowChange]:
    """Rows of `table` (tuples of text in `names` order) as hub upserts."""
    key_idx = [names.index(k) for k in table.primary_key]
    schema, name = table.schema, table.name
    out = []
    for row in rows:
        out.append(RowChange(schema, name, UPSERT, tuple(row[i] for i in key_idx), dict(zip(names, row))))
    return out


CURSOR = "electric_import"


async def copy_tables(conn, tables: Sequence[Table], buffer, progress: ImportProgress,
                      chunk: int = CHUNK_CHANGES) -> None:
    """
    Copy every row of `tables` into the open hub `buffer`, `chunk` rows at a
    time, in the snapshot of the transaction open on `conn` (a txpostgres
    connection).  The next chunk is fetched while the hub stages the one
    before, so at most two chunks are in memory.
    """
    oids = {c.type_oid for t in tables for c in t.columns}
    if oids:
        psycopg2.extensions.register_type(raw_text_type(oids), conn.pollable())
    by_name = {(t.schema, t.table): t for t in progress.tables}
    for table in tables:
        prog = by_name[(table.schema, table.name)]
        names = [c.name for c in table.columns]
        if not names:
            prog.finished = True
            continue
        cols = ", ".join(quote_ident(n) for n in names)
        await conn.runOperation(
            f"DECLARE {CURSOR} NO SCROLL CURSOR FOR SELECT {cols} FROM "
            f"{quote_ident(table.schema)}.{quote_ident(table.name)}")
        fetch = f"FETCH FORWARD {int(chunk)} FROM {CURSOR}"
        pending = conn.runQuery(fetch)
        while True:
            rows = await pending
            if not rows:
                break
            changes = row_changes(table, names, rows)
            if len(rows) == chunk:
                pending = conn.runQuery(fetch)
            else:
                pending = defer.succeed([])
            del rows
            # One statement at a time on the connection: the next FETCH is
            # already running while the hub stages this chunk.
            await buffer.add(changes)
            prog.done += len(changes)
        await conn.runOperation(f"CLOSE {CURSOR}")
        prog.finished = True
