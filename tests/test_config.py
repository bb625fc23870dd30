"""Every rule of Config.from_environ: defaults, each bad value, masking, CONNECTORS parsing."""

import dataclasses

from twisted.trial import unittest

from electric.config import VARIABLES, Config, ConfigError, Connector, mask, parse_connectors
from electric.tls import TLSFiles
from tests.tls_helpers import TestCA

PORT_VARIABLES = (
    "POSTGRES_REPLICATION_PORT",
    "WEBSOCKET_PORT",
    "STATUS_PORT",
    "VAXINE_API_PORT",
    "VAXINE_REPLICATION_PORT",
)
GOOD_KEY = "k" * 32


def problems_of(env):
    """The ConfigError problems for `env` (the test fails if it is accepted)."""
    try:
        Config.from_environ(env)
    except ConfigError as e:
        return e.problems, str(e)
    raise AssertionError(f"{env!r} was accepted")


class DefaultsTests(unittest.TestCase):
    def test_empty_environment_gives_the_seed_defaults(self):
        c = Config.from_environ({})
        self.assertEqual(c.connectors, ())
        self.assertEqual(c.electric_host, "127.0.0.1")
        self.assertEqual(c.postgres_replication_port, 5433)
        self.assertEqual(c.publication, "all_tables")
        self.assertEqual(c.slot, "all_changes")
        self.assertEqual(c.websocket_port, 5133)
        self.assertEqual(c.status_port, 5050)
        self.assertEqual(c.listen_host, "0.0.0.0")
        self.assertEqual(c.data_dir, "./electric_data")
        self.assertEqual(c.offset_storage_file, "./offset_storage_data.dat")
        self.assertEqual(c.migrations_dir, "./migrations")
        self.assertEqual(c.migrations_file_name_suffix, "/postgres.sql")
        self.assertIsNone(c.auth_signing_key)
        self.assertIsNone(c.auth_signing_iss)
        self.assertEqual(c.global_cluster_id, "dev.electric-db")
        self.assertEqual(c.instance_id, "instance-1.region-1.dev.electric-db")
        self.assertEqual(c.regional_id, "region-1.dev.electric-db")
        self.assertIsNone(c.vaxine_host)
        self.assertEqual(c.vaxine_api_port, 8087)
        self.assertEqual(c.vaxine_replication_port, 8088)
        self.assertEqual(c.vaxine_connection_timeout_ms, 5000)
        self.assertTrue(c.embedded_hub)
        self.assertFalse(c.jwt_auth)

    def test_defaults_match_the_documented_table(self):
        c = Config.from_environ({})
        self.assertEqual(str(c.status_port), VARIABLES["STATUS_PORT"][0])
        self.assertEqual(str(c.websocket_port), VARIABLES["WEBSOCKET_PORT"][0])
        self.assertEqual(str(c.postgres_replication_port), VARIABLES["POSTGRES_REPLICATION_PORT"][0])
        self.assertEqual(c.data_dir, VARIABLES["ELECTRIC_DATA_DIR"][0])
        for name, (default, text) in VARIABLES.items():
            self.assertTrue(text, name)

    def test_empty_value_means_unset(self):
        c = Config.from_environ({"STATUS_PORT": "", "SATELLITE_AUTH_SIGNING_KEY": "", "VAXINE_HOST": ""})
        self.assertEqual(c.status_port, 5050)
        self.assertFalse(c.jwt_auth)
        self.assertTrue(c.embedded_hub)

    def test_every_variable_is_read(self):
        ca = TestCA()
        self.addCleanup(ca.cleanup)
        pg_files = ca.server_files(["electric"], owner=None)
        ws_files = ca.server_files(["ws.example"], owner=None)
        env = {
            "CONNECTORS": "pg=postgresql://u:p@db:6000/d",
            "ELECTRIC_HOST": "electric",
            "POSTGRES_REPLICATION_PORT": "6433",
            "POSTGRES_PUBLICATION": "pub",
            "POSTGRES_SLOT": "slot",
            "WEBSOCKET_PORT": "6133",
            "STATUS_PORT": "6050",
            "ELECTRIC_API_TOKEN": "api-token-of-the-test-env",
            "LISTEN_HOST": "127.0.0.1",
            "ELECTRIC_DATA_DIR": "/var/lib/electric",
            "OFFSET_STORAGE_FILE": "/var/lib/offsets.dat",
            "MIGRATIONS_DIR": "/m",
            "MIGRATIONS_FILE_NAME_SUFFIX": "/pg.sql",
            "SATELLITE_AUTH_SIGNING_KEY": GOOD_KEY,
            "SATELLITE_AUTH_SIGNING_ISS": "me",
            "GLOBAL_CLUSTER_ID": "g",
            "ELECTRIC_INSTANCE_ID": "i",
            "ELECTRIC_REGIONAL_ID": "r",
            "VAXINE_HOST": "vaxine",
            "VAXINE_API_PORT": "9087",
            "VAXINE_REPLICATION_PORT": "9088",
            "VAXINE_CONNECTION_TIMEOUT": "1500",
            "POSTGRES_REPLICATION_TLS_CERT_FILE": pg_files.cert,
            "POSTGRES_REPLICATION_TLS_KEY_FILE": pg_files.key,
            "POSTGRES_REPLICATION_SSLROOTCERT": "/etc/postgresql/electric-ca.pem",
            "WEBSOCKET_TLS_CERT_FILE": ws_files.cert,
            "WEBSOCKET_TLS_KEY_FILE": ws_files.key,
            "STATUS_TLS_CERT_FILE": pg_files.cert,
            "STATUS_TLS_KEY_FILE": pg_files.key,
            "LOG_FORMAT": "JSON",
            "LOG_LEVEL": "Warning",
        }
        self.assertEqual(set(env), set(VARIABLES))
        c = Config.from_environ(env)
        self.assertEqual(
            (c.electric_host, c.postgres_replication_port, c.publication, c.slot, c.websocket_port,
             c.status_port, c.listen_host, c.data_dir, c.offset_storage_file, c.migrations_dir,
             c.migrations_file_name_suffix, c.auth_signing_key, c.auth_signing_iss,
             c.global_cluster_id, c.instance_id, c.regional_id, c.vaxine_host, c.vaxine_api_port,
             c.vaxine_replication_port, c.vaxine_connection_timeout_ms),
            ("electric", 6433, "pub", "slot", 6133, 6050, "127.0.0.1", "/var/lib/electric",
             "/var/lib/offsets.dat", "/m", "/pg.sql", GOOD_KEY, "me", "g", "i", "r", "vaxine",
             9087, 9088, 1500),
        )
        self.assertEqual(c.connector("pg").port, 6000)
        self.assertFalse(c.embedded_hub)
        self.assertTrue(c.jwt_auth)
        self.assertEqual(c.api_token, "api-token-of-the-test-env")
        self.assertEqual(c.postgres_replication_tls, TLSFiles(pg_files.cert, pg_files.key))
        self.assertEqual(c.postgres_replication_sslrootcert, "/etc/postgresql/electric-ca.pem")
        self.assertEqual(c.websocket_tls, TLSFiles(ws_files.cert, ws_files.key))
        self.assertEqual(c.status_tls, TLSFiles(pg_files.cert, pg_files.key))
        self.assertEqual((c.log_format, c.log_level), ("json", "warn"))

    def test_config_is_immutable(self):
        c = Config.from_environ({})
        with self.assertRaises(dataclasses.FrozenInstanceError):
            c.status_port = 1
        with self.assertRaises(dataclasses.FrozenInstanceError):
            Config.from_environ({"CONNECTORS": "a=postgresql://u:p@h/d"}).connectors[0].port = 1

    def test_reads_os_environ_when_given_nothing(self):
        import os

        old = os.environ.get("STATUS_PORT")
        os.environ["STATUS_PORT"] = "5999"
        try:
            self.assertEqual(Config.from_environ().status_port, 5999)
        finally:
            if old is None:
                del os.environ["STATUS_PORT"]
            else:
                os.environ["STATUS_PORT"] = old


class NumberTests(unittest.TestCase):
    def test_each_port_variable_rejects_each_bad_value(self):
        for name in PORT_VARIABLES:
            for bad in ("0", "65536", "99999999", "-1", "abc", " 5050", "5_050", "+5050", "5050.0", "\u00b2"):
                problems, text = problems_of({name: bad})
                self.assertEqual(len(problems), 1, (name, bad, problems))
                self.assertIn(name, problems[0])
                self.assertIn(repr(bad), problems[0])
                self.assertIn("expected a port number from 1 to 65535", problems[0])

    def test_port_bounds_are_inclusive(self):
        self.assertEqual(Config.from_environ({"STATUS_PORT": "1"}).status_port, 1)
        self.assertEqual(Config.from_environ({"STATUS_PORT": "65535"}).status_port, 65535)

    def test_connection_timeout_must_be_a_positive_integer(self):
        for bad in ("0", "-5", "soon", "1.5", "1e3"):
            problems, _ = problems_of({"VAXINE_CONNECTION_TIMEOUT": bad})
            self.assertEqual(
                problems, [f"VAXINE_CONNECTION_TIMEOUT={bad!r}: expected a positive integer"]
            )

    def test_listeners_need_distinct_ports(self):
        problems, _ = problems_of({"STATUS_PORT": "7000", "WEBSOCKET_PORT": "7000"})
        self.assertEqual(problems, ["STATUS_PORT and WEBSOCKET_PORT share port 7000: each listener needs its own port"])
        problems, _ = problems_of({"STATUS_PORT": "5433"})
        self.assertIn("STATUS_PORT and POSTGRES_REPLICATION_PORT share port 5433", problems[0])


class NameTests(unittest.TestCase):
    def test_publication_and_slot_must_be_plain_identifiers(self):
        for name in ("POSTGRES_PUBLICATION", "POSTGRES_SLOT"):
            for bad in ("all tables", 'x"; drop', "caf\u00e9", "a-b"):
                problems, _ = problems_of({name: bad})
                self.assertEqual(problems, [f"{name}={bad!r}: expected a name of letters, digits and _"])

    def test_electric_host_must_be_a_host(self):
        for bad in ("my host", "a'b", "a\\b", "\t"):
            problems, _ = problems_of({"ELECTRIC_HOST": bad})
            self.assertEqual(problems, [f"ELECTRIC_HOST={bad!r}: expected a host name or address"])
        self.assertEqual(Config.from_environ({"ELECTRIC_HOST": "host.docker.internal"}).electric_host,
                         "host.docker.internal")


class AuthTests(unittest.TestCase):
    def test_short_signing_key_is_rejected_and_masked(self):
        key = "s3cr3t-but-too-short-31-bytes.."
        self.assertEqual(len(key), 31)
        problems, text = problems_of({"SATELLITE_AUTH_SIGNING_KEY": key})
        self.assertEqual(problems, ["SATELLITE_AUTH_SIGNING_KEY=<31 bytes hidden>: expected at least 32 bytes"])
        self.assertNotIn(key, text)
        self.assertNotIn("s3cr3t", text)

    def test_key_length_counts_bytes_not_characters(self):
        key = "\u00e9" * 16  # 16 characters, 32 bytes in UTF-8
        self.assertTrue(Config.from_environ({"SATELLITE_AUTH_SIGNING_KEY": key}).jwt_auth)
        problems, _ = problems_of({"SATELLITE_AUTH_SIGNING_KEY": "\u00e9" * 15 + "x"})
        self.assertIn("<31 bytes hidden>", problems[0])

    def test_32_byte_key_enables_jwt(self):
        c = Config.from_environ({"SATELLITE_AUTH_SIGNING_KEY": GOOD_KEY})
        self.assertTrue(c.jwt_auth)
        self.assertIsNone(c.auth_signing_iss)
        self.assertNotIn(GOOD_KEY, repr(c))

    def test_issuer_without_key_is_rejected(self):
        problems, _ = problems_of({"SATELLITE_AUTH_SIGNING_ISS": "electric"})
        self.assertEqual(
            problems, ["SATELLITE_AUTH_SIGNING_ISS='electric': an issuer needs SATELLITE_AUTH_SIGNING_KEY too"]
        )

    def test_key_and_issuer(self):
        c = Config.from_environ({"SATELLITE_AUTH_SIGNING_KEY": GOOD_KEY, "SATELLITE_AUTH_SIGNING_ISS": "iss"})
        self.assertEqual((c.auth_signing_key, c.auth_signing_iss), (GOOD_KEY, "iss"))

    def test_mask_shows_only_the_length(self):
        self.assertEqual(mask("abc"), "<3 bytes hidden>")


class ApiTokenTests(unittest.TestCase):
    def test_unset_means_no_token(self):
        self.assertIsNone(Config.from_environ({}).api_token)
        self.assertIsNone(Config.from_environ({"ELECTRIC_API_TOKEN": ""}).api_token)

    def test_token_is_kept_out_of_repr(self):
        token = "x7Kq-2mN_pR8.vT4~wZ9+aB/c="
        c = Config.from_environ({"ELECTRIC_API_TOKEN": token})
        self.assertEqual(c.api_token, token)
        self.assertNotIn(token, repr(c))

    def test_short_or_odd_tokens_are_rejected_and_masked(self):
        for token in ("short-token", "has spaces in it, sixteen+", "quote\"in-a-token-x"):
            problems, text = problems_of({"ELECTRIC_API_TOKEN": token})
            self.assertEqual(len(problems), 1, problems)
            self.assertTrue(problems[0].startswith(f"ELECTRIC_API_TOKEN=<{len(token.encode())} bytes hidden>: "))
            self.assertNotIn(token, text)


class AggregationTests(unittest.TestCase):
    def test_every_problem_is_reported_at_once(self):
        env = {
            "STATUS_PORT": "http",
            "WEBSOCKET_PORT": "70000",
            "VAXINE_CONNECTION_TIMEOUT": "-1",
            "SATELLITE_AUTH_SIGNING_KEY": "short-secret",
            "POSTGRES_SLOT": "bad slot",
            "CONNECTORS": "a=mysql://u:hunter2@h/d;b=postgresql://u:pw@h/d;b=postgresql://u:pw2@h/d",
        }
        problems, text = problems_of(env)
        self.assertEqual(len(problems), 7, problems)
        self.assertTrue(text.startswith("invalid configuration:\n"))
        for name in ("STATUS_PORT", "WEBSOCKET_PORT", "VAXINE_CONNECTION_TIMEOUT",
                     "SATELLITE_AUTH_SIGNING_KEY", "POSTGRES_SLOT", "CONNECTORS: a:"):
            self.assertIn(name, text)
        self.assertIn("'http'", text)
        self.assertIn("'70000'", text)
        self.assertIn("connector name 'b' appears more than once", text)
        for secret in ("short-secret", "hunter2", "pw2"):
            self.assertNotIn(secret, text)
        self.assertEqual(text.count("\n  - "), 7)

    def test_config_error_is_an_exception_with_problems(self):
        e = ConfigError(["one", "two"])
        self.assertEqual(e.problems, ["one", "two"])
        self.assertEqual(str(e), "invalid configuration:\n  - one\n  - two")


def connectors(text):
    problems = []
    result = parse_connectors(text, problems)
    return result, problems


class ConnectorsTests(unittest.TestCase):
    def test_seed_example(self):
        c = Config.from_environ({
            "CONNECTORS": "postgres_1=postgresql://electric:password@localhost:54321/electric;"
                          "postgres_2=postgresql://electric:password@localhost:54322/electric"
        })
        self.assertEqual([x.name for x in c.connectors], ["postgres_1", "postgres_2"])
        one = c.connector("postgres_1")
        self.assertEqual((one.host, one.port, one.database, one.user, one.password),
                         ("localhost", 54321, "electric", "electric", "password"))
        self.assertEqual(one.connect_timeout_ms, 5000)
        self.assertEqual(one.params, ())
        with self.assertRaises(KeyError):
            c.connector("postgres_3")

    def test_connectors_are_sorted_by_name_and_blank_items_ignored(self):
        result, problems = connectors(" ; z=postgresql://u:p@h/d ;; a=postgresql://u:p@h/d ; ")
        self.assertEqual(problems, [])
        self.assertEqual([c.name for c in result], ["a", "z"])

    def test_empty_connectors(self):
        self.assertEqual(connectors(""), ((), []))

    def test_postgres_scheme_and_default_port(self):
        result, problems = connectors("a=postgres://u:p@h/d")
        self.assertEqual(problems, [])
        self.assertEqual(result[0].port, 5432)

    def test_user_and_password_are_percent_decoded(self):
        result, problems = connectors("a=postgresql://us%40er:p%40ss%3Aw%2Fo%25rd@h:1/my%20db")
        self.assertEqual(problems, [])
        c = result[0]
        self.assertEqual((c.user, c.password, c.database), ("us@er", "p@ss:w/o%rd", "my db"))

    def test_password_is_optional_and_never_in_repr(self):
        result, problems = connectors("a=postgresql://u@h/d;b=postgresql://u:topsecret@h/d")
        self.assertEqual(problems, [])
        self.assertEqual(result[0].password, "")
        self.assertNotIn("topsecret", repr(result))

    def test_query_parameters_are_kept(self):
        result, problems = connectors("a=postgresql://u:p@h:5/d?sslmode=require&application_name=x&empty=")
        self.assertEqual(problems, [])
        self.assertEqual(result[0].params, (("sslmode", "require"), ("application_name", "x"), ("empty", "")))
        self.assertIn("sslmode='require'", result[0].dsn())
        self.assertNotIn("application_name", result[0].dsn())

    def test_query_overrides_and_timeout(self):
        result, problems = connectors("a=postgresql://u:p@h:5/d?host=other&port=6&user=v&dbname=e&timeout=250")
        self.assertEqual(problems, [])
        c = result[0]
        self.assertEqual((c.host, c.port, c.user, c.database, c.connect_timeout_ms), ("other", 6, "v", "e", 250))

    def test_dsn_quotes_values(self):
        c = Connector(name="a", host="h", port=1, database="d b", user="o'neil", password="p\\w",
                      connect_timeout_ms=2500)
        self.assertEqual(
            c.dsn(), "host='h' port=1 dbname='d b' user='o\\'neil' connect_timeout=2 password='p\\\\w'"
        )

    def test_bad_entries_each_give_a_clear_message(self):
        expected = "is not name=postgresql://user:password@host:port/database"
        cases = {
            "justtext": "entry 'justtext' " + expected,
            "=postgresql://u:pw@h/d": "entry '=postgresql://u:***@h/d' " + expected,
            "a=": "entry 'a=' " + expected,
            "postgresql://u:pw@h/d": "entry 'postgresql://u:***@h/d' " + expected,
            "a=mysql://u:pw@h/d": "a: 'mysql://u:***@h/d' " + expected + " (scheme must be postgresql)",
            "a=postgresql://h/d": "a: 'postgresql://h/d' " + expected + " (needs user, host and database)",
            "a=postgresql://u:pw@/d": "a: 'postgresql://u:***@/d' " + expected + " (needs user, host and database)",
            "a=postgresql://u:pw@h": "a: 'postgresql://u:***@h' " + expected + " (needs user, host and database)",
            "a=postgresql://u:pw@h:70000/d": "a: 'postgresql://u:***@h:70000/d' " + expected + " (Port out of range",
            "a=postgresql://u:pw@h:x/d": "a: 'postgresql://u:***@h:x/d' " + expected + " (Port could not be cast",
            "a=postgresql://u:pw@h:0/d": "a: 'postgresql://u:***@h:0/d' has port 0 (expected 1 to 65535)",
            "a=postgresql://u:pw@[h/d": "a: 'postgresql://u:***@[h/d' " + expected + " (Invalid IPv6 URL)",
            "a=postgresql://u:pw@h/d?port=x": "a: port='x' is not a port number from 1 to 65535",
            "a=postgresql://u:pw@h/d?timeout=0": "a: timeout='0' is not a positive integer (ms)",
            "a=postgresql://u:pw@h/d?timeout=soon": "a: timeout='soon' is not a positive integer (ms)",
            "a-b=postgresql://u:pw@h/d": "connector name 'a-b' must contain only ASCII letters, digits and _",
            "\u00e4=postgresql://u:pw@h/d": "connector name '\u00e4' must contain only ASCII letters, digits and _",
        }
        for entry, message in cases.items():
            result, problems = connectors(entry)
            self.assertEqual(result, (), entry)
            self.assertEqual(len(problems), 1, (entry, problems))
            self.assertTrue(problems[0].startswith("CONNECTORS: "), problems[0])
            self.assertIn(message, problems[0])
            self.assertNotIn(":pw@", problems[0])

    def test_duplicate_names(self):
        result, problems = connectors("a=postgresql://u:p@h/d;a=postgresql://u:q@h/e;b=postgresql://u:p@h/d")
        self.assertEqual(problems, ["CONNECTORS: connector name 'a' appears more than once"])
        self.assertEqual([c.name for c in result], ["a", "b"])

    def test_databases_of_one_server_need_their_own_slots(self):
        problems, _ = problems_of({"CONNECTORS": "a=postgresql://u:p@h:5/d1;b=postgresql://u:p@h:5/d2"})
        self.assertEqual(problems, [
            "CONNECTORS: a and b are databases of one server (h:5) and would share replication slot "
            "'all_changes': give each its own with ?slot=<name> in its URL"])
        config = Config.from_environ({"CONNECTORS": "a=postgresql://u:p@h:5/d1?slot=slot_a;b=postgresql://u:p@h:5/d2",
                                      "POSTGRES_SLOT": "shared"})
        self.assertEqual([config.slot_for(c) for c in config.connectors], ["slot_a", "shared"])
        problems, _ = problems_of({"CONNECTORS": "a=postgresql://u:p@h/d?slot=Not-A-Slot"})
        self.assertEqual(problems, ["CONNECTORS: a: slot='Not-A-Slot' must be a name of lowercase letters, digits and _"])

    def test_passwords_are_masked_even_in_unparseable_urls(self):
        for entry in ("a=postgresql://u:p@ss:w@rd@[oops/d",
                      "a=postgresql://u:secretpw@h:99999/d",
                      "a=postgresql://u@h/d?password=secretpw&timeout=-",
                      "garbage://u:secretpw@h",
                      "a=foo://u:secretpw@h/d",
                      "a=u:secretpw@h/d",
                      "u:secretpw@h/d"):
            problems, text = problems_of({"CONNECTORS": entry})
            self.assertEqual(len(problems), 1, problems)
            for secret in ("secretpw", "p@ss:w@rd", "ss:w"):
                self.assertNotIn(secret, text)
        problems, text = problems_of({"CONNECTORS": "a=postgresql://u@h:x/d?password=secretpw"})
        self.assertIn("?password=***", text)

    def test_good_connectors_survive_next_to_bad_ones(self):
        result, problems = connectors("a=postgresql://u:p@h/d;b=nonsense;c=postgresql://u:p@h/d")
        self.assertEqual([c.name for c in result], ["a", "c"])
        self.assertEqual(len(problems), 1)


class TLSConfigTests(unittest.TestCase):
    """The TLS variables: checked at startup, every problem in the one ConfigError."""

    def setUp(self):
        self.ca = TestCA()
        self.addCleanup(self.ca.cleanup)
        self.files = self.ca.server_files(owner=None)  # localhost, 127.0.0.1, ::1

    def write(self, name, data):
        import os

        path = os.path.join(self.ca.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_unset_means_no_tls(self):
        c = Config.from_environ({})
        self.assertIsNone(c.postgres_replication_tls)
        self.assertIsNone(c.postgres_replication_sslrootcert)
        self.assertIsNone(c.websocket_tls)
        self.assertIsNone(c.status_tls)

    def test_a_good_pair_and_the_same_pair_for_every_listener(self):
        env = {}
        for prefix in ("POSTGRES_REPLICATION", "WEBSOCKET", "STATUS"):
            env[f"{prefix}_TLS_CERT_FILE"] = self.files.cert
            env[f"{prefix}_TLS_KEY_FILE"] = self.files.key
        env["POSTGRES_REPLICATION_SSLROOTCERT"] = "/srv/ca.pem"
        c = Config.from_environ(env)
        pair = TLSFiles(self.files.cert, self.files.key)
        self.assertEqual((c.postgres_replication_tls, c.websocket_tls, c.status_tls), (pair, pair, pair))

    def test_every_problem_is_reported_at_once(self):
        import trustme
        from cryptography.hazmat.primitives import serialization

        other_key = trustme.CA().issue_cert("localhost").private_key_pem.bytes()
        mismatched = self.write("other.key", other_key)
        key = serialization.load_pem_private_key(open(self.files.key, "rb").read(), None)
        encrypted = self.write("enc.key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret")))
        garbage = self.write("garbage.pem", b"not a certificate")
        problems, text = problems_of({
            "POSTGRES_REPLICATION_TLS_CERT_FILE": self.files.cert,
            "POSTGRES_REPLICATION_TLS_KEY_FILE": mismatched,
            "WEBSOCKET_TLS_CERT_FILE": "/nonexistent/cert.pem",
            "WEBSOCKET_TLS_KEY_FILE": encrypted,
            "STATUS_TLS_CERT_FILE": garbage,
            "STATUS_TLS_KEY_FILE": garbage,
            "STATUS_PORT": "0",
        })
        self.assertEqual(len(problems), 6, problems)
        self.assertIn(f"POSTGRES_REPLICATION_TLS_KEY_FILE={mismatched!r} does not match the certificate in "
                      f"POSTGRES_REPLICATION_TLS_CERT_FILE={self.files.cert!r}", problems)
        self.assertIn("WEBSOCKET_TLS_CERT_FILE='/nonexistent/cert.pem': cannot read the certificate: "
                      "No such file or directory", problems)
        self.assertIn(f"WEBSOCKET_TLS_KEY_FILE={encrypted!r}: the private key is encrypted; give an unencrypted key",
                      problems)
        self.assertIn(f"STATUS_TLS_CERT_FILE={garbage!r}: not a PEM certificate file", problems)
        self.assertIn(f"STATUS_TLS_KEY_FILE={garbage!r}: not a PEM private key file", problems)
        self.assertIn("STATUS_PORT='0': expected a port number from 1 to 65535", problems)
        self.assertNotIn("BEGIN", text)  # no key material in the message

    def test_half_a_pair(self):
        problems, _ = problems_of({"WEBSOCKET_TLS_CERT_FILE": self.files.cert,
                                   "STATUS_TLS_KEY_FILE": self.files.key})
        self.assertEqual(problems, [
            "WEBSOCKET_TLS_CERT_FILE is set but WEBSOCKET_TLS_KEY_FILE is not: TLS needs both the certificate and its key",
            "STATUS_TLS_KEY_FILE is set but STATUS_TLS_CERT_FILE is not: TLS needs both the certificate and its key",
        ])

    def test_sslrootcert_needs_tls_on_5433(self):
        problems, _ = problems_of({"POSTGRES_REPLICATION_SSLROOTCERT": "/srv/ca.pem"})
        self.assertEqual(problems, [
            "POSTGRES_REPLICATION_SSLROOTCERT='/srv/ca.pem': needs POSTGRES_REPLICATION_TLS_CERT_FILE and "
            "POSTGRES_REPLICATION_TLS_KEY_FILE (port 5433 has no TLS without them)"])

    def test_verify_full_needs_a_certificate_naming_electric_host(self):
        env = {"POSTGRES_REPLICATION_TLS_CERT_FILE": self.files.cert,
               "POSTGRES_REPLICATION_TLS_KEY_FILE": self.files.key,
               "POSTGRES_REPLICATION_SSLROOTCERT": "/srv/ca.pem"}
        for host in ("127.0.0.1", "localhost", "::1"):
            Config.from_environ({**env, "ELECTRIC_HOST": host})
        problems, _ = problems_of({**env, "ELECTRIC_HOST": "electric.example"})
        self.assertEqual(problems, [
            f"POSTGRES_REPLICATION_TLS_CERT_FILE={self.files.cert!r}: the certificate is not valid for "
            "ELECTRIC_HOST='electric.example', and with POSTGRES_REPLICATION_SSLROOTCERT set the subscriptions "
            "verify it (sslmode=verify-full)"])
        # Without verification (sslmode=require) any host name is fine.
        c = Config.from_environ({k: v for k, v in env.items() if k != "POSTGRES_REPLICATION_SSLROOTCERT"}
                                | {"ELECTRIC_HOST": "electric.example"})
        self.assertIsNone(c.postgres_replication_sslrootcert)

    def test_ipv6_listen_host(self):
        self.assertEqual(Config.from_environ({"LISTEN_HOST": "::1"}).listen_host, "::1")
        self.assertEqual(Config.from_environ({"LISTEN_HOST": " :: "}).listen_host, "::")
        problems, _ = problems_of({"LISTEN_HOST": "a b"})
        self.assertEqual(problems, ["LISTEN_HOST='a b': expected an IPv4 or IPv6 address"])
