"""
TLS to Postgres with libpq's rules.

* `TLSSettings`: what the connector URL (and libpq's PGSSL* variables) say,
  validated as libpq validates them;
* `ClientTLS` building its OpenSSL context from files, as libpq's
  initialize_SSL does (no sockets: just files in a temporary home);
* the replication client against real Postgres 15 servers that accept only
  TLS (``hostssl`` rules, certificates from a throwaway CA): every sslmode,
  a wrong CA, a wrong host name, client certificates, and prefer against a
  server without TLS.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import atexit
import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from twisted.internet import defer, reactor
from twisted.trial import unittest

from electric.config import Config, ConfigError
from electric.postgres.source import replication
from electric.postgres.tls import ClientTLS, TLSError, TLSSettings
from tests.pgcluster import DATABASE, PASSWORD, USER, PgCluster, shared_cluster
from tests.polling import wait_until
from tests.test_pg_setup import CLUSTER_KEY
from tests.tls_helpers import TestCA

SLOT = "tls_slot"
PUBLICATION = "tls_pub"

_clusters = {}


def _prepare(pg: PgCluster) -> PgCluster:
    pg.psql(f"CREATE PUBLICATION {PUBLICATION} FOR ALL TABLES")
    pg.psql(f"SELECT pg_create_logical_replication_slot('{SLOT}', 'pgoutput')")
    return pg


def tls_cluster(kind: str = "good"):
    """
    (cluster, CA, server certificate files) accepting only TLS.  ``good``: certificate for localhost,
    127.0.0.1 and ::1; ``otherhost``: certificate only for "otherhost".
    The ``good`` one also has role certuser, which must show a client
    certificate of the CA.
    """
    found = _clusters.get(kind)
    if found is None:
        ca = TestCA()
        atexit.register(ca.cleanup)  # trial does not run tearDownModule
        files = ca.server_files(("otherhost",)) if kind == "otherhost" else ca.server_files()
        pg = _prepare(PgCluster(tls=files, hostssl_only=True).start())
        if kind == "good":
            pg.psql("CREATE ROLE certuser LOGIN REPLICATION PASSWORD 'certpw'")
            hba = os.path.join(pg.datadir, "pg_hba.conf")
            with open(hba) as f:
                rules = f.read()
            with open(hba, "w") as f:
                f.write("hostssl all certuser 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\n" + rules)
            pg.psql("SELECT pg_reload_conf()")
        found = _clusters[kind] = (pg, ca, files)
    return found


def write_crl(ca: TestCA, revoked_cert_file=None) -> str:
    """A CRL signed by `ca`, revoking the certificate in `revoked_cert_file` (none if None); returns its path."""
    issuer = x509.load_pem_x509_certificate(ca.ca.cert_pem.bytes())
    key = serialization.load_pem_private_key(ca.ca.private_key_pem.bytes(), password=None)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer.subject)
               .last_update(now - datetime.timedelta(hours=1)).next_update(now + datetime.timedelta(days=1)))
    if revoked_cert_file is not None:
        with open(revoked_cert_file, "rb") as f:
            serial = x509.load_pem_x509_certificate(f.read()).serial_number
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
    crl = builder.sign(key, hashes.SHA256())
    path = os.path.join(ca.dir, f"crl{len(os.listdir(ca.dir))}.pem")
    with open(path, "wb") as f:
        f.write(crl.public_bytes(serialization.Encoding.PEM))
    return path


def tearDownModule():
    for pg, ca, _files in _clusters.values():
        pg.destroy()
        ca.cleanup()
    _clusters.clear()


class Consumer:
    def __init__(self):
        self.client = None

    def stream_started(self, client):
        self.client = client

    def xlog_data(self, wal_start, wal_end, data):
        pass

    def keepalive(self, wal_end):
        return 0


class SettingsTests(unittest.TestCase):
    def test_defaults_are_libpqs(self):
        s = TLSSettings.from_params({})
        self.assertEqual((s.mode, s.sslmode, s.rootcert, s.cert, s.key, s.crl), ("prefer", None, None, None, None, None))
        self.assertEqual(s.libpq_params(), [])
        self.assertEqual(s.attempts, (True, False))
        self.assertFalse(s.required)

    def test_given_parameters(self):
        s = TLSSettings.from_params({"sslmode": "verify-full", "sslrootcert": "/ca.pem", "sslcert": "/c.crt",
                                     "sslkey": "/c.key", "sslcrl": "/r.crl", "sslpassword": "kpw"})
        self.assertEqual(s.libpq_params(), [("sslmode", "verify-full"), ("sslrootcert", "/ca.pem"),
                                            ("sslcert", "/c.crt"), ("sslkey", "/c.key"), ("sslcrl", "/r.crl"),
                                            ("sslpassword", "kpw")])
        self.assertTrue(s.required)
        self.assertNotIn("kpw", repr(s))

    def test_bad_mode(self):
        with self.assertRaises(ValueError) as cm:
            TLSSettings.from_params({"sslmode": "verify_full"})
        self.assertEqual(str(cm.exception), "sslmode='verify_full' is not one of disable, allow, prefer, require, "
                                            "verify-ca, verify-full")

    def test_system_roots_mean_verify_full(self):
        self.assertEqual(TLSSettings.from_params({"sslrootcert": "system"}).mode, "verify-full")
        with self.assertRaises(ValueError) as cm:
            TLSSettings.from_params({"sslrootcert": "system", "sslmode": "require"})
        self.assertEqual(str(cm.exception),
                         "sslmode='require' may not be used with sslrootcert=system (use verify-full)")

    def test_environment_fills_in_what_the_url_leaves_out(self):
        env = {"PGSSLMODE": "verify-ca", "PGSSLROOTCERT": "/env-ca.pem", "PGSSLCERT": "/env.crt"}
        s = TLSSettings.from_params({"sslcert": "/url.crt"}, env)
        self.assertEqual((s.mode, s.rootcert, s.cert), ("verify-ca", "/env-ca.pem", "/url.crt"))

    def test_default_files_are_under_the_home_directory(self):
        f = TLSSettings().files("/home/e")
        self.assertEqual((f.rootcert, f.crl, f.cert, f.key), (
            "/home/e/.postgresql/root.crt", "/home/e/.postgresql/root.crl",
            "/home/e/.postgresql/postgresql.crt", "/home/e/.postgresql/postgresql.key"))
        self.assertEqual(TLSSettings(rootcert="/ca.pem").files("/home/e").rootcert, "/ca.pem")

    def test_config_validates_and_passes_everything_to_libpq(self):
        config = Config.from_environ({"CONNECTORS": "a=postgresql://u:p@h/d?sslmode=verify-full&sslrootcert=/ca.pem"
                                                    "&sslpassword=kp%40ss"})
        c = config.connectors[0]
        self.assertEqual((c.tls.mode, c.tls.rootcert, c.tls.password), ("verify-full", "/ca.pem", "kp@ss"))
        self.assertIn("sslmode='verify-full' sslrootcert='/ca.pem' sslpassword='kp@ss'", c.dsn())
        self.assertNotIn("kp@ss", repr(c))
        self.assertNotIn("kp@ss", repr(config))
        with self.assertRaises(ConfigError) as cm:
            Config.from_environ({"CONNECTORS": "a=postgresql://u:p@h/d?sslmode=strict&sslpassword=hush"})
        self.assertEqual(cm.exception.problems, [
            "CONNECTORS: a: sslmode='strict' is not one of disable, allow, prefer, require, verify-ca, verify-full"])
        with self.assertRaises(ConfigError) as cm:
            Config.from_environ({"CONNECTORS": "a=postgresql://u:p@h:x/d?sslpassword=hush"})
        self.assertNotIn("hush", str(cm.exception))
        self.assertIn("sslpassword=***", str(cm.exception))


class ContextTests(unittest.TestCase):
    """ClientTLS reads its files like libpq, and says which one is wrong."""

    def setUp(self):
        self.home = tempfile.mkdtemp(prefix="etlshome")
        self.addCleanup(shutil.rmtree, self.home, True)
        self.dot = os.path.join(self.home, ".postgresql")
        os.mkdir(self.dot)
        self.ca = TestCA()
        self.addCleanup(self.ca.cleanup)

    def build(self, host="db.example", **kw):
        return ClientTLS(TLSSettings(**kw), host, home=self.home)

    def client_files(self):
        files = self.ca.client_files()
        return files.cert, files.key

    def test_verify_modes_need_a_root_certificate(self):
        for mode in ("verify-ca", "verify-full"):
            with self.assertRaises(TLSError) as cm:
                self.build(sslmode=mode)
            self.assertEqual(str(cm.exception), f'root certificate file "{self.dot}/root.crt" does not exist: provide '
                             "the file (sslrootcert=...), use the system's trusted roots with sslrootcert=system, or "
                             "change sslmode to disable server certificate verification")

    def test_chain_checked_when_a_root_certificate_exists(self):
        for mode in ("prefer", "require", "verify-ca", "verify-full"):
            self.assertTrue(self.build(sslmode=mode, rootcert=self.ca.ca_file).verify_chain, mode)
        # libpq's rule: the default root.crt, once present, makes require check the chain.
        self.assertFalse(self.build(sslmode="require").verify_chain)
        shutil.copy(self.ca.ca_file, os.path.join(self.dot, "root.crt"))
        self.assertTrue(self.build(sslmode="require").verify_chain)
        self.assertTrue(self.build(sslmode="prefer").verify_chain)

    def test_system_roots(self):
        self.assertTrue(self.build(sslmode="verify-full", rootcert="system").verify_chain)

    def test_unreadable_root_certificate(self):
        bad = os.path.join(self.home, "bad.pem")
        with open(bad, "w") as f:
            f.write("not a certificate\n")
        with self.assertRaises(TLSError) as cm:
            self.build(sslmode="verify-ca", rootcert=bad)
        self.assertTrue(str(cm.exception).startswith(f'could not read root certificate file "{bad}": '),
                        str(cm.exception))

    def test_a_missing_client_certificate_is_no_client_certificate(self):
        tls = self.build(sslmode="require", cert=os.path.join(self.home, "none.crt"))
        self.assertFalse(tls.verify_chain)

    def test_client_certificate_and_key(self):
        cert, key = self.client_files()
        self.build(sslmode="require", cert=cert, key=key)
        # The default files are found too.
        shutil.copy(cert, os.path.join(self.dot, "postgresql.crt"))
        shutil.copy(key, os.path.join(self.dot, "postgresql.key"))
        os.chmod(os.path.join(self.dot, "postgresql.key"), 0o600)
        self.build(sslmode="require")

    def test_certificate_without_key(self):
        cert, _key = self.client_files()
        with self.assertRaises(TLSError) as cm:
            self.build(sslmode="require", cert=cert)
        self.assertEqual(str(cm.exception), f'certificate present, but not private key file "{self.dot}/postgresql.key"')

    def test_key_readable_by_others_is_refused(self):
        cert, key = self.client_files()
        os.chmod(key, 0o640)
        with self.assertRaises(TLSError) as cm:
            self.build(sslmode="require", cert=cert, key=key)
        self.assertEqual(str(cm.exception), f'private key file "{key}" has group or world access; file must have '
                         "permissions u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r "
                         "(0640) or less if owned by root")

    def test_key_that_does_not_match(self):
        cert, _ = self.client_files()
        _, other_key = self.client_files()
        with self.assertRaises(TLSError) as cm:
            self.build(sslmode="require", cert=cert, key=other_key)
        self.assertTrue(str(cm.exception).startswith(f'certificate does not match private key file "{other_key}"'),
                        str(cm.exception))

    def test_encrypted_key_needs_sslpassword(self):
        cert, key = self.client_files()
        with open(key, "rb") as f:
            plain = serialization.load_pem_private_key(f.read(), password=None)
        with open(key, "wb") as f:
            f.write(plain.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.BestAvailableEncryption(b"key pass")))
        with self.assertRaises(TLSError) as cm:
            self.build(sslmode="require", cert=cert, key=key)
        self.assertEqual(str(cm.exception), f'private key file "{key}" is encrypted: give its passphrase as sslpassword')
        with self.assertRaises(TLSError) as cm:
            self.build(sslmode="require", cert=cert, key=key, password="wrong")
        self.assertEqual(str(cm.exception), f'could not decrypt private key file "{key}": wrong sslpassword')
        self.build(sslmode="require", cert=cert, key=key, password="key pass")

    def test_garbage_key(self):
        cert, key = self.client_files()
        with open(key, "w") as f:
            f.write("junk")
        with self.assertRaises(TLSError) as cm:
            self.build(sslmode="require", cert=cert, key=key)
        self.assertEqual(str(cm.exception), f'could not load private key file "{key}": not a PEM or DER private key')


class StreamTLSTests(unittest.TestCase):
    """The replication client against servers that accept only TLS."""

    @defer.inlineCallbacks
    def connect(self, pg, host="127.0.0.1", user=USER, password=PASSWORD, **tls):
        client = replication.ReplicationClient(user, password, DATABASE, SLOT, PUBLICATION, Consumer(),
                                               label="tls_test", tls=TLSSettings(**tls))
        client = yield replication.connect(reactor, host, pg.port, client, timeout=5)
        self.addCleanup(self.release, pg, client)
        return client

    @defer.inlineCallbacks
    def release(self, pg, client):
        client.close()
        yield client.done
        yield wait_until(lambda: pg.psql(
            f"SELECT active FROM pg_replication_slots WHERE slot_name = '{SLOT}'").strip() == "f", what="slot free")

    @defer.inlineCallbacks
    def refused(self, pg, **kw):
        with self.assertRaises(replication.ReplicationError) as cm:
            yield self.connect(pg, **kw)
        return str(cm.exception)

    def server_ssl(self, pg):
        """What the server says about our walsender's connection: (ssl, client certificate's DN)."""
        return pg.psql("SELECT s.ssl, coalesce(s.client_dn, '') FROM pg_stat_ssl s JOIN pg_stat_activity a "
                       "USING (pid) WHERE a.application_name = 'electric_tls_test'").strip()

    @defer.inlineCallbacks
    def test_verify_full(self):
        pg, ca, _ = tls_cluster()
        client = yield self.connect(pg, sslmode="verify-full", rootcert=ca.ca_file)
        self.assertEqual((client.state, client.encrypted), ("streaming", True))
        self.assertEqual(self.server_ssl(pg), "t|")

    @defer.inlineCallbacks
    def test_weaker_modes_use_tls_too(self):
        pg, ca, _ = tls_cluster()
        for tls in ({"sslmode": "verify-ca", "rootcert": ca.ca_file}, {"sslmode": "require"},
                    {"sslmode": "prefer"}, {"sslmode": "allow"}, {}):
            client = yield self.connect(pg, **tls)
            self.assertEqual((client.state, client.encrypted), ("streaming", True), tls)
            self.assertEqual(self.server_ssl(pg), "t|", tls)
            yield self.release(pg, client)

    @defer.inlineCallbacks
    def test_wrong_ca_is_refused(self):
        pg, _ca, _ = tls_cluster()
        other = TestCA()
        self.addCleanup(other.cleanup)
        for mode in ("verify-full", "verify-ca", "require"):
            text = yield self.refused(pg, sslmode=mode, rootcert=other.ca_file)
            self.assertTrue(text.startswith("TLS handshake failed: certificate verify failed: "), text)
            self.assertTrue(text.endswith(f"(sslmode={mode})"), text)

    @defer.inlineCallbacks
    def test_wrong_host_name_is_refused_only_by_verify_full(self):
        pg, ca, _ = tls_cluster("otherhost")
        text = yield self.refused(pg, sslmode="verify-full", rootcert=ca.ca_file)
        self.assertEqual(text, 'TLS handshake failed: server certificate for "otherhost" does not match host name '
                               '"127.0.0.1" (sslmode=verify-full)')
        client = yield self.connect(pg, sslmode="verify-ca", rootcert=ca.ca_file)
        self.assertEqual((client.state, client.encrypted), ("streaming", True))

    @defer.inlineCallbacks
    def test_host_name_is_checked_for_names_too(self):
        pg, ca, _ = tls_cluster()
        client = yield self.connect(pg, host="localhost", sslmode="verify-full", rootcert=ca.ca_file)
        self.assertTrue(client.encrypted)
        pg2, ca2, _ = tls_cluster("otherhost")
        text = yield self.refused(pg2, host="localhost", sslmode="verify-full", rootcert=ca2.ca_file)
        self.assertEqual(text, 'TLS handshake failed: server certificate for "otherhost" does not match host name '
                               '"localhost" (sslmode=verify-full)')

    @defer.inlineCallbacks
    def test_plain_connection_is_refused_by_a_hostssl_server(self):
        pg, _ca, _ = tls_cluster()
        text = yield self.refused(pg, sslmode="disable")
        self.assertEqual(text, 'FATAL 28000: no pg_hba.conf entry for host "127.0.0.1", user "electric", '
                               'database "electric", no encryption (sslmode=disable)')

    @defer.inlineCallbacks
    def test_prefer_falls_back_to_plain_after_a_failed_handshake(self):
        # A root certificate makes prefer check the chain; a wrong one fails
        # the handshake, and prefer then tries without TLS, which this server refuses.
        pg, _ca, _ = tls_cluster()
        other = TestCA()
        self.addCleanup(other.cleanup)
        text = yield self.refused(pg, sslmode="prefer", rootcert=other.ca_file)
        self.assertTrue(text.startswith("TLS handshake failed: certificate verify failed: "), text)
        self.assertTrue(text.endswith('; then without TLS: FATAL 28000: no pg_hba.conf entry for host "127.0.0.1", '
                                      'user "electric", database "electric", no encryption (sslmode=prefer)'), text)

    @defer.inlineCallbacks
    def test_client_certificate(self):
        pg, ca, _ = tls_cluster()
        files = ca.client_files("certuser")
        client = yield self.connect(pg, user="certuser", password="certpw", sslmode="verify-full",
                                    rootcert=ca.ca_file, cert=files.cert, key=files.key)
        self.assertTrue(client.encrypted)
        self.assertTrue(self.server_ssl(pg).startswith("t|"), self.server_ssl(pg))
        yield self.release(pg, client)
        text = yield self.refused(pg, user="certuser", password="certpw", sslmode="verify-full", rootcert=ca.ca_file)
        self.assertEqual(text, "FATAL 28000: connection requires a valid client certificate (sslmode=verify-full)")

    @defer.inlineCallbacks
    def test_revocation_list(self):
        pg, ca, files = tls_cluster()
        client = yield self.connect(pg, sslmode="verify-full", rootcert=ca.ca_file, crl=write_crl(ca))
        self.assertTrue(client.encrypted)
        yield self.release(pg, client)
        text = yield self.refused(pg, sslmode="verify-full", rootcert=ca.ca_file, crl=write_crl(ca, files.cert))
        self.assertTrue(text.startswith("TLS handshake failed: certificate verify failed: certificate revoked "
                                        "(depth 0"), text)

    @defer.inlineCallbacks
    def test_missing_root_certificate_fails_before_the_handshake(self):
        pg, _ca, _ = tls_cluster()
        text = yield self.refused(pg, sslmode="verify-ca", rootcert="/nonexistent/ca.pem")
        self.assertTrue(text.startswith('cannot set up TLS: root certificate file "/nonexistent/ca.pem" does not '
                                        "exist"), text)

    @defer.inlineCallbacks
    def test_prefer_without_tls_on_the_server(self):
        pg = _prepare_plain()
        for tls in ({"sslmode": "prefer"}, {}, {"sslmode": "allow"}, {"sslmode": "disable"}):
            client = yield self.connect(pg, **tls)
            self.assertEqual((client.state, client.encrypted), ("streaming", False), tls)
            yield self.release(pg, client)
        text = yield self.refused(pg, sslmode="require")
        self.assertEqual(text, "server does not support TLS, but TLS was required (sslmode=require)")


def _prepare_plain() -> PgCluster:
    pg = shared_cluster(CLUSTER_KEY)
    if pg.psql(f"SELECT 1 FROM pg_replication_slots WHERE slot_name = '{SLOT}'").strip() != "1":
        _prepare(pg)
    return pg
