"""
End to end: Electric killed mid-load and restarted, and a new Postgres joining
with copy_data — the data still converges, nothing is lost or applied twice.
"""

from __future__ import annotations

import subprocess

from twisted.trial import unittest

from tests.electric_process import ElectricProcess
from tests.pgcluster import PgCluster
from tests.seeds import seeded
from tests.test_e2e_postgres import random_workload, run_psql_script, wait_for_writes_while_disabled, wait_same
from tests.polling import poll

SCHEMA = """
CREATE TABLE items (id int PRIMARY KEY, content text NOT NULL, n int);
CREATE TABLE random_t (id int PRIMARY KEY, a text, b int);
ALTER TABLE random_t REPLICA IDENTITY FULL;
"""


class KillAndJoin(unittest.TestCase):
    timeout = 600

    def setUp(self):
        self.a = PgCluster().start()
        self.b = PgCluster().start()
        self.addCleanup(self.a.destroy)
        self.addCleanup(self.b.destroy)
        for pg in (self.a, self.b):
            pg.psql(SCHEMA)

    def _electric(self, connectors, workdir=None):
        e = ElectricProcess(connectors, workdir=workdir)
        self.addCleanup(e.stop)
        return e.start()

    def test_sigkill_mid_load_then_restart(self):
        connectors = {"postgres_1": self.a.url, "postgres_2": self.b.url}
        e = self._electric(connectors)
        e.wait_ready()
        n = 4000
        sql = (f"DO $$ BEGIN FOR i IN 1..{n} LOOP "
               f"INSERT INTO items VALUES (i, 'row ' || i, i); COMMIT; END LOOP; END $$;")
        load = subprocess.Popen(
            ["/usr/lib/postgresql/15/bin/psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(self.a.port),
             "-U", "electric", "-d", "electric", "-c", sql],
            env={"PGPASSWORD": "password", "PATH": "/usr/bin:/bin"})
        # Kill once part of the load has gone through Electric.
        poll(lambda: int(self.b.psql("SELECT count(*) FROM items").strip() or 0) > n // 10, timeout=120,
             what="part of the load through Electric", interval=0.05)
        e.kill()
        self.assertEqual(load.wait(300), 0)
        # Same ports, same data directory: a plain restart.
        e2 = ElectricProcess(connectors, workdir=e.workdir)
        e2.status_port, e2.pg_port, e2.ws_port = e.status_port, e.pg_port, e.ws_port
        self.addCleanup(e2.stop)
        e2.start()
        e2.wait_ready()
        self.b.psql("UPDATE items SET content = 'after restart' WHERE id = 1")
        self.a.wait_for("SELECT content FROM items WHERE id = 1", "after restart", timeout=120)
        wait_same(self.a, self.b, "items", timeout=300, expect_rows=n)
        for pg in (self.a, self.b):
            self.assertNotIn("duplicate key value", pg.log())

    def test_third_database_joins_with_existing_rows(self):
        e = self._electric({"postgres_1": self.a.url, "postgres_2": self.b.url})
        e.wait_ready()
        self.a.psql("INSERT INTO items SELECT i, 'a' || i, i FROM generate_series(1, 300) i")
        self.b.psql("INSERT INTO items SELECT i, 'b' || i, i FROM generate_series(301, 500) i")
        wait_same(self.a, self.b, "items", timeout=120, expect_rows=500)
        e.stop()
        c = PgCluster().start()
        self.addCleanup(c.destroy)
        c.psql(SCHEMA)
        e2 = self._electric({"postgres_1": self.a.url, "postgres_2": self.b.url, "postgres_3": c.url},
                            workdir=e.workdir)
        e2.wait_ready()
        wait_same(self.a, c, "items", timeout=120, expect_rows=500)
        c.psql("INSERT INTO items VALUES (501, 'from c', 1)")
        self.a.wait_for("SELECT content FROM items WHERE id = 501", "from c", timeout=60)
        self.b.wait_for("SELECT content FROM items WHERE id = 501", "from c", timeout=60)

    @seeded()
    def test_databases_written_while_their_subscriptions_first_start_converge(self, rng):
        """
        Both databases take random writes on the same rows right after
        Electric set them up, while their subscriptions start for the first
        time (and one is briefly disabled).  A row one database wrote and the
        other deleted before the first one's subscription caught up must end
        deleted there too: a first subscription streams the hub from the
        start, deletes included, where a table copy would bring live rows only.
        """
        e = self._electric({"postgres_1": self.a.url, "postgres_2": self.b.url})
        e.wait_ready()
        head = e.hub_head()
        procs = [run_psql_script(pg, random_workload(rng, who)) for pg, who in ((self.a, "a"), (self.b, "b"))]
        self.b.psql("ALTER SUBSCRIPTION postgres_2 DISABLE")
        wait_for_writes_while_disabled(e, head, procs)
        self.b.psql("ALTER SUBSCRIPTION postgres_2 ENABLE")
        for p in procs:
            self.assertEqual(p.wait(120), 0)
        wait_same(self.a, self.b, "random_t", timeout=60)
