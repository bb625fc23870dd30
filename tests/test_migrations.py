"""
Migrations core: discovery, hashing, the statement scanner, and applying
migrations to a real PostgreSQL 15 database.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from datetime import datetime, timedelta, timezone

from twisted.internet import defer
from twisted.trial import unittest

from electric.migrations.migration import (
    AlreadyMigrated,
    AlreadyMigratedBadHash,
    AppliedMigration,
    DatabaseUnavailable,
    InvalidMigrationFile,
    InvalidVersion,
    MigrationDatabase,
    MigrationSource,
    MigrationSQLError,
    VersionNotFound,
    format_applied_at,
    migration_hash,
    statements,
    transaction_control_problem,
    validate_version,
)
from tests import pgcluster
from tests.pgcluster import PgCluster, free_port


def write_migration(directory: str, vsn: str, sql, suffix: str = "/postgres.sql") -> str:
    path = os.path.join(directory, vsn + suffix)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(sql if isinstance(sql, bytes) else sql.encode())
    return path


class TempDirMixin:
    def make_dir(self) -> str:
        d = tempfile.mkdtemp(prefix="electric-migrations-")
        self.addCleanup(shutil.rmtree, d, True)
        return d


class NamesAndHashesTest(TempDirMixin, unittest.TestCase):
    def test_valid_names(self):
        for vsn in ("1", "1666288253_create_items", "abc_DEF_123"):
            self.assertEqual(validate_version(vsn), vsn)

    def test_invalid_names(self):
        for vsn in ("", "../etc", "a b", "a/b", "a-b", "a.b", "é", None, 12, "x" * 65, "a\n"):
            with self.assertRaises(InvalidVersion) as cm:
                validate_version(vsn)
            self.assertEqual(cm.exception.status, 400)
            self.assertIn("Bad request", str(cm.exception))

    def test_hash_is_uppercase_md5_of_raw_bytes(self):
        data = b"CREATE TABLE a (id int PRIMARY KEY);\r\n"
        self.assertEqual(migration_hash(data), hashlib.md5(data).hexdigest().upper())
        self.assertEqual(migration_hash(b""), "D41D8CD98F00B204E9800998ECF8427E")

    def test_load_reads_file_with_suffix(self):
        d = self.make_dir()
        path = write_migration(d, "1666288253_create_items", "CREATE TABLE items (id text PRIMARY KEY);\n")
        m = MigrationSource(d).load("1666288253_create_items")
        self.assertEqual(m.path, path)
        self.assertEqual(m.version, "1666288253_create_items")
        self.assertEqual(m.hash, migration_hash(open(path, "rb").read()))
        self.assertIn("CREATE TABLE items", m.sql)

    def test_custom_suffix_is_appended_not_joined(self):
        d = self.make_dir()
        write_migration(d, "2_flat", "SELECT 1;", suffix=".sql")
        source = MigrationSource(d, ".sql")
        self.assertEqual(source.path_for("2_flat"), os.path.join(d, "2_flat.sql"))
        self.assertEqual(source.load("2_flat").sql, "SELECT 1;")

    def test_missing_file_is_vsn_not_found(self):
        d = self.make_dir()
        os.makedirs(os.path.join(d, "3_empty_folder"))
        for vsn in ("3_empty_folder", "4_absent"):
            with self.assertRaises(VersionNotFound) as cm:
                MigrationSource(d).load(vsn)
            self.assertEqual(cm.exception.status, 404)
            self.assertIn(":vsn_not_found", str(cm.exception))

    def test_missing_directory_is_vsn_not_found(self):
        with self.assertRaises(VersionNotFound):
            MigrationSource("/nonexistent/electric/migrations").load("1")

    def test_bad_name_rejected_before_touching_files(self):
        with self.assertRaises(InvalidVersion):
            MigrationSource(self.make_dir()).load("../../etc/passwd")

    def test_versions_lists_only_folders_with_the_file(self):
        d = self.make_dir()
        write_migration(d, "2_b", "SELECT 1;")
        write_migration(d, "1_a", "SELECT 1;")
        os.makedirs(os.path.join(d, "3_no_file"))
        os.makedirs(os.path.join(d, "not-valid"))
        write_migration(d, "not-valid", "SELECT 1;")
        self.assertEqual(MigrationSource(d).versions(), ["1_a", "2_b"])
        self.assertEqual(MigrationSource(os.path.join(d, "nope")).versions(), [])

    def test_not_utf8_is_rejected(self):
        d = self.make_dir()
        write_migration(d, "5_latin1", b"CREATE TABLE caf\xe9 (id int PRIMARY KEY);")
        with self.assertRaises(InvalidMigrationFile) as cm:
            MigrationSource(d).load("5_latin1")
        self.assertEqual(cm.exception.status, 422)
        self.assertIn("UTF-8", str(cm.exception))

    def test_empty_file_is_rejected(self):
        d = self.make_dir()
        write_migration(d, "6_empty", "-- nothing here\n/* still nothing */\n;;\n")
        with self.assertRaises(InvalidMigrationFile) as cm:
            MigrationSource(d).load("6_empty")
        self.assertIn("no SQL statement", str(cm.exception))

    def test_transaction_control_is_rejected(self):
        d = self.make_dir()
        write_migration(d, "7_commit", "CREATE TABLE t7 (id int PRIMARY KEY);\nCOMMIT;\n")
        with self.assertRaises(InvalidMigrationFile) as cm:
            MigrationSource(d).load("7_commit")
        self.assertIn("COMMIT", str(cm.exception))


class ScannerTest(unittest.TestCase):
    def test_statement_starts(self):
        sql = """
        -- leading comment; with a semicolon
        CREATE TABLE a (id text PRIMARY KEY, c text DEFAULT 'x;y');
        /* BEGIN; /* nested */ COMMIT; */ ALTER TABLE a ADD COLUMN b int;
        DO $$ BEGIN PERFORM 1; COMMIT; END $$;
        CREATE FUNCTION f() RETURNS int LANGUAGE sql
          BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END;
        INSERT INTO a VALUES ($tag$;COMMIT;$tag$, E'\\';ROLLBACK;');
        SELECT "weird;""name" FROM a
        """
        self.assertEqual(
            [s[:2] for s in statements(sql)],
            [("CREATE", "TABLE"), ("ALTER", "TABLE"), ("DO",), ("CREATE", "FUNCTION"),
             ("INSERT", "INTO"), ("SELECT",)],
        )
        self.assertIsNone(transaction_control_problem(sql))

    def test_each_transaction_control_form(self):
        for stmt in ("BEGIN", "begin transaction", "START TRANSACTION", "COMMIT", "END",
                     "ROLLBACK", "abort", "PREPARE TRANSACTION 'x'", "commit prepared 'x'"):
            problem = transaction_control_problem(f"CREATE TABLE x (id int PRIMARY KEY); {stmt};")
            self.assertIsNotNone(problem, stmt)
            self.assertIn("one transaction", problem)

    def test_prepare_statement_is_fine(self):
        self.assertIsNone(transaction_control_problem("PREPARE q AS SELECT 1; DEALLOCATE q;"))

    def test_copy_from_stdin_is_rejected(self):
        self.assertIn("COPY", transaction_control_problem("COPY a FROM STDIN;"))


class JsonShapeTest(unittest.TestCase):
    def test_applied_at_is_utc_iso_with_z(self):
        tz = timezone(timedelta(hours=2))
        self.assertEqual(format_applied_at(datetime(2022, 11, 24, 12, 12, 13, 123456, tzinfo=tz)),
                         "2022-11-24T10:12:13.123456Z")
        self.assertEqual(format_applied_at(datetime(2022, 11, 24, 10, 12, 13, 120000, tzinfo=timezone.utc)),
                         "2022-11-24T10:12:13.12Z")
        self.assertEqual(format_applied_at(datetime(2022, 11, 24, 10, 12, 13, tzinfo=timezone.utc)),
                         "2022-11-24T10:12:13Z")

    def test_entry_keys(self):
        m = AppliedMigration("1", "initial", datetime(2022, 11, 24, 10, 12, 13, 123456, tzinfo=timezone.utc))
        self.assertEqual(m.to_json("postgres_1"), {
            "applied_at": "2022-11-24T10:12:13.123456Z", "hash": "initial",
            "origin": "postgres_1", "vsn": "1"})


def shared_cluster() -> PgCluster:
    """The cluster these migration tests share (each test uses its own table names)."""
    return pgcluster.shared_cluster("migrations-a")


class ApplyToPostgresTest(TempDirMixin, unittest.TestCase):
    """One real PG 15 database; each test uses its own table names."""

    def setUp(self):
        self.pg = shared_cluster()
        self.dir = self.make_dir()
        self.source = MigrationSource(self.dir)
        self.db = MigrationDatabase("postgres_1", self.pg.dsn)

    def migration(self, vsn, sql):
        write_migration(self.dir, vsn, sql)
        return self.source.load(vsn)

    def versions(self):
        if self.pg.psql("SELECT to_regclass('electric.migrations') IS NULL").strip() == "t":
            return []
        return self.pg.psql("SELECT version || ':' || hash FROM electric.migrations ORDER BY id").split()

    @defer.inlineCallbacks
    def test_create_table_then_add_column(self):
        m1 = self.migration("100_create_items", "CREATE TABLE items100 (id text PRIMARY KEY, content text);")
        r1 = yield self.db.apply(m1)
        self.assertEqual(r1.applied.version, "100_create_items")
        self.assertEqual(r1.applied.hash, m1.hash)
        self.assertEqual(r1.applied.applied_at.utcoffset(), timedelta(0))
        self.pg.psql("INSERT INTO items100 VALUES ('a', 'hello')")

        m2 = self.migration("101_add_column", "ALTER TABLE items100 ADD COLUMN content_b text;\n"
                                              "UPDATE items100 SET content_b = content || '%b';")
        r2 = yield self.db.apply(m2)
        self.assertEqual(r2.previous.version, "100_create_items")
        self.assertEqual(self.pg.psql("SELECT id, content, content_b FROM items100").strip(),
                         "a|hello|hello%b")
        self.assertIn(f"101_add_column:{m2.hash}", self.versions())
        latest = yield self.db.latest()
        self.assertEqual(latest.version, "101_add_column")
        applied = yield self.db.applied()
        self.assertEqual([a.version for a in applied][:2], ["101_add_column", "100_create_items"])

    @defer.inlineCallbacks
    def test_unqualified_tables_go_to_public_not_electric(self):
        # the user is called "electric", so "$user" on the search path is the electric schema
        yield self.db.apply(self.migration("105_where", "CREATE TABLE t105 (id int PRIMARY KEY);"))
        self.assertEqual(self.pg.psql("SELECT relnamespace::regnamespace FROM pg_class WHERE relname = 't105'").strip(),
                         "public")
        yield self.db.apply(self.migration("106_explicit", "CREATE TABLE electric.t106 (id int PRIMARY KEY);"))
        self.assertEqual(self.pg.psql("SELECT relnamespace::regnamespace FROM pg_class WHERE relname = 't106'").strip(),
                         "electric")

    @defer.inlineCallbacks
    def test_reapply_same_file_is_already_migrated(self):
        m = self.migration("110_once", "CREATE TABLE t110 (id int PRIMARY KEY);")
        yield self.db.apply(m)
        before = self.versions()
        with self.assertRaises(AlreadyMigrated) as cm:
            yield self.db.apply(m)
        self.assertEqual(cm.exception.status, 409)
        self.assertIn(":already_migrated", str(cm.exception))
        self.assertIn("110_once", str(cm.exception))
        self.assertEqual(self.versions(), before)

    @defer.inlineCallbacks
    def test_changed_file_is_already_migrated_bad_md5(self):
        yield self.db.apply(self.migration("120_changed", "CREATE TABLE t120 (id int PRIMARY KEY);"))
        changed = self.migration("120_changed", "CREATE TABLE t120b (id int PRIMARY KEY);")
        with self.assertRaises(AlreadyMigratedBadHash) as cm:
            yield self.db.apply(changed)
        self.assertIn(":already_migrated_bad_md5", str(cm.exception))
        self.assertEqual(self.pg.psql("SELECT to_regclass('t120b') IS NULL").strip(), "t")

    @defer.inlineCallbacks
    def test_broken_sql_rolls_back_everything(self):
        m = self.migration("130_broken", "CREATE TABLE t130 (id int PRIMARY KEY);\n"
                                         "INSERT INTO t130 VALUES (1);\n"
                                         "ALTER TABLE t130 ADD COLUMN c nosuchtype;\n")
        with self.assertRaises(MigrationSQLError) as cm:
            yield self.db.apply(m)
        e = cm.exception
        self.assertEqual(e.status, 422)
        self.assertEqual(e.sqlstate, "42704")
        self.assertIn('type "nosuchtype" does not exist', str(e))
        self.assertIn("rolled back", str(e))
        self.assertEqual(self.pg.psql("SELECT to_regclass('t130') IS NULL").strip(), "t")
        self.assertNotIn("130_broken", " ".join(self.versions()))
        # fixed file applies cleanly afterwards
        fixed = self.migration("130_broken", "CREATE TABLE t130 (id int PRIMARY KEY, c text);")
        r = yield self.db.apply(fixed)
        self.assertEqual(r.applied.hash, fixed.hash)

    @defer.inlineCallbacks
    def test_syntax_error_text(self):
        m = self.migration("140_syntax", "CRATE TABLE t140 (id int PRIMARY KEY);")
        with self.assertRaises(MigrationSQLError) as cm:
            yield self.db.apply(m)
        self.assertIn('syntax error at or near "CRATE"', str(cm.exception))
        self.assertEqual(cm.exception.sqlstate, "42601")

    @defer.inlineCallbacks
    def test_creates_electric_schema_in_fresh_database(self):
        self.pg.psql("CREATE DATABASE fresh150")
        dsn = self.pg.dsn.replace("dbname=electric", "dbname=fresh150")
        db = MigrationDatabase("fresh", dsn)
        latest = yield db.latest()
        self.assertIsNone(latest)
        yield db.apply(self.migration("150_fresh", "CREATE TABLE t150 (id int PRIMARY KEY);"))
        out = self.pg.psql("SELECT version FROM electric.migrations", dbname="fresh150").strip()
        self.assertEqual(out, "150_fresh")
        cols = self.pg.psql(
            "SELECT column_name || ':' || data_type FROM information_schema.columns "
            "WHERE table_schema = 'electric' AND table_name = 'migrations' ORDER BY ordinal_position",
            dbname="fresh150").splitlines()
        self.assertEqual(cols, ["id:integer", "version:character varying", "hash:character varying",
                                "applied_at:timestamp with time zone"])

    @defer.inlineCallbacks
    def test_percent_signs_and_multiple_statements_pass_untouched(self):
        m = self.migration("160_percent", "CREATE TABLE t160 (id text PRIMARY KEY);\n"
                                          "INSERT INTO t160 VALUES ('50%'), ('%s'), ('%%');")
        yield self.db.apply(m)
        self.assertEqual(self.pg.psql("SELECT string_agg(id, ',' ORDER BY id) FROM t160").strip(),
                         "%%,%s,50%")

    @defer.inlineCallbacks
    def test_session_killed_mid_migration_commits_nothing(self):
        m = self.migration("175_killed", "CREATE TABLE t175 (id int PRIMARY KEY);\n"
                                         "SELECT pg_terminate_backend(pg_backend_pid());")
        with self.assertRaises((MigrationSQLError, DatabaseUnavailable)) as cm:
            yield self.db.apply(m)
        self.assertIn("terminating connection", str(cm.exception))
        self.assertEqual(self.pg.psql("SELECT to_regclass('t175') IS NULL").strip(), "t")
        self.assertNotIn("175_killed", " ".join(self.versions()))

    @defer.inlineCallbacks
    def test_null_applied_at_is_listed_last_as_null(self):
        yield self.db.apply(self.migration("176_a", "CREATE TABLE t176 (id int PRIMARY KEY);"))
        self.pg.psql("INSERT INTO electric.migrations (version, hash, applied_at) VALUES ('176_hand', 'x', NULL)")
        self.addCleanup(self.pg.psql, "DELETE FROM electric.migrations WHERE version = '176_hand'")
        applied = yield self.db.applied()
        self.assertEqual(applied[-1].to_json("p")["applied_at"], None)
        self.assertEqual(applied[-1].version, "176_hand")
        self.assertNotEqual(applied[0].version, "176_hand")

    @defer.inlineCallbacks
    def test_unreachable_database(self):
        db = MigrationDatabase("gone", f"host=127.0.0.1 port={free_port()} user=electric dbname=electric")
        with self.assertRaises(DatabaseUnavailable) as cm:
            yield db.apply(self.migration("170_unreachable", "SELECT 1;"))
        self.assertEqual(cm.exception.status, 503)
        self.assertIn("cannot connect to gone", str(cm.exception))

    @defer.inlineCallbacks
    def test_wrong_password(self):
        db = MigrationDatabase("badpw", self.pg.dsn.replace("password=password", "password=nope"))
        with self.assertRaises(DatabaseUnavailable) as cm:
            yield db.latest()
        self.assertIn("password authentication failed", str(cm.exception))
