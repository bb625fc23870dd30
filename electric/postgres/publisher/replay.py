"""
Why does a database's apply worker fail on a transaction Electric sent?  Ask
the database itself: replay the transaction's changes as its apply worker
would, in a transaction that is always rolled back.

The apply worker runs as the subscription's owner (the connector's role)
with ``session_replication_role = replica``: replica-enabled triggers (the
upsert trigger) fire, ordinary triggers and foreign-key checks do not, and
every value goes through its column type's input function with the column's
type modifier.  The replay does the same: one ``SET LOCAL
session_replication_role = replica`` session of the connector's own
credentials, each live row as an ``INSERT ... OVERRIDING SYSTEM VALUE`` of
the whole row with the values as untyped literals, each deleted row as a
``DELETE`` by key, in the order Electric sent them, skipping what the
encoder skips (tables the database lacks, changes set aside).

Changes are replayed in batches under a savepoint; a batch that fails is
rolled back to its savepoint and replayed change by change, each under its
own savepoint, so every failing change is found with its own error (a change
that fails is rolled back, as if set aside, and the rest goes on).  At the
end ``SET CONSTRAINTS ALL IMMEDIATE`` reports deferred constraints.  Then
ROLLBACK: nothing of the replay is ever committed.  Nothing here reads the
Postgres server's log.

`statements` is pure (tested without a database); `replay` runs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

import psycopg2
from twisted.internet import defer

from electric.hub.interface import UNCHANGED, ResolvedChange
from electric.schema import Table

BATCH = 200
"""Changes replayed under one savepoint before falling back to one savepoint per change."""

MAX_FAILED = 100
"""Failing changes kept per diagnosis (more are counted)."""

LOCK_TIMEOUT = "10s"
"""A row the (restarting) apply worker or a local writer holds: give up rather than wait for ever."""

INCONCLUSIVE = {"55P03", "57014", "40P01", "40001"}
"""lock timeout, statement timeout/cancel, deadlock, serialization: say nothing about the change."""


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _q(name: str) -> str:
    """An identifier inside SQL that psycopg2 interpolates: % doubled."""
    return quote_ident(name).replace("%", "%%")


def statement(table: Table, change: ResolvedChange) -> Tuple[str, list]:
    """The SQL (with %s placeholders) and arguments doing what the apply worker does with `change`."""
    target = f"{_q(table.schema)}.{_q(table.name)}"
    row = change.row
    if change.deleted:
        cond = " AND ".join(f"{_q(k)} = %s" for k in table.primary_key)
        return f"DELETE FROM {target} WHERE {cond}", [_value(row.get(k)) for k in table.primary_key]
    names = table.column_names
    cols = ", ".join(_q(c) for c in names)
    marks = ", ".join("%s" for _ in names)
    return (f"INSERT INTO {target} ({cols}) OVERRIDING SYSTEM VALUE VALUES ({marks})",
            [_value(row.get(c)) for c in names])


def _value(v):
    return None if v is UNCHANGED else v


@dataclass
class FailedChange:
    """One change the database refused, with its error as Postgres reported it."""

    schema: str
    table: str
    key: Tuple[Optional[str], ...]
    op: str  # upsert | delete | commit (a deferred constraint, no single change)
    row: Mapping[str, Optional[str]]
    sqlstate: str
    message: str
    detail: Optional[str] = None
    constraint: Optional[str] = None

    def error_json(self) -> dict:
        return {"sqlstate": self.sqlstate, "message": self.message, "detail": self.detail,
                "constraint": self.constraint}

    def to_json(self, with_row: bool = False) -> dict:
        out = {"schema": self.schema, "table": self.table, "key": list(self.key), "op": self.op,
               "error": self.message, "sqlstate": self.sqlstate, "detail": self.detail,
               "constraint": self.constraint}
        if with_row:
            out["row"] = dict(self.row)
        return out


@dataclass
class Replayed:
    """The outcome: every failing change found (up to MAX_FAILED), or `inconclusive` with why."""

    changes: int = 0
    failed: List[FailedChange] = field(default_factory=list)
    failed_total: int = 0
    inconclusive: Optional[str] = None


class Inconclusive(Exception):
    """The replay could not tell (a lock wait, a timeout, a lost connection)."""


def _error(e: Exception) -> Tuple[str, str, Optional[str], Optional[str]]:
    diag = getattr(e, "diag", None)
    code = getattr(e, "pgcode", None) or ""
    message = (getattr(diag, "message_primary", None) if diag is not None else None) or " ".join(str(e).split())
    detail = getattr(diag, "message_detail", None) if diag is not None else None
    constraint = getattr(diag, "constraint_name", None) if diag is not None else None
    return code, message, detail, constraint


class Replayer:
    """
    One rolled-back replay over an open `electric.postgres.source.setup.SetupSession`
    (or anything with `execute(sql, args)` returning a Deferred): `begin()`,
    `feed(changes)` for each chunk of the transaction, `finish()` (always
    rolls back), then `result`.  `table_for(schema, name)` is the database's
    own definition (None: the encoder skips the table); `set_aside(change)`
    tells changes the encoder skips.
    """

    def __init__(self, session, table_for: Callable[[str, str], Optional[Table]],
                 set_aside: Callable[[ResolvedChange], bool] = lambda c: False):
        self.session = session
        self.table_for = table_for
        self.set_aside = set_aside
        self.result = Replayed()
        self._savepoints = 0

    @defer.inlineCallbacks
    def begin(self):
        yield self.session.execute("BEGIN")
        yield self.session.execute(
            f"SET LOCAL session_replication_role = replica; SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")

    @defer.inlineCallbacks
    def feed(self, changes: Sequence[ResolvedChange]):
        todo = []
        for ch in changes:
            table = self.table_for(ch.schema, ch.table)
            if table is None or not table.primary_key or self.set_aside(ch):
                continue
            todo.append((table, ch))
        for i in range(0, len(todo), BATCH):
            batch = todo[i:i + BATCH]
            ok = yield self._try(batch)
            if not ok:
                for item in batch:
                    yield self._try([item], report=True)
            self.result.changes += len(batch)

    @defer.inlineCallbacks
    def _try(self, items, report: bool = False):
        self._savepoints += 1
        sp = f"electric_replay_{self._savepoints}"
        sql = [f"SAVEPOINT {sp}"]
        args: list = []
        for table, ch in items:
            s, a = statement(table, ch)
            sql.append(s)
            args.extend(a)
        sql.append(f"RELEASE SAVEPOINT {sp}")
        try:
            yield self.session.execute("; ".join(sql), args)
        except psycopg2.Error as e:
            code, message, detail, constraint = _error(e)
            if code in INCONCLUSIVE or not code:
                raise Inconclusive(f"{message} (SQLSTATE {code or 'none'})") from None
            yield self.session.execute(f"ROLLBACK TO SAVEPOINT {sp}")
            if report:
                table, ch = items[0]
                self._failed(FailedChange(ch.schema, ch.table, tuple(ch.key), "delete" if ch.deleted else "upsert",
                                          dict(ch.row), code, message, detail, constraint))
            return False
        return True

    def _failed(self, f: FailedChange) -> None:
        self.result.failed_total += 1
        if len(self.result.failed) < MAX_FAILED:
            self.result.failed.append(f)

    @defer.inlineCallbacks
    def finish(self):
        """Deferred constraints, then ROLLBACK (always)."""
        try:
            yield self.session.execute("SAVEPOINT electric_replay_end; SET CONSTRAINTS ALL IMMEDIATE")
        except psycopg2.Error as e:
            code, message, detail, constraint = _error(e)
            if code and code not in INCONCLUSIVE:
                self._failed(FailedChange("", "", (), "commit", {}, code, message, detail, constraint))
        finally:
            yield self.session.execute("ROLLBACK")
        return self.result
