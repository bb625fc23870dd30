"""
PG A → Electric → PG B, beside native PG A → PG B logical replication.

Plain script (no asserts): prints rows/s for each path and their ratio, for
20,000 single-row transactions (pgbench, 4 clients) and for one 200,000-row
transaction.  Each figure is the time from the start of the load on A until
the last row is visible on B, divided into the row count.

Both paths run in the same process run, one after the other, on their own
throwaway PG 15 clusters (tests/pgcluster.py) with identical settings, so
the native figure is the reference for this machine.  Electric is wired from
its components: EmbeddedHub, a ConnectorService per database and the
port-5433 PublisherService.

    .venv/bin/python bench/bench_pg.py [--single N] [--big N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import psycopg2  # noqa: E402
from twisted.internet import defer, task, threads  # noqa: E402

from tests.pgcluster import PASSWORD, PGBIN, USER, PgCluster, free_port  # noqa: E402

SCHEMA = """
CREATE TABLE bench_single (id bigserial PRIMARY KEY, client int NOT NULL, payload text NOT NULL);
CREATE TABLE bench_big (id int PRIMARY KEY, payload text NOT NULL);
"""
PGBENCH_SCRIPT = "INSERT INTO bench_single (client, payload) VALUES (:client_id, md5(random()::text));\n"
BIG_SQL = "INSERT INTO bench_big SELECT g, md5(g::text) FROM generate_series(1, {n}) g"


def wait_rows(pg: PgCluster, table: str, n: int, timeout: float) -> float:
    """Blocks (thread) until `table` on `pg` has `n` rows; returns the monotonic time it did."""
    conn = psycopg2.connect(pg.dsn)
    conn.autocommit = True
    try:
        cur = conn.cursor()
        deadline = time.monotonic() + timeout
        while True:
            cur.execute(f"SELECT count(*) FROM {table}")
            have = cur.fetchone()[0]
            if have >= n:
                return time.monotonic()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{table} on port {pg.port} has {have} of {n} rows after {timeout} s")
            time.sleep(0.01)
    finally:
        conn.close()


def run_pgbench(pg: PgCluster, transactions: int, clients: int = 4) -> None:
    fd, path = tempfile.mkstemp(suffix=".sql")
    with os.fdopen(fd, "w") as f:
        f.write(PGBENCH_SCRIPT)
    try:
        subprocess.run(
            [f"{PGBIN}/pgbench", "-n", "-h", "127.0.0.1", "-p", str(pg.port), "-U", USER,
             "-c", str(clients), "-j", "2", "-t", str(transactions // clients), "-f", path, "electric"],
            env=dict(os.environ, PGPASSWORD=PASSWORD), check=True, capture_output=True, text=True)
    finally:
        os.unlink(path)


class Stages:
    """Electric runs only: when the hub had the load durable, and when port 5433 had sent it to B."""

    def __init__(self, reactor, hub, publisher, slot):
        self.hub, self.publisher, self.slot = hub, publisher, slot
        self.target = None
        self.t0 = 0.0
        self.seen = {}
        self.loop = task.LoopingCall(self._poll)
        self.loop.clock = reactor
        self.loop.start(0.005)

    def arm(self, target_head: int) -> None:
        self.target, self.t0, self.seen = target_head, time.monotonic(), {}

    def _poll(self) -> None:
        if self.target is None:
            return
        now = time.monotonic() - self.t0
        if "hub" not in self.seen and self.hub.head() >= self.target:
            self.seen["hub"] = now
        slot = self.publisher.status()["slots"].get(self.slot, {})
        if "sent" not in self.seen and slot.get("sent_position", 0) >= self.target:
            self.seen["sent"] = now

    def stop(self) -> None:
        if self.loop.running:
            self.loop.stop()


@defer.inlineCallbacks
def measure(a: PgCluster, b: PgCluster, single: int, big: int, timeout: float, stages=None):
    """(single-row rows/s, big-transaction rows/s) for whatever replicates A's tables to B."""
    results = {}
    if stages:
        stages.arm(stages.hub.head() + single)
    t0 = time.monotonic()
    yield threads.deferToThread(run_pgbench, a, single)
    loaded = time.monotonic()
    t1 = yield threads.deferToThread(wait_rows, b, "bench_single", single, timeout)
    results["single"] = (single / (t1 - t0), loaded - t0, t1 - t0, dict(stages.seen) if stages else {})
    if stages:
        stages.arm(stages.hub.head() + 1)
    t0 = time.monotonic()
    yield threads.deferToThread(a.psql, BIG_SQL.format(n=big))
    loaded = time.monotonic()
    t1 = yield threads.deferToThread(wait_rows, b, "bench_big", big, timeout)
    results["big"] = (big / (t1 - t0), loaded - t0, t1 - t0, dict(stages.seen) if stages else {})
    return results


def two_clusters(schema: str = SCHEMA):
    # synchronous_commit on (fsync stays off): with it off, WAL reaches a WAL sender only when the
    # WAL writer flushes, every 200 ms, and both paths would mostly measure that cadence.
    conf = ["synchronous_commit = on"]
    a = PgCluster(extra_conf=conf).start()
    b = PgCluster(extra_conf=conf).start()
    for pg in (a, b):
        pg.psql(schema)
    return a, b


def subscribe_native(a: PgCluster, b: PgCluster) -> None:
    """Blocking: native logical replication of all of A's tables to B, running when this returns."""
    a.psql("CREATE PUBLICATION bench FOR ALL TABLES")
    b.psql(f"CREATE SUBSCRIPTION bench CONNECTION 'host=127.0.0.1 port={a.port} user={USER}"
           f" password={PASSWORD} dbname=electric' PUBLICATION bench WITH (copy_data = false)")
    b.wait_for("SELECT count(*) FROM pg_stat_subscription WHERE pid IS NOT NULL", "1", 60)


@defer.inlineCallbacks
def native(single: int, big: int, timeout: float):
    a, b = yield threads.deferToThread(two_clusters)
    try:
        yield threads.deferToThread(subscribe_native, a, b)
        return (yield measure(a, b, single, big, timeout))
    finally:
        yield threads.deferToThread(a.destroy)
        yield threads.deferToThread(b.destroy)


class ElectricBetween:
    """
    Electric wired from its components between two running clusters (A as pg_a, B as pg_b):
    EmbeddedHub, a ConnectorService per database and the port-5433 PublisherService.
    `start()` fires once both connectors are ready and both subscriptions are streaming.
    """

    def __init__(self, reactor, a: PgCluster, b: PgCluster):
        self.reactor, self.a, self.b = reactor, a, b
        self.services = []
        self.hub = self.publisher = None
        self.data_dir = None

    @defer.inlineCallbacks
    def start(self):
        from electric.config import Config, parse_connectors
        from electric.hub.embedded import EmbeddedHub
        from electric.hub.offsets import OffsetStore
        from electric.postgres.source.connector import ConnectorService
        from electric.postgres.publisher.credentials import SubscriberCredentials
        from electric.postgres.publisher.service import PublisherService
        from electric.schema import SchemaRegistry

        reactor, a, b = self.reactor, self.a, self.b
        self.data_dir = data_dir = tempfile.mkdtemp(prefix="electric-bench-pg-")
        problems = []
        connectors = parse_connectors(f"pg_a={a.url};pg_b={b.url}", problems)
        assert not problems, problems
        config = Config(connectors=connectors, electric_host="127.0.0.1", postgres_replication_port=free_port(),
                        listen_host="127.0.0.1", data_dir=data_dir,
                        offset_storage_file=os.path.join(data_dir, "offsets.sqlite3"))
        self.hub = hub = EmbeddedHub(os.path.join(data_dir, "hub"), reactor)
        registry = SchemaRegistry()
        credentials = SubscriberCredentials(data_dir, [c.name for c in connectors])
        offsets = OffsetStore(config.offset_storage_file)
        self.publisher = publisher = PublisherService(config, hub, registry, credentials, offsets, reactor)
        connector_services = [
            ConnectorService(config, c, hub, registry, credentials, publisher_ready=publisher.when_listening,
                             reactor=reactor, echo=publisher.echo)
            for c in connectors]
        self.services = [hub, offsets, credentials, publisher] + connector_services
        for s in self.services:
            s.startService()
        deadline = time.monotonic() + 120
        while not all(s.state == "ready" for s in connector_services):
            if time.monotonic() > deadline:
                raise RuntimeError(f"connectors not ready: {[s.status() for s in connector_services]}")
            yield task.deferLater(reactor, 0.2, lambda: None)
        for pg in (a, b):
            yield threads.deferToThread(
                pg.wait_for, "SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'", "0", 60)
            yield threads.deferToThread(
                pg.wait_for, "SELECT count(*) FROM pg_stat_subscription WHERE pid IS NOT NULL", "1", 60)

    @defer.inlineCallbacks
    def stop(self):
        for s in reversed(self.services):
            yield defer.maybeDeferred(s.stopService)
        self.services = []
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


@defer.inlineCallbacks
def through_electric(reactor, single: int, big: int, timeout: float):
    a, b = yield threads.deferToThread(two_clusters)
    electric = ElectricBetween(reactor, a, b)
    try:
        yield electric.start()
        hub, publisher = electric.hub, electric.publisher
        stages = Stages(reactor, hub, publisher, "pg_b")
        try:
            result = yield measure(a, b, single, big, timeout, stages)
        finally:
            stages.stop()
        result["hub"] = hub.status()
        result["publisher"] = publisher.status()
        return result
    finally:
        yield electric.stop()
        yield threads.deferToThread(a.destroy)
        yield threads.deferToThread(b.destroy)


@defer.inlineCallbacks
def main(reactor, argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--single", type=int, default=20_000, help="single-row transactions (default 20000)")
    p.add_argument("--big", type=int, default=200_000, help="rows in the one big transaction (default 200000)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for B to catch up")
    args = p.parse_args(argv)
    print(f"PG A → PG B: {args.single} single-row transactions (pgbench, 4 clients), "
          f"then one {args.big}-row transaction", flush=True)
    nat = yield native(args.single, args.big, args.timeout)
    print("native logical replication done", flush=True)
    ele = yield through_electric(reactor, args.single, args.big, args.timeout)
    print("through Electric done", flush=True)
    print()
    print(f"{'workload':<28}{'native rows/s':>15}{'Electric rows/s':>17}{'Electric/native':>17}")
    for key, label in (("single", f"{args.single} x 1-row txns"), ("big", f"1 x {args.big}-row txn")):
        n, e = nat[key][0], ele[key][0]
        print(f"{label:<28}{n:>15,.0f}{e:>17,.0f}{e / n:>17.2f}")
    print()
    for key, label in (("single", "single-row"), ("big", "big")):
        seen = ele[key][3]
        print(f"{label}: load on A took {nat[key][1]:.2f} s (native run) / {ele[key][1]:.2f} s (Electric run);"
              f" rows on B after {nat[key][2]:.2f} s / {ele[key][2]:.2f} s")
        print(f"    Electric run: durable in the hub after {seen.get('hub', float('nan')):.2f} s,"
              f" sent to B by port 5433 after {seen.get('sent', float('nan')):.2f} s")
    hub = ele["hub"]
    print(f"hub: head {hub.get('head')}, commit groups {hub.get('commit_groups')}, appends {hub.get('appends')}")


if __name__ == "__main__":
    task.react(main, (sys.argv[1:],))
