"""Antidote PB frames: the spec's reference bytes, framing under any split, replies, garbage, freshness."""

import random
import struct

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from electric import pb_generate
from electric.vaxine import antidote as A
from electric.vaxine import etf
from electric.vaxine.errors import FrameError, ProtocolError, RequestFailed
from electric.vaxine.pb import antidote_pb2 as pb
from tests import seeds

SEED = seeds.choose()  # ELECTRIC_TEST_SEED reruns a failure
print(f"test_vaxine_antidote seed {SEED}")


def body(message):
    """A frame without its 4-byte length, as the spec shows them."""
    data = A.encode(message)
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
    return data[4:]


def hexbytes(text):
    return bytes.fromhex("".join(text.split()))


OBJ = A.bound_object(b"rows:s:t:1", A.RRMAP)


class SpecReferenceBytes(unittest.TestCase):
    """spec/vaxine.md 1.3: bytes produced by Vaxine's own codec."""

    def test_start_transaction(self):
        self.assertEqual(body(A.start_transaction()), hexbytes("77 0a 0a 83 64 00 06 69 67 6e 6f 72 65 12 00"))

    def test_commit(self):
        self.assertEqual(body(A.commit_transaction(b"TX")), hexbytes("79 0a 02 54 58"))

    def test_read_objects(self):
        self.assertEqual(body(A.read_objects(b"TX", [OBJ])), hexbytes(
            "74 0a 13 0a 0a 72 6f 77 73 3a 73 3a 74 3a 31 10 0b 1a 03 76 61 78 12 02 54 58"))

    def test_update_objects(self):
        ops = [
            A.update_op(OBJ, A.map_update([(b"deleted?", A.FLAG_DW, A.flag(False))])),
            A.update_op(OBJ, A.map_update([
                (b"row", A.RRMAP, A.map_update([(b"c", A.LWWREG, A.assign(b"v"))])),
                (b"row", A.RRMAP, A.map_update([(b"d", A.LWWREG, A.assign(b"w"))])),
            ])),
        ]
        self.assertEqual(body(A.update_objects(b"TX", ops)), hexbytes("""
            76 0a 2f 0a 13 0a 0a 72 6f 77 73 3a 73 3a 74 3a 31 10 0b 1a 03 76 61 78
                  12 18 2a 16 0a 14 0a 0c 0a 08 64 65 6c 65 74 65 64 3f 10 0e 12 04 3a 02 08 00
               0a 57 0a 13 0a 0a 72 6f 77 73 3a 73 3a 74 3a 31 10 0b 1a 03 76 61 78
                  12 40 2a 3e 0a 1d 0a 07 0a 03 72 6f 77 10 0b 12 12 2a 10 0a 0e 0a 05 0a 01 63 10 05 12 05 1a 03 0a 01 76
                              0a 1d 0a 07 0a 03 72 6f 77 10 0b 12 12 2a 10 0a 0e 0a 05 0a 01 64 10 05 12 05 1a 03 0a 01 77
               12 02 54 58"""))

    def test_static_read(self):
        self.assertEqual(body(A.static_read_objects([OBJ])), hexbytes(
            "7b 0a 0e 0a 0a 83 64 00 06 69 67 6e 6f 72 65 12 00 12 13 0a 0a 72 6f 77 73 3a 73 3a 74 3a 31 10 0b 1a 03 76 61 78"))

    def test_replies(self):
        self.assertEqual(A.decode(hexbytes("6f 08 01")), pb.ApbOperationResp(success=True))
        self.assertEqual(A.decode(hexbytes("7c 08 01 12 02 54 58")),
                         pb.ApbStartTransactionResp(success=True, transaction_descriptor=b"TX"))
        self.assertEqual(A.decode(hexbytes("7f 08 01 12 02 43 54")), pb.ApbCommitResp(success=True, commit_time=b"CT"))
        self.assertEqual(A.decode(hexbytes("7f 08 00 18 03")), pb.ApbCommitResp(success=False, errorcode=3))
        for reply in (pb.ApbOperationResp(success=True), pb.ApbCommitResp(success=False, errorcode=3)):
            self.assertEqual(A.decode(body(reply)), reply)

    def test_ignore_is_the_etf_atom(self):
        self.assertEqual(A.IGNORE, etf.term_to_binary(etf.Atom("ignore")))


@seeds.reports_seed(SEED)
class Framing(unittest.TestCase):
    MESSAGES = [
        A.start_transaction(), A.commit_transaction(b"TX"), A.read_objects(b"TX", [OBJ]),
        A.static_read_objects([OBJ, A.bound_object("k", A.LWWREG)]),
        pb.ApbErrorResp(errmsg=b"boom", errcode=0), pb.ApbOperationResp(success=True),
        pb.ApbReadObjectsResp(success=True, objects=[pb.ApbReadObjectResp(reg=pb.ApbGetRegResp(value=b"x" * 300))]),
        A.update_objects(b"TX", []),
    ]

    def test_any_split_decodes_the_same(self):
        stream = b"".join(A.encode(m) for m in self.MESSAGES)
        rng = random.Random(SEED)
        for _ in range(200):
            decoder = A.Decoder()
            got, i = [], 0
            while i < len(stream):
                n = rng.randint(1, 40)
                got += decoder.feed(stream[i:i + n])
                i += n
            self.assertEqual(got, self.MESSAGES)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(1, 50), min_size=1, max_size=30))
    def test_property_split(self, sizes):
        stream = b"".join(A.encode(m) for m in self.MESSAGES)
        decoder, got, i, k = A.Decoder(), [], 0, 0
        while i < len(stream):
            n = sizes[k % len(sizes)]
            got += decoder.feed(stream[i:i + n])
            i, k = i + n, k + 1
        self.assertEqual(got, self.MESSAGES)

    def test_frame_limit_checked_at_the_header(self):
        decoder = A.Decoder(max_frame=100)
        with self.assertRaisesRegex(FrameError, "frame of 101 bytes announced; the limit is 100"):
            decoder.feed(struct.pack(">I", 101))

    def test_bad_frames(self):
        for data, pattern in [
            (struct.pack(">I", 0), "empty Antidote frame"),
            (struct.pack(">I", 1) + b"\x05", "unknown Antidote message code 5"),
            (struct.pack(">I", 3) + b"\x6f\xff\xff", r"undecodable ApbOperationResp \(code 111\)"),
            (struct.pack(">I", 1) + b"\x6f", r"undecodable ApbOperationResp .*required"),
        ]:
            with self.assertRaisesRegex(ProtocolError, pattern):
                A.Decoder().feed(data)

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=80))
    def test_garbage_gives_protocol_error_only(self, data):
        try:
            A.Decoder(max_frame=1000).feed(data)
        except ProtocolError as e:
            self.assertTrue(str(e))

    def test_encode_refuses_sub_messages(self):
        with self.assertRaisesRegex(ValueError, "not a top-level"):
            A.encode(OBJ)


class Replies(unittest.TestCase):
    def test_error_resp(self):
        with self.assertRaises(RequestFailed) as e:
            A.check_reply(A.commit_transaction(b"TX"), pb.ApbErrorResp(errmsg=b"exit: noproc", errcode=0))
        self.assertEqual(str(e.exception), "Vaxine refused ApbCommitTransaction: error code 0 (unknown): exit: noproc")
        self.assertEqual(e.exception.errorcode, 0)

    def test_not_success(self):
        with self.assertRaises(RequestFailed) as e:
            A.check_reply(A.commit_transaction(b"TX"), pb.ApbCommitResp(success=False, errorcode=3))
        self.assertEqual(str(e.exception), "Vaxine refused ApbCommitTransaction: error code 3 (aborted)")
        with self.assertRaisesRegex(RequestFailed, "no error code"):
            A.check_reply(A.update_objects(b"TX", []), pb.ApbOperationResp(success=False))
        bad = pb.ApbStaticReadObjectsResp(objects=pb.ApbReadObjectsResp(success=True),
                                          committime=pb.ApbCommitResp(success=False, errorcode=1))
        with self.assertRaisesRegex(RequestFailed, r"error code 1 \(timeout\)"):
            A.check_reply(A.static_read_objects([]), bad)

    def test_wrong_reply_type(self):
        with self.assertRaisesRegex(ProtocolError, "ApbCommitTransaction answered with ApbOperationResp"):
            A.check_reply(A.commit_transaction(b"TX"), pb.ApbOperationResp(success=True))

    def test_read_values(self):
        reply = pb.ApbReadObjectsResp(success=True, objects=[
            pb.ApbReadObjectResp(reg=pb.ApbGetRegResp(value=b"v")),
            pb.ApbReadObjectResp(flag=pb.ApbGetFlagResp(value=True)),
            pb.ApbReadObjectResp(counter=pb.ApbGetCounterResp(value=-3)),
            pb.ApbReadObjectResp(set=pb.ApbGetSetResp(value=[b"a", b"b"])),
            pb.ApbReadObjectResp(mvreg=pb.ApbGetMVRegResp(values=[b"x"])),
            pb.ApbReadObjectResp(map=pb.ApbGetMapResp(entries=[
                pb.ApbMapEntry(key=pb.ApbMapKey(key=b"row", type=A.RRMAP), value=pb.ApbReadObjectResp(
                    map=pb.ApbGetMapResp(entries=[pb.ApbMapEntry(
                        key=pb.ApbMapKey(key=b"c", type=A.LWWREG),
                        value=pb.ApbReadObjectResp(reg=pb.ApbGetRegResp(value=b"1")))]))),
            ])),
            pb.ApbReadObjectResp(map=pb.ApbGetMapResp()),
        ])
        self.assertEqual(A.read_values(reply), [b"v", True, -3, [b"a", b"b"], [b"x"],
                                                {(b"row", A.RRMAP): {(b"c", A.LWWREG): b"1"}}, {}])
        with self.assertRaisesRegex(ProtocolError, "no value set"):
            A.read_value(pb.ApbReadObjectResp())

    def test_descriptor(self):
        self.assertEqual(A.descriptor_of(pb.ApbStartTransactionResp(success=True, transaction_descriptor=b"D")), b"D")
        with self.assertRaisesRegex(ProtocolError, "without a transaction descriptor"):
            A.descriptor_of(pb.ApbStartTransactionResp(success=True))


class GeneratedCode(unittest.TestCase):
    def test_antidote_module_is_fresh(self):
        for package_dir, protos in pb_generate.TARGETS:
            if "antidote.proto" in protos:
                self.assertEqual(pb_generate.stale(package_dir, protos), [],
                                 "antidote_pb2.py is stale: run make compile")
                return
        self.fail("antidote.proto is not a pb_generate target")
