"""pgoutput codec: spec byte vectors, round trips, versions, bad input."""

import struct

from twisted.trial import unittest

from electric.hub.interface import UNCHANGED
from electric.postgres.protocol import pgoutput as po
from electric.postgres.protocol.lsn import format_lsn, parse_lsn, pg_to_datetime
from electric.postgres.protocol.pgoutput import PgoutputError, decode

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


# --------------------------------------------------------------------------
# Real Postgres 15: decode what a real walsender sends, re-encode it exactly.

from twisted.internet import threads  # noqa: E402

from electric.postgres.protocol.messages import CopyBothResponse, CopyData, ErrorResponse  # noqa: E402
from electric.postgres.protocol.replication_messages import PrimaryKeepalive, StandbyStatusUpdate, XLogData  # noqa: E402
from tests.pgcluster import PgCluster  # noqa: E402
from tests.test_pg_auth import BlockingPgConnection  # noqa: E402

_cluster = []

SESSION_OPTIONS = " -c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3 -c TimeZone=UTC"

SETUP_SQL = r"""
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE types_t (
  id int4 PRIMARY KEY, c_int2 int2, c_int8 int8, c_text text, c_varchar varchar(20), c_char char(3),
  c_bool bool, c_float4 float4, c_float8 float8, c_numeric numeric, c_numeric_10_2 numeric(10,2),
  c_date date, c_timestamp timestamp, c_timestamp3 timestamp(3), c_timestamptz timestamptz,
  c_uuid uuid, c_json json, c_jsonb jsonb, c_bytea bytea, c_int4_arr int4[], c_text_arr text[],
  c_mood mood, c_big text);
ALTER TABLE types_t ALTER COLUMN c_big SET STORAGE EXTERNAL;
CREATE TABLE full_t (id int PRIMARY KEY, v text, big text);
ALTER TABLE full_t ALTER COLUMN big SET STORAGE EXTERNAL;
ALTER TABLE full_t REPLICA IDENTITY FULL;
CREATE TABLE items (id text PRIMARY KEY, content text, n integer);
CREATE TABLE other (id serial PRIMARY KEY, x int);
CREATE PUBLICATION pub FOR ALL TABLES;
"""

DML = [
    r"""INSERT INTO types_t VALUES (1, 32767, 9223372036854775807, E'tab\there "quote" \\ back, newline\nend, unicode é ✓',
  'varchar val', 'ab', true, 3.14, 0.1, 12345678901234567890.123456789, 12.5, '2024-02-29',
  '2024-02-29 13:45:56.123456', '2024-02-29 13:45:56.123456', '2024-02-29 13:45:56.123456+02',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"b": 1,  "a": [1, 2]}', '{"b": 1, "a": [1, 2, {"c": null}]}',
  '\xdeadbeef00', '{1,NULL,3}', '{"a b","c,d",NULL}', 'happy', repeat('x', 19000));""",
    r"""INSERT INTO types_t (id, c_text, c_float4, c_float8, c_numeric, c_timestamp, c_timestamptz, c_bytea, c_jsonb)
  VALUES (2, '', 'NaN', '-Infinity', 'NaN', 'infinity', '-infinity', '', '[]');""",
    r"""UPDATE types_t SET c_int2 = -32768 WHERE id = 1;""",
    r"""UPDATE types_t SET id = 3 WHERE id = 2;""",
    r"""DELETE FROM types_t WHERE id = 3;""",
    r"""INSERT INTO full_t VALUES (1, 'a', repeat('y', 19000));""",
    r"""UPDATE full_t SET v = 'b' WHERE id = 1;""",
    r"""DELETE FROM full_t WHERE id = 1;""",
    r"""SELECT pg_logical_emit_message(false, 'electric', 'non-txn message');""",
    r"""BEGIN; INSERT INTO items VALUES ('a', 'hello', 10); SELECT pg_logical_emit_message(true, 'electric', 'inside txn'); COMMIT;""",
    r"""TRUNCATE items;""",
    r"""TRUNCATE items, other RESTART IDENTITY CASCADE;""",
    r"""SELECT pg_replication_origin_create('electric_remote');""",
    r"""SELECT pg_replication_origin_session_setup('electric_remote');""",
    r"""BEGIN; SELECT pg_replication_origin_xact_setup('0/ABCDEF0', '2024-01-01 00:00:00+00'); INSERT INTO items VALUES ('o', 'from origin', 1); COMMIT;""",
    r"""SELECT pg_replication_origin_session_reset();""",
    r"""SELECT pg_logical_emit_message(false, 'electric', 'done');""",
]



def real_cluster():
    if not _cluster:
        c = PgCluster(extra_conf=["logical_decoding_work_mem = '64kB'"]).start()
        c.psql(SETUP_SQL)
        _cluster.append(c)
    return _cluster[0]


def stream_until(conn, done, decoder, limit=200000):
    """Read XLogData/keepalives until `done(message)`; check every message re-encodes exactly."""
    out, keepalives = [], []
    for _ in range(limit):
        msg = conn.next()
        if isinstance(msg, ErrorResponse):
            raise AssertionError(str(msg))
        assert isinstance(msg, CopyData), msg
        rep = msg.replication_message()
        if isinstance(rep, PrimaryKeepalive):
            keepalives.append(rep)
            continue
        assert isinstance(rep, XLogData), rep
        m = decoder.decode(rep.data)
        if m.encode() != rep.data:
            raise AssertionError(f"re-encoding {m!r} differs from what Postgres sent: "
                                 f"{rep.data.hex()} vs {m.encode().hex()}")
        out.append((rep, m))
        if done(m):
            return out, keepalives
    raise AssertionError("stream did not finish")


def is_done_message(m):
    return isinstance(m, po.LogicalMessage) and m.content == b"done"


class RealWalsenderTests(unittest.TestCase):
    def setUp(self):
        self.cluster = real_cluster()

    def replication_connection(self):
        conn = BlockingPgConnection(self.cluster.port, replication="database", options=SESSION_OPTIONS)
        conn.connect()
        self.addCleanup(conn.close)
        return conn

    def run_statements(self, statements):
        """One Query per statement on one ordinary session, so each is its own transaction."""
        conn = BlockingPgConnection(self.cluster.port)
        conn.connect()
        try:
            for sql in statements:
                conn.query(sql)
        finally:
            conn.close()

    def test_proto_v1_every_message_kind_and_type(self):
        return threads.deferToThread(self._v1)

    def _v1(self):
        conn = self.replication_connection()
        desc, rows, tag = conn.query('CREATE_REPLICATION_SLOT "s_v1" LOGICAL pgoutput (SNAPSHOT \'nothing\')')
        self.assertEqual(desc.names, ["slot_name", "consistent_point", "snapshot_name", "output_plugin"])
        slot, point, snapshot, plugin = rows[0].texts()
        self.assertEqual((slot, snapshot, plugin), ("s_v1", None, "pgoutput"))
        parse_lsn(point)  # parses
        self.run_statements(DML)
        result = conn.query("START_REPLICATION SLOT s_v1 LOGICAL 0/0 "
                            "(proto_version '1', publication_names 'pub', messages 'true')")
        self.assertIsInstance(result[3], CopyBothResponse)
        frames, _ = stream_until(conn, is_done_message, po.PgoutputDecoder(1))
        msgs = [m for _, m in frames]
        kinds = [type(m).__name__ for m in msgs]
        for kind in ("Begin", "Commit", "Origin", "Relation", "Type", "Insert", "Update", "Delete",
                     "Truncate", "LogicalMessage"):
            self.assertIn(kind, kinds)

        rels = {m.relation_id: m for m in msgs if isinstance(m, po.Relation)}
        by_name = {m.name: m for m in rels.values()}
        types_t = by_name["types_t"]
        self.assertEqual(types_t.replica_identity, "d")
        cols = {c.name: c for c in types_t.columns}
        self.assertEqual([c.name for c in types_t.columns if c.is_key], ["id"])
        self.assertEqual((cols["c_varchar"].type_modifier, cols["c_char"].type_modifier,
                          cols["c_numeric_10_2"].type_modifier, cols["c_timestamp3"].type_modifier,
                          cols["c_text"].type_modifier), (24, 7, 655366, 3, -1))
        self.assertEqual({n: cols[n].type_name for n in ("c_int2", "c_int4_arr", "c_text_arr", "c_uuid", "c_jsonb")},
                         {"c_int2": "int2", "c_int4_arr": "_int4", "c_text_arr": "_text", "c_uuid": "uuid",
                          "c_jsonb": "jsonb"})
        mood = [m for m in msgs if isinstance(m, po.Type)][0]
        self.assertEqual((mood.namespace, mood.name, mood.type_oid), ("public", "mood", cols["c_mood"].type_oid))
        self.assertLess(msgs.index(mood), msgs.index(types_t))
        self.assertEqual(by_name["full_t"].replica_identity, "f")
        self.assertTrue(all(c.is_key for c in by_name["full_t"].columns))

        def rows_of(kind, rel):
            return [m for m in msgs if isinstance(m, kind) and m.relation_id == rel.relation_id]

        ins = rows_of(po.Insert, types_t)
        row1 = dict(zip(types_t.column_names, ins[0].new))
        self.assertEqual(row1["c_text"], 'tab\there "quote" \\ back, newline\nend, unicode é ✓')
        expected = {"id": "1", "c_int2": "32767", "c_int8": "9223372036854775807", "c_varchar": "varchar val",
                    "c_char": "ab ", "c_bool": "t", "c_float4": "3.14", "c_float8": "0.1",
                    "c_numeric": "12345678901234567890.123456789", "c_numeric_10_2": "12.50",
                    "c_date": "2024-02-29", "c_timestamp": "2024-02-29 13:45:56.123456",
                    "c_timestamp3": "2024-02-29 13:45:56.123", "c_timestamptz": "2024-02-29 11:45:56.123456+00",
                    "c_uuid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "c_json": '{"b": 1,  "a": [1, 2]}',
                    "c_jsonb": '{"a": [1, 2, {"c": null}], "b": 1}', "c_bytea": "\\xdeadbeef00",
                    "c_int4_arr": "{1,NULL,3}", "c_text_arr": '{"a b","c,d",NULL}', "c_mood": "happy"}
        self.assertEqual({k: row1[k] for k in expected}, expected)
        self.assertEqual(row1["c_big"], "x" * 19000)
        row2 = dict(zip(types_t.column_names, ins[1].new))
        self.assertEqual({k: row2[k] for k in ("id", "c_text", "c_float4", "c_float8", "c_numeric", "c_timestamp",
                                                "c_timestamptz", "c_bytea", "c_jsonb", "c_int2")},
                         {"id": "2", "c_text": "", "c_float4": "NaN", "c_float8": "-Infinity", "c_numeric": "NaN",
                          "c_timestamp": "infinity", "c_timestamptz": "-infinity", "c_bytea": "\\x",
                          "c_jsonb": "[]", "c_int2": None})

        upd_toast, upd_key = rows_of(po.Update, types_t)
        new = dict(zip(types_t.column_names, upd_toast.new))
        self.assertIs(new["c_big"], UNCHANGED)  # TOASTed value untouched by the UPDATE
        self.assertEqual(new["c_int2"], "-32768")
        self.assertIsNone(upd_toast.key)
        self.assertIsNone(upd_toast.old)
        self.assertEqual(upd_key.key[0], "2")
        self.assertTrue(all(v is None for v in upd_key.key[1:]))
        self.assertEqual(upd_key.new[0], "3")
        dele, = rows_of(po.Delete, types_t)
        self.assertEqual(dele.key[0], "3")
        self.assertIsNone(dele.old)

        full = by_name["full_t"]
        fupd, = rows_of(po.Update, full)
        self.assertEqual(fupd.old, ("1", "a", "y" * 19000))
        self.assertEqual(fupd.new, ("1", "b", UNCHANGED))
        fdel, = rows_of(po.Delete, full)
        self.assertEqual(fdel.old, ("1", "b", "y" * 19000))

        truncs = [m for m in msgs if isinstance(m, po.Truncate)]
        self.assertEqual(truncs[0].options, 0)
        self.assertEqual(truncs[0].relation_ids, (by_name["items"].relation_id,))
        self.assertEqual(truncs[1].options, 3)
        self.assertTrue(truncs[1].cascade and truncs[1].restart_identity)
        self.assertEqual(set(truncs[1].relation_ids), {by_name["items"].relation_id, by_name["other"].relation_id})

        lms = [m for m in msgs if isinstance(m, po.LogicalMessage)]
        self.assertEqual([(m.transactional, m.prefix, m.content) for m in lms],
                         [(False, "electric", b"non-txn message"), (True, "electric", b"inside txn"),
                          (False, "electric", b"done")])

        origin, = [m for m in msgs if isinstance(m, po.Origin)]
        self.assertEqual((origin.name, origin.origin_lsn), ("electric_remote", 0xABCDEF0))
        self.assertIsInstance(msgs[msgs.index(origin) - 1], po.Begin)

        begins = [m for m in msgs if isinstance(m, po.Begin)]
        commits = [m for m in msgs if isinstance(m, po.Commit)]
        self.assertEqual(len(begins), len(commits))
        for b, c in zip(begins, commits):
            self.assertEqual(b.final_lsn, c.commit_lsn)
            self.assertLess(c.commit_lsn, c.end_lsn)
        self.assertEqual(pg_to_datetime(commits[-1].commit_timestamp).isoformat(), "2024-01-01T00:00:00+00:00")

        # Our standby status update moves the slot on the real server.
        last_end = commits[-1].end_lsn
        conn.send(CopyData(StandbyStatusUpdate(last_end, last_end, last_end, 0, True).encode()))
        _, keepalives = self._until_keepalive(conn)
        self.cluster.wait_for("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 's_v1'",
                              format_lsn(last_end))

    def _until_keepalive(self, conn):
        while True:
            rep = conn.next().replication_message()
            if isinstance(rep, PrimaryKeepalive):
                return None, [rep]

    def test_proto_v2_streamed_transaction(self):
        return threads.deferToThread(self._v2)

    def _v2(self):
        conn = self.replication_connection()
        conn.query('CREATE_REPLICATION_SLOT "s_v2" LOGICAL pgoutput (SNAPSHOT \'nothing\')')
        self.run_statements(["CREATE TABLE big_t (id int PRIMARY KEY, v text)",
                             "INSERT INTO big_t SELECT g, 'row ' || g FROM generate_series(1, 2000) g",
                             "SELECT pg_logical_emit_message(false, 'electric', 'done')"])
        conn.query("START_REPLICATION SLOT s_v2 LOGICAL 0/0 "
                   "(proto_version '2', publication_names '\"pub\"', streaming 'on', messages 'true')")
        frames, _ = stream_until(conn, is_done_message, po.PgoutputDecoder(2))
        msgs = [m for _, m in frames]
        starts = [m for m in msgs if isinstance(m, po.StreamStart)]
        self.assertGreater(len(starts), 1)
        self.assertTrue(starts[0].first_segment)
        self.assertFalse(any(s.first_segment for s in starts[1:]))
        xid = starts[0].xid
        inserts = [m for m in msgs if isinstance(m, po.Insert)]
        self.assertEqual(len(inserts), 2000)
        self.assertTrue(all(m.xid == xid for m in inserts))
        self.assertEqual(inserts[-1].new, ("2000", "row 2000"))
        rel = [m for m in msgs if isinstance(m, po.Relation) and m.name == "big_t"][0]
        self.assertEqual(rel.xid, xid)
        commit, = [m for m in msgs if isinstance(m, po.StreamCommit)]
        self.assertEqual(commit.xid, xid)
        self.assertLess(commit.commit_lsn, commit.end_lsn)
        self.assertEqual(len(starts), len([m for m in msgs if isinstance(m, po.StreamStop)]))


# --------------------------------------------------------------------------
# Fuzzing: malformed payloads only ever raise PgoutputError.

from hypothesis import given, settings, strategies as st  # noqa: E402

_TAGS = b"BCORYIUDTMSEcAbPKrp"


class FuzzTests(unittest.TestCase):
    @settings(max_examples=500, deadline=None)
    @given(st.sampled_from(_TAGS), st.binary(max_size=80), st.booleans())
    def test_random_bodies(self, tag, body, in_stream):
        try:
            decode(bytes([tag]) + body, in_stream=in_stream)
        except PgoutputError:
            pass

    @settings(max_examples=500, deadline=None)
    @given(st.sampled_from(SAMPLES), st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)),
                                             min_size=1, max_size=3))
    def test_mutated_samples(self, msg, edits):
        raw = bytearray(msg.encode())
        for pos, val in edits:
            raw[pos % len(raw)] = val
        try:
            m = decode(bytes(raw))
        except PgoutputError:
            return
        # Whatever decoded must encode back to the same bytes.
        self.assertEqual(m.encode(), bytes(raw))
