"""The throwaway-cluster helper and its command line (behind make start_dev_env): start, query, stop, clean up."""

import os
import shutil
import subprocess
import sys
import tempfile

from twisted.internet import protocol, reactor
from twisted.trial import unittest

from tests import pgcluster
from tests.pgcluster import PgCluster, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PgClusterTests(unittest.TestCase):
    def test_life_cycle(self):
        cluster = PgCluster()
        self.addCleanup(cluster.destroy)
        cluster.start()
        self.assertIn(cluster, pgcluster._live)
        self.assertTrue(cluster.running())
        self.assertEqual(cluster.url, f"postgresql://electric:password@127.0.0.1:{cluster.port}/electric")
        self.assertEqual(cluster.psql("SHOW wal_level").strip(), "logical")
        self.assertEqual(cluster.psql("SHOW wal_retrieve_retry_interval").strip(), "200ms")
        self.assertEqual(
            cluster.psql("SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = 'electric'").strip(), "t|t"
        )
        cluster.psql("CREATE TABLE kept (id int PRIMARY KEY); INSERT INTO kept VALUES (7)")
        self.assertEqual(cluster.wait_for("SELECT count(*) FROM kept", "1", timeout=10), "1")

        # starting a running cluster is a no-op
        cluster.start()
        cluster.stop()
        self.assertFalse(cluster.running())
        with self.assertRaises(RuntimeError) as caught:
            cluster.psql("SELECT 1")
        self.assertIn(f"psql failed on port {cluster.port}", str(caught.exception))

        cluster.restart()
        self.assertEqual(cluster.psql("SELECT id FROM kept").strip(), "7")
        self.assertIn("database system is ready to accept connections", cluster.log())

        datadir = cluster.datadir
        cluster.destroy()
        self.assertFalse(os.path.exists(datadir))
        self.assertNotIn(cluster, pgcluster._live)

    def test_errors_are_clear(self):
        blocker = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        self.addCleanup(blocker.stopListening)
        cluster = PgCluster(port=blocker.getHost().port)
        self.addCleanup(cluster.destroy)
        with self.assertRaises(RuntimeError) as caught:
            cluster.start()
        text = str(caught.exception)
        self.assertIn(f"PostgreSQL on port {cluster.port}", text)
        self.assertIn("did not start", text)
        self.assertIn("Address already in use", text)
        self.assertFalse(cluster.running())


class CommandLineTests(unittest.TestCase):
    def setUp(self):
        self.parent = tempfile.mkdtemp(prefix="electric-dev-", dir="/tmp")
        os.chmod(self.parent, 0o755)  # the postgres user must reach the data directory below
        self.addCleanup(shutil.rmtree, self.parent, True)
        self.datadir = os.path.join(self.parent, "pg1")
        self.port = free_port()
        self.addCleanup(self.cli, "stop", "--datadir", self.datadir, "--remove")

    def cli(self, *args):
        return subprocess.run([sys.executable, "-m", "tests.pgcluster", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    def test_start_is_idempotent_and_outlives_the_command(self):
        for _ in range(2):
            proc = self.cli("start", "--port", str(self.port), "--datadir", self.datadir)
            self.assertEqual(proc.returncode, 0, proc.stderr)
            self.assertEqual(proc.stdout.strip(), f"postgresql://electric:password@127.0.0.1:{self.port}/electric")
        cluster = PgCluster(port=self.port, datadir=self.datadir)
        self.assertTrue(cluster.running())
        self.assertEqual(cluster.psql("SELECT current_database()").strip(), "electric")

        proc = self.cli("stop", "--datadir", self.datadir)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertFalse(cluster.running())
        self.assertTrue(os.path.exists(os.path.join(self.datadir, "PG_VERSION")))

        proc = self.cli("stop", "--datadir", self.datadir, "--remove")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertFalse(os.path.exists(self.datadir))

    def test_start_failure_exits_nonzero(self):
        blocker = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        self.addCleanup(blocker.stopListening)
        proc = self.cli("start", "--port", str(blocker.getHost().port), "--datadir", self.datadir)
        self.assertEqual(proc.returncode, 1)
        self.assertIn("did not start", proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)

    def test_usage_errors(self):
        proc = self.cli("start", "--datadir", self.datadir)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("--port", proc.stderr)


class SharedClusterTests(unittest.TestCase):
    def test_shared_cluster_is_reused_and_destroyed_by_destroy_all(self):
        key = "test-pgcluster-shared"
        cluster = pgcluster.shared_cluster(key)
        self.addCleanup(cluster.destroy)
        self.assertIs(pgcluster.shared_cluster(key), cluster)
        self.assertEqual(cluster.psql("SELECT 1").strip(), "1")
        # a destroyed shared cluster is replaced, not handed out dead
        cluster.destroy()
        again = pgcluster.shared_cluster(key)
        self.addCleanup(again.destroy)
        self.assertIsNot(again, cluster)
        self.assertTrue(again.running())

    def test_destroy_all_at_session_end(self):
        """What conftest's pytest_sessionfinish does, in a child process so this run's clusters live on."""
        code = (
            "from tests import pgcluster\n"
            "c = pgcluster.shared_cluster('x')\n"
            "print(c.datadir, flush=True)\n"
            "pgcluster.destroy_all()\n"
            "print(c.running(), pgcluster._live)\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        datadir, result = proc.stdout.splitlines()
        self.assertEqual(result, "False []")
        self.assertFalse(os.path.exists(datadir))

    def test_clusters_are_destroyed_when_the_process_exits(self):
        code = (
            "from tests.pgcluster import PgCluster\n"
            "c = PgCluster().start()\n"
            "print(c.datadir, flush=True)\n"
            "raise SystemExit('a test run that failed')\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
        self.assertEqual(proc.returncode, 1)
        datadir = proc.stdout.strip()
        self.assertTrue(datadir.startswith("/tmp/epg"), datadir)
        self.assertFalse(os.path.exists(datadir))


class MakefileDevEnvTests(unittest.TestCase):
    """`make start_dev_env` / `make stop_dev_env` themselves, on free ports and a temporary directory."""

    def make(self, target):
        return subprocess.run(
            ["make", "--no-print-directory", target, f"PYTHON={sys.executable}", f"DEV_DIR={self.devdir}",
             f"PG1_PORT={self.ports[0]}", f"PG2_PORT={self.ports[1]}"],
            cwd=ROOT, capture_output=True, text=True, timeout=180,
        )

    def test_start_and_stop(self):
        parent = tempfile.mkdtemp(prefix="electric-make-", dir="/tmp")
        os.chmod(parent, 0o755)
        self.addCleanup(shutil.rmtree, parent, True)
        self.devdir = os.path.join(parent, "dev")
        self.ports = (free_port(), free_port())
        self.addCleanup(self.make, "stop_dev_env")
        proc = self.make("start_dev_env")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stdout.split(), [
            f"postgresql://electric:password@127.0.0.1:{port}/electric" for port in self.ports])
        for n, port in enumerate(self.ports, 1):
            cluster = PgCluster(port=port, datadir=os.path.join(self.devdir, f"pg{n}"))
            self.assertEqual(cluster.psql("SHOW wal_level").strip(), "logical")
            self.assertEqual(cluster.psql("SHOW wal_retrieve_retry_interval").strip(), "200ms")
        proc = self.make("stop_dev_env")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertFalse(os.path.exists(self.devdir))
