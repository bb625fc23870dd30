"""
Electric against a Postgres that accepts only TLS (``hostssl`` rules), end
to end and in process: with ``sslmode=verify-full&sslrootcert=...`` in
CONNECTORS two databases replicate both ways, every connection Electric
opened (set-up sessions and the replication stream) is encrypted, and a
wrong CA, a wrong host name or ``sslmode=disable`` leave the real service's
connectors retrying with an error that names each and its sslmode, in
``/api/status/details``.  ``sslmode=prefer`` against a server without TLS
replicates as before.
"""

from __future__ import annotations

import json
import urllib.request

from twisted.internet import defer
from twisted.trial import unittest

from electric.config import Config
from electric.migrations.migration import DatabaseUnavailable, MigrationDatabase
from tests.electric_process import ElectricProcess
from tests.mesh import InProcessMesh
from tests.pgcluster import PASSWORD, PgCluster, shared_cluster
from tests.polling import wait_until
from tests.publisher_helpers import subscriber_errors
from tests.test_pg_setup import CLUSTER_KEY
from tests.tls_helpers import TestCA

NAMES = ("tls_a", "tls_b")


class Databases:
    """Databases with a table `items`, dropped again at cleanup (subscription and slot first)."""

    def __init__(self, test: unittest.TestCase, pg: PgCluster, names):
        self.pg = pg
        for name in names:
            test.addCleanup(self.drop, name)
            pg.psql(f"CREATE DATABASE {name}_db", dbname="postgres")
            pg.psql("CREATE TABLE public.items (id text PRIMARY KEY, content text)", dbname=f"{name}_db")

    def drop(self, name):
        db, pg = f"{name}_db", self.pg
        pg.psql(f'ALTER SUBSCRIPTION "{name}" DISABLE', dbname=db, check=False)
        pg.psql(f'ALTER SUBSCRIPTION "{name}" SET (slot_name = NONE)', dbname=db, check=False)
        pg.psql(f'DROP SUBSCRIPTION IF EXISTS "{name}"', dbname=db, check=False)
        pg.psql(f"SELECT pg_drop_replication_slot('slot_{name}') FROM pg_replication_slots "
                f"WHERE slot_name = 'slot_{name}'", dbname="postgres", check=False)
        pg.psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", dbname="postgres", check=False)

    def rows(self, name):
        return self.pg.psql("SELECT id, content FROM items ORDER BY id", dbname=f"{name}_db").splitlines()


class ReplicationOverTLSTests(unittest.TestCase):
    def setUp(self):
        self.ca = TestCA()
        self.addCleanup(self.ca.cleanup)
        self.pg = PgCluster(tls=self.ca.server_files(), hostssl_only=True).start()
        self.addCleanup(self.pg.destroy)

    @defer.inlineCallbacks
    def test_verify_full_replicates_both_ways(self):
        a, b = NAMES
        dbs = Databases(self, self.pg, NAMES)
        since = len(self.pg.log())
        mesh = InProcessMesh(self.pg, NAMES, prefix="etls-e2e",
                             params=f"sslmode=verify-full&sslrootcert={self.ca.ca_file}")
        self.addCleanup(mesh.stop)
        yield mesh.start()
        self.pg.psql("INSERT INTO items VALUES ('1', 'from a')", dbname=f"{a}_db")
        self.pg.psql("INSERT INTO items VALUES ('2', 'from b')", dbname=f"{b}_db")
        expected = ["1|from a", "2|from b"]
        yield wait_until(lambda: dbs.rows(a) == expected and dbs.rows(b) == expected, timeout=60,
                         what="both rows in both databases")
        # Electric's replication streams are encrypted (the server refuses anything else anyway).
        streams = self.pg.psql(
            "SELECT a.application_name, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
            "WHERE a.application_name LIKE 'electric_tls_%' ORDER BY 1", dbname="postgres").split()
        self.assertEqual(streams, ["electric_tls_a|t", "electric_tls_b|t"])
        for svc in mesh.connectors.values():
            status = svc.status()
            self.assertEqual((status["sslmode"], status["stream_encrypted"], status["last_error"]),
                             ("verify-full", True, None))
        self.assertEqual(subscriber_errors(self.pg, since=since), [])

    @defer.inlineCallbacks
    def test_migration_sessions_use_the_connector_tls(self):
        """The migrations' libpq sessions get the connector's ssl* parameters too."""
        other = TestCA()
        self.addCleanup(other.cleanup)

        def database(rootcert):
            config = Config.from_environ({"CONNECTORS": f"m=postgresql://electric:password@127.0.0.1:{self.pg.port}"
                                                        f"/electric?sslmode=verify-full&sslrootcert={rootcert}"})
            return MigrationDatabase("m", config.connector("m").dsn())

        applied = yield database(self.ca.ca_file).applied()
        self.assertEqual(applied, [])
        with self.assertRaises(DatabaseUnavailable) as cm:
            yield database(other.ca_file).applied()
        self.assertIn("certificate verify failed", str(cm.exception))


class RefusedTests(unittest.TestCase):
    """
    The real service (twistd) with three connectors whose TLS cannot work:
    each keeps retrying, and /api/status/details says why, naming the
    connector and its sslmode, without the password.
    """

    def setUp(self):
        self.ca = TestCA()
        self.addCleanup(self.ca.cleanup)
        self.other_ca = TestCA()
        self.addCleanup(self.other_ca.cleanup)
        self.good = PgCluster(tls=self.ca.server_files(), hostssl_only=True).start()
        self.addCleanup(self.good.destroy)
        self.otherhost = PgCluster(tls=self.ca.server_files(("otherhost",)), hostssl_only=True).start()
        self.addCleanup(self.otherhost.destroy)

    def details(self, electric):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{electric.status_port}/api/status/details",
                                        timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            return None

    @defer.inlineCallbacks
    def test_wrong_ca_wrong_host_and_no_tls_are_refused_clearly(self):
        good, other = self.good, self.otherhost
        electric = ElectricProcess({
            "wrong_ca": f"{good.url}?slot=s_ca&sslmode=verify-full&sslrootcert={self.other_ca.ca_file}",
            "wrong_host": f"{other.url}?sslmode=verify-full&sslrootcert={self.ca.ca_file}",
            "no_tls": f"{good.url}?slot=s_plain&sslmode=disable",
        }).start()
        self.addCleanup(electric.stop)

        def errors():
            d = self.details(electric)
            if d is None:
                return None
            found = {name: c.get("last_error") for name, c in d["connectors"].items()}
            return found if all(found.values()) else None

        found = yield wait_until(errors, timeout=60, what="an error for every connector")
        for name, error in found.items():
            self.assertTrue(error.startswith(f"connector {name}: setup failed: cannot connect to 127.0.0.1:"), error)
        self.assertIn("certificate verify failed", found["wrong_ca"])
        self.assertTrue(found["wrong_ca"].endswith("(sslmode=verify-full)"), found["wrong_ca"])
        self.assertIn('server certificate for "otherhost" does not match host name "127.0.0.1"', found["wrong_host"])
        self.assertTrue(found["wrong_host"].endswith("(sslmode=verify-full)"), found["wrong_host"])
        self.assertIn('no pg_hba.conf entry for host "127.0.0.1", user "electric", database "electric", '
                      "no encryption", found["no_tls"])
        self.assertTrue(found["no_tls"].endswith("(sslmode=disable)"), found["no_tls"])
        status = electric.status()
        self.assertEqual(status["connectors"], {"no_tls": False, "wrong_ca": False, "wrong_host": False})
        # The log names the connectors too, and never shows the password.
        log = electric.log()
        for name in found:
            self.assertIn(f"[connector={name} ", log)
            self.assertRegex(log, rf"#error\] \[connector={name} [^\n]*\] setup failed: ")
        self.assertNotIn(f"password={PASSWORD}", log)
        self.assertNotIn(f"password='{PASSWORD}'", log)
        self.assertNotIn(f":{PASSWORD}@", log)


class PreferWithoutTLSTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_prefer_against_a_server_without_tls(self):
        pg = shared_cluster(CLUSTER_KEY)
        names = ("tls_plain_a", "tls_plain_b")
        dbs = Databases(self, pg, names)
        mesh = InProcessMesh(pg, names, prefix="etls-plain", params="sslmode=prefer")
        self.addCleanup(mesh.stop)
        yield mesh.start()
        pg.psql("INSERT INTO items VALUES ('p', 'plain')", dbname=f"{names[0]}_db")
        yield wait_until(lambda: dbs.rows(names[1]) == ["p|plain"], timeout=60, what="row crossed")
        for svc in mesh.connectors.values():
            status = svc.status()
            self.assertEqual((status["sslmode"], status["stream_encrypted"]), ("prefer", False))
