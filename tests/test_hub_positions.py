"""LSN arithmetic for Postgres subscribers, client LSN bytes, and the offset store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from electric.hub import positions as P
from electric.hub.offsets import OffsetStore
from electric.postgres.protocol.lsn import format_lsn


class LsnTests(unittest.TestCase):
    def test_window_layout(self):
        t = P.transaction_lsns(1, 3)
        self.assertEqual(t, P.TransactionLsns(0x10, [0x10, 0x11, 0x12], 0xF0, 0x100))
        t2 = P.transaction_lsns(2, 1, base=0x1000)
        self.assertEqual((t2.begin, t2.commit, t2.end), (0x1110, 0x11F0, 0x1200))
        self.assertEqual(format_lsn(0x1_0000_01F0), "1/1F0")

    def test_many_changes_stay_inside_the_window(self):
        t = P.transaction_lsns(5, 1000)
        self.assertEqual(t.changes[-1], t.commit)
        self.assertEqual(t.changes, sorted(t.changes))
        self.assertGreater(t.begin, P.end_lsn(4))

    @given(st.integers(1, 10**12), st.integers(0, 10**6), st.integers(0, 300))
    def test_strictly_increasing_and_invertible(self, position, base_units, n):
        base = base_units * 0x100
        this = P.transaction_lsns(position, n, base)
        nxt = P.transaction_lsns(position + 1, n, base)
        self.assertLess(this.end, nxt.begin)
        self.assertLess(this.commit, nxt.commit)
        self.assertLess(this.commit, this.end)
        self.assertLessEqual(this.begin, this.commit)
        self.assertEqual(P.position_for_lsn(this.end, base), position)
        # Any LSN inside the next window still means "position applied".
        self.assertEqual(P.position_for_lsn(nxt.commit, base), position)
        self.assertEqual(P.position_for_lsn(this.end - 1, base), position - 1)

    def test_position_for_lsn_below_base(self):
        self.assertEqual(P.position_for_lsn(0, 0x5000), 0)
        self.assertEqual(P.position_for_lsn(0x4FFF, 0x5000), 0)

    @given(st.integers(0, 2**50), st.integers(0, 10**9))
    def test_rebased_continues_above_subscriber(self, lsn, position):
        base = P.rebased(lsn, position)
        self.assertEqual(base % P.LSN_STRIDE, 0)
        self.assertGreaterEqual(P.end_lsn(position, base), lsn)
        self.assertGreater(P.end_lsn(position + 1, base), lsn)
        if base:
            self.assertLess(P.end_lsn(position, base - P.LSN_STRIDE), lsn)

    def test_errors(self):
        self.assertRaises(ValueError, P.end_lsn, -1)
        self.assertRaises(ValueError, P.commit_lsn, 0)
        self.assertRaises(ValueError, P.end_lsn, 2**60)


class ClientLsnTests(unittest.TestCase):
    hub_id = bytes(range(8))

    @given(st.integers(0, 2**63))
    def test_round_trip(self, position):
        codec = P.ClientLsnCodec(self.hub_id)
        self.assertEqual(codec.position_from_client_lsn(codec.client_lsn(position)), position)

    def test_foreign_and_garbled(self):
        data = P.client_lsn(self.hub_id, 99)
        with self.assertRaises(ValueError) as e:
            P.position_from_client_lsn(b"\xff" * 8, data)
        self.assertIn("not this hub", str(e.exception))
        flipped = bytearray(data)
        flipped[12] ^= 1
        with self.assertRaises(ValueError) as e:
            P.position_from_client_lsn(self.hub_id, bytes(flipped))
        self.assertIn("garbled", str(e.exception))
        for junk in (b"", b"0", data + b"x"):
            with self.assertRaises(ValueError):
                P.position_from_client_lsn(self.hub_id, junk)
        self.assertRaises(ValueError, P.ClientLsnCodec, b"short")


class OffsetStoreTests(unittest.TestCase):
    def setUp(self):
        d = tempfile.mkdtemp(prefix="offsets-")
        self.addCleanup(shutil.rmtree, d, True)
        self.path = os.path.join(d, "sub", "offsets.dat")

    def test_round_trip_and_persistence(self):
        s = OffsetStore(self.path)
        self.assertFalse(os.path.exists(self.path))  # nothing on disk before startService
        self.assertRaises(RuntimeError, s.slot_base, "postgres_1")
        s.startService()
        self.assertEqual(s.slot_base("postgres_1"), 0)
        self.assertIsNone(s.client_lsn("c1"))
        s.set_slot_base("postgres_1", 0x2000)
        s.set_slot_base("postgres_1", 0x3000)
        s.set_client_lsn("c1", b"\x00\x01")
        s.stopService()
        self.assertRaises(RuntimeError, s.client_lsn, "c1")
        # Another process sees the committed values.
        out = subprocess.check_output(
            [sys.executable, "-c",
             "import sys; from electric.hub.offsets import OffsetStore; s = OffsetStore(sys.argv[1]); s.startService();"
             "print(s.slot_base('postgres_1'), s.client_lsn('c1').hex(), s.slot_bases())", self.path],
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        self.assertEqual(out.decode().strip(), "12288 0001 {'postgres_1': 12288}")

    def test_bad_input(self):
        s = OffsetStore(self.path)
        s.startService()
        self.addCleanup(s.stopService)
        self.assertRaises(ValueError, s.set_slot_base, "x", -1)
        self.assertRaises(ValueError, s.set_slot_base, "x", "10")
        self.assertRaises(ValueError, s.set_client_lsn, "c", "text")
        self.assertEqual(s.slot_bases(), {})

    def test_not_a_database(self):
        with open(self.path.replace("sub/", ""), "wb") as f:
            f.write(b"this is not sqlite" * 100)
        with self.assertRaises(ValueError) as e:
            OffsetStore(self.path.replace("sub/", "")).startService()
        self.assertIn("not a usable offset store", str(e.exception))
