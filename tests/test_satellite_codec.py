"""Satellite frames: both type tables, byte-exact examples, rows, bitmask, generated-code freshness."""

import os
import tempfile

from twisted.trial import unittest

from electric.satellite import codec
from electric.satellite.codec import ORIGINAL, V0_2, FrameError
from electric.satellite.pb import generate, satellite_pb2 as pb, satellite_v0_2_pb2 as pb2


def h(text):
    return bytes.fromhex(text.replace(" ", ""))


class GeneratedCode(unittest.TestCase):
    def test_committed_modules_are_fresh(self):
        with tempfile.TemporaryDirectory() as tmp:
            fresh = generate.generate(tmp)
        for name, content in fresh.items():
            with open(os.path.join(generate.HERE, name), "rb") as f:
                self.assertEqual(
                    f.read(), content, f"{name} is stale: run python -m electric.satellite.pb.generate"
                )


class TypeTables(unittest.TestCase):
    ORIGINAL_TABLE = {
        "SatErrorResp": 0, "SatAuthReq": 1, "SatAuthResp": 2, "SatGetServerInfoReq": 3,
        "SatGetServerInfoResp": 4, "SatPingReq": 5, "SatPingResp": 6, "SatInStartReplicationReq": 7,
        "SatInStartReplicationResp": 8, "SatInStopReplicationReq": 9, "SatInStopReplicationResp": 10,
        "SatOpLog": 11, "SatRelation": 12,
    }
    V0_2_TABLE = {
        "SatErrorResp": 0, "SatAuthReq": 1, "SatAuthResp": 2, "SatPingReq": 3, "SatPingResp": 4,
        "SatInStartReplicationReq": 5, "SatInStartReplicationResp": 6, "SatInStopReplicationReq": 7,
        "SatInStopReplicationResp": 8, "SatOpLog": 9, "SatRelation": 10, "SatMigrationNotification": 11,
    }

    def _roundtrip_all(self, gen, table):
        for name, byte in table.items():
            if name == "SatAuthReq":
                frame = codec.auth_request(gen, "c1", "tok")
                self.assertEqual(frame[0], byte)
                got = codec.decode(gen, frame)
                self.assertEqual((got.id, got.token), ("c1", "tok"))
                continue
            cls = getattr(gen.pb, name)
            frame = codec.encode(gen, cls())
            self.assertEqual(frame[:1], bytes([byte]), name)
            self.assertEqual(codec.message_name(codec.decode(gen, frame)), name)
        self.assertIsNone(gen.message_class(len(table)))

    def test_original_table(self):
        self._roundtrip_all(ORIGINAL, self.ORIGINAL_TABLE)

    def test_v0_2_table(self):
        self._roundtrip_all(V0_2, self.V0_2_TABLE)

    def test_original_has_no_migration_message_and_v0_2_no_server_info(self):
        self.assertFalse(ORIGINAL.has("SatMigrationNotification"))
        self.assertFalse(V0_2.has("SatGetServerInfoReq"))
        with self.assertRaises(KeyError):
            codec.encode(ORIGINAL, pb.SatMigrationNotification())

    def test_message_of_other_generation_refused(self):
        with self.assertRaises(TypeError):
            codec.encode(V0_2, pb.SatPingReq())


class ByteExamples(unittest.TestCase):
    """The byte-level examples of satellite-protocol.md section 14."""

    def test_auth_req(self):
        req = codec.decode(ORIGINAL, h("01 0a 05 64 65 76 2d 31 12 05 61 6c 69 63 65"))
        self.assertEqual((req.id, req.token, req.proto_version), ("dev-1", "alice", None))

    def test_auth_resp(self):
        self.assertEqual(
            codec.encode(ORIGINAL, pb.SatAuthResp(id="region-1.dev.electric-db")),
            h("02 0a 18") + b"region-1.dev.electric-db",
        )

    def test_errors(self):
        self.assertEqual(codec.encode(ORIGINAL, pb.SatErrorResp()), h("00"))
        self.assertEqual(codec.encode(ORIGINAL, pb.SatErrorResp(error_type=1)), h("00 08 01"))
        self.assertEqual(codec.encode(ORIGINAL, pb.SatErrorResp(error_type=4)), h("00 08 04"))

    def test_start_replication(self):
        self.assertEqual(
            codec.encode(ORIGINAL, pb.SatInStartReplicationReq(options=[2], sync_batch_size=1)),
            h("07 12 01 02 18 01"),
        )
        self.assertEqual(codec.decode(ORIGINAL, h("07 0a 01 30")).lsn, b"0")
        with_empty_packed = codec.decode(ORIGINAL, h("07 0a 01 30 12 00"))
        self.assertEqual((with_empty_packed.lsn, list(with_empty_packed.options)), (b"0", []))
        self.assertEqual(list(codec.decode(ORIGINAL, h("07 12 01 03")).options), [3])
        unpacked = codec.decode(ORIGINAL, h("07 10 03"))
        self.assertEqual(list(unpacked.options), [3])
        self.assertEqual(codec.encode(ORIGINAL, pb.SatInStartReplicationResp()), h("08"))
        self.assertEqual(codec.encode(V0_2, pb2.SatInStartReplicationReq(options=[2], sync_batch_size=1)), h("05 12 01 02 18 01"))

    def test_ping(self):
        self.assertEqual(codec.encode(ORIGINAL, pb.SatPingReq()), h("05"))
        self.assertEqual(codec.encode(ORIGINAL, pb.SatPingResp(lsn=b"")), h("06 0a 00"))
        self.assertEqual(codec.encode(ORIGINAL, pb.SatPingResp(lsn=h("00000001"))), h("06 0a 04 00 00 00 01"))
        self.assertEqual(codec.encode(ORIGINAL, pb.SatPingResp()), h("06"))
        self.assertFalse(codec.decode(ORIGINAL, h("06")).HasField("lsn"))
        present = codec.decode(ORIGINAL, h("06 0a 00"))
        self.assertTrue(present.HasField("lsn"))
        self.assertEqual(codec.encode(V0_2, pb2.SatPingResp(lsn=b"")), h("04 0a 00"))

    def test_relation(self):
        rel = pb.SatRelation(
            schema_name="public", table_name="items", relation_id=16384,
            columns=[pb.SatRelationColumn(name="id", type="uuid"), pb.SatRelationColumn(name="content", type="varchar")],
        )
        expected = (
            h("0c 0a 06") + b"public" + h("1a 05") + b"items" + h("20 80 80 01 2a 0a 0a 02") + b"id"
            + h("12 04") + b"uuid" + h("2a 12 0a 07") + b"content" + h("12 07") + b"varchar"
        )
        self.assertEqual(codec.encode(ORIGINAL, rel), expected)
        self.assertEqual(codec.encode(V0_2, pb2.SatRelation.FromString(rel.SerializeToString()))[0], 10)

    def test_server_transaction(self):
        row = codec.encode_row(ORIGINAL, ["id", "content"], {"id": "a1", "content": None})
        lsn = h("83 61 05")
        ts = 1670403000000
        log = pb.SatOpLog(ops=[
            pb.SatTransOp(begin=pb.SatOpBegin(commit_timestamp=ts, lsn=lsn)),
            pb.SatTransOp(update=pb.SatOpUpdate(relation_id=16384, row_data=row)),
            pb.SatTransOp(commit=pb.SatOpCommit(commit_timestamp=ts, lsn=lsn)),
        ])
        expected = h(
            "0b"
            "0a 0e 0a 0c 08 c0 8d 9c de ce 30 1a 03 83 61 05"
            "0a 11 1a 0f 08 80 80 01 12 09 0a 01 40 12 02 61 31 12 00"
            "0a 0e 12 0c 08 c0 8d 9c de ce 30 1a 03 83 61 05"
        )
        self.assertEqual(codec.encode(ORIGINAL, log), expected)

    def test_client_transaction_relation_zero(self):
        frame = h("0b 0a 0f 0a 0d 08 01 1a 04 00 00 00 01") + h("0a 0d 22 0b 1a 09 0a 01 00 12 01 31 12 01 78") + h("0a 02 12 00")
        # the begin entry length must match its content: rebuild it exactly
        begin = pb.SatTransOp(begin=pb.SatOpBegin(commit_timestamp=1, lsn=h("00000001"))).SerializeToString()
        frame = h("0b") + h("0a") + bytes([len(begin)]) + begin + h("0a 0d 22 0b 1a 09 0a 01 00 12 01 31 12 01 78 0a 02 12 00")
        log = codec.decode(ORIGINAL, frame)
        self.assertEqual([op.WhichOneof("op") for op in log.ops], ["begin", "insert", "commit"])
        ins = log.ops[1].insert
        self.assertEqual(ins.relation_id, 0)
        self.assertEqual(codec.decode_row(ins.row_data, ["id", "content"]), {"id": "1", "content": "x"})


class AuthRequests(unittest.TestCase):
    def test_v0_2_header_detected(self):
        frame = codec.auth_request(V0_2, "client-1", "alice")
        req = codec.decode(ORIGINAL, frame)  # the server decodes before it knows the generation
        self.assertEqual(req.proto_version, "Electric.Satellite.v0_2")
        self.assertEqual((req.id, req.token), ("client-1", "alice"))

    def test_original_schema_fields_ignored(self):
        req = codec.decode(ORIGINAL, codec.encode(ORIGINAL, pb.SatAuthReq(id="a", token="b", schema_version="1.0", schema_hash="x")))
        self.assertEqual((req.id, req.token, req.headers), ("a", "b", ()))

    def test_nested_junk_in_field_3_tolerated(self):
        payload = h("0a 01 61 12 01 62") + h("1a 03 ff fe fd") + h("1a 02 08 07")
        req = codec.decode(ORIGINAL, b"\x01" + payload)
        self.assertEqual((req.id, req.token), ("a", "b"))
        self.assertIsNone(req.proto_version)

    def test_truncated_auth_is_undecodable(self):
        with self.assertRaises(FrameError) as e:
            codec.decode(ORIGINAL, h("01 0a 05 64"))
        self.assertEqual(e.exception.code, codec.INTERNAL)


class BadFrames(unittest.TestCase):
    def test_empty(self):
        with self.assertRaises(FrameError) as e:
            codec.decode(ORIGINAL, b"")
        self.assertEqual((e.exception.code, str(e.exception)), (codec.INTERNAL, "empty frame"))

    def test_unknown_type(self):
        with self.assertRaises(FrameError) as e:
            codec.decode(ORIGINAL, b"rubbish")
        self.assertIn("unknown message type byte 114", str(e.exception))
        with self.assertRaises(FrameError):
            codec.decode(V0_2, b"\x0c")

    def test_not_protobuf(self):
        with self.assertRaises(FrameError) as e:
            codec.decode(ORIGINAL, h("0b ff ff ff"))
        self.assertEqual(e.exception.code, codec.INTERNAL)
        self.assertIn("SatOpLog", str(e.exception))


class Rows(unittest.TestCase):
    def test_bitmask_msb_first(self):
        self.assertEqual(codec.nulls_bitmask([True]), h("80"))
        self.assertEqual(codec.nulls_bitmask([False] * 7 + [True]), h("01"))
        self.assertEqual(codec.nulls_bitmask([False] * 8 + [True]), h("00 80"))
        self.assertEqual(codec.nulls_bitmask([False, True]), h("40"))
        self.assertEqual(codec.nulls_bitmask([]), b"")
        self.assertEqual(codec.nulls_bitmask([False] * 8), h("00"))
        self.assertTrue(codec.is_null(h("00 80"), 8))
        self.assertFalse(codec.is_null(h("00 80"), 7))

    def test_encode_row(self):
        row = codec.encode_row(V0_2, ["a", "b", "c"], {"a": "5", "b": "", "c": None})
        self.assertEqual(row.nulls_bitmask, h("20"))
        self.assertEqual(list(row.values), [b"5", b"", b""])
        missing = codec.encode_row(V0_2, ["a", "b"], {"a": "x"})
        self.assertEqual(missing.nulls_bitmask, h("40"))

    def test_decode_row(self):
        row = pb.SatOpRow(nulls_bitmask=h("40"), values=[b"a1", b"ignored"])
        self.assertEqual(codec.decode_row(row, ["id", "content"]), {"id": "a1", "content": None})
        nine = pb.SatOpRow(nulls_bitmask=h("00 80"), values=[b"v"] * 9)
        self.assertIsNone(codec.decode_row(nine, [str(i) for i in range(9)])["8"])

    def test_decode_row_wrong_count(self):
        with self.assertRaises(FrameError) as e:
            codec.decode_row(pb.SatOpRow(nulls_bitmask=h("00"), values=[b"a"]), ["id", "content"])
        self.assertEqual(e.exception.code, codec.INVALID_REQUEST)
        self.assertEqual(str(e.exception), "row has 1 values for 2 columns")

    def test_decode_row_short_bitmask(self):
        with self.assertRaises(FrameError) as e:
            codec.decode_row(pb.SatOpRow(nulls_bitmask=b"", values=[b"a"]), ["id"])
        self.assertEqual(e.exception.code, codec.INVALID_REQUEST)

    def test_decode_row_nul(self):
        with self.assertRaises(FrameError) as e:
            codec.decode_row(pb.SatOpRow(nulls_bitmask=h("00"), values=[b"a\x00b"]), ["id"])
        self.assertIn("NUL", str(e.exception))

    def test_decode_row_not_utf8(self):
        with self.assertRaises(FrameError):
            codec.decode_row(pb.SatOpRow(nulls_bitmask=h("00"), values=[b"\xff"]), ["id"])

    def test_client_type_names(self):
        self.assertEqual(codec.client_type_name("int4"), "int4")
        self.assertEqual(codec.client_type_name("varchar"), "varchar")
        self.assertEqual(codec.client_type_name("bpchar"), "char")
        self.assertEqual(codec.client_type_name("_int4"), "text")
        self.assertEqual(codec.client_type_name("bool"), "text")
        self.assertEqual(codec.client_type_name("numeric"), "text")
        self.assertEqual(codec.client_type_name("timestamptz"), "text")
