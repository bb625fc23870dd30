"""
Migrations: find a migration's SQL file, hash it, and apply it to one Postgres.

A migration is a folder in MIGRATIONS_DIR (``1666288253_create_items``) whose
SQL file is found by appending MIGRATIONS_FILE_NAME_SUFFIX (``/postgres.sql``).
Applying it to a database runs the file and records ``(version, hash)`` in
``electric.migrations`` in the *same* transaction, so a database either has
the whole migration and its record or neither: a broken file leaves nothing
half-applied and can be fixed and re-sent.

Everything that can be rejected is rejected before the file touches the
database (bad name, missing file, not UTF-8, statements that would end our
transaction early), and the version row is checked inside the transaction
before the file runs.  Replication is never paused for a migration; the
caller refreshes the connector afterwards (see `electric.migrations.migrator`).

This module talks to Postgres over an ordinary (non-replication) txpostgres
session; the pure parts (names, hashing, the statement scanner, JSON
shapes) have no I/O so they are tested on their own.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Dict, List, Optional, Tuple

import psycopg2
from twisted.internet import defer
from twisted.logger import Logger

from electric.postgres.sql import Connection

log = Logger(namespace="electric.migrations")

VSN_RE = re.compile(r"[A-Za-z0-9_]+")  # used with fullmatch: "$" would accept a trailing newline
MAX_VSN_LENGTH = 64  # electric.migrations.version is varchar(64)

# Ensures the bookkeeping exists; IF NOT EXISTS keeps it compatible with
# databases prepared by the original's init script (same columns).
ENSURE_TABLE_SQL = (
    "CREATE SCHEMA IF NOT EXISTS electric; "
    "CREATE TABLE IF NOT EXISTS electric.migrations ("
    "id serial PRIMARY KEY, "
    "version varchar(64) NOT NULL UNIQUE, "
    "hash varchar(64) NOT NULL, "
    "applied_at timestamptz DEFAULT now())"
)
# Two Electrics (or a person with psql) migrating the same database at once
# must not both pass the version check: the second waits for the first.
LOCK_TABLE_SQL = "LOCK TABLE electric.migrations IN SHARE ROW EXCLUSIVE MODE"
# The dev databases' user is called "electric", so once the electric schema
# exists the default search_path ("$user", public) would put every
# unqualified CREATE TABLE of a migration into schema electric.  Such tables
# replicate too, but a migration's tables must land in the same schema in
# every database, and in public as they always have: migrations run with
# that schema taken off the path.
SEARCH_PATH_SQL = (
    "SELECT 'electric' = ANY (current_schemas(false)), "
    "coalesce(string_agg(quote_ident(s), ', ' ORDER BY n) FILTER (WHERE s <> 'electric'), 'public') "
    "FROM unnest(current_schemas(false)) WITH ORDINALITY AS u(s, n)"
)
LOOKUP_SQL = "SELECT version, hash FROM electric.migrations WHERE version = %s"
LATEST_SQL = (
    "SELECT version, hash, applied_at FROM electric.migrations "
    "ORDER BY applied_at DESC NULLS LAST, id DESC LIMIT 1"
)
ALL_SQL = (
    "SELECT version, hash, applied_at FROM electric.migrations "
    "ORDER BY applied_at DESC NULLS LAST, id DESC"
)
INSERT_SQL = (
    "INSERT INTO electric.migrations (version, hash) VALUES (%s, %s) "
    "RETURNING version, hash, applied_at"
)
TABLE_EXISTS_SQL = "SELECT to_regclass('electric.migrations') IS NOT NULL"


# --------------------------------------------------------------------------
# errors: each carries the HTTP status the API answers with and a code whose
# spelling the original's integration tests look for (":already_migrated").


class MigrationError(Exception):
    """A migration request that could not be carried out; nothing was changed."""

    status = 500
    code = ":error"

    def __init__(self, message: str, vsn: Optional[str] = None, origin: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.vsn = vsn
        self.origin = origin

    def __str__(self):
        return f"{self.code}: {self.message}"

    def to_json(self) -> Dict[str, object]:
        body: Dict[str, object] = {"error": str(self), "status": self.status}
        if self.vsn is not None:
            body["vsn"] = self.vsn
        if self.origin is not None:
            body["origin"] = self.origin
        return body


class BadRequest(MigrationError):
    status = 400
    code = ":bad_request"


class InvalidVersion(BadRequest):
    """The version name is not one Electric accepts (letters, digits and _)."""


class VersionNotFound(MigrationError):
    status = 404
    code = "{:error, :vsn_not_found}"


class UnknownConnector(MigrationError):
    status = 404
    code = ":unknown_connector"


class AlreadyMigrated(MigrationError):
    status = 409
    code = ":already_migrated"


class AlreadyMigratedBadHash(MigrationError):
    status = 409
    code = ":already_migrated_bad_md5"


class InvalidMigrationFile(MigrationError):
    """The file exists but cannot be applied as one transaction (checked before running)."""

    status = 422
    code = ":invalid_migration"


class MigrationSQLError(MigrationError):
    """Postgres rejected the migration; the transaction was rolled back."""

    status = 422
    code = ":sql_error"

    def __init__(self, message, vsn=None, origin=None, sqlstate=None):
        super().__init__(message, vsn, origin)
        self.sqlstate = sqlstate

    def to_json(self):
        body = super().to_json()
        if self.sqlstate:
            body["sqlstate"] = self.sqlstate
        return body


class InvalidState(MigrationError):
    """The connector is not replicating yet; migrating now would race its setup."""

    status = 503
    code = ":invalid_state"

    def __init__(self, state: str, vsn=None, origin=None):
        super().__init__(f"{{:invalid_state, :{state}}}: connector {origin} is {state}, not ready",
                         vsn, origin)
        self.state = state

    def __str__(self):
        return self.message


class DatabaseUnavailable(MigrationError):
    status = 503
    code = ":database_unavailable"


class RefreshFailed(MigrationError):
    """The migration is committed, but the connector could not pick it up (it retries)."""

    status = 500
    code = ":refresh_failed"


# --------------------------------------------------------------------------
# names, files, hashes


def validate_version(vsn: object) -> str:
    """`vsn` if it can name a migration folder, else InvalidVersion."""
    if not isinstance(vsn, str) or not VSN_RE.fullmatch(vsn):
        raise InvalidVersion(
            f"Bad request: vsn {vsn!r} must be a non-empty string of letters, digits and _",
            vsn if isinstance(vsn, str) else None,
        )
    if len(vsn) > MAX_VSN_LENGTH:
        raise InvalidVersion(f"Bad request: vsn {vsn!r} is longer than {MAX_VSN_LENGTH} characters", vsn)
    return vsn


def migration_hash(data: bytes) -> str:
    """Uppercase hex MD5 of the file's raw bytes, as the original recorded it."""
    return hashlib.md5(data).hexdigest().upper()


@dataclass(frozen=True)
class Migration:
    version: str
    path: str
    data: bytes
    hash: str

    @property
    def sql(self) -> str:
        return self.data.decode("utf-8")


class MigrationSource:
    """The migration folders under MIGRATIONS_DIR."""

    def __init__(self, directory: str, suffix: str = "/postgres.sql"):
        self.directory = directory
        self.suffix = suffix

    @classmethod
    def from_config(cls, config) -> "MigrationSource":
        return cls(config.migrations_dir, config.migrations_file_name_suffix)

    def path_for(self, vsn: str) -> str:
        validate_version(vsn)
        # The suffix is appended to the name, not joined: "/postgres.sql"
        # selects a file inside the folder, ".sql" a file beside it.
        return os.path.join(self.directory, vsn + self.suffix)

    def load(self, vsn: str) -> Migration:
        """Read and check migration `vsn`; nothing is sent to any database here."""
        path = self.path_for(vsn)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise VersionNotFound(f"no migration file {path}", vsn) from None
        except OSError as e:
            raise VersionNotFound(f"cannot read migration file {path}: {e.strerror}", vsn) from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidMigrationFile(f"{path} is not valid UTF-8 ({e})", vsn) from None
        if "\x00" in text:
            raise InvalidMigrationFile(f"{path} contains a NUL byte", vsn)
        problem = transaction_control_problem(text)
        if problem:
            raise InvalidMigrationFile(f"{path}: {problem}", vsn)
        if not statements(text):
            raise InvalidMigrationFile(f"{path} contains no SQL statement", vsn)
        return Migration(vsn, path, data, migration_hash(data))

    def versions(self) -> List[str]:
        """Every migration name that has a file, in name (= version) order."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        found = []
        for name in names:
            if VSN_RE.fullmatch(name) and len(name) <= MAX_VSN_LENGTH and os.path.isfile(
                os.path.join(self.directory, name + self.suffix)
            ):
                found.append(name)
        return sorted(found)


# --------------------------------------------------------------------------
# statement scanner: enough of Postgres's lexical rules (quotes, dollar
# quotes, comments, BEGIN ATOMIC bodies) to see where statements start.

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\x80-\uffff][A-Za-z0-9_\x80-\uffff]*)?\$")
_WORD = re.compile(r"[A-Za-z_\x80-\uffff][A-Za-z0-9_$\x80-\uffff]*")


def _tokens(sql: str):
    """Yield ('word', WORD) / ('semi', ';') / ('other', '') tokens, skipping comments and literals."""
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch.isspace():
            i += 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif ch == "'":
            backslash = i > 0 and sql[i - 1] in "eE" and (i < 2 or not (sql[i - 2].isalnum() or sql[i - 2] == "_"))
            i += 1
            while i < n:
                if backslash and sql[i] == "\\":
                    i += 2
                elif sql[i] == "'":
                    if sql.startswith("''", i):
                        i += 2
                    else:
                        i += 1
                        break
                else:
                    i += 1
            yield ("other", "")
        elif ch == '"':
            j = sql.find('"', i + 1)
            while j >= 0 and sql.startswith('""', j):
                j = sql.find('"', j + 2)
            i = n if j < 0 else j + 1
            yield ("other", "")
        elif ch == "$":
            m = _DOLLAR_TAG.match(sql, i)
            if m:
                end = sql.find(m.group(0), m.end())
                i = n if end < 0 else end + len(m.group(0))
            else:
                i += 1
                while i < n and sql[i].isdigit():
                    i += 1
            yield ("other", "")
        elif ch == ";":
            i += 1
            yield ("semi", ";")
        else:
            m = _WORD.match(sql, i)
            if m:
                i = m.end()
                yield ("word", m.group(0).upper())
            else:
                i += 1
                yield ("other", "")


def statements(sql: str) -> List[Tuple[str, ...]]:
    """The leading keywords of each top-level statement (up to 4, stopping at a literal)."""
    result: List[Tuple[str, ...]] = []
    lead: List[str] = []
    lead_open = True  # still collecting the statement's leading words
    started = False
    atomic_depth = 0
    prev = None
    for kind, value in _tokens(sql):
        if kind == "semi":
            if atomic_depth == 0:
                if started:
                    result.append(tuple(lead))
                lead, lead_open, started, prev = [], True, False, None
            continue
        started = True
        if kind != "word":
            lead_open = False
            prev = None
            continue
        if lead_open and len(lead) < 4:
            lead.append(value)
        # A BEGIN ATOMIC ... END function body (PG 14+) holds semicolons that
        # do not end the CREATE statement; psql counts them the same way.
        if prev == "BEGIN" and value == "ATOMIC" and lead[:1] != ["BEGIN"]:
            atomic_depth += 1
        elif atomic_depth and value == "CASE":
            atomic_depth += 1
        elif atomic_depth and value == "END":
            atomic_depth -= 1
        prev = value
    if started:
        result.append(tuple(lead))
    return result


_TX_CONTROL = {"BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT"}


def transaction_control_problem(sql: str) -> Optional[str]:
    """
    Why `sql` cannot run inside Electric's migration transaction, or None.

    The file and its electric.migrations record must commit together, so a
    file that commits or rolls back on its own (or starts a COPY that waits
    for data nobody sends) is refused before it reaches Postgres.
    """
    for words in statements(sql):
        if not words:
            continue
        first = words[0]
        if first in _TX_CONTROL or (first == "PREPARE" and words[1:2] == ("TRANSACTION",)):
            return (
                f"transaction control statement {' '.join(words[:2])!s} is not allowed: "
                "Electric runs each migration and its record in one transaction"
            )
        if first == "COPY" and re.search(r"(?i)\bSTD(IN|OUT)\b", sql):
            return "COPY FROM STDIN / TO STDOUT is not supported in a migration file"
    return None


# --------------------------------------------------------------------------
# applied migrations


def format_applied_at(value: Optional[datetime]) -> Optional[str]:
    """ISO-8601 in UTC with T and Z; fractional seconds as Postgres prints them (trailing zeros cut)."""
    if value is None:  # a row inserted by hand with applied_at NULL
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    value = value.astimezone(timezone.utc)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{value.microsecond:06d}".rstrip("0")
    if frac:
        text += "." + frac
    return text + "Z"


@dataclass(frozen=True)
class AppliedMigration:
    version: str
    hash: str
    applied_at: Optional[datetime]

    def to_json(self, origin: str) -> Dict[str, object]:
        return {
            "applied_at": format_applied_at(self.applied_at),
            "hash": self.hash,
            "origin": origin,
            "vsn": self.version,
        }


@dataclass(frozen=True)
class ApplyResult:
    """A migration committed on one database, with what that database had before it."""

    origin: str
    applied: AppliedMigration
    previous: Optional[AppliedMigration]


def _pg_message(e: Exception) -> str:
    text = getattr(e, "pgerror", None)
    if text:
        return text.strip()
    diag = getattr(e, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    return primary or str(e).strip() or e.__class__.__name__


def _is_connection_error(e: Exception) -> bool:
    """The session broke (server gone, socket closed), as opposed to Postgres rejecting SQL."""
    if isinstance(e, psycopg2.InterfaceError):
        return True
    return isinstance(e, psycopg2.OperationalError) and not getattr(e, "pgcode", None)


class MigrationDatabase:
    """
    One Postgres, reached over a fresh ordinary session per operation.

    A session per operation (not a pooled one) so a migration never shares a
    connection with anything else, and a server restart between migrations
    costs nothing.
    """

    def __init__(self, origin: str, dsn: str, connect_timeout: float = 10.0,
                 lock_timeout_ms: int = 30000, reactor=None):
        self.origin = origin
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self.lock_timeout_ms = lock_timeout_ms
        if reactor is None:
            from twisted.internet import reactor  # noqa: F811 - default reactor on demand
        self.reactor = reactor

    @defer.inlineCallbacks
    def _connect(self):
        conn = Connection(reactor=self.reactor)
        d = conn.connect(self.dsn)
        d.addTimeout(self.connect_timeout, self.reactor)
        try:
            yield d
        except defer.TimeoutError:
            self._close(conn)
            raise DatabaseUnavailable(
                f"cannot connect to {self.origin}: no answer within {self.connect_timeout:g}s",
                origin=self.origin,
            ) from None
        except psycopg2.Error as e:
            self._close(conn)
            raise DatabaseUnavailable(f"cannot connect to {self.origin}: {_pg_message(e)}",
                                      origin=self.origin) from None
        return conn

    @staticmethod
    def _close(conn) -> None:
        try:
            if getattr(conn, "_connection", None) is not None:
                conn.close()
        except Exception:  # closing a half-open connection must never mask the real error
            pass

    @defer.inlineCallbacks
    def applied(self):
        """Every recorded migration, newest first ([] if the table does not exist yet)."""
        conn = yield self._connect()
        try:
            exists = yield conn.runQuery(TABLE_EXISTS_SQL)
            if not exists or not exists[0][0]:
                return []
            rows = yield conn.runQuery(ALL_SQL)
        except psycopg2.Error as e:
            if _is_connection_error(e):
                raise DatabaseUnavailable(f"{self.origin}: {_pg_message(e)}", origin=self.origin) from None
            raise MigrationSQLError(f"{self.origin}: reading electric.migrations failed: {_pg_message(e)}",
                                    origin=self.origin, sqlstate=getattr(e, "pgcode", None)) from None
        finally:
            self._close(conn)
        return [AppliedMigration(v, h, t) for (v, h, t) in rows]

    @defer.inlineCallbacks
    def latest(self):
        rows = yield self.applied()
        return rows[0] if rows else None

    @defer.inlineCallbacks
    def apply(self, migration: Migration):
        """
        Run `migration` and record it, in one transaction; ApplyResult or MigrationError.

        On any error the transaction is rolled back (or the session dropped),
        so the database is exactly as before.
        """
        vsn = migration.version
        conn = yield self._connect()
        in_tx = False
        step = "preparing electric.migrations"
        try:
            yield conn.runOperation("BEGIN")
            in_tx = True
            yield conn.runOperation(f"SET LOCAL lock_timeout = {int(self.lock_timeout_ms)}")
            yield conn.runOperation(ENSURE_TABLE_SQL)
            yield conn.runOperation(LOCK_TABLE_SQL)
            (electric_on_path, path), = yield conn.runQuery(SEARCH_PATH_SQL)
            if electric_on_path:
                yield conn.runOperation(f"SET LOCAL search_path TO {path}")
            step = "looking up the version"
            rows = yield conn.runQuery(LOOKUP_SQL, (vsn,))
            if rows:
                recorded_hash = rows[0][1]
                if recorded_hash == migration.hash:
                    raise AlreadyMigrated(
                        f"migration {vsn} is already applied to {self.origin}", vsn, self.origin)
                raise AlreadyMigratedBadHash(
                    f"migration {vsn} is already applied to {self.origin} with a different hash "
                    f"(recorded {recorded_hash}, file {migration.hash})", vsn, self.origin)
            latest = yield conn.runQuery(LATEST_SQL)
            previous = AppliedMigration(*latest[0]) if latest else None
            step = "running the migration"
            # No parameters: psycopg2 sends the text untouched (a '%' in the
            # file stays a '%') as one simple Query, however many statements.
            yield conn.runOperation(migration.sql)
            if conn.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_INTRANS:
                in_tx = False
                raise InvalidMigrationFile(
                    f"migration {vsn} ended Electric's transaction on {self.origin} by itself, so "
                    "whatever it ran before that is committed without a record in electric.migrations; "
                    "a migration must not contain COMMIT/ROLLBACK", vsn, self.origin)
            step = "recording the migration"
            inserted = yield conn.runQuery(INSERT_SQL, (vsn, migration.hash))
            step = "committing"
            yield conn.runOperation("COMMIT")
            in_tx = False
        except MigrationError:
            if in_tx:
                yield self._rollback(conn)
            raise
        except psycopg2.Error as e:
            if in_tx and not _is_connection_error(e):
                yield self._rollback(conn)
            if _is_connection_error(e):
                if step == "committing":
                    outcome = "check electric.migrations there to see whether it committed"
                else:
                    outcome = "nothing was committed"
                raise DatabaseUnavailable(
                    f"connection to {self.origin} lost while {step} for migration {vsn}: "
                    f"{_pg_message(e)}; {outcome}", vsn, self.origin) from None
            raise MigrationSQLError(
                f"migration {vsn} failed on {self.origin} while {step} and was rolled back: "
                f"{_pg_message(e)}", vsn, self.origin, sqlstate=getattr(e, "pgcode", None)) from None
        finally:
            self._close(conn)
        applied = AppliedMigration(*inserted[0])
        log.info("applied migration {vsn} (hash {hash}) to {connector}",
                 vsn=vsn, hash=migration.hash, connector=self.origin)
        return ApplyResult(self.origin, applied, previous)

    @staticmethod
    @defer.inlineCallbacks
    def _rollback(conn):
        try:
            yield conn.runOperation("ROLLBACK")
        except Exception:
            # The session is closed right after; Postgres rolls back on disconnect.
            pass
