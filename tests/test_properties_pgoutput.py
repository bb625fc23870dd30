"""
Properties of the pgoutput codec, every message type in every protocol version it exists in.

* ``decode(m.encode()) == m`` for the v1 messages (B C O R Y I U D T M, each
  streamable one with and without the xid a stream block adds), the v2
  streaming messages (S E c A) and the v3 two-phase ones (b P K r p), over
  values that include the edges: NULL, UNCHANGED (TOASTed), empty and
  non-ASCII text, binary values, the extremes of every integer field;
* a message decodes under every proto_version from the one that introduced
  it, and is refused below it;
* a whole replication stream — pgoutput payloads in XLogData in CopyData,
  with stream blocks and two-phase transactions — split anywhere, comes out
  of the wire parser and `PgoutputDecoder` as the same messages;
* garbage and truncated payloads give `PgoutputError` only, whatever decodes
  re-encodes to the same bytes, and `encode` either gives bytes that decode
  back to the message or raises `PgoutputError` (never a struct.error, a
  UnicodeEncodeError, or bytes that mean something else).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from electric.hub.interface import UNCHANGED
from electric.postgres.protocol import pgoutput as po
from electric.postgres.protocol.messages import CopyData
from electric.postgres.protocol.parsers import BackendParser
from electric.postgres.protocol.pgoutput import PgoutputError, decode
from electric.postgres.protocol.replication_messages import XLogData
from tests.hypothesis_profiles import examples
from tests.test_properties_pg_wire import blob, feed_all, int64, ints, name, splits, text, uint32, uint64

uint8 = ints(8, False)
int32 = ints(32)
xid = uint32
gid = name

STREAMABLE = b"RYIUDTM"
FIRST_VERSION = {**{t: 1 for t in b"BCORYIUDTM"}, **{t: 2 for t in b"SEcA"}, **{t: 3 for t in b"bPKrp"}}

# Tuple values are length-prefixed: text may hold anything, NUL included.
value = st.one_of(st.none(), st.just(UNCHANGED), text, blob,
                  st.text(st.characters(blacklist_categories=("Cs",)), max_size=10))
row = st.lists(value, max_size=8).map(tuple)


def changes(x):
    """The messages that may sit inside a transaction (or, with an xid, a stream block)."""
    return st.one_of(
        st.builds(po.Relation, uint32, name, name, st.sampled_from("dnfi"),
                  st.lists(st.builds(po.RelationColumn, uint8, name, uint32, int32), max_size=5).map(tuple), x),
        st.builds(po.Type, uint32, name, name, x),
        st.builds(po.Insert, uint32, row, x),
        st.builds(po.Update, uint32, row, st.none(), st.none(), x),
        st.builds(po.Update, uint32, row, row, st.none(), x),
        st.builds(po.Update, uint32, row, st.none(), row, x),
        st.builds(po.Delete, uint32, row, st.none(), x),
        st.builds(po.Delete, uint32, st.none(), row, x),
        st.builds(po.Truncate, st.lists(uint32, max_size=5).map(tuple), uint8, x),
        st.builds(po.LogicalMessage, uint8, uint64, name, blob, x),
    )


V1_FRAMING = st.one_of(
    st.builds(po.Begin, uint64, int64, xid),
    st.builds(po.Commit, uint64, uint64, int64, uint8),
    st.builds(po.Origin, uint64, name),
)
V2_ONLY = st.one_of(
    st.builds(po.StreamStart, xid, st.booleans()),
    st.just(po.StreamStop()),
    st.builds(po.StreamCommit, xid, uint64, uint64, int64, uint8),
    st.builds(po.StreamAbort, xid, xid),
)
V3_ONLY = st.one_of(
    st.builds(po.BeginPrepare, uint64, uint64, int64, xid, gid),
    st.builds(po.Prepare, uint8, uint64, uint64, int64, xid, gid),
    st.builds(po.CommitPrepared, uint8, uint64, uint64, int64, xid, gid),
    st.builds(po.StreamPrepare, uint8, uint64, uint64, int64, xid, gid),
    st.builds(po.RollbackPrepared, uint8, uint64, uint64, int64, int64, xid, gid),
)
ANY_MESSAGE = st.one_of(V1_FRAMING, changes(st.none()), changes(xid), V2_ONLY, V3_ONLY)


def carries_xid(m) -> bool:
    return m.TAG in STREAMABLE and m.xid is not None


@st.composite
def stream(draw, version: int):
    """A plausible stream for `version`: transactions, stream blocks (v2+), two-phase (v3)."""
    out = []
    for _ in range(draw(st.integers(0, 4))):
        kinds = ["txn", "message"] + (["block", "stream_end"] if version >= 2 else []) \
            + (["prepare", "prepared_end"] if version >= 3 else [])
        kind = draw(st.sampled_from(kinds))
        if kind == "txn":
            out.append(draw(st.builds(po.Begin, uint64, int64, xid)))
            if draw(st.booleans()):
                out.append(draw(st.builds(po.Origin, uint64, name)))
            out += draw(st.lists(changes(st.none()), max_size=3))
            out.append(draw(st.builds(po.Commit, uint64, uint64, int64, uint8)))
        elif kind == "message":
            out.append(draw(st.builds(po.LogicalMessage, st.just(0), uint64, name, blob, st.none())))
        elif kind == "block":
            x = draw(xid)
            out.append(po.StreamStart(x, draw(st.booleans())))
            out += draw(st.lists(changes(st.just(x)), max_size=3))
            out.append(po.StreamStop())
        elif kind == "stream_end":
            out.append(draw(st.one_of(st.builds(po.StreamCommit, xid, uint64, uint64, int64, uint8),
                                      st.builds(po.StreamAbort, xid, xid),
                                      *([st.builds(po.StreamPrepare, uint8, uint64, uint64, int64, xid, gid)]
                                        if version >= 3 else []))))
        elif kind == "prepare":
            out.append(draw(st.builds(po.BeginPrepare, uint64, uint64, int64, xid, gid)))
            out += draw(st.lists(changes(st.none()), max_size=3))
            out.append(draw(st.builds(po.Prepare, uint8, uint64, uint64, int64, xid, gid)))
        else:
            out.append(draw(st.one_of(st.builds(po.CommitPrepared, uint8, uint64, uint64, int64, xid, gid),
                                      st.builds(po.RollbackPrepared, uint8, uint64, uint64, int64, int64, xid,
                                                gid))))
    return out


def decode_or_error(payload, **kw):
    try:
        return decode(payload, **kw)
    except PgoutputError:
        return None


class RoundTrip(unittest.TestCase):
    @settings(max_examples=examples(400))
    @given(ANY_MESSAGE)
    def test_decode_encode(self, m):
        raw = m.encode()
        self.assertEqual(raw[:1], m.TAG)
        self.assertEqual(decode(raw, in_stream=carries_xid(m)), m)

    @settings(max_examples=examples(300))
    @given(ANY_MESSAGE)
    def test_every_protocol_version_it_exists_in(self, m):
        raw = m.encode()
        first = FIRST_VERSION[raw[0]]
        for version in (1, 2, 3):
            if version >= first:
                self.assertEqual(decode(raw, in_stream=carries_xid(m), proto_version=version), m)
            else:
                with self.assertRaises(PgoutputError) as cm:
                    decode(raw, in_stream=carries_xid(m), proto_version=version)
                self.assertIn(f"not valid in proto_version {version}", str(cm.exception))

    @settings(max_examples=examples(100))
    @given(st.data(), st.sampled_from([1, 2, 3]))
    def test_decoder_follows_a_stream(self, data, version):
        msgs = data.draw(stream(version))
        decoder = po.PgoutputDecoder(version)
        self.assertEqual([decoder.decode(m.encode()) for m in msgs], msgs)
        self.assertIsNone(decoder.stream_xid)

    @settings(max_examples=examples(100))
    @given(st.data(), st.sampled_from([1, 2, 3]), st.integers(0, (1 << 64) - 1 - 100), int64)
    def test_wire_stream_any_split(self, data, version, start, clock):
        """pgoutput in XLogData in CopyData, the bytes cut anywhere: the same messages come out."""
        msgs = data.draw(stream(version))
        raw = b"".join(XLogData(start, start + i, clock, m.encode()).frame() for i, m in enumerate(msgs))
        parser, decoder = BackendParser(), po.PgoutputDecoder(version)
        got = []
        for frame in feed_all(parser, data.draw(splits(raw))):
            self.assertIsInstance(frame, CopyData)
            xlog = frame.replication_message()
            self.assertIsInstance(xlog, XLogData)
            got.append(decoder.decode(xlog.data))
        self.assertEqual(got, msgs)
        self.assertEqual(parser.buffered, 0)

    def test_largest_column_count(self):
        for m in (po.Insert(1, (None,) * 32767), po.Insert(1, ("",) * 32767),
                  po.Relation(1, "s", "t", "f", (po.RelationColumn(1, "c", 25, -1),) * 32767)):
            self.assertEqual(decode(m.encode()), m)


class HostileInput(unittest.TestCase):
    @settings(max_examples=examples(500))
    @given(st.sampled_from(sorted(FIRST_VERSION)), st.binary(max_size=80), st.booleans(),
           st.sampled_from([None, 1, 2, 3]))
    def test_garbage_decodes_exactly_or_fails_cleanly(self, tag, rest, in_stream, version):
        raw = bytes([tag]) + rest
        m = decode_or_error(raw, in_stream=in_stream, proto_version=version)
        if m is not None:
            self.assertEqual(m.encode(), raw, "decoded bytes must re-encode exactly")

    @settings(max_examples=examples(400))
    @given(ANY_MESSAGE, st.data())
    def test_truncation_is_an_error(self, m, data):
        raw = m.encode()
        cut = data.draw(st.integers(0, len(raw) - 1))
        with self.assertRaises(PgoutputError):
            decode(raw[:cut], in_stream=carries_xid(m))

    @settings(max_examples=examples(300))
    @given(ANY_MESSAGE, st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1, max_size=3),
           st.booleans())
    def test_bit_flips(self, m, edits, in_stream):
        raw = bytearray(m.encode())
        for pos, val in edits:
            raw[pos % len(raw)] = val
        got = decode_or_error(bytes(raw), in_stream=in_stream)
        if got is not None:
            self.assertEqual(got.encode(), bytes(raw))

    @settings(max_examples=examples(200))
    @given(st.sampled_from([1, 2, 3]), st.lists(st.binary(max_size=30), max_size=8))
    def test_decoder_on_garbage(self, version, payloads):
        decoder = po.PgoutputDecoder(version)
        for p in payloads:
            try:
                decoder.decode(p)
            except PgoutputError:
                pass


# Wider values than the wire can carry: the encoder must refuse them, not mangle them.
wide = st.integers(-(1 << 70), 1 << 70)
wide_text = st.one_of(name, st.just("nul\x00inside"), st.just("\ud800"))
WIDE_MESSAGE = st.one_of(
    st.builds(po.Begin, wide, wide, wide),
    st.builds(po.Commit, wide, wide, wide, wide),
    st.builds(po.Origin, wide, wide_text),
    st.builds(po.Relation, wide, wide_text, wide_text, st.one_of(st.sampled_from("dnfi"), st.text(max_size=2)),
              st.lists(st.builds(po.RelationColumn, wide, wide_text, wide, wide), max_size=3).map(tuple),
              st.one_of(st.none(), wide)),
    st.builds(po.Type, wide, wide_text, wide_text, st.one_of(st.none(), wide)),
    st.builds(po.Insert, wide, row, st.one_of(st.none(), wide)),
    st.builds(po.Truncate, st.lists(wide, max_size=3).map(tuple), wide, st.one_of(st.none(), wide)),
    st.builds(po.LogicalMessage, wide, wide, wide_text, blob, st.one_of(st.none(), wide)),
    st.builds(po.StreamStart, wide, st.booleans()),
    st.builds(po.StreamCommit, wide, wide, wide, wide, wide),
    st.builds(po.StreamAbort, wide, wide),
    st.builds(po.BeginPrepare, wide, wide, wide, wide, wide_text),
    st.builds(po.Prepare, wide, wide, wide, wide, wide, wide_text),
    st.builds(po.RollbackPrepared, wide, wide, wide, wide, wide, wide, wide_text),
)


class Encoding(unittest.TestCase):
    @settings(max_examples=examples(500))
    @given(WIDE_MESSAGE)
    def test_encode_is_exact_or_refuses(self, m):
        try:
            raw = m.encode()
        except PgoutputError:
            return
        self.assertEqual(decode(raw, in_stream=carries_xid(m)), m, "encoded bytes mean something else")
