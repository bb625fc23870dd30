"""pgoutput codec: spec byte vectors, round trips, versions, bad input."""

import struct

from twisted.trial import unittest

from electric.hub.interface import UNCHANGED
from electric.postgres import pgoutput as po
from electric.postgres.lsn import format_lsn, pg_to_datetime
from electric.postgres.pgoutput import PgoutputError, decode

BEGIN_HEX = "42 00000002A7F4A880 000230F65858D5F2 0000026B"
RELATION_HEX = ("52 0000400C 7075626C696300 656E747269657300 66 0002 "
                "01 696400 00000B86 FFFFFFFF 01 636F6E74656E7400 00000413 00000044")


def hx(s):
    return bytes.fromhex(s.replace(" ", ""))


ITEMS = po.Relation(16385, "public", "items", "d", (
    po.RelationColumn(1, "id", 25, -1), po.RelationColumn(0, "content", 25, -1),
    po.RelationColumn(0, "n", 23, -1)))

SAMPLES = [
    po.Begin(0x1925B48, 123456789, 729),
    po.Commit(0x1925B48, 0x1925B78, 123456789),
    po.Origin(0x1B11F80, "pg_16397"),
    ITEMS,
    po.Relation(1, "s", "noCols", "n", ()),
    po.Type(16412, "public", "mood"),
    po.Insert(16385, ("c", "three", "3")),
    po.Insert(16385, ("e", None, None)),
    po.Update(16385, ("c", "THREE", "3")),
    po.Update(16385, ("c2", "THREE", "3"), key=("c", None, None)),
    po.Update(16385, ("c", UNCHANGED, "3"), old=("c", "x" * 19000, "2")),
    po.Delete(16385, key=("d", None, None)),
    po.Delete(16385, old=("d", "four", "4")),
    po.Truncate((16385,), 0),
    po.Truncate((16385, 16386), 3),
    po.LogicalMessage(1, 0x19FB640, "electric", b"inside txn"),
    po.LogicalMessage(0, 0, "", b""),
    po.Insert(7, ("", "tab\there \"q\" \\ nl\nend \u00e9 \u2713", b"\x00\x01binary")),
]


class SpecVectorTests(unittest.TestCase):
    def test_begin_example(self):
        m = decode(hx(BEGIN_HEX))
        self.assertIsInstance(m, po.Begin)
        self.assertEqual(format_lsn(m.final_lsn), "2/A7F4A880")
        self.assertEqual(pg_to_datetime(m.commit_timestamp).isoformat(), "2019-07-18T17:02:35.726322+00:00")
        self.assertEqual(m.xid, 619)
        self.assertEqual(m.encode(), hx(BEGIN_HEX))

    def test_relation_example(self):
        m = decode(hx(RELATION_HEX))
        self.assertEqual((m.relation_id, m.namespace, m.name, m.replica_identity), (16396, "public", "entries", "f"))
        self.assertEqual([(c.name, c.type_name, c.type_modifier, c.is_key) for c in m.columns],
                         [("id", "uuid", -1, True), ("content", "varchar", 68, True)])
        self.assertEqual(m.column_names, ("id", "content"))
        self.assertEqual(m.key_columns, ("id", "content"))
        self.assertEqual(m.encode(), hx(RELATION_HEX))

    def test_trace_sizes(self):
        # pg15-subscriber-trace.md section 12: observed payload sizes.
        self.assertEqual(len(po.Begin(0, 0, 0).encode()), 21)
        self.assertEqual(len(po.Commit(0, 0, 0).encode()), 26)
        self.assertEqual(len(po.Origin(0, "pg_16397").encode()), 18)
        self.assertEqual(len(ITEMS.encode()), 61)
        self.assertEqual(len(po.Type(16412, "public", "mood").encode()), 17)
        self.assertEqual(len(po.Truncate((16385,)).encode()), 10)
        self.assertEqual(len(po.StreamStart(1, True).encode()), 6)
        self.assertEqual(len(po.StreamStop().encode()), 1)
        self.assertEqual(len(po.StreamCommit(1, 2, 3, 4).encode()), 30)
        self.assertEqual(len(po.StreamAbort(1, 2).encode()), 9)

    def test_exact_insert_bytes(self):
        self.assertEqual(po.Insert(16385, ("c", None, UNCHANGED, b"\x01")).encode(),
                         b"I" + struct.pack("!I", 16385) + b"N\x00\x04" + b"t\x00\x00\x00\x01c" + b"n" + b"u"
                         + b"b\x00\x00\x00\x01\x01")

    def test_negative_typmod_and_large_oids(self):
        rel = po.Relation(0xFFFFFFFF, "a", "b", "i", (po.RelationColumn(0, "x", 0xFFFFFFF0, -2),))
        self.assertEqual(decode(rel.encode()), rel)
        self.assertIsNone(rel.columns[0].type_name)
        self.assertIn(b"\xff\xff\xff\xfe", rel.encode())


class RoundTripTests(unittest.TestCase):
    def test_every_message_roundtrips(self):
        for m in SAMPLES:
            self.assertEqual(decode(m.encode()), m, m)

    def test_truncate_option_bits(self):
        for options, cascade, restart in [(0, False, False), (1, True, False), (2, False, True), (3, True, True)]:
            t = decode(po.Truncate((1, 2, 3), options).encode())
            self.assertEqual((t.options, t.cascade, t.restart_identity, t.relation_ids),
                             (options, cascade, restart, (1, 2, 3)))

    def test_tuple_kinds(self):
        ins = decode(po.Insert(1, (None, UNCHANGED, "t", b"b", "")).encode())
        self.assertIsNone(ins.new[0])
        self.assertIs(ins.new[1], UNCHANGED)
        self.assertEqual(ins.new[2:], ("t", b"b", ""))

    def test_update_and_delete_forms(self):
        self.assertIsNone(decode(po.Update(1, ("a",)).encode()).old)
        self.assertEqual(decode(po.Update(1, ("a",), key=("k",)).encode()).key, ("k",))
        self.assertEqual(decode(po.Update(1, ("a",), old=("o",)).encode()).old, ("o",))
        self.assertEqual(decode(po.Delete(1, key=("k",)).encode()).values, ("k",))
        self.assertEqual(decode(po.Delete(1, old=("o",)).encode()).values, ("o",))
        self.assertRaises(PgoutputError, po.Update(1, ("a",), old=("o",), key=("k",)).encode)
        self.assertRaises(PgoutputError, po.Delete(1).encode)

    def test_streaming_v2(self):
        d = po.PgoutputDecoder(proto_version=2)
        stream = [po.StreamStart(752, True),
                  po.Relation(16402, "public", "items2", "d", ITEMS.columns, xid=752),
                  po.Type(16412, "public", "mood", xid=752),
                  po.Insert(16402, ("a", "b", "1"), xid=752),
                  po.Update(16402, ("a", "c", "1"), xid=752),
                  po.Delete(16402, key=("a", None, None), xid=752),
                  po.Truncate((16402,), 1, xid=752),
                  po.LogicalMessage(1, 5, "p", b"c", xid=752),
                  po.StreamStop(),
                  po.StreamAbort(752, 753),
                  po.StreamStart(752, False), po.Insert(16402, ("b", "b", "2"), xid=752), po.StreamStop(),
                  po.StreamCommit(752, 0x19D5140, 0x19D5170, 99),
                  po.Begin(1, 2, 3), po.Insert(16402, ("c", "c", "3")), po.Commit(1, 2, 2)]
        self.assertEqual([d.decode(m.encode()) for m in stream], stream)
        # xid prefix is exactly 4 bytes after the tag
        self.assertEqual(po.Insert(1, (), xid=752).encode()[:5], b"I" + struct.pack("!I", 752))
        # The stateless form needs to be told.
        raw = po.Insert(1, ("x",), xid=9).encode()
        self.assertEqual(decode(raw, in_stream=True), po.Insert(1, ("x",), xid=9))
        with self.assertRaises(PgoutputError):
            decode(raw)

    def test_stream_state_errors(self):
        d = po.PgoutputDecoder(2)
        self.assertRaises(PgoutputError, d.decode, po.StreamStop().encode())
        d.decode(po.StreamStart(1, True).encode())
        with self.assertRaises(PgoutputError) as cm:
            d.decode(po.StreamStart(2, True).encode())
        self.assertIn("while the block of xid 1 is open", str(cm.exception))

    def test_proto_version_checks(self):
        d1 = po.PgoutputDecoder(1)
        with self.assertRaises(PgoutputError) as cm:
            d1.decode(po.StreamStart(1, True).encode())
        self.assertIn("not valid in proto_version 1", str(cm.exception))
        d2 = po.PgoutputDecoder(2)
        self.assertRaises(PgoutputError, d2.decode, po.BeginPrepare(1, 2, 3, 4, "g").encode())
        self.assertRaises(ValueError, po.PgoutputDecoder, 9)

    def test_two_phase_v3(self):
        d = po.PgoutputDecoder(3)
        msgs = [po.BeginPrepare(0x10, 0x20, 5, 700, "gid1"),
                po.Prepare(0, 0x10, 0x20, 5, 700, "gid1"),
                po.CommitPrepared(0, 0x30, 0x40, 6, 700, "gid1"),
                po.RollbackPrepared(0, 0x20, 0x50, 5, 7, 701, "gid2"),
                po.StreamPrepare(0, 0x60, 0x70, 8, 702, "gid3")]
        self.assertEqual([d.decode(m.encode()) for m in msgs], msgs)


class MalformedTests(unittest.TestCase):
    def check(self, payload, text):
        with self.assertRaises(PgoutputError) as cm:
            decode(payload)
        self.assertIn(text, str(cm.exception))
        return cm.exception

    def test_unknown_first_byte(self):
        e = self.check(b"Zabc", "unsupported pgoutput message type b'Z'")
        self.assertEqual(e.sqlstate, "08P01")
        self.check(b"", "empty pgoutput message")

    def test_every_truncation_of_every_sample_is_a_clean_error(self):
        for m in SAMPLES + [po.StreamCommit(1, 2, 3, 4), po.StreamAbort(1, 2), po.StreamStart(1, True)]:
            raw = m.encode()
            for n in range(1, len(raw)):
                with self.assertRaises(PgoutputError, msg=f"{m!r} cut at {n}"):
                    decode(raw[:n])

    def test_trailing_bytes(self):
        self.check(po.Begin(1, 2, 3).encode() + b"\0", "Begin message: 1 unexpected trailing byte(s)")

    def test_bad_markers_and_kinds(self):
        self.check(b"I\x00\x00\x00\x01X\x00\x00", "Insert tuple marker")
        self.check(b"U\x00\x00\x00\x01Z", "Update tuple marker")
        self.check(b"U\x00\x00\x00\x01K\x00\x00Q\x00\x00", "Update new tuple marker")
        self.check(b"D\x00\x00\x00\x01N\x00\x00", "Delete tuple marker")
        self.check(b"I\x00\x00\x00\x01N\x00\x01z", "unknown tuple data kind b'z'")
        self.check(b"I\x00\x00\x00\x01N\xff\xff", "negative column count")
        self.check(b"I\x00\x00\x00\x01N\x00\x01t\xff\xff\xff\xff", "overruns")
        self.check(b"I\x00\x00\x00\x01N\x00\x01t\x00\x00\x00\x09abc", "overruns")
        self.check(b"I\x00\x00\x00\x01N\x00\x01t\x00\x00\x00\x01\xff", "not valid UTF-8")
        self.check(b"R\x00\x00\x00\x01a\0b\0z\x00\x00", "unknown replica identity 'z'")
        self.check(b"T\xff\xff\xff\xff\x00", "relation ids announced")
        self.check(b"O\x00\x00\x00\x00\x00\x00\x00\x00name", "not NUL-terminated")
        self.check(b"M\x01" + b"\0" * 8 + b"p\0\xff\xff\xff\xff", "negative")

    def test_unencodable_values(self):
        self.assertRaises(PgoutputError, po.Insert(1, (5,)).encode)
        self.assertRaises(PgoutputError, po.Origin(0, "a\0b").encode)
        self.assertRaises(PgoutputError, po.Relation(1, "a", "b", "dd", ()).encode)
