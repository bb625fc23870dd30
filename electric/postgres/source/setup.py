"""
What Electric sets up in each Postgres, and what it reads from its catalog.

Everything here runs over an ordinary SQL session (txpostgres, which is
always autocommit) and is idempotent: a restart, a second Electric pointed at
the same database or a changed configuration re-runs it and converges to the
same state instead of failing on "already exists".

The steps (postgres-inbound.md section 3, with this project's departures):

* ``electric`` schema and ``electric.migrations`` table;
* the publication ``FOR ALL TABLES`` and the logical slot Electric reads;
* catalog introspection into `Table`s, deciding which tables Electric can
  carry (a primary key, only built-in column types) and why not the others.
  Every table of the publication is a user table, whatever its schema
  (``electric`` included), except Electric's own bookkeeping tables
  (`electric.schema.BOOKKEEPING_TABLES`);
* an upsert trigger on every carried table, enabled only for replica
  sessions, so a stock Postgres subscriber applies Electric's INSERTs of
  rows it already has as UPDATEs (departure 1), race-free against local
  writers of the same key;
* the subscription back to Electric's port 5433, created disabled and
  corrected when its connection string or publication is stale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import psycopg2
from twisted.internet import defer
from twisted.logger import Logger

from electric.config import Config, Connector
from electric.postgres.protocol import types
from electric.postgres.protocol.lsn import parse_lsn
from electric.postgres.sql import Connection, error_text
from electric.schema import ELECTRIC_SCHEMA, Column, Table, is_bookkeeping

log = Logger(namespace="electric.postgres.source.setup")

TRIGGER_NAME = "electric_upsert"

DUPLICATE_OBJECT = "42710"

_told_search_path = set()


class SetupError(Exception):
    """A setup step failed; the message says which and why."""


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    # standard_conforming_strings is on in every supported Postgres.
    return "'" + value.replace("'", "''") + "'"


def qualified(schema: str, name: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def conninfo_value(value) -> str:
    """A libpq conninfo value, quoted only when it has to be."""
    text = str(value)
    if text and not any(ch.isspace() or ch in "'\\=" for ch in text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def subscription_conninfo(config: Config, connector: Connector, user: str, password: str) -> str:
    """
    The conninfo a connector's subscription uses to reach Electric's port 5433.

    With TLS on port 5433 the subscription asks for it: ``sslmode=verify-full``
    against POSTGRES_REPLICATION_SSLROOTCERT (a path on the Postgres server's
    machine: libpq runs there, in the apply worker) when one is configured,
    else ``sslmode=require``.  Without TLS, ``sslmode=disable`` as before.
    """
    timeout_s = max(1, connector.connect_timeout_ms // 1000)
    if config.postgres_replication_tls is None:
        tls = [("sslmode", "disable")]
    elif config.postgres_replication_sslrootcert:
        tls = [("sslmode", "verify-full"), ("sslrootcert", config.postgres_replication_sslrootcert)]
    else:
        tls = [("sslmode", "require")]
    pairs = [
        ("host", config.electric_host),
        ("port", config.postgres_replication_port),
        ("dbname", connector.name),
        ("user", user),
        ("password", password),
        *tls,
        ("connect_timeout", timeout_s),
    ]
    return " ".join(f"{k}={conninfo_value(v)}" for k, v in pairs)


@dataclass(frozen=True)
class SkippedTable:
    schema: str
    name: str
    reason: str


@dataclass
class Introspection:
    """The catalog's view of the publication: carried tables and the rest."""

    tables: List[Table] = field(default_factory=list)
    oids: Dict[Tuple[str, str], int] = field(default_factory=dict)
    skipped: List[SkippedTable] = field(default_factory=list)


# -- catalog queries --------------------------------------------------------

_TABLES_SQL = """
SELECT DISTINCT ON (c.oid) c.oid, n.nspname, c.relname, c.relreplident
FROM pg_catalog.pg_publication_tables pt
JOIN pg_catalog.pg_namespace n ON n.nspname = pt.schemaname
JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
WHERE pt.pubname = %s
ORDER BY c.oid
"""

_ONE_TABLE_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relreplident,
       EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables pt
               WHERE pt.pubname = %s AND pt.schemaname = n.nspname AND pt.tablename = c.relname)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
"""

# Generated columns are not published by pgoutput, so they are not ours either.
_COLUMNS_SQL = """
SELECT a.attrelid, a.attname, a.atttypid, a.atttypmod, t.typname,
       a.attnum = ANY (i.indkey) AS in_identity, a.attnotnull
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_catalog.pg_index i ON i.indexrelid = pg_catalog.pg_get_replica_identity_index(a.attrelid)
WHERE a.attrelid = ANY (%s::oid[]) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
ORDER BY a.attrelid, a.attnum
"""

# Key columns in index order (not attnum order), as the PK declares them.
_PRIMARY_KEYS_SQL = """
SELECT i.indrelid, a.attname
FROM pg_catalog.pg_index i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indisprimary AND i.indrelid = ANY (%s::oid[])
ORDER BY i.indrelid, k.ord
"""


def build_tables(table_rows, column_rows, pk_rows) -> Introspection:
    """
    Pure: turn the three catalog results into carried and skipped tables.
    `table_rows`: (oid, schema, name, relreplident); `column_rows`: (relid,
    name, type oid, typmod, typname, in_identity[, attnotnull]); `pk_rows`:
    (relid, name).
    """
    columns: Dict[int, List[tuple]] = {}
    for row in column_rows:
        columns.setdefault(int(row[0]), []).append(row)
    pks: Dict[int, List[str]] = {}
    for relid, name in pk_rows:
        pks.setdefault(int(relid), []).append(name)
    result = Introspection()
    for oid, schema, name, ident in table_rows:
        oid = int(oid)
        ident = ident if isinstance(ident, str) else ident.decode()
        cols = columns.get(oid, [])
        if not cols:
            result.skipped.append(SkippedTable(schema, name, "table has no columns (generated columns are not replicated)"))
            continue
        key = pks.get(oid)
        if not key:
            result.skipped.append(SkippedTable(schema, name, "table has no primary key"))
            continue
        bad = []
        out: List[Column] = []
        for _relid, colname, typoid, typmod, typname, in_identity, *rest in cols:
            pgtype = types.find_by_oid(int(typoid))
            if pgtype is None:
                bad.append(f'column "{colname}" has type {typname} (oid {typoid}), which is not a built-in type')
                continue
            if ident == "f":
                part = None
            elif ident == "n":
                part = False
            else:
                part = bool(in_identity)
            out.append(Column(colname, pgtype.name, pgtype.oid, int(typmod), part, bool(rest and rest[0])))
        if bad:
            result.skipped.append(SkippedTable(schema, name, "; ".join(bad)))
            continue
        table = Table(schema, name, tuple(out), tuple(key), ident)
        result.tables.append(table)
        result.oids[(schema, name)] = oid
    return result


# -- the upsert trigger -----------------------------------------------------
#
# Electric sends every new or changed row to a subscriber as an INSERT of the
# whole row (departure 1); a BEFORE INSERT trigger, enabled only for replica
# sessions (the apply worker is one), turns an INSERT of a key the table
# holds into an UPDATE.  Local sessions never fire it, so applications keep
# their normal unique-violation errors.
#
# The trigger writes the row itself with INSERT ... ON CONFLICT (key) DO
# UPDATE and returns NULL, so the apply worker's own insert is skipped.  ON
# CONFLICT is what makes it race-free: a row of the same key that a local
# transaction is inserting (uncommitted) or committed an instant ago (the
# commit is in the WAL, and so already on its way back from Electric, just
# before other sessions see it) is waited for and then updated, where a
# probe-then-insert would find nothing and fail with a duplicate key error,
# crashing the apply worker.  Its own INSERT fires the trigger again, one
# level deeper (pg_trigger_depth() = 2); that call lets the row through.


@dataclass(frozen=True)
class TriggerFacts:
    """
    What the trigger body needs beyond a `Table` (read from the catalog when
    the triggers are installed).

    `deferrable_key`: the primary key is DEFERRABLE, which ON CONFLICT cannot
    use as an arbiter; such a table keeps the probe-then-insert body (correct
    except under the race above).  `always_identity`: columns GENERATED
    ALWAYS AS IDENTITY, which SQL may insert (OVERRIDING SYSTEM VALUE) but
    never update to a given value.
    """

    deferrable_key: bool = False
    always_identity: Tuple[str, ...] = ()


def upsert_function_name(oid: int) -> str:
    return f"upsert_{oid}"


def upsert_function_body(table: Table, facts: TriggerFacts = TriggerFacts()) -> str:
    """
    plpgsql body: an INSERT of a key that exists becomes an UPDATE of that
    row.  Generated columns are not in `table.columns`: Postgres computes
    them.  A non-key GENERATED ALWAYS identity column cannot be updated, so
    a row whose value there differs is deleted and inserted again (a replica
    session fires no foreign-key actions).  Column names win over plpgsql's
    own variables (a column may be called "found").

    The apply worker's insert has already run the table's other replica-
    enabled BEFORE INSERT triggers that sort before this one; the inner
    INSERT runs them again.
    """
    target = qualified(table.schema, table.name)
    keys = list(table.primary_key)
    key_match = " AND ".join(f"{quote_ident(k)} = NEW.{quote_ident(k)}" for k in keys)
    identity = [c.name for c in table.columns if c.name in facts.always_identity and c.name not in keys]
    settable = [c.name for c in table.columns if c.name not in keys and c.name not in identity]
    if table.replica_identity == "n":
        # A published table without a replica identity refuses every UPDATE
        # and DELETE (even one that matches no row): such a table can only
        # be inserted into, and a row it holds keeps its values.
        identity, settable = [], []
    if facts.deferrable_key:
        if settable:
            sets = ", ".join(f"{quote_ident(c)} = NEW.{quote_ident(c)}" for c in settable)
            probe = f"UPDATE {target} SET {sets} WHERE {key_match};"
        else:
            probe = f"PERFORM 1 FROM {target} WHERE {key_match};"
        return (
            "\n#variable_conflict use_column\n"
            "BEGIN\n"
            f"  {probe}\n"
            "  IF FOUND THEN\n"
            "    RETURN NULL;\n"
            "  END IF;\n"
            "  RETURN NEW;\n"
            "END;\n"
        )
    names = ", ".join(quote_ident(c.name) for c in table.columns)
    values = ", ".join(f"NEW.{quote_ident(c.name)}" for c in table.columns)
    if settable:
        action = "DO UPDATE SET " + ", ".join(f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in settable)
    else:
        action = "DO NOTHING"
    lines = [
        "",
        "#variable_conflict use_column",
        "BEGIN",
        "  IF pg_catalog.pg_trigger_depth() > 1 THEN",
        "    RETURN NEW;",
        "  END IF;",
    ]
    if identity:
        differs = " OR ".join(f"{quote_ident(c)} IS DISTINCT FROM NEW.{quote_ident(c)}" for c in identity)
        lines.append(f"  DELETE FROM {target} WHERE {key_match} AND ({differs});")
    lines += [
        f"  INSERT INTO {target} ({names}) OVERRIDING SYSTEM VALUE VALUES ({values})",
        f"    ON CONFLICT ({', '.join(quote_ident(k) for k in keys)}) {action};",
        "  RETURN NULL;",
        "END;",
        "",
    ]
    return "\n".join(lines)


def _dollar_quote(body: str) -> str:
    tag = "$electric$"
    n = 0
    while tag in body:
        n += 1
        tag = f"$electric{n}$"
    return f"{tag}{body}{tag}"


def upsert_trigger_sql(table: Table, oid: int, facts: TriggerFacts = TriggerFacts()) -> List[str]:
    fn = f"{quote_ident(ELECTRIC_SCHEMA)}.{quote_ident(upsert_function_name(oid))}"
    target = qualified(table.schema, table.name)
    return [
        f"CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS "
        + _dollar_quote(upsert_function_body(table, facts)),
        f"CREATE OR REPLACE TRIGGER {quote_ident(TRIGGER_NAME)} BEFORE INSERT ON {target} "
        f"FOR EACH ROW EXECUTE FUNCTION {fn}()",
        f"ALTER TABLE {target} ENABLE REPLICA TRIGGER {quote_ident(TRIGGER_NAME)}",
    ]


_TRIGGER_STATE_SQL = """
SELECT t.tgrelid, t.tgenabled, p.prosrc, p.proname, pn.nspname
FROM pg_catalog.pg_trigger t
JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
WHERE t.tgname = %s AND t.tgrelid = ANY (%s::oid[])
"""

# Per table: a DEFERRABLE primary key (pg_index.indimmediate false), and the
# GENERATED ALWAYS identity columns.
_TRIGGER_FACTS_SQL = """
SELECT c.oid,
       EXISTS (SELECT 1 FROM pg_catalog.pg_index i
               WHERE i.indrelid = c.oid AND i.indisprimary AND NOT i.indimmediate),
       ARRAY (SELECT a.attname::text FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attidentity = 'a'
              ORDER BY a.attnum)
FROM pg_catalog.pg_class c
WHERE c.oid = ANY (%s::oid[])
"""


# -- the session ------------------------------------------------------------


class SetupSession:
    """
    One SQL session to one connector's Postgres.  Open it with `open`, call
    the steps, then `close`; every method returns a Deferred.
    """

    def __init__(self, connector: Connector, reactor=None):
        self.connector = connector
        self._reactor = reactor
        self._conn: Optional[Connection] = None

    @defer.inlineCallbacks
    def open(self):
        conn = Connection(reactor=self._reactor)
        try:
            yield conn.connect(self.connector.dsn())
        except psycopg2.Error as e:
            try:
                conn.close()
            except Exception:
                pass
            raise SetupError(f"cannot connect to {self.connector.host}:{self.connector.port}: {error_text(e)} "
                             f"(sslmode={self.connector.tls.mode})") from e
        self._conn = conn
        return self

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already closed by the server
                pass

    @property
    def connection(self) -> Optional[Connection]:
        """The txpostgres connection (the importer reads a snapshot through it)."""
        return self._conn

    def query(self, sql: str, args=None):
        return self._conn.runQuery(sql, args)

    def execute(self, sql: str, args=None):
        return self._conn.runOperation(sql, args)

    @defer.inlineCallbacks
    def _tolerate_duplicate(self, sql: str, args=None):
        try:
            yield self.execute(sql, args)
        except psycopg2.Error as e:
            if e.pgcode != DUPLICATE_OBJECT:
                raise

    # -- steps --

    @defer.inlineCallbacks
    def ensure_migrations_table(self):
        yield self._tolerate_duplicate(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(ELECTRIC_SCHEMA)}")
        yield self._tolerate_duplicate(
            f"CREATE TABLE IF NOT EXISTS {quote_ident(ELECTRIC_SCHEMA)}.migrations ("
            " id serial PRIMARY KEY,"
            " version varchar(64) NOT NULL UNIQUE,"
            " hash varchar(64) NOT NULL,"
            " applied_at timestamptz DEFAULT now())"
        )

    @defer.inlineCallbacks
    def note_search_path(self):
        """
        A role named like the schema (the dev set-up's "electric") resolves
        "$user" in the default search_path to Electric's schema, so its
        unqualified CREATE TABLEs land there.  They replicate like any other
        table; said once because a table is matched across databases by
        schema and name, so it must land in the same schema in each of them.
        """
        rows = yield self.query("SELECT (pg_catalog.current_schemas(false))[1], current_user")
        first, user = rows[0] if rows else (None, None)
        if first == ELECTRIC_SCHEMA and self.connector.name not in _told_search_path:
            _told_search_path.add(self.connector.name)
            log.info(
                'role "{user}" has schema "electric" first in its search_path, so its '
                "unqualified CREATE TABLEs land in schema electric; they replicate like tables of any schema "
                "(a table must be in the same schema in every database)",
                connector=self.connector.name, user=user,
            )
        return first

    @defer.inlineCallbacks
    def ensure_publication(self, publication: str):
        rows = yield self.query("SELECT puballtables FROM pg_catalog.pg_publication WHERE pubname = %s", (publication,))
        if rows and not rows[0][0]:
            log.warn(
                'publication "{publication}" exists but is not FOR ALL TABLES; using it as it is',
                connector=self.connector.name, publication=publication,
            )
        if not rows:
            yield self._tolerate_duplicate(f"CREATE PUBLICATION {quote_ident(publication)} FOR ALL TABLES")

    @defer.inlineCallbacks
    def find_slot(self, slot: str):
        """
        The logical slot's confirmed flush LSN (int, 0 if unknown), or None
        when there is no such slot.  A slot of that name for another plugin
        or database is an error.
        """
        rows = yield self.query(
            "SELECT plugin, database, confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots WHERE slot_name = %s",
            (slot,),
        )
        if not rows:
            return None
        return self._check_slot(slot, rows[0])

    def _check_slot(self, slot: str, row) -> int:
        plugin, database, confirmed = row
        if plugin != "pgoutput" or database != self.connector.database:
            raise SetupError(
                f'replication slot "{slot}" exists for plugin {plugin!r} in database {database!r}, '
                f"not pgoutput in {self.connector.database!r}; drop it or set POSTGRES_SLOT to another name"
            )
        return parse_lsn(confirmed) if confirmed else 0

    @defer.inlineCallbacks
    def drop_slot(self, slot: str):
        """
        Drop the slot (an import that must be redone needs a new snapshot,
        and so a new slot).  A slot in use by a live connection is not
        taken from it: that fails, and the caller retries later.
        """
        rows = yield self.query(
            "SELECT active_pid FROM pg_catalog.pg_replication_slots WHERE slot_name = %s", (slot,))
        if not rows:
            return False
        if rows[0][0] is not None:
            raise SetupError(f'replication slot "{slot}" is in use by process {rows[0][0]}; '
                             f"cannot redo the interrupted import until it is free")
        yield self.query("SELECT pg_catalog.pg_drop_replication_slot(%s)", (slot,))
        return True

    @defer.inlineCallbacks
    def ensure_slot(self, slot: str):
        """Create the logical slot if missing; returns its confirmed flush LSN (int, 0 if unknown)."""
        rows = yield self.query(
            "SELECT plugin, database, confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots WHERE slot_name = %s",
            (slot,),
        )
        if not rows:
            try:
                yield self.query("SELECT pg_catalog.pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
            except psycopg2.Error as e:
                if e.pgcode != DUPLICATE_OBJECT:
                    raise
            rows = yield self.query(
                "SELECT plugin, database, confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots WHERE slot_name = %s",
                (slot,),
            )
        return self._check_slot(slot, rows[0])

    @defer.inlineCallbacks
    def introspect(self, publication: str):
        """Every table of the publication except Electric's bookkeeping tables."""
        table_rows = yield self.query(_TABLES_SQL, (publication,))
        table_rows = [r for r in table_rows if not is_bookkeeping(r[1], r[2])]
        result = yield self._describe(table_rows)
        return result

    @defer.inlineCallbacks
    def introspect_table(self, publication: str, schema: str, name: str):
        """
        One table: carried, or skipped with the reason (also when it exists
        but is not published); empty when it does not exist (any more) or is
        one of Electric's bookkeeping tables.
        """
        if is_bookkeeping(schema, name):
            return Introspection()
        rows = yield self.query(_ONE_TABLE_SQL, (publication, schema, name))
        if not rows:
            return Introspection()
        published = [r[:4] for r in rows if r[4]]
        if not published:
            return Introspection(skipped=[SkippedTable(schema, name, f'table is not in publication "{publication}"')])
        result = yield self._describe(published)
        return result

    @defer.inlineCallbacks
    def _describe(self, table_rows):
        oids = [int(r[0]) for r in table_rows]
        if not oids:
            return Introspection()
        column_rows = yield self.query(_COLUMNS_SQL, (oids,))
        pk_rows = yield self.query(_PRIMARY_KEYS_SQL, (oids,))
        return build_tables(table_rows, column_rows, pk_rows)

    @defer.inlineCallbacks
    def install_upsert_triggers(self, tables: Iterable[Table], oids: Dict[Tuple[str, str], int]):
        """(Re)install the replica-only upsert trigger where it is missing or stale."""
        tables = list(tables)
        if not tables:
            return 0
        yield self._tolerate_duplicate(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(ELECTRIC_SCHEMA)}")
        wanted = {oids[t.qualified]: t for t in tables}
        rows = yield self.query(_TRIGGER_STATE_SQL, (TRIGGER_NAME, list(wanted)))
        current = {int(r[0]): r for r in rows}
        rows = yield self.query(_TRIGGER_FACTS_SQL, (list(wanted),))
        facts = {int(r[0]): TriggerFacts(bool(r[1]), tuple(r[2] or ())) for r in rows}
        installed = 0
        for oid, table in wanted.items():
            have = current.get(oid)
            table_facts = facts.get(oid, TriggerFacts())
            # An installation from an older Electric has another body: replaced.
            if (
                have is not None
                and have[1] == "R"
                and have[2] == upsert_function_body(table, table_facts)
                and have[3] == upsert_function_name(oid)
                and have[4] == ELECTRIC_SCHEMA
            ):
                continue
            for sql in upsert_trigger_sql(table, oid, table_facts):
                yield self.execute(sql)
            installed += 1
        return installed

    @defer.inlineCallbacks
    def ensure_subscription(self, name: str, publication: str, conninfo: str):
        """
        Create the (disabled) subscription, or correct a stale one; returns its oid.
        CREATE SUBSCRIPTION and ALTER ... CONNECTION do not contact Electric.
        """
        sql = (
            "SELECT s.oid, s.subconninfo, s.subpublications FROM pg_catalog.pg_subscription s "
            "JOIN pg_catalog.pg_database d ON d.oid = s.subdbid "
            "WHERE s.subname = %s AND d.datname = current_database()"
        )
        rows = yield self.query(sql, (name,))
        if not rows:
            yield self._tolerate_duplicate(
                f"CREATE SUBSCRIPTION {quote_ident(name)} CONNECTION {quote_literal(conninfo)} "
                f"PUBLICATION {quote_ident(publication)} WITH (connect = false)"
            )
            rows = yield self.query(sql, (name,))
        oid, current_conninfo, publications = rows[0]
        if current_conninfo != conninfo:
            log.info("subscription {subscription} had a stale connection string; correcting it",
                     connector=name, subscription=name)
            yield self.execute(f"ALTER SUBSCRIPTION {quote_ident(name)} CONNECTION {quote_literal(conninfo)}")
        if list(publications or []) != [publication]:
            log.info("subscription {subscription} had publications {old}; setting {new}",
                     connector=name, subscription=name, old=publications, new=publication)
            yield self.execute(
                f"ALTER SUBSCRIPTION {quote_ident(name)} SET PUBLICATION {quote_ident(publication)} WITH (refresh = false)"
            )
        return int(oid)

    @defer.inlineCallbacks
    def subscription_enabled(self, name: str):
        rows = yield self.query(
            "SELECT s.subenabled FROM pg_catalog.pg_subscription s "
            "JOIN pg_catalog.pg_database d ON d.oid = s.subdbid "
            "WHERE s.subname = %s AND d.datname = current_database()",
            (name,),
        )
        return bool(rows and rows[0][0])

    def enable_subscription(self, name: str):
        return self.execute(f"ALTER SUBSCRIPTION {quote_ident(name)} ENABLE")

    def disable_subscription(self, name: str):
        return self.execute(f"ALTER SUBSCRIPTION {quote_ident(name)} DISABLE")

    @defer.inlineCallbacks
    def subscription_has_tables(self, name: str):
        rows = yield self.query(
            "SELECT count(*) FROM pg_catalog.pg_subscription_rel r "
            "JOIN pg_catalog.pg_subscription s ON s.oid = r.srsubid "
            "WHERE s.subname = %s AND s.subdbid = (SELECT oid FROM pg_catalog.pg_database "
            "WHERE datname = current_database())", (name,))
        return rows[0][0] > 0

    def refresh_subscription(self, name: str, copy_data: bool = True):
        flag = "true" if copy_data else "false"
        return self.execute(f"ALTER SUBSCRIPTION {quote_ident(name)} REFRESH PUBLICATION WITH (copy_data = {flag})")


@dataclass
class SetupResult:
    introspection: Introspection
    subscription_oid: int
    slot_confirmed_lsn: Optional[int]
    """None: the slot does not exist (only with create_slot=False)."""


@defer.inlineCallbacks
def run_setup(config: Config, connector: Connector, credentials, reactor=None, create_slot: bool = True):
    """
    Every idempotent setup step, in order, on one fresh session.  With
    `create_slot` false a missing slot is left for the caller, which creates
    it over the replication protocol to get its exported snapshot
    (`electric.postgres.source.importer`).
    """
    session = SetupSession(connector, reactor)
    yield session.open()
    try:
        yield session.ensure_migrations_table()
        yield session.note_search_path()
        yield session.ensure_publication(config.publication)
        if create_slot:
            confirmed = yield session.ensure_slot(config.slot_for(connector))
        else:
            confirmed = yield session.find_slot(config.slot_for(connector))
        found = yield session.introspect(config.publication)
        yield session.install_upsert_triggers(found.tables, found.oids)
        user, password = credentials.for_connector(connector.name)
        conninfo = subscription_conninfo(config, connector, user, password)
        suboid = yield session.ensure_subscription(connector.name, config.publication, conninfo)
    finally:
        session.close()
    return SetupResult(found, suboid, confirmed)


def apply_to_registry(registry, origin: str, tables: Sequence[Table]) -> List[Table]:
    """Register `tables` and record them as `origin`'s; returns the registered copies."""
    registered = [registry.register(t) for t in tables]
    registry.set_database_tables(origin, tables)
    return registered
