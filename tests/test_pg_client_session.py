"""
The replication client session without sockets: every state and every
sslmode, fed the bytes a Postgres server sends (built with the same wire
codec, and a real `ServerAuth` on the other side of each password exchange),
checked byte for byte on what it answers.  Then the Twisted protocol over a
StringTransport: it only runs the session's actions.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from electric.postgres.protocol.auth import ServerAuth
from electric.postgres.protocol.messages import (
    AuthenticationCleartextPassword,
    AuthenticationMD5Password,
    AuthenticationOk,
    BackendKeyData,
    CommandComplete,
    CopyBothResponse,
    CopyData,
    CopyDone,
    DataRow,
    ErrorResponse,
    FieldDescription,
    NoticeResponse,
    ParameterStatus,
    PasswordMessage,
    Query,
    ReadyForQuery,
    RowDescription,
    SSLRequest,
    StartupMessage,
    encode_all,
)
from electric.postgres.protocol.parsers import FrontendParser
from electric.postgres.protocol.replication_messages import (
    PrimaryKeepalive,
    StandbyStatusUpdate,
    XLogData,
    decode_replication,
)
from electric.postgres.protocol.auth import md5_response
from electric.postgres.source.session import (
    AUTH,
    CLOSED,
    FAILED,
    IDENTIFY,
    NEW,
    START,
    STREAMING,
    TLS_HANDSHAKE,
    TLS_REQUEST,
    Deliver,
    Fail,
    Keepalive,
    ReplicationSession,
    HOLD,
    Send,
    SlotCreated,
    StartTLS,
    Streaming,
)
from electric.postgres.source.replication import ReplicationClient, ReplicationError
from electric.postgres.tls import MODES, TLSSettings

NOW = 777_000_000
STARTUP = StartupMessage({"user": "electric", "database": "db", "replication": "database",
                          "application_name": "electric_pg1"}).encode()
SYSTEM_ROW = ("7190000000000000001", "1", "0/1A2B3C4", "db")


def session(mode="prefer", password="pw", attempt=0, **kw) -> ReplicationSession:
    return ReplicationSession("electric", password, "db", "slot_x", "pub", application_name="electric_pg1",
                              tls=TLSSettings(sslmode=mode), attempt=attempt, clock=lambda: NOW, **kw)


def sent(actions) -> bytes:
    """The bytes of every Send, and nothing else in `actions`."""
    assert all(isinstance(a, Send) for a in actions), actions
    return b"".join(a.data for a in actions)


def login_messages():
    return encode_all([AuthenticationOk(), ParameterStatus("server_version", "15.4"),
                       BackendKeyData(1, 2), ReadyForQuery("I")])


def identify_answer():
    fields = tuple(FieldDescription.text(n, 25) for n in ("systemid", "timeline", "xlogpos", "dbname"))
    return encode_all([RowDescription(fields), DataRow(SYSTEM_ROW), CommandComplete("IDENTIFY_SYSTEM"),
                       ReadyForQuery("I")])


def to_streaming(s: ReplicationSession) -> ReplicationSession:
    """Through trust authentication, IDENTIFY_SYSTEM and START_REPLICATION."""
    s.start()
    if s.state == TLS_REQUEST:
        s.feed(b"N") if not s.tls.required else (s.feed(b"S"), s.tls_established())
    s.feed(login_messages())
    s.feed(identify_answer())
    actions = s.feed(CopyBothResponse(0, ()).encode())
    assert actions == [Streaming(SYSTEM_ROW)], actions
    return s


def xlog(start, end, payload=b"B-payload") -> bytes:
    return CopyData(XLogData(start, end, 0, payload).encode()).encode()


def keepalive(end, reply) -> bytes:
    return CopyData(PrimaryKeepalive(end, 0, reply).encode()).encode()


class TLSNegotiationTests(unittest.TestCase):
    """sslmode → SSLRequest or not, and what 'S' / 'N' / an error make of it."""

    def test_ssl_request_bytes(self):
        self.assertEqual(SSLRequest().encode(), bytes.fromhex("0000000804d2162f"))

    def test_disable_logs_in_without_asking(self):
        s = session("disable")
        self.assertEqual(sent(s.start()), STARTUP)
        self.assertEqual(s.state, AUTH)
        self.assertFalse(s.encrypted)

    def test_every_mode_but_disable_and_allow_asks_first(self):
        for mode in ("prefer", "require", "verify-ca", "verify-full"):
            s = session(mode)
            self.assertEqual(sent(s.start()), SSLRequest().encode(), mode)
            self.assertEqual(s.state, TLS_REQUEST, mode)

    def test_allow_asks_only_on_its_second_attempt(self):
        self.assertEqual(sent(session("allow").start()), STARTUP)
        self.assertEqual(sent(session("allow", attempt=1).start()), SSLRequest().encode())

    def test_s_starts_tls_and_login_follows_the_handshake(self):
        for mode in ("allow", "prefer", "require", "verify-ca", "verify-full"):
            s = session(mode, attempt=1 if mode == "allow" else 0)
            s.start()
            self.assertEqual(s.feed(b"S"), [StartTLS()], mode)
            self.assertEqual(s.state, TLS_HANDSHAKE)
            self.assertFalse(s.encrypted)
            self.assertEqual(sent(s.tls_established()), STARTUP, mode)
            self.assertEqual(s.state, AUTH)
            self.assertTrue(s.encrypted)

    def test_n_under_prefer_logs_in_without_tls(self):
        s = session("prefer")
        s.start()
        self.assertEqual(sent(s.feed(b"N")), STARTUP)
        self.assertEqual(s.state, AUTH)
        self.assertFalse(s.encrypted)

    def test_n_is_refused_where_tls_is_required(self):
        for mode in ("require", "verify-ca", "verify-full"):
            s = session(mode)
            s.start()
            self.assertEqual(s.feed(b"N"), [Fail("server does not support TLS, but TLS was required")], mode)
            self.assertEqual(s.state, FAILED)
            self.assertIsNone(s.next_attempt(), mode)

    def test_bytes_behind_the_s_are_refused(self):
        # Whatever follows 'S' before the handshake was not encrypted: an
        # injection by someone in the path (CVE-2021-23222).
        for extra in (AuthenticationOk().encode(), b"\x00"):
            s = session("verify-full")
            s.start()
            actions = s.feed(b"S" + extra)
            self.assertEqual(actions, [Fail("received unencrypted data after the server accepted TLS")])
            self.assertEqual(s.state, FAILED)

    def test_garbage_instead_of_s_or_n(self):
        s = session("prefer")
        s.start()
        [fail] = s.feed(b"X")
        self.assertIsInstance(fail, Fail)
        self.assertIn("invalid answer to SSL/GSS request: b'X'", fail.reason)

    def test_error_answer_to_the_request(self):
        s = session("require")
        s.start()
        err = ErrorResponse.build("FATAL", "53300", "sorry, too many clients already").encode()
        self.assertEqual(s.feed(err), [Fail("FATAL 53300: sorry, too many clients already")])

    def test_handshake_failure(self):
        s = session("verify-full")
        s.start()
        s.feed(b"S")
        self.assertEqual(s.tls_failed("certificate verify failed"),
                         [Fail("TLS handshake failed: certificate verify failed")])
        self.assertEqual(s.error, "TLS handshake failed: certificate verify failed")
        self.assertEqual(s.tls_established(), [])
        self.assertIsNone(s.next_attempt())

    def test_tls_not_set_up_locally(self):
        s = session("verify-ca")
        s.start()
        s.feed(b"S")
        self.assertEqual(s.tls_failed('root certificate file "/x/root.crt" does not exist', handshake=False),
                         [Fail('cannot set up TLS: root certificate file "/x/root.crt" does not exist')])

    def test_connection_lost_during_the_handshake(self):
        s = session("verify-full")
        s.start()
        s.feed(b"S")
        self.assertEqual(s.connection_lost("Connection was closed cleanly."), [])
        self.assertEqual(s.state, CLOSED)
        self.assertEqual(s.error, "TLS handshake failed: Connection was closed cleanly.")

    def test_connection_lost_before_the_answer(self):
        s = session("require")
        s.start()
        s.connection_lost("Connection was closed cleanly.")
        self.assertEqual(s.error, "connection closed in answer to the TLS request: Connection was closed cleanly.")

    def test_data_before_the_handshake_completed(self):
        s = session("verify-ca")
        s.start()
        s.feed(b"S")
        [fail] = s.feed(AuthenticationOk().encode())
        self.assertEqual(fail, Fail("protocol error: unexpected AuthenticationOk while tls-handshake"))


class SecondAttemptTests(unittest.TestCase):
    """libpq's fallback: prefer retries without TLS, allow with TLS, both once and only before login."""

    def test_attempts_per_mode(self):
        expected = {"disable": (False,), "allow": (False, True), "prefer": (True, False),
                    "require": (True,), "verify-ca": (True,), "verify-full": (True,)}
        self.assertEqual({m: TLSSettings(sslmode=m).attempts for m in MODES}, expected)

    def test_prefer_retries_without_tls_after_a_failed_handshake(self):
        s = session("prefer")
        s.start()
        s.feed(b"S")
        s.tls_failed("certificate verify failed")
        retry = s.next_attempt()
        self.assertIsNotNone(retry)
        self.assertEqual((retry.attempt, retry.use_tls, retry.state), (1, False, NEW))
        self.assertEqual(sent(retry.start()), STARTUP)
        retry.feed(ErrorResponse.build("FATAL", "28000", "no pg_hba.conf entry").encode())
        self.assertIsNone(retry.next_attempt())

    def test_prefer_retries_without_tls_after_a_refused_login_over_tls(self):
        s = session("prefer")
        s.start()
        s.feed(b"S")
        s.tls_established()
        s.feed(ErrorResponse.build("FATAL", "28P01", 'password authentication failed for user "electric"').encode())
        retry = s.next_attempt()
        self.assertEqual((retry.attempt, retry.use_tls), (1, False))

    def test_allow_retries_with_tls_after_a_refused_plain_login(self):
        s = session("allow")
        self.assertEqual(sent(s.start()), STARTUP)
        s.feed(ErrorResponse.build("FATAL", "28000", 'no pg_hba.conf entry for host "127.0.0.1", '
                                   'user "electric", database "db", no encryption').encode())
        retry = s.next_attempt()
        self.assertEqual((retry.attempt, retry.use_tls), (1, True))
        self.assertEqual(sent(retry.start()), SSLRequest().encode())
        retry.feed(b"N")  # allow takes plain on its TLS attempt too
        self.assertEqual(retry.state, AUTH)

    def test_no_second_attempt_once_logged_in(self):
        s = session("prefer")
        s.start()
        s.feed(b"S")
        s.tls_established()
        s.feed(login_messages())
        s.feed(ErrorResponse.build("ERROR", "42704", 'replication slot "slot_x" does not exist').encode())
        self.assertTrue(s.logged_in)
        self.assertIsNone(s.next_attempt())

    def test_no_second_attempt_while_the_first_lives_or_for_single_attempt_modes(self):
        s = session("prefer")
        s.start()
        self.assertIsNone(s.next_attempt())
        for mode in ("disable", "require", "verify-ca", "verify-full"):
            s = session(mode)
            s.start()
            s.close("gave up")
            self.assertIsNone(s.next_attempt(), mode)

    def test_the_second_attempt_keeps_everything_else(self):
        s = session("prefer", password="secret")
        s.start()
        s.tls_failed("x")
        retry = s.next_attempt()
        self.assertEqual((retry.user, retry.password, retry.database, retry.slot, retry.publication,
                          retry.application_name, retry.tls), ("electric", "secret", "db", "slot_x", "pub",
                                                               "electric_pg1", s.tls))


class AuthenticationTests(unittest.TestCase):
    def client_messages(self, data: bytes, parser: FrontendParser):
        return parser.feed(data)

    def exchange(self, method: str, client_password: str, server_password: str = "pw"):
        """Run a full password exchange against a real ServerAuth; returns (session, last actions)."""
        s = session("disable", password=client_password)
        parser = FrontendParser()
        [startup] = parser.feed(sent(s.start()))
        self.assertIsInstance(startup, StartupMessage)
        server = ServerAuth("electric", server_password, method)
        actions = s.feed(encode_all(server.start()))
        while not server.done and not server.failed:
            [reply] = parser.feed(sent(actions))
            self.assertIsInstance(reply, PasswordMessage)
            answers = server.receive(reply)
            if server.failed:
                return s, s.feed(server.error_response().encode())
            actions = s.feed(encode_all(answers)) if answers else []
        self.assertEqual(actions, [])
        return s, s.feed(login_messages())

    def test_every_password_method_logs_in(self):
        for method in ("trust", "password", "md5", "scram-sha-256"):
            s, actions = self.exchange(method, "pw")
            self.assertEqual(sent(actions), Query("IDENTIFY_SYSTEM").encode(), method)
            self.assertEqual(s.state, IDENTIFY, method)
            self.assertTrue(s.logged_in)

    def test_wrong_password_fails_with_the_server_text(self):
        for method in ("password", "md5", "scram-sha-256"):
            s, actions = self.exchange(method, "wrong")
            self.assertEqual(actions, [Fail('FATAL 28P01: password authentication failed for user "electric"')],
                             method)
            self.assertEqual(s.state, FAILED)

    def test_cleartext_and_md5_answers(self):
        s = session("disable")
        s.start()
        self.assertEqual(sent(s.feed(AuthenticationCleartextPassword().encode())),
                         PasswordMessage.password("pw").encode())
        s = session("disable")
        s.start()
        self.assertEqual(sent(s.feed(AuthenticationMD5Password(b"abcd").encode())),
                         PasswordMessage.password(md5_response("electric", "pw", b"abcd")).encode())

    def test_no_password_for_a_password_method(self):
        s = session("disable", password="")
        s.start()
        [fail] = s.feed(AuthenticationCleartextPassword().encode())
        self.assertEqual(fail, Fail("server requested password authentication for user 'electric' "
                                    "but no password was supplied"))

    def test_ready_before_authentication_is_a_protocol_error(self):
        s = session("disable")
        s.start()
        self.assertEqual(s.feed(ReadyForQuery("I").encode()),
                         [Fail("protocol error: server sent ReadyForQuery before authentication completed")])

    def test_unexpected_message_during_authentication(self):
        s = session("disable")
        s.start()
        self.assertEqual(s.feed(DataRow(("x",)).encode()),
                         [Fail("protocol error: unexpected DataRow during authentication")])

    def test_notices_and_parameters_are_ignored_everywhere(self):
        s = session("disable")
        s.start()
        noise = NoticeResponse.build("NOTICE", "00000", "hello").encode() + ParameterStatus("a", "b").encode()
        self.assertEqual(s.feed(noise), [])
        self.assertEqual(s.state, AUTH)


class StartupTests(unittest.TestCase):
    def test_identify_then_start_replication(self):
        s = session("disable")
        s.start()
        self.assertEqual(sent(s.feed(login_messages())), Query("IDENTIFY_SYSTEM").encode())
        actions = s.feed(identify_answer())
        self.assertEqual(sent(actions), Query(
            "START_REPLICATION SLOT slot_x LOGICAL 0/0 (proto_version '1', publication_names 'pub')").encode())
        self.assertEqual(s.state, START)
        self.assertEqual(s.system, SYSTEM_ROW)
        self.assertEqual(s.feed(CopyBothResponse(0, ()).encode()), [Streaming(SYSTEM_ROW)])
        self.assertEqual(s.state, STREAMING)

    def test_publication_is_quoted(self):
        s = ReplicationSession("u", "", "db", "slot", "it's", tls=TLSSettings(sslmode="disable"))
        s.start()
        s.feed(login_messages())
        self.assertIn(b"publication_names 'it''s'", sent(s.feed(identify_answer())))

    def test_server_refuses_start_replication(self):
        s = session("disable")
        s.start()
        s.feed(login_messages())
        s.feed(identify_answer())
        err = ErrorResponse.build("ERROR", "42704", 'replication slot "slot_x" does not exist').encode()
        self.assertEqual(s.feed(err), [Fail('ERROR 42704: replication slot "slot_x" does not exist')])

    def test_unexpected_answer_to_identify(self):
        s = session("disable")
        s.start()
        s.feed(login_messages())
        self.assertEqual(s.feed(CopyBothResponse(0, ()).encode()),
                         [Fail("protocol error: unexpected CopyBothResponse after IDENTIFY_SYSTEM")])

    def test_connection_lost_while_logging_in(self):
        s = session("disable")
        s.start()
        s.connection_lost("Connection was closed cleanly.")
        self.assertEqual(s.error, "connection closed during auth: Connection was closed cleanly.")

    def test_malformed_bytes(self):
        s = session("disable")
        s.start()
        [fail] = s.feed(b"R\x00\x00\x00\x02")
        self.assertEqual(fail, Fail("protocol error from server: invalid backend message length 2 for type b'R'"))
        self.assertEqual(s.feed(login_messages()), [])

    def test_oversized_message_is_refused_when_its_header_arrives(self):
        s = session("disable", max_message_size=1000)
        s.start()
        [fail] = s.feed(b"d" + (5000).to_bytes(4, "big"))
        self.assertIsInstance(fail, Fail)
        self.assertIn("exceeds the limit of 1000 bytes", fail.reason)


class CreateSlotTests(unittest.TestCase):
    """create_slot: CREATE_REPLICATION_SLOT with an exported snapshot, hold, then START_REPLICATION."""

    def created_answer(self, point="0/16B3748", snapshot="00000003-00000002-1"):
        fields = tuple(FieldDescription.text(n, 25) for n in ("slot_name", "consistent_point", "snapshot_name",
                                                              "output_plugin"))
        return encode_all([RowDescription(fields), DataRow(("slot_x", point, snapshot, "pgoutput")),
                           CommandComplete("CREATE_REPLICATION_SLOT"), ReadyForQuery("I")])

    def to_create(self, **kw):
        s = session("disable", create_slot=True, **kw)
        s.start()
        s.feed(login_messages())
        return s, sent(s.feed(identify_answer()))

    def test_creates_exports_holds_then_streams(self):
        s, query = self.to_create()
        self.assertEqual(query, Query("CREATE_REPLICATION_SLOT \"slot_x\" LOGICAL pgoutput (SNAPSHOT 'export')").encode())
        self.assertEqual(s.feed(self.created_answer()), [SlotCreated("slot_x", 0x16B3748, "00000003-00000002-1")])
        self.assertEqual(s.state, HOLD)
        self.assertEqual(s.created.consistent_point, 0x16B3748)
        self.assertEqual(sent(s.start_streaming()), Query(
            "START_REPLICATION SLOT slot_x LOGICAL 0/0 (proto_version '1', publication_names 'pub')").encode())
        self.assertEqual(s.state, START)
        self.assertEqual(s.start_streaming(), [])  # once
        self.assertEqual(s.feed(CopyBothResponse(0, ()).encode()), [Streaming(SYSTEM_ROW)])

    def test_temporary_slot(self):
        s, query = self.to_create(temporary=True)
        self.assertEqual(query, Query(
            "CREATE_REPLICATION_SLOT \"slot_x\" TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')").encode())

    def test_start_streaming_before_created_does_nothing(self):
        s, _ = self.to_create()
        self.assertEqual(s.start_streaming(), [])

    def test_refusal_and_garbled_answers_fail(self):
        s, _ = self.to_create()
        err = ErrorResponse.build("ERROR", "42710", 'replication slot "slot_x" already exists').encode()
        self.assertEqual(s.feed(err), [Fail('ERROR 42710: replication slot "slot_x" already exists')])
        s, _ = self.to_create()
        actions = s.feed(self.created_answer(point="nonsense"))
        self.assertEqual(len(actions), 1)
        self.assertIn("bad consistent point", actions[0].reason)
        s, _ = self.to_create()
        actions = s.feed(encode_all([CommandComplete("CREATE_REPLICATION_SLOT"), ReadyForQuery("I")]))
        self.assertEqual(actions, [Fail("protocol error: CREATE_REPLICATION_SLOT completed without a result row")])

    def test_second_attempt_keeps_create_slot(self):
        s = session("prefer", create_slot=True, temporary=True)
        s.start()
        s.feed(b"S")
        s.tls_failed("no")
        again = s.next_attempt()
        self.assertTrue(again.create_slot and again.temporary)


class StreamingTests(unittest.TestCase):
    def test_xlogdata_and_keepalives(self):
        s = to_streaming(session("disable"))
        actions = s.feed(xlog(0x100, 0x180, b"payload-1") + keepalive(0x200, True) + xlog(0x200, 0x220))
        self.assertEqual(actions, [Deliver(0x100, 0x180, b"payload-1"), Keepalive(0x200, True),
                                   Deliver(0x200, 0x220, b"B-payload")])
        self.assertEqual(s.last_received, 0x220)

    def test_report_writes_a_standby_status_update(self):
        s = to_streaming(session("disable"))
        s.feed(xlog(0x100, 0x180))
        [update] = s.report(0x150)
        self.assertEqual(update, Send(StandbyStatusUpdate(0x180, 0x150, 0x150, NOW, False).frame()))
        self.assertEqual(s.last_flushed, 0x150)
        # Not forced and nothing new: nothing to say; forced: said again.
        self.assertEqual(s.report(0x150), [])
        self.assertEqual(s.report(0x100), [])
        [again] = s.report(0x100, force=True)
        rep = decode_replication(CopyData.decode_body(again.data[5:]).data)
        self.assertEqual((rep.written, rep.flushed, rep.applied), (0x180, 0x150, 0x150))

    def test_written_never_trails_flushed(self):
        s = to_streaming(session("disable"))
        [update] = s.report(0x900, force=True)
        rep = decode_replication(CopyData.decode_body(update.data[5:]).data)
        self.assertEqual((rep.written, rep.flushed), (0x900, 0x900))

    def test_report_before_streaming_says_nothing(self):
        s = session("disable")
        s.start()
        self.assertEqual(s.report(5, force=True), [])

    def test_server_ending_the_stream(self):
        for end in (CopyDone().encode(), CommandComplete("START_REPLICATION").encode(), ReadyForQuery("I").encode()):
            s = to_streaming(session("disable"))
            self.assertEqual(s.feed(end), [Fail("server ended the replication stream")])

    def test_unexpected_replication_message(self):
        s = to_streaming(session("disable"))
        status = CopyData(StandbyStatusUpdate(1, 1, 1, 0).encode()).encode()
        self.assertEqual(s.feed(status), [
            Fail("protocol error: unexpected StandbyStatusUpdate from the server in the replication stream")])

    def test_error_mid_stream_stops_delivery(self):
        s = to_streaming(session("disable"))
        err = ErrorResponse.build("FATAL", "57P01", "terminating connection due to administrator command").encode()
        actions = s.feed(xlog(1, 2) + err + xlog(3, 4))
        self.assertEqual(actions, [Deliver(1, 2, b"B-payload"),
                                   Fail("FATAL 57P01: terminating connection due to administrator command")])

    def test_connection_lost_while_streaming_keeps_no_error(self):
        s = to_streaming(session("disable"))
        s.connection_lost("Connection lost.")
        self.assertEqual((s.state, s.error), (CLOSED, None))

    def test_close_keeps_the_first_reason(self):
        s = to_streaming(session("prefer"))
        self.assertEqual(s.close("hub append failed"), [Fail("hub append failed")])
        self.assertEqual(s.close("connector stopped"), [])
        s.connection_lost("Connection was aborted locally.")
        self.assertEqual(s.error, "hub append failed")
        self.assertEqual(s.feed(xlog(1, 2)), [])

    def test_streaming_over_tls(self):
        s = to_streaming(session("verify-full"))
        self.assertTrue(s.encrypted)
        self.assertEqual(s.feed(xlog(5, 6)), [Deliver(5, 6, b"B-payload")])


class Consumer:
    def __init__(self, flushed=0, fail_on_data=False):
        self.events = []
        self.flushed = flushed
        self.fail_on_data = fail_on_data

    def stream_started(self, client):
        self.events.append("started")

    def xlog_data(self, wal_start, wal_end, data):
        if self.fail_on_data:
            raise RuntimeError("consumer bug")
        self.events.append(("xlog", wal_start, wal_end, data))

    def keepalive(self, wal_end):
        self.events.append(("keepalive", wal_end))
        return self.flushed


class ProtocolTests(unittest.TestCase):
    """The Twisted protocol only runs the session's actions: bytes, the consumer, pausing, aborting."""

    def connected(self, consumer, mode="disable"):
        client = ReplicationClient("electric", "pw", "db", "slot_x", "pub", consumer, label="pg1",
                                   clock=lambda: NOW, tls=TLSSettings(sslmode=mode))
        transport = StringTransport()
        client.makeConnection(transport)
        return client, transport

    def stream(self, consumer):
        client, transport = self.connected(consumer)
        self.assertEqual(transport.value(), STARTUP)
        client.dataReceived(login_messages() + identify_answer() + CopyBothResponse(0, ()).encode())
        self.assertEqual(client.state, STREAMING)
        self.assertEqual(self.successResultOf(client.started), client)
        transport.clear()
        return client, transport

    def test_asks_for_tls_first_under_prefer(self):
        client, transport = self.connected(Consumer(), mode="prefer")
        self.assertEqual(transport.value(), SSLRequest().encode())
        client.dataReceived(b"N")
        self.assertEqual(transport.value(), SSLRequest().encode() + STARTUP)

    def test_stream_reaches_the_consumer_and_acks_go_out(self):
        consumer = Consumer(flushed=0x150)
        client, transport = self.stream(consumer)
        client.dataReceived(xlog(0x100, 0x180, b"m1") + keepalive(0x200, False))
        self.assertEqual(consumer.events, ["started", ("xlog", 0x100, 0x180, b"m1"), ("keepalive", 0x200)])
        # The flush position moved with the keepalive: reported unasked.
        self.assertEqual(transport.value(), StandbyStatusUpdate(0x200, 0x150, 0x150, NOW, False).frame())
        transport.clear()
        client.dataReceived(keepalive(0x200, False))
        self.assertEqual(transport.value(), b"")
        client.dataReceived(keepalive(0x200, True))
        self.assertEqual(transport.value(), StandbyStatusUpdate(0x200, 0x150, 0x150, NOW, False).frame())
        transport.clear()
        client.send_status(0x1F0)
        self.assertEqual(transport.value(), StandbyStatusUpdate(0x200, 0x1F0, 0x1F0, NOW, False).frame())

    def test_pause_and_resume_the_socket(self):
        client, transport = self.stream(Consumer())
        client.pause()
        self.assertEqual(transport.producerState, "paused")
        client.resume()
        self.assertEqual(transport.producerState, "producing")

    def test_a_consumer_bug_drops_the_connection_with_the_reason(self):
        client, transport = self.stream(Consumer(fail_on_data=True))
        client.dataReceived(xlog(1, 2))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(client.error, "internal error: consumer bug")
        self.flushLoggedErrors(RuntimeError)
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(client.done), "internal error: consumer bug")

    def test_close_aborts_and_done_says_why(self):
        client, transport = self.stream(Consumer())
        client.close("connector stopped")
        self.assertTrue(transport.disconnecting)
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(client.done), "connector stopped")

    def test_refusal_before_streaming_fails_started(self):
        client, transport = self.connected(Consumer())
        client.dataReceived(ErrorResponse.build("FATAL", "28P01", "password authentication failed").encode())
        self.assertTrue(transport.disconnecting)
        client.connectionLost(Failure(ConnectionDone()))
        failure = self.failureResultOf(client.started, ReplicationError)
        self.assertEqual(str(failure.value), "FATAL 28P01: password authentication failed")

    def test_tls_that_cannot_be_set_up_fails_before_the_handshake(self):
        client = ReplicationClient("electric", "pw", "db", "slot_x", "pub", Consumer(),
                                   tls=TLSSettings(sslmode="verify-ca", rootcert="/nonexistent/ca.pem"))
        transport = StringTransport()
        client.makeConnection(transport)
        client.dataReceived(b"S")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(client.error, 'cannot set up TLS: root certificate file "/nonexistent/ca.pem" does not '
                         "exist: provide the file (sslrootcert=...), use the system's trusted roots with "
                         "sslrootcert=system, or change sslmode to disable server certificate verification")
