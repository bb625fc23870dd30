"""
Two databases kept in sync through Electric, in process: two ConnectorServices
read them, the EmbeddedHub orders and resolves, the PublisherService on a
free port feeds both subscriptions back.  Checks that writes cross both
ways, that rows Electric delivers (to the other database and back to the
origin) are never read back in as new writes, and that WAL is not held.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest

from tests.mesh import InProcessMesh
from tests.pgcluster import shared_cluster
from tests.polling import wait_until
from tests.test_pg_setup import CLUSTER_KEY

NAMES = ("postgres_a", "postgres_b")


class TwoDatabasesTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.pg = shared_cluster(CLUSTER_KEY)
        for name in NAMES:
            self.addCleanup(self._drop_database, name)
            self.pg.psql(f"CREATE DATABASE {name}_db", dbname="postgres")
            self.pg.psql("CREATE TABLE public.items (id text PRIMARY KEY, content text, n int)", dbname=f"{name}_db")
        self.mesh = InProcessMesh(self.pg, NAMES, prefix="einbound-e2e")
        self.addCleanup(self.mesh.stop)
        yield self.mesh.start()
        self.hub, self.connectors = self.mesh.hub, self.mesh.connectors

    def _drop_database(self, name):
        db = f"{name}_db"
        self.pg.psql(f'ALTER SUBSCRIPTION "{name}" DISABLE', dbname=db, check=False)
        self.pg.psql(f'ALTER SUBSCRIPTION "{name}" SET (slot_name = NONE)', dbname=db, check=False)
        self.pg.psql(f'DROP SUBSCRIPTION IF EXISTS "{name}"', dbname=db, check=False)
        self.pg.psql(f"SELECT pg_drop_replication_slot('slot_{name}') FROM pg_replication_slots "
                     f"WHERE slot_name = 'slot_{name}'", dbname="postgres", check=False)
        self.pg.psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", dbname="postgres", check=False)

    def sql(self, name, text):
        return self.pg.psql(text, dbname=f"{name}_db")

    def rows(self, name):
        return self.sql(name, "SELECT id, content, n FROM items ORDER BY id").splitlines()

    @defer.inlineCallbacks
    def test_writes_cross_both_ways_without_echo(self):
        a, b = NAMES
        self.sql(a, "INSERT INTO items VALUES ('1', 'from a', 1)")
        self.sql(b, "INSERT INTO items VALUES ('2', 'from b', 2)")
        expected = ["1|from a|1", "2|from b|2"]
        yield wait_until(lambda: self.rows(a) == expected and self.rows(b) == expected, timeout=60,
                         what="both rows in both databases")
        self.sql(b, "UPDATE items SET content = 'changed on b' WHERE id = '1'")
        expected = ["1|changed on b|1", "2|from b|2"]
        yield wait_until(lambda: self.rows(a) == expected and self.rows(b) == expected, timeout=60,
                         what="update crossed")
        self.sql(a, "DELETE FROM items WHERE id = '2'")
        yield wait_until(lambda: self.rows(a) == self.rows(b) == ["1|changed on b|1"], timeout=60,
                         what="delete crossed")
        # Every delivered row was applied under Electric's own origin and
        # dropped on the way back in; once both slots have read past the
        # current end of WAL, the hub holds exactly the four local writes.
        end = self.pg.psql("SELECT pg_current_wal_lsn()", dbname="postgres").strip()
        yield wait_until(lambda: self.pg.psql(
            f"SELECT bool_and(confirmed_flush_lsn >= '{end}') FROM pg_replication_slots WHERE slot_name LIKE 'slot_%'",
            dbname="postgres").strip() == "t", timeout=60, what="slots past the end of WAL")
        self.assertEqual(self.hub.status()["appends"], 4)
        self.assertEqual(self.hub.head(), 4)
        for svc in self.connectors.values():
            status = svc.status()
            self.assertTrue(status["ready"])
            self.assertEqual(status["state"], "ready")
            self.assertIsNone(status["last_error"])
