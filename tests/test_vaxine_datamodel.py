"""
The data model, pure: hub transactions -> PB update operations (spec 2), stream transactions -> rows
(spec 4), CRDT state reading, and real-node frames captured from Vaxine bba3ec39.

The round trips run the update operations through the fake node's CRDT engine
(tests/fake_vaxine.py, no sockets); the same mapping against a running node is in
tests/test_vaxine_links_datamodel.py.
"""

import os

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from electric.hub.interface import DELETE, RESEND, TRUNCATE, UNCHANGED, UPSERT, ResolvedChange, RowChange, Transaction
from electric.vaxine import antidote as A, crdt, datamodel as D, etf, stream as S
from electric.vaxine.etf import Atom
from tests.fake_vaxine import FakeVaxine

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vaxine_data")


def describe(op):
    """An UpdateOperation as nested plain data: ("reg", bytes) / ("flag", bool) / [(name, type, nested)...]."""
    kind = [f for f in ("regop", "flagop", "mapop") if op.HasField(f)][0]
    if kind == "regop":
        return ("reg", op.regop.value)
    if kind == "flagop":
        return ("flag", op.flagop.value)
    return [(u.key.key, u.key.type, describe(u.update)) for u in op.mapop.updates] + \
        [("REMOVE", k.key, k.type) for k in op.mapop.removedKeys]


def describe_all(ops):
    return [(o.boundobject.key, o.boundobject.type, o.boundobject.bucket, describe(o.operation)) for o in ops]


def commit_to_wal(fake, transaction, publication=""):
    """Apply `transaction`'s update ops in the fake engine; return the vx_wal_txn it streams."""
    txn = fake.start()
    fake.update(txn, D.transaction_updates(transaction, publication))
    fake.commit(txn)
    record = fake.records[-1]
    ops, _ = record.data
    return S.parse_server_term((S.VX_WAL_TXN, record.txid, fake.dcid, (record.pos, record.pos), ops))


KEY = ("1",)
ROW_KEY = b"rows:s:t:1"


class Writing(unittest.TestCase):
    def txn(self, *changes, origin="postgres_1", origin_id=b"\x00\x00\x00\x00\x00\x00\x00\x2a"):
        return Transaction(origin, origin_id, 1660749606202865, tuple(changes))

    def test_metadata_ops(self):
        t = self.txn(RowChange("s", "t", UPSERT, KEY, {"id": "1"}))
        key = b"metadata:postgres_1:000000000000002a"
        self.assertEqual(D.metadata_key("postgres_1", b"\x00" * 7 + b"\x2a"), key)
        self.assertEqual(describe_all(D.metadata_updates(t, "all_tables")), [
            (key, A.RRMAP, b"vax", [(b"commit_timestamp", A.LWWREG, ("reg", b"2022-08-17 15:20:06.202865Z"))]),
            (key, A.RRMAP, b"vax", [(b"id", A.LWWREG, ("reg", b"0"))]),
            (key, A.RRMAP, b"vax", [(b"origin", A.LWWREG, ("reg", b"postgres_1"))]),
            (key, A.RRMAP, b"vax", [(b"origin_id", A.LWWREG, ("reg", b"\x00" * 7 + b"\x2a"))]),
            (key, A.RRMAP, b"vax", [(b"publication", A.LWWREG, ("reg", b"all_tables"))]),
        ])
        shared = D.transaction_updates(t, "all_tables", metadata=D.METADATA_KEY)
        self.assertEqual([o.boundobject.key for o in shared[:5]], [b"metadata:0"] * 5)
        self.assertEqual(D.metadata_key("satellite:c:1", b""), b"metadata:satellite%3Ac%3A1:")

    def test_upsert_ops_follow_the_insert_layout(self):
        ops = D.row_updates(RowChange("s", "t", UPSERT, KEY, {"id": "1", "c": "v", "d": None}))
        self.assertEqual(describe_all(ops), [
            (ROW_KEY, A.RRMAP, b"vax", [(b"deleted?", A.FLAG_DW, ("flag", False))]),
            (ROW_KEY, A.RRMAP, b"vax", [(b"id", A.LWWREG, ("reg", b"s:t:1"))]),
            (ROW_KEY, A.RRMAP, b"vax", [
                (b"row", A.RRMAP, [(b"c", A.LWWREG, ("reg", b"\x83m\x00\x00\x00\x01v"))]),
                (b"row", A.RRMAP, [(b"d", A.LWWREG, ("reg", b"\x83d\x00\x03nil"))]),
                (b"row", A.RRMAP, [(b"id", A.LWWREG, ("reg", b"\x83m\x00\x00\x00\x011"))]),
            ]),
            (ROW_KEY, A.RRMAP, b"vax", [(b"schema", A.LWWREG, ("reg", b"s"))]),
            (ROW_KEY, A.RRMAP, b"vax", [(b"table", A.LWWREG, ("reg", b"t"))]),
        ])

    def test_update_with_old_values_assigns_changed_columns_only(self):
        change = RowChange("s", "t", UPSERT, KEY, {"id": "1", "c": "new", "d": "same", "e": UNCHANGED},
                           {"id": "1", "c": "old", "d": "same", "e": "x"})
        row = [o for o in describe_all(D.row_updates(change)) if o[3][0][0] == b"row"][0]
        self.assertEqual(row[3], [(b"row", A.RRMAP, [(b"c", A.LWWREG, ("reg", etf.term_to_binary(b"new")))])])
        nothing = RowChange("s", "t", UPSERT, KEY, {"id": "1"}, {"id": "1"})
        self.assertEqual([o[3][0][0] for o in describe_all(D.row_updates(nothing))],
                         [b"deleted?", b"id", b"schema", b"table"])

    def test_delete_and_resend(self):
        self.assertEqual([o[3] for o in describe_all(D.row_updates(RowChange("s", "t", DELETE, KEY, {"id": "1", "c": "x"})))], [
            [(b"deleted?", A.FLAG_DW, ("flag", True))], [(b"id", A.LWWREG, ("reg", b"s:t:1"))],
            [(b"schema", A.LWWREG, ("reg", b"s"))], [(b"table", A.LWWREG, ("reg", b"t"))]])
        self.assertEqual([o[3][0][0] for o in describe_all(D.row_updates(RowChange("s", "t", RESEND, KEY)))],
                         [b"id", b"schema", b"table"])

    def test_truncate_is_refused_with_a_way_out(self):
        truncate = RowChange("s", "t", TRUNCATE)
        with self.assertRaisesRegex(D.UnsupportedChange, "TRUNCATE of s.t has no Vaxine mapping"):
            D.transaction_updates(self.txn(truncate))
        deletes = D.truncate_as_deletes(truncate, [("1",), ("2",)])
        self.assertEqual(deletes, [RowChange("s", "t", DELETE, ("1",)), RowChange("s", "t", DELETE, ("2",))])
        self.assertEqual(len(D.transaction_updates(self.txn(*deletes))), 5 + 8)

    def test_refusals(self):
        for change, pattern in [
            (RowChange("s", "t", UPSERT, (None,), {"id": None}), "not text"),
            (RowChange("s", "t", UPSERT, (), {"id": "1"}), "needs a primary key"),
            (RowChange("s", "t", UPSERT, KEY, {"id": 1}), "is int, not text"),
            (RowChange("s", "t", "merge", KEY, {"id": "1"}), "unknown change op"),
        ]:
            with self.assertRaisesRegex(D.UnsupportedChange, pattern):
                D.row_updates(change)

    def test_empty_transaction_writes_nothing(self):
        self.assertEqual(D.transaction_updates(self.txn()), [])

    def test_touched_objects(self):
        t = self.txn(RowChange("s", "t", UPSERT, KEY, {"id": "1"}), RowChange("s", "t", DELETE, KEY),
                     RowChange("s", "u", UPSERT, ("a:b",), {"k": "a:b"}), RowChange("s", "t", TRUNCATE))
        self.assertEqual([o.key for o in D.touched_objects(t)],
                         [D.metadata_key("postgres_1", t.origin_id), ROW_KEY, b"rows:s:u:a%3Ab"])
        self.assertEqual(D.touched_objects(t, metadata=D.METADATA_KEY)[0].key, b"metadata:0")


class Ids(unittest.TestCase):
    def test_escaping(self):
        self.assertEqual(D.row_id("public", "entries", ["911fee88-1"]), "public:entries:911fee88-1")
        self.assertEqual(D.row_id("public", "t", ["a:b"]), "public:t:a%3Ab")
        self.assertNotEqual(D.row_id("public", "t", ["a:b"]), D.row_id("public", "t", ["a", "b"]))
        self.assertEqual(D.row_id("my:schema", "t%", ["50%", ""]), "my%3Aschema:t%25:50%25:")
        self.assertEqual(D.parse_row_id("public:t:a%3Ab:50%25"), ("public", "t", ("a:b", "50%")))
        with self.assertRaisesRegex(ValueError, "no primary-key part"):
            D.parse_row_id("public:t")

    @given(st.text(), st.text(), st.lists(st.text(), min_size=1, max_size=4))
    def test_round_trip(self, schema, table, key):
        self.assertEqual(D.parse_row_id(D.row_id(schema, table, key)), (schema, table, tuple(key)))

    @given(st.integers(-(2 ** 55), 253402300799999999))
    def test_timestamps(self, micros):
        text = D.format_timestamp(micros)
        self.assertRegex(text, r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}Z$")
        self.assertEqual(D.parse_timestamp(text), micros)

    def test_timestamp_forms(self):
        self.assertEqual(D.parse_timestamp("2022-08-17 15:20:06.202Z"), 1660749606202000)
        self.assertEqual(D.parse_timestamp("2022-08-17 15:20:06Z"), 1660749606000000)
        for bad in ("2022-08-17", "2022-13-17 15:20:06Z", "2022-08-17 15:20:06.1234567Z", "yesterday"):
            with self.assertRaises(ValueError):
                D.parse_timestamp(bad)

    @given(st.one_of(st.none(), st.text()))
    def test_values(self, value):
        self.assertEqual(D.decode_value(D.encode_value(value)), value)

    def test_value_forms(self):
        self.assertEqual(D.encode_value("hello"), b"\x83m\x00\x00\x00\x05hello")
        self.assertEqual(D.encode_value(None), b"\x83d\x00\x03nil")
        self.assertIsNone(D.decode_value(b"\x83w\x03nil"))
        for bad, pattern in [(b"\x83d\x00\x0funchanged_toast", "neither a binary nor nil"),
                             (b"junk", "not an ETF term"), (b"\x83m\x00\x00\x00\x01\xff", "not UTF-8")]:
            with self.assertRaisesRegex(D.InvalidWalTransaction, pattern):
                D.decode_value(bad)


class RealNodeFrames(unittest.TestCase):
    """Frames captured from the real node (Vaxine bba3ec39) after writing through this module.

    They were written with the spec's shared ``metadata:0`` (this module's
    first form), so they also show that `from_wal` reads that form.
    """

    def frame(self, n):
        with open(os.path.join(DATA, f"real_wal_txn_{n}.etf"), "rb") as f:
            data = f.read()
        self.assertEqual(etf.term_to_binary(etf.binary_to_term(data)), data)
        return S.parse_server_term(etf.binary_to_term(data))

    def test_single_row(self):
        w = D.from_wal(self.frame(1))
        self.assertEqual((w.offset, w.origin, w.origin_id, w.publication, w.commit_timestamp),
                         (S.WalOffset(30521, 35869), "satellite:client-1", b"\x83h\x02a\x01a\x02", "", 1660749606202865))
        self.assertEqual(w.changes, (ResolvedChange("public", "entries", ("911fee88",),
                                                    {"id": "911fee88", "content": "héllo", "n": None}, False),))

    def test_wide_row_and_tombstone(self):
        txn = self.frame(2)
        self.assertEqual([op.key for op in txn.ops], [b"rows:public:entries:911fee88", b"rows:public:wide:w1", b"metadata:0"])
        wide_state = crdt.map_rr_entries(txn.ops[1].state)[(b"row", crdt.MAP_RR)]
        self.assertEqual(wide_state[:7], (Atom("dict"), 101, 21, 32, 16, 105, 63))
        self.assertEqual(crdt.make_dict([(i, i) for i in range(101)])[:7], wide_state[:7])
        w = D.from_wal(txn)
        self.assertEqual((w.origin, w.origin_id, w.publication, w.commit_timestamp),
                         ("postgres_2", b"\x00\x00\x00\x00\x00\x00\x10\x00", "all_tables", 1660749606300000))
        deleted, wide = w.changes
        self.assertEqual(deleted, ResolvedChange("public", "entries", ("911fee88",),
                                                 {"id": "911fee88", "content": "héllo", "n": None}, True))
        expected = {f"c{i:03d}": str(i) for i in range(100)}
        expected["id"] = "w1"
        self.assertEqual(wide, ResolvedChange("public", "wide", ("w1",), expected, False))

    def test_metadata_effects_shape(self):
        meta = [op for op in self.frame(1).ops if op.key == b"metadata:0"][0]
        self.assertEqual(len(meta.effects), 5)
        updates, removes = crdt.map_rr_effect(meta.effects[2])
        self.assertEqual(removes, [])
        self.assertEqual(updates[0][0], (b"origin", crdt.REGISTER_LWW))
        self.assertEqual(updates[0][1][1], b"satellite:client-1")


names = st.text(min_size=1, max_size=8)
values = st.one_of(st.none(), st.text(max_size=10))


@st.composite
def transactions(draw):
    """A few transactions over a small key space, so rows get updated, deleted and resurrected."""
    tables = [("public", "t"), ("s:x", "t%y")]
    result = []
    for n in range(draw(st.integers(1, 4))):
        changes = []
        for _ in range(draw(st.integers(1, 4))):
            schema, table = draw(st.sampled_from(tables))
            key = (draw(st.sampled_from(["1", "2", "a:b", "50%"])),)
            op = draw(st.sampled_from([UPSERT, UPSERT, DELETE]))
            row = draw(st.dictionaries(names, values, max_size=3)) if op == UPSERT else None
            changes.append(RowChange(schema, table, op, key, row))
        result.append(Transaction(draw(st.text(min_size=1, max_size=10)), draw(st.binary(max_size=12)),
                                  draw(st.integers(0, 2 ** 52)), tuple(changes)))
    return result


class RoundTripThroughTheFakeEngine(unittest.TestCase):
    @settings(max_examples=150, deadline=None)
    @given(transactions(), st.booleans())
    def test_what_goes_in_comes_back(self, txns, stale):
        # stale: the fake streams states from before each transaction, as the real node sometimes does.
        fake = FakeVaxine(stale_states=stale)
        model = {}  # (schema, table, key) -> (columns, deleted)
        for t in txns:
            w = D.from_wal(commit_to_wal(fake, t, "pub"))
            self.assertEqual((w.origin, w.origin_id, w.publication, w.commit_timestamp),
                             (t.origin, t.origin_id, "pub", t.commit_timestamp))
            touched = []
            for c in t.changes:
                rid = (c.schema, c.table, c.key)
                columns, _ = model.get(rid, ({}, False))
                if c.op == UPSERT:
                    model[rid] = ({**columns, **c.values}, False)
                else:
                    model[rid] = (columns, True)
                if rid not in touched:
                    touched.append(rid)
            got = {(r.schema, r.table, r.key): (r.row, r.deleted) for r in w.changes}
            self.assertEqual(got, {rid: model[rid] for rid in touched})

    def test_a_stale_state_alone_would_lose_the_row(self):
        fake = FakeVaxine(stale_states=True)
        t = Transaction("o", b"1", 0, (RowChange("s", "t", UPSERT, KEY, {"id": "1", "c": "x"}),))
        wal = commit_to_wal(fake, t)
        row = [op for op in wal.ops if op.key == ROW_KEY][0]
        self.assertEqual(crdt.dict_items(row.state), [])
        with self.assertRaisesRegex(D.InvalidWalTransaction, "empty state"):
            D.row_from_state(row.state)
        self.assertEqual(D.from_wal(wal).changes, (ResolvedChange("s", "t", KEY, {"id": "1", "c": "x"}, False),))

    def test_resend_of_an_unknown_row_yields_nothing(self):
        fake = FakeVaxine()
        t = Transaction("o", b"1", 0, (RowChange("s", "t", RESEND, KEY),))
        self.assertEqual(D.from_wal(commit_to_wal(fake, t)).changes, ())
        commit_to_wal(fake, Transaction("o", b"2", 0, (RowChange("s", "t", DELETE, KEY),)))
        w = D.from_wal(commit_to_wal(fake, t))
        self.assertEqual(w.changes, (ResolvedChange("s", "t", KEY, {}, True),))


class Rejected(unittest.TestCase):
    def wal(self, ops):
        return S.WalTransaction(None, None, S.WalOffset(1, 2), tuple(ops))

    def meta(self, **fields):
        effects = [([((name.encode(), crdt.REGISTER_LWW), (crdt.OK, (1, value)))], []) for name, value in fields.items()]
        return S.WalOp(b"metadata:0", b"vax", crdt.MAP_RR, crdt.make_dict([]), tuple(effects))

    def row(self, entries):
        return S.WalOp(b"rows:s:t:1", b"vax", crdt.MAP_RR, crdt.make_dict(entries), ())

    GOOD_META = dict(commit_timestamp=b"2022-08-17 15:20:06.202865Z", origin=b"o")

    def test_foreign(self):
        with self.assertRaisesRegex(D.ForeignTransaction, "no metadata object: not Electric's"):
            D.from_wal(self.wal([self.row([])]))

    def test_several_metadata_objects(self):
        other = S.WalOp(b"metadata:o:31", b"vax", crdt.MAP_RR, crdt.make_dict([]), self.meta(**self.GOOD_META).effects)
        with self.assertRaisesRegex(D.InvalidWalTransaction, "has 2 metadata objects"):
            D.from_wal(self.wal([self.meta(**self.GOOD_META), other]))
        self.assertEqual(D.from_wal(self.wal([other])).origin, "o")

    def test_invalid(self):
        reg = lambda v: (5, v)  # noqa: E731
        for ops, pattern in [
            ([self.meta(origin=b"o")], "lack commit_timestamp or origin"),
            ([self.meta(commit_timestamp=b"nope", origin=b"o")], "is not YYYY-MM-DD"),
            ([self.meta(**self.GOOD_META), self.row([])], "invalid materialized row: empty state"),
            ([self.meta(**self.GOOD_META), self.row([((b"table", crdt.REGISTER_LWW), reg(b"t"))])], "no id"),
            ([self.meta(**self.GOOD_META), self.row([((b"id", crdt.REGISTER_LWW), reg(b"s:t"))])], "no primary-key part"),
            ([self.meta(**self.GOOD_META), self.row([((b"id", crdt.REGISTER_LWW), reg(b"s:t:1")),
                                                     ((b"table", crdt.REGISTER_LWW), reg(b"u"))])], "table register disagrees"),
            ([self.meta(**self.GOOD_META), self.row([((b"id", crdt.REGISTER_LWW), reg(b"s:t:1")),
                                                     ((b"row", crdt.MAP_RR), crdt.make_dict([((b"c", crdt.REGISTER_LWW), reg(b"x"))]))])],
             "not an ETF term"),
            ([self.meta(**self.GOOD_META), self.row([((b"id", crdt.REGISTER_LWW), reg(b"s:t:1")),
                                                     ((b"deleted?", crdt.FLAG_DW), (1, 2))])], "disable-wins flag is not"),
            ([self.meta(**self.GOOD_META), S.WalOp(b"rows:s:t:1", b"vax", crdt.MAP_RR, (1, 2), ())], "expected an Erlang dict"),
            ([self.meta(**self.GOOD_META), S.WalOp(b"rows:s:t:1", b"vax", crdt.MAP_RR, None, ())], "not a map state"),
        ]:
            with self.assertRaisesRegex(D.InvalidWalTransaction, pattern):
                D.from_wal(self.wal(ops))

    def test_row_without_flag_is_live(self):
        w = D.from_wal(self.wal([self.meta(**self.GOOD_META), self.row([
            ((b"id", crdt.REGISTER_LWW), (5, b"s:t:1")),
            ((b"row", crdt.MAP_RR), crdt.make_dict([((b"c", crdt.REGISTER_LWW), (6, D.encode_value("x")))]))])]))
        self.assertEqual(w.changes, (ResolvedChange("s", "t", ("1",), {"c": "x"}, False),))
        self.assertEqual(w.origin_id, b"")


class CrdtTerms(unittest.TestCase):
    def test_make_dict_sizes_like_erlang(self):
        for size, header in [(0, (0, 16, 16, 8, 80, 48)), (80, (80, 16, 16, 8, 80, 48)), (81, (81, 17, 32, 16, 85, 51)),
                             (101, (101, 21, 32, 16, 105, 63)), (161, (161, 33, 64, 32, 165, 99))]:
            term = crdt.make_dict([((str(i).encode(), crdt.REGISTER_LWW), (i, b"v")) for i in range(size)])
            self.assertEqual(term[1:7], header)
            self.assertEqual(len(term[8]), header[2] // 16)
            self.assertEqual(sorted(crdt.dict_items(term)),
                             sorted(((str(i).encode(), crdt.REGISTER_LWW), (i, b"v")) for i in range(size)))
            self.assertEqual(crdt.dict_items(etf.binary_to_term(etf.term_to_binary(term))), crdt.dict_items(term))

    def test_list_values_in_cells(self):
        term = crdt.make_dict([(b"k", [1, 2])])
        self.assertEqual(crdt.dict_items(term), [(b"k", [1, 2])])

    def test_flag_values(self):
        self.assertFalse(crdt.flag_dw_enabled(([], [b"d"])))
        self.assertTrue(crdt.flag_dw_enabled(([b"e"], [])))
        self.assertTrue(crdt.flag_dw_enabled(([b"e", b"e"], [])))
        self.assertFalse(crdt.flag_dw_enabled(([b"e"], [b"d"])))

    def test_value_matches_pb_read_shape(self):
        state = crdt.make_dict([((b"deleted?", crdt.FLAG_DW), ([], [b"d"])),
                                ((b"row", crdt.MAP_RR), crdt.make_dict([((b"c", crdt.REGISTER_LWW), (7, b"x"))]))])
        self.assertEqual(crdt.value(crdt.MAP_RR, state), {(b"deleted?", A.FLAG_DW): False,
                                                          (b"row", A.RRMAP): {(b"c", A.LWWREG): b"x"}})

    def test_apply_effect_rules(self):
        lww = crdt.REGISTER_LWW
        self.assertEqual(crdt.apply_effect(lww, (5, b"b"), (6, b"a")), (6, b"a"))
        self.assertEqual(crdt.apply_effect(lww, (7, b"b"), (6, b"a")), (7, b"b"))
        self.assertEqual(crdt.apply_effect(lww, (6, b"b"), (6, b"a")), (6, b"b"))   # tie: larger value
        flag = crdt.FLAG_DW
        live = crdt.apply_effect(flag, ([], [], [b"d"]), ([], []))
        self.assertEqual(live, ([], [b"d"]))
        deleted = crdt.apply_effect(flag, ([b"d"], [b"e"], []), live)
        self.assertEqual(deleted, ([b"e"], []))
        # A delete and an update that did not see each other: the update wins.
        concurrent = crdt.apply_effect(flag, ([b"e"], [], [b"d2"]), crdt.apply_effect(flag, ([], [b"e"], []), ([], [])))
        self.assertFalse(crdt.flag_dw_enabled(concurrent))
        m = crdt.MAP_RR
        row_key, col = (b"row", m), (b"c", lww)
        state = crdt.apply_effect(m, ([(row_key, (crdt.OK, ([(col, (crdt.OK, (1, b"x")))], [])))], []), {})
        self.assertEqual(state, {row_key: {col: (1, b"x")}})
        again = crdt.apply_effect(m, ([(row_key, (crdt.OK, ([(col, (crdt.OK, (1, b"x")))], [])))], []), state)
        self.assertEqual(again, state)
        flagged = crdt.apply_effect(m, ([((b"f", flag), (crdt.OK, ([], [b"e"], [])))], []), state)
        reset = crdt.apply_effect(m, ([], [((b"f", flag), (crdt.OK, ([b"e"], [], []))), (row_key, crdt.NONE)]), flagged)
        self.assertEqual(reset, state)   # the reset flag is at bottom and leaves the map
        self.assertEqual(crdt.state_from_term(m, crdt.make_dict([(row_key, crdt.make_dict([(col, (1, b"x"))]))])), state)
        with self.assertRaisesRegex(crdt.CrdtError, "flag effect is not"):
            crdt.apply_effect(flag, (1, 2), ([], []))
        with self.assertRaisesRegex(crdt.CrdtError, "unsupported CRDT type"):
            crdt.apply_effect(Atom("antidote_crdt_counter_pn"), 1, 0)

    def test_shape_errors(self):
        for call, pattern in [
            (lambda: crdt.dict_items((Atom("dict"), 1)), "expected an Erlang dict"),
            (lambda: crdt.dict_items((Atom("dict"), 1, 16, 16, 8, 80, 48, (), ((),))), "claims 1 entries but holds 0"),
            (lambda: crdt.dict_items((Atom("dict"), 0, 16, 16, 8, 80, 48, (), ([],))), "segment is not a tuple"),
            (lambda: crdt.dict_items((Atom("dict"), 0, 16, 16, 8, 80, 48, (), ((1,),))), "bucket is not a list"),
            (lambda: crdt.dict_items((Atom("dict"), 1, 16, 16, 8, 80, 48, (), (([(1, 2)],),))), "cons cell"),
            (lambda: crdt.map_rr_entries(crdt.make_dict([(b"k", 1)])), "map key is not"),
            (lambda: crdt.register_lww((1, "x")), "LWW register"),
            (lambda: crdt.map_rr_effect(([1], [])), "map effect update"),
            (lambda: crdt.map_rr_effect(([], [1])), "map effect removal"),
            (lambda: crdt.map_rr_effect(1), "map effect is not"),
            (lambda: crdt.value(Atom("antidote_crdt_counter_pn"), 1), "unsupported CRDT type"),
        ]:
            with self.assertRaisesRegex(crdt.CrdtError, pattern):
                call()
        self.assertEqual(crdt.map_rr_effect(([], [((b"k", crdt.REGISTER_LWW), crdt.NONE)])),
                         ([], [((b"k", crdt.REGISTER_LWW), None)]))
