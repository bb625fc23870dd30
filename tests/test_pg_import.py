"""
The connector's import of rows a database already holds, against a real
Postgres and the embedded hub (in process): the first import in the slot's
exported snapshot, a table that becomes replicable mid-stream or while
Electric was away (a temporary slot's snapshot and the stream's horizon), an
interrupted import redone with a new slot.  The import state file on its own.
"""

from __future__ import annotations

import os
import stat
import tempfile

from twisted.internet import defer
from twisted.trial import unittest

from electric.postgres.source import importer
from electric.schema import Column, Table
from tests.polling import wait_until
from tests.test_pg_inbound import ConnectorTestBase


class ImportStateTests(unittest.TestCase):
    def test_round_trip_private_and_prune(self):
        tmp = tempfile.mkdtemp()
        state = importer.ImportState(tmp, "pg1").load()
        self.assertFalse(state.exists)
        self.assertIsNone(state.known)
        state.pending = {"kind": "tables", "point": 7, "tables": [["public", "t"]]}
        state.known = {("public", "a"), ("s", "b.c")}
        state.horizons = {("public", "t"): 100, ("public", "u"): 50}
        state.save()
        self.assertEqual(stat.S_IMODE(os.stat(state.path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(state.dir).st_mode), 0o700)
        again = importer.ImportState(tmp, "pg1").load()
        self.assertTrue(again.exists)
        self.assertEqual(again.pending, state.pending)
        self.assertEqual(again.known, state.known)
        self.assertEqual(again.horizons, state.horizons)
        self.assertTrue(again.prune(60))
        self.assertEqual(again.horizons, {("public", "t"): 100})
        self.assertFalse(again.prune(60))

    def test_origin_id_and_row_changes(self):
        self.assertEqual(importer.import_origin_id(0x16B3748), b"import:" + bytes.fromhex("00000000016b3748"))
        t = Table("public", "t", (Column("a", "text", 25, -1, False), Column("id", "int4", 23, -1, True)), ("id",), "d")
        [c] = importer.row_changes(t, ["a", "id"], [("x", "1")])
        self.assertEqual((c.op, c.key, dict(c.values)), ("upsert", ("1",), {"a": "x", "id": "1"}))

    def test_progress(self):
        now = [10.0]
        p = importer.ImportProgress("initial", 0x10, 10.0, clock=lambda: now[0])
        p.tables = [importer.TableProgress("public", "a", 100), importer.TableProgress("public", "b", None)]
        p.tables[0].done = 40
        now[0] = 12.0
        st = p.status()
        self.assertEqual((st["rows_done"], st["rows_estimated"], st["rows_per_second"], st["consistent_point"]),
                         (40, 100, 20, "0/10"))
        self.assertIn("40/~100 rows", p.line())
        self.assertIn("now public.a 40/~100", p.line())


class ConnectorImportTests(ConnectorTestBase):
    def hub_stats(self):
        return self.hub.status()

    @defer.inlineCallbacks
    def test_types_come_as_pgoutput_sends_them(self):
        # Text as the output functions write it, the same as the stream: no
        # psycopg2 conversion (bool 't', inet without /32, bytea hex, arrays).
        self.sql("CREATE TABLE ty (id int PRIMARY KEY, b bool, i inet, y bytea, a int4[], c char(3), n numeric(6,2), "
                 "ts timestamptz, j jsonb, nul text);"
                 "INSERT INTO ty VALUES (1, true, '10.0.0.1', '\\xdead', '{1,NULL}', 'x', 1.5, "
                 "'2024-01-02 03:04:05+00', '{\"k\": [1]}', NULL)")
        yield self.start()
        rows = yield self.wait_rows("ty", 1)
        imported = rows[("1",)]
        self.sql("INSERT INTO ty SELECT 2, b, i, y, a, c, n, ts, j, nul FROM ty WHERE id = 1")
        rows = yield self.wait_rows("ty", 2)
        streamed = dict(rows[("2",)], id="1")
        self.assertEqual(imported, streamed)
        self.assertEqual((imported["b"], imported["i"], imported["y"], imported["a"], imported["c"], imported["nul"]),
                         ("t", "10.0.0.1", "\\xdead", "{1,NULL}", "x  ", None))
        st = self.service.status()["import"]
        self.assertEqual((st["kind"], st["state"], st["rows_done"]), ("initial", "done", 1))

    @defer.inlineCallbacks
    def test_table_given_a_primary_key_mid_stream_is_imported_exactly(self):
        self.sql("CREATE TABLE np (id int NOT NULL, v text); INSERT INTO np SELECT g, 'old' FROM generate_series(1, 50) g")
        yield self.start()
        self.assertIn(("public", "np"), self.service.skipped)
        # Streamed while skipped: dropped by the stream, but in the table.
        self.sql("INSERT INTO np SELECT g, 'while skipped' FROM generate_series(51, 60) g")
        self.sql("ALTER TABLE np ADD PRIMARY KEY (id); UPDATE np SET v = 'after pk' WHERE id = 1;"
                 "INSERT INTO np VALUES (61, 'after pk')")
        self.sql("DELETE FROM np WHERE id = 2")
        rows = yield self.wait_rows("np", 60)
        self.assertEqual(rows[("1",)]["v"], "after pk")
        self.assertNotIn(("2",), rows)
        self.assertEqual(rows[("61",)]["v"], "after pk")
        self.assertEqual(rows[("55",)]["v"], "while skipped")
        st = self.service.status()["import"]
        self.assertEqual((st["kind"], st["state"]), ("tables", "done"))
        self.assertIn(("public", "np"), self.service.imports.horizons)
        self.assertNotIn(("public", "np"), self.service.skipped)

    @defer.inlineCallbacks
    def test_table_created_and_filled_while_away_is_imported_once(self):
        self.sql("CREATE TABLE a (id int PRIMARY KEY)")
        yield self.start()
        yield self.service.stopService()
        # Created and filled while Electric is away: the slot holds these
        # inserts too, and the horizon drops them so none is applied twice.
        self.sql("CREATE TABLE public.later (id int PRIMARY KEY, v text); "
                 "INSERT INTO later SELECT g, 'x' FROM generate_series(1, 30) g")
        self.sql("UPDATE later SET v = 'y' WHERE id = 1")
        appends = self.hub.status()["appends"]
        self.service.startService()
        yield wait_until(lambda: self.service.ready, what="stream live again")
        rows = yield self.wait_rows("later", 30)
        self.assertEqual(rows[("1",)]["v"], "y")
        self.sql("INSERT INTO a VALUES (1)")
        yield self.wait_rows("a", 1)
        # The one append since the restart is table a's insert; later's rows came as one import.
        self.assertEqual(self.hub.status()["appends"], appends + 1)
        self.assertEqual(self.service.assembler.before_horizon, 31)

    @defer.inlineCallbacks
    def test_interrupted_import_is_redone_with_a_new_slot(self):
        self.sql("CREATE TABLE r (id int PRIMARY KEY, v text); INSERT INTO r SELECT g, 'v' FROM generate_series(1, 20) g")
        # What a crash mid-import leaves: the slot, the pending record, nothing in the hub.
        self.pg.psql(f"SELECT pg_create_logical_replication_slot('{self.slot}', 'pgoutput')", dbname=self.db)
        before = self.sql(f"SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{self.slot}'")
        state = importer.ImportState(self.tmp, self.name)
        state.pending, state.known = {"kind": "initial"}, set()
        state.save()
        self.sql("INSERT INTO r VALUES (21, 'after the dead snapshot')")
        yield self.start()
        rows = yield self.wait_rows("r", 21)
        self.assertEqual(rows[("21",)]["v"], "after the dead snapshot")
        after = self.sql(f"SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{self.slot}'")
        self.assertNotEqual(before, after)
        self.assertTrue(any("was interrupted" in line for line in self.logs.lines))
        loaded = importer.ImportState(self.tmp, self.name).load()
        self.assertIsNone(loaded.pending)
        self.assertEqual(loaded.known, {("public", "r")})
        self.assertEqual(self.hub.status()["appends"], 0)
