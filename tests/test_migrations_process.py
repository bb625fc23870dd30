"""
Migrations through the real `twistd electric` process: the `electric
apply-migration` command and `make apply_migration` against its HTTP API,
with two stock PostgreSQL 15 databases replicating through it.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

from twisted.trial import unittest

from tests.electric_process import ROOT, ElectricProcess
from tests import pgcluster
from tests.polling import poll

BASE_SCHEMA = """
CREATE TABLE entries (id text PRIMARY KEY, content text NOT NULL);
ALTER TABLE entries REPLICA IDENTITY FULL;
"""

_state = {}
TOKEN = "migrations-process-test-token"  # the service requires it (ELECTRIC_API_TOKEN)
DB = f"mig_proc_{os.getpid()}"
SLOT = f"mig_proc_slot_{os.getpid()}"


def _cleanup():
    electric = _state.get("electric")
    if electric is not None:
        electric.stop()
    for pg, sub in ((_state.get("a"), "postgres_1"), (_state.get("b"), "postgres_2")):
        if pg is None or not pg.started:
            continue
        pg.psql(f'ALTER SUBSCRIPTION "{sub}" DISABLE', dbname=DB, check=False)
        pg.psql(f'ALTER SUBSCRIPTION "{sub}" SET (slot_name = NONE)', dbname=DB, check=False)
        pg.psql(f"SELECT pg_drop_replication_slot('{SLOT}')", dbname="postgres", check=False)
        pg.psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)", dbname="postgres", check=False)


def stack():
    """
    One Electric per process over the two clusters the migration tests
    share (own databases and slot), started on first use: trial has no
    setUpClass.  Stopped and dropped at exit, before the clusters go.
    """
    if not _state:
        a, b = pgcluster.shared_cluster("migrations-a"), pgcluster.shared_cluster("migrations-b")
        _state.update(a=a, b=b)
        atexit.register(_cleanup)  # runs before pgcluster's own atexit hook (registered earlier)
        for pg in (a, b):
            pg.psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)", dbname="postgres")
            pg.psql(f"CREATE DATABASE {DB}", dbname="postgres")
            pg.psql(BASE_SCHEMA, dbname=DB)
        urls = {name: pg.url.rsplit("/", 1)[0] + "/" + DB for name, pg in (("postgres_1", a), ("postgres_2", b))}
        electric = ElectricProcess(urls, extra_env={"POSTGRES_SLOT": SLOT, "ELECTRIC_API_TOKEN": TOKEN}).start()
        _state["electric"] = electric
        electric.wait_ready(120)
    return _state["a"], _state["b"], _state["electric"]


def wait_until(check, timeout=60.0, what="condition"):
    return poll(check, timeout=timeout, what=what, interval=0.2)


class ThroughTheService(unittest.TestCase):
    timeout = 300

    def setUp(self):
        self.a, self.b, self.electric = stack()
        self.dir = self.electric.env()["MIGRATIONS_DIR"]

    @staticmethod
    def sql(pg, text):
        return pg.psql(text, dbname=DB)

    @staticmethod
    def wait_for(pg, text, expected, timeout=60.0):
        return wait_until(lambda: pg.psql(text, dbname=DB, check=False).strip() == expected, timeout,
                          what=f"{text!r} == {expected!r}")

    def add(self, vsn, sql):
        path = os.path.join(self.dir, vsn, "postgres.sql")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(sql)

    def env(self, token=TOKEN):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("ELECTRIC_URL", "STATUS_PORT", "ELECTRIC_API_TOKEN"))}
        env["STATUS_PORT"] = str(self.electric.status_port)
        env["PYTHONPATH"] = ROOT
        if token is not None:
            env["ELECTRIC_API_TOKEN"] = token
        return env

    def cli(self, *args, token=TOKEN):
        proc = subprocess.run([sys.executable, "-m", "electric", "apply-migration", *args],
                              cwd=ROOT, env=self.env(token), capture_output=True, text=True, timeout=300)
        return proc.returncode, proc.stdout, proc.stderr

    def get(self, path):
        url = f"http://127.0.0.1:{self.electric.status_port}{path}"
        with urllib.request.urlopen(url, timeout=30) as r:
            return json.loads(r.read())

    def test_cli_create_table_then_add_column_with_data_flowing(self):
        self.sql(self.a, "INSERT INTO entries VALUES ('p_before', 'x')")
        self.wait_for(self.b, "SELECT count(*) FROM entries WHERE id = 'p_before'", "1")

        self.add("1700000001_create_items", "CREATE TABLE items (id text PRIMARY KEY, content text);")
        code, out, err = self.cli("1700000001_create_items")
        self.assertEqual(code, 0, out + err)
        self.assertIn("postgres_1: applied 1700000001_create_items", out)
        self.assertIn("postgres_2: applied 1700000001_create_items", out)
        self.sql(self.a, "INSERT INTO items VALUES ('i1', 'from a')")
        self.sql(self.b, "INSERT INTO items VALUES ('i2', 'from b')")
        for pg in (self.a, self.b):
            self.wait_for(pg, "SELECT string_agg(id, ',' ORDER BY id) FROM items", "i1,i2", timeout=60)

        self.add("1700000002_add_content_b", "ALTER TABLE items ADD COLUMN content_b text;")
        code, out, err = self.cli("1700000002_add_content_b")
        self.assertEqual(code, 0, out + err)
        self.sql(self.b, "INSERT INTO items VALUES ('i3', 'from b', 'with b')")
        self.wait_for(self.a, "SELECT content_b FROM items WHERE id = 'i3'", "with b", timeout=60)
        self.sql(self.a, "UPDATE items SET content_b = 'a too' WHERE id = 'i1'")
        self.wait_for(self.b, "SELECT content_b FROM items WHERE id = 'i1'", "a too", timeout=60)

        entries = self.get("/api/migrations")
        self.assertEqual([(e["origin"], e["vsn"]) for e in entries],
                         [("postgres_1", "1700000002_add_content_b"), ("postgres_2", "1700000002_add_content_b")])

        # again: already applied everywhere -> non-zero, replication untouched
        code, out, _ = self.cli("1700000002_add_content_b")
        self.assertEqual(code, 1)
        self.assertEqual(out.count(":already_migrated"), 2)
        self.assertEqual(self.electric.status()["connectors"], {"postgres_1": True, "postgres_2": True})
        self.sql(self.a, "INSERT INTO entries VALUES ('p_after', 'y')")
        self.wait_for(self.b, "SELECT count(*) FROM entries WHERE id = 'p_after'", "1")

    def test_one_connector_then_make_target_for_the_rest(self):
        self.add("1700000010_create_later", "CREATE TABLE later_t (id text PRIMARY KEY, content text);")
        code, out, err = self.cli("1700000010_create_later", "--connector", "postgres_2")
        self.assertEqual((code, out), (0, "postgres_2: applied 1700000010_create_later\n"), err)
        pending = [e for e in self.get("/api/migrations") if e["origin"] == "postgres_1"][0]
        self.assertEqual(pending["pending_migrations"], ["1700000010_create_later"])

        # the make target (deps taken as built: -o skips reinstalling the venv)
        proc = subprocess.run(["make", "--no-print-directory", "-o", ".venv/.deps-stamp",
                               "apply_migration", "name=1700000010_create_later"],
                              cwd=ROOT, env=self.env(), capture_output=True, text=True, timeout=300)
        self.assertNotEqual(proc.returncode, 0)  # postgres_2 already had it
        self.assertIn("postgres_1: applied 1700000010_create_later", proc.stdout)
        self.assertIn("postgres_2: FAILED (409): :already_migrated", proc.stdout)
        self.sql(self.a, "INSERT INTO later_t VALUES ('l1', 'from a')")
        self.wait_for(self.b, "SELECT content FROM later_t WHERE id = 'l1'", "from a", timeout=60)

    def test_failures_leave_replication_running(self):
        self.add("1700000020_broken", "CREATE TABLE broken_t (id text PRIMARY KEY, x nosuchtype);")
        code, out, _ = self.cli("1700000020_broken")
        self.assertEqual(code, 1)
        self.assertEqual(out.count('type "nosuchtype" does not exist'), 2)
        code, out, _ = self.cli("1700000021_missing")
        self.assertEqual(code, 1)
        self.assertIn(":vsn_not_found", out)
        proc = subprocess.run(["make", "--no-print-directory", "apply_migration"],
                              cwd=ROOT, env=self.env(), capture_output=True, text=True, timeout=60)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("usage: make apply_migration name=", proc.stdout + proc.stderr)
        wait_until(lambda: self.electric.status()["connectors"] == {"postgres_1": True, "postgres_2": True},
                   what="both connectors ready")
        self.sql(self.b, "INSERT INTO entries VALUES ('f_after', 'z')")
        self.wait_for(self.a, "SELECT count(*) FROM entries WHERE id = 'f_after'", "1")

    def test_the_api_token_is_required_and_sent_from_the_environment(self):
        self.add("1700000030_token", "CREATE TABLE token_t (id text PRIMARY KEY);")
        for token, message in ((None, "requires an API token: set ELECTRIC_API_TOKEN"),
                               ("not-the-right-token", "the token in ELECTRIC_API_TOKEN was refused")):
            code, out, err = self.cli("1700000030_token", token=token)
            self.assertEqual(code, 1)
            self.assertIn(message, err)
            proc = subprocess.run(["make", "--no-print-directory", "-o", ".venv/.deps-stamp",
                                   "apply_migration", "name=1700000030_token"],
                                  cwd=ROOT, env=self.env(token), capture_output=True, text=True, timeout=300)
            self.assertNotEqual(proc.returncode, 0)
            self.assertIn(message, proc.stderr)
        self.assertNotIn("token_t", self.sql(self.a, "SELECT string_agg(tablename, ',') FROM pg_tables"))
        proc = subprocess.run(["make", "--no-print-directory", "-o", ".venv/.deps-stamp",
                               "apply_migration", "name=1700000030_token"],
                              cwd=ROOT, env=self.env(), capture_output=True, text=True, timeout=300)
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
        self.assertIn("postgres_1: applied 1700000030_token", proc.stdout)
        # details list users and clients: closed without the token, open with it
        url = f"http://127.0.0.1:{self.electric.status_port}/api/status/details"
        with self.assertRaises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(url, timeout=30)
        self.assertEqual(caught.exception.code, 401)
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=30) as r:
            self.assertIn("satellite", json.loads(r.read()))
