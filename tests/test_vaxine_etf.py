"""Erlang external term format: byte-exact examples from the spec and OTP, round trips, garbage."""

import struct

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from electric.vaxine import etf
from electric.vaxine.etf import Atom, BitBinary, ETFError, ImproperList, Pid, Reference

# Strategies for every kind of term the codec handles.
atoms = st.text(max_size=20).filter(lambda s: len(s) <= 255).map(Atom)
pids = st.builds(Pid, atoms, st.integers(0, 2 ** 32 - 1), st.integers(0, 2 ** 32 - 1), st.integers(0, 2 ** 32 - 1))
refs = st.builds(Reference, atoms, st.integers(0, 2 ** 32 - 1),
                 st.lists(st.integers(0, 2 ** 32 - 1), min_size=1, max_size=5).map(tuple))
bitbins = st.builds(BitBinary, st.binary(min_size=1, max_size=8), st.integers(1, 8))
integers = st.one_of(st.integers(0, 255), st.integers(-(2 ** 31), 2 ** 31 - 1), st.integers(-(2 ** 600), 2 ** 600))
floats = st.floats(allow_nan=False, allow_infinity=False)
hashable_leaves = st.one_of(atoms, integers, st.binary(max_size=40), pids, refs, bitbins)
leaves = st.one_of(hashable_leaves, floats)


def _terms(children):
    return st.one_of(
        st.lists(children, max_size=5).map(tuple),
        st.lists(children, max_size=5),
        st.builds(ImproperList, st.lists(children, min_size=1, max_size=3).map(tuple),
                  st.one_of(hashable_leaves, st.lists(children, max_size=2).map(tuple))),
        st.dictionaries(hashable_leaves, children, max_size=4),
    )


terms = st.recursive(leaves, _terms, max_leaves=25)


def canonical_eq(a, b):
    """Equality that also tells ints from floats (Python says 1 == 1.0; Erlang's =:= does not)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(canonical_eq(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(canonical_eq(a[k], b[k]) for k in a)
    if isinstance(a, ImproperList):
        return canonical_eq(a.items, b.items) and canonical_eq(a.tail, b.tail)
    return a == b


class SpecBytes(unittest.TestCase):
    """Exact bytes given in spec/vaxine.md (produced by OTP 25)."""

    def test_ignore_atom(self):
        self.assertEqual(etf.term_to_binary(Atom("ignore")), bytes.fromhex("8364000669676e6f7265"))

    def test_offset_token(self):
        data = bytes.fromhex("836802620000142762000026d5")
        self.assertEqual(etf.binary_to_term(data), (5159, 9941))
        self.assertEqual(etf.term_to_binary((5159, 9941)), data)

    def test_nil_both_forms(self):
        self.assertEqual(etf.term_to_binary(None), bytes.fromhex("836400036e696c"))
        self.assertEqual(etf.binary_to_term(bytes.fromhex("836400036e696c")), Atom("nil"))
        self.assertEqual(etf.binary_to_term(bytes.fromhex("8377036e696c")), Atom("nil"))

    def test_text_value(self):
        self.assertEqual(etf.term_to_binary(b"hello"), b"\x83m\x00\x00\x00\x05hello")

    def test_start_request_example(self):
        data = bytes.fromhex(
            "836803"
            "64000a" + b"vx_cli_req".hex() +
            "5a0003" "64000d" + b"nonode@nohost".hex() + "00000000" "0002e9cd9c5800017821" "8015"
            "6802640010" + b"vx_cli_start_req".hex() +
            "6c00000001" "6802640006" + b"offset".hex() + "6100" "6a")
        term = etf.binary_to_term(data)
        ref = Reference(Atom("nonode@nohost"), 0, (0x0002E9CD, 0x9C580001, 0x78218015))
        self.assertEqual(term, (Atom("vx_cli_req"), ref, (Atom("vx_cli_start_req"), [(Atom("offset"), 0)])))
        self.assertEqual(etf.term_to_binary(term), data)

    def test_integer_encoding_rule(self):
        self.assertEqual(etf.term_to_binary(0), b"\x83a\x00")
        self.assertEqual(etf.term_to_binary(255), b"\x83a\xff")
        self.assertEqual(etf.term_to_binary(256), b"\x83b\x00\x00\x01\x00")
        self.assertEqual(etf.term_to_binary(-1), b"\x83b\xff\xff\xff\xff")
        self.assertEqual(etf.term_to_binary(2 ** 31), b"\x83n\x04\x00\x00\x00\x00\x80")
        self.assertEqual(etf.term_to_binary(-(2 ** 31) - 1), b"\x83n\x04\x01\x01\x00\x00\x80")
        self.assertEqual(etf.term_to_binary(1660749606209843), bytes.fromhex("836e0700") + (1660749606209843).to_bytes(7, "little"))
        big = 2 ** 2100
        data = etf.term_to_binary(big)
        self.assertEqual(data[:7], b"\x83o" + struct.pack(">I", 263) + b"\x00")
        self.assertEqual(etf.binary_to_term(data), big)

    def test_dict_cell_is_improper_list(self):
        # [{<<"k">>, t} | {1, <<"v">>}] as OTP writes it: LIST_EXT of 1 with a tuple tail.
        data = b"\x83l\x00\x00\x00\x01h\x02m\x00\x00\x00\x01kd\x00\x01th\x02a\x01m\x00\x00\x00\x01v"
        cell = etf.binary_to_term(data)
        self.assertEqual(cell, ImproperList(((b"k", Atom("t")),), (1, b"v")))
        self.assertEqual(etf.cons_cell(cell), ((b"k", Atom("t")), (1, b"v")))
        self.assertEqual(etf.term_to_binary(cell), data)

    def test_pid(self):
        data = b"\x83X" + b"d\x00\x15vaxine28087@127.0.0.1" + struct.pack(">III", 1315, 0, 1842286608)
        pid = etf.binary_to_term(data)
        self.assertEqual(pid, Pid(Atom("vaxine28087@127.0.0.1"), 1315, 0, 1842286608))
        self.assertEqual(etf.term_to_binary(pid), data)

    def test_map(self):
        # #{a => 1} and the vector-clock shape of a PB commit time.
        self.assertEqual(etf.binary_to_term(b"\x83t\x00\x00\x00\x01d\x00\x01aa\x01"), {Atom("a"): 1})
        clock = {(Atom("n@h"), (1796, 281867, 854269)): 1796282114286164}
        self.assertEqual(etf.binary_to_term(etf.term_to_binary(clock)), clock)

    def test_string_ext(self):
        self.assertEqual(etf.binary_to_term(b"\x83k\x00\x03abc"), [97, 98, 99])
        self.assertEqual(etf.term_to_binary([97, 98, 99]), b"\x83k\x00\x03abc")
        self.assertEqual(etf.term_to_binary([1, 256]), b"\x83l\x00\x00\x00\x02a\x01b\x00\x00\x01\x00j")

    def test_atoms(self):
        self.assertEqual(etf.binary_to_term(b"\x83s\x02ok"), Atom("ok"))
        self.assertEqual(etf.binary_to_term(b"\x83v\x00\x02ok"), Atom("ok"))
        self.assertEqual(etf.term_to_binary(Atom("é")), b"\x83d\x00\x01\xe9")
        self.assertEqual(etf.term_to_binary(Atom("日")), b"\x83w\x03" + "日".encode())
        self.assertEqual(etf.binary_to_term(etf.term_to_binary(Atom("日" * 255))), Atom("日" * 255))
        self.assertEqual(etf.term_to_binary(True), b"\x83d\x00\x04true")

    def test_float_and_bitstring(self):
        self.assertEqual(etf.term_to_binary(1.5), b"\x83F" + struct.pack(">d", 1.5))
        self.assertEqual(etf.binary_to_term(b"\x83F" + struct.pack(">d", -2.25)), -2.25)
        self.assertEqual(etf.binary_to_term(b"\x83M\x00\x00\x00\x01\x03\xe0"), BitBinary(b"\xe0", 3))

    def test_large_tuple(self):
        big = tuple(range(300))
        data = etf.term_to_binary(big)
        self.assertEqual(data[:6], b"\x83i" + struct.pack(">I", 300))
        self.assertEqual(etf.binary_to_term(data), big)

    def test_list_tail_forms(self):
        # [1 | [2]] (a non-canonical encoding of [1, 2]) and [1 | [2 | x]].
        self.assertEqual(etf.binary_to_term(b"\x83l\x00\x00\x00\x01a\x01l\x00\x00\x00\x01a\x02j"), [1, 2])
        self.assertEqual(etf.binary_to_term(b"\x83l\x00\x00\x00\x01a\x01l\x00\x00\x00\x01a\x02d\x00\x01x"),
                         ImproperList((1, 2), Atom("x")))


class RoundTrips(unittest.TestCase):
    @settings(max_examples=400, deadline=None)
    @given(terms)
    def test_term_round_trip(self, term):
        data = etf.term_to_binary(term)
        back = etf.binary_to_term(data)
        self.assertTrue(canonical_eq(back, term), f"{term!r} came back as {back!r}")
        self.assertEqual(etf.term_to_binary(back), data)

    @settings(max_examples=200, deadline=None)
    @given(terms, st.data())
    def test_every_prefix_is_a_clear_error(self, term, data):
        encoded = etf.term_to_binary(term)
        cut = data.draw(st.integers(0, len(encoded) - 1))
        with self.assertRaises(ETFError):
            etf.binary_to_term(encoded[:cut])

    @settings(max_examples=200, deadline=None)
    @given(terms, st.binary(min_size=1, max_size=4))
    def test_trailing_bytes_rejected(self, term, extra):
        with self.assertRaisesRegex(ETFError, "trailing bytes"):
            etf.binary_to_term(etf.term_to_binary(term) + extra)

    @settings(max_examples=1000, deadline=None)
    @given(st.binary(max_size=64))
    def test_garbage_gives_etf_error_only(self, data):
        try:
            etf.binary_to_term(b"\x83" + data)
        except ETFError as e:
            self.assertTrue(str(e))

    @settings(max_examples=300, deadline=None)
    @given(terms, st.data())
    def test_mutated_bytes_give_etf_error_or_a_term(self, term, data):
        encoded = bytearray(etf.term_to_binary(term))
        i = data.draw(st.integers(1, len(encoded) - 1))
        encoded[i] = data.draw(st.integers(0, 255))
        try:
            etf.binary_to_term(bytes(encoded))
        except ETFError:
            pass


class Errors(unittest.TestCase):
    def check(self, data, pattern):
        with self.assertRaisesRegex(ETFError, pattern):
            etf.binary_to_term(data)

    def test_messages(self):
        self.check(b"", "empty input")
        self.check(b"\x84a\x01", "bad ETF version byte 132")
        self.check(b"\x83", "truncated term: tag at offset 1")
        self.check(b"\x83P\x00\x00\x00\x01x", r"unsupported ETF tag 80 \(compressed term\) at offset 1")
        self.check(b"\x83g", r"unsupported ETF tag 103 \(PID_EXT \(legacy\)\)")
        self.check(b"\x83\xff", "unsupported ETF tag 255 at offset 1")
        self.check(b"\x83m\xff\xff\xff\xffab", "binary data at offset 6 needs 4294967295 bytes, 2 left")
        self.check(b"\x83l\xff\xff\xff\xff", "list at offset 6 announces 4294967296 elements")
        self.check(b"\x83h\x05a\x01", "truncated term")
        self.check(b"\x83t\x00\x00\x00\x02a\x01a\x02a\x01a\x03", "repeats a key")
        self.check(b"\x83t\x00\x00\x00\x01jaa\x01", "key of type list")
        self.check(b"\x83n\x01\x02\x01", "sign byte 2")
        self.check(b"\x83Z\x00\x00d\x00\x01n\x00\x00\x00\x00", "0 id words")
        self.check(b"\x83F\x7f\xf0\x00\x00\x00\x00\x00\x00", "not finite")
        self.check(b"\x83M\x00\x00\x00\x01\x09\x00", "9 trailing bits")
        self.check(b"\x83w\x02\xff\xfe", "not valid UTF-8")
        self.check(b"\x83X" + b"a\x01" + b"\x00" * 12, "expected an atom at offset 2")
        self.check(b"\x83l\x00\x00\x00\x00a\x01", "no elements but a non-nil tail")

    def test_depth_limit(self):
        deep = b"\x83" + b"h\x01" * (etf.MAX_DEPTH + 5) + b"j"
        self.check(deep, "nested deeper than")
        term = []
        for _ in range(etf.MAX_DEPTH + 5):
            term = (term,)
        with self.assertRaisesRegex(ETFError, "nested deeper than"):
            etf.term_to_binary(term)

    def test_unencodable(self):
        for value, pattern in [("text", "no Erlang term for a Python str"), (float("nan"), "finite"),
                               (Atom("x" * 256), "at most 255"), (Reference(Atom("n"), 0, ()), "1..5"),
                               (Pid(Atom("n"), -1, 0, 0), "pid id"), (BitBinary(b"", 1), "bitstring")]:
            with self.assertRaisesRegex(ETFError, pattern):
                etf.term_to_binary(value)

    def test_improper_list_invariants(self):
        with self.assertRaises(ETFError):
            ImproperList((), 1)
        with self.assertRaises(ETFError):
            ImproperList((1,), [2])
        with self.assertRaisesRegex(ETFError, "cons cell"):
            etf.cons_cell((1, 2))
