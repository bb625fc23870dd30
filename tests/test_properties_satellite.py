"""
Properties of the Satellite frame codec, both protocol generations.

Frames are delimited by the websocket (one frame, one message), so there is
no byte stream to split here; what a frame holds must survive the trip:

* for every message of each generation's type table — built from the
  protobuf descriptors, every field set or left unset, repeated fields
  empty or not, oneofs on each branch, edge values (empty, non-ASCII,
  largest and negative integers, enum numbers the schema does not name) —
  ``decode(gen, encode(gen, m)) == m`` and re-encoding is byte-exact;
  SatAuthReq, decoded by hand, gives back its id, token and headers;
* rows: ``decode_row(encode_row(...))`` gives the row back, NULLs included,
  for any column count across the bitmask's byte boundaries;
* garbage, truncated and bit-flipped frames raise `FrameError` only — never
  a protobuf DecodeError, IndexError or UnicodeDecodeError.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from google.protobuf.descriptor import FieldDescriptor as F
from twisted.trial import unittest

from electric.satellite import codec
from electric.satellite.codec import GENERATIONS, ORIGINAL, V0_2, FrameError
from tests.hypothesis_profiles import examples
from tests.test_properties_pg_wire import blob, ints

# Protobuf strings are length-delimited UTF-8: NUL is fine, surrogates are not.
pb_text = st.one_of(st.sampled_from(["", "\x00", "é✓\U0001F600", "x" * 300]),
                    st.text(st.characters(blacklist_categories=("Cs",)), max_size=30))

_SCALARS = {
    F.TYPE_STRING: pb_text,
    F.TYPE_BYTES: blob,
    F.TYPE_BOOL: st.booleans(),
    F.TYPE_INT32: ints(32),
    F.TYPE_INT64: ints(64),
    F.TYPE_UINT32: ints(32, False),
    F.TYPE_UINT64: ints(64, False),
}


def field_value(field, depth: int):
    if field.type == F.TYPE_MESSAGE:
        return message(field.message_type._concrete_class, depth + 1)
    if field.type == F.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        # proto3 enums are open: numbers the schema does not name travel too.
        return st.one_of(st.sampled_from(known), ints(32))
    return _SCALARS[field.type]


@st.composite
def message(draw, cls, depth: int = 0):
    """Any instance of protobuf class `cls`: each field set or not, each oneof on any branch."""
    kwargs = {}
    desc = cls.DESCRIPTOR
    for oneof in desc.oneofs:
        if oneof.name.startswith("_"):
            continue  # proto3 `optional`: a synthetic oneof of one field, handled as presence below
        choice = draw(st.sampled_from([None, *oneof.fields]))
        if choice is not None:
            kwargs[choice.name] = draw(field_value(choice, depth))
    for field in desc.fields:
        oneof = field.containing_oneof
        if oneof is not None and not oneof.name.startswith("_"):
            continue
        if field.is_repeated:
            kwargs[field.name] = draw(st.lists(field_value(field, depth), max_size=4 if depth < 2 else 2))
        elif field.has_presence and not draw(st.booleans()):
            continue  # left unset (an unset optional differs from one set to its default)
        else:
            kwargs[field.name] = draw(field_value(field, depth))
    return cls(**kwargs)


def names(gen, *, auth: bool):
    return [name for _, name in gen.table if (name == "SatAuthReq") == auth]


@st.composite
def frame_message(draw):
    """(generation, message) for any message of either table except SatAuthReq."""
    gen = draw(st.sampled_from(GENERATIONS))
    cls = getattr(gen.pb, draw(st.sampled_from(names(gen, auth=False))))
    return gen, draw(message(cls))


@st.composite
def valid_frame(draw):
    gen, m = draw(frame_message())
    return gen, codec.encode(gen, m)


def decode_or_frame_error(gen, frame):
    try:
        return codec.decode(gen, frame)
    except FrameError as e:
        assert isinstance(e.code, int)
        return None


class RoundTrip(unittest.TestCase):
    @settings(max_examples=examples(400))
    @given(frame_message())
    def test_every_message_of_both_generations(self, gen_m):
        gen, m = gen_m
        frame = codec.encode(gen, m)
        self.assertEqual(frame[0], gen.type_byte(m.DESCRIPTOR.name))
        got = codec.decode(gen, frame)
        self.assertEqual(got, m)
        self.assertEqual(codec.message_name(got), m.DESCRIPTOR.name)
        self.assertEqual(codec.encode(gen, got), frame)

    @settings(max_examples=examples(300))
    @given(st.sampled_from(GENERATIONS).flatmap(lambda gen: st.tuples(st.just(gen), message(gen.pb.SatAuthReq))))
    def test_auth_request(self, gen_m):
        gen, m = gen_m
        got = codec.decode(gen, codec.encode(gen, m))
        self.assertIsInstance(got, codec.AuthRequest)
        self.assertEqual((got.id, got.token), (m.id, m.token))
        if gen is V0_2:
            # Header pairs with no key (UNSPECIFIED) carry nothing and are dropped.
            self.assertEqual(got.headers, tuple((h.key, h.value) for h in m.headers if h.key))

    @settings(max_examples=examples(200))
    @given(st.sampled_from(GENERATIONS), pb_text, pb_text)
    def test_auth_request_helper(self, gen, client_id, token):
        got = codec.decode(gen, codec.auth_request(gen, client_id, token))
        self.assertEqual((got.id, got.token), (client_id, token))
        self.assertEqual(got.proto_version, codec.PROTO_VERSION_V0_2 if gen is V0_2 else None)

    @settings(max_examples=examples(300))
    @given(st.sampled_from(GENERATIONS), st.lists(
        st.one_of(st.none(), st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                                     max_size=12)), max_size=20))
    def test_rows(self, gen, values):
        columns = [f"c{i}" for i in range(len(values))]
        row = dict(zip(columns, values))
        pb_row = codec.encode_row(gen, columns, row)
        self.assertEqual(len(pb_row.nulls_bitmask), codec.bitmask_length(len(columns)))
        # ... through a whole SatOpLog frame, as a client would send it.
        op = gen.pb.SatOpLog(ops=[gen.pb.SatTransOp(insert=gen.pb.SatOpInsert(relation_id=1, row_data=pb_row))])
        back = codec.decode(gen, codec.encode(gen, op)).ops[0].insert.row_data
        self.assertEqual(codec.decode_row(back, columns), row)


class HostileInput(unittest.TestCase):
    @settings(max_examples=examples(400))
    @given(st.sampled_from(GENERATIONS), st.binary(max_size=80))
    def test_garbage(self, gen, frame):
        decode_or_frame_error(gen, frame)

    @settings(max_examples=examples(300))
    @given(st.sampled_from(GENERATIONS), st.integers(0, 12), st.binary(max_size=60))
    def test_garbage_behind_every_type_byte(self, gen, byte, payload):
        decode_or_frame_error(gen, bytes([byte]) + payload)

    @settings(max_examples=examples(300))
    @given(valid_frame(), st.data())
    def test_truncated_frames(self, gen_frame, data):
        gen, frame = gen_frame
        cut = data.draw(st.integers(0, len(frame) - 1))
        decode_or_frame_error(gen, frame[:cut])

    @settings(max_examples=examples(300))
    @given(valid_frame(), st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1, max_size=4))
    def test_bit_flips(self, gen_frame, edits):
        gen, frame = gen_frame
        raw = bytearray(frame)
        for pos, val in edits:
            raw[pos % len(raw)] = val
        decode_or_frame_error(gen, bytes(raw))

    @settings(max_examples=examples(300))
    @given(st.sampled_from(GENERATIONS), blob, st.lists(blob, max_size=10), st.integers(0, 12))
    def test_hostile_rows(self, gen, mask, values, ncolumns):
        columns = [f"c{i}" for i in range(ncolumns)]
        try:
            row = codec.decode_row(gen.pb.SatOpRow(nulls_bitmask=mask, values=values), columns)
        except FrameError as e:
            self.assertEqual(e.code, codec.INVALID_REQUEST)
            return
        self.assertEqual(list(row), columns)

    @settings(max_examples=examples(300))
    @given(st.binary(max_size=60))
    def test_wire_fields_garbage(self, payload):
        try:
            fields = codec.wire_fields(payload)
        except FrameError:
            return
        self.assertTrue(all(number > 0 for number, _, _ in fields))

    def test_auth_request_original_field_three_is_never_fatal(self):
        """ORIGINAL's schema_version (field 3) is whatever the client wrote: it never breaks the frame."""
        for junk in ("", "1", "\x08", "\x12\xff", "é" * 40):
            got = codec.decode(ORIGINAL, codec.encode(ORIGINAL, ORIGINAL.pb.SatAuthReq(
                id="c", token="t", schema_version=junk, schema_hash=junk)))
            self.assertEqual((got.id, got.token), ("c", "t"))
