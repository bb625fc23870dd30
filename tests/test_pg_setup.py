"""
Per-connector setup against a real Postgres 15: publication, slot,
introspection, upsert triggers, subscription (created, corrected, enabled).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile

from twisted.internet import defer
from twisted.trial import unittest

from electric.config import Config
from electric.postgres.source import setup
from electric.postgres.publisher.credentials import SubscriberCredentials
from electric.schema import SchemaRegistry
from tests.pgcluster import PASSWORD, USER, shared_cluster

# One cluster for every connector test module; each test has its own
# database and slot on it.
CLUSTER_KEY = "pg-inbound"
_counter = itertools.count(1)


class ScratchDatabase:
    """A fresh database (and slot name) of the shared cluster for one test."""

    def __init__(self, cluster_key: str = CLUSTER_KEY):
        self.cluster = shared_cluster(cluster_key)
        n = next(_counter) + os.getpid() % 1000 * 100
        self.name = f"setup_{n}"
        self.slot = f"setup_slot_{n}"
        self.port = self.cluster.port
        self.cluster.psql(f"CREATE DATABASE {self.name}", dbname="postgres")

    @property
    def url(self) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{self.name}"

    def psql(self, sql: str, check: bool = True) -> str:
        return self.cluster.psql(sql, dbname=self.name, check=check)

    def drop(self) -> None:
        # A database holding subscriptions cannot be dropped; detach them from
        # their (remote) slots first.
        self.psql(
            "DO $$DECLARE s record; BEGIN FOR s IN SELECT subname FROM pg_subscription "
            "WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) LOOP "
            "EXECUTE format('ALTER SUBSCRIPTION %I DISABLE', s.subname); "
            "EXECUTE format('ALTER SUBSCRIPTION %I SET (slot_name = NONE)', s.subname); "
            "EXECUTE format('DROP SUBSCRIPTION %I', s.subname); END LOOP; END$$",
            check=False,
        )
        self.cluster.psql(
            f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{self.name}'",
            dbname="postgres", check=False)
        self.cluster.psql(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)", dbname="postgres", check=False)


def make_config(pg: ScratchDatabase, name="postgres_1", **overrides) -> Config:
    env = {
        "CONNECTORS": f"{name}={pg.url}",
        "POSTGRES_PUBLICATION": overrides.pop("publication", "all_tables"),
        "POSTGRES_SLOT": overrides.pop("slot", pg.slot),
        "ELECTRIC_HOST": overrides.pop("electric_host", "127.0.0.1"),
        "POSTGRES_REPLICATION_PORT": str(overrides.pop("port", 5433)),
    }
    env.update(overrides)
    return Config.from_environ(env)


class PureTests(unittest.TestCase):
    def test_quote_ident(self):
        self.assertEqual(setup.quote_ident('we"ird'), '"we""ird"')
        self.assertEqual(setup.quote_literal("it's"), "'it''s'")

    def test_conninfo(self):
        pg_url = "postgresql://u:p@localhost:5432/db?timeout=7000"
        config = Config.from_environ({"CONNECTORS": f"pg_a={pg_url}", "ELECTRIC_HOST": "electric.local",
                                      "POSTGRES_REPLICATION_PORT": "6543"})
        info = setup.subscription_conninfo(config, config.connector("pg_a"), "pg_a", "s3cret")
        self.assertEqual(
            info,
            "host=electric.local port=6543 dbname=pg_a user=pg_a password=s3cret sslmode=disable connect_timeout=7",
        )
        self.assertEqual(setup.conninfo_value("a b'c"), "'a b\\'c'")

    def test_build_tables_skips_with_reasons(self):
        tables = [(1, "public", "ok", "d"), (2, "public", "nokey", "d"), (3, "public", "enum", "d"),
                  (4, "public", "full", "f")]
        cols = [
            (1, "id", 23, -1, "int4", True), (1, "v", 1043, 24, "varchar", False),
            (2, "v", 25, -1, "text", None),
            (3, "id", 23, -1, "int4", True), (3, "mood", 16999, -1, "mood", False),
            (4, "a", 25, -1, "text", None), (4, "b", 1007, -1, "_int4", None),
        ]
        pks = [(1, "id"), (3, "id"), (4, "a")]
        out = setup.build_tables(tables, cols, pks)
        self.assertEqual([t.name for t in out.tables], ["ok", "full"])
        ok = out.tables[0]
        self.assertEqual([(c.name, c.type_name, c.type_modifier, c.part_of_identity) for c in ok.columns],
                         [("id", "int4", -1, True), ("v", "varchar", 24, False)])
        full = out.tables[1]
        self.assertEqual(full.replica_identity, "f")
        self.assertEqual([c.part_of_identity for c in full.columns], [None, None])
        self.assertEqual(full.columns[1].type_name, "_int4")
        reasons = {s.name: s.reason for s in out.skipped}
        self.assertEqual(reasons["nokey"], "table has no primary key")
        self.assertIn('column "mood" has type mood (oid 16999)', reasons["enum"])


class SetupTests(unittest.TestCase):
    def setUp(self):
        self.pg = ScratchDatabase()
        self.addCleanup(self.pg.drop)
        self.datadir = tempfile.mkdtemp(prefix="esetup")
        self.addCleanup(shutil.rmtree, self.datadir, True)

    def creds(self, config):
        creds = SubscriberCredentials(self.datadir, [c.name for c in config.connectors])
        creds.startService()
        return creds

    @defer.inlineCallbacks
    def test_setup_is_idempotent_and_introspects(self):
        pg = self.pg
        pg.psql(
            "CREATE TABLE items (id text PRIMARY KEY, content varchar(20), n int4, tags text[],"
            " g int GENERATED ALWAYS AS (n * 2) STORED);"
            "CREATE TABLE composite (a int, b text, c numeric(10,2), PRIMARY KEY (b, a));"
            "ALTER TABLE composite REPLICA IDENTITY FULL;"
            "CREATE TABLE nokey (v text);"
            "CREATE TYPE mood AS ENUM ('happy', 'sad');"
            "CREATE TABLE moods (id int PRIMARY KEY, m mood);"
        )
        config = make_config(pg)
        connector = config.connectors[0]
        creds = self.creds(config)
        first = yield setup.run_setup(config, connector, creds)
        second = yield setup.run_setup(config, connector, creds)
        self.assertEqual(first.subscription_oid, second.subscription_oid)
        found = second.introspection
        by_name = {t.name: t for t in found.tables}
        self.assertEqual(sorted(by_name), ["composite", "items"])
        items = by_name["items"]
        self.assertEqual(items.column_names, ("id", "content", "n", "tags"))
        self.assertEqual(items.primary_key, ("id",))
        self.assertEqual(items.column("content").type_modifier, 24)
        self.assertEqual(items.column("tags").type_name, "_text")
        self.assertEqual(by_name["composite"].primary_key, ("b", "a"))
        self.assertEqual(by_name["composite"].replica_identity, "f")
        self.assertEqual(by_name["composite"].column("c").type_modifier, 655366)
        skipped = {s.name: s.reason for s in found.skipped}
        self.assertEqual(sorted(skipped), ["moods", "nokey"])
        self.assertIn("mood", skipped["moods"])
        # electric.migrations exists and is not offered as a replicated table.
        self.assertEqual(pg.psql("SELECT count(*) FROM electric.migrations").strip(), "0")
        self.assertNotIn("migrations", by_name)
        self.assertEqual(pg.psql("SELECT puballtables FROM pg_publication WHERE pubname='all_tables'").strip(), "t")
        self.assertEqual(
            pg.psql(f"SELECT plugin, database FROM pg_replication_slots WHERE slot_name='{pg.slot}'").strip(),
            f"pgoutput|{pg.name}",
        )
        sub = pg.psql("SELECT subenabled, subpublications::text FROM pg_subscription WHERE subname='postgres_1'")
        self.assertEqual(sub.strip(), "f|{all_tables}")
        self.assertEqual(
            pg.psql("SELECT tgenabled FROM pg_trigger WHERE tgname='electric_upsert' ORDER BY tgrelid").split(),
            ["R", "R"],
        )
        registry = SchemaRegistry()
        setup.apply_to_registry(registry, connector.name, found.tables)
        self.assertEqual(registry.get("public", "items").relation_id, 20000 + [t.name for t in found.tables].index("items"))
        self.assertEqual(sorted(t.name for t in registry.database_tables(connector.name)), ["composite", "items"])

    @defer.inlineCallbacks
    def test_introspection_records_not_null(self):
        """Validation of client writes needs each column's NOT NULL flag (primary keys are NOT NULL too)."""
        self.pg.psql("CREATE TABLE strict (id int PRIMARY KEY, must text NOT NULL, may text,"
                     " dflt timestamptz NOT NULL DEFAULT now())")
        config = make_config(self.pg)
        result = yield setup.run_setup(config, config.connectors[0], self.creds(config))
        strict = {t.name: t for t in result.introspection.tables}["strict"]
        self.assertEqual([(c.name, c.not_null) for c in strict.columns],
                         [("id", True), ("must", True), ("may", False), ("dflt", True)])
        registry = SchemaRegistry()
        setup.apply_to_registry(registry, "postgres_1", [strict])
        self.assertEqual([t.column("must").not_null for t in registry.definitions("public", "strict")], [True])
        self.assertEqual(registry.definitions("public", "absent"), [])

    @defer.inlineCallbacks
    def test_stale_subscription_is_corrected(self):
        pg = self.pg
        config = make_config(pg, electric_host="10.0.0.1")
        creds = self.creds(config)
        yield setup.run_setup(config, config.connectors[0], creds)
        info = pg.psql("SELECT subconninfo FROM pg_subscription WHERE subname='postgres_1'").strip()
        self.assertIn("host=10.0.0.1 port=5433 dbname=postgres_1 user=postgres_1 password=", info)
        moved = make_config(pg, electric_host="127.0.0.2", port=6000, publication="other_pub")
        yield setup.run_setup(moved, moved.connectors[0], creds)
        row = pg.psql("SELECT subconninfo, subpublications::text FROM pg_subscription WHERE subname='postgres_1'")
        self.assertIn("host=127.0.0.2 port=6000 ", row)
        self.assertTrue(row.strip().endswith("|{other_pub}"), row)

    @defer.inlineCallbacks
    def test_upsert_trigger_only_in_replica_sessions(self):
        pg = self.pg
        tbl = '"Odd ""name"""'
        pg.psql(f'CREATE TABLE {tbl} (k int, j text, "v x" text, w int, PRIMARY KEY (k, j))')
        config = make_config(pg)
        yield setup.run_setup(config, config.connectors[0], self.creds(config))
        pg.psql(f"INSERT INTO {tbl} VALUES (1, 'a', 'first', 1)")
        # A replica session's conflicting INSERT becomes an UPDATE of the row.
        pg.psql(f"SET session_replication_role = replica; INSERT INTO {tbl} VALUES (1, 'a', 'second', 2);"
                f"INSERT INTO {tbl} VALUES (2, 'b', 'new', 3)")
        self.assertEqual(pg.psql(f'SELECT k, j, "v x", w FROM {tbl} ORDER BY k').split(),
                         ["1|a|second|2", "2|b|new|3"])
        # A local session still gets its unique violation.
        with self.assertRaises(RuntimeError) as cm:
            pg.psql(f"INSERT INTO {tbl} VALUES (1, 'a', 'third', 3)")
        self.assertIn("duplicate key value violates unique constraint", str(cm.exception))
        self.assertEqual(pg.psql(f'SELECT "v x" FROM {tbl} WHERE k=1').strip(), "second")

    @defer.inlineCallbacks
    def test_trigger_follows_new_columns(self):
        pg = self.pg
        pg.psql("CREATE TABLE t (id int PRIMARY KEY, a text)")
        config = make_config(pg)
        creds = self.creds(config)
        yield setup.run_setup(config, config.connectors[0], creds)
        pg.psql("ALTER TABLE t ADD COLUMN b text; INSERT INTO t VALUES (1, 'x', 'y')")
        session = setup.SetupSession(config.connectors[0])
        yield session.open()
        try:
            found = yield session.introspect_table(config.publication, "public", "t")
            self.assertEqual(found.tables[0].column_names, ("id", "a", "b"))
            n = yield session.install_upsert_triggers(found.tables, found.oids)
            self.assertEqual(n, 1)
            n = yield session.install_upsert_triggers(found.tables, found.oids)
            self.assertEqual(n, 0)
        finally:
            session.close()
        pg.psql("SET session_replication_role = replica; INSERT INTO t VALUES (1, 'x2', 'y2')")
        self.assertEqual(pg.psql("SELECT a, b FROM t").strip(), "x2|y2")

    @defer.inlineCallbacks
    def test_search_path_note(self):
        config = make_config(self.pg, name="pg_note")
        session = setup.SetupSession(config.connectors[0])
        yield session.open()
        try:
            yield session.ensure_migrations_table()
            first = yield session.note_search_path()
        finally:
            session.close()
        # The test clusters' role is "electric", like the dev set-up's.
        self.assertEqual(first, "electric")
        self.assertIn("pg_note", setup._told_search_path)

    @defer.inlineCallbacks
    def test_tables_in_schema_electric_are_user_tables(self):
        """
        Role "electric" creates unqualified tables in schema electric once it
        exists; they are carried like any other.  Only Electric's bookkeeping
        tables are not, and they are not reported as skipped either.
        """
        pg = self.pg
        config = make_config(pg)
        creds = self.creds(config)
        yield setup.run_setup(config, config.connectors[0], creds)
        pg.psql("CREATE TABLE things (id int PRIMARY KEY, v text);"
                "CREATE TABLE electric.keyless (v text);"
                "CREATE TABLE electric.meta (key text PRIMARY KEY, value text);"
                "CREATE TABLE electric.empty ();")
        self.assertEqual(pg.psql("SELECT to_regclass('electric.things') IS NOT NULL").strip(), "t")
        found = (yield setup.run_setup(config, config.connectors[0], creds)).introspection
        self.assertEqual([t.qualified for t in found.tables], [("electric", "things")])
        self.assertEqual(sorted((s.schema, s.name, s.reason) for s in found.skipped), [
            ("electric", "empty", "table has no columns (generated columns are not replicated)"),
            ("electric", "keyless", "table has no primary key"),
        ])
        self.assertEqual(pg.psql("SELECT n.nspname || '.' || c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                                 "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE t.tgname = 'electric_upsert'").split(),
                         ["electric.things"])
        session = setup.SetupSession(config.connectors[0])
        yield session.open()
        try:
            one = yield session.introspect_table(config.publication, "electric", "things")
            self.assertEqual([t.qualified for t in one.tables], [("electric", "things")])
            for name in ("migrations", "meta"):
                none = yield session.introspect_table(config.publication, "electric", name)
                self.assertEqual((none.tables, none.skipped), ([], []))
            pg.psql("CREATE PUBLICATION only_things FOR TABLE electric.things")
            unpublished = yield session.introspect_table("only_things", "electric", "keyless")
            self.assertEqual([(s.name, s.reason) for s in unpublished.skipped],
                             [("keyless", 'table is not in publication "only_things"')])
            gone = yield session.introspect_table(config.publication, "electric", "no_such_table")
            self.assertEqual((gone.tables, gone.skipped), ([], []))
        finally:
            session.close()

    @defer.inlineCallbacks
    def test_wrong_password_is_a_clear_error(self):
        pg = self.pg
        config = Config.from_environ({"CONNECTORS": f"pg_bad=postgresql://electric:nope@127.0.0.1:{pg.port}/{pg.name}"})
        with self.assertRaises(setup.SetupError) as cm:
            yield setup.run_setup(config, config.connectors[0], self.creds(config))
        self.assertIn('password authentication failed for user "electric"', str(cm.exception))
