"""
Hub v2 against a real SQLite file: transactions of any size in chunks
(begin/add/commit with staging and dedup), chunked log, bounded subscription
answers, chunked catch-up and streaming snapshots.  The hubs here use a tiny
chunk so every multi-chunk path runs with a few dozen rows.
"""

from __future__ import annotations

import os
import sqlite3

from twisted.internet import defer, reactor
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from electric.hub import store
from electric.hub.embedded import CATCH_UP_ORIGIN, EmbeddedHub
from electric.hub.interface import (
    UNCHANGED,
    Committed,
    HubError,
    IAppendBuffer,
    IHub,
    ISnapshotReader,
    RowChange,
    Transaction,
    WriteGuard,
)
from electric.hub.resolution import InvalidTransaction
from electric.hub.resolution import MemoryState
from tests.hub_helpers import dl, read_snapshot, read_transactions, tr, txn, up
from tests.seeds import seeded
from tests.test_hub_embedded import HubTestCase

CHUNK = 10


def rows_of(changes):
    return {(c.schema, c.table, c.key): (c.deleted, dict(c.row)) for c in changes}


def apply(state, changes):
    for c in changes:
        state[(c.schema, c.table, c.key)] = dict(c.row) if not c.deleted else None
    return state


def live(state):
    return {k: v for k, v in state.items() if v is not None}


class ChunkedTestCase(HubTestCase):
    def make_hub(self, **kw):
        kw.setdefault("chunk", CHUNK)
        return super().make_hub(**kw)

    def spill_files(self):
        d = os.path.join(self.dir, "spill")
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def db(self):
        conn = sqlite3.connect(os.path.join(self.dir, "hub.sqlite3"))
        self.addCleanup(conn.close)
        return conn

    @defer.inlineCallbacks
    def commit_big(self, hub, changes, origin="pg_a", origin_id=b"big", ts=1_700_000_000_000_000, add_size=7):
        buf = hub.begin(origin, origin_id, ts)
        for i in range(0, len(changes), add_size):
            yield buf.add(changes[i:i + add_size])
        result = yield buf.commit()
        return result


class BeginAddCommitTests(ChunkedTestCase):
    @defer.inlineCallbacks
    def test_big_transaction_is_one_position_served_in_items(self):
        hub = self.make_hub()
        self.assertTrue(verifyObject(IHub, hub))
        yield hub.append(txn(up("items", 0, v="before")))
        sub = hub.subscribe(0)
        changes = [up("items", i, v=f"v{i}") for i in range(35)] + [dl("items", 0)]
        buf = hub.begin("pg_a", b"\x00\x01", 77)
        self.assertTrue(verifyObject(IAppendBuffer, buf))
        self.assertEqual((buf.origin, buf.origin_id), ("pg_a", b"\x00\x01"))
        first = yield sub.next(100)
        self.assertEqual([r.position for r in first], [1])
        waiting = sub.next(100)
        for i in range(0, len(changes), 7):
            yield buf.add(changes[i:i + 7])
            # Staged, not visible: no position, nothing for consumers, not in snapshots.
            self.assertEqual(hub.head(), 1)
            self.assertFalse(waiting.called)
        self.assertEqual(hub.status()["staging"], {"transactions": 1, "changes": 36})
        self.assertEqual(len(self.spill_files()), 1)
        spill = os.path.join(self.dir, "spill")
        self.assertEqual(os.stat(spill).st_mode & 0o777, 0o700)  # staged rows are private data
        self.assertEqual(os.stat(os.path.join(spill, self.spill_files()[0])).st_mode & 0o777, 0o600)
        snap = yield read_snapshot(hub)
        self.assertEqual(len(snap.rows), 1)
        result = yield buf.commit()
        self.assertEqual(result, Committed(2, "pg_a", b"\x00\x01", 77, 36, duplicate=False))
        self.assertEqual(self.spill_files(), [])
        self.assertEqual(hub.status()["staging"], {"transactions": 0, "changes": 0})
        items = [(yield waiting)]
        while items[-1][-1].more:
            items.append((yield sub.next(100)))
        # One item per answer, each one stored chunk, all at position 2, `more` on all but the last.
        self.assertEqual([len(answer) for answer in items], [1, 1, 1, 1])
        flat = [answer[0] for answer in items]
        self.assertEqual([len(i.changes) for i in flat], [10, 10, 10, 6])
        self.assertEqual([i.more for i in flat], [True, True, True, False])
        self.assertEqual({(i.position, i.origin, i.origin_id, i.commit_timestamp) for i in flat}, {(2, "pg_a", b"\x00\x01", 77)})
        self.assertEqual(sub.position, 2)
        ref = MemoryState()
        ref.resolve_and_apply(txn(up("items", 0, v="before")))
        expected = ref.resolve_and_apply(Transaction("pg_a", b"\x00\x01", 77, tuple(changes))).changes
        self.assertEqual(tuple(c for i in flat for c in i.changes), expected)
        self.assertEqual(hub.status()["row_count"], 34)
        self.assertEqual(self.db().execute("SELECT chunks, n FROM log WHERE position = 2").fetchone(), (4, 36))
        self.assertEqual(self.db().execute("SELECT count(*) FROM log_chunk WHERE position = 2").fetchone(), (3,))
        # A small transaction after it comes as one item again.
        r = yield hub.append(txn(up("items", 99)))
        got = yield sub.next(100)
        self.assertEqual([(i.position, i.more) for i in got], [(r.position, False)])

    @defer.inlineCallbacks
    def test_commit_answers_before_consumers_see_it(self):
        hub = self.make_hub()
        events = []
        sub = hub.subscribe(0)
        seen = sub.next(10).addCallback(lambda items: events.append(("seen", items[0].position)))
        buf = hub.begin("o", b"1")
        yield buf.add([up("items", i) for i in range(25)])
        d = buf.commit(5)
        d.addCallback(lambda c: events.append(("committed", c.position)))
        yield defer.gatherResults([d, seen])
        self.assertEqual(events, [("committed", 1), ("seen", 1)])

    @defer.inlineCallbacks
    def test_small_commit_is_one_item_from_the_tail(self):
        hub = self.make_hub()
        c = yield self.commit_big(hub, [up("items", 1, v="a"), up("items", 2, v="b")], origin_id=b"s")
        self.assertEqual((c.position, c.change_count), (1, 2))
        got = yield hub.subscribe(0).next(10)
        self.assertEqual([(i.position, len(i.changes), i.more) for i in got], [(1, 2, False)])
        self.assertEqual(hub.status()["tail_entries"], 1)

    @defer.inlineCallbacks
    def test_empty_commit_and_abort(self):
        hub = self.make_hub()
        c = yield hub.begin("o", b"empty", 3).commit()
        self.assertEqual((c.position, c.change_count, c.duplicate), (1, 0, False))
        got = yield hub.subscribe(0).next(10)
        self.assertEqual([(i.position, i.changes, i.more) for i in got], [(1, (), False)])
        buf = hub.begin("o", b"gone")
        yield buf.add([up("items", i) for i in range(30)])
        self.assertEqual(len(self.spill_files()), 1)
        yield buf.abort()
        self.assertEqual(self.spill_files(), [])
        yield self.assertFailure(buf.add([up("items", 1)]), HubError)
        f = yield self.assertFailure(buf.commit(), HubError)
        self.assertIn("finished", str(f))
        self.assertEqual(hub.head(), 1)
        self.assertIsNone((yield hub.applied("o", b"gone")))
        # The same identity can still be committed later.
        c = yield self.commit_big(hub, [up("items", 1)], origin="o", origin_id=b"gone")
        self.assertEqual((c.position, c.duplicate), (2, False))

    @defer.inlineCallbacks
    def test_dedup_for_commits_and_appends(self):
        hub = self.make_hub()
        big = [up("items", i, v="x") for i in range(23)]
        c1 = yield self.commit_big(hub, big, origin="pg_a", origin_id=b"L1")
        self.assertEqual(c1.position, 1)
        self.assertEqual((yield hub.applied("pg_a", b"L1")), 1)
        self.assertIsNone((yield hub.applied("pg_a", b"L2")))
        # Re-sent after a crash: known at begin, so nothing is staged again.
        buf = hub.begin("pg_a", b"L1", 9)
        for i in range(0, 23, 5):
            yield buf.add([up("items", k, v="changed") for k in range(i, min(23, i + 5))])
        self.assertEqual(hub.status()["staging"]["changes"], 0)
        self.assertEqual(self.spill_files(), [])
        c2 = yield buf.commit()
        self.assertEqual(c2, Committed(1, "pg_a", b"L1", c1.commit_timestamp, 23, duplicate=True))
        # Two buffers of one identity racing: the second commit is the duplicate.
        b1, b2 = hub.begin("pg_a", b"L3"), hub.begin("pg_a", b"L3")
        yield b1.add([up("items", 50, v="one")])
        yield b2.add([up("items", 50, v="two")])
        r1, r2 = yield defer.gatherResults([b1.commit(), b2.commit()])
        self.assertEqual((r1.duplicate, r2.duplicate, r1.position, r2.position), (False, True, 2, 2))
        # append() of a committed identity answers with the earlier position.
        again = yield hub.append(Transaction("pg_a", b"L3", 1, (up("items", 50, v="three"),)))
        self.assertEqual((again.position, [c.row["v"] for c in again.changes]), (2, ["one"]))
        again = yield hub.append(Transaction("pg_a", b"L1", 1, (up("items", 1),)))
        self.assertEqual((again.position, again.changes), (1, ()))  # a multi-chunk entry is not re-read
        # A commit of an appended identity is a duplicate too.
        r = yield hub.append(txn(up("items", 60), origin="sat", origin_id=b"c1"))
        c = yield self.commit_big(hub, [up("items", 61)], origin="sat", origin_id=b"c1")
        self.assertEqual((c.position, c.duplicate, c.change_count), (r.position, True, 1))
        self.assertEqual(hub.head(), 3)
        snap = yield read_snapshot(hub)
        self.assertEqual({c.key: c.row["v"] for c in snap.rows if c.key == ("50",)}, {("50",): "one"})
        hub = yield self.reopen(hub, chunk=CHUNK)
        c = yield self.commit_big(hub, big, origin="pg_a", origin_id=b"L1")
        self.assertEqual((c.position, c.duplicate), (1, True))
        self.assertEqual(hub.status()["duplicates"], 1)

    @defer.inlineCallbacks
    def test_bad_chunk_breaks_only_its_buffer(self):
        hub = self.make_hub()
        buf = hub.begin("o", b"bad")
        yield buf.add([up("items", 1)])
        f = yield self.assertFailure(buf.add([up("items", 2), up("items", 3, v=5)]), HubError)
        self.assertIn("column 'v' has value 5", str(f))
        f2 = yield self.assertFailure(buf.add([up("items", 4)]), HubError)
        self.assertEqual(str(f2), str(f))
        yield self.assertFailure(buf.commit(), HubError)
        yield buf.abort()
        self.assertEqual(self.spill_files(), [])
        r = yield hub.append(txn(up("items", 9)))
        self.assertEqual(r.position, 1)
        self.assertEqual(hub.status()["rejected"], 1)
        for bad in [("", b"x"), ("o", "str-id"), ("o", b"x", "not-int")]:
            self.assertRaises(HubError, hub.begin, *bad)
        f = yield self.assertFailure(hub.begin("o", b"y").commit("soon"), HubError)
        self.assertIn("must be an int", str(f))

    @defer.inlineCallbacks
    def test_one_add_at_a_time(self):
        hub = self.make_hub()
        buf = hub.begin("o", b"1")
        d1 = buf.add([up("items", i) for i in range(50)])
        f = yield self.assertFailure(buf.add([up("items", 99)]), HubError)
        self.assertIn("outstanding", str(f))
        yield self.assertFailure(buf.commit(), HubError)
        yield d1
        c = yield buf.commit()
        self.assertEqual(c.change_count, 50)

    @defer.inlineCallbacks
    def test_stop_with_open_buffers_leaves_no_trace(self):
        hub = self.make_hub()
        buf = hub.begin("o", b"1")
        yield buf.add([up("items", i) for i in range(30)])
        committing = hub.begin("o", b"2")
        yield committing.add([up("items", i, v="c") for i in range(30)])
        d = committing.commit()
        yield hub.stopService()
        c = yield d  # queued before the stop: completes
        self.assertEqual(c.position, 1)
        f = yield self.assertFailure(buf.add([up("items", 1)]), HubError)
        self.assertIn("hub stopped", str(f))
        yield self.assertFailure(buf.commit(), HubError)
        self.assertEqual(self.spill_files(), [])
        hub = self.make_hub()
        self.assertEqual(hub.head(), 1)
        self.assertEqual(hub.status()["row_count"], 30)
        self.assertRaises(HubError, EmbeddedHub(self.tempdir(), reactor).begin, "o", b"1")


class EquivalenceTests(ChunkedTestCase):
    @seeded(1, 2)
    @defer.inlineCallbacks
    def test_chunked_resolution_equals_the_rule(self, rnd):
        """Staged commits, chunked storage and chunked reads give exactly what `resolve` says, truncates included."""
        self.dir = self.tempdir()  # a hub of its own for each seed
        ref = MemoryState()
        hub = self.make_hub(tail_entries=5)
        expected = []
        results = []
        for i in range(60):
            chs = []
            for _ in range(rnd.choice([1, 3, 12, 40])):
                k = rnd.randrange(30)
                table = rnd.choice(["items", "other"])
                p = rnd.random()
                if p < 0.6:
                    vals = {c: rnd.choice(["a", "b", None, UNCHANGED, "ü ☃ \x00", ""]) for c in rnd.sample(["x", "y", "z"], 2)}
                    old = {"id": str(k), "x": "a", "y": "b"} if rnd.random() < 0.3 else None
                    chs.append(up(table, k, old=old, **vals))
                elif p < 0.95:
                    chs.append(dl(table, k, x=rnd.choice(["a", None])))
                else:
                    chs.append(tr(table))
            t = txn(*chs, origin=rnd.choice(["a", "b"]))
            expected.append(ref.resolve_and_apply(t).changes)
            if rnd.random() < 0.5:
                results.append((yield hub.append(t)).position)
            else:
                results.append((yield self.commit_big(hub, list(t.changes), t.origin, t.origin_id,
                                                      t.commit_timestamp, add_size=rnd.choice([1, 4, 25]))).position)
        self.assertEqual(results, list(range(1, 61)))
        sub = hub.subscribe(0)
        got = yield read_transactions(sub, 60, max_items=rnd.choice([1, 3, 100]))
        self.assertEqual([r.changes for r in got], expected)
        snap = yield read_snapshot(hub, max_rows=7)
        self.assertEqual({(c.schema, c.table, c.key): dict(c.row) for c in snap.rows}, ref.live())
        self.assertEqual(hub.status()["row_count"], len(ref.live()))

    @seeded(3, 4)
    @defer.inlineCallbacks
    def test_appends_grouped_in_one_commit_equal_the_rule(self, rnd):
        """
        Appends queued together are stored as runs (one lookup and one
        INSERT per table for the run): positions, resolved changes and row
        states are exactly what resolving them one by one gives, with
        refused writes, duplicates, truncates and big commits in between.
        """
        self.dir = self.tempdir()
        ref = MemoryState()
        hub = self.make_hub(tail_entries=5)
        owner = WriteGuard(owner_column="x", owner="me")
        submitted = []  # (Deferred, expected changes or None when refused, index it duplicates or None, txn)
        for i in range(120):
            chs = []
            for _ in range(rnd.choice([1, 1, 2, 5, 12])):
                k = rnd.randrange(25)
                if rnd.random() < 0.8:
                    vals = {c: rnd.choice(["a", "me", None, UNCHANGED, "ü"]) for c in rnd.sample(["x", "y"], 2)}
                    chs.append(up("items", k, **vals))
                else:
                    chs.append(dl("items", k, y="gone"))
            p = rnd.random()
            if p < 0.05:
                chs.append(tr("items"))
            elif p < 0.15:
                chs = [RowChange(c.schema, c.table, c.op, c.key, c.values, c.old_values, owner) for c in chs]
            stored = [j for j, s in enumerate(submitted) if s[1] is not None]
            if rnd.random() < 0.1 and stored:
                # The same identity again (the original may still be queued): answered as a duplicate.
                j = rnd.choice(stored)
                again = submitted[j][3]
                submitted.append((hub.append(again), None, j, again))
                continue
            t = txn(*chs, origin=rnd.choice(["a", "b"]), origin_id=b"%d" % i)
            try:
                want = ref.resolve_and_apply(t).changes
            except InvalidTransaction:
                want = None
            if want is not None and len(t.changes) > CHUNK and rnd.random() < 0.5:
                # Staged then committed behind everything queued so far.
                big = yield self.commit_big(hub, list(t.changes), t.origin, t.origin_id, t.commit_timestamp,
                                            add_size=7)
                submitted.append((defer.succeed(big), want, None, t))
            else:
                submitted.append((hub.append(t), want, None, t))
        outcomes = yield defer.DeferredList([d for d, *_ in submitted], consumeErrors=True)
        self.flushLoggedErrors()
        positions = []
        for i, ((ok, result), (_, want, dup, _t)) in enumerate(zip(outcomes, submitted)):
            if dup is not None:
                first_ok, first = outcomes[dup]
                if first_ok:
                    self.assertTrue(ok, f"#{i}: {result}")
                    self.assertEqual(result.position, first.position)
                continue
            if want is None:
                self.assertFalse(ok, f"#{i} should have been refused")
                self.assertIn("invalid transaction", result.getErrorMessage())
                continue
            self.assertTrue(ok, f"#{i}: {result}")
            positions.append(result.position)
        self.assertEqual(positions, list(range(1, len(positions) + 1)))
        expected = [want for (_, want, dup, _t) in submitted if dup is None and want is not None]
        got = yield read_transactions(hub.subscribe(0), len(positions), max_items=50)
        self.assertEqual([r.changes for r in got], expected)
        snap = yield read_snapshot(hub, max_rows=7)
        self.assertEqual({(c.schema, c.table, c.key): dict(c.row) for c in snap.rows}, ref.live())
        self.assertEqual(hub.status()["row_count"], len(ref.live()))

    @defer.inlineCallbacks
    def test_truncate_of_a_big_table_in_key_order(self):
        hub = self.make_hub()
        keys = ["b", "a", "ab", "a\x00", "", "é", "z", "B", "☃", "a b"]
        rows = [RowChange("public", "t", "upsert", (k, None if i % 3 == 0 else str(i)), {"k": k, "n": str(i)})
                for i, k in enumerate(keys * 3)]
        ref = MemoryState()
        t1 = Transaction("o", b"1", 1, tuple(rows))
        t2 = Transaction("o", b"2", 2, (tr("t"), rows[0], tr("t"), tr("t")))
        for t in (t1, t2):
            ref_changes = ref.resolve_and_apply(t).changes
            c = yield self.commit_big(hub, list(t.changes), t.origin, t.origin_id, t.commit_timestamp)
            got = yield read_transactions(hub.subscribe(c.position - 1), c.position)
            self.assertEqual(got[0].changes, ref_changes)
        self.assertEqual(hub.status()["row_count"], 0)
        self.assertEqual(len(ref_changes), 32)


class BoundedReadTests(ChunkedTestCase):
    @defer.inlineCallbacks
    def test_answers_hold_at_most_one_chunk_of_changes(self):
        hub = self.make_hub(tail_entries=4)
        sizes = [3, 4, 2, 10, 1, 1, 12, 5, 5]
        for n, size in enumerate(sizes):
            yield hub.append(txn(*[up("items", f"{n}-{i}") for i in range(size)]))
        for start in (0, 5):  # from SQLite, and from the in-memory tail
            sub = hub.subscribe(start)
            answers = []
            while sub.position < len(sizes):
                answers.append((yield sub.next(100)))
            for answer in answers:
                self.assertTrue(answer)
                if len(answer) > 1:
                    self.assertLessEqual(sum(len(i.changes) for i in answer), CHUNK)
            flat = [(i.position, len(i.changes), i.more) for a in answers for i in a]
            expected = []
            for p, size in enumerate(sizes, 1):
                if p <= start:
                    continue
                if size > CHUNK:
                    expected += [(p, CHUNK, True), (p, size - CHUNK, False)]
                else:
                    expected.append((p, size, False))
            self.assertEqual(flat, expected)
        # max_items still limits the number of items.
        got = yield hub.subscribe(4).next(2)
        self.assertEqual([i.position for i in got], [5, 6])

    @defer.inlineCallbacks
    def test_consumer_leaving_mid_transaction_gets_it_whole_again(self):
        hub = self.make_hub()
        yield hub.append(txn(up("items", "x")))
        yield self.commit_big(hub, [up("items", i) for i in range(25)])
        sub = hub.subscribe(1)
        a = yield sub.next(10)
        b = yield sub.next(10)
        self.assertEqual([(i.position, i.more) for i in a + b], [(2, True), (2, True)])
        self.assertEqual(sub.position, 1)
        self.assertEqual(sub.in_transaction, 2)
        sub.close()
        again = yield read_transactions(hub.subscribe(sub.position), 2)
        self.assertEqual([len(t.changes) for t in again], [25])

    @defer.inlineCallbacks
    def test_compaction_keeps_an_entry_being_read(self):
        hub = self.make_hub(retain=0)
        yield self.commit_big(hub, [up("items", i) for i in range(25)])
        yield hub.append(txn(up("items", "after")))
        sub = hub.subscribe(0)
        first = yield sub.next(10)
        self.assertTrue(first[0].more)
        horizon = yield hub.compact()
        self.assertEqual(horizon, 0)
        rest = yield read_transactions(sub, 2)
        self.assertEqual([len(t.changes) for t in rest[:1]], [15])
        self.assertEqual((yield hub.compact()), 2)

    @defer.inlineCallbacks
    def test_entry_compacted_under_a_reader_fails_it_clearly(self):
        hub = self.make_hub(retain=0)
        yield self.commit_big(hub, [up("items", i) for i in range(25)])
        yield hub.append(txn(up("items", "after")))
        sub = hub.subscribe(0)
        yield sub.next(10)
        db = sqlite3.connect(os.path.join(self.dir, "hub.sqlite3"), isolation_level=None)
        db.execute("DELETE FROM log_chunk")  # as if compaction raced the read
        db.close()
        f = yield self.assertFailure(sub.next(10), HubError)
        self.assertIn("compacted away while being read; resubscribe from 0", str(f))
        self.assertTrue(sub.closed)
        self.assertEqual(len(self.flushLoggedErrors()), 0)


class CatchUpTests(ChunkedTestCase):
    @defer.inlineCallbacks
    def test_catch_up_arrives_in_chunks_from_one_position(self):
        hub = self.make_hub(retain=0, tail_entries=1)
        yield self.commit_big(hub, [up("items", i, v="0") for i in range(40)], origin_id=b"load")
        for i in range(5):
            yield hub.append(txn(up("items", i, v="1"), dl("items", 30 + i)))
        yield hub.compact()
        self.assertEqual(hub.horizon, 6)
        sub = hub.subscribe(0)
        items = []
        while sub.position < 6:
            got = yield sub.next(100)
            self.assertEqual(len(got), 1)
            items.extend(got)
        self.assertEqual([len(i.changes) for i in items], [10, 10, 10, 10])
        self.assertEqual([i.more for i in items], [True, True, True, False])
        self.assertTrue(all(i.catch_up and i.position == 6 and i.origin == CATCH_UP_ORIGIN for i in items))
        state = rows_of(c for i in items for c in i.changes)
        self.assertEqual(len(state), 40)
        self.assertEqual(state[("public", "items", ("0",))], (False, {"id": "0", "v": "1"}))
        self.assertEqual(state[("public", "items", ("30",))], (True, {"id": "30", "v": "0"}))
        r = yield hub.append(txn(up("items", "new")))
        got = yield sub.next(10)
        self.assertEqual([(i.position, i.catch_up) for i in got], [(r.position, False)])

    @defer.inlineCallbacks
    def test_rows_written_during_a_catch_up_come_from_the_log(self):
        hub = self.make_hub(retain=0)
        for i in range(30):
            yield hub.append(txn(up("items", i, v="old")))
        yield hub.compact()
        sub = hub.subscribe(5)
        first = yield sub.next(10)
        self.assertTrue(first[0].catch_up and first[0].more)
        upto = first[0].position
        # Writes while the consumer is in the middle of the catch-up.
        yield hub.append(txn(up("items", 29, v="new"), up("items", 3, v="new"), dl("items", 28)))
        state = apply({}, first[0].changes)
        rest = yield read_transactions(sub, hub.head())
        self.assertEqual(rest[0].position, upto)
        for t in rest:
            apply(state, t.changes)
        expected = {("public", "items", (str(i),)): {"id": str(i), "v": "old"} for i in range(5, 28)}
        expected[("public", "items", ("29",))] = {"id": "29", "v": "new"}
        expected[("public", "items", ("3",))] = {"id": "3", "v": "new"}
        self.assertEqual(live(state), expected)
        # Row 29 was changed after the catch-up's position: the catch-up left it to the log.
        self.assertNotIn(("public", "items", ("29",)), rows_of(rest[0].changes))

    @defer.inlineCallbacks
    def test_late_catch_up_after_compaction_within_catch_up(self):
        hub = self.make_hub(retain=0)
        for i in range(25):
            yield hub.append(txn(up("items", i)))
        yield hub.compact()
        sub = hub.subscribe(0)
        yield sub.next(10)
        for i in range(3):
            yield hub.append(txn(up("items", 100 + i)))
        yield hub.compact()  # the log after the catch-up's position is gone too
        state = {}
        got = yield read_transactions(sub, hub.head())
        for t in got:
            apply(state, t.changes)
        self.assertEqual(len(live(state)), 28 - 10)  # the first 10 rows were in the first item
        self.assertTrue(all(t.catch_up for t in got))


class SnapshotReaderTests(ChunkedTestCase):
    @defer.inlineCallbacks
    def test_reader_streams_in_bounded_chunks(self):
        hub = self.make_hub()
        yield self.commit_big(hub, [up("a", i) for i in range(23)] + [up("b", i) for i in range(4)]
                              + [up("c", i) for i in range(12)] + [dl("a", 5)])
        reader = yield hub.snapshot([("public", "c"), ("public", "a"), ("public", "nothing"), ("public", "c")])
        self.assertTrue(verifyObject(ISnapshotReader, reader))
        self.assertEqual(reader.position, 1)
        sizes, rows = [], []
        while True:
            chunk = yield reader.next(100)
            if not chunk:
                break
            sizes.append(len(chunk))
            rows.extend(chunk)
        self.assertEqual(sizes, [10, 10, 10, 4])  # at most one chunk whatever max_rows says
        self.assertEqual(sorted((r.table, int(r.key[0])) for r in rows),
                         sorted([("a", i) for i in range(23) if i != 5] + [("c", i) for i in range(12)]))
        self.assertEqual((yield reader.next(5)), [])
        reader.close()
        f = yield self.assertFailure(reader.next(5), HubError)
        self.assertIn("closed", str(f))
        all_rows = yield read_snapshot(hub, max_rows=3)
        self.assertEqual(len(all_rows.rows), 38)
        d = (yield hub.snapshot()).next(2)
        yield self.assertFailure((yield hub.snapshot()).next(0), HubError)
        self.assertEqual(len((yield d)), 2)

    @seeded(1)
    @defer.inlineCallbacks
    def test_reader_is_consistent_with_its_position_under_writes(self, rnd):
        self.dir = self.tempdir()  # a hub of its own for each seed
        hub = self.make_hub()
        for i in range(50):
            yield hub.append(txn(up("items", i, v="0")))
        reader = yield hub.snapshot([("public", "items")])
        state = {}
        n = 0
        while True:
            chunk = yield reader.next(rnd.randint(1, 12))
            if not chunk:
                break
            apply(state, chunk)
            # Writes between chunks, before and after the reader's cursor.
            for _ in range(3):
                k = rnd.randrange(60)
                n += 1
                if rnd.random() < 0.3:
                    yield hub.append(txn(dl("items", k)))
                else:
                    yield hub.append(txn(up("items", k, v=str(n))))
        got = yield read_transactions(hub.subscribe(reader.position), hub.head())
        for t in got:
            apply(state, t.changes)
        full = yield read_snapshot(hub, [("public", "items")])
        self.assertEqual(live(state), {(c.schema, c.table, c.key): dict(c.row) for c in full.rows})

    @defer.inlineCallbacks
    def test_a_stalled_reader_holds_nothing_back(self):
        hub = self.make_hub(retain=0)
        for i in range(30):
            yield hub.append(txn(up("items", i)))
        reader = yield hub.snapshot()
        yield reader.next(10)
        for i in range(30):
            yield hub.append(txn(up("items", i, v="again")))
        self.assertEqual((yield hub.compact()), 60)
        # No read transaction stays open: a checkpoint can take the whole WAL.
        db = sqlite3.connect(os.path.join(self.dir, "hub.sqlite3"))
        busy, log_frames, checkpointed = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        db.close()
        self.assertEqual(busy, 0)
        self.assertEqual(log_frames, checkpointed)
        self.assertEqual(hub.status()["snapshot_readers"], 1)
        rest = yield reader.next(100)
        self.assertEqual(rest, [])  # every row was rewritten after its position
        self.assertEqual(hub.status()["snapshot_readers"], 0)

    @defer.inlineCallbacks
    def test_stop_fails_readers(self):
        hub = self.make_hub()
        yield hub.append(txn(up("items", 1)))
        reader = yield hub.snapshot()
        yield hub.stopService()
        f = yield self.assertFailure(reader.next(10), HubError)
        self.assertIn("not running", str(f))
        yield self.assertFailure(hub.snapshot(), HubError)
        yield self.assertFailure(hub.applied("o", b"x"), HubError)


class UpgradeTests(HubTestCase):
    @defer.inlineCallbacks
    def test_schema_version_1_store_is_upgraded(self):
        db = sqlite3.connect(os.path.join(self.dir, "hub.sqlite3"), isolation_level=None)
        db.executescript("""
            CREATE TABLE meta (k TEXT PRIMARY KEY, v) WITHOUT ROWID;
            CREATE TABLE log (position INTEGER PRIMARY KEY, origin TEXT NOT NULL, origin_id BLOB NOT NULL,
                              commit_ts INTEGER NOT NULL, payload BLOB NOT NULL);
            CREATE TABLE rows (schema_name TEXT NOT NULL, table_name TEXT NOT NULL, key TEXT NOT NULL,
                               vals TEXT NOT NULL, deleted INTEGER NOT NULL, position INTEGER NOT NULL,
                               PRIMARY KEY (schema_name, table_name, key)) WITHOUT ROWID;
            CREATE TABLE applied (origin TEXT NOT NULL, origin_id BLOB NOT NULL, position INTEGER NOT NULL,
                                  commit_ts INTEGER NOT NULL, PRIMARY KEY (origin, origin_id)) WITHOUT ROWID;
            CREATE TABLE consumers (name TEXT PRIMARY KEY, acked INTEGER NOT NULL) WITHOUT ROWID;
            INSERT INTO meta VALUES ('schema_version', 1), ('hub_id', x'0102030405060708');
            INSERT INTO log VALUES (1, 'o', x'01', 5,
                CAST('[["public","items",["1"],{"id":"1"},0],["public","items",["2"],{"id":"2"},0]]' AS BLOB));
            INSERT INTO rows VALUES ('public', 'items', '["1"]', '{"id":"1"}', 0, 1), ('public', 'items', '["2"]', '{"id":"2"}', 0, 1);
            INSERT INTO applied VALUES ('o', x'01', 1, 5);
        """)
        db.close()
        hub = self.make_hub()
        self.assertEqual(hub.hub_id, bytes(range(1, 9)))
        got = yield hub.subscribe(0).next(10)
        self.assertEqual([(i.position, len(i.changes)) for i in got], [(1, 2)])
        r = yield hub.append(txn(up("items", 3)))
        self.assertEqual(r.position, 2)
        dup = yield hub.append(Transaction("o", b"\x01", 5, (up("items", 9),)))
        self.assertEqual((dup.position, len(dup.changes)), (1, 2))
        db = sqlite3.connect(os.path.join(self.dir, "hub.sqlite3"))
        self.addCleanup(db.close)
        self.assertEqual(db.execute("SELECT v FROM meta WHERE k = 'schema_version'").fetchone(), (store.SCHEMA_VERSION,))

    def test_newer_schema_is_refused(self):
        db = sqlite3.connect(os.path.join(self.dir, "hub.sqlite3"), isolation_level=None)
        db.execute("CREATE TABLE meta (k TEXT PRIMARY KEY, v) WITHOUT ROWID")
        db.execute("INSERT INTO meta VALUES ('schema_version', 99)")
        db.close()
        e = self.assertRaises(HubError, EmbeddedHub(self.dir, reactor, compact_interval=0).startService)
        self.assertIn("schema version 99, this Electric reads 2", str(e))


class KeyOrderTests(unittest.TestCase):
    @seeded(1)
    def test_key_order_bytes_sorts_like_the_rule(self, rnd):
        from electric.hub.resolution import _key_order

        alphabet = ["", "a", "b", "\x00", "\x01", "é", "☃", "\U0001f600", " ", "~"]
        keys = set()
        for _ in range(2000):
            keys.add(tuple(None if rnd.random() < 0.15 else "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 3)))
                           for _ in range(rnd.randint(1, 3))))
        keys = list(keys)
        self.assertEqual(sorted(keys, key=lambda k: store.key_order_bytes(store.encode_key(k))),
                         sorted(keys, key=_key_order))


class LateIdentityTests(ChunkedTestCase):
    @defer.inlineCallbacks
    def test_identity_given_at_commit(self):
        hub = self.make_hub()
        buf = hub.begin("pg_a")
        self.assertIsNone(buf.origin_id)
        yield buf.add([up("items", i) for i in range(25)])
        f = yield self.assertFailure(buf.commit(), HubError)
        self.assertIn("needs the origin_id", str(f))
        c = yield buf.commit(7, origin_id=b"end-lsn")
        self.assertEqual((c.position, c.origin_id, c.commit_timestamp, c.duplicate), (1, b"end-lsn", 7, False))
        self.assertEqual(buf.origin_id, b"end-lsn")
        # Resent without an identity at begin: staged again, then found a duplicate at commit.
        again = hub.begin("pg_a")
        yield again.add([up("items", i, v="x") for i in range(25)])
        self.assertEqual(hub.status()["staging"]["changes"], 25)
        c2 = yield again.commit(8, origin_id=b"end-lsn")
        self.assertEqual((c2.position, c2.duplicate, c2.change_count), (1, True, 25))
        self.assertEqual(self.spill_files(), [])
        other = hub.begin("pg_a", b"one")
        f = yield self.assertFailure(other.commit(origin_id=b"two"), HubError)
        self.assertIn("begin named", str(f))
        yield self.assertFailure(hub.begin("pg_a").commit(origin_id="text"), HubError)


class SequencerSeamTests(ChunkedTestCase):
    """What a hub fed by another ordered log (Vaxine) uses: submissions in that log's order, with its offset."""

    @defer.inlineCallbacks
    def test_meta_commits_with_the_entry_and_survives_restarts(self):
        hub = self.make_hub()
        self.assertIsNone((yield hub.stored_meta("stream_offset")))
        r = yield hub._submit_append(txn(up("items", 1), origin="vx", origin_id=b"1"), meta={"stream_offset": 10})
        buf = hub.begin("vx", b"2")
        yield buf.add([up("items", i) for i in range(25)])
        c = yield hub._submit_commit(buf, 5, meta={"stream_offset": 11})
        self.assertEqual((r.position, c.position), (1, 2))
        self.assertEqual((yield hub.stored_meta("stream_offset")), 11)
        # A duplicate from the stream still moves the offset; a refused one does not.
        dup = yield hub._submit_append(txn(up("items", 1), origin="vx", origin_id=b"1"), meta={"stream_offset": 12})
        self.assertEqual(dup.position, 1)
        bad = Transaction("vx", b"3", 1, (RowChange("public", "items", "upsert", ("9",), {"id": "9", "v": "\ud800"}),))
        yield self.assertFailure(hub._submit_append(bad, meta={"stream_offset": 13}), HubError)
        self.flushLoggedErrors()
        self.assertEqual((yield hub.stored_meta("stream_offset")), 12)
        hub = yield self.reopen(hub, chunk=CHUNK)
        self.assertEqual((yield hub.stored_meta("stream_offset")), 12)
        self.assertEqual(hub.head(), 2)
