"""The v3 wire codec: every message both ways, any chunking, bounds, bad input."""

import struct

from twisted.trial import unittest

from electric.postgres.protocol.messages import (
    AuthenticationCleartextPassword,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    AuthenticationUnsupported,
    BackendKeyData,
    Bind,
    BindComplete,
    CancelRequest,
    Close,
    CloseComplete,
    CommandComplete,
    CopyBothResponse,
    CopyData,
    CopyDone,
    CopyFail,
    CopyInResponse,
    CopyOutResponse,
    DataRow,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Execute,
    FieldDescription,
    Flush,
    GSSENCRequest,
    NegotiateProtocolVersion,
    NoData,
    NoticeResponse,
    NotificationResponse,
    ParameterDescription,
    ParameterStatus,
    Parse,
    ParseComplete,
    PasswordMessage,
    PortalSuspended,
    Query,
    ReadyForQuery,
    RowDescription,
    SASLInitialResponse,
    SASLResponse,
    SSLRequest,
    SSLResponse,
    StartupMessage,
    Sync,
    Terminate,
    frame,
)
from electric.postgres.protocol.replication_messages import (
    HotStandbyFeedback,
    PrimaryKeepalive,
    StandbyStatusUpdate,
    XLogData,
    decode_replication,
)
from electric.postgres.protocol.copy_text import copy_text_row, parse_copy_text_row
from electric.postgres.protocol.cursor import ProtocolError
from electric.postgres.protocol.parsers import BackendParser, FrontendParser


def feed_bytewise(parser, data):
    out = []
    for i in range(len(data)):
        out += parser.feed(data[i:i + 1])
    return out


def feed_chunks(parser, data, sizes):
    out, i, k = [], 0, 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        out += parser.feed(data[i:i + n])
        i += n
        k += 1
    return out


BACKEND_SAMPLES = [
    AuthenticationOk(),
    AuthenticationCleartextPassword(),
    AuthenticationMD5Password(b"\x2b\x1d\x65\xb0"),
    AuthenticationSASL(("SCRAM-SHA-256", "SCRAM-SHA-256-PLUS")),
    AuthenticationSASLContinue(b"r=abc,s=c2FsdA==,i=4096"),
    AuthenticationSASLFinal(b"v=c2ln"),
    AuthenticationUnsupported(7),
    ParameterStatus("server_version", "15.18 (Debian 15.18-0+deb12u1)"),
    BackendKeyData(4242, -123456),
    ReadyForQuery("I"), ReadyForQuery("T"), ReadyForQuery("E"),
    RowDescription((FieldDescription("set_config", 0, 0, 25, -1, -1, 0),
                      FieldDescription("relid", 16385, 3, 26, 4, -1, 1),
                      FieldDescription("big", 4294967295, 1, 4294967295, 8, 655366, 0))),
    RowDescription(()),
    DataRow((b"", None, b"pre1", "\u00e9\u2713".encode(), b"\x00\xff")),
    DataRow(()),
    CommandComplete("SELECT 1"),
    CommandComplete("CREATE_REPLICATION_SLOT"),
    EmptyQueryResponse(),
    ErrorResponse({"S": "FATAL", "V": "FATAL", "C": "28P01",
                     "M": 'password authentication failed for user "electric"',
                     "F": "auth.c", "L": "330", "R": "auth_failed"}),
    NoticeResponse({"S": "NOTICE", "V": "NOTICE", "C": "00000", "M": "created replication slot"}),
    NotificationResponse(17, "chan", "payload"),
    NegotiateProtocolVersion(0, ("_pq_.x",)),
    CopyInResponse(0, (0, 0)),
    CopyOutResponse(0, (0, 0, 0)),
    CopyBothResponse(0, ()),
    CopyData(b"w" + b"\x00" * 24 + b"B..."),
    CopyData(b""),
    CopyDone(),
    ParseComplete(), BindComplete(), CloseComplete(), NoData(), PortalSuspended(),
    ParameterDescription((23, 25)),
]

FRONTEND_SAMPLES = [
    Query("SELECT pg_catalog.set_config('search_path', '', false);"),
    PasswordMessage.password("password"),
    PasswordMessage(SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=abc").encode()[5:]),
    CopyData(b"r" + b"\x00" * 33),
    CopyDone(),
    CopyFail("client gave up"),
    Sync(), Flush(),
    Parse("s1", "SELECT $1", (23,)),
    Bind("p1", "s1", (0,), (b"42", None), (0,)),
    Execute("p1", 0),
    Describe("S", "s1"),
    Close("P", "p1"),
    Terminate(),
]


class ExactBytesTests(unittest.TestCase):
    """Bytes taken from pg15-subscriber-trace.md / postgres-follower-5433.md."""

    def test_backend_messages(self):
        self.assertEqual(AuthenticationOk().encode(), b"R\x00\x00\x00\x08\x00\x00\x00\x00")
        self.assertEqual(AuthenticationMD5Password(b"\x2b\x1d\x65\xb0").encode(),
                         b"R\x00\x00\x00\x0c\x00\x00\x00\x05\x2b\x1d\x65\xb0")
        self.assertEqual(len(AuthenticationSASL(("SCRAM-SHA-256",)).encode()) - 1, 23)
        self.assertEqual(ReadyForQuery("I").encode(), b"Z\x00\x00\x00\x05I")
        self.assertEqual(BackendKeyData(1, 0).encode(), b"K\x00\x00\x00\x0c\x00\x00\x00\x01\x00\x00\x00\x00")
        self.assertEqual(CopyBothResponse().encode(), b"W" + struct.pack("!ibh", 7, 0, 0))
        self.assertEqual(CopyOutResponse(0, (0, 0, 0)).encode(), b"H" + struct.pack("!ibhhhh", 13, 0, 3, 0, 0, 0))
        self.assertEqual(CopyDone().encode(), b"c\x00\x00\x00\x04")
        self.assertEqual(DataRow(("", None)).encode(),
                         b"D\x00\x00\x00\x0e\x00\x02\x00\x00\x00\x00\xff\xff\xff\xff")
        self.assertEqual(DataRow((1, True, False)).encode(),
                         b"D" + struct.pack("!ihi", 21, 3, 1) + b"1" + struct.pack("!i", 1) + b"t"
                         + struct.pack("!i", 1) + b"f")
        self.assertEqual(RowDescription((FieldDescription.text("set_config"),)).encode(),
                         b"T" + struct.pack("!ih", 4 + 2 + 11 + 18, 1) + b"set_config\0"
                         + struct.pack("!ihihih", 0, 0, 25, -1, -1, 0))
        self.assertEqual(FieldDescription.text("timeline", 23).typlen, 4)
        self.assertEqual(FieldDescription.text("pubname", 19).typlen, 64)

    def test_frontend_messages(self):
        self.assertEqual(PasswordMessage.password("password").encode(), b"p\x00\x00\x00\x0dpassword\0")
        self.assertEqual(SSLRequest().encode(), struct.pack("!ii", 8, 80877103))
        self.assertEqual(GSSENCRequest().encode(), struct.pack("!ii", 8, 80877104))
        self.assertEqual(CancelRequest(5, 6).encode(), struct.pack("!iiii", 16, 80877102, 5, 6))
        self.assertEqual(Terminate().encode(), b"X\x00\x00\x00\x04")
        self.assertEqual(len(Query("SELECT pg_catalog.set_config('search_path', '', false);").encode()) - 1, 60)
        startup = StartupMessage({"user": "electric", "database": "electric"}).encode()
        self.assertEqual(startup, struct.pack("!ii", len(startup), 196608)
                         + b"user\0electric\0database\0electric\0\0")

    def test_sasl_messages(self):
        init = SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=xyz")
        self.assertEqual(init.encode(), b"p" + struct.pack("!i", 4 + 14 + 4 + 11)
                         + b"SCRAM-SHA-256\0" + struct.pack("!i", 11) + b"n,,n=,r=xyz")
        parsed = FrontendParser()
        parsed.in_startup = False
        msg, = parsed.feed(init.encode())
        self.assertEqual(msg.as_sasl_initial(), init)
        self.assertEqual(PasswordMessage(b"c=biws").as_sasl_response(), SASLResponse(b"c=biws"))
        self.assertEqual(SASLInitialResponse("X", None).encode()[-4:], b"\xff\xff\xff\xff")
        self.assertEqual(PasswordMessage(SASLInitialResponse("X", None).encode()[5:]).as_sasl_initial().data, None)

    def test_error_fields(self):
        e = ErrorResponse.build("FATAL", "28P01", 'password authentication failed for user "u"',
                                  detail="d", hint="h", position="3", where="w", schema_name="s",
                                  table_name="t", column_name="c", data_type_name="dt",
                                  constraint_name="n", file="f", line="1", routine="r",
                                  internal_position="9", internal_query="iq")
        back, = BackendParser().feed(e.encode())
        self.assertEqual(back, e)
        self.assertEqual(back.sqlstate, "28P01")
        self.assertEqual(back.severity, "FATAL")
        self.assertEqual(back.message, 'password authentication failed for user "u"')
        self.assertEqual((back.detail, back.hint, back.get("routine"), back.get("q")), ("d", "h", "r", "iq"))
        self.assertEqual(set(back.fields), set("SVCMDHPpqWstcdnFLR"))
        self.assertIn("FATAL:  password authentication failed", str(back))
        self.assertIn("28P01", str(back))
        self.assertRaises(TypeError, ErrorResponse.build, "ERROR", "0A000", "m", bogus="x")
        # Only S (no V, as pre-9.6 servers): severity still works.
        self.assertEqual(NoticeResponse({"S": "WARNING", "M": "x"}).severity, "WARNING")


class ParserTests(unittest.TestCase):
    def test_backend_roundtrip_any_chunking(self):
        data = b"".join(m.encode() for m in BACKEND_SAMPLES)
        for chunker in (lambda p: feed_bytewise(p, data),
                        lambda p: p.feed(data),
                        lambda p: feed_chunks(p, data, [3, 7, 1, 64, 2])):
            p = BackendParser()
            self.assertEqual(chunker(p), BACKEND_SAMPLES)
            self.assertEqual(p.buffered, 0)

    def test_frontend_roundtrip_any_chunking(self):
        startup = [SSLRequest(), GSSENCRequest(),
                   StartupMessage({"user": "electric", "database": "electric",
                                     "replication": "database",
                                     "options": " -c datestyle=ISO -c extra_float_digits=3",
                                     "application_name": "sub1", "client_encoding": "UTF8"})]
        data = b"".join(m.encode() for m in startup + FRONTEND_SAMPLES)
        for chunker in (lambda p: feed_bytewise(p, data), lambda p: p.feed(data),
                        lambda p: feed_chunks(p, data, [5, 1, 13])):
            p = FrontendParser()
            got = chunker(p)
            self.assertEqual(got, startup + FRONTEND_SAMPLES)
            self.assertTrue(p.closed)
        self.assertEqual(got[2].user, "electric")
        self.assertEqual(got[2].database, "electric")
        self.assertEqual(got[2].parameters["options"], " -c datestyle=ISO -c extra_float_digits=3")

    def test_cancel_request_ends_the_connection(self):
        p = FrontendParser()
        out = p.feed(CancelRequest(77, 88).encode() + b"garbage")
        self.assertEqual(out, [CancelRequest(77, 88)])
        self.assertTrue(p.closed)
        self.assertEqual(p.feed(b"more"), [])

    def test_bytes_after_terminate_are_ignored(self):
        p = FrontendParser()
        p.in_startup = False
        self.assertEqual(p.feed(Terminate().encode() + b"\xff\xff"), [Terminate()])

    def test_ssl_answer_on_client_side(self):
        for byte, accepted in ((b"N", False), (b"S", True)):
            p = BackendParser()
            p.expect_ssl_response()
            out = p.feed(byte + AuthenticationOk().encode())
            self.assertEqual(out, [SSLResponse(accepted), AuthenticationOk()])
            self.assertEqual(SSLResponse(accepted).encode(), byte)
        # An old server answers the request with an ErrorResponse instead.
        p = BackendParser()
        p.expect_ssl_response()
        err = ErrorResponse.build("FATAL", "08P01", "unsupported frontend protocol 1234.5679")
        self.assertEqual(feed_bytewise(p, err.encode()), [err])
        p = BackendParser()
        p.expect_ssl_response()
        with self.assertRaises(ProtocolError) as cm:
            p.feed(b"Q")
        self.assertIn("invalid answer to SSL/GSS request", str(cm.exception))

    def test_without_ssl_expectation_N_is_a_notice(self):
        n = NoticeResponse({"S": "NOTICE", "M": "hi"})
        self.assertEqual(BackendParser().feed(n.encode()), [n])

    def test_message_size_bound(self):
        p = BackendParser(max_message_size=1000)
        self.assertEqual(p.feed(CopyData(b"x" * 1000).encode()), [CopyData(b"x" * 1000)])
        with self.assertRaises(ProtocolError) as cm:
            p.feed(b"d" + struct.pack("!i", 1005))
        self.assertIn("exceeds the limit of 1000 bytes", str(cm.exception))
        self.assertEqual(cm.exception.sqlstate, "54000")
        self.assertEqual(p.buffered, 0)
        # The failure is sticky: nothing after a framing error is trusted.
        with self.assertRaises(ProtocolError):
            p.feed(ReadyForQuery().encode())

    def test_default_bound_rejects_huge_announcement_without_buffering(self):
        p = FrontendParser()
        p.in_startup = False
        with self.assertRaises(ProtocolError) as cm:
            p.feed(b"d\x7f\xff\xff\xff")
        self.assertIn("exceeds the limit of 1073741824 bytes", str(cm.exception))

    def test_startup_size_bound(self):
        big = StartupMessage({"user": "u", "x": "y" * 20000}).encode()
        with self.assertRaises(ProtocolError) as cm:
            FrontendParser().feed(big[:8])
        self.assertIn("invalid startup packet length", str(cm.exception))
        p = FrontendParser(max_startup_size=100)
        with self.assertRaises(ProtocolError):
            p.feed(struct.pack("!i", 101))
        for tiny in (0, 4, 7, -1):
            with self.assertRaises(ProtocolError):
                FrontendParser().feed(struct.pack("!ii", tiny, 0))

    def test_bad_lengths(self):
        for length in (0, 3, -5):
            with self.assertRaises(ProtocolError) as cm:
                BackendParser().feed(b"Z" + struct.pack("!i", length))
            self.assertIn("invalid backend message length", str(cm.exception))

    def test_unknown_tags(self):
        with self.assertRaises(ProtocolError) as cm:
            BackendParser().feed(b"?" + struct.pack("!i", 4))
        self.assertIn("unexpected backend message type b'?'", str(cm.exception))
        p = FrontendParser()
        p.in_startup = False
        with self.assertRaises(ProtocolError) as cm:
            p.feed(DataRow((b"x",)).encode())  # 'D' from a frontend is Describe: malformed
        self.assertIn("Describe", str(cm.exception))
        p = FrontendParser()
        p.in_startup = False
        with self.assertRaises(ProtocolError) as cm:
            p.feed(ReadyForQuery().encode())
        self.assertIn("unexpected frontend message type b'Z'", str(cm.exception))

    def test_unsupported_startup_codes(self):
        with self.assertRaises(ProtocolError) as cm:
            FrontendParser().feed(struct.pack("!ii", 8, 2 << 16))
        self.assertIn("unsupported frontend protocol 2.0", str(cm.exception))
        with self.assertRaises(ProtocolError) as cm:
            FrontendParser().feed(struct.pack("!iii", 12, 80877103, 0))
        self.assertIn("trailing", str(cm.exception))
        with self.assertRaises(ProtocolError) as cm:
            FrontendParser().feed(struct.pack("!ii", 8, 80877102))
        self.assertIn("CancelRequest", str(cm.exception))
        with self.assertRaises(ProtocolError) as cm:
            FrontendParser().feed(struct.pack("!ii", 13, 196608) + b"user\0")
        self.assertIn("StartupMessage", str(cm.exception))

    def test_malformed_bodies_are_protocol_errors(self):
        cases = [
            (b"Z", b"Q", "unknown transaction status"),
            (b"Z", b"", "ReadyForQuery"),
            (b"K", b"\x00\x00\x00\x01", "BackendKeyData"),
            (b"S", b"name\0value", "not NUL-terminated"),
            (b"S", b"a\0b\0c\0", "trailing"),
            (b"D", b"\x00\x01\x00\x00\x00\x05ab", "DataRow"),
            (b"D", b"\x00\x01\xff\xff\xff\xfe", "invalid value length"),
            (b"D", b"\xff\xff", "negative column count"),
            (b"T", b"\x00\x01abc\0\x00", "RowDescription"),
            (b"R", b"\x00\x00\x00\x05ab", "AuthenticationMD5Password"),
            (b"R", b"\x00\x00\x00\x0aSCRAM", "AuthenticationSASL"),
            (b"R", b"\x00\x00", "Authentication"),
            (b"E", b"Mno terminator", "ErrorResponse"),
            (b"C", b"\xff\xfe\0", "not valid UTF-8"),
            (b"W", b"\x00\xff\xff", "negative column count"),
        ]
        for tag, body, text in cases:
            with self.assertRaises(ProtocolError, msg=repr((tag, body))) as cm:
                feed_bytewise(BackendParser(), frame(tag, body))
            self.assertIn(text, str(cm.exception), repr((tag, body)))
        fcases = [
            (b"Q", b"SELECT 1", "not NUL-terminated"),
            (b"X", b"x", "trailing"),
            (b"B", b"\0\0\x00\x01\x00", "Bind"),
            (b"D", b"Zname\0", "kind must be S or P"),
        ]
        for tag, body, text in fcases:
            p = FrontendParser()
            p.in_startup = False
            with self.assertRaises(ProtocolError) as cm:
                p.feed(frame(tag, body))
            self.assertIn(text, str(cm.exception))

    def test_password_message_interpretations(self):
        with self.assertRaises(ProtocolError):
            PasswordMessage(b"no-nul").as_password()
        with self.assertRaises(ProtocolError):
            PasswordMessage(b"SCRAM\0\x00\x00").as_sasl_initial()
        self.assertEqual(PasswordMessage(b"secret\0").as_password(), "secret")

    def test_error_text_is_never_a_decode_failure(self):
        raw = frame(b"E", b"SFATAL\0M\xff\xfebad\0\0")
        err, = BackendParser().feed(raw)
        self.assertEqual(err.severity, "FATAL")
        self.assertIn("bad", err.message)

    def test_encoding_refuses_nul_in_strings(self):
        self.assertRaises(ValueError, Query("a\0b").encode)
        self.assertRaises(ValueError, ReadyForQuery, "X")
        self.assertRaises(ValueError, AuthenticationMD5Password, b"abc")


class ReplicationSubMessageTests(unittest.TestCase):
    def test_xlogdata(self):
        m = XLogData(0x1925AC0, 0x1925AC0, 12345, b"B" + b"\x01" * 20)
        payload = m.encode()
        self.assertEqual(payload[:1], b"w")
        self.assertEqual(len(payload), 25 + 21)
        self.assertEqual(decode_replication(payload), m)
        framed, = BackendParser().feed(m.frame())
        self.assertEqual(framed.replication_message(), m)

    def test_keepalive_exact_bytes(self):
        m = PrimaryKeepalive(0x1925A50, 7, True)
        self.assertEqual(m.encode(), b"k" + struct.pack("!QqB", 0x1925A50, 7, 1))
        self.assertEqual(len(m.frame()), 1 + 4 + 18)
        self.assertEqual(decode_replication(m.encode()), m)

    def test_status_update_exact_bytes(self):
        m = StandbyStatusUpdate(0x1925B78, 0x1925AC0, 0x1925B78, -1, False)
        self.assertEqual(m.encode(), b"r" + struct.pack("!QQQqB", 0x1925B78, 0x1925AC0, 0x1925B78, -1, 0))
        self.assertEqual(struct.unpack("!i", m.frame()[1:5])[0], 38)
        self.assertEqual(decode_replication(m.encode()), m)
        h = HotStandbyFeedback(1, 2, 3, 4, 5)
        self.assertEqual(decode_replication(h.encode()), h)

    def test_bad_replication_payloads(self):
        for payload, text in [(b"", "empty"), (b"w" + b"\0" * 23, "XLogData"),
                              (b"k" + b"\0" * 16, "PrimaryKeepalive"),
                              (b"r" + b"\0" * 34, "StandbyStatusUpdate"),
                              (b"h\0", "HotStandbyFeedback"),
                              (b"z123", "unknown replication message type b'z'")]:
            with self.assertRaises(ProtocolError) as cm:
                decode_replication(payload)
            self.assertIn(text, str(cm.exception))


class CopyTextTests(unittest.TestCase):
    def test_escape_row(self):
        self.assertEqual(copy_text_row(["pre1", "before sub", "1"]), b"pre1\tbefore sub\t1\n")
        self.assertEqual(copy_text_row(["a\tb", None, "c\\d\ne\rf", "", "\b\f\v", "\u00e9\u2713"]),
                         "a\\tb\t\\N\tc\\\\d\\ne\\rf\t\t\\b\\f\\v\t\u00e9\u2713\n".encode())
        self.assertEqual(copy_text_row(["\\N"]), b"\\\\N\n")
        self.assertEqual(copy_text_row([]), b"\n")

    def test_parse_is_inverse(self):
        rows = [["x", None, "", "\\N", "tab\there", "nl\nhere", "\\x", "\u00e9"], [None], [""]]
        for row in rows:
            self.assertEqual(parse_copy_text_row(copy_text_row(row)), row)
        self.assertEqual(parse_copy_text_row(b"\\101\\x41\\q"), ["AAq"])
        with self.assertRaises(ProtocolError):
            parse_copy_text_row(b"bad\\")
        with self.assertRaises(ProtocolError):
            parse_copy_text_row(b"\xff")


# --------------------------------------------------------------------------
# Fuzzing: whatever arrives, the only exception is ProtocolError.

from hypothesis import given, settings, strategies as st  # noqa: E402

_VALID_BACKEND = b"".join(m.encode() for m in BACKEND_SAMPLES)
_VALID_FRONTEND = (StartupMessage({"user": "u"}).encode()
                   + b"".join(m.encode() for m in FRONTEND_SAMPLES[:-1]))


def _mutate(data, edits):
    b = bytearray(data)
    for pos, val in edits:
        if b:
            b[pos % len(b)] = val
    return bytes(b)


class FuzzTests(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300), st.integers(1, 17))
    def test_random_backend_bytes(self, data, chunk):
        p = BackendParser(max_message_size=1 << 16)
        try:
            feed_chunks(p, data, [chunk])
        except ProtocolError:
            pass

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300), st.booleans())
    def test_random_frontend_bytes(self, data, startup_done):
        p = FrontendParser(max_message_size=1 << 16)
        p.in_startup = not startup_done
        try:
            p.feed(data)
        except ProtocolError:
            pass

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1, max_size=4))
    def test_mutated_valid_streams(self, edits):
        for parser, data in ((BackendParser(1 << 20), _VALID_BACKEND), (FrontendParser(1 << 20), _VALID_FRONTEND)):
            try:
                for m in parser.feed(_mutate(data, edits)):
                    if isinstance(m, CopyData):
                        try:
                            m.replication_message()
                        except ProtocolError:
                            pass
                    if isinstance(m, DataRow):
                        try:
                            m.texts()
                        except ProtocolError:
                            pass
            except ProtocolError:
                pass
