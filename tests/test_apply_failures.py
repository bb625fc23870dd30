"""
Apply-failure detection without a database: the sans-IO detector, the
replay's SQL, the quarantine file, and the encoder leaving set-aside changes
out (the rest of their transaction still goes).  The end-to-end story with
real clusters is tests/test_apply_failures_e2e.py.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile

from twisted.trial import unittest

from electric.hub.interface import ResolvedChange, ResolvedTransaction
from electric.postgres.protocol import pgoutput
from electric.postgres.protocol.replication_messages import decode_replication
from electric.postgres.publisher.apply_failures import ApplyFailureDetector, Recovered, Suspect
from electric.postgres.publisher.outbound import OutboundEncoder
from electric.postgres.publisher.quarantine import QuarantineStore
from electric.postgres.publisher.replay import statement
from electric.schema import Column, SchemaRegistry, Table

ITEMS = Table(
    "public", "items",
    (Column("id", "text", 25, -1, True), Column("content", "text", 25, -1, False), Column("n", "int4", 23, -1, False)),
    ("id",),
)


class Detector(unittest.TestCase):
    def test_same_transaction_failing_twice_is_suspect_once(self):
        d = ApplyFailureDetector(threshold=2)
        self.assertEqual(d.stream_started("pg_b", 10), [])
        # The stream from 10 began transaction 12 (11 had nothing for this database) and ended unconfirmed.
        self.assertEqual(d.stream_ended("pg_b", 10, 12, 10), [])
        self.assertEqual(d.watching("pg_b"), 12)
        self.assertEqual(d.stream_started("pg_b", 10), [])
        self.assertEqual(d.stream_ended("pg_b", 10, 12, 10), [Suspect("pg_b", 12, 10, 2)])
        # Said once, however often it fails after that.
        for _ in range(5):
            self.assertEqual(d.stream_started("pg_b", 10), [])
            self.assertEqual(d.stream_ended("pg_b", 10, 12, 10), [])
        self.assertEqual(d.attempts("pg_b"), 7)
        # The subscriber gets past it (a change was set aside): recovered, once.
        self.assertEqual(d.stream_started("pg_b", 12), [Recovered("pg_b", 12)])
        self.assertIsNone(d.watching("pg_b"))
        self.assertEqual(d.stream_ended("pg_b", 12, 15, 15), [])

    def test_progress_is_not_a_failure(self):
        d = ApplyFailureDetector(threshold=2)
        # Ended before confirming (confirmations lag), but the next stream starts after it: applied.
        self.assertEqual(d.stream_ended("pg_b", 10, 11, 10), [])
        self.assertEqual(d.stream_started("pg_b", 11), [])
        self.assertEqual(d.stream_ended("pg_b", 11, 12, 11), [])
        self.assertEqual(d.stream_started("pg_b", 12), [])
        self.assertIsNone(d.watching("pg_b"))
        # A confirmation reaching the watched transaction ends the watch as well.
        d.stream_ended("pg_b", 12, 13, 12)
        self.assertEqual(d.acked("pg_b", 13), [])
        self.assertIsNone(d.watching("pg_b"))

    def test_what_proves_nothing(self):
        d = ApplyFailureDetector(threshold=1)
        self.assertEqual(d.stream_ended("pg_b", 10, None, 10), [])  # sent nothing
        self.assertEqual(d.stream_ended("pg_b", 10, 12, 12), [])  # confirmed what it sent
        self.assertEqual(d.stream_ended("pg_b", 10, 12, 10, by_electric=True), [])  # Electric ended it
        self.assertIsNone(d.watching("pg_b"))
        self.assertEqual(d.stream_ended("pg_b", 10, 12, 10), [Suspect("pg_b", 12, 10, 1)])

    def test_origins_are_separate(self):
        d = ApplyFailureDetector(threshold=2)
        d.stream_ended("pg_a", 5, 6, 5)
        d.stream_ended("pg_b", 5, 6, 5)
        self.assertEqual(d.stream_ended("pg_a", 5, 6, 5), [Suspect("pg_a", 6, 5, 2)])
        self.assertEqual(d.stream_started("pg_b", 6), [])  # pg_b was never reported
        self.assertEqual(d.watching("pg_a"), 6)

    def test_another_transaction_replaces_the_watch(self):
        d = ApplyFailureDetector(threshold=2)
        d.stream_ended("pg_b", 10, 12, 10)
        self.assertEqual(d.stream_ended("pg_b", 10, 12, 10), [Suspect("pg_b", 12, 10, 2)])
        # The subscription was re-created and now fails elsewhere: the old report is over.
        self.assertEqual(d.stream_ended("pg_b", 0, 3, 0), [Recovered("pg_b", 12)])
        self.assertEqual((d.watching("pg_b"), d.attempts("pg_b")), (3, 1))

    def test_inconclusive_backs_off(self):
        d = ApplyFailureDetector(threshold=2)
        d.stream_ended("pg_b", 10, 12, 10)
        self.assertEqual(len(d.stream_ended("pg_b", 10, 12, 10)), 1)
        d.inconclusive("pg_b", 12)  # the replay applied cleanly: not reported, asked again later
        self.assertEqual(d.stream_ended("pg_b", 10, 12, 10), [])
        self.assertEqual(d.stream_ended("pg_b", 10, 12, 10), [])
        self.assertEqual(d.stream_ended("pg_b", 10, 12, 10), [])
        self.assertEqual(d.stream_ended("pg_b", 10, 12, 10), [Suspect("pg_b", 12, 10, 6)])
        d.inconclusive("pg_b", 12)  # and again: after twice as many failures as the last time
        for _ in range(7):
            self.assertEqual(d.stream_ended("pg_b", 10, 12, 10), [])
        self.assertEqual(d.stream_ended("pg_b", 10, 12, 10), [Suspect("pg_b", 12, 10, 14)])
        # A stale verdict for another position changes nothing.
        d.inconclusive("pg_b", 99)
        self.assertEqual(d.stream_ended("pg_b", 10, 12, 10), [])
        # Recovering after inconclusive reports (the monitor never showed a failure) is still said.
        self.assertEqual(d.stream_started("pg_b", 13), [Recovered("pg_b", 12)])

    def test_after_a_change_is_set_aside_a_failure_is_reported_afresh(self):
        d = ApplyFailureDetector(threshold=2)
        d.stream_ended("pg_b", 10, 12, 10)
        self.assertEqual(len(d.stream_ended("pg_b", 10, 12, 10)), 1)
        d.again("pg_b")  # one of its failing changes set aside
        self.assertEqual(d.stream_ended("pg_b", 10, 12, 10), [])  # the stream that was already under way
        self.assertEqual(d.stream_ended("pg_b", 10, 12, 10), [Suspect("pg_b", 12, 10, 2)])  # still failing
        d.again("pg_b")
        # It applies now: the end of the failure is news although no report is out for the new count.
        self.assertEqual(d.stream_started("pg_b", 12), [Recovered("pg_b", 12)])

    def test_threshold_must_be_positive(self):
        self.assertRaises(ValueError, ApplyFailureDetector, 0)


class ReplaySql(unittest.TestCase):
    def test_insert_is_the_whole_row_as_untyped_literals(self):
        sql, args = statement(ITEMS, ResolvedChange("public", "items", ("k1",), {"id": "k1", "n": "-5", "content": None}))
        self.assertEqual(sql, 'INSERT INTO "public"."items" ("id", "content", "n") OVERRIDING SYSTEM VALUE VALUES (%s, %s, %s)')
        self.assertEqual(args, ["k1", None, "-5"])

    def test_delete_by_key(self):
        sql, args = statement(ITEMS, ResolvedChange("public", "items", ("k1",), {"id": "k1", "n": "1"}, deleted=True))
        self.assertEqual(sql, 'DELETE FROM "public"."items" WHERE "id" = %s')
        self.assertEqual(args, ["k1"])

    def test_names_are_quoted_and_percent_escaped(self):
        odd = Table("we\"ird", "50%", (Column("k%", "text", 25, -1, True),), ("k%",))
        sql, args = statement(odd, ResolvedChange("we\"ird", "50%", ("x",), {"k%": "x"}, deleted=True))
        self.assertEqual(sql, 'DELETE FROM "we""ird"."50%%" WHERE "k%%" = %s')


class QuarantineFile(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="electric-quarantine-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.store = QuarantineStore(os.path.join(self.dir, "data"), clock=lambda: 1000.0)
        self.store.startService()
        self.addCleanup(lambda: self.store.running and self.store.stopService())
        self.store.use_hub(b"\x01" * 8)

    def add(self, position=7, key=("k1",)):
        return self.store.add("pg_b", position, "public", "items", key, "upsert",
                              {"id": key[0], "n": "-5", "content": "x"}, "pg_a", b"\x00\x01", 1_700_000_000_000_000,
                              {"sqlstate": "23514", "message": "violates check constraint"})

    def test_entries_survive_restart_and_are_private(self):
        e = self.add()
        self.assertEqual(e.to_json()["row"], {"id": "k1", "n": "-5", "content": "x"})
        self.assertEqual(e.to_json()["transaction"], {"origin": "pg_a", "origin_id": "0001",
                                                      "commit_timestamp": 1_700_000_000_000_000})
        self.assertEqual(self.add().id, e.id)  # the same change again: the same entry
        self.assertEqual(self.store.set_aside("pg_b"), {7: {("public", "items", ("k1",))}})
        self.store.stopService()
        self.assertEqual(stat.S_IMODE(os.stat(self.store.path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(self.store.path)).st_mode), 0o700)
        self.store.startService()
        self.store.use_hub(b"\x01" * 8)
        self.assertEqual(self.store.set_aside("pg_b"), {7: {("public", "items", ("k1",))}})
        self.assertEqual([x.id for x in self.store.entries("pg_b")], [e.id])
        self.assertEqual(self.store.entries("pg_a"), [])

    def test_resent_entries_stay_set_aside(self):
        e = self.add()
        other = self.add(position=9, key=("k2",))
        self.store.mark_resent([e.id], 20)
        held = [x for x in self.store.entries("pg_b") if x.held]
        self.assertEqual([x.id for x in held], [other.id])
        self.assertEqual(self.store.entries("pg_b", [e.id])[0].to_json()["state"], "resent")
        self.assertEqual(self.store.counts(), {"pg_b": {"held": 1, "resent": 1}})
        # The original change is still never sent: its row went out again at position 20.
        self.assertIn(7, self.store.set_aside("pg_b"))

    def test_another_hubs_entries_are_ignored(self):
        self.add()
        self.store.use_hub(b"\x02" * 8)
        self.assertEqual(self.store.entries(), [])
        self.assertEqual(self.store.set_aside("pg_b"), {})


class EncoderSetsAside(unittest.TestCase):
    def test_only_the_set_aside_change_is_left_out(self):
        registry = SchemaRegistry()
        registry.register(ITEMS)
        registry.set_database_tables("pg_b", [ITEMS])
        aside = {}
        enc = OutboundEncoder(registry, "pg_b", 0, 0, clock=lambda: 0, set_aside=aside)
        rt = ResolvedTransaction(1, "pg_a", b"x", 1_700_000_000_000_000, (
            ResolvedChange("public", "items", ("bad",), {"id": "bad", "content": "c", "n": "-1"}),
            ResolvedChange("public", "items", ("good",), {"id": "good", "content": "c", "n": "1"}),
        ))
        aside[1] = {("public", "items", ("bad",))}  # the live map: changed after the encoder was made
        msgs = [pgoutput.decode(decode_replication(f[5:]).data) for f in enc.encode(rt)]
        inserts = [m for m in msgs if isinstance(m, pgoutput.Insert)]
        self.assertEqual([m.new[0] for m in inserts], ["good"])
        self.assertIsInstance(msgs[0], pgoutput.Begin)
        # The table's Relation goes before its first change that is sent (the set-aside one came first).
        self.assertIsInstance(msgs[1], pgoutput.Relation)
        self.assertIsInstance(msgs[-1], pgoutput.Commit)
        self.assertEqual((enc.set_aside_changes, enc.first_sent, enc.position), (1, 1, 1))


class QuarantineRequests(unittest.TestCase):
    """What the quarantine routes accept (electric.http.quarantine); the routes themselves run end to end."""

    def test_one_change(self):
        from electric.http.quarantine import _change
        self.assertEqual(_change({}), {})
        self.assertEqual(_change({"position": 7, "schema": "public", "table": "items", "key": ["k", 1]}),
                         {"position": 7, "schema": "public", "table": "items", "key": ["k", 1]})

    def test_refusals_say_why(self):
        from electric.http.quarantine import _change, _ids
        from electric.postgres.publisher.apply_failures import QuarantineError
        cases = [
            ({"position": 0, "schema": "s", "table": "t", "key": ["k"]}, "position must be a hub position"),
            ({"position": True, "schema": "s", "table": "t", "key": ["k"]}, "position must be a hub position"),
            ({"position": 1, "schema": "s", "table": 3, "key": ["k"]}, "schema and table must be strings"),
            ({"position": 1, "schema": "s", "table": "t", "key": []}, "key must be a non-empty list"),
            ({"position": 1, "schema": "s", "table": "t", "key": [{"x": 1}]}, "key must be a non-empty list"),
            ({"position": 1, "rows": []}, "unknown fields ['rows']"),
        ]
        for body, why in cases:
            with self.assertRaises(QuarantineError) as caught:
                _change(body)
            self.assertIn(why, str(caught.exception))
            self.assertEqual(caught.exception.status, 400)
        self.assertIsNone(_ids({}))
        self.assertEqual(_ids({"ids": [1, 2]}), [1, 2])
        for body in ({"ids": "1"}, {"ids": [True]}, {"id": [1]}):
            self.assertRaises(QuarantineError, _ids, body)


class EncoderSetsAsideInABigTransaction(unittest.TestCase):
    def test_items_of_one_position_share_its_set_aside_changes(self):
        registry = SchemaRegistry()
        registry.register(ITEMS)
        registry.set_database_tables("pg_b", [ITEMS])
        enc = OutboundEncoder(registry, "pg_b", 0, 4, clock=lambda: 0,
                              set_aside={5: {("public", "items", ("k3",))}})

        def item(keys, more):
            return ResolvedTransaction(5, "pg_a", b"x", 1_700_000_000_000_000, tuple(
                ResolvedChange("public", "items", (k,), {"id": k, "content": None, "n": "1"}) for k in keys), more=more)

        frames = enc.encode(item(["k1", "k2"], True)) + enc.encode(item(["k3", "k4"], False))
        msgs = [pgoutput.decode(decode_replication(f[5:]).data) for f in frames]
        self.assertEqual([m.new[0] for m in msgs if isinstance(m, pgoutput.Insert)], ["k1", "k2", "k4"])
        self.assertEqual([type(m).__name__ for m in msgs].count("Commit"), 1)
        self.assertEqual((enc.set_aside_changes, enc.first_sent, enc.position), (1, 5, 5))
