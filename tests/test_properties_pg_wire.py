"""
Properties of the Postgres wire codec (frontend/backend protocol v3), both directions.

For every message kind — backend and frontend messages, the untagged startup
packets, the streaming-replication sub-messages carried in CopyData and COPY
text rows — over values that include the edges (empty, NULL, non-ASCII text,
the largest and most negative integers of each field, length limits):

* ``decode(encode(m)) == m``, message by message and through the parsers;
* any split of a concatenated byte stream into chunks parses to the same
  messages, and a prefix of a stream gives the messages it holds completely;
* garbage, truncation and bit flips give the codec's own `ProtocolError`,
  never an IndexError, struct.error or UnicodeDecodeError;
* whatever the decoder accepts re-encodes to the same bytes (the codec is
  exact, which the publisher relies on when it relays what it reads).

Examples are derandomized (tests/hypothesis_profiles.py), so CI runs the same
examples every time.
"""

from __future__ import annotations

import struct

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from electric.postgres.protocol import messages as pm
from electric.postgres.protocol.auth import AuthenticationError, ClientAuth, ServerAuth, scram_secret
from electric.postgres.protocol.copy_text import copy_text_row, parse_copy_text_row
from electric.postgres.protocol.cursor import ProtocolError
from electric.postgres.protocol.lsn import MAX_LSN, LSNError, format_lsn, parse_lsn
from electric.postgres.protocol.parsers import (
    DEFAULT_MAX_STARTUP_SIZE,
    BackendParser,
    FrontendParser,
    decode_startup_packet,
)
from electric.postgres.protocol.replication_messages import (
    HotStandbyFeedback,
    PrimaryKeepalive,
    StandbyStatusUpdate,
    XLogData,
    decode_replication,
)
from tests.hypothesis_profiles import examples

# --------------------------------------------------------------------------
# Value strategies: every field's full range, edges first.

def ints(bits: int, signed: bool = True):
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    edges = sorted({lo, hi, 0, 1, -1 if signed else 2, lo + 1, hi - 1})
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


int8, int16, int32, int64 = ints(8), ints(16), ints(32), ints(64)
uint32, uint64 = ints(32, False), ints(64, False)

# Text the wire can carry in a NUL-terminated string: any Unicode scalar value but NUL.
_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
EDGE_TEXT = ["", " ", "é", "✓", "\U0001F600", "\\", "\\N", "\t\n\r", "\x7f", "'\"", "x" * 300]
text = st.one_of(st.sampled_from(EDGE_TEXT), st.text(_CHARS, max_size=40))
name = st.one_of(st.sampled_from(["", "a", "é", "public", "x" * 63]), st.text(_CHARS, max_size=20))
nonempty = st.text(_CHARS, min_size=1, max_size=20)
blob = st.one_of(st.sampled_from([b"", b"\x00", b"\xff" * 5, bytes(range(256))]), st.binary(max_size=64))
cell = st.one_of(st.none(), blob)

# --------------------------------------------------------------------------
# Message strategies, one per kind.

_KNOWN_AUTH = {0, 3, 5, 10, 11, 12}

AUTHENTICATION = st.one_of(
    st.just(pm.AuthenticationOk()),
    st.just(pm.AuthenticationCleartextPassword()),
    st.builds(pm.AuthenticationMD5Password, st.binary(min_size=4, max_size=4)),
    st.builds(pm.AuthenticationSASL, st.lists(nonempty, max_size=4).map(tuple)),
    st.builds(pm.AuthenticationSASLContinue, blob),
    st.builds(pm.AuthenticationSASLFinal, blob),
    st.builds(pm.AuthenticationUnsupported, int32.filter(lambda c: c not in _KNOWN_AUTH), blob),
)

FIELD = st.builds(pm.FieldDescription, name, uint32, int16, uint32, int16, int32, int16)
NOTICE_FIELDS = st.dictionaries(
    st.characters(min_codepoint=1, max_codepoint=127), text, max_size=8)
FORMATS = st.lists(int16, max_size=6).map(tuple)

BACKEND = st.one_of(
    AUTHENTICATION,
    st.builds(pm.ParameterStatus, name, text),
    st.builds(pm.BackendKeyData, int32, int32),
    st.builds(pm.ReadyForQuery, st.sampled_from("ITE")),
    st.builds(pm.RowDescription, st.lists(FIELD, max_size=5).map(tuple)),
    st.builds(pm.DataRow, st.lists(cell, max_size=8).map(tuple)),
    st.builds(pm.CommandComplete, text),
    st.just(pm.EmptyQueryResponse()),
    st.builds(pm.ErrorResponse, NOTICE_FIELDS),
    st.builds(pm.NoticeResponse, NOTICE_FIELDS),
    st.builds(pm.NotificationResponse, int32, name, text),
    st.builds(pm.NegotiateProtocolVersion, int32, st.lists(name, max_size=4).map(tuple)),
    st.builds(pm.CopyInResponse, int8, FORMATS),
    st.builds(pm.CopyOutResponse, int8, FORMATS),
    st.builds(pm.CopyBothResponse, int8, FORMATS),
    st.builds(pm.CopyData, blob),
    st.just(pm.CopyDone()),
    st.just(pm.ParseComplete()),
    st.just(pm.BindComplete()),
    st.just(pm.CloseComplete()),
    st.just(pm.NoData()),
    st.just(pm.PortalSuspended()),
    st.builds(pm.ParameterDescription, st.lists(uint32, max_size=6).map(tuple)),
)

FRONTEND = st.one_of(
    st.builds(pm.Query, text),
    st.builds(pm.PasswordMessage, blob),
    st.builds(pm.SASLInitialResponse, name, st.one_of(st.none(), blob)),
    st.builds(pm.SASLResponse, blob),
    st.builds(pm.CopyData, blob),
    st.just(pm.CopyDone()),
    st.builds(pm.CopyFail, text),
    st.just(pm.Sync()),
    st.just(pm.Flush()),
    st.builds(pm.Parse, name, text, st.lists(uint32, max_size=5).map(tuple)),
    st.builds(pm.Bind, name, name, FORMATS, st.lists(cell, max_size=5).map(tuple), FORMATS),
    st.builds(pm.Execute, name, int32),
    st.builds(pm.Describe, st.sampled_from("SP"), name),
    st.builds(pm.Close, st.sampled_from("SP"), name),
)

STARTUP_PARAMS = st.dictionaries(nonempty, st.text(_CHARS, max_size=30), max_size=6)
STARTUP_MESSAGE = st.builds(
    pm.StartupMessage, STARTUP_PARAMS, st.integers(0, 0xFFFF).map(lambda minor: (3 << 16) | minor))
PRE_STARTUP = st.sampled_from([pm.SSLRequest(), pm.GSSENCRequest()])

REPLICATION = st.one_of(
    st.builds(XLogData, uint64, uint64, int64, blob),
    st.builds(PrimaryKeepalive, uint64, int64, st.booleans()),
    st.builds(StandbyStatusUpdate, uint64, uint64, uint64, int64, st.booleans()),
    st.builds(HotStandbyFeedback, int64, uint32, uint32, uint32, uint32),
)


def as_received(m):
    """What the frontend parser hands out for `m`: every ``p`` message is a raw PasswordMessage."""
    if isinstance(m, (pm.SASLInitialResponse, pm.SASLResponse)):
        return pm.PasswordMessage(m.encode()[5:])
    return m


@st.composite
def splits(draw, data: bytes):
    """`data` cut at any set of points (empty chunks included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def feed_all(parser, chunks):
    out = []
    for chunk in chunks:
        out += parser.feed(chunk)
    return out


def body(m) -> bytes:
    return m.encode()[5:]


def decode_or_protocol_error(fn, *args):
    """Run a decoder on hostile input: it may succeed or raise ProtocolError, nothing else."""
    try:
        return fn(*args)
    except ProtocolError:
        return None


# --------------------------------------------------------------------------

class RoundTrip(unittest.TestCase):
    """decode(encode(m)) == m for every message kind."""

    @settings(max_examples=examples(300))
    @given(BACKEND)
    def test_backend_message(self, m):
        raw = m.encode()
        self.assertEqual(raw[5:], body(m))
        self.assertEqual(struct.unpack("!i", raw[1:5])[0], len(raw) - 1)
        self.assertEqual(pm.BACKEND_MESSAGES[raw[:1]].decode_body(raw[5:]), m)
        self.assertEqual(BackendParser().feed(raw), [m])

    @settings(max_examples=examples(300))
    @given(FRONTEND)
    def test_frontend_message(self, m):
        parser = FrontendParser()
        parser.in_startup = False
        got = parser.feed(m.encode())
        self.assertEqual(got, [as_received(m)])
        if isinstance(m, pm.SASLInitialResponse):
            self.assertEqual(got[0].as_sasl_initial(), m)
        elif isinstance(m, pm.SASLResponse):
            self.assertEqual(got[0].as_sasl_response(), m)

    @settings(max_examples=examples(200))
    @given(text)
    def test_password_message(self, password):
        self.assertEqual(pm.PasswordMessage.password(password).as_password(), password)

    @settings(max_examples=examples(200))
    @given(st.one_of(PRE_STARTUP, STARTUP_MESSAGE, st.builds(pm.CancelRequest, int32, int32)))
    def test_startup_packet(self, m):
        raw = m.encode()
        self.assertEqual(struct.unpack("!i", raw[:4])[0], len(raw))
        self.assertEqual(decode_startup_packet(raw[4:]), m)
        if len(raw) <= DEFAULT_MAX_STARTUP_SIZE:
            self.assertEqual(FrontendParser().feed(raw), [m])

    @settings(max_examples=examples(300))
    @given(REPLICATION)
    def test_replication_message(self, m):
        self.assertEqual(decode_replication(m.encode()), m)
        copy, = BackendParser().feed(m.frame())
        self.assertEqual(copy, pm.CopyData(m.encode()))
        self.assertEqual(copy.replication_message(), m)

    @settings(max_examples=examples(300))
    @given(st.lists(st.one_of(st.none(), text), min_size=1, max_size=8))
    def test_copy_text_row(self, row):
        line = copy_text_row(row)
        self.assertTrue(line.endswith(b"\n"))
        self.assertEqual(line.count(b"\n"), 1, "one row is one line")
        self.assertEqual(line.count(b"\t"), len(row) - 1, "fields are split by the only raw tabs")
        self.assertEqual(parse_copy_text_row(line), row)
        self.assertEqual(parse_copy_text_row(line.decode("utf-8")), row)

    @settings(max_examples=examples(200))
    @given(uint64)
    def test_lsn_text(self, lsn):
        self.assertEqual(parse_lsn(format_lsn(lsn)), lsn)
        self.assertEqual(parse_lsn(format_lsn(lsn).lower()), lsn)

    def test_largest_counts(self):
        """Int16 counts at their limit: 32767 columns, formats and parameters."""
        n = 32767
        for m in (pm.DataRow((None,) * n), pm.DataRow((b"",) * n),
                  pm.RowDescription((pm.FieldDescription("c"),) * n),
                  pm.ParameterDescription((0xFFFFFFFF,) * n),
                  pm.CopyOutResponse(1, (1,) * n)):
            self.assertEqual(BackendParser().feed(m.encode()), [m])
        parser = FrontendParser()
        parser.in_startup = False
        bind = pm.Bind("", "", (1,) * n, (None,) * n, (0,) * n)
        self.assertEqual(parser.feed(bind.encode()), [bind])


class Streams(unittest.TestCase):
    """Any chunking of a byte stream parses to the same messages."""

    @settings(max_examples=examples(200))
    @given(st.data(), st.booleans(), st.lists(BACKEND, max_size=12))
    def test_backend_stream_any_split(self, data, ssl, msgs):
        raw = b"".join(m.encode() for m in msgs)
        expected = list(msgs)
        if ssl:
            answer = data.draw(st.sampled_from([b"S", b"N"]))
            raw = answer + raw
            expected.insert(0, pm.SSLResponse(answer == b"S"))
        parser = BackendParser()
        if ssl:
            parser.expect_ssl_response()
        self.assertEqual(feed_all(parser, data.draw(splits(raw))), expected)
        self.assertEqual(parser.buffered, 0)

    @settings(max_examples=examples(200))
    @given(st.data(), st.lists(PRE_STARTUP, max_size=2), STARTUP_MESSAGE,
           st.lists(FRONTEND, max_size=12), st.booleans())
    def test_frontend_stream_any_split(self, data, pre, startup, msgs, terminate):
        stream = [*pre, startup, *msgs] + ([pm.Terminate()] if terminate else [])
        raw = b"".join(m.encode() for m in stream)
        # After Terminate nothing more is read: trailing garbage is ignored.
        raw += b"\xde\xad garbage" if terminate else b""
        parser = FrontendParser()
        self.assertEqual(feed_all(parser, data.draw(splits(raw))), [as_received(m) for m in stream])
        self.assertEqual(parser.closed, terminate)

    @settings(max_examples=examples(100))
    @given(st.data(), st.builds(pm.CancelRequest, int32, int32), blob)
    def test_cancel_request_ends_the_stream(self, data, cancel, after):
        parser = FrontendParser()
        self.assertEqual(feed_all(parser, data.draw(splits(cancel.encode() + after))), [cancel])
        self.assertTrue(parser.closed)

    @settings(max_examples=examples(200))
    @given(st.data(), st.lists(REPLICATION, max_size=10))
    def test_replication_stream_any_split(self, data, msgs):
        raw = b"".join(m.frame() for m in msgs)
        got = feed_all(BackendParser(), data.draw(splits(raw)))
        self.assertEqual([c.replication_message() for c in got], msgs)

    @settings(max_examples=examples(200))
    @given(st.data(), st.lists(st.one_of(BACKEND, REPLICATION.map(lambda r: pm.CopyData(r.encode()))), max_size=12))
    def test_copy_both_stream_any_split(self, data, msgs):
        """`feed_copy_both` gives what `feed` gives, with each CopyData as its payload, for any split."""
        raw = b"".join(m.encode() for m in msgs)
        parser = BackendParser()
        got = []
        for chunk in data.draw(splits(raw)):
            got += parser.feed_copy_both(chunk)
        self.assertEqual(got, [m.data if isinstance(m, pm.CopyData) else m for m in msgs])
        self.assertEqual(parser.buffered, 0)

    @settings(max_examples=examples(200))
    @given(st.data(), st.lists(st.one_of(
        st.builds(XLogData, uint64, uint64, int64, blob).map(lambda x: ("x", x)),
        st.builds(PrimaryKeepalive, uint64, int64, st.booleans()).map(lambda k: ("k", k))), max_size=12))
    def test_replication_session_stream_any_split(self, data, items):
        """The streaming session delivers every XLogData and keepalive, in order, for any split."""
        from electric.postgres.source.session import Deliver, Keepalive
        from tests.test_pg_client_session import session, to_streaming

        raw = b"".join(m.frame() for _, m in items)
        s = to_streaming(session("disable"))
        got = []
        for chunk in data.draw(splits(raw)):
            got += s.feed(chunk)
        want = [Deliver(m.wal_start, m.wal_end, m.data) if kind == "x" else Keepalive(m.wal_end, m.reply_requested)
                for kind, m in items]
        self.assertEqual(got, want)
        self.assertEqual(s.last_received, max([m.wal_end for _, m in items], default=0))

    @settings(max_examples=examples(200))
    @given(st.data(), st.lists(BACKEND, min_size=1, max_size=8))
    def test_prefix_gives_the_complete_messages_and_buffers_the_rest(self, data, msgs):
        encoded = [m.encode() for m in msgs]
        raw = b"".join(encoded)
        cut = data.draw(st.integers(0, len(raw)))
        parser = BackendParser()
        got = parser.feed(raw[:cut])
        ends = [sum(len(e) for e in encoded[:i + 1]) for i in range(len(encoded))]
        complete = len([e for e in ends if e <= cut])
        self.assertEqual(got, msgs[:complete])
        self.assertEqual(parser.buffered, cut - (ends[complete - 1] if complete else 0))
        self.assertEqual(parser.feed(raw[cut:]), msgs[complete:])

    @settings(max_examples=examples(200))
    @given(st.one_of(BACKEND, st.builds(pm.CopyData, st.binary(min_size=1, max_size=300))))
    def test_size_limit_is_inclusive_and_checked_on_the_header(self, m):
        raw = m.encode()
        size = len(raw) - 5
        self.assertEqual(BackendParser(max_message_size=size).feed(raw), [m])
        assume(size > 0)
        parser = BackendParser(max_message_size=size - 1)
        with self.assertRaises(ProtocolError) as cm:
            parser.feed(raw[:5])  # the header alone is enough to refuse it
        self.assertEqual(cm.exception.sqlstate, "54000")
        with self.assertRaises(ProtocolError):  # and the parser stays failed
            parser.feed(b"")

    def test_startup_size_limit(self):
        limit = DEFAULT_MAX_STARTUP_SIZE
        base = len(pm.StartupMessage({"user": ""}).encode())
        fits = pm.StartupMessage({"user": "u" * (limit - base)})
        self.assertEqual(len(fits.encode()), limit)
        self.assertEqual(FrontendParser().feed(fits.encode()), [fits])
        too_big = pm.StartupMessage({"user": "u" * (limit - base + 1)})
        with self.assertRaises(ProtocolError) as cm:
            FrontendParser().feed(too_big.encode()[:4])
        self.assertIn("invalid startup packet length", str(cm.exception))


# --------------------------------------------------------------------------
# Hostile input: only ProtocolError, and whatever decodes is exact.

_LOSSY = (pm.ErrorResponse, pm.NoticeResponse)  # server text is decoded with replacement, by design


class HostileInput(unittest.TestCase):
    @settings(max_examples=examples(300))
    @given(st.sampled_from(sorted(pm.BACKEND_MESSAGES.items())), st.binary(max_size=64))
    def test_backend_body_garbage(self, tag_cls, raw):
        tag, cls = tag_cls
        m = decode_or_protocol_error(cls.decode_body, raw)
        if m is not None and not isinstance(m, _LOSSY):
            self.assertEqual(body(m), raw, "decoded bytes must re-encode exactly")
            self.assertEqual(m.TAG, tag)

    @settings(max_examples=examples(300))
    @given(st.sampled_from(sorted(pm.FRONTEND_MESSAGES.items())), st.binary(max_size=64))
    def test_frontend_body_garbage(self, tag_cls, raw):
        tag, cls = tag_cls
        m = decode_or_protocol_error(cls.decode_body, raw)
        if m is not None:
            self.assertEqual(body(m), raw, "decoded bytes must re-encode exactly")
            self.assertEqual(m.TAG, tag)
            if isinstance(m, pm.PasswordMessage):
                decode_or_protocol_error(m.as_password)
                decode_or_protocol_error(m.as_sasl_initial)

    @settings(max_examples=examples(300))
    @given(st.one_of(BACKEND, FRONTEND), st.data())
    def test_truncated_body(self, m, data):
        raw = body(m)
        assume(raw)
        cut = data.draw(st.integers(0, len(raw) - 1))
        cls = type(m) if not isinstance(m, pm.Authentication) else pm.Authentication
        decode_or_protocol_error(cls.decode_body, raw[:cut])

    @settings(max_examples=examples(300))
    @given(st.binary(max_size=64))
    def test_startup_packet_garbage(self, raw):
        m = decode_or_protocol_error(decode_startup_packet, raw)
        if m is not None:
            self.assertEqual(m.encode()[4:], raw)

    @settings(max_examples=examples(300))
    @given(st.binary(max_size=200), st.data())
    def test_stream_garbage(self, raw, data):
        chunks = data.draw(splits(raw))
        for parser in (BackendParser(1 << 16), FrontendParser(1 << 16)):
            decode_or_protocol_error(feed_all, parser, chunks)
            parser = FrontendParser(1 << 16)
            parser.in_startup = False
            decode_or_protocol_error(feed_all, parser, chunks)

    @settings(max_examples=examples(300))
    @given(st.binary(max_size=200), st.data())
    def test_copy_both_garbage(self, raw, data):
        """Garbage in the CopyBoth phase: ProtocolError (and the parser stays failed), never anything else."""
        parser = BackendParser(1 << 16)
        try:
            for chunk in data.draw(splits(raw)):
                parser.feed_copy_both(chunk)
        except ProtocolError:
            with self.assertRaises(ProtocolError):
                parser.feed_copy_both(b"")

    @settings(max_examples=examples(300))
    @given(st.binary(max_size=200), st.data())
    def test_replication_session_garbage(self, raw, data):
        """Garbage while streaming ends in one clear Fail, never an exception."""
        from electric.postgres.source.session import FAILED, Deliver, Fail, Keepalive
        from tests.test_pg_client_session import session, to_streaming

        s = to_streaming(session("disable"))
        actions = []
        for chunk in data.draw(splits(b"d" + raw)):
            actions += s.feed(chunk)
        fails = [a for a in actions if isinstance(a, Fail)]
        self.assertLessEqual(len(fails), 1)
        self.assertTrue(all(isinstance(a, (Deliver, Keepalive, Fail)) for a in actions))
        if fails:
            self.assertEqual(s.state, FAILED)
            self.assertTrue(fails[0].reason.startswith(("protocol error", "server ended", "FATAL", "ERROR")),
                            fails[0].reason)

    @settings(max_examples=examples(300))
    @given(st.lists(BACKEND, min_size=1, max_size=6),
           st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1, max_size=4))
    def test_bit_flips_in_a_valid_stream(self, msgs, edits):
        raw = bytearray(b"".join(m.encode() for m in msgs))
        for pos, value in edits:
            raw[pos % len(raw)] = value
        got = decode_or_protocol_error(BackendParser(1 << 20).feed, bytes(raw)) or []
        for m in got:
            if isinstance(m, pm.CopyData):
                decode_or_protocol_error(m.replication_message)
            if isinstance(m, pm.DataRow):
                decode_or_protocol_error(m.texts)

    @settings(max_examples=examples(300))
    @given(st.one_of(st.binary(max_size=60), REPLICATION.map(lambda m: m.encode()).flatmap(
        lambda raw: st.integers(0, len(raw)).map(lambda cut: raw[:cut]))))
    def test_replication_garbage_and_truncation(self, raw):
        m = decode_or_protocol_error(decode_replication, raw)
        if m is not None and not isinstance(m, (PrimaryKeepalive, StandbyStatusUpdate)):
            self.assertEqual(m.encode(), raw)

    @settings(max_examples=examples(300))
    @given(st.one_of(st.binary(max_size=60), st.text(max_size=30)))
    def test_copy_text_garbage(self, raw):
        decode_or_protocol_error(parse_copy_text_row, raw)

    @settings(max_examples=examples(200))
    @given(st.one_of(st.text(max_size=20), st.binary(max_size=20)))
    def test_lsn_garbage(self, raw):
        try:
            lsn = parse_lsn(raw)
        except LSNError:
            return
        self.assertTrue(0 <= lsn <= MAX_LSN)


class HostileAuthentication(unittest.TestCase):
    """SCRAM/md5/cleartext exchanges fed arbitrary bytes: clean errors only."""

    SECRET = scram_secret("pw", salt=b"0123456789abcdef", iterations=16)

    @settings(max_examples=examples(200))
    @given(st.sampled_from(["password", "md5", "scram-sha-256"]), st.sampled_from(["pw", SECRET, None]),
           st.lists(blob, min_size=1, max_size=3))
    def test_server_side(self, method, password, payloads):
        auth = ServerAuth("u", password, method, iterations=16)
        auth.start()
        for data in payloads:
            try:
                replies = auth.receive(pm.PasswordMessage(data))
            except ProtocolError:
                return
            self.assertTrue(all(isinstance(r, pm.Message) for r in replies))
            if auth.done or auth.failed:
                return

    @settings(max_examples=examples(200))
    @given(st.one_of(blob, st.builds(lambda extra, salt, i: f"r=NONCE{extra},s={salt},i={i}".encode(),
                                     st.text(_CHARS, max_size=8), st.sampled_from(["c2FsdA==", "", "!!"]),
                                     st.sampled_from(["1", "0", "-5", "x", "16"]))),
           blob)
    def test_client_side(self, first, final):
        client = ClientAuth("u", "pw", client_nonce="NONCE")
        client.receive(pm.AuthenticationSASL(("SCRAM-SHA-256",)))
        try:
            client.receive(pm.AuthenticationSASLContinue(first))
            client.receive(pm.AuthenticationSASLFinal(final))
            client.receive(pm.AuthenticationOk())
        except AuthenticationError:
            return
        self.fail("a server that cannot know the password was trusted")
