"""The conflict rule, case by case, plus a convergence property over random interleavings."""

from __future__ import annotations


from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from electric.hub import changes
from electric.hub.interface import DELETE, RESEND, UNCHANGED, UPSERT, RowChange, Transaction
from electric.hub.resolution import (
    InvalidTransaction,
    MemoryState,
    RowState,
    check_transaction,
    resolve,
)
from electric.schema import Column, Table
from tests.hub_helpers import dl, tr, txn, up
from tests.seeds import seeded

ITEMS = Table(
    "public",
    "items",
    (Column("id", "text", 25), Column("content", "text", 25), Column("n", "int4", 23)),
    ("id",),
)


def row(hub, key, table="items"):
    st = hub.get("public", table, (str(key),))
    return None if st is None else (dict(st.values), st.deleted)


class RuleTests(unittest.TestCase):
    def setUp(self):
        self.hub = MemoryState()

    def apply(self, *chs, **kw):
        return self.hub.resolve_and_apply(txn(*chs, **kw))

    def test_insert_then_update_overwrites_set_columns(self):
        self.apply(up("items", 1, content="a", n="1"))
        res = self.apply(up("items", 1, content="b"))
        self.assertEqual(res.changes[0].row, {"id": "1", "content": "b", "n": "1"})
        self.assertFalse(res.changes[0].deleted)

    def test_concurrent_updates_of_different_columns_both_survive(self):
        self.apply(up("items", 1, content="a", n="1"))
        base = {"id": "1", "content": "a", "n": "1"}
        # Both origins saw `base` and changed different columns.
        self.apply(up("items", 1, old=base, content="A", n="1"), origin="pg_a")
        res = self.apply(up("items", 1, old=base, content="a", n="2"), origin="pg_b")
        self.assertEqual(res.changes[0].row, {"id": "1", "content": "A", "n": "2"})

    def test_without_old_values_the_whole_row_is_set(self):
        self.apply(up("items", 1, content="a", n="1"))
        self.apply(up("items", 1, content="A", n="1"), origin="pg_a")
        res = self.apply(up("items", 1, content="a", n="2"), origin="pg_b")
        self.assertEqual(res.changes[0].row, {"id": "1", "content": "a", "n": "2"})

    def test_concurrent_update_of_same_column_last_in_hub_order_wins(self):
        self.apply(up("items", 1, content="a"))
        base = {"id": "1", "content": "a"}
        self.apply(up("items", 1, old=base, content="x"), origin="pg_a")
        res = self.apply(up("items", 1, old=base, content="y"), origin="pg_b")
        self.assertEqual(res.changes[0].row["content"], "y")

    def test_unchanged_is_filled_from_current_row(self):
        self.apply(up("items", 1, content="big toast", n="1"))
        res = self.apply(up("items", 1, content=UNCHANGED, n="2"))
        self.assertEqual(res.changes[0].row, {"id": "1", "content": "big toast", "n": "2"})

    def test_write_to_missing_row_stores_what_it_has(self):
        res = self.apply(up("items", 1, content=UNCHANGED, n="2"))
        self.assertEqual(res.changes[0].row, {"id": "1", "n": "2"})
        res = self.apply(up("items", 2, old={"id": "2", "content": "old", "n": "1"}, content=UNCHANGED, n="5"))
        self.assertEqual(res.changes[0].row, {"id": "2", "content": "old", "n": "5"})

    def test_delete_keeps_last_values_as_tombstone(self):
        self.apply(up("items", 1, content="a", n="1"))
        res = self.apply(dl("items", 1))
        self.assertEqual((res.changes[0].row, res.changes[0].deleted), ({"id": "1", "content": "a", "n": "1"}, True))
        self.assertEqual(row(self.hub, 1), ({"id": "1", "content": "a", "n": "1"}, True))
        self.assertEqual(res.live_delta, -1)
        # Deleting a missing row leaves a tombstone of what the delete knew.
        res = self.apply(dl("items", 7, content="z"))
        self.assertEqual((res.changes[0].row, res.changes[0].deleted, res.live_delta), ({"id": "7", "content": "z"}, True, 0))

    def test_update_after_concurrent_delete_resurrects(self):
        self.apply(up("items", 1, content="a", n="1"))
        base = {"id": "1", "content": "a", "n": "1"}
        self.apply(dl("items", 1), origin="pg_a")
        res = self.apply(up("items", 1, old=base, content="a", n="2"), origin="pg_b")
        self.assertEqual(res.changes[0].row, {"id": "1", "content": "a", "n": "2"})
        self.assertFalse(res.changes[0].deleted)
        self.assertEqual(res.live_delta, 1)

    def test_delete_after_concurrent_update_deletes(self):
        self.apply(up("items", 1, content="a", n="1"))
        base = {"id": "1", "content": "a", "n": "1"}
        self.apply(up("items", 1, old=base, content="a", n="2"), origin="pg_b")
        res = self.apply(dl("items", 1, content="a", n="1"), origin="pg_a")
        self.assertTrue(res.changes[0].deleted)
        # The tombstone keeps the hub's last values, not the deleter's stale view.
        self.assertEqual(res.changes[0].row, {"id": "1", "content": "a", "n": "2"})

    def test_resurrection_overlays_tombstone_values(self):
        self.apply(up("items", 1, content="a", n="1"))
        self.apply(dl("items", 1))
        res = self.apply(up("items", 1, n=UNCHANGED, content="back"))
        self.assertEqual(res.changes[0].row, {"id": "1", "content": "back", "n": "1"})

    def test_primary_key_change_is_delete_plus_insert(self):
        self.apply(*changes.insert(ITEMS, {"id": "a", "content": "x", "n": "1"}))
        chs = changes.update(ITEMS, {"id": "a", "content": "x", "n": "1"}, {"id": "b", "content": "x", "n": "1"})
        res = self.apply(*chs)
        self.assertEqual(
            [(c.key, c.deleted) for c in res.changes],
            [(("a",), True), (("b",), False)],
        )
        self.assertEqual(self.hub.live(), {("public", "items", ("b",)): {"id": "b", "content": "x", "n": "1"}})

    def test_truncate_deletes_every_live_row_of_the_table_only(self):
        self.apply(up("items", 2), up("items", 1), up("items", 3), up("other", 1))
        self.apply(dl("items", 3))
        res = self.apply(up("items", 4), tr("items"), up("items", 5))
        self.assertEqual(
            [(c.key, c.deleted) for c in res.changes],
            [(("4",), False), (("1",), True), (("2",), True), (("4",), True), (("5",), False)],
        )
        self.assertEqual(set(self.hub.live()), {("public", "items", ("5",)), ("public", "other", ("1",))})
        self.assertEqual(res.live_delta, -2 + 1)

    def test_resend_repeats_current_state_without_changing_it(self):
        self.apply(up("items", 1, content="a", n="1"), up("items", 2, content="b"))
        self.apply(dl("items", 2))
        before = dict(self.hub.rows)
        res = self.apply(
            RowChange("public", "items", RESEND, ("1",)),
            RowChange("public", "items", RESEND, ("2",)),
            RowChange("public", "items", RESEND, ("9",)),
        )
        self.assertEqual(
            [(c.key, dict(c.row), c.deleted) for c in res.changes],
            [(("1",), {"id": "1", "content": "a", "n": "1"}, False), (("2",), {"id": "2", "content": "b"}, True)],
        )
        self.assertEqual(self.hub.rows, before)
        self.assertEqual(res.live_delta, 0)

    def test_row_touched_twice_appears_per_change_and_final_state_wins(self):
        res = self.apply(up("items", 1, content="a"), up("items", 1, content="b"), dl("items", 1), up("items", 1, n="3"))
        self.assertEqual([c.deleted for c in res.changes], [False, False, True, False])
        self.assertEqual(res.changes[-1].row, {"id": "1", "content": "b", "n": "3"})
        self.assertEqual(res.states, {("public", "items", ("1",)): RowState({"id": "1", "content": "b", "n": "3"}, False)})
        self.assertEqual(res.live_delta, 1)

    def test_resolve_is_pure(self):
        self.apply(up("items", 1, content="a"))
        before = dict(self.hub.rows)
        t = txn(up("items", 1, content="b"), tr("items"))
        r1 = resolve(self.hub, t)
        r2 = resolve(self.hub, t)
        self.assertEqual(r1, r2)
        self.assertEqual(self.hub.rows, before)

    @seeded(7, 8, 9)
    def test_replay_gives_the_same_state(self, rnd):
        log = []
        for i in range(300):
            k = rnd.randrange(10)
            op = rnd.random()
            if op < 0.6:
                ch = up("items", k, content=rnd.choice(["a", "b", UNCHANGED]), n=str(i))
            elif op < 0.9:
                ch = dl("items", k)
            else:
                ch = tr("items")
            log.append(txn(ch, origin=rnd.choice(["x", "y"])))
        a, b = MemoryState(), MemoryState()
        out_a = [a.resolve_and_apply(t).changes for t in log]
        out_b = [b.resolve_and_apply(t).changes for t in log]
        self.assertEqual(out_a, out_b)
        self.assertEqual(a.rows, b.rows)

    def test_malformed_transactions_are_explained(self):
        cases = [
            (Transaction("o", b"1", 1.5, ()), "commit_timestamp"),
            (Transaction("o", b"1", 1, (RowChange("public", "", UPSERT, ("1",), {}),)), "non-empty str"),
            (Transaction("o", b"1", 1, (RowChange("public", "t", UPSERT, ("1",), None),)), "needs values"),
            (Transaction("o", b"1", 1, (RowChange("public", "t", UPSERT, (1,), {"id": "1"}),)), "key value 1"),
            (Transaction("o", b"1", 1, (RowChange("public", "t", DELETE, ("1",), ["x"]),)), "must be a mapping"),
            (Transaction("o", b"1", 1, (RowChange("public", "t", UPSERT, ("1",), {3: "x"}),)), "column name 3"),
        ]
        for t, text in cases:
            with self.assertRaises(InvalidTransaction) as e:
                check_transaction(t)
            self.assertIn(text, str(e.exception))
        check_transaction(txn(up("items", 1, content=None, n=UNCHANGED), dl("items", 2), tr("items")))


# --- convergence property --------------------------------------------------

ORIGINS = ("pg_1", "pg_2", "satellite:c")
KEYS = ("1", "2", "3")
COLS = ("a", "b")

step = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(range(3)), st.sampled_from(("ins", "upd", "upd_full", "del", "trunc", "pk")),
              st.sampled_from(KEYS), st.sampled_from(KEYS), st.sampled_from(COLS), st.sampled_from(("x", "y", "z", None))),
    st.tuples(st.just("deliver"), st.sampled_from(range(3))),
    st.tuples(st.just("hub"), st.sampled_from(range(3))),
)


class Replica:
    """A replica the way a Postgres or a client behaves: applies its own writes
    at once, queues them to the hub, and applies the hub's resolved stream."""

    def __init__(self, name):
        self.name = name
        self.rows = {}  # key -> dict (live rows only)
        self.outbox = []
        self.applied_upto = 0
        self.counter = 0
        self.corrections = 0  # resolved rows that differed from what this replica had locally

    def write(self, kind, key, key2, col, val):
        chs = []
        cur = self.rows.get(key)
        if kind == "ins":
            new = {"id": key, "a": val, "b": val}
            chs = changes.insert(T, new)
        elif kind in ("upd", "upd_full"):
            if cur is None:
                return
            new = dict(cur, **{col: val})
            chs = changes.update(T, dict(cur) if kind == "upd_full" else None, new)
        elif kind == "del":
            if cur is None:
                return
            chs = changes.delete(T, cur)
        elif kind == "trunc":
            chs = changes.truncate(T)
        elif kind == "pk":
            if cur is None or key2 in self.rows:
                return
            chs = changes.update(T, dict(cur), dict(cur, id=key2))
        for c in chs:
            self.local(c)
        self.counter += 1
        self.outbox.append(Transaction(self.name, self.counter.to_bytes(8, "big"), self.counter, tuple(chs)))

    def local(self, c):
        if c.op == "truncate":
            self.rows.clear()
        elif c.op == DELETE:
            self.rows.pop(c.key[0], None)
        else:
            cur = self.rows.get(c.key[0], {})
            self.rows[c.key[0]] = {**cur, **{k: v for k, v in c.values.items() if v is not UNCHANGED}}

    def apply_resolved(self, rt):
        for c in rt.changes:
            if self.rows.get(c.key[0]) != (None if c.deleted else dict(c.row)):
                self.corrections += 1
            if c.deleted:
                self.rows.pop(c.key[0], None)
            else:
                self.rows[c.key[0]] = dict(c.row)


T = Table("public", "t", (Column("id", "text", 25), Column("a", "text", 25), Column("b", "text", 25)), ("id",))


replicas_of_last_run = []


def run_interleaving(steps):
    hub = MemoryState()
    log = []
    replicas = [Replica(o) for o in ORIGINS]

    def hub_take(r):
        t = r.outbox.pop(0)
        res = hub.resolve_and_apply(t)
        log.append(res.changes)

    def deliver(r):
        from electric.hub.interface import ResolvedTransaction

        pos = r.applied_upto
        r.apply_resolved(ResolvedTransaction(pos + 1, "", b"", 0, log[pos]))
        r.applied_upto += 1

    for s in steps:
        if s[0] == "write":
            replicas[s[1]].write(*s[2:])
        elif s[0] == "deliver":
            r = replicas[s[1]]
            if r.applied_upto < len(log):
                deliver(r)
        elif replicas[s[1]].outbox:
            hub_take(replicas[s[1]])
    # Drain: every queued write reaches the hub, every replica applies the whole stream.
    while any(r.outbox for r in replicas):
        for r in replicas:
            if r.outbox:
                hub_take(r)
    for r in replicas:
        while r.applied_upto < len(log):
            deliver(r)
    expected = {rid[2][0]: vals for rid, vals in hub.live().items()}
    replicas_of_last_run[:] = replicas
    return expected, [r.rows for r in replicas], log


class ConvergenceProperty(unittest.TestCase):
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(step, max_size=60))
    def test_replicas_converge_to_hub_rows(self, steps):
        expected, replicas, _ = run_interleaving(steps)
        for rows in replicas:
            self.assertEqual(rows, expected)

    @seeded(3, 1, 2)
    def test_interleavings_exercise_conflicts(self, rnd):
        """Guard against a vacuous property: random runs make replicas diverge
        locally, and the resolved stream is what corrects them."""
        corrections = 0
        for _ in range(50):
            steps = []
            for _ in range(60):
                kind = rnd.choice(["write", "write", "deliver", "hub"])
                i = rnd.randrange(3)
                if kind == "write":
                    steps.append(("write", i, rnd.choice(["ins", "upd", "upd_full", "del", "pk"]),
                                  rnd.choice(KEYS), rnd.choice(KEYS), rnd.choice(COLS), rnd.choice(["x", "y", None])))
                else:
                    steps.append((kind, i))
            expected, replicas, log = run_interleaving(steps)
            for rows in replicas:
                self.assertEqual(rows, expected)
            corrections += sum(r.corrections for r in replicas_of_last_run)
        self.assertGreater(corrections, 20)
