"""
The Vaxine hub (electric/vaxine/hub.py) through IHub only, against a Vaxine node of each test's own:
the real node where ../shared/vaxine exists, else tests/fake_vaxine.py (which keeps its state in
memory and speaks both wire formats as the spec gives them; ELECTRIC_TEST_VAXINE=fake forces it).

Two hubs on one node stand for two Electrics: what either appends reaches both, in the same order,
with the same resolved rows.
"""

import os
import random
import tempfile
import uuid

from twisted.internet import defer, reactor
from twisted.trial import unittest

from electric.hub.interface import (
    DELETE, TRUNCATE, UPSERT, Committed, HubError, ResolvedTransaction, RowChange, Transaction, WriteGuard,
)
from electric.vaxine import records as R
from electric.vaxine.hub import VaxineHub
from electric.vaxine.pb_client import AntidoteClient
from electric.vaxine import datamodel as D
from tests.polling import wait_until
from tests.vaxine_helpers import REAL_MISSING_REASON, fast_retry, real_available, start_vaxine


def seeded():
    seed = int(os.environ.get("ELECTRIC_TEST_SEED", random.randrange(1 << 30)))
    print(f"seed {seed} (rerun with ELECTRIC_TEST_SEED={seed})")
    return random.Random(seed)


class Base(unittest.TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def setUp(self):
        self.node = yield start_vaxine(self)
        print(self.node.description)
        self.table = f"t_{uuid.uuid4().hex[:8]}"

    def hub(self, data_dir=None, start=True, **kwargs):
        data_dir = data_dir or tempfile.mkdtemp(prefix="electric-vaxhub-")
        kwargs.setdefault("chunk", 3)
        kwargs.setdefault("compact_interval", 0)
        hub = VaxineHub(data_dir, self.node.host, self.node.pb_port, self.node.repl_port, 2.0, reactor,
                        retry_policy=fast_retry, **kwargs)
        if start:
            hub.startService()
        self.addCleanup(lambda: hub.stopService() if hub.running or hub._open else None)
        return hub

    def txn(self, origin, n, rows, op=UPSERT, guard=None, ts=None):
        return Transaction(origin, n.to_bytes(8, "big"), ts or 1_700_000_000_000_000 + n, tuple(
            RowChange("public", self.table, op, (str(k),), dict(v, id=str(k)) if v is not None else None, None, guard)
            for k, v in rows))

    @defer.inlineCallbacks
    def read_all(self, hub, after=0):
        """Every resolved item after `after` up to the head, as (position, origin, origin_id, changes)."""
        sub = hub.subscribe(after)
        out = []
        try:
            while sub.position < hub.head():
                items = yield sub.next(100)
                for it in items:
                    if out and out[-1][0] == it.position:
                        out[-1][3].extend(it.changes)
                    else:
                        out.append((it.position, it.origin, it.origin_id, list(it.changes)))
        finally:
            sub.close()
        return out

    @defer.inlineCallbacks
    def rows(self, hub):
        reader = yield hub.snapshot([("public", self.table)])
        got = {}
        while True:
            chunk = yield reader.next(100)
            if not chunk:
                break
            for c in chunk:
                got[c.key] = dict(c.row)
        reader.close()
        return got


class HubOnVaxine(Base):
    @defer.inlineCallbacks
    def test_append_comes_back_resolved_and_is_served(self):
        hub = self.hub()
        yield wait_until(lambda: hub.ready, what="both Vaxine links up")
        first = yield hub.append(self.txn("postgres_1", 1, [(1, {"v": "a"}), (2, {"v": "b"})]))
        self.assertIsInstance(first, ResolvedTransaction)
        self.assertEqual((first.position, first.origin, first.origin_id), (1, "postgres_1", (1).to_bytes(8, "big")))
        self.assertEqual([(c.key, c.row, c.deleted) for c in first.changes],
                         [(("1",), {"id": "1", "v": "a"}, False), (("2",), {"id": "2", "v": "b"}, False)])
        second = yield hub.append(self.txn("postgres_1", 2, [(1, None)], op=DELETE))
        self.assertEqual(second.position, 2)
        self.assertEqual([(c.key, c.row, c.deleted) for c in second.changes], [(("1",), {"id": "1", "v": "a"}, True)])
        # the same (origin, origin_id) again: the earlier entry, nothing new
        again = yield hub.append(self.txn("postgres_1", 1, [(1, {"v": "zzz"})]))
        self.assertEqual(again.position, 1)
        self.assertEqual(hub.head(), 2)
        self.assertEqual((yield self.rows(hub)), {("2",): {"id": "2", "v": "b"}})
        self.assertEqual((yield hub.applied("postgres_1", (2).to_bytes(8, "big"))), 2)
        log = yield self.read_all(hub)
        self.assertEqual([(p, o) for p, o, _, _ in log], [(1, "postgres_1"), (2, "postgres_1")])
        # Vaxine holds the rows in the spec's data model too (one RRMAP per row)
        pb = AntidoteClient(self.node.host, self.node.pb_port, retry_policy=fast_retry)
        pb.startService()
        self.addCleanup(pb.stopService)
        values = yield pb.static_read([D.row_object("public", self.table, ("1",)), D.row_object("public", self.table, ("2",))])
        from electric.vaxine import antidote as A
        row1, row2 = values
        self.assertEqual(row2, {(b"deleted?", A.FLAG_DW): False, (b"id", A.LWWREG): f"public:{self.table}:2".encode(),
                                (b"schema", A.LWWREG): b"public", (b"table", A.LWWREG): self.table.encode(),
                                (b"row", A.RRMAP): {(b"id", A.LWWREG): D.encode_value("2"),
                                                    (b"v", A.LWWREG): D.encode_value("b")}})
        self.assertTrue(row1[(b"deleted?", A.FLAG_DW)], row1)
        status = hub.status()
        self.assertEqual(status["hub"], "vaxine")
        self.assertTrue(status["vaxine"]["ready"])

    @defer.inlineCallbacks
    def test_big_transaction_in_chunks_is_one_position(self):
        hub = self.hub()
        yield hub.append(self.txn("postgres_1", 1, [(0, {"v": "before"})]))
        buf = hub.begin("postgres_1")
        for start in range(0, 10, 4):
            yield buf.add(self.txn("postgres_1", 0, [(k, {"v": f"big{k}"}) for k in range(start, min(10, start + 4))]).changes)
        # nothing visible before the commit
        self.assertEqual(hub.head(), 1)
        committed = yield buf.commit(1_700_000_000_000_099, (99).to_bytes(8, "big"))
        self.assertIsInstance(committed, Committed)
        self.assertEqual((committed.position, committed.change_count, committed.duplicate), (2, 10, False))
        log = yield self.read_all(hub, 1)
        self.assertEqual(len(log), 1)
        self.assertEqual([c.row["v"] for c in log[0][3]], [f"big{k}" for k in range(10)])
        # an aborted one leaves nothing; a TRUNCATE is resolved from the hub's own rows
        aborted = hub.begin("postgres_1", (100).to_bytes(8, "big"))
        yield aborted.add(self.txn("postgres_1", 0, [(50, {"v": "never"})]).changes)
        yield aborted.abort()
        trunc = hub.begin("postgres_1", (101).to_bytes(8, "big"))
        yield trunc.add([RowChange("public", self.table, TRUNCATE)])
        yield trunc.add(self.txn("postgres_1", 0, [(7, {"v": "after"})]).changes)
        done = yield trunc.commit()
        self.assertEqual((done.position, done.change_count), (3, 11))
        self.assertEqual((yield self.rows(hub)), {("7",): {"id": "7", "v": "after"}})
        dup = yield hub.begin("postgres_1", (99).to_bytes(8, "big")).commit()
        self.assertEqual((dup.position, dup.duplicate), (2, True))

    @defer.inlineCallbacks
    def test_guard_refuses_on_every_electric(self):
        a, b = self.hub(), self.hub()
        guard = WriteGuard("electric_user_id", "alice")
        yield a.append(self.txn("postgres_1", 1, [(1, {"electric_user_id": "bob", "v": "b"})]))
        with self.assertRaises(HubError) as caught:
            yield a.append(self.txn("satellite:c1", 1, [(1, {"electric_user_id": "bob", "v": "stolen"})], guard=guard))
        self.assertIn("invalid transaction", str(caught.exception))
        yield a.append(self.txn("satellite:c1", 2, [(2, {"electric_user_id": "alice", "v": "mine"})], guard=guard))
        yield wait_until(lambda: b.head() == 2, what="b has both accepted transactions")
        self.assertEqual((yield self.rows(b)), (yield self.rows(a)))
        self.assertEqual((yield self.rows(b))[("1",)]["v"], "b")

    @defer.inlineCallbacks
    def test_two_electrics_converge_under_concurrent_writes(self):
        rng = seeded()
        a, b = self.hub(), self.hub()
        writes = []
        for i in range(40):
            hub, origin = (a, "postgres_a") if rng.random() < 0.5 else (b, "postgres_b")
            key = rng.randrange(5)
            if rng.random() < 0.2:
                writes.append(hub.append(self.txn(origin, i, [(key, {"v": "x"})], op=DELETE)))
            else:
                writes.append(hub.append(self.txn(origin, i, [(key, {"v": f"{origin}-{i}", "w": str(i)})])))
        results = yield defer.gatherResults(writes, consumeErrors=True)
        self.assertEqual(len({r.position for r in results}), 40)
        yield wait_until(lambda: a.head() == 40 and b.head() == 40, what="both Electrics have all 40")
        log_a = yield self.read_all(a)
        log_b = yield self.read_all(b)
        self.assertEqual([(o, i) for _, o, i, _ in log_a], [(o, i) for _, o, i, _ in log_b])  # one order
        self.assertEqual(log_a, log_b)  # the same resolution
        self.assertEqual((yield self.rows(a)), (yield self.rows(b)))

    @defer.inlineCallbacks
    def test_restart_resumes_from_the_stored_offset(self):
        data = tempfile.mkdtemp(prefix="electric-vaxhub-")
        a, b = self.hub(data), self.hub()
        for i in range(3):
            yield a.append(self.txn("postgres_a", i, [(i, {"v": str(i)})]))
        # a big transaction half staged when a stops: its chunks are re-read after the restart
        buf = b.begin("postgres_b", (500).to_bytes(8, "big"))
        yield buf.add(self.txn("postgres_b", 0, [(100, {"v": "c0"}), (101, {"v": "c1"})]).changes)
        yield b.append(self.txn("postgres_b", 7, [(7, {"v": "7"})]))
        yield wait_until(lambda: a.head() == 4, what="a stored b's small transaction")
        yield a.stopService()
        yield b.append(self.txn("postgres_b", 8, [(8, {"v": "8"})]))
        yield buf.add(self.txn("postgres_b", 0, [(102, {"v": "c2"})]).changes)
        yield buf.commit()
        a2 = self.hub(data)
        yield wait_until(lambda: a2.head() == 6, what="a caught up after its restart")
        log = yield self.read_all(a2)
        self.assertEqual([(p, o, int.from_bytes(i, "big")) for p, o, i, _ in log],
                         [(1, "postgres_a", 0), (2, "postgres_a", 1), (3, "postgres_a", 2), (4, "postgres_b", 7),
                          (5, "postgres_b", 8), (6, "postgres_b", 500)])
        self.assertEqual([c.row["v"] for c in log[5][3]], ["c0", "c1", "c2"])
        self.assertEqual((yield self.rows(a2)), (yield self.rows(b)))
        self.assertEqual(a2.status()["vaxine"]["skipped"], 0)

    @defer.inlineCallbacks
    def test_a_transaction_that_cannot_be_stored_stops_reading_and_says_so(self):
        from electric.hub.embedded import EmbeddedHub
        a, b = self.hub(), self.hub()
        yield wait_until(lambda: a.ready and b.ready, what="both hubs' Vaxine links up")
        original = EmbeddedHub._submit_append

        def failing(hub, txn, meta):
            if hub is a:
                return defer.fail(RuntimeError("disk I/O error"))
            return original(hub, txn, meta)

        self.patch(EmbeddedHub, "_submit_append", failing)
        yield b.append(self.txn("postgres_b", 1, [(1, {"v": "1"})]))
        yield wait_until(lambda: a.status()["vaxine"]["store_failure"] is not None, what="a's store failure reported")
        self.assertFalse(a.ready)
        self.assertIn("disk I/O error", a.status()["vaxine"]["store_failure"])
        self.assertIn("could not be stored", a.status()["vaxine"]["store_failure"])
        yield b.append(self.txn("postgres_b", 2, [(2, {"v": "2"})]))
        # Nothing past the hole: a stored neither, and read no further than the failed transaction.
        self.assertEqual(a.head(), 0)
        self.assertLessEqual(a.status()["vaxine"]["stream_transactions"], 1)
        self.assertTrue(b.ready)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_vaxine_gone_not_ready_then_recovers_without_loss(self):
        hub = self.hub(write_retry_budget=60.0)
        yield hub.append(self.txn("postgres_1", 1, [(1, {"v": "a"})]))
        self.assertTrue(hub.ready)
        yield self.node.kill()
        yield wait_until(lambda: not hub.ready, what="hub not ready once Vaxine is gone")
        self.assertFalse(hub.ready)
        pending = hub.append(self.txn("postgres_1", 2, [(2, {"v": "b"})]))
        yield self.node.start()
        yield wait_until(lambda: hub.ready, timeout=120, what="both links back")
        second = yield pending
        self.assertEqual(second.position, 2)
        yield hub.append(self.txn("postgres_1", 3, [(3, {"v": "c"})]))
        expected = {("1",): {"id": "1", "v": "a"}, ("2",): {"id": "2", "v": "b"}, ("3",): {"id": "3", "v": "c"}}
        if self.node.is_real:
            # the real node recovered from its log: the first write is still there for a newcomer
            newcomer = self.hub()
            yield wait_until(lambda: newcomer.head() == 3, what="a new Electric reads all three")
            self.assertEqual((yield self.rows(newcomer)), expected)
        self.assertEqual((yield self.rows(hub)), expected)

    @defer.inlineCallbacks
    def test_stream_transactions_without_records_are_read_from_row_states(self):
        """What the original service wrote (data model only, metadata:0) is read from the row objects."""
        hub = self.hub()
        pb = AntidoteClient(self.node.host, self.node.pb_port, retry_policy=fast_retry)
        pb.startService()
        self.addCleanup(pb.stopService)
        t = self.txn("postgres_1", 1, [(1, {"v": "old"})])
        yield pb.write(D.transaction_updates(t, "all_tables", metadata=D.METADATA_KEY))
        yield wait_until(lambda: hub.head() == 1, what="the foreign-format transaction")
        self.assertEqual((yield self.rows(hub)), {("1",): {"id": "1", "v": "old"}})


class Records(unittest.TestCase):
    def test_changes_round_trip(self):
        from electric.hub.interface import UNCHANGED
        changes = (
            RowChange("s", "t", UPSERT, ("1", None), {"a": "x", "b": UNCHANGED, "c": None}, {"a": "y"},
                      WriteGuard("owner", "alice", frozenset({"a"}))),
            RowChange("s", "t:2", DELETE, ("é",), None),
            RowChange("s", "t", TRUNCATE),
        )
        self.assertEqual(R.decode_changes(R.encode_changes(changes)), changes)

    def test_garbage_is_a_clear_error(self):
        import zlib
        for blob, text in ((b"nope", "not zlib-compressed JSON"), (zlib.compress(b"{}"), "not a list"),
                           (zlib.compress(b'[["s","t","drop",[],null,[],null,null]]'), "bad schema, table or op")):
            with self.assertRaises(D.InvalidWalTransaction) as caught:
                R.decode_changes(blob)
            self.assertIn(text, str(caught.exception))


class WritesKeepTheirOrder(Base):
    @defer.inlineCallbacks
    def test_pipelined_writes_survive_vaxine_going_away_in_order(self):
        """Appends in flight when Vaxine goes away are retried in their order: the last write wins."""
        hub = self.hub(write_retry_budget=120.0)
        yield hub.append(self.txn("postgres_1", 0, [(1, {"v": "first"})]))
        pending = [hub.append(self.txn("postgres_1", i, [(1, {"v": f"v{i}"})])) for i in range(1, 21)]
        yield self.node.kill()
        yield self.node.start()
        results = yield defer.gatherResults(pending, consumeErrors=True)
        self.assertEqual([r.position for r in results], sorted(r.position for r in results))
        log = yield self.read_all(hub)
        ids = [int.from_bytes(i, "big") for _, _, i, _ in log]
        self.assertEqual(ids, list(range(21)))
        self.assertEqual((yield self.rows(hub)), {("1",): {"id": "1", "v": "v20"}})
        if not self.node.is_real:
            # the fake drops every connection at once: the writes in flight were retried
            self.assertGreater(hub.status()["vaxine"]["write_retries"], 0)

    @defer.inlineCallbacks
    def test_a_write_that_cannot_be_made_fails_and_so_do_the_later_ones(self):
        hub = self.hub(write_retry_budget=0.5)
        yield hub.append(self.txn("postgres_1", 0, [(1, {"v": "first"})]))
        yield self.node.kill()
        yield wait_until(lambda: not hub.ready, what="links down")
        pending = [hub.append(self.txn("postgres_1", i, [(1, {"v": f"v{i}"})])) for i in range(1, 4)]
        for d in pending:
            with self.assertRaises(HubError) as caught:
                yield d
            self.assertIn("was not written: Vaxine did not take it", str(caught.exception))
        self.assertEqual(hub.head(), 1)


class FakeMatchesReal(unittest.TestCase):
    """The same IHub script on the real node and on the fake gives the same resolved log and rows."""

    timeout = 240
    if not real_available():
        skip = REAL_MISSING_REASON

    @defer.inlineCallbacks
    def run_script(self, real):
        case = Base()
        case.addCleanup = self.addCleanup
        case.node = yield start_vaxine(self, real=real)
        case.table = "conformance"
        a, b = case.hub(), case.hub()
        yield a.append(case.txn("postgres_a", 1, [(1, {"v": "a", "w": "a"}), (2, {"v": "x"})]))
        yield b.append(case.txn("postgres_b", 1, [(1, None)], op=DELETE))
        yield a.append(case.txn("postgres_a", 2, [(1, {"v": "back"})]))
        buf = b.begin("postgres_b", (2).to_bytes(8, "big"))
        yield buf.add(case.txn("postgres_b", 0, [(k, {"v": f"big{k}"}) for k in range(3, 10)]).changes)
        yield buf.add([RowChange("public", "conformance", TRUNCATE)])
        yield buf.commit(1_700_000_000_000_002)
        yield a.append(case.txn("postgres_a", 3, [(4, {"v": "after"})]))
        yield wait_until(lambda: a.head() == 5 and b.head() == 5, what="both hubs at 5")
        log = yield case.read_all(a)
        self.assertEqual(log, (yield case.read_all(b)))
        rows = yield case.rows(a)
        return log, rows

    @defer.inlineCallbacks
    def test_same_resolution(self):
        real = yield self.run_script(True)
        fake = yield self.run_script(False)
        self.assertEqual(real, fake)
        self.assertEqual(real[1], {("4",): {"id": "4", "v": "after"}})
