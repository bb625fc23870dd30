"""
End to end: two (then three) stock PostgreSQL 15 databases replicating
active-active through a real `twistd electric` process on the embedded hub.

Everything here is real: clusters started by tests/pgcluster.py, the service
as a child process, Postgres's own apply workers subscribing to port 5433.
"""

from __future__ import annotations

import atexit
import json
import random
import subprocess
import urllib.request

from twisted.trial import unittest

from tests.electric_process import ElectricProcess
from tests.pgcluster import PgCluster
from tests.polling import poll
from tests.seeds import seeded

SCHEMA = """
CREATE EXTENSION IF NOT EXISTS "uuid-ossp";
CREATE TABLE entries (
    id uuid PRIMARY KEY DEFAULT uuid_generate_v4(),
    content varchar(64) NOT NULL,
    content_b varchar(64)
);
ALTER TABLE entries REPLICA IDENTITY FULL;
CREATE TABLE entries_default (
    id uuid PRIMARY KEY DEFAULT uuid_generate_v4(),
    content varchar(64) NOT NULL,
    content_b varchar(64)
);
CREATE TABLE types_t (
    id int PRIMARY KEY, c_int2 int2, c_int8 int8, c_text text, c_bool bool,
    c_float8 float8, c_numeric numeric(10,2), c_date date, c_ts timestamp,
    c_tstz timestamptz, c_uuid uuid, c_jsonb jsonb, c_arr int4[], c_bytea bytea
);
CREATE TABLE load_t (id text PRIMARY KEY, n int NOT NULL, who text);
CREATE TABLE conflict_t (id int PRIMARY KEY, content text, other text);
CREATE TABLE random_t (id int PRIMARY KEY, a text, b int);
ALTER TABLE random_t REPLICA IDENTITY FULL;
ALTER TABLE conflict_t REPLICA IDENTITY FULL;
"""

TYPES_ROW = (
    "INSERT INTO types_t VALUES (1, 32767, -9223372036854775807, E'tab\\there \"q\" \\\\ é ✓', true,"
    " 0.1, 12.5, '2024-02-29', '2024-02-29 13:45:56.123456', '2024-02-29 13:45:56.123456+02',"
    " 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": [1, 2], \"b\": null}', '{1,NULL,3}', '\\xdeadbeef00'),"
    " (2, NULL, NULL, '', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
)


def table_text(pg: PgCluster, table: str) -> str:
    return pg.psql(f"SELECT coalesce(string_agg(t::text, '|' ORDER BY t::text), '') FROM {table} t").strip()


def wait_same(a: PgCluster, b: PgCluster, table: str, timeout: float = 60.0, expect_rows=None) -> str:
    seen = {"a": "", "b": ""}

    def converged():
        ta, tb = seen["a"], seen["b"] = table_text(a, table), table_text(b, table)
        return ta == tb and (expect_rows is None or
                             int(a.psql(f"SELECT count(*) FROM {table}").strip()) == expect_rows) and (ta,)

    try:
        return poll(converged, timeout=timeout, what=f"{table} identical on both", interval=0.2)[0]
    except AssertionError:
        raise AssertionError(f"{table} did not converge:\nA={seen['a'][:2000]!r}\nB={seen['b'][:2000]!r}") from None


def random_workload(rng: random.Random, who: str, transactions: int = 150, keys: int = 40) -> str:
    """
    A psql script of `transactions` random transactions on random_t over a
    small key space (so both databases hit the same rows): upserts, updates
    of one column or the other, deletes, one to four per transaction.
    """
    lines = []
    for _ in range(transactions):
        lines.append("BEGIN;")
        for _ in range(rng.randint(1, 4)):
            k = rng.randint(1, keys)
            op = rng.random()
            if op < 0.35:
                lines.append(f"INSERT INTO random_t VALUES ({k}, '{who}{k}', {rng.randint(0, 99)}) "
                             f"ON CONFLICT (id) DO UPDATE SET a = excluded.a, b = excluded.b;")
            elif op < 0.6:
                lines.append(f"UPDATE random_t SET a = '{who}-a{rng.randint(0, 99)}' WHERE id = {k};")
            elif op < 0.8:
                lines.append(f"UPDATE random_t SET b = {rng.randint(0, 99)} WHERE id = {k};")
            else:
                lines.append(f"DELETE FROM random_t WHERE id = {k};")
        lines.append("COMMIT;")
    return "\n".join(lines)


def wait_for_writes_while_disabled(electric: ElectricProcess, head: int, procs, transactions: int = 20) -> None:
    """
    Block until the hub has taken `transactions` more transactions since `head`
    (or the workload scripts ended): what a disabled subscription must catch up on.
    """
    poll(lambda: electric.hub_head() >= head + transactions or all(p.poll() is not None for p in procs),
         timeout=120, what=f"{transactions} transactions in the hub")


def run_psql_script(pg: PgCluster, script: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["/usr/lib/postgresql/15/bin/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
         "-p", str(pg.port), "-U", "electric", "-d", "electric"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env={"PGPASSWORD": "password", "PATH": "/usr/bin:/bin"})
    proc.stdin.write(script)
    proc.stdin.close()
    return proc


_mesh = {}


def mesh():
    """
    Two databases and one Electric for the whole test process, started on
    first use (trial has no setUpClass); each test uses its own rows.
    """
    if not _mesh:
        a = PgCluster().start()
        b = PgCluster().start()
        for pg in (a, b):
            pg.psql(SCHEMA)
        electric = ElectricProcess({"postgres_1": a.url, "postgres_2": b.url})
        atexit.register(electric.stop)
        electric.start().wait_ready()
        _mesh.update(a=a, b=b, electric=electric)
    return _mesh["a"], _mesh["b"], _mesh["electric"]


class ActiveActive(unittest.TestCase):
    timeout = 600

    def setUp(self):
        self.a, self.b, self.electric = mesh()

    def test_insert_update_delete_both_ways(self):
        a, b = self.a, self.b
        for table in ("entries", "entries_default"):
            a.psql(f"INSERT INTO {table} (id, content) VALUES ('00000000-0000-0000-0000-000000000001', 'from a')")
            b.wait_for(f"SELECT content FROM {table} WHERE id = '00000000-0000-0000-0000-000000000001'", "from a")
            b.psql(f"UPDATE {table} SET content_b = 'b was here' WHERE id = '00000000-0000-0000-0000-000000000001'")
            a.wait_for(f"SELECT content_b FROM {table} WHERE id = '00000000-0000-0000-0000-000000000001'", "b was here")
            b.psql(f"INSERT INTO {table} (id, content) VALUES ('00000000-0000-0000-0000-000000000002', 'from b')")
            a.wait_for(f"SELECT content FROM {table} WHERE id = '00000000-0000-0000-0000-000000000002'", "from b")
            a.psql(f"DELETE FROM {table} WHERE id = '00000000-0000-0000-0000-000000000001'")
            b.wait_for(f"SELECT count(*) FROM {table} WHERE id = '00000000-0000-0000-0000-000000000001'", "0")
            wait_same(a, b, table)

    def test_types_and_nulls_round_trip(self):
        self.a.psql(TYPES_ROW)
        text = wait_same(self.a, self.b, "types_t", expect_rows=2)
        self.assertIn("deadbeef00", text)
        self.assertIn("12.50", text)
        self.b.psql("UPDATE types_t SET c_text = NULL, c_bool = false WHERE id = 1")
        self.a.wait_for("SELECT c_text IS NULL AND NOT c_bool FROM types_t WHERE id = 1", "t")
        wait_same(self.a, self.b, "types_t", expect_rows=2)

    def test_same_key_written_on_both_while_disconnected(self):
        a, b = self.a, self.b
        b.psql("ALTER SUBSCRIPTION postgres_2 DISABLE")
        try:
            a.psql("INSERT INTO conflict_t VALUES (1, 'a wrote', 'a')")
            b.psql("INSERT INTO conflict_t VALUES (1, 'b wrote', 'b')")
        finally:
            b.psql("ALTER SUBSCRIPTION postgres_2 ENABLE")
        text = wait_same(a, b, "conflict_t", expect_rows=1)
        self.assertIn("wrote", text)

    def test_update_beats_concurrent_delete(self):
        a, b = self.a, self.b
        a.psql("INSERT INTO conflict_t VALUES (2, 'original', 'x')")
        b.wait_for("SELECT content FROM conflict_t WHERE id = 2", "original")
        b.psql("ALTER SUBSCRIPTION postgres_2 DISABLE")
        try:
            head = self.electric.hub_head()
            a.psql("DELETE FROM conflict_t WHERE id = 2")
            # A's delete reaches the hub first (the only write anywhere meanwhile),
            # so B's update comes later in hub order.
            poll(lambda: self.electric.hub_head() > head, what="A's delete in the hub")
            b.psql("UPDATE conflict_t SET content = 'updated on b' WHERE id = 2")
        finally:
            b.psql("ALTER SUBSCRIPTION postgres_2 ENABLE")
        a.wait_for("SELECT content FROM conflict_t WHERE id = 2", "updated on b")
        b.wait_for("SELECT content FROM conflict_t WHERE id = 2", "updated on b")
        a.wait_for("SELECT other FROM conflict_t WHERE id = 2", "x")

    def test_status_reports_every_link(self):
        self.a.psql("INSERT INTO entries_default (content) VALUES ('status probe')")
        self.b.wait_for("SELECT count(*) FROM entries_default WHERE content = 'status probe'", "1")
        self.assertEqual(self.electric.status(),
                         {"connectors": {"postgres_1": True, "postgres_2": True}, "hub": True, "vaxine": False})
        with urllib.request.urlopen(
                f"http://127.0.0.1:{self.electric.status_port}/api/status/details", timeout=5) as r:
            details = json.loads(r.read())
        self.assertEqual(details["connectors"]["postgres_1"]["state"], "ready")
        self.assertGreater(details["hub"]["head"], 0)
        slots = details["postgres_publisher"]["slots"]
        self.assertTrue(slots["postgres_1"]["streaming"] and slots["postgres_2"]["streaming"])
        self.assertIn("pg:postgres_2", details["hub"]["consumers"])
        self.assertIn("satellite", details)
        self.assertEqual(details["migrations"]["postgres_1"]["pending_migrations"], [])

    @seeded()
    def test_random_concurrent_writes_on_overlapping_rows_converge(self, rng):
        """
        Both databases write the same 40 keys at once — inserts, updates of
        one or both columns, deletes, several per transaction — with the
        subscriptions flapping; in the end both hold the same rows.
        """
        # B's subscription goes down while both write, and comes back.
        self.b.psql("ALTER SUBSCRIPTION postgres_2 DISABLE")
        head = self.electric.hub_head()
        procs = [run_psql_script(pg, random_workload(rng, who)) for pg, who in ((self.a, "a"), (self.b, "b"))]
        wait_for_writes_while_disabled(self.electric, head, procs)
        self.b.psql("ALTER SUBSCRIPTION postgres_2 ENABLE")
        for p in procs:
            self.assertEqual(p.wait(120), 0)
        text = wait_same(self.a, self.b, "random_t", timeout=120)
        self.assertTrue(text, "the random workload left no rows at all")
        for pg in (self.a, self.b):
            self.assertNotIn("duplicate key value", pg.log())

    def test_many_transactions_both_directions(self):
        n = 10000
        procs = []
        for pg, who in ((self.a, "a"), (self.b, "b")):
            sql = (f"DO $$ BEGIN FOR i IN 1..{n} LOOP "
                   f"INSERT INTO load_t VALUES ('{who}' || i, i, '{who}'); COMMIT; END LOOP; END $$;")
            procs.append(subprocess.Popen(
                ["/usr/lib/postgresql/15/bin/psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(pg.port),
                 "-U", "electric", "-d", "electric", "-c", sql],
                env={"PGPASSWORD": "password", "PATH": "/usr/bin:/bin"}))
        for p in procs:
            self.assertEqual(p.wait(300), 0)
        wait_same(self.a, self.b, "load_t", timeout=300, expect_rows=2 * n)
        for pg in (self.a, self.b):
            self.assertNotIn("duplicate key value", pg.log())
