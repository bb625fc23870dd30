"""
/metrics piece by piece, in process: the latency histogram, what each part's
`metrics()` counts (real hub, real port-5433 publisher with a protocol-level
subscriber, real websocket clients), the collector's exposition parsed back
with prometheus_client's parser, and the route on the HTTP API.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from twisted.web.client import Agent, readBody

from electric.config import Config
from electric.hub import positions
from electric.hub.embedded import EmbeddedHub
from electric.hub.interface import UNCHANGED, Transaction
from electric.hub.resolution import MemoryState
from electric.http.metrics import install_routes
from electric.http.status import HttpApi, HttpService
from electric.metrics import ElectricCollector, LatencyHistogram, exposition, registry_for
from electric.postgres.protocol import pgoutput
from electric.postgres.protocol.lsn import unix_to_pg_us
from electric.postgres.protocol.messages import CopyBothResponse, CopyData, Query
from electric.postgres.protocol.replication_messages import StandbyStatusUpdate
from electric.postgres.source import assembly
from electric.satellite import codec
from electric.satellite.codec import ORIGINAL
from tests.hub_helpers import dl, txn, up
from tests.publisher_helpers import ITEMS, Electric, connect
from tests.satellite_helpers import SatelliteFixture, client_txn, eventually, msg, relation

START = "START_REPLICATION SLOT \"{slot}\" LOGICAL {lsn} (proto_version '3', publication_names '\"all_tables\"')"


def scrape(collector: ElectricCollector) -> dict:
    """{(metric sample name, frozenset of labels without the instance's): value} from the exposition text."""
    out = {}
    text = exposition(registry_for(collector)).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k not in ("cluster_id", "instance_id")}
            out[(sample.name, frozenset(labels.items()))] = sample.value
    return out


def value(samples: dict, name: str, **labels):
    return samples.get((name, frozenset(labels.items())))


class HistogramTests(unittest.TestCase):
    def test_buckets_are_cumulative_and_a_bound_belongs_to_its_bucket(self):
        h = LatencyHistogram((0.01, 0.1, 1.0))
        for seconds in (0.001, 0.01, 0.05, 0.5, 7.0):
            h.observe(seconds)
        snap = h.snapshot()
        self.assertEqual(snap["buckets"], [(0.01, 2), (0.1, 3), (1.0, 4), (float("inf"), 5)])
        self.assertEqual(snap["count"], 5)
        self.assertAlmostEqual(snap["sum"], 7.561)


class HubMetricsTests(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="metrics-hub-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.hub = EmbeddedHub(self.dir, reactor, compact_interval=0)
        self.hub.startService()
        self.addCleanup(self.hub.stopService)

    @defer.inlineCallbacks
    def test_one_latency_observation_per_append_and_errors_by_kind(self):
        hub = self.hub
        first = txn(up("items", 1, content="a"))
        yield hub.append(first)
        yield defer.gatherResults([hub.append(txn(up("items", k, content="b"))) for k in range(2, 12)])
        yield hub.append(first)  # a duplicate: answered, not appended again
        yield self.assertFailure(hub.append(Transaction("", b"x", 0, ())), Exception)  # malformed: rejected
        m = hub.metrics()
        self.assertEqual((m["head"], m["appends"], m["duplicates"], m["rows"], m["log_length"]), (11, 11, 1, 11, 11))
        self.assertEqual(m["append_latency"]["count"], 11)
        self.assertEqual(m["append_latency"]["buckets"][-1], (float("inf"), 11))
        self.assertGreater(m["append_latency"]["sum"], 0)
        self.assertEqual(m["errors"], {"hub_rejected": 1, "hub_append_failed": 0})
        self.assertGreaterEqual(m["commit_groups"], 1)

    @defer.inlineCallbacks
    def test_conflicts_resolved_are_writes_that_met_a_concurrent_one(self):
        hub = self.hub
        yield hub.append(txn(up("items", 1, content="a", n="1")))
        # A saw (a, 1) and sets n: nothing else happened to the row meanwhile.
        yield hub.append(txn(up("items", 1, old={"id": "1", "content": "a", "n": "1"}, content="a", n="2"),
                             origin="pg_a"))
        self.assertEqual(hub.metrics()["conflicts"], 0)
        # B also saw (a, 1) and sets content: A's n=2 came first -> a conflict, both columns kept.
        r = yield hub.append(txn(up("items", 1, old={"id": "1", "content": "a", "n": "1"}, content="b", n="1"),
                                 origin="pg_b"))
        self.assertEqual(r.changes[0].row, {"id": "1", "content": "b", "n": "2"})
        self.assertEqual(hub.metrics()["conflicts"], 1)
        # An unchanged TOAST column is not a disagreement; a write without old values never counts.
        yield hub.append(txn(up("items", 1, old={"id": "1", "content": "b", "n": UNCHANGED}, content="c")))
        yield hub.append(txn(up("items", 1, content="d")))
        self.assertEqual(hub.metrics()["conflicts"], 1)
        # A delete of the row as it was before "d" (REPLICA IDENTITY FULL): the hub had moved on.
        yield hub.append(txn(dl("items", 1, content="c", n="2")))
        self.assertEqual(hub.metrics()["conflicts"], 2)
        # An update of the row as it was before that delete: the update wins over the delete.
        r = yield hub.append(txn(up("items", 1, old={"id": "1", "content": "c", "n": "2"}, content="e")))
        self.assertFalse(r.changes[0].deleted)
        self.assertEqual(hub.metrics()["conflicts"], 3)
        # The same rule, pure: each resolution says how many of its changes met a concurrent write.
        state = MemoryState()
        self.assertEqual(state.resolve_and_apply(txn(up("items", 1, content="a"))).conflicts, 0)
        res = state.resolve_and_apply(txn(up("items", 1, old={"id": "1", "content": "z"}, content="y"),
                                          up("items", 1, old={"id": "1", "content": "y"}, content="x")))
        self.assertEqual(res.conflicts, 1)


class ChunkedHubMetricsTests(unittest.TestCase):
    """Big transactions (begin/add/commit) on a hub with a tiny chunk, so one commit spans several chunks."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="metrics-chunked-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.hub = EmbeddedHub(self.dir, reactor, compact_interval=0, chunk=4)
        self.hub.startService()
        self.addCleanup(self.hub.stopService)

    @defer.inlineCallbacks
    def test_a_chunked_commit_is_one_append_one_latency_and_its_conflicts_add_up(self):
        hub = self.hub
        # Rows 0..11 as (a, 1); then rows 1, 5 and 10 (in different chunks of the
        # big transaction below) change to n=2 behind its back.
        yield hub.append(txn(*[up("items", k, content="a", n="1") for k in range(12)]))
        yield hub.append(txn(*[up("items", k, content="a", n="2") for k in (1, 5, 10)], origin="pg_b"))
        before = hub.metrics()
        self.assertEqual((before["appends"], before["chunked_commits"], before["conflicts"]), (2, 0, 0))
        self.assertEqual(before["append_latency"]["count"], 2)
        # A saw every row as (a, 1) and sets content: 12 changes in 3 chunks of 4,
        # staged 5 at a time; 3 of them met a concurrent write.
        changes = [up("items", k, old={"id": str(k), "content": "a", "n": "1"}, content="b", n="1")
                   for k in range(12)]
        buf = hub.begin("pg_a", b"big-1", 1_700_000_000_000_000)
        for i in range(0, len(changes), 5):
            yield buf.add(changes[i:i + 5])
        committed = yield buf.commit()
        self.assertEqual((committed.position, committed.change_count, committed.duplicate), (3, 12, False))
        m = hub.metrics()
        self.assertEqual((m["head"], m["appends"], m["chunked_commits"], m["conflicts"], m["rows"]),
                         (3, 3, 1, 3, 12))
        self.assertEqual(m["append_latency"]["count"], 3)  # the chunked commit is timed like an append
        self.assertEqual(m["append_latency"]["buckets"][-1], (float("inf"), 3))
        # The same transaction again (a resend after a reconnect): a duplicate, nothing counted twice.
        buf = hub.begin("pg_a", b"big-1", 1_700_000_000_000_000)
        yield buf.add(changes[:5])
        again = yield buf.commit()
        self.assertTrue(again.duplicate)
        m = hub.metrics()
        self.assertEqual((m["appends"], m["chunked_commits"], m["duplicates"], m["conflicts"]), (3, 1, 1, 3))
        self.assertEqual(m["append_latency"]["count"], 3)
        # A malformed big transaction is refused at begin, and counted with the rejected appends.
        self.assertRaises(Exception, hub.begin, "")
        self.assertEqual(hub.metrics()["errors"], {"hub_rejected": 1, "hub_append_failed": 0})
        samples = scrape(ElectricCollector(Config(), hub=hub))
        self.assertEqual(value(samples, "electric_hub_appends_total"), 3)
        self.assertEqual(value(samples, "electric_hub_chunked_commits_total"), 1)
        self.assertEqual(value(samples, "electric_hub_conflicts_resolved_total"), 3)
        self.assertEqual(value(samples, "electric_hub_append_latency_seconds_count"), 3)


class ConnectorLagTests(unittest.TestCase):
    def test_oldest_pending_commit_follows_the_acknowledgement_order(self):
        acks = assembly.AckTracker(0)
        self.assertIsNone(acks.oldest_pending_commit)
        first = acks.add(0x10, commit_timestamp=1_000)
        acks.add(0x18, done=True)  # dropped: never pending
        third = acks.add(0x20, commit_timestamp=3_000)
        self.assertEqual(acks.oldest_pending_commit, 1_000)
        acks.done(third)  # out of order: the first is still the oldest pending
        self.assertEqual((acks.oldest_pending_commit, acks.flushed), (1_000, 0))
        acks.done(first)
        self.assertEqual((acks.oldest_pending_commit, acks.flushed), (None, 0x20))

    def test_the_transaction_being_read_has_its_commit_time_from_begin(self):
        asm = assembly.TransactionAssembler("postgres_1", lambda schema, name: (None, None))
        self.assertIsNone(asm.open_commit_timestamp)
        asm.feed(pgoutput.Begin(0x100, unix_to_pg_us(1_700_000_000_000_000), 7))
        self.assertEqual(asm.open_commit_timestamp, 1_700_000_000_000_000)
        asm.feed(pgoutput.Commit(0x100, 0x108, unix_to_pg_us(1_700_000_000_000_000)))
        self.assertIsNone(asm.open_commit_timestamp)


class SlotMetricsTests(unittest.TestCase):
    """A protocol-level subscriber on the real publisher, with the publisher's clock under the test's control."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.clock = task.Clock()
        self.e = Electric(keepalive_interval=3600.0, sender_timeout=0, clock=self.clock)
        yield self.e.start()
        self.addCleanup(self.e.destroy)
        self.addCleanup(self.e.stop)
        self.items = self.e.register(ITEMS)
        self.collector = ElectricCollector(Config(), hub=self.e.hub, publisher=self.e.publisher)

    @defer.inlineCallbacks
    def test_position_lag_and_connected_per_slot(self):
        e = self.e
        commit_us = 1_800_000_000_000_000
        r1 = yield e.append(e.upsert(self.items, {"id": "a", "content": "x", "n": "1"}), ts=commit_us)
        s = scrape(self.collector)
        # Before any subscriber: each connector's slot is listed, not connected.
        self.assertEqual(value(s, "electric_slot_connected", slot="postgres_1", connector="postgres_1"), 0)
        self.assertEqual(value(s, "electric_slot_connected", slot="postgres_2", connector="postgres_2"), 0)
        self.assertIsNone(value(s, "electric_slot_lag_seconds", slot="postgres_1", connector="postgres_1"))

        c = yield connect(e.port, "postgres_1", e.password("postgres_1"))
        self.addCleanup(lambda: c.transport.abortConnection() if c.transport is not None else None)
        c.send(Query(START.format(slot="postgres_1", lsn="0/0")))
        yield c.until(lambda m: isinstance(m, CopyBothResponse))
        yield c.until(lambda m: isinstance(m, CopyData) and m.data[:1] == b"w"
                      and isinstance(pgoutput.decode(m.replication_message().data), pgoutput.Commit))
        self.clock.advance(commit_us / 1_000_000 + 7.5)  # the publisher's "now": 7.5 s after that commit
        s = scrape(self.collector)
        labels = {"slot": "postgres_1", "connector": "postgres_1"}
        self.assertEqual(value(s, "electric_slot_connected", **labels), 1)
        self.assertEqual(value(s, "electric_slot_sent_position", **labels), r1.position)
        self.assertEqual(value(s, "electric_slot_acked_position", **labels), 0)
        self.assertEqual(value(s, "electric_slot_lag_transactions", **labels), 1)
        self.assertEqual(value(s, "electric_slot_lag_seconds", **labels), 7.5)
        self.assertEqual(value(s, "electric_hub_head_position"), r1.position)

        end = positions.end_lsn(r1.position)
        c.send(StandbyStatusUpdate(end, end, end, 0, False).frame())
        yield eventually(lambda: e.publisher.slots["postgres_1"].stream.acked == r1.position)
        s = scrape(self.collector)
        self.assertEqual(value(s, "electric_slot_acked_position", **labels), r1.position)
        self.assertEqual(value(s, "electric_slot_lag_transactions", **labels), 0)
        self.assertEqual(value(s, "electric_slot_lag_seconds", **labels), 0)

        c.transport.loseConnection()
        yield eventually(lambda: e.publisher.slots["postgres_1"].active is None)
        r2 = yield e.append(e.upsert(self.items, {"id": "b", "content": "y", "n": "2"}))
        s = scrape(self.collector)
        self.assertEqual(value(s, "electric_slot_connected", **labels), 0)
        self.assertEqual(value(s, "electric_slot_acked_position", **labels), r1.position)
        self.assertEqual(value(s, "electric_slot_lag_transactions", **labels), r2.position - r1.position)
        self.assertIsNone(value(s, "electric_slot_sent_position", **labels))


class ChunkedSlotMetricsTests(unittest.TestCase):
    """A big hub transaction (several chunks, one position) sent to a subscriber: one entry of the slot's lag."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.clock = task.Clock()
        self.e = Electric(keepalive_interval=3600.0, sender_timeout=0, clock=self.clock, hub_kw={"chunk": 4})
        yield self.e.start()
        self.addCleanup(self.e.destroy)
        self.addCleanup(self.e.stop)
        self.items = self.e.register(ITEMS)
        self.collector = ElectricCollector(Config(), hub=self.e.hub, publisher=self.e.publisher)

    @defer.inlineCallbacks
    def test_lag_seconds_count_from_the_big_transactions_commit_until_it_is_confirmed(self):
        e = self.e
        commit_us = 1_800_000_000_000_000
        buf = e.hub.begin("postgres_9", b"big", commit_us)
        for k in range(0, 10, 3):
            yield buf.add([c for i in range(k, min(k + 3, 10))
                           for c in e.upsert(self.items, {"id": f"r{i}", "content": "x", "n": str(i)})])
        committed = yield buf.commit()
        c = yield connect(e.port, "postgres_1", e.password("postgres_1"))
        self.addCleanup(lambda: c.transport.abortConnection() if c.transport is not None else None)
        c.send(Query(START.format(slot="postgres_1", lsn="0/0")))
        yield c.until(lambda m: isinstance(m, CopyBothResponse))
        yield c.until(lambda m: isinstance(m, CopyData) and m.data[:1] == b"w"
                      and isinstance(pgoutput.decode(m.replication_message().data), pgoutput.Commit))
        stream = e.publisher.slots["postgres_1"].stream
        self.assertEqual(list(stream._unacked), [(committed.position, commit_us)])  # one entry for 3 chunks
        self.clock.advance(commit_us / 1_000_000 + 4.25)
        labels = {"slot": "postgres_1", "connector": "postgres_1"}
        s = scrape(self.collector)
        self.assertEqual(value(s, "electric_slot_sent_position", **labels), committed.position)
        self.assertEqual(value(s, "electric_slot_lag_transactions", **labels), 1)
        self.assertEqual(value(s, "electric_slot_lag_seconds", **labels), 4.25)
        end = positions.end_lsn(committed.position)
        c.send(StandbyStatusUpdate(end, end, end, 0, False).frame())
        yield eventually(lambda: stream.acked == committed.position)
        s = scrape(self.collector)
        self.assertEqual(value(s, "electric_slot_lag_transactions", **labels), 0)
        self.assertEqual(value(s, "electric_slot_lag_seconds", **labels), 0)
        self.assertEqual(list(stream._unacked), [])


class SatelliteMetricsTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.fx = yield SatelliteFixture(self).start()
        self.collector = ElectricCollector(Config(), hub=self.fx.hub, satellite=self.fx.service)

    @defer.inlineCallbacks
    def test_totals_over_clients_that_come_and_go(self):
        fx = self.fx
        c = yield fx.authed(ORIGINAL, "client-1", "alice", start_lsn=b"")
        s = scrape(self.collector)
        self.assertEqual((value(s, "electric_satellite_connections"), value(s, "electric_satellite_clients")), (1, 1))
        c.send(relation(ORIGINAL, 0, "items", ["id", "content", "n", "electric_user_id"]))
        c.send(client_txn(ORIGINAL, b"\x00\x00\x00\x01", 0, ["a", "from client", "5", None]))
        yield eventually(lambda: fx.service.metrics()["transactions_in"] == 1, message="client write durable")
        yield eventually(lambda: fx.service.metrics()["transactions_out"] == 1, message="its echo sent")
        # A second client that talks before authenticating is refused: an auth failure.
        bad = yield fx.client()
        bad.send(msg(ORIGINAL, "SatPingReq"))
        yield bad.wait_closed()
        # A third writes a value column n (int4) cannot take: refused whole.
        wrong = yield fx.authed(ORIGINAL, "client-3", "bob")
        wrong.send(relation(ORIGINAL, 0, "items", ["id", "content", "n", "electric_user_id"]))
        wrong.send(client_txn(ORIGINAL, b"\x00\x00\x00\x01", 0, ["b", "from bob", "five", None]))
        yield wrong.wait_closed()
        yield c.close()
        yield eventually(lambda: fx.service.metrics()["connections"] == 0, message="every connection gone")
        s = scrape(self.collector)
        self.assertEqual(value(s, "electric_satellite_clients"), 0)
        self.assertEqual(value(s, "electric_satellite_transactions_in_total"), 1)
        self.assertEqual(value(s, "electric_satellite_transactions_out_total"), 1)
        self.assertEqual(value(s, "electric_satellite_auth_failures_total"), 1)
        self.assertEqual(value(s, "electric_satellite_refused_writes_total"), 1)
        self.assertEqual(value(s, "electric_errors_total", kind="satellite_auth_required"), 1)
        self.assertEqual(value(s, "electric_errors_total", kind="satellite_invalid_request"), 1)
        self.assertEqual(value(s, "electric_hub_append_latency_seconds_count"), 1)


class _Broken:
    """A part whose metrics() fails (the collector must still report the others)."""

    def metrics(self):
        raise RuntimeError("counter store exploded")


class CollectorTests(unittest.TestCase):
    timeout = 30

    def hub(self):
        path = tempfile.mkdtemp(prefix="metrics-collector-")
        self.addCleanup(shutil.rmtree, path, True)
        hub = EmbeddedHub(path, reactor, compact_interval=0)
        hub.startService()
        self.addCleanup(hub.stopService)
        return hub

    @defer.inlineCallbacks
    def test_two_services_in_one_process_keep_their_own_registries(self):
        hub_a, hub_b = self.hub(), self.hub()
        yield hub_a.append(txn(up("items", 1, content="a")))
        config_a = Config(global_cluster_id="cluster-a", instance_id="a-1")
        config_b = Config(global_cluster_id="cluster-b", instance_id="b-1", regional_id="region-b")
        text_a = exposition(registry_for(ElectricCollector(config_a, hub=hub_a))).decode()
        text_b = exposition(registry_for(ElectricCollector(config_b, hub=hub_b))).decode()
        heads = {}
        for text in (text_a, text_b):
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "electric_hub_head_position":
                        heads[(sample.labels["cluster_id"], sample.labels["instance_id"])] = sample.value
                    if sample.name == "electric_info":
                        self.assertIn(sample.labels["regional_id"], ("region-1.dev.electric-db", "region-b"))
        self.assertEqual(heads, {("cluster-a", "a-1"): 1, ("cluster-b", "b-1"): 0})
        # Nothing went into prometheus_client's global registry.
        from prometheus_client import REGISTRY
        self.assertFalse([n for n in REGISTRY._names_to_collectors if n.startswith("electric_")])

    def test_a_failing_part_is_counted_and_hides_nothing_else(self):
        hub = self.hub()
        s = scrape(ElectricCollector(Config(), hub=hub, connectors={"postgres_1": _Broken()}, satellite=_Broken()))
        self.assertEqual(value(s, "electric_hub_head_position"), 0)
        self.assertEqual(value(s, "electric_errors_total", kind="metrics_collect"), 2)
        self.assertIsNone(value(s, "electric_connector_rows_total", connector="postgres_1"))
        self.assertIsNone(value(s, "electric_satellite_clients"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)


class RouteTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_metrics_route_serves_the_text_format_beside_the_status_api(self):
        tmp = tempfile.mkdtemp(prefix="metrics-route-")
        self.addCleanup(shutil.rmtree, tmp, True)
        hub = EmbeddedHub(os.path.join(tmp, "hub"), reactor, compact_interval=0)
        hub.startService()
        self.addCleanup(hub.stopService)
        yield hub.append(txn(up("items", 1, content="a")))
        config = dataclasses.replace(Config(status_port=0, listen_host="127.0.0.1"),
                                     global_cluster_id="route-test", instance_id="route-1")
        api = HttpApi(config, hub, {})
        install_routes(api.app, registry_for(ElectricCollector(config, hub=hub, api=api)))

        @api.app.route("/explode")
        def explode(request):
            raise RuntimeError("a handler bug")
        http = HttpService(config, api, reactor)
        http.startService()
        port = yield http.listening
        self.addCleanup(http.stopService)
        base = f"http://127.0.0.1:{port.getHost().port}"
        response = yield Agent(reactor).request(b"GET", f"{base}/explode".encode())
        yield readBody(response)
        self.assertEqual(response.code, 500)
        self.flushLoggedErrors(RuntimeError)
        response = yield Agent(reactor).request(b"GET", f"{base}/metrics".encode())
        body = (yield readBody(response)).decode()
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/plain; version=0.0.4; charset=utf-8"])
        samples = [s for f in text_string_to_metric_families(body) for s in f.samples]
        head = [s for s in samples if s.name == "electric_hub_head_position"]
        self.assertEqual([(h.value, h.labels) for h in head], [(1, {"cluster_id": "route-test", "instance_id": "route-1"})])
        errors = {s.labels["kind"]: s.value for s in samples if s.name == "electric_errors_total"}
        self.assertEqual(errors, {"http_internal": 1, "hub_append_failed": 0, "hub_rejected": 0, "metrics_collect": 0})
        response = yield Agent(reactor).request(b"GET", f"{base}/api/status/details".encode())
        import json
        details = json.loads((yield readBody(response)))
        self.assertEqual(details["instance"], {"cluster_id": "route-test", "instance_id": "route-1",
                                               "regional_id": "region-1.dev.electric-db"})

    @defer.inlineCallbacks
    def test_with_an_api_token_metrics_need_it_like_every_route_but_the_open_reads(self):
        # One rule for the whole API (electric/http/auth.py, deny by default):
        # /metrics is not an open read, so a scraper sends the token
        # (Prometheus: `authorization: credentials_file:`, see the README).
        tmp = tempfile.mkdtemp(prefix="metrics-token-")
        self.addCleanup(shutil.rmtree, tmp, True)
        hub = EmbeddedHub(os.path.join(tmp, "hub"), reactor, compact_interval=0)
        hub.startService()
        self.addCleanup(hub.stopService)
        token = "metrics-scrape-token-0123456789"
        config = Config(status_port=0, listen_host="127.0.0.1", api_token=token)
        api = HttpApi(config, hub, {})
        install_routes(api.app, registry_for(ElectricCollector(config, hub=hub, api=api)))
        http = HttpService(config, api, reactor)
        http.startService()
        port = yield http.listening
        self.addCleanup(http.stopService)
        base = f"http://127.0.0.1:{port.getHost().port}"
        from twisted.web.http_headers import Headers
        good = Headers({b"authorization": [f"Bearer {token}".encode()]})
        for headers in (None, Headers({b"authorization": [b"Bearer not-the-token-not-the-token"]})):
            for method in (b"GET", b"HEAD"):
                for path in ("/metrics", "//metrics", "/metrics/"):
                    response = yield Agent(reactor).request(method, f"{base}{path}".encode(), headers)
                    body = yield readBody(response)
                    self.assertEqual(response.code, 401, (method, path, headers))
                    self.assertNotIn(b"electric_", body)
        for method in (b"GET", b"HEAD"):
            response = yield Agent(reactor).request(method, f"{base}/metrics".encode(), good)
            body = (yield readBody(response)).decode()
            self.assertEqual(response.code, 200, method)
            if method == b"GET":
                self.assertIn("electric_hub_head_position",
                              [f.name for f in text_string_to_metric_families(body)])
        # The open reads stay open on the same server.
        response = yield Agent(reactor).request(b"GET", f"{base}/api/status".encode())
        yield readBody(response)
        self.assertEqual(response.code, 200)
