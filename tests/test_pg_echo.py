"""
Echo skipping on the Postgres side, without I/O: what the assembler learns
from the WAL (Origin messages of Electric's own applies), the ledger's
markers and regression guard, and the port-5433 encoder leaving out what the
hub decided the origin holds.  End to end: tests/test_pg_echo_e2e.py.
"""

from __future__ import annotations

from twisted.trial import unittest

from electric.hub import positions
from electric.hub.interface import ResolvedChange, ResolvedTransaction
from electric.postgres.echo import EchoLedger
from electric.postgres.publisher.outbound import OutboundEncoder, PayloadCache
from electric.postgres.protocol import pgoutput as po
from electric.postgres.source import assembly
from tests.test_pg_inbound_pure import ITEMS, REL, lookup_with, run
from tests.test_pg_publisher_session import decode_frames, make_registry


def tx(lsn, *body, origin=None, origin_lsn=0):
    msgs = [po.Begin(lsn, 1_000_000, 7)]
    if origin:
        msgs.append(po.Origin(origin_lsn, origin))
    msgs.extend(body)
    msgs.append(po.Commit(lsn, lsn + 0x30, 1_000_000))
    return msgs


class AssemblerLearns(unittest.TestCase):
    def setUp(self):
        self.trusted = {("public", "items"): 0}

        def trusted(schema, name, commit_lsn):
            since = self.trusted.get((schema, name))
            return since is not None and commit_lsn >= since

        self.a = assembly.TransactionAssembler("pg1", lookup_with({("public", "items"): ITEMS}),
                                               subscription_oid=16397, trusted=trusted)
        self.a.feed(REL)

    def local(self, lsn):
        [ev] = run(self.a, tx(lsn, po.Insert(16400, ("a", "x"))))
        return ev

    def test_applied_lsn_comes_from_our_apply_worker_only(self):
        self.assertEqual(self.local(0x100).applied_lsn, 0)  # nothing applied yet: new rows still qualify
        [ev] = run(self.a, tx(0x200, po.Insert(16400, ("b", "y")), origin="pg_16397", origin_lsn=0x500))
        self.assertEqual(ev.dropped, assembly.OWN_ORIGIN)
        self.assertEqual(self.local(0x300).applied_lsn, 0x500)
        # A table-sync worker's commit says nothing about the apply worker's position.
        run(self.a, tx(0x400, po.Insert(16400, ("c", "y")), origin="pg_16397_16400", origin_lsn=0x900))
        # Nor does another subscription's.
        run(self.a, tx(0x500, po.Insert(16400, ("d", "y")), origin="pg_99", origin_lsn=0xA00))
        self.assertEqual(self.local(0x600).applied_lsn, 0x500)
        # Never backwards within a stream.
        run(self.a, tx(0x700, po.Insert(16400, ("e", "y")), origin="pg_16397", origin_lsn=0x400))
        self.assertEqual(self.local(0x800).applied_lsn, 0x500)

    def test_untrusted_table_gives_nothing(self):
        self.trusted[("public", "items")] = 0x1000  # READY only from 0x1000 on
        self.assertIsNone(self.local(0x100).applied_lsn)
        self.assertEqual(self.local(0x1000).applied_lsn, 0)
        del self.trusted[("public", "items")]
        self.assertIsNone(self.local(0x2000).applied_lsn)

    def test_reset_and_another_subscription_forget(self):
        run(self.a, tx(0x200, po.Insert(16400, ("b", "y")), origin="pg_16397", origin_lsn=0x500))
        self.a.reset()
        self.a.feed(REL)
        self.assertEqual(self.local(0x300).applied_lsn, 0)
        run(self.a, tx(0x400, po.Insert(16400, ("b", "y")), origin="pg_16397", origin_lsn=0x500))
        self.a.set_subscription_oid(16398)
        self.assertEqual(self.local(0x500).applied_lsn, 0)

    def test_without_trust_callback_nothing(self):
        a = assembly.TransactionAssembler("pg1", lookup_with({("public", "items"): ITEMS}), subscription_oid=1)
        a.feed(REL)
        [ev] = run(a, tx(0x100, po.Insert(16400, ("a", "x"))))
        self.assertIsNone(ev.applied_lsn)


class Ledger(unittest.TestCase):
    def test_marker_names_subscription_and_base(self):
        bases = {"pg1": 0x1000}
        led = EchoLedger(bases.__getitem__)
        self.assertIsNone(led.marker("pg1"))
        led.subscription("pg1", 16397)
        self.assertEqual(led.marker("pg1"), "pg_16397@1000")
        bases["pg1"] = 0x2000
        self.assertEqual(led.marker("pg1"), "pg_16397@2000")

    def test_progress_going_backwards_stops_skipping_for_that_subscription(self):
        led = EchoLedger(lambda o: 0)
        led.subscription("pg1", 16397)
        led.saw_applied("pg1", 16397, 0x500)
        led.stream_starting("pg1", 0x500)  # normal restart: at or above what it applied
        self.assertIsNotNone(led.marker("pg1"))
        led.stream_starting("pg1", 0x100)
        self.assertIsNone(led.marker("pg1"))
        self.assertTrue(led.status("pg1")["regressed"])
        # A new subscription (set up again by the connector) starts clean.
        led.subscription("pg1", 16398)
        self.assertEqual(led.marker("pg1"), "pg_16398@0")


class EncoderLeavesOut(unittest.TestCase):
    def setUp(self):
        self.reg = make_registry()
        self.marker = "pg_1@0"

    def rt(self, position, *changes, origin="postgres_1"):
        return ResolvedTransaction(position, origin, b"x", 1_700_000_000_000_000, tuple(changes))

    def ch(self, key, holds=None, deleted=False):
        return ResolvedChange("public", "items", (key,), {"id": key, "content": "c", "n": "1"}, deleted, holds)

    def kinds(self, enc, rt):
        return [type(m).__name__ for _, m in decode_frames(enc.frames(rt))]

    def test_only_own_transactions_and_matching_marker(self):
        enc = OutboundEncoder(self.reg, "postgres_1", base=0, echo_marker=lambda: self.marker)
        # Whole transaction held: nothing sent, but the stream moves past it.
        self.assertEqual(self.kinds(enc, self.rt(1, self.ch("a", self.marker), self.ch("b", self.marker, True))), [])
        self.assertEqual(enc.wal_end, positions.end_lsn(1))
        self.assertEqual(enc.position, 1)
        ((lsn, _),) = decode_frames([enc.keepalive()])
        self.assertEqual(lsn, positions.end_lsn(1))
        # Partly held: only the others.
        out = decode_frames(enc.frames(self.rt(2, self.ch("a", self.marker), self.ch("b"))))
        self.assertEqual([type(m).__name__ for _, m in out], ["Begin", "Relation", "Insert", "Commit"])
        self.assertEqual(out[2][1].new[0], "b")
        # Another database's transaction: everything goes.
        self.assertEqual(self.kinds(enc, self.rt(3, self.ch("a", self.marker), origin="postgres_2")),
                         ["Begin", "Insert", "Commit"])
        # A stale marker (re-created subscription, re-based LSNs): everything goes.
        self.assertEqual(self.kinds(enc, self.rt(4, self.ch("a", "pg_0@0"))), ["Begin", "Insert", "Commit"])
        self.marker = None  # the ledger says no (regressed)
        self.assertEqual(self.kinds(enc, self.rt(5, self.ch("a", "pg_1@0"))), ["Begin", "Insert", "Commit"])
        self.assertEqual(enc.changes_not_echoed, 3)

    def test_big_transaction_items(self):
        enc = OutboundEncoder(self.reg, "postgres_1", base=0, echo_marker=lambda: self.marker)
        first = ResolvedTransaction(1, "postgres_1", b"x", 0, (self.ch("a", self.marker),), more=True)
        last = ResolvedTransaction(1, "postgres_1", b"x", 0, (self.ch("b"),))
        self.assertEqual(self.kinds(enc, first), [])
        self.assertTrue(enc.in_transaction)
        self.assertEqual(self.kinds(enc, last), ["Begin", "Relation", "Insert", "Commit"])

    def test_shared_payloads_with_rows_left_out_for_the_origin_only(self):
        """The origin's stream leaves its held rows out; a stream sharing the payloads still gets every row."""
        for origin_first in (True, False):
            cache = PayloadCache()
            own = OutboundEncoder(self.reg, "postgres_1", base=0, payloads=cache, echo_marker=lambda: self.marker)
            other = OutboundEncoder(self.reg, "postgres_2", base=0, payloads=cache,
                                    echo_marker=lambda: "pg_2@0")
            rt = self.rt(1, self.ch("a", self.marker), self.ch("b"), self.ch("c", self.marker, True),
                         self.ch("d"))
            encs = (own, other) if origin_first else (other, own)
            got = {enc.origin: decode_frames(enc.frames(rt)) for enc in encs}
            mine = [(lsn, m) for lsn, m in got["postgres_1"] if isinstance(m, (po.Insert, po.Delete))]
            theirs = [(lsn, m) for lsn, m in got["postgres_2"] if isinstance(m, (po.Insert, po.Delete))]
            self.assertEqual([m.new[0] for _, m in mine], ["b", "d"])
            self.assertEqual([type(m).__name__ for _, m in theirs], ["Insert", "Insert", "Delete", "Insert"])
            self.assertEqual([m.new[0] if isinstance(m, po.Insert) else m.key[0] for _, m in theirs],
                             ["a", "b", "c", "d"])
            # Each stream numbers the changes it sends itself.
            begin = positions.transaction_lsns(1, 0, 0).begin
            self.assertEqual([lsn for lsn, _ in mine], [begin, begin + 1])
            self.assertEqual([lsn for lsn, _ in theirs], [begin + i for i in range(4)])
            self.assertEqual((own.changes_not_echoed, other.changes_not_echoed), (2, 0))
            self.assertEqual((cache.misses, cache.hits), (4, 2))

    def test_without_marker_function_nothing_is_left_out(self):
        enc = OutboundEncoder(self.reg, "postgres_1", base=0)
        self.assertEqual(self.kinds(enc, self.rt(1, self.ch("a", self.marker))), ["Begin", "Relation", "Insert", "Commit"])
