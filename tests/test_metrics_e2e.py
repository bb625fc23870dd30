"""
GET /metrics of a real `twistd electric` process: two Postgres 15 databases
replicating through it, a Satellite websocket client writing and reading,
and a client with a bad token.  The exposition text is parsed with
prometheus_client's own parser and every figure is checked against what the
test did (rows written, transactions, slots, clients, hub appends).
"""

from __future__ import annotations

import json
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.trial import unittest

from electric.satellite import codec
from electric.satellite.auth import JWTAuth
from electric.satellite.codec import ORIGINAL
from tests.electric_process import ElectricProcess
from tests.pgcluster import PgCluster
from tests.polling import wait_until
from tests.publisher_helpers import subscriber_errors
from tests.satellite_helpers import WsClient, client_txn, drain_autobahn_timers, msg, relation, start_req

KEY = "metrics-e2e-signing-key-of-at-least-32-bytes"
NAMES = ("postgres_a", "postgres_b")
ITEMS = ["id", "content", "n", "electric_user_id"]
INSTANCE = {"cluster_id": "metrics.test-cluster", "instance_id": "instance-7.metrics.test-cluster"}


class Scrape:
    """One /metrics answer: every sample by (name, labels other than the instance's)."""

    def __init__(self, text: str):
        self.text = text
        self.samples = {}
        self.families = {}
        for family in text_string_to_metric_families(text):
            self.families[family.name] = family
            for s in family.samples:
                labels = dict(s.labels)
                self.instance = (labels.pop("cluster_id", None), labels.pop("instance_id", None))
                if self.instance != (INSTANCE["cluster_id"], INSTANCE["instance_id"]):
                    raise AssertionError(f"{s.name}{s.labels} lacks the instance labels")
                self.samples[(s.name, frozenset(labels.items()))] = s.value

    def __call__(self, name, **labels):
        return self.samples.get((name, frozenset(labels.items())))


class MetricsOfARunningService(unittest.TestCase):
    timeout = 300

    def setUp(self):
        self.pg = PgCluster().start()
        self.addCleanup(self.pg.destroy)
        urls = {}
        for name in NAMES:
            self.pg.psql(f"CREATE DATABASE {name}_db", dbname="postgres")
            self.pg.psql("CREATE TABLE public.items (id text PRIMARY KEY, content text, n int4,"
                         " electric_user_id text)", dbname=f"{name}_db")
            # Two databases of one server: each connector needs its own slot.
            urls[name] = (f"postgresql://electric:password@127.0.0.1:{self.pg.port}/{name}_db"
                          f"?slot=slot_{name}")
        self.electric = ElectricProcess(urls, extra_env={
            "GLOBAL_CLUSTER_ID": INSTANCE["cluster_id"],
            "ELECTRIC_INSTANCE_ID": INSTANCE["instance_id"],
            "SATELLITE_AUTH_SIGNING_KEY": KEY,
        })
        self.addCleanup(self.electric.stop)
        self.electric.start().wait_ready()
        self.clients = []
        self.addCleanup(self._close_clients)

    @defer.inlineCallbacks
    def _close_clients(self):
        for c in self.clients:
            if c.proto is not None and not c.closed.called:
                c.proto.dropConnection(abort=True)
                yield c.wait_closed()
        yield drain_autobahn_timers()

    def scrape(self) -> Scrape:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.electric.status_port}/metrics", timeout=5) as r:
            self.assertEqual(r.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8")
            return Scrape(r.read().decode())

    def until(self, check, what):
        """Scrape until `check(scrape)` holds (the figures move as replication goes on)."""
        def attempt():
            s = self.scrape()
            return s if check(s) else None
        return wait_until(attempt, timeout=90, what=what, interval=0.2)

    def sql(self, name, text):
        return self.pg.psql(text, dbname=f"{name}_db")

    @defer.inlineCallbacks
    def client(self, client_id, token):
        c = WsClient(self.electric.ws_port)
        self.clients.append(c)
        yield c.connect()
        c.send(codec.auth_request(ORIGINAL, client_id, token))
        return c

    @defer.inlineCallbacks
    def test_every_figure_matches_what_happened(self):
        a, b = NAMES
        # Postgres A writes 7 rows in 3 transactions.
        self.sql(a, "INSERT INTO items (id, content, n) VALUES ('r1', 'one', 1)")
        self.sql(a, "INSERT INTO items (id, content, n) VALUES ('r2', 'two', 2), ('r3', 'three', 3)")
        self.sql(a, "BEGIN; INSERT INTO items (id, content, n) VALUES ('r4', 'x', 4), ('r5', 'x', 5);"
                    " UPDATE items SET content = 'changed' WHERE id = 'r1';"
                    " DELETE FROM items WHERE id = 'r2'; COMMIT;")
        yield wait_until(lambda: self.sql(b, "SELECT string_agg(id || ':' || content, ',' ORDER BY id) FROM items")
                         .strip() == "r1:changed,r3:three,r4:x,r5:x", timeout=60, what="A's rows in B")

        s = yield self.until(lambda s: s("electric_slot_acked_position", slot=b, connector=b) == 3
                             and s("electric_slot_acked_position", slot=a, connector=a) == 3,
                             "both subscribers confirmed the hub's 3 transactions")
        self.assertEqual(s("electric_connector_transactions_total", connector=a), 3)
        self.assertEqual(s("electric_connector_rows_total", connector=a), 7)
        self.assertEqual(s("electric_connector_transactions_total", connector=b), 0)
        self.assertEqual(s("electric_connector_rows_total", connector=b), 0)
        self.assertGreater(s("electric_connector_received_bytes_total", connector=a), 0)
        for name in NAMES:
            self.assertEqual(s("electric_connector_state", connector=name, state="ready"), 1)
            self.assertEqual(s("electric_connector_state", connector=name, state="backoff"), 0)
            self.assertGreaterEqual(s("electric_connector_lag_bytes", connector=name), 0)
            labels = {"slot": name, "connector": name}
            self.assertEqual(s("electric_slot_connected", **labels), 1)
            self.assertEqual(s("electric_slot_sent_position", **labels), 3)
            self.assertEqual(s("electric_slot_lag_transactions", **labels), 0)
            self.assertEqual(s("electric_slot_lag_seconds", **labels), 0)
        self.assertEqual(s("electric_hub_head_position"), 3)
        self.assertEqual(s("electric_hub_appends_total"), 3)
        self.assertEqual(s("electric_hub_append_latency_seconds_count"), 3)
        self.assertEqual(s("electric_hub_rows"), 4)
        self.assertEqual(s("electric_hub_log_transactions"), 3)
        self.assertEqual(s("electric_publisher_connections"), 2)
        # Each database's apply worker wrote A's 3 transactions; they come back as Electric's own and stop there.
        s = yield self.until(lambda s: s("electric_connector_transactions_dropped_total", connector=b) >= 3
                             and s("electric_connector_lag_seconds", connector=a) == 0
                             and s("electric_connector_lag_seconds", connector=b) == 0,
                             "the applied transactions read back and dropped, nothing pending")
        self.assertEqual(s("electric_info", regional_id="region-1.dev.electric-db", version="0.1.0"), 1)
        # Both databases were empty when their slots were created: imports of nothing, done.
        for name in (a, b):
            self.assertEqual(s("electric_connector_import_rows_total", connector=name), 0)
            self.assertEqual(s("electric_connector_import_progress_ratio", connector=name), 1)
        # No apply failure diagnosed on either database.
        self.assertEqual(s("electric_connector_apply_failures_total", connector=a), 0)
        self.assertEqual(s("electric_connector_apply_failures_total", connector=b), 0)

        # A Satellite client with a bad token, then a good one that reads and writes.
        intruder = yield self.client("intruder", "not-a-jwt")
        yield intruder.wait_closed()
        token, _ = JWTAuth(KEY, None).generate("alice")
        alice = yield self.client("alice-laptop", token)
        self.assertEqual(codec.message_name((yield alice.recv_message(ORIGINAL))), "SatAuthResp")
        self.assertEqual(codec.message_name((yield alice.recv_message(ORIGINAL))), "SatInStartReplicationReq")
        alice.send(msg(ORIGINAL, "SatInStartReplicationResp"))
        alice.send(start_req(ORIGINAL, b""))  # from the start: the initial sync
        self.assertEqual(codec.message_name((yield alice.recv_message(ORIGINAL))), "SatInStartReplicationResp")
        s = yield self.until(lambda s: s("electric_satellite_clients") == 1, "alice connected")
        self.assertEqual(s("electric_satellite_connections"), 1)
        self.assertEqual(s("electric_satellite_auth_failures_total"), 1)
        self.assertEqual(s("electric_errors_total", kind="satellite_auth_required"), 1)
        alice.send(relation(ORIGINAL, 0, "items", ITEMS))
        alice.send(client_txn(ORIGINAL, b"\x00\x00\x00\x01", 0, ["c1", "from alice", "9", None],
                              ts=int(time.time() * 1000)))
        yield wait_until(lambda: self.sql(a, "SELECT content FROM items WHERE id = 'c1'").strip() == "from alice"
                         and self.sql(b, "SELECT content FROM items WHERE id = 'c1'").strip() == "from alice",
                         timeout=60, what="alice's row in both databases")

        def received_transactions():
            logs = 0
            for frame in alice.frames:
                if codec.message_name(codec.decode(ORIGINAL, frame)) == "SatOpLog":
                    logs += 1
            return logs

        s = yield self.until(lambda s: s("electric_satellite_transactions_out_total") == received_transactions() >= 2
                             and s("electric_slot_lag_transactions", slot=a, connector=a) == 0
                             and s("electric_slot_lag_transactions", slot=b, connector=b) == 0,
                             "alice got the initial sync and her own write back; both databases confirmed it")
        self.assertEqual(s("electric_satellite_transactions_in_total"), 1)
        self.assertEqual(s("electric_satellite_refused_writes_total"), 0)
        self.assertEqual(s("electric_hub_head_position"), 4)
        self.assertEqual(s("electric_hub_appends_total"), 4)
        self.assertEqual(s("electric_hub_append_latency_seconds_count"), 4)
        self.assertEqual(s("electric_hub_append_latency_seconds_bucket", le="+Inf"), 4)
        self.assertEqual(s("electric_hub_rows"), 5)
        # Nothing failed anywhere else.
        errors = {dict(k[1])["kind"]: v for k, v in s.samples.items() if k[0] == "electric_errors_total"}
        self.assertEqual({k: v for k, v in errors.items() if v}, {"satellite_auth_required": 1})
        self.assertIn("connector_setup", errors)
        self.assertIn("pg_failed_login", errors)

        with urllib.request.urlopen(f"http://127.0.0.1:{self.electric.status_port}/api/status/details",
                                    timeout=5) as r:
            details = json.loads(r.read())
        self.assertEqual(details["instance"], {**INSTANCE, "regional_id": "region-1.dev.electric-db"})
        self.assertEqual(subscriber_errors(self.pg), [])
