"""
A REAL stock PostgreSQL 15 subscribes to Electric's port 5433.

Electric here is a real EmbeddedHub + PublisherService on a free port; the
subscriber is a throwaway PG 15 cluster whose own apply and table-sync
workers do everything (CREATE SUBSCRIPTION, COPY, streaming, resume).
Transactions are appended to the hub directly; the tests assert what lands
in the subscriber's tables and that its log shows no error.

`log_t` deliberately has no upsert trigger: any transaction sent twice would
stop its apply worker with a duplicate-key error, so it proves "no
duplicates" across restarts, DISABLE/ENABLE and table sync.
"""

from __future__ import annotations

import os

from twisted.internet import defer, threads
from twisted.trial import unittest

from electric.postgres.source.setup import upsert_trigger_sql
from electric.schema import Column, Table
from tests.publisher_helpers import ITEMS, Electric, eventually, subscriber_errors
from tests.pgcluster import PgCluster

TYPES = Table(
    "public", "types_t",
    (
        Column("id", "int4", 23, -1, True),
        Column("c_int2", "int2", 21), Column("c_int8", "int8", 20), Column("c_text", "text", 25),
        Column("c_bool", "bool", 16), Column("c_float8", "float8", 701),
        Column("c_numeric", "numeric", 1700, (10 << 16 | 2) + 4), Column("c_date", "date", 1082),
        Column("c_ts", "timestamp", 1114), Column("c_tstz", "timestamptz", 1184), Column("c_uuid", "uuid", 2950),
        Column("c_jsonb", "jsonb", 3802), Column("c_arr", "_int4", 1007), Column("c_bytea", "bytea", 17),
        Column("c_varchar", "varchar", 1043, 24),
    ),
    ("id",),
)
TYPES_DDL = """CREATE TABLE types_t (
    id int PRIMARY KEY, c_int2 int2, c_int8 int8, c_text text, c_bool bool, c_float8 float8,
    c_numeric numeric(10,2), c_date date, c_ts timestamp, c_tstz timestamptz, c_uuid uuid, c_jsonb jsonb,
    c_arr int4[], c_bytea bytea, c_varchar varchar(20))"""
TYPES_VALUES = {
    "c_int2": "32767", "c_int8": "-9223372036854775807", "c_text": 'tab\there "q" \\ é ✓\nline2',
    "c_bool": "t", "c_float8": "0.1", "c_numeric": "12.50", "c_date": "2024-02-29",
    "c_ts": "2024-02-29 13:45:56.123456", "c_tstz": "2024-02-29 11:45:56.123456+00",
    "c_uuid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "c_jsonb": '{"a": [1, 2], "b": null}',
    "c_arr": "{1,NULL,3}", "c_bytea": "\\xdeadbeef00", "c_varchar": "varchar val",
}
TYPES_CHECK = (
    "SELECT count(*) FROM types_t WHERE id = {id} AND c_int2 = 32767 AND c_int8 = -9223372036854775807"
    " AND c_text = E'tab\\there \"q\" \\\\ é ✓\\nline2' AND c_bool AND c_float8 = 0.1 AND c_numeric = 12.50"
    " AND c_date = '2024-02-29' AND c_ts = '2024-02-29 13:45:56.123456'"
    " AND c_tstz = '2024-02-29 13:45:56.123456+02' AND c_uuid = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"
    " AND c_jsonb = '{\"b\": null, \"a\": [1, 2]}' AND c_arr = '{1,NULL,3}'::int4[]"
    " AND c_bytea = '\\xdeadbeef00'::bytea AND c_varchar = 'varchar val'"
)
NULLS_CHECK = (
    "SELECT count(*) FROM types_t WHERE id = {id} AND c_text = '' AND c_int2 IS NULL AND c_int8 IS NULL"
    " AND c_bool IS NULL AND c_numeric IS NULL AND c_tstz IS NULL AND c_arr IS NULL AND c_bytea IS NULL"
)
LOG = Table("public", "log_t", (Column("id", "int4", 23, -1, True), Column("note", "text", 25)), ("id",))


def sql(pg, text, dbname="electric"):
    return threads.deferToThread(pg.psql, text, dbname)


def wait_for(pg, query, expected, dbname="electric", timeout=40.0):
    @defer.inlineCallbacks
    def check():
        out = yield threads.deferToThread(pg.psql, query, dbname, False)
        return out.strip() == expected
    return eventually(check, timeout=timeout, interval=0.2)


@defer.inlineCallbacks
def install_schema(pg, dbname, tables_ddl, trigger_tables):
    # Tables first: the role is called "electric", so once that schema exists
    # unqualified names would land in it ($user comes first in search_path).
    yield sql(pg, "; ".join(tables_ddl) + "; CREATE SCHEMA IF NOT EXISTS electric", dbname)
    for t in trigger_tables:
        oid = int((yield sql(pg, f"SELECT '{t.schema}.{t.name}'::regclass::oid", dbname)).strip())
        for stmt in upsert_trigger_sql(t, oid):
            yield sql(pg, stmt, dbname)


def subscribe_sql(e, origin, copy_data, options=""):
    return (f"CREATE SUBSCRIPTION {origin} CONNECTION 'host=127.0.0.1 port={e.port} dbname={origin}"
            f" user={origin} password={e.password(origin)} sslmode=disable' PUBLICATION all_tables"
            f" WITH (copy_data = {'true' if copy_data else 'false'}{options})")


EXPECTED_ERRORS = (
    "Electric is shutting down",  # Electric restarted on purpose
    "could not connect to the publisher",  # ... and was briefly not listening
    # The subscriber restarted on purpose: its fast shutdown ends every session still open
    # (under load, a polling psql's backend can outlive its client by a moment).
    "terminating connection due to administrator command",
)


def errors_in_log(pg):
    """Every ERROR/FATAL of the subscriber's log that the scenario did not cause on purpose."""
    return subscriber_errors(pg, EXPECTED_ERRORS)


class StockSubscriber(unittest.TestCase):
    timeout = 300

    # One subscriber cluster for the class.  trial has no setUpClass, so it is
    # started by the first test and destroyed after the last one (tests/pgcluster.py
    # also removes it at exit when only some tests run).
    pg = None
    _remaining = None

    @classmethod
    def _cluster(cls):
        if cls.pg is None:
            cls.pg = PgCluster().start()
            cls.pg.psql("CREATE DATABASE db2", dbname="postgres")
            cls._remaining = len([n for n in dir(cls) if n.startswith("test_")])
        return cls.pg

    @classmethod
    def _done(cls):
        cls._remaining -= 1
        if cls._remaining == 0 and cls.pg is not None:
            if os.environ.get("DUMP_PG_LOG"):
                print(cls.pg.log())
            cls.pg.destroy()
            cls.pg = None

    @defer.inlineCallbacks
    def setUp(self):
        yield threads.deferToThread(self._cluster)
        self.addCleanup(self._done)
        self.e = Electric()
        yield self.e.start()
        self.addCleanup(self.e.destroy)
        self.addCleanup(self.e.stop)

    @defer.inlineCallbacks
    def test_copy_data_live_changes_restarts(self):
        e, pg = self.e, self.pg
        items = e.register(ITEMS, ["postgres_1"])
        types = e.register(TYPES, ["postgres_1"])
        log_t = e.register(LOG, ["postgres_1"])
        # Rows already in the hub before the database joins.
        yield e.append(e.upsert(items, {"id": "a", "content": "first", "n": "1"}),
                       e.upsert(items, {"id": "b", "content": "tab\tand\\slash", "n": "2"}),
                       e.upsert(log_t, {"id": "1", "note": "before"}))
        yield e.append(e.upsert(types, dict(TYPES_VALUES, id="1")),
                       e.upsert(types, {"id": "2", "c_text": ""}),
                       e.delete(items, {"id": "b"}),
                       e.upsert(items, {"id": "b", "content": "again", "n": "22"}))
        yield install_schema(pg, "electric", [
            "CREATE TABLE items (id text PRIMARY KEY, content text, n int)", TYPES_DDL,
            "CREATE TABLE log_t (id int PRIMARY KEY, note text)",
            # A row the subscriber has before it joins: the hub's version must win.
            "INSERT INTO items VALUES ('a', 'local', 0)",
        ], [items, types])
        yield sql(pg, subscribe_sql(e, "postgres_1", copy_data=True))
        yield wait_for(pg, "SELECT string_agg(id || ':' || coalesce(content, '-') || ':' || coalesce(n::text, '-'),"
                           " ',' ORDER BY id) FROM items", "a:first:1,b:again:22")
        yield wait_for(pg, TYPES_CHECK.replace("{id}", "1"), "1")
        yield wait_for(pg, NULLS_CHECK.replace("{id}", "2"), "1")
        yield wait_for(pg, "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'", "0")

        # Live: insert with NULLs, update of an existing row, delete, all types, an upsert
        # of a row the subscriber already has locally.
        yield sql(pg, "INSERT INTO items VALUES ('z', 'local z', 26)")
        yield e.append(e.upsert(items, {"id": "c", "content": None, "n": None}),
                       e.upsert(items, {"id": "a", "content": "updated", "n": "10"}),
                       e.delete(items, {"id": "b"}),
                       e.upsert(items, {"id": "z", "content": "from hub", "n": "27"}),
                       e.upsert(types, dict(TYPES_VALUES, id="3")),
                       e.upsert(log_t, {"id": "2", "note": "live"}))
        yield wait_for(pg, "SELECT string_agg(id || ':' || coalesce(content, '-') || ':' || coalesce(n::text, '-'),"
                           " ',' ORDER BY id) FROM items", "a:updated:10,c:-:-,z:from hub:27")
        yield wait_for(pg, TYPES_CHECK.replace("{id}", "3"), "1")

        # DISABLE / ENABLE: what was appended meanwhile arrives once.
        yield sql(pg, "ALTER SUBSCRIPTION postgres_1 DISABLE")
        yield eventually(lambda: not any(s["streaming"] for s in e.publisher.status()["slots"].values()))
        yield e.append(e.upsert(log_t, {"id": "3", "note": "while disabled"}))
        yield sql(pg, "ALTER SUBSCRIPTION postgres_1 ENABLE")
        yield wait_for(pg, "SELECT string_agg(id::text, ',' ORDER BY id) FROM log_t", "1,2,3")

        # Subscriber restart: resumes from its origin progress.
        yield threads.deferToThread(pg.restart)
        yield e.append(e.upsert(log_t, {"id": "4", "note": "after subscriber restart"}))
        yield wait_for(pg, "SELECT string_agg(id::text, ',' ORDER BY id) FROM log_t", "1,2,3,4")

        # Electric restart: a new hub object on the same data, the same port.
        yield e.stop()
        yield e.start()
        yield e.append(e.upsert(log_t, {"id": "5", "note": "after electric restart"}))
        yield wait_for(pg, "SELECT string_agg(id::text, ',' ORDER BY id) FROM log_t", "1,2,3,4,5")
        yield e.append(e.upsert(log_t, {"id": "6", "note": "and more"}))
        yield wait_for(pg, "SELECT string_agg(id::text, ',' ORDER BY id) FROM log_t", "1,2,3,4,5,6")
        # The subscriber's acknowledgements reach the hub (compaction is held back for it).
        head = e.hub.head()
        yield eventually(lambda: e.hub.status()["consumers"].get("pg:postgres_1", {}).get("acked") == head)
        self.assertEqual(errors_in_log(pg), [])

        yield sql(pg, "DROP SUBSCRIPTION postgres_1")
        rows = yield sql(pg, "SELECT count(*) FROM pg_subscription")
        self.assertEqual(rows.strip(), "0")

    @defer.inlineCallbacks
    def test_copy_data_false_and_foreign_tables(self):
        e, pg = self.e, self.pg
        items = e.register(ITEMS, ["postgres_2"])
        full = e.register(Table("public", "full_t", (Column("id", "int4", 23, -1, None),
                                                     Column("v", "text", 25, -1, None)), ("id",), "f"),
                          ["postgres_2"])
        other = e.register(Table("public", "not_there", (Column("k", "int4", 23, -1, True),), ("k",)), ["postgres_1"])
        yield e.append(e.upsert(items, {"id": "old", "content": "before the slot", "n": "0"}))
        yield install_schema(pg, "db2", [
            "CREATE TABLE items (id text PRIMARY KEY, content text, n int)",
            "CREATE TABLE full_t (id int PRIMARY KEY, v text)", "ALTER TABLE full_t REPLICA IDENTITY FULL",
        ], [items, full])
        # Options a subscriber may ask for: we always send whole text-format transactions,
        # which a subscriber asking for streaming / binary / two-phase accepts.
        yield sql(pg, subscribe_sql(e, "postgres_2", copy_data=False,
                                    options=", streaming = on, binary = true, two_phase = true"), "db2")
        # A slot created without a snapshot starts at the hub's head, as in Postgres.
        yield eventually(lambda: e.publisher.status()["slots"].get("postgres_2", {}).get("streaming"))
        yield e.append(e.upsert(other, {"k": "1"}))  # a table db2 does not have: skipped
        yield e.append(e.upsert(items, {"id": "new", "content": "after", "n": "1"}), e.upsert(other, {"k": "2"}),
                       e.upsert(full, {"id": "1", "v": "one"}), e.upsert(full, {"id": "2", "v": "two"}))
        yield wait_for(pg, "SELECT string_agg(id || ':' || content, ',' ORDER BY id) FROM items", "new:after", "db2")
        yield wait_for(pg, "SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM full_t", "1:one,2:two", "db2")
        # REPLICA IDENTITY FULL on the subscriber: upserts and deletes by key still apply.
        yield e.append(e.upsert(full, {"id": "1", "v": "uno"}), e.delete(full, {"id": "2", "v": "two"}))
        yield wait_for(pg, "SELECT string_agg(id || ':' || v, ',' ORDER BY id) FROM full_t", "1:uno", "db2")
        status = e.publisher.status()["slots"]["postgres_2"]
        self.assertEqual(status["changes_skipped"], 2)
        self.assertEqual(errors_in_log(pg), [])
        yield sql(pg, "ALTER SUBSCRIPTION postgres_2 DISABLE", "db2")
        yield sql(pg, "DROP SUBSCRIPTION postgres_2", "db2")
