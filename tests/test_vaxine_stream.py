"""Replication-stream codec: request bytes, offsets, server terms, the client state machine, any split, garbage."""

import random

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from electric.vaxine import etf, stream as S
from electric.vaxine.errors import FrameError, ProtocolError
from electric.vaxine.etf import Atom, Pid, Reference
from electric.vaxine.framing import frame
from tests import seeds

SEED = seeds.choose()  # ELECTRIC_TEST_SEED reruns a failure
print(f"test_vaxine_stream seed {SEED}")

NODE = Atom("vaxine@127.0.0.1")
TXID = (Atom("tx_id"), 1660749606209843, Pid(NODE, 1315, 0, 7))
DCID = (NODE, (1660, 749589, 514678))
REP_ID = Reference(NODE, 7, (236190, 3916431362, 359432688))


def wal_txn(left, right, ops=()):
    return (S.VX_WAL_TXN, TXID, DCID, (left, right), list(ops))


def op(key=b"k", state=None, effects=()):
    state = state if state is not None else (Atom("dict"), 0, 16, 16, 8, 80, 48, tuple([[]] * 16), (tuple([[]] * 16),))
    return ((key, b"vax"), Atom("antidote_crdt_map_rr"), state, list(effects))


def server(term):
    return frame(etf.term_to_binary(term))


@seeds.reports_seed(SEED)
class Requests(unittest.TestCase):
    REF = Reference(Atom("nonode@nohost"), 0, (0x0002E9CD, 0x9C580001, 0x78218015))

    def test_start_from_zero_matches_the_spec_bytes(self):
        expected = bytes.fromhex(
            "836803" "64000a" + b"vx_cli_req".hex() +
            "5a0003" "64000d" + b"nonode@nohost".hex() + "00000000" "0002e9cd9c58000178218015"
            "6802640010" + b"vx_cli_start_req".hex() +
            "6c00000001" "6802640006" + b"offset".hex() + "6100" "6a")
        self.assertEqual(S.start_request(self.REF, S.BEGINNING), frame(expected))

    def test_start_from_eof_and_token(self):
        eof = S.start_request(self.REF, S.EOF)
        self.assertTrue(eof.endswith(bytes.fromhex("6802640006") + b"offset" + bytes.fromhex("64000365") + b"of" + b"j"))
        token = S.start_request(self.REF, S.WalOffset(5159, 9941))
        self.assertTrue(token.endswith(bytes.fromhex("6802620000142762000026d56a")))

    def test_raw_values_and_stop(self):
        term = etf.binary_to_term(S.start_request(self.REF, S.EOF, raw_values=True)[4:])
        self.assertEqual(term[2][1], [(S.OFFSET, S.EOF), (S.RAW_VALUES, Atom("true"))])
        stop = etf.binary_to_term(S.stop_request(self.REF, REP_ID)[4:])
        self.assertEqual(stop, (S.VX_CLI_REQ, self.REF, (S.VX_CLI_STOP_REQ, REP_ID)))

    def test_new_ref_shape(self):
        rng = random.Random(SEED)
        for _ in range(100):
            ref = S.new_ref(rng)
            self.assertEqual(len(ref.ids), 3)
            self.assertLess(ref.ids[0], 2 ** 18)
            self.assertEqual(etf.binary_to_term(etf.term_to_binary(ref)), ref)


class Offsets(unittest.TestCase):
    def test_bytes(self):
        self.assertEqual(S.offset_to_bytes(S.BEGINNING), b"0")
        self.assertEqual(S.offset_to_bytes(S.EOF), b"eof")
        self.assertEqual(S.offset_to_bytes(S.WalOffset(5159, 9941)), bytes.fromhex("836802620000142762000026d5"))
        self.assertEqual(S.offset_from_bytes(b"0"), 0)
        self.assertEqual(S.offset_from_bytes(b"eof"), S.EOF)

    @given(st.integers(0, 2 ** 70), st.integers(0, 2 ** 70))
    def test_round_trip(self, left, right):
        offset = S.WalOffset(left, right)
        self.assertEqual(S.offset_from_bytes(S.offset_to_bytes(offset)), offset)

    def test_refused(self):
        for data in (b"", b"1", etf.term_to_binary((1, 2, 3)), etf.term_to_binary((-1, 2)),
                     etf.term_to_binary([1, 2]), b"\x83\x00"):
            with self.assertRaisesRegex(ValueError, "not a Vaxine offset"):
                S.offset_from_bytes(data)
        for bad in (1, -1, Atom("x"), (1, 2), None, True):
            with self.assertRaisesRegex(ValueError, "an offset is 0, eof or a WalOffset"):
                S.check_offset(bad)
        with self.assertRaises(ValueError):
            S.WalOffset(-1, 2)

    def test_server_offsets_checked(self):
        with self.assertRaisesRegex(ProtocolError, "bad WAL offset"):
            S.parse_server_term(wal_txn(10, 5))
        with self.assertRaisesRegex(ProtocolError, "bad WAL offset"):
            S.parse_server_term((S.VX_WAL_TXN, TXID, DCID, 7, []))


class ServerTerms(unittest.TestCase):
    def test_classification(self):
        self.assertEqual(S.parse_server_term((S.VX_SRV_RES, REP_ID, (S.VX_SRV_START_RES, REP_ID))),
                         S.StartAccepted(REP_ID, REP_ID))
        self.assertEqual(S.parse_server_term((S.VX_SRV_RES, REP_ID, (S.VX_SRV_STOP_RES,))), S.StopAccepted(REP_ID))
        self.assertEqual(S.parse_server_term((S.VX_SRV_RES, REP_ID, (S.ERROR, Atom("unknown_error")))),
                         S.StartRefused(REP_ID, Atom("unknown_error")))
        self.assertEqual(S.parse_server_term((S.ERROR, S.BAD_PROTO)), S.BadProto())
        txn = S.parse_server_term(wal_txn(0, 1420, [op(b"a", effects=[([], [])])]))
        self.assertEqual(txn.offset, S.WalOffset(0, 1420))
        self.assertEqual(txn.ops[0].key, b"a")
        self.assertEqual(txn.ops[0].bucket, b"vax")
        self.assertEqual(txn.ops[0].effects, (([], []),))
        self.assertEqual(txn.txid, TXID)

    def test_raw_values_ops(self):
        txn = S.parse_server_term(wal_txn(0, 5, [((b"k2", b"vax"), Atom("antidote_crdt_map_rr"), ([], []))]))
        self.assertIsNone(txn.ops[0].state)
        self.assertEqual(txn.ops[0].effects, (([], []),))

    def test_unexpected_shapes(self):
        for term, pattern in [
            (Atom("hello"), "unexpected replication-stream term"),
            ((S.VX_SRV_RES, 1, (S.VX_SRV_STOP_RES,)), "unexpected"),
            ((S.VX_WAL_TXN, TXID, DCID, (0, 1), "ops"), "expected a list"),
            (wal_txn(0, 1, [(b"k", Atom("t"), 1, [])]), "bad object key"),
            (wal_txn(0, 1, [((b"k", b"vax"), b"t", 1, [])]), "bad CRDT type"),
            (wal_txn(0, 1, [((b"k", b"vax"), Atom("t"), 1, ())]), "bad effects"),
            (wal_txn(0, 1, [1]), "bad vx_wal_txn operation"),
        ]:
            with self.assertRaisesRegex(ProtocolError, pattern):
                S.parse_server_term(term)


STREAM = [
    (S.VX_SRV_RES, None, (S.VX_SRV_START_RES, REP_ID)),
    wal_txn(0, 1420, [op(b"a")]),
    wal_txn(1846, 2615, [op(b"b" * 3000)]),
    wal_txn(1846, 3810, [op(b"c"), op(b"d")]),
]


@seeds.reports_seed(SEED)
class Client(unittest.TestCase):
    def started_client(self, offset=S.BEGINNING):
        client = S.StreamClient(rng=random.Random(SEED))
        request = client.start(offset)
        ref = etf.binary_to_term(request[4:])[1]
        self.assertEqual(client.state, client.STARTING)
        return client, ref

    def stream_bytes(self, ref, terms):
        return b"".join(server((t[0], ref, t[2]) if t[0] == S.VX_SRV_RES else t) for t in terms)

    def test_any_split_gives_the_same_events(self):
        rng = random.Random(SEED)
        whole = None
        for _ in range(100):
            client, ref = self.started_client()
            data = self.stream_bytes(ref, STREAM)
            events, i = [], 0
            while i < len(data):
                n = rng.randint(1, 200)
                events += client.receive(data[i:i + n])
                i += n
            whole = whole or events
            self.assertEqual(events, whole)
        self.assertEqual([type(e).__name__ for e in whole], ["Started", "WalTransaction", "WalTransaction", "WalTransaction"])
        self.assertEqual(client.position, S.WalOffset(1846, 3810))
        self.assertEqual(client.state, client.STREAMING)

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.integers(1, 300), min_size=1, max_size=20))
    def test_property_split(self, sizes):
        client, ref = self.started_client()
        data = self.stream_bytes(ref, STREAM)
        events, i, k = [], 0, 0
        while i < len(data):
            events += client.receive(data[i:i + sizes[k % len(sizes)]])
            i, k = i + sizes[k % len(sizes)], k + 1
        self.assertEqual(len(events), 4)
        self.assertEqual(client.buffered, 0)

    def test_transaction_before_start_reply(self):
        client, ref = self.started_client()
        with self.assertRaisesRegex(ProtocolError, "expected the start reply first"):
            client.receive(server(wal_txn(0, 1)))

    def test_foreign_reference(self):
        client, _ = self.started_client()
        other = Reference(Atom("x@y"), 0, (1, 2, 3))
        with self.assertRaisesRegex(ProtocolError, "expected the start reply first"):
            client.receive(server((S.VX_SRV_RES, other, (S.VX_SRV_START_RES, REP_ID))))

    def test_refused_and_bad_proto(self):
        client, ref = self.started_client()
        with self.assertRaisesRegex(ProtocolError, "refused the stream start: Atom\\('unknown_error'\\)"):
            client.receive(server((S.VX_SRV_RES, ref, (S.ERROR, Atom("unknown_error")))))
        client, ref = self.started_client()
        with self.assertRaisesRegex(ProtocolError, "bad_proto"):
            client.receive(server((S.ERROR, S.BAD_PROTO)))

    def test_resume_drops_what_the_token_covers(self):
        client, ref = self.started_client(S.WalOffset(1846, 2615))
        events = client.receive(self.stream_bytes(ref, [STREAM[0], wal_txn(0, 1420), wal_txn(1846, 2615),
                                                         wal_txn(1846, 3810), wal_txn(0, 2000)]))
        self.assertEqual([e.offset for e in events[1:]], [S.WalOffset(1846, 3810), S.WalOffset(0, 2000)])

    def test_stop(self):
        client, ref = self.started_client()
        client.receive(self.stream_bytes(ref, STREAM[:2]))
        request = client.stop()
        stop_ref = etf.binary_to_term(request[4:])[1]
        self.assertEqual(etf.binary_to_term(request[4:])[2], (S.VX_CLI_STOP_REQ, REP_ID))
        events = client.receive(server(wal_txn(5000, 6000)) + server((S.VX_SRV_RES, stop_ref, (S.VX_SRV_STOP_RES,))))
        self.assertEqual(events, [S.Stopped()])
        self.assertEqual(client.state, client.STOPPED)
        self.assertEqual(client.position, S.WalOffset(0, 1420))
        with self.assertRaisesRegex(ProtocolError, "state stopped"):
            client.receive(server(wal_txn(7000, 8000)))

    def test_misuse(self):
        client, _ = self.started_client()
        with self.assertRaisesRegex(ProtocolError, "one start per session"):
            client.start(S.EOF)
        with self.assertRaisesRegex(ProtocolError, "only a started stream can be stopped"):
            client.stop()

    def test_garbage_and_oversize(self):
        client, _ = self.started_client()
        with self.assertRaisesRegex(ProtocolError, "undecodable replication-stream frame: bad ETF version byte"):
            client.receive(frame(b"\x00junk"))
        small = S.StreamClient(max_frame=10)
        small.start(S.EOF)
        with self.assertRaisesRegex(FrameError, "frame of 11 bytes announced"):
            small.receive(frame(b"x" * 11))

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=100))
    def test_garbage_gives_protocol_error_only(self, data):
        client, _ = self.started_client()
        try:
            client.receive(data)
        except ProtocolError as e:
            self.assertTrue(str(e))
