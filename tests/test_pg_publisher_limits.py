"""
Port 5433 against hostile peers, over real sockets: message size caps before
and after login (refused from the length field, before the body is read),
the login deadline (on a task.Clock), the cap on connections waiting to log
in, failed logins logged and counted, slots of other connectors refused, and
TLS (SSLRequest answered S, TLS required, no cleartext spliced in before the
handshake, IPv6).
"""

from __future__ import annotations

import socket
import struct

from twisted.internet import defer, reactor, task, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.logger import globalLogPublisher, formatEvent
from twisted.trial import unittest

from electric.postgres.protocol.messages import (
    AuthenticationSASL,
    CommandComplete,
    CopyBothResponse,
    ErrorResponse,
    GSSENCRequest,
    Query,
    ReadyForQuery,
    SSLRequest,
    SSLResponse,
    StartupMessage,
)
from electric.postgres.publisher import session as session_mod
from electric.tls import TLSFiles
from tests.publisher_helpers import ITEMS, Electric, PgClient, connect, eventually
from tests.tls_helpers import TestCA

START = "START_REPLICATION SLOT \"{slot}\" LOGICAL 0/0 (proto_version '1', publication_names '\"all_tables\"')"
STARTUP = StartupMessage({"user": "postgres_1", "database": "postgres_1", "replication": "database",
                          "application_name": "postgres_1", "client_encoding": "UTF8"})


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class Base(unittest.TestCase):
    timeout = 60
    electric_kw: dict = {}

    @defer.inlineCallbacks
    def setUp(self):
        self.e = Electric(**self.make_kw())
        yield self.e.start()
        self.addCleanup(self.e.destroy)
        self.addCleanup(self.e.stop)
        self.e.register(ITEMS)
        self.clients = []
        self.addCleanup(self._close_clients)
        self.log = []
        observer = lambda event: self.log.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def make_kw(self):
        return dict(self.electric_kw)

    def _close_clients(self):
        for c in self.clients:
            if c.transport is not None and not c.is_closed:
                c.transport.abortConnection()

    @defer.inlineCallbacks
    def raw(self):
        """A connected PgClient that has sent nothing."""
        c = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.e.port), PgClient())
        self.clients.append(c)
        return c

    @defer.inlineCallbacks
    def login(self, user="postgres_1", password=None, **kw):
        if password is None:
            password = self.e.password(user)
        c = yield connect(self.e.port, user, password, **kw)
        self.clients.append(c)
        return c

    @defer.inlineCallbacks
    def fatal(self, c):
        """The FATAL ErrorResponse the server sent before closing `c`."""
        m, _ = yield c.until(lambda m: isinstance(m, ErrorResponse))
        yield c.lost
        self.assertEqual(m.severity, "FATAL")
        return m

    def status(self):
        return self.e.publisher.status()


class MessageSizes(Base):
    @defer.inlineCallbacks
    def test_a_64_mib_password_header_is_refused_from_its_length(self):
        # 8 strangers each announce a 64 MiB password message and send only
        # its 5-byte header: refused at once, so nothing waits for (or
        # allocates) the body.
        clients = []
        for _ in range(8):
            c = yield self.raw()
            c.send(STARTUP)
            yield c.until(lambda m: isinstance(m, AuthenticationSASL))
            c.send(b"p" + struct.pack("!i", 64 * 1024 * 1024 + 4))
            clients.append(c)
        for c in clients:
            err = yield self.fatal(c)
            self.assertEqual(err.sqlstate, "54000")
            self.assertEqual(err.message, "frontend message type b'p' of 67108864 bytes exceeds the limit of "
                                          f"{session_mod.MAX_SASL_MESSAGE} bytes")
        yield eventually(lambda: self.status()["connections"] == 0 and self.status()["unauthenticated"] == 0)

    @defer.inlineCallbacks
    def test_md5_allows_postgres_password_packet_size_only(self):
        self.e.publisher.auth_method = "md5"
        c = yield self.raw()
        c.send(STARTUP)
        yield c.until(lambda m: not isinstance(m, SSLResponse))
        c.send(b"p" + struct.pack("!i", session_mod.MAX_PASSWORD_MESSAGE + 5))
        err = yield self.fatal(c)
        self.assertEqual(err.sqlstate, "54000")
        self.assertIn(f"exceeds the limit of {session_mod.MAX_PASSWORD_MESSAGE} bytes", err.message)

    @defer.inlineCallbacks
    def test_startup_packet_cap(self):
        c = yield self.raw()
        c.send(struct.pack("!i", 10001))
        err = yield self.fatal(c)
        self.assertEqual((err.sqlstate, err.message), ("08P01", "invalid startup packet length 10001 (allowed 8..10000)"))

    @defer.inlineCallbacks
    def test_after_login_larger_messages_are_fine_up_to_the_cap(self):
        c = yield self.login()
        # 100 kB is far above the pre-login cap: answered (an unknown query), connection lives.
        msgs = yield c.query("SELECT " + "1" * 100_000)
        err = [m for m in msgs if isinstance(m, ErrorResponse)][0]
        self.assertEqual(err.severity, "ERROR")
        self.assertEqual(msgs[-1], ReadyForQuery("I"))
        c.send(b"Q" + struct.pack("!i", session_mod.MAX_MESSAGE_SIZE + 5))
        err = yield self.fatal(c)
        self.assertEqual(err.sqlstate, "54000")
        self.assertIn(f"exceeds the limit of {session_mod.MAX_MESSAGE_SIZE} bytes", err.message)


class LoginDeadline(Base):
    def make_kw(self):
        self.clock = task.Clock()
        return {"clock": self.clock, "auth_timeout": 60.0}

    @defer.inlineCallbacks
    def test_slow_and_silent_connections_are_closed_at_the_deadline(self):
        silent = yield self.raw()
        slow = yield self.raw()
        slow.send(STARTUP)
        yield slow.until(lambda m: isinstance(m, AuthenticationSASL))
        yield eventually(lambda: self.status()["unauthenticated"] == 2)
        self.clock.advance(59.9)
        self.assertFalse(silent.is_closed or slow.is_closed)
        self.assertEqual(self.status()["auth_timeouts"], 0)
        self.clock.advance(0.2)
        for c in (silent, slow):
            err = yield self.fatal(c)
            self.assertEqual((err.sqlstate, err.message), ("08006", "canceling authentication due to timeout"))
        self.assertEqual(self.status()["auth_timeouts"], 2)
        self.assertEqual(self.status()["unauthenticated"], 0)
        self.assertTrue(any("no authentication within 60.0 s; closing" in line for line in self.log))

    @defer.inlineCallbacks
    def test_a_logged_in_connection_has_no_deadline(self):
        c = yield self.login()
        self.clock.advance(3600)
        msgs = yield c.query("IDENTIFY_SYSTEM")
        self.assertEqual(msgs[-1], ReadyForQuery("I"))


class WaitingConnections(Base):
    electric_kw = {"max_unauthenticated": 3}

    @defer.inlineCallbacks
    def test_too_many_connections_waiting_to_log_in_are_refused(self):
        waiting = []
        for _ in range(3):
            waiting.append((yield self.raw()))
        yield eventually(lambda: self.status()["unauthenticated"] == 3)
        extra = yield self.raw()
        err = yield self.fatal(extra)
        self.assertEqual(err.sqlstate, "53300")
        self.assertEqual(err.message, "too many connections waiting to log in to Electric's port 5433 (at most 3);"
                                      " try again later")
        self.assertEqual(self.status()["too_many_unauthenticated"], 1)
        # One stranger leaves: a subscriber gets in, and once logged in it no longer counts.
        waiting[0].transport.loseConnection()
        yield eventually(lambda: self.status()["unauthenticated"] == 2)
        c = yield self.login()
        self.assertIsNone(c.error)
        self.assertEqual(self.status()["unauthenticated"], 2)
        another = yield self.login()
        self.assertIsNone(another.error)


class FailedLogins(Base):
    @defer.inlineCallbacks
    def test_failed_logins_are_logged_without_secrets_and_counted(self):
        c = yield self.login(password="wrong-password-123")
        self.assertEqual((c.error.sqlstate, c.error.message),
                         ("28P01", 'password authentication failed for user "postgres_1"'))
        c = yield self.login(user="mallory", password="guess")
        self.assertEqual(c.error.sqlstate, "28P01")
        self.assertEqual(self.status()["failed_logins"], 2)
        lines = [line for line in self.log if "5433 login failed" in line]
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("user 'postgres_1': SCRAM proof does not match (wrong password)", lines[0])
        self.assertIn("user 'mallory'", lines[1])
        text = "\n".join(self.log)
        for secret in ("wrong-password-123", "guess", self.e.password("postgres_1")):
            self.assertNotIn(secret, text)


class OtherConnectorsSlots(Base):
    @defer.inlineCallbacks
    def error_of(self, c, sql):
        msgs = yield c.query(sql)
        self.assertEqual(msgs[-1], ReadyForQuery("I"))  # the connection lives on
        errors = [m for m in msgs if isinstance(m, ErrorResponse)]
        self.assertEqual(len(errors), 1, msgs)
        return errors[0]

    @defer.inlineCallbacks
    def test_another_connectors_slot_is_refused(self):
        e = self.e
        r1 = yield e.append(e.upsert(ITEMS, {"id": "a", "content": "x", "n": "1"}))
        # postgres_2 streams from its own slot and acknowledges r1.
        own = yield self.login("postgres_2")
        own.send(Query(START.format(slot="postgres_2")))
        yield own.until(lambda m: isinstance(m, CopyBothResponse))
        mallory = yield self.login("postgres_1")
        err = yield self.error_of(mallory, START.format(slot="postgres_2"))
        self.assertEqual(err.sqlstate, "42501")
        self.assertEqual(err.message, 'permission denied for replication slot "postgres_2": it is the slot of'
                                      ' connector "postgres_2"; connector "postgres_1" may use only its own slots')
        # ... also when postgres_2 is not streaming, and for creating it.
        own.transport.loseConnection()
        yield eventually(lambda: not self.status()["slots"]["postgres_2"]["streaming"])
        err = yield self.error_of(mallory, START.format(slot="postgres_2"))
        self.assertEqual(err.sqlstate, "42501")
        err = yield self.error_of(mallory, "CREATE_REPLICATION_SLOT \"postgres_2\" LOGICAL pgoutput (SNAPSHOT 'nothing')")
        self.assertEqual(err.sqlstate, "42501")
        # Dropping it answers success (DROP SUBSCRIPTION must not fail) but changes nothing.
        msgs = yield mallory.query("DROP_REPLICATION_SLOT postgres_2 WAIT")
        self.assertIn(CommandComplete("DROP_REPLICATION_SLOT"), msgs)
        self.assertIn("postgres_2", self.status()["slots"])
        self.assertEqual(self.status()["slots"]["postgres_2"]["origin"], "postgres_2")
        self.assertGreaterEqual(self.status()["refused_slots"], 3)
        self.assertTrue(r1.position)

    @defer.inlineCallbacks
    def test_table_sync_slots_belong_to_the_connector_that_made_them(self):
        sync_app = "pg_16397_sync_16385_7712374349014268656"
        worker = yield self.login("postgres_2", app=sync_app)
        yield worker.query("BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ")
        msgs = yield worker.query(f"CREATE_REPLICATION_SLOT \"{sync_app}\" LOGICAL pgoutput (SNAPSHOT 'use')")
        self.assertFalse([m for m in msgs if isinstance(m, ErrorResponse)], msgs)
        yield worker.query("COMMIT")
        mallory = yield self.login("postgres_1")
        err = yield self.error_of(mallory, START.format(slot=sync_app))
        self.assertEqual((err.sqlstate, err.message),
                         ("42501", f'permission denied for replication slot "{sync_app}": it belongs to another connector'))
        # Its owner streams from it.
        worker.send(Query(START.format(slot=sync_app)))
        yield worker.until(lambda m: isinstance(m, CopyBothResponse))

    @defer.inlineCallbacks
    def test_slot_names_are_validated(self):
        c = yield self.login("postgres_1")
        for name in ("Upper", "with-dash", "x" * 64, "a b"):
            err = yield self.error_of(c, START.format(slot=name))
            self.assertEqual(err.sqlstate, "42602", name)
            self.assertIn("is invalid: use lower case letters, digits and _ (at most 63)", err.message)

    @defer.inlineCallbacks
    def test_slot_count_per_connector_is_bounded(self):
        from electric.postgres.publisher.service import MAX_SLOTS_PER_CONNECTOR

        c = yield self.login("postgres_1")
        for i in range(MAX_SLOTS_PER_CONNECTOR):
            msgs = yield c.query(f"CREATE_REPLICATION_SLOT \"s{i}\" LOGICAL pgoutput (SNAPSHOT 'nothing')")
            self.assertFalse([m for m in msgs if isinstance(m, ErrorResponse)], msgs)
        err = yield self.error_of(c, "CREATE_REPLICATION_SLOT \"one_more\" LOGICAL pgoutput (SNAPSHOT 'nothing')")
        self.assertEqual(err.sqlstate, "53400")
        # Another connector is not affected.
        other = yield self.login("postgres_2")
        msgs = yield other.query("CREATE_REPLICATION_SLOT \"mine\" LOGICAL pgoutput (SNAPSHOT 'nothing')")
        self.assertFalse([m for m in msgs if isinstance(m, ErrorResponse)], msgs)


class PlainPort(Base):
    @defer.inlineCallbacks
    def test_ssl_and_gssenc_requests_are_answered_n_without_a_certificate(self):
        c = yield self.raw()
        for request in (GSSENCRequest(), SSLRequest()):
            c.parser.expect_ssl_response()
            c.send(request)
            answer, _ = yield c.until(lambda m: isinstance(m, SSLResponse))
            self.assertEqual(answer, SSLResponse(False))
        self.assertEqual(c.raw, b"NN")
        c.transport.loseConnection()
        logged = yield self.login(ssl=True)
        self.assertIsNone(logged.error)
        self.assertFalse(self.status()["tls"])


class TLSPort(Base):
    def make_kw(self):
        self.ca = TestCA()
        self.addCleanup(self.ca.cleanup)
        files = self.ca.server_files(owner=None)
        return {"tls": TLSFiles(files.cert, files.key)}

    @defer.inlineCallbacks
    def test_login_and_stream_over_tls(self):
        c = yield self.login(tls_ca=self.ca.ca_file)
        self.assertIsNone(c.error)
        self.assertEqual(c.raw[:1], b"S")
        c.send(Query(START.format(slot="postgres_1")))
        yield c.until(lambda m: isinstance(m, CopyBothResponse))
        slot = yield eventually(lambda: self.status()["slots"].get("postgres_1"))
        self.assertTrue(slot["tls"])
        self.assertTrue(self.status()["tls"])

    @defer.inlineCallbacks
    def test_gssenc_is_refused_then_tls_goes_on(self):
        c = yield self.raw()
        c.parser.expect_ssl_response()
        c.send(GSSENCRequest())
        answer, _ = yield c.until(lambda m: isinstance(m, SSLResponse))
        self.assertEqual(answer, SSLResponse(False))
        c.parser.expect_ssl_response()
        c.send(SSLRequest())
        answer, _ = yield c.until(lambda m: isinstance(m, SSLResponse))
        self.assertEqual(answer, SSLResponse(True))

    @defer.inlineCallbacks
    def test_cleartext_login_is_refused(self):
        c = yield self.raw()
        c.send(STARTUP)
        err = yield self.fatal(c)
        self.assertEqual((err.sqlstate, err.message), (
            "28000", "Electric's port 5433 accepts only TLS connections: connect with sslmode=require or verify-full"))

    @defer.inlineCallbacks
    def test_cleartext_after_the_ssl_request_is_refused(self):
        # An SSLRequest with a StartupMessage behind it in the same packet: the
        # StartupMessage did not come through TLS (CVE-2021-23214).
        def exchange():
            with socket.create_connection(("127.0.0.1", self.e.port), timeout=10) as s:
                s.sendall(SSLRequest().encode() + STARTUP.encode())
                data = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        return data
                    data += chunk

        data = yield threads.deferToThread(exchange)
        self.assertFalse(data.startswith(b"S"))
        self.assertIn(b"received unencrypted data after SSL request", data)

    @defer.inlineCallbacks
    def test_a_client_trusting_another_ca_cannot_connect(self):
        other = TestCA()
        self.addCleanup(other.cleanup)
        try:
            c = yield self.login(tls_ca=other.ca_file)
        except AssertionError:
            return  # closed during the handshake
        self.assertIsNotNone(getattr(c, "error", None))


class IPv6(Base):
    def make_kw(self):
        if not ipv6_available():
            raise unittest.SkipTest("this machine has no IPv6 loopback (::1)")
        return {"listen_host": "::1"}

    @defer.inlineCallbacks
    def test_login_over_ipv6(self):
        self.assertEqual(self.e.publisher.port.getHost().host, "::1")
        c = yield self.login(host="::1")
        self.assertIsNone(c.error)
        self.assertTrue(c.transport.getPeer().host == "::1")
