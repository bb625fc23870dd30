"""
Password authentication: client and server against each other, the RFC 7677
SCRAM vector, and the client against a real PG 15 (scram, md5, cleartext).

`BlockingPgConnection` is a deliberately tiny synchronous client made of the
sans-IO codecs and a plain socket; the pgoutput tests reuse it to read a
real replication stream.  Tests run it in a thread (`deferToThread`).
"""

import base64
import os
import re
import socket
import subprocess
import time

from twisted.internet import threads
from twisted.trial import unittest

from electric.postgres.protocol.messages import (
    Authentication,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    AuthenticationUnsupported,
    BackendKeyData,
    CommandComplete,
    DataRow,
    EmptyQueryResponse,
    ErrorResponse,
    FieldDescription,
    GSSENCRequest,
    NoticeResponse,
    ParameterStatus,
    PasswordMessage,
    Query,
    ReadyForQuery,
    RowDescription,
    SASLInitialResponse,
    SSLRequest,
    SSLResponse,
    StartupMessage,
    Terminate,
    encode_all,
)
from electric.postgres.protocol.parsers import BackendParser, FrontendParser
from electric.postgres.protocol.auth import (
    AuthenticationError, ClientAuth, ServerAuth, md5_password_hash, md5_response, saslprep,
    scram_secret,
)
from electric.postgres.protocol.cursor import ProtocolError
from tests.pgcluster import PASSWORD, PGBIN, USER, PgCluster
from tests.polling import poll


class QueryError(Exception):
    def __init__(self, error):
        super().__init__(str(error))
        self.error = error


class BlockingPgConnection:
    """Startup + authentication + simple queries over a blocking socket."""

    def __init__(self, port, user=USER, password=PASSWORD, database="electric", replication=None,
                 ssl_request=False, timeout=30.0, options=None):
        self.port = port
        self.user = user
        self.password = password
        self.database = database
        self.replication = replication
        self.ssl_request = ssl_request
        self.timeout = timeout
        self.options = options
        self.parser = BackendParser()
        self.pending = []
        self.parameters = {}
        self.backend_key = None
        self.auth = None
        self.auth_trace = []
        self.sock = None

    # -- plumbing ---------------------------------------------------------------
    def send(self, *msgs):
        self.sock.sendall(b"".join(m.encode() for m in msgs))

    def next(self):
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.pending.extend(self.parser.feed(data))
        return self.pending.pop(0)

    # -- phases -----------------------------------------------------------------
    def connect(self):
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        if self.ssl_request:
            self.sock.sendall(SSLRequest().encode())
            self.parser.expect_ssl_response()
            answer = self.next()
            assert answer == SSLResponse(False), answer
        params = {"user": self.user, "database": self.database, "client_encoding": "UTF8",
                  "application_name": "electric_test"}
        if self.replication:
            params["replication"] = self.replication
        if self.options:
            params["options"] = self.options
        self.sock.sendall(StartupMessage(params).encode())
        self.auth = ClientAuth(self.user, self.password)
        while True:
            msg = self.next()
            if isinstance(msg, (Authentication, ErrorResponse)) and not self.auth.done:
                self.auth_trace.append(type(msg).__name__)
                replies = self.auth.receive(msg)
                if replies:
                    self.send(*replies)
            elif isinstance(msg, ErrorResponse):
                raise QueryError(msg)
            elif isinstance(msg, ParameterStatus):
                self.parameters[msg.name] = msg.value
            elif isinstance(msg, BackendKeyData):
                self.backend_key = msg
            elif isinstance(msg, ReadyForQuery):
                return self
            elif isinstance(msg, NoticeResponse):
                continue
            else:
                raise AssertionError(f"unexpected message during startup: {msg!r}")

    def query(self, sql):
        """Returns (RowDescription or None, [DataRow...], tag); raises QueryError."""
        self.send(Query(sql))
        desc, rows, tag, error = None, [], None, None
        while True:
            msg = self.next()
            if isinstance(msg, RowDescription):
                desc = msg
            elif isinstance(msg, DataRow):
                rows.append(msg)
            elif isinstance(msg, CommandComplete):
                tag = msg.tag
            elif isinstance(msg, ErrorResponse):
                error = msg
            elif isinstance(msg, ReadyForQuery):
                if error is not None:
                    raise QueryError(error)
                return desc, rows, tag
            elif isinstance(msg, (NoticeResponse, ParameterStatus, EmptyQueryResponse)):
                continue
            else:
                return desc, rows, tag, msg  # e.g. CopyBothResponse: caller takes over

    def close(self):
        if self.sock is not None:
            try:
                self.send(Terminate())
            except OSError:
                pass
            self.sock.close()
            self.sock = None


# --------------------------------------------------------------------------
# Pure: client against server

def run_exchange(client, server):
    """Drive the two state machines against each other through bytes."""
    bparser, fparser = BackendParser(), FrontendParser()
    fparser.in_startup = False
    to_client = b"".join(m.encode() for m in server.start())
    if server.done:
        to_client += AuthenticationOk().encode()
    while True:
        replies = []
        for msg in bparser.feed(to_client):
            replies += client.receive(msg)
        if client.done:
            return
        to_server = b"".join(m.encode() for m in replies)
        to_client = b""
        for msg in fparser.feed(to_server):
            out = server.receive(msg)
            to_client += b"".join(m.encode() for m in out)
            if server.done:
                to_client += AuthenticationOk().encode()
            if server.failed:
                to_client += server.error_response().encode()
        if not to_client:
            raise AssertionError("exchange stalled")


class ClientServerTests(unittest.TestCase):
    def test_every_method_succeeds_with_the_right_password(self):
        for method in ("trust", "password", "md5", "scram-sha-256"):
            client, server = ClientAuth("electric", "s3cret"), ServerAuth("electric", "s3cret", method)
            run_exchange(client, server)
            self.assertTrue(server.done and client.done, method)
            self.assertFalse(server.failed)

    def test_wrong_password_fails_with_28P01(self):
        for method in ("password", "md5", "scram-sha-256"):
            client, server = ClientAuth("electric", "wrong"), ServerAuth("electric", "s3cret", method)
            with self.assertRaises(AuthenticationError) as cm:
                run_exchange(client, server)
            self.assertTrue(server.failed, method)
            self.assertFalse(server.done)
            self.assertIn("does not match", server.failure_reason)
            self.assertEqual(cm.exception.sqlstate, "28P01")
            self.assertIn('password authentication failed for user "electric"', str(cm.exception))
            err = server.error_response()
            self.assertEqual((err.severity, err.sqlstate), ("FATAL", "28P01"))

    def test_unknown_user_looks_like_a_normal_exchange_then_fails(self):
        server = ServerAuth("ghost", None, "scram-sha-256")
        client = ClientAuth("ghost", "anything")
        with self.assertRaises(AuthenticationError):
            run_exchange(client, server)
        self.assertTrue(server.failed)
        self.assertIn('"ghost" has no password', server.failure_reason)
        # Same salt every time for the same unknown name (no oracle by salt changes).
        first = []
        for _ in range(2):
            s = ServerAuth("ghost", None)
            s.start()
            out = s.receive(PasswordMessage(SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=abc").encode()[5:]))
            first.append(out[0].data.split(b",s=")[1])
        self.assertEqual(first[0], first[1])
        for method in ("password", "md5"):
            s = ServerAuth("ghost", None, method)
            s.start()
            s.receive(PasswordMessage.password("x"))
            self.assertTrue(s.failed)

    def test_stored_secrets(self):
        secret = scram_secret("s3cret")
        self.assertTrue(secret.startswith("SCRAM-SHA-256$4096:"))
        for method in ("scram-sha-256", "password", "md5"):  # md5 line + SCRAM secret runs SCRAM
            server = ServerAuth("electric", secret, method)
            run_exchange(ClientAuth("electric", "s3cret"), server)
            self.assertTrue(server.done, method)
        self.assertEqual(ServerAuth("electric", secret, "md5").method, "scram-sha-256")
        md5secret = md5_password_hash("electric", "s3cret")
        for method in ("md5", "password"):
            server = ServerAuth("electric", md5secret, method)
            run_exchange(ClientAuth("electric", "s3cret"), server)
            self.assertTrue(server.done, method)
        # SCRAM cannot use an md5 secret: full exchange, then failure (as Postgres).
        server = ServerAuth("electric", md5secret, "scram-sha-256")
        with self.assertRaises(AuthenticationError):
            run_exchange(ClientAuth("electric", "s3cret"), server)
        self.assertIn("md5 secret", server.failure_reason)

    def test_md5_response_matches_the_trace_formula(self):
        import hashlib
        salt = bytes.fromhex("2b1d65b0")
        inner = hashlib.md5(b"passwordelectric").hexdigest()
        self.assertEqual(md5_response("electric", "password", salt),
                         "md5" + hashlib.md5(inner.encode() + salt).hexdigest())
        reply, = ClientAuth("electric", "password").receive(AuthenticationMD5Password(salt))
        self.assertEqual(len(reply.encode()), 41)  # 'p' + len=40, as in the trace

    def test_scram_initial_response_shape(self):
        client = ClientAuth("electric", "pw", client_nonce="NONCE")
        reply, = client.receive(AuthenticationSASL(("SCRAM-SHA-256",)))
        self.assertEqual(reply, SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=NONCE"))

    def test_rfc7677_vector_server_side(self):
        salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
        server = ServerAuth("user", "pencil", salt=salt, server_nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
        self.assertEqual(server.start(), [AuthenticationSASL(("SCRAM-SHA-256",))])
        out = server.receive(PasswordMessage(
            SASLInitialResponse("SCRAM-SHA-256", b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").encode()[5:]))
        self.assertEqual(out, [AuthenticationSASLContinue(
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")])
        out = server.receive(PasswordMessage(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
            b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="))
        self.assertEqual(out, [AuthenticationSASLFinal(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")])
        self.assertTrue(server.done)

    def test_rfc7677_vector_client_side(self):
        client = ClientAuth("user", "pencil", client_nonce="rOprNGfwEbeRWgbNEkqO", scram_user="user")
        first, = client.receive(AuthenticationSASL(("SCRAM-SHA-256",)))
        self.assertEqual(first.data, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
        final, = client.receive(AuthenticationSASLContinue(
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"))
        self.assertEqual(final.data, b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                                     b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
        self.assertEqual(client.receive(AuthenticationSASLFinal(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")), [])
        self.assertEqual(client.receive(AuthenticationOk()), [])
        self.assertTrue(client.done)

    def test_client_rejects_an_impostor_server(self):
        server_first = b"r=NONCEsrv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        client = ClientAuth("electric", "pw", client_nonce="NONCE")
        client.receive(AuthenticationSASL(("SCRAM-SHA-256",)))
        client.receive(AuthenticationSASLContinue(server_first))
        with self.assertRaises(AuthenticationError) as cm:
            client.receive(AuthenticationSASLFinal(b"v=" + base64.b64encode(b"x" * 32)))
        self.assertIn("server signature is wrong", str(cm.exception))
        # A server that skips the proof and says Ok is refused as well.
        client = ClientAuth("electric", "pw", client_nonce="NONCE")
        client.receive(AuthenticationSASL(("SCRAM-SHA-256",)))
        client.receive(AuthenticationSASLContinue(server_first))
        with self.assertRaises(AuthenticationError) as cm:
            client.receive(AuthenticationOk())
        self.assertIn("before completing the SCRAM exchange", str(cm.exception))

    def test_client_errors(self):
        with self.assertRaises(AuthenticationError) as cm:
            ClientAuth("electric", None).receive(AuthenticationMD5Password(b"abcd"))
        self.assertIn("no password was supplied", str(cm.exception))
        with self.assertRaises(AuthenticationError) as cm:
            ClientAuth("electric", "pw").receive(AuthenticationUnsupported(7))
        self.assertIn("unsupported authentication method GSSAPI", str(cm.exception))
        with self.assertRaises(AuthenticationError) as cm:
            ClientAuth("electric", "pw").receive(AuthenticationSASL(("SCRAM-SHA-256-PLUS",)))
        self.assertIn("no supported SASL mechanism", str(cm.exception))
        for bad in (b"garbage", b"r=OTHER,s=AAAA,i=4096", b"r=NONCEx,s=!!,i=4096",
                    b"r=NONCEx,s=AAAA,i=zero", b"r=NONCE,s=AAAA,i=4096", b"r=NONCEx,s=AAAA,i=0"):
            client = ClientAuth("electric", "pw", client_nonce="NONCE")
            client.receive(AuthenticationSASL(("SCRAM-SHA-256",)))
            with self.assertRaises(AuthenticationError, msg=bad):
                client.receive(AuthenticationSASLContinue(bad))
        client = ClientAuth("electric", "pw", client_nonce="NONCE")
        client.receive(AuthenticationSASL(("SCRAM-SHA-256",)))
        client.receive(AuthenticationSASLContinue(b"r=NONCEx,s=AAAA,i=16"))
        with self.assertRaises(AuthenticationError) as cm:
            client.receive(AuthenticationSASLFinal(b"e=invalid-proof"))
        self.assertIn("invalid-proof", str(cm.exception))
        with self.assertRaises(AuthenticationError):
            ClientAuth("electric", "pw").receive(AuthenticationSASLFinal(b"v=AAAA"))

    def test_server_rejects_malformed_scram(self):
        def started():
            s = ServerAuth("electric", "pw")
            s.start()
            return s

        def initial(data, mech="SCRAM-SHA-256"):
            return PasswordMessage(SASLInitialResponse(mech, data).encode()[5:])

        cases = [
            (initial(b"n,,n=,r=abc", "PLAIN"), "invalid SASL authentication mechanism"),
            (initial(None), "empty client-first-message"),
            (initial(b"garbage"), "malformed SCRAM message"),
            (initial(b"p=tls-server-end-point,,n=,r=abc"), "channel binding is not supported"),
            (initial(b"x,,n=,r=abc"), "unexpected channel-binding flag"),
            (initial(b"n,a=someone,n=,r=abc"), "authorization identity"),
            (initial(b"n,,m=ext,n=,r=abc"), "unsupported SCRAM extension"),
            (initial(b"n,,n=,r=a b"), "not printable"),
            (initial(b"n,,\xff"), "not UTF-8"),
            (PasswordMessage(b"SCRAM-SHA-256\0\x00\x00\x00\x09ab"), "SASLInitialResponse"),
        ]
        for msg, text in cases:
            with self.assertRaises(ProtocolError, msg=text) as cm:
                started().receive(msg)
            self.assertIn(text, str(cm.exception))
            self.assertEqual(cm.exception.sqlstate, "08P01")

        def at_final():
            s = started()
            s.receive(initial(b"n,,n=,r=abc"))
            return s

        nonce = at_final()._nonce
        finals = [
            (b"c=biws", "bad client-final-message"),
            (b"c=eSws,r=" + nonce.encode() + b",p=" + base64.b64encode(b"x" * 32), "channel binding check failed"),
            (b"c=biws,r=wrong,p=" + base64.b64encode(b"x" * 32), "nonce does not match"),
            (b"c=biws,r=X,p=short", "invalid base64"),
            (b"\xff", "not ASCII"),
        ]
        for data, text in finals:
            s = at_final()
            if b"r=X" in data or b"r=" + nonce.encode() in data:
                data = data.replace(b"r=X", b"r=" + s._nonce.encode()).replace(
                    b"r=" + nonce.encode(), b"r=" + s._nonce.encode())
            with self.assertRaises(ProtocolError, msg=text) as cm:
                s.receive(PasswordMessage(data))
            self.assertIn(text, str(cm.exception))
        s = at_final()
        data = b"c=biws,r=" + s._nonce.encode() + b",p=" + base64.b64encode(b"x" * 16)
        with self.assertRaises(ProtocolError) as cm:
            s.receive(PasswordMessage(data))
        self.assertIn("wrong length", str(cm.exception))
        s = at_final()
        data = b"c=biws,r=" + s._nonce.encode() + b",p=" + base64.b64encode(b"x" * 32)
        self.assertEqual(s.receive(PasswordMessage(data)), [])
        self.assertTrue(s.failed)
        with self.assertRaises(ProtocolError) as cm:
            s.receive(PasswordMessage(data))
        self.assertIn("authentication is finished", str(cm.exception))

    def test_server_state_errors(self):
        s = ServerAuth("electric", "pw", "password")
        with self.assertRaises(ProtocolError):
            s.receive(PasswordMessage.password("pw"))  # before start()
        s.start()
        self.assertRaises(ProtocolError, s.start)
        self.assertRaises(ProtocolError, s.receive, Query("SELECT 1"))
        with self.assertRaises(ProtocolError):
            s.receive(PasswordMessage(b"no terminator"))
        self.assertRaises(ValueError, ServerAuth, "u", "p", "kerberos")

    def test_saslprep(self):
        self.assertEqual(saslprep("password"), b"password")
        self.assertEqual(saslprep("I\u00adX"), b"IX")           # soft hyphen mapped to nothing
        self.assertEqual(saslprep("a\u00a0b"), b"a b")          # non-ASCII space -> space
        self.assertEqual(saslprep("\u2168"), b"IX")             # NFKC
        self.assertEqual(saslprep("a\u0007\u00e9"), "a\u0007\u00e9".encode())  # prohibited: raw
        self.assertEqual(saslprep("\u0627\u0031"), "\u0627\u0031".encode())  # bidi rule broken: raw
        for pw in ("p\u00e4ssw\u00f6rd", "\u2168", "a\u00a0b"):
            server = ServerAuth("electric", pw)
            run_exchange(ClientAuth("electric", pw), server)
            self.assertTrue(server.done)


# --------------------------------------------------------------------------
# Real Postgres 15

_clusters = {}


def shared_cluster(key="auth"):
    """
    One cluster per key, started on first use and destroyed at exit by
    tests.pgcluster (trial has no setUpClass).
    """
    if key not in _clusters:
        _clusters[key] = PgCluster().start()
    return _clusters[key]


class RealPostgresTests(unittest.TestCase):
    """The client codec + ClientAuth logging in to a stock PG 15."""

    def setUp(self):
        self.cluster = shared_cluster()

    def local_psql(self, sql):
        """psql over the Unix socket (trust), so it works whatever pg_hba says for TCP."""
        c = self.cluster
        proc = subprocess.run([f"{PGBIN}/psql", "-X", "-q", "-h", c.datadir, "-p", str(c.port), "-U", USER,
                               "-d", "electric", "-tA", "-v", "ON_ERROR_STOP=1", "-c", sql],
                              capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr)
        return proc.stdout.strip()

    def use(self, method, secret):
        """Set the TCP pg_hba method and how the role's password is stored."""
        path = os.path.join(self.cluster.datadir, "pg_hba.conf")
        with open(path) as f:
            text = f.read()
        text = re.sub(r"^(host\s+\S+\s+\S+\s+\S+\s+)\S+\s*$", lambda m: m.group(1) + method, text, flags=re.M)
        with open(path, "w") as f:
            f.write(text)
        self.local_psql(f"SET password_encryption = '{secret}'; ALTER ROLE {USER} PASSWORD '{PASSWORD}'")
        self.local_psql("SELECT pg_reload_conf()")

    def wait_for_method(self, first_request):
        """
        The postmaster re-reads pg_hba.conf asynchronously after a reload: log in
        until the server's first authentication request is the one expected.
        Runs in a thread.
        """
        def asks_as_expected():
            conn = BlockingPgConnection(self.cluster.port)
            try:
                conn.connect()
            except AuthenticationError:
                pass
            finally:
                conn.close()
            return conn.auth_trace[:1] == [first_request]

        poll(asks_as_expected, timeout=30, what=f"the server's first authentication request to be {first_request!r}",
             interval=0.05)

    def login(self, password=PASSWORD, **kw):
        conn = BlockingPgConnection(self.cluster.port, password=password, **kw)
        try:
            conn.connect()
            result = conn.query("SELECT 1")
            return conn, result
        finally:
            conn.close()

    def check_method(self, method, secret, expected_trace):
        self.use(method, secret)

        def run():
            self.wait_for_method(expected_trace[0])
            conn, (desc, rows, tag) = self.login()
            self.assertEqual(conn.auth_trace, expected_trace)
            self.assertEqual(conn.auth.method, None if method == "trust" else method)
            self.assertEqual(desc.names, ["?column?"])
            self.assertEqual(desc.fields[0].type_oid, 23)
            self.assertEqual([r.values for r in rows], [(b"1",)])
            self.assertEqual(tag, "SELECT 1")
            self.assertTrue(conn.parameters["server_version"].startswith("15"))
            self.assertIsNotNone(conn.backend_key)
            if method == "trust":
                return
            bad = BlockingPgConnection(self.cluster.port, password="not-the-password")
            with self.assertRaises(AuthenticationError) as cm:
                bad.connect()
            bad.close()
            self.assertEqual(cm.exception.sqlstate, "28P01")
            self.assertEqual(cm.exception.error.severity, "FATAL")
            self.assertEqual(cm.exception.error.message, f'password authentication failed for user "{USER}"')
        return threads.deferToThread(run)

    def test_scram_sha_256(self):
        return self.check_method("scram-sha-256", "scram-sha-256",
                                 ["AuthenticationSASL", "AuthenticationSASLContinue",
                                  "AuthenticationSASLFinal", "AuthenticationOk"])

    def test_md5(self):
        return self.check_method("md5", "md5", ["AuthenticationMD5Password", "AuthenticationOk"])

    def test_cleartext_password(self):
        return self.check_method("password", "scram-sha-256",
                                 ["AuthenticationCleartextPassword", "AuthenticationOk"])

    def test_trust(self):
        return self.check_method("trust", "scram-sha-256", ["AuthenticationOk"])

    def test_ssl_request_refused_then_replication_connection(self):
        self.use("scram-sha-256", "scram-sha-256")

        def run():
            self.wait_for_method("AuthenticationSASL")
            conn = BlockingPgConnection(self.cluster.port, replication="database", ssl_request=True)
            conn.connect()
            try:
                desc, rows, tag = conn.query("IDENTIFY_SYSTEM")
                self.assertEqual(desc.names, ["systemid", "timeline", "xlogpos", "dbname"])
                self.assertEqual(tag, "IDENTIFY_SYSTEM")
                self.assertEqual(rows[0].texts()[3], "electric")
                with self.assertRaises(QueryError) as cm:
                    conn.query("SELEC nonsense")
                self.assertEqual(cm.exception.error.sqlstate, "42601")
                self.assertIn("syntax error", cm.exception.error.message)
                self.assertEqual(conn.query("")[2], None)  # EmptyQueryResponse
            finally:
                conn.close()
        return threads.deferToThread(run)


# --------------------------------------------------------------------------
# ServerAuth against the real libpq client (psql), over a tiny Twisted server.

from twisted.internet import defer, protocol, reactor, utils  # noqa: E402


class _TinyServer(protocol.Protocol):
    """Just enough of a backend for psql: auth, then `SELECT 1`-style answers."""

    def connectionMade(self):
        self.parser = FrontendParser()
        self.auth = None

    def dataReceived(self, data):
        try:
            for msg in self.parser.feed(data):
                self.handle(msg)
        except ProtocolError as e:
            self.fatal(e.sqlstate, e.message)

    def fatal(self, sqlstate, message):
        self.transport.write(ErrorResponse.build("FATAL", sqlstate, message).encode())
        self.transport.loseConnection()

    def handle(self, msg):
        f = self.factory
        if isinstance(msg, (SSLRequest, GSSENCRequest)):
            self.transport.write(SSLResponse(False).encode())
        elif isinstance(msg, StartupMessage):
            self.auth = ServerAuth(msg.user, f.passwords.get(msg.user), f.method)
            self.transport.write(encode_all(self.auth.start()))
            self.after_auth_step([])
        elif isinstance(msg, PasswordMessage):
            self.after_auth_step(self.auth.receive(msg))
        elif isinstance(msg, Query):
            f.queries.append(msg.sql)
            self.transport.write(encode_all([
                RowDescription((FieldDescription.text("?column?", 23),)), DataRow((1,)),
                CommandComplete("SELECT 1"), ReadyForQuery("I")]))
        elif isinstance(msg, Terminate):
            self.transport.loseConnection()

    def after_auth_step(self, replies):
        self.transport.write(encode_all(replies))
        if self.auth.failed:
            self.factory.failures.append(self.auth.failure_reason)
            self.transport.write(self.auth.error_response().encode())
            self.transport.loseConnection()
        elif self.auth.done:
            self.transport.write(encode_all([
                AuthenticationOk(), ParameterStatus("server_version", "15.0"),
                ParameterStatus("server_encoding", "UTF8"), ParameterStatus("client_encoding", "UTF8"),
                ParameterStatus("standard_conforming_strings", "on"), BackendKeyData(1, 2),
                ReadyForQuery("I")]))


class ServerAgainstLibpqTests(unittest.TestCase):
    def setUp(self):
        self.factory = protocol.Factory.forProtocol(_TinyServer)
        self.factory.passwords = {"electric": "s3cret p\u00e4ss"}
        self.factory.queries, self.factory.failures = [], []
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    def psql(self, password, user="electric"):
        env = {"PATH": "/usr/bin:/bin", "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "10"}
        return utils.getProcessOutputAndValue(
            f"{PGBIN}/psql", ["-X", "-h", "127.0.0.1", "-p", str(self.port.getHost().port), "-U", user,
                              "-d", "electric", "-tA", "-c", "SELECT 1"], env=env)

    @defer.inlineCallbacks
    def check(self, method):
        self.factory.method = method
        out, err, code = yield self.psql("s3cret p\u00e4ss")
        self.assertEqual((out.strip(), code), (b"1", 0), err)
        self.assertEqual(self.factory.queries, ["SELECT 1"])
        out, err, code = yield self.psql("wrong")
        self.assertNotEqual(code, 0)
        self.assertIn(b'password authentication failed for user "electric"', err)
        out, err, code = yield self.psql("s3cret p\u00e4ss", user="nobody")
        self.assertIn(b'password authentication failed for user "nobody"', err)
        self.assertEqual(len(self.factory.failures), 2)

    def test_scram_with_libpq(self):
        return self.check("scram-sha-256")

    def test_md5_with_libpq(self):
        return self.check("md5")

    def test_cleartext_with_libpq(self):
        return self.check("password")
