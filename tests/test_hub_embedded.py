"""The embedded hub against a real SQLite file: durability, order, subscriptions, compaction."""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile

from twisted.internet import defer, reactor
from twisted.trial import unittest

from electric.hub.embedded import CATCH_UP_ORIGIN, EmbeddedHub
from electric.hub.interface import UNCHANGED, HubError, IHub, ISubscription, RowChange, SubscriptionClosed, Transaction
from tests.hub_helpers import dl, read_snapshot, tr, txn, up
from tests.polling import wait_until
from tests.seeds import seeded


class HubTestCase(unittest.TestCase):
    def setUp(self):
        self.dir = self.tempdir()
        self.hubs = []

    def tempdir(self):
        path = tempfile.mkdtemp(prefix="hubtest-")
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def make_hub(self, **kw):
        kw.setdefault("compact_interval", 0)
        hub = EmbeddedHub(self.dir, reactor, **kw)
        hub.startService()
        self.hubs.append(hub)
        self.addCleanup(self._stop, hub)
        return hub

    def _stop(self, hub):
        if hub._open:
            return hub.stopService()
        return None

    @defer.inlineCallbacks
    def reopen(self, hub, **kw):
        yield hub.stopService()
        return self.make_hub(**kw)


class AppendTests(HubTestCase):
    @defer.inlineCallbacks
    def test_append_resolves_and_orders(self):
        hub = self.make_hub()
        self.assertTrue(IHub.providedBy(hub))
        r1 = yield hub.append(txn(up("items", 1, content="a", n="1")))
        r2 = yield hub.append(txn(up("items", 1, content="b", n=UNCHANGED), origin="pg_b"))
        self.assertEqual((r1.position, r2.position), (1, 2))
        self.assertEqual(r2.origin, "pg_b")
        self.assertEqual(r2.changes[0].row, {"id": "1", "content": "b", "n": "1"})
        self.assertEqual(hub.head(), 2)

    @defer.inlineCallbacks
    def test_concurrent_appends_get_distinct_increasing_positions(self):
        hub = self.make_hub()
        ds = [hub.append(txn(up("items", i % 7, v=str(i)))) for i in range(300)]
        results = yield defer.gatherResults(ds)
        self.assertEqual([r.position for r in results], list(range(1, 301)))
        st = hub.status()
        self.assertEqual(st["head"], 300)
        self.assertEqual(st["row_count"], 7)
        # Group commit: fewer commits than appends under a burst.
        self.assertLess(st["commit_groups"], 300)

    @defer.inlineCallbacks
    def test_durable_across_reopen(self):
        hub = self.make_hub()
        yield hub.append(txn(up("items", 1, content="a"), up("items", 2, content="b")))
        yield hub.append(txn(dl("items", 2)))
        hub_id = hub.hub_id
        hub = yield self.reopen(hub)
        self.assertEqual(hub.head(), 2)
        self.assertEqual(hub.hub_id, hub_id)
        snap = yield read_snapshot(hub)
        self.assertEqual(snap.position, 2)
        self.assertEqual([(c.key, c.row) for c in snap.rows], [(("1",), {"id": "1", "content": "a"})])
        r = yield hub.append(txn(up("items", 2, content="again")))
        self.assertEqual(r.position, 3)
        self.assertEqual(r.changes[0].row, {"id": "2", "content": "again"})
        self.assertEqual(hub.status()["row_count"], 2)

    @defer.inlineCallbacks
    def test_duplicate_append_fires_with_earlier_result(self):
        hub = self.make_hub()
        t = txn(up("items", 1, content="a"), origin="satellite:c1", origin_id=b"lsn-1")
        r1 = yield hub.append(t)
        yield hub.append(txn(up("items", 1, content="b")))
        again = Transaction("satellite:c1", b"lsn-1", 5, (up("items", 1, content="zzz"),))
        r1b = yield hub.append(again)
        self.assertEqual(r1b, r1)
        self.assertEqual(hub.head(), 2)
        # Same within one commit group, and after reopening.
        t2 = txn(up("items", 9, content="x"), origin="o", origin_id=b"same")
        a, b = yield defer.gatherResults([hub.append(t2), hub.append(t2)])
        self.assertEqual(a, b)
        hub = yield self.reopen(hub)
        c = yield hub.append(t2)
        self.assertEqual(c, a)
        self.assertEqual(hub.head(), 3)
        self.assertEqual(hub.status()["duplicates"], 1)

    @defer.inlineCallbacks
    def test_bad_input_is_refused_and_loses_nothing(self):
        hub = self.make_hub()
        yield hub.append(txn(up("items", 1, content="a")))
        bad = [
            "not a transaction",
            Transaction("", b"x", 1, ()),
            Transaction("o", "not-bytes", 1, ()),
            Transaction("o", b"x", 1, (RowChange("public", "items", "merge", ("1",), {}),)),
            Transaction("o", b"x", 1, (RowChange("public", "items", "upsert", ("1",), {"n": 5}),)),
            Transaction("o", b"x", 1, (RowChange("public", "items", "upsert", (), {"n": "5"}),)),
        ]
        messages = []
        for b in bad:
            f = yield self.assertFailure(hub.append(b), HubError)
            messages.append(str(f))
        self.assertIn("expected a Transaction", messages[0])
        self.assertIn("origin", messages[1])
        self.assertIn("unknown op 'merge'", messages[3])
        self.assertIn("column 'n' has value 5", messages[4])
        self.assertIn("key must be a non-empty tuple", messages[5])
        r = yield hub.append(txn(up("items", 2, content="b")))
        self.assertEqual(r.position, 2)
        snap = yield read_snapshot(hub)
        self.assertEqual(len(snap.rows), 2)

    @defer.inlineCallbacks
    def test_closed_hub_refuses(self):
        hub = self.make_hub()
        yield hub.stopService()
        f = yield self.assertFailure(hub.append(txn(up("items", 1))), HubError)
        self.assertIn("not running", str(f))
        self.assertRaises(HubError, hub.subscribe, 0)

    def test_data_dir_used_by_another_hub_is_refused(self):
        self.make_hub()
        other = EmbeddedHub(self.dir, reactor, compact_interval=0)
        e = self.assertRaises(HubError, other.startService)
        self.assertIn("in use by another Electric process", str(e))

    def test_garbage_store_is_refused_clearly(self):
        with open(os.path.join(self.dir, "hub.sqlite3"), "wb") as f:
            f.write(b"definitely not sqlite " * 400)
        hub = EmbeddedHub(self.dir, reactor, compact_interval=0)
        e = self.assertRaises(HubError, hub.startService)
        self.assertIn("cannot open the hub store", str(e))
        # The lock was released: a hub on a fresh file in that directory starts.
        os.remove(os.path.join(self.dir, "hub.sqlite3"))
        self.make_hub()

    @defer.inlineCallbacks
    def test_stop_finishes_queued_commits(self):
        hub = self.make_hub()
        ds = [hub.append(txn(up("items", i, v="x"))) for i in range(200)]
        stopped = hub.stopService()
        results = yield defer.gatherResults(ds)
        yield stopped
        self.assertEqual(results[-1].position, 200)
        hub = self.make_hub()
        self.assertEqual(hub.head(), 200)


class SubscriptionTests(HubTestCase):
    @defer.inlineCallbacks
    def test_subscription_orders_wakes_and_closes(self):
        hub = self.make_hub()
        for i in range(5):
            yield hub.append(txn(up("items", i, v=str(i))))
        sub = hub.subscribe(2)
        self.assertTrue(ISubscription.providedBy(sub))
        got = yield sub.next(2)
        self.assertEqual([r.position for r in got], [3, 4])
        got = yield sub.next(10)
        self.assertEqual([r.position for r in got], [5])
        waiting = sub.next(10)
        self.assertFalse(waiting.called)
        f = yield self.assertFailure(sub.next(1), HubError)
        self.assertIn("outstanding", str(f))
        yield hub.append(txn(up("items", 9, v="9")))
        got = yield waiting
        self.assertEqual([r.position for r in got], [6])
        self.assertEqual(sub.position, 6)
        pending = sub.next(5)
        sub.close()
        yield self.assertFailure(pending, SubscriptionClosed)
        yield self.assertFailure(sub.next(5), SubscriptionClosed)

    @defer.inlineCallbacks
    def test_append_deferred_fires_before_consumers_see_entry(self):
        hub = self.make_hub()
        events = []
        sub = hub.subscribe(0)

        def consume(items):
            events.append(("seen", [r.position for r in items]))

        sub.next(10).addCallback(consume)
        d1 = hub.append(txn(up("items", 1)))
        d2 = hub.append(txn(up("items", 2)))
        d1.addCallback(lambda r: events.append(("acked", r.position)))
        d2.addCallback(lambda r: events.append(("acked", r.position)))
        yield defer.gatherResults([d1, d2])
        yield wait_until(lambda: any(e[0] == "seen" for e in events), what="the subscriber to see an entry")
        first_seen = next(i for i, e in enumerate(events) if e[0] == "seen")
        for p in events[first_seen][1]:
            self.assertLess(events.index(("acked", p)), first_seen)

    @defer.inlineCallbacks
    def test_consumer_looping_synchronously_over_a_long_backlog(self):
        hub = self.make_hub()
        yield defer.gatherResults([hub.append(txn(up("items", i))) for i in range(3000)])
        sub = hub.subscribe(0)
        seen = []
        done = defer.Deferred()

        def loop(items):
            seen.extend(r.position for r in items)
            if seen[-1] == 3000:
                done.callback(None)
            else:
                sub.next(1).addCallback(loop)

        sub.next(1).addCallback(loop)
        yield done
        self.assertEqual(seen, list(range(1, 3001)))

    @defer.inlineCallbacks
    def test_stop_while_reads_are_in_flight(self):
        hub = self.make_hub(tail_entries=1)
        yield defer.gatherResults([hub.append(txn(up("items", i))) for i in range(200)])
        pending = [hub.subscribe(i).next(50) for i in range(0, 100, 5)]
        snaps = [hub.snapshot().addCallback(lambda r: r.next(100)) for _ in range(3)]
        yield hub.stopService()
        results = yield defer.DeferredList(pending + snaps, consumeErrors=True)
        for ok, value in results:
            if not ok:
                value.trap(SubscriptionClosed, HubError)
        self.assertFalse(hub._readers)

    @defer.inlineCallbacks
    def test_stop_fails_waiting_subscription(self):
        hub = self.make_hub()
        sub = hub.subscribe(0)
        d = sub.next(1)
        yield hub.stopService()
        yield self.assertFailure(d, SubscriptionClosed)

    @defer.inlineCallbacks
    def test_old_entries_read_from_sqlite_in_bounded_batches(self):
        hub = self.make_hub(tail_entries=10)
        yield defer.gatherResults([hub.append(txn(up("items", i, v=str(i)))) for i in range(50)])
        self.assertEqual(hub.status()["tail_entries"], 10)
        sub = hub.subscribe(0)
        seen = []
        while len(seen) < 50:
            got = yield sub.next(7)
            self.assertLessEqual(len(got), 7)
            seen.extend(r.position for r in got)
        self.assertEqual(seen, list(range(1, 51)))
        self.assertEqual(got[-1].changes[0].row, {"id": "49", "v": "49"})

    @defer.inlineCallbacks
    def test_reopened_hub_serves_history(self):
        hub = self.make_hub()
        for i in range(3):
            yield hub.append(txn(up("items", i, v=str(i))))
        hub = yield self.reopen(hub)
        got = yield hub.subscribe(1).next(10)
        self.assertEqual([(r.position, r.changes[0].key) for r in got], [(2, ("1",)), (3, ("2",))])


class SnapshotTests(HubTestCase):
    @defer.inlineCallbacks
    def test_snapshot_then_subscribe_misses_nothing(self):
        hub = self.make_hub()
        for i in range(20):
            yield hub.append(txn(up("items", i, v="0"), up("other", i, v="o")))
        yield hub.append(txn(dl("items", 3)))
        # Appends racing with the snapshot.
        racing = [hub.append(txn(up("items", i, v="1"))) for i in range(20)]
        snap = yield read_snapshot(hub, [("public", "items")])
        yield defer.gatherResults(racing)
        self.assertTrue(all(c.table == "items" for c in snap.rows))
        rows = {c.key: dict(c.row) for c in snap.rows}
        sub = hub.subscribe(snap.position)
        while sub.position < hub.head():
            for r in (yield sub.next(100)):
                for c in r.changes:
                    if c.table != "items":
                        continue
                    if c.deleted:
                        rows.pop(c.key, None)
                    else:
                        rows[c.key] = dict(c.row)
        full = yield read_snapshot(hub, [("public", "items")])
        self.assertEqual(rows, {c.key: dict(c.row) for c in full.rows})
        self.assertEqual(full.position, hub.head())
        self.assertEqual(rows[("5",)], {"id": "5", "v": "1"})
        self.assertEqual(rows[("3",)], {"id": "3", "v": "1"})  # resurrected by the later upsert


class CompactionTests(HubTestCase):
    @defer.inlineCallbacks
    def test_compaction_respects_durable_consumers_and_catch_up(self):
        hub = self.make_hub(retain=0)
        pg = hub.subscribe(0, consumer="pg_a")
        for i in range(10):
            yield hub.append(txn(up("items", i % 4, v=str(i))))
        yield hub.append(txn(dl("items", 0)))
        horizon = yield hub.compact()
        self.assertEqual(horizon, 0)  # pg_a acked nothing yet
        hub.ack("pg_a", 6)
        horizon = yield hub.compact()
        self.assertEqual(horizon, 6)
        st = hub.status()
        self.assertEqual(st["log_length"], 5)
        self.assertEqual(st["consumers"], {"pg_a": {"acked": 6, "lag": 5}})
        db = sqlite3.connect(os.path.join(self.dir, "hub.sqlite3"))
        self.addCleanup(db.close)
        self.assertEqual(db.execute("SELECT min(position), count(*) FROM log").fetchone(), (7, 5))

        # pg_a continues from its ack with plain history.
        pg.close()
        got = yield hub.subscribe(6, consumer="pg_a").next(100)
        self.assertEqual([r.position for r in got], [7, 8, 9, 10, 11])
        self.assertFalse(got[0].catch_up)

        # A late joiner from 2 gets the current state of rows changed after 2, then the log.
        hub = yield self.reopen(hub, retain=0, tail_entries=1)
        late = hub.subscribe(2)
        got = yield late.next(100)
        self.assertEqual(len(got), 1)
        cu = got[0]
        self.assertTrue(cu.catch_up)
        self.assertEqual(cu.origin, CATCH_UP_ORIGIN)
        self.assertEqual(cu.position, 11)
        state = {c.key: (c.deleted, dict(c.row)) for c in cu.changes}
        self.assertEqual(
            state,
            {
                ("0",): (True, {"id": "0", "v": "8"}),
                ("1",): (False, {"id": "1", "v": "9"}),
                ("2",): (False, {"id": "2", "v": "6"}),
                ("3",): (False, {"id": "3", "v": "7"}),
            },
        )
        nxt = late.next(10)
        r = yield hub.append(txn(up("items", 5, v="new")))
        got = yield nxt
        self.assertEqual([x.position for x in got], [r.position])

        # Forgetting the consumer releases the log.
        hub.forget("pg_a")
        horizon = yield hub.compact()
        self.assertEqual(horizon, 12)
        self.assertEqual(hub.status()["log_length"], 0)
        self.assertEqual(hub.status()["consumers"], {})

    @defer.inlineCallbacks
    def test_live_subscription_overtaken_by_compaction_catches_up(self):
        hub = self.make_hub(retain=0, tail_entries=2)
        for i in range(6):
            yield hub.append(txn(up("items", i, v=str(i))))
        sub = hub.subscribe(0)
        got = yield sub.next(2)
        self.assertEqual([r.position for r in got], [1, 2])
        hub.ack("pg_a", 5)
        yield hub.compact()
        got = yield sub.next(100)
        self.assertEqual(len(got), 1)
        self.assertTrue(got[0].catch_up)
        self.assertEqual(got[0].position, 6)
        self.assertEqual(sorted(c.key for c in got[0].changes), [("2",), ("3",), ("4",), ("5",)])
        hub = yield self.reopen(hub, retain=0)
        self.assertEqual(hub.status()["consumers"], {"pg_a": {"acked": 5, "lag": 1}})
        self.assertEqual(hub.horizon, 5)

    @defer.inlineCallbacks
    def test_retain_keeps_recent_history_without_consumers(self):
        hub = self.make_hub(retain=3)
        for i in range(10):
            yield hub.append(txn(up("items", i)))
        horizon = yield hub.compact()
        self.assertEqual(horizon, 7)
        got = yield hub.subscribe(7).next(10)
        self.assertEqual([r.position for r in got], [8, 9, 10])

    @defer.inlineCallbacks
    def test_duplicate_of_compacted_transaction(self):
        hub = self.make_hub(retain=0)
        t = txn(up("items", 1, v="a"), origin="o", origin_id=b"1")
        r = yield hub.append(t)
        yield hub.append(txn(up("items", 2)))
        yield hub.compact()
        again = yield hub.append(t)
        self.assertEqual((again.position, again.origin, again.origin_id, again.changes), (r.position, "o", b"1", ()))
        self.assertEqual(hub.head(), 2)

    @defer.inlineCallbacks
    def test_truncate_through_the_hub(self):
        hub = self.make_hub()
        yield hub.append(txn(up("items", 1), up("items", 2), up("other", 1)))
        r = yield hub.append(txn(tr("items"), up("items", 3)))
        self.assertEqual([(c.key, c.deleted) for c in r.changes], [(("1",), True), (("2",), True), (("3",), False)])
        self.assertEqual(hub.status()["row_count"], 2)


class PositionTests(HubTestCase):
    @defer.inlineCallbacks
    def test_client_lsn_round_trip_and_foreign(self):
        hub = self.make_hub()
        lsn = hub.client_lsn(42)
        self.assertEqual(hub.position_from_client_lsn(lsn), 42)
        other = EmbeddedHub(self.tempdir(), reactor, compact_interval=0)
        other.startService()
        self.addCleanup(other.stopService)
        with self.assertRaises(ValueError) as e:
            other.position_from_client_lsn(lsn)
        self.assertIn("not this hub", str(e.exception))
        hub = yield self.reopen(hub)
        self.assertEqual(hub.position_from_client_lsn(lsn), 42)


class InterfaceTests(HubTestCase):
    def test_embedded_hub_provides_ihub(self):
        from zope.interface.verify import verifyObject

        hub = self.make_hub()
        self.assertTrue(verifyObject(IHub, hub))
        sub = hub.subscribe(0)
        self.assertTrue(verifyObject(ISubscription, sub))
        sub.close()

    @defer.inlineCallbacks
    def test_has_consumer_survives_restarts_until_forgotten(self):
        hub = self.make_hub()
        self.assertFalse(hub.has_consumer("pg:postgres_1"))
        hub.subscribe(0, "pg:postgres_1").close()
        hub.ack("pg:postgres_2", 0)
        self.assertTrue(hub.has_consumer("pg:postgres_1"))
        hub = yield self.reopen(hub)
        self.assertTrue(hub.has_consumer("pg:postgres_1"))
        self.assertTrue(hub.has_consumer("pg:postgres_2"))
        hub.forget("pg:postgres_1")
        self.assertFalse(hub.has_consumer("pg:postgres_1"))
        hub = yield self.reopen(hub)
        self.assertFalse(hub.has_consumer("pg:postgres_1"))
        yield hub.stopService()
        self.assertRaises(HubError, hub.has_consumer, "pg:postgres_2")


class EquivalenceTests(HubTestCase):
    @seeded(11, 12, 13)
    @defer.inlineCallbacks
    def test_sqlite_hub_resolves_exactly_like_the_reference(self, rnd):
        """The rows table inside the write transaction behaves as the pure rule says."""
        from electric.hub.resolution import MemoryState

        self.dir = self.tempdir()  # a hub of its own for each seed
        ref = MemoryState()
        hub = self.make_hub(tail_entries=50)
        txns = []
        for i in range(400):
            chs = []
            for _ in range(rnd.randint(1, 4)):
                k = rnd.randrange(12)
                table = rnd.choice(["items", "other"])
                p = rnd.random()
                if p < 0.55:
                    vals = {c: rnd.choice(["a", "b", None, UNCHANGED, "ü ☃ \x00"]) for c in rnd.sample(["x", "y", "z"], 2)}
                    old = {"id": str(k), "x": "a", "y": "b"} if rnd.random() < 0.3 else None
                    chs.append(up(table, k, old=old, **vals))
                elif p < 0.9:
                    chs.append(dl(table, k, x=rnd.choice(["a", None])))
                else:
                    chs.append(tr(table))
            txns.append(txn(*chs, origin=rnd.choice(["a", "b", "c"])))
        expected = [ref.resolve_and_apply(t).changes for t in txns]
        got = yield defer.gatherResults([hub.append(t) for t in txns])
        self.assertEqual([r.changes for r in got], expected)
        # And the same through the log read back from SQLite.
        sub = hub.subscribe(0)
        read = []
        while len(read) < len(txns):
            read.extend((yield sub.next(64)))
        self.assertEqual([r.changes for r in read], expected)
        snap = yield read_snapshot(hub)
        self.assertEqual({(c.schema, c.table, c.key): dict(c.row) for c in snap.rows}, ref.live())
        self.assertEqual(hub.status()["row_count"], len(ref.live()))
        hub = yield self.reopen(hub)
        self.assertEqual(hub.status()["row_count"], len(ref.live()))


class BadValueTests(HubTestCase):
    @defer.inlineCallbacks
    def test_unstorable_text_fails_only_its_transaction(self):
        hub = self.make_hub()
        good1 = hub.append(txn(up("items", 1, v="ok")))
        bad = hub.append(txn(up("items", 2, v="lone surrogate \ud800")))
        good2 = hub.append(txn(up("items", 3, v="ok")))
        r1 = yield good1
        f = yield self.assertFailure(bad, HubError)
        self.assertIn("value of column 'v' is not valid Unicode text (surrogates not allowed", str(f))
        r3 = yield good2
        self.assertEqual((r1.position, r3.position), (1, 2))
        snap = yield read_snapshot(hub)
        self.assertEqual(sorted(c.key for c in snap.rows), [("1",), ("3",)])
        self.assertEqual(hub.status()["row_count"], 2)
        got = yield hub.subscribe(0).next(10)
        self.assertEqual([r.position for r in got], [1, 2])


class StorageFailureTests(HubTestCase):
    @defer.inlineCallbacks
    def test_transaction_failing_in_storage_fails_alone(self):
        hub = self.make_hub()
        yield hub.append(txn(up("items", 1, v="before")))
        db = sqlite3.connect(os.path.join(self.dir, "hub.sqlite3"), isolation_level=None)
        db.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON log WHEN NEW.origin = 'boom' "
            "BEGIN SELECT RAISE(ABORT, 'injected storage failure'); END"
        )
        db.close()
        ds = [
            hub.append(txn(up("items", 2, v="a"))),
            hub.append(txn(up("items", 1, v="lost"), up("items", 3, v="lost"), origin="boom")),
            hub.append(txn(up("items", 4, v="b"))),
        ]
        a = yield ds[0]
        f = yield self.assertFailure(ds[1], HubError)
        b = yield ds[2]
        self.assertIn("injected storage failure", str(f))
        self.assertEqual((a.position, b.position), (2, 3))
        self.assertEqual(len(self.flushLoggedErrors()), 1)
        snap = yield read_snapshot(hub)
        self.assertEqual({c.key: c.row["v"] for c in snap.rows}, {("1",): "before", ("2",): "a", ("4",): "b"})
        self.assertEqual(hub.status()["row_count"], 3)
        hub = yield self.reopen(hub)
        self.assertEqual(hub.head(), 3)
        got = yield hub.subscribe(0).next(10)
        self.assertEqual([r.position for r in got], [1, 2, 3])
