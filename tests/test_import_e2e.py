"""
End to end: rows the databases held before Electric came (or before a
database was added to CONNECTORS) reach the hub, every other database and
the clients; a conflicting key converges on one winner; an import killed by
SIGKILL is redone with nothing lost or doubled.

Real parts only: clusters from tests/pgcluster.py, `twistd electric` as a
child process, Postgres's own apply workers on port 5433, the real
electric-sql client.  Every test reads both Postgres logs for ERROR lines.
"""

from __future__ import annotations

import os
import tempfile

from twisted.internet import defer, threads
from twisted.trial import unittest

from tests.electric_process import ElectricProcess
from tests.node_client import NodeClient, ensure_installed
from tests.pgcluster import PgCluster
from tests.polling import poll, wait_until
from tests.publisher_helpers import subscriber_errors

# Electric stopped or killed on purpose: the subscriptions lose it for a moment.
RESTART_ERRORS = ("Electric is shutting down", "could not connect to the publisher",
                  "could not receive data from WAL stream")

ITEMS = "CREATE TABLE public.items (id text PRIMARY KEY, content text, n int4, electric_user_id text);"


def items(pg: PgCluster) -> str:
    return pg.psql("SELECT coalesce(string_agg(id || '=' || coalesce(content, 'NULL'), ',' ORDER BY id), '') "
                   "FROM items").strip()


def count(pg: PgCluster, table: str = "items") -> int:
    return int(pg.psql(f"SELECT count(*) FROM {table}").strip())


def wait_same(a: PgCluster, b: PgCluster, expected: str, timeout: float = 120.0) -> None:
    poll(lambda: items(a) == expected and items(b) == expected, timeout=timeout,
         what=f"both databases to hold {expected!r} (A={items(a)!r}, B={items(b)!r})", interval=0.3)


class ImportBase(unittest.TestCase):
    timeout = 900

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="electric-import-")
        self.clusters = []
        self.electric = None

    def cluster(self, sql: str) -> PgCluster:
        pg = PgCluster().start()
        self.clusters.append(pg)
        self.addCleanup(pg.destroy)
        pg.psql(sql)
        return pg

    def start_electric(self, connectors) -> ElectricProcess:
        if self.electric is None:
            self.electric = ElectricProcess(connectors, workdir=os.path.join(self.tmp, "electric"))
            os.makedirs(self.electric.workdir, exist_ok=True)
            self.addCleanup(lambda: self.electric.stop())
        else:
            self.electric.connectors = dict(connectors)
        self.electric.start()
        return self.electric

    def details(self):
        return self.electric.details()

    def import_of(self, name: str):
        d = self.details() or {}
        return ((d.get("connectors") or {}).get(name) or {}).get("import")

    def assert_no_errors(self, expected=()):
        for pg in self.clusters:
            self.assertEqual(subscriber_errors(pg, expected), [], pg.logfile)


class ExistingRows(ImportBase):
    def test_rows_on_both_sides_with_a_conflicting_key_converge(self):
        a = self.cluster(ITEMS + "INSERT INTO items (id, content) SELECT 'pre' || g, 'from A' FROM generate_series(1, 5) g;")
        b = self.cluster(ITEMS + "INSERT INTO items (id, content) VALUES ('pre1', 'from B'), ('only2', 'from B');")
        electric = self.start_electric({"postgres_1": a.url, "postgres_2": b.url})
        electric.wait_ready(timeout=180)
        imp1, imp2 = self.import_of("postgres_1"), self.import_of("postgres_2")
        self.assertEqual((imp1["state"], imp1["kind"], imp1["rows_done"]), ("done", "initial", 5))
        self.assertEqual((imp2["state"], imp2["kind"], imp2["rows_done"]), ("done", "initial", 2))
        self.assertEqual([(t["schema"], t["table"], t["rows_done"], t["finished"]) for t in imp1["tables"]],
                         [("public", "items", 5, True)])
        # The rule: hub order.  The import the hub committed later wins the key both held.
        winner = "from A" if imp1["hub_position"] > imp2["hub_position"] else "from B"
        expected = ",".join(sorted(["only2=from B", f"pre1={winner}"] + [f"pre{i}=from A" for i in range(2, 6)]))
        wait_same(a, b, expected)
        # Writes after the import replicate as before, once.
        a.psql("INSERT INTO items (id, content) VALUES ('after', 'from A')")
        wait_same(a, b, ",".join(sorted(expected.split(",") + ["after=from A"])))
        self.assertEqual(electric.status()["connectors"], {"postgres_1": True, "postgres_2": True})
        self.assert_no_errors()

    def test_database_added_later_holding_rows(self):
        a = self.cluster(ITEMS + "INSERT INTO items (id, content) VALUES ('a1', 'A'), ('shared', 'A');")
        electric = self.start_electric({"postgres_1": a.url})
        electric.wait_ready(timeout=180)
        poll(lambda: electric.hub_head() >= 1, what="A's import in the hub")
        a.psql("INSERT INTO items (id, content) VALUES ('a2', 'A later')")
        poll(lambda: electric.hub_head() >= 2, what="A's write in the hub")
        electric.stop()
        b = self.cluster(ITEMS + "INSERT INTO items (id, content) VALUES ('b1', 'B'), ('shared', 'B');")
        self.start_electric({"postgres_1": a.url, "postgres_2": b.url}).wait_ready(timeout=180)
        # postgres_1 keeps its slot and is not imported again; postgres_2 is.
        self.assertIsNone(self.import_of("postgres_1"))
        imp2 = self.import_of("postgres_2")
        self.assertEqual((imp2["state"], imp2["rows_done"]), ("done", 2))
        # B's import comes after A's rows in hub order: B's 'shared' wins,
        # and B gets every hub row through its subscription from position 0.
        wait_same(a, b, "a1=A,a2=A later,b1=B,shared=B")
        self.assertEqual(electric.hub_head(), 3)
        self.assert_no_errors(RESTART_ERRORS)


class Interrupted(ImportBase):
    ROWS = 300_000

    def test_sigkill_during_import_is_redone_exactly(self):
        a = self.cluster(ITEMS + f"INSERT INTO items (id, content, n) SELECT 'k' || g, 'v' || g, g "
                                 f"FROM generate_series(1, {self.ROWS}) g; ANALYZE items;")
        b = self.cluster(ITEMS)
        electric = self.start_electric({"postgres_1": a.url, "postgres_2": b.url})

        def copying():
            imp = self.import_of("postgres_1")
            return imp is not None and imp["state"] == "copying" and imp["rows_done"] > 0 and imp

        imp = poll(copying, timeout=180, what="postgres_1 importing", interval=0.05)
        self.assertLess(abs(imp["rows_estimated"] - self.ROWS), self.ROWS // 10)  # reltuples after ANALYZE
        self.assertFalse(electric.status()["connectors"]["postgres_1"])
        electric.kill()
        slot_before = a.psql("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'all_changes'")
        # Writes while Electric is down: after the dead snapshot, before the new one.
        a.psql("UPDATE items SET content = 'changed' WHERE id = 'k1'; DELETE FROM items WHERE id = 'k2';"
               "INSERT INTO items (id, content, n) VALUES ('new', 'while down', 0);")
        electric.start().wait_ready(timeout=600)
        self.assertIn("was interrupted", electric.log())
        slot_after = a.psql("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'all_changes'")
        self.assertNotEqual(slot_before, slot_after)
        imp = self.import_of("postgres_1")
        self.assertEqual((imp["state"], imp["rows_done"]), ("done", self.ROWS))
        a.psql("INSERT INTO items (id, content, n) VALUES ('after', 'streamed', 0)")
        poll(lambda: count(b) == self.ROWS + 1, timeout=600, what="every row in B", interval=1)
        same = "SELECT md5(string_agg(id || ':' || coalesce(content, '') || ':' || n, ',' ORDER BY id)) FROM items"
        poll(lambda: a.psql(same) == b.psql(same), timeout=120, what="A and B identical")
        self.assertEqual(b.psql("SELECT string_agg(id || '=' || content, '|' ORDER BY id) FROM items "
                                "WHERE id IN ('k1', 'k2', 'new')").strip(), "k1=changed|new=while down")
        # One import and one streamed write: nothing of the killed copy stayed.
        details = electric.details()
        self.assertEqual(details["hub"]["head"], 2)
        self.assert_no_errors(RESTART_ERRORS)


class Clients(ImportBase):
    @defer.inlineCallbacks
    def test_a_client_gets_the_imported_rows(self):
        ensure_installed()
        a = self.cluster(ITEMS + "INSERT INTO items (id, content, n) SELECT 'c' || g, 'pre', g FROM generate_series(1, 50) g;")
        electric = self.start_electric({"postgres_1": a.url})
        yield threads.deferToThread(electric.wait_ready, 180)
        client = NodeClient(os.path.join(self.tmp, "client.db"), electric.ws_port, "alice")
        self.addCleanup(client.kill)
        yield client.start()

        def rows():
            return client.query("SELECT count(*) AS c, min(content) AS lo, max(content) AS hi FROM items").addCallback(
                lambda r: r[0]["c"] == 50 and r[0]["lo"] == r[0]["hi"] == "pre")

        yield wait_until(rows, timeout=120, what="the imported rows in the client")
        yield threads.deferToThread(self.assert_no_errors)
