"""
Commit on PG A → visible on PG B latency at a steady rate, through Electric beside native logical
replication.

Plain script (no asserts).  pgbench drives A at a steady rate (default 1,000 single-row
transactions a second for 20 s, Poisson-scheduled by `--rate`); each row carries
`committed_at DEFAULT clock_timestamp()`, stamped on A as the row is inserted (a few µs before its
commit, so the figures err high by that).  On B a BEFORE INSERT OR UPDATE trigger, enabled ALWAYS
so the apply worker (a session_replication_role=replica session) fires it, sets
`arrived_at = clock_timestamp()`.  Its name sorts before Electric's own upsert trigger
("electric_upsert", electric/postgres/source/setup.py), so it runs first; Electric's trigger then
writes the row again from inside, which fires it once more a few µs later, so through Electric
arrived_at is the moment the row was written on B, not when the apply worker first saw it.
Both clusters share this machine's clock.  Once B holds every row A committed, B reports
p50 / p95 / p99 / max of arrived_at - committed_at.

The two paths run one after the other, each on its own fresh pair of throwaway PG 15 clusters
(bench_pg.two_clusters, same settings), native first as this machine's reference.

    .venv/bin/python bench/bench_latency.py [--rate 1000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psycopg2  # noqa: E402
from twisted.internet import defer, task, threads  # noqa: E402

from bench_pg import ElectricBetween, subscribe_native, two_clusters, wait_rows  # noqa: E402
from tests.pgcluster import PASSWORD, PGBIN, USER, PgCluster  # noqa: E402

SCHEMA = """
CREATE TABLE bench_latency (
    id bigserial PRIMARY KEY,
    payload text NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    arrived_at timestamptz
);
"""
# Triggers of one kind fire in name order: "bench_..." < "electric_upsert".
ARRIVAL_TRIGGER = """
CREATE FUNCTION bench_stamp_arrival() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.arrived_at := clock_timestamp();
  RETURN NEW;
END;
$$;
CREATE TRIGGER bench_arrival BEFORE INSERT OR UPDATE ON bench_latency
  FOR EACH ROW EXECUTE FUNCTION bench_stamp_arrival();
ALTER TABLE bench_latency ENABLE ALWAYS TRIGGER bench_arrival;
"""
PGBENCH_SCRIPT = "INSERT INTO bench_latency (payload) VALUES (md5(random()::text));\n"
STATS_SQL = """
SELECT count(*), count(ms),
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY ms),
       max(ms)
FROM (SELECT extract(epoch FROM arrived_at - committed_at) * 1000 AS ms FROM bench_latency) s
"""
SPAN_SQL = "SELECT count(*), extract(epoch FROM max(committed_at) - min(committed_at)) FROM bench_latency"


def clusters():
    a, b = two_clusters(SCHEMA)
    b.psql(ARRIVAL_TRIGGER)
    return a, b


def query(pg: PgCluster, sql: str):
    conn = psycopg2.connect(pg.dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()
    finally:
        conn.close()


def run_pgbench(pg: PgCluster, rate: int, seconds: int, clients: int) -> str:
    fd, path = tempfile.mkstemp(suffix=".sql")
    with os.fdopen(fd, "w") as f:
        f.write(PGBENCH_SCRIPT)
    try:
        done = subprocess.run(
            [f"{PGBIN}/pgbench", "-n", "-h", "127.0.0.1", "-p", str(pg.port), "-U", USER,
             "-c", str(clients), "-j", "2", "-R", str(rate), "-T", str(seconds), "-f", path, "electric"],
            env=dict(os.environ, PGPASSWORD=PASSWORD), check=True, capture_output=True, text=True)
        return done.stdout
    finally:
        os.unlink(path)


@defer.inlineCallbacks
def measure(a: PgCluster, b: PgCluster, rate: int, seconds: int, clients: int, timeout: float):
    load_before = os.getloadavg()
    out = yield threads.deferToThread(run_pgbench, a, rate, seconds, clients)
    load_after = os.getloadavg()
    rows, span = yield threads.deferToThread(query, a, SPAN_SQL)
    yield threads.deferToThread(wait_rows, b, "bench_latency", rows, timeout)
    count, stamped, (p50, p95, p99), worst = yield threads.deferToThread(query, b, STATS_SQL)
    tps = re.search(r"tps = ([\d.]+)", out)
    lag = re.search(r"rate limit schedule lag: avg ([\d.]+)", out)
    return {
        "rows": count, "unstamped": count - stamped, "rate": rows / float(span) if span else float("nan"),
        "pgbench_tps": float(tps.group(1)) if tps else float("nan"),
        "schedule_lag_ms": float(lag.group(1)) if lag else float("nan"),
        "p50": p50, "p95": p95, "p99": p99, "max": float(worst),
        "load_before": load_before, "load_after": load_after,
    }


@defer.inlineCallbacks
def native(rate, seconds, clients, timeout):
    a, b = yield threads.deferToThread(clusters)
    try:
        yield threads.deferToThread(subscribe_native, a, b)
        return (yield measure(a, b, rate, seconds, clients, timeout))
    finally:
        yield threads.deferToThread(a.destroy)
        yield threads.deferToThread(b.destroy)


@defer.inlineCallbacks
def through_electric(reactor, rate, seconds, clients, timeout):
    a, b = yield threads.deferToThread(clusters)
    electric = ElectricBetween(reactor, a, b)
    try:
        yield electric.start()
        return (yield measure(a, b, rate, seconds, clients, timeout))
    finally:
        yield electric.stop()
        yield threads.deferToThread(a.destroy)
        yield threads.deferToThread(b.destroy)


def fmt_load(load) -> str:
    return "/".join(f"{x:.2f}" for x in load)


@defer.inlineCallbacks
def main(reactor, argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=int, default=1000, help="transactions a second on A (default 1000)")
    p.add_argument("--seconds", type=int, default=20, help="seconds of load (default 20)")
    p.add_argument("--clients", type=int, default=4, help="pgbench clients (default 4)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for B to catch up")
    args = p.parse_args(argv)
    print(f"PG A → PG B latency: {args.rate} single-row tx/s on A for {args.seconds} s "
          f"(pgbench -R, {args.clients} clients)", flush=True)
    nat = yield native(args.rate, args.seconds, args.clients, args.timeout)
    print("native logical replication done", flush=True)
    ele = yield through_electric(reactor, args.rate, args.seconds, args.clients, args.timeout)
    print("through Electric done", flush=True)
    print()
    print(f"{'commit on A → visible on B':<28}{'native':>12}{'Electric':>12}{'Electric/native':>17}")
    for key in ("p50", "p95", "p99", "max"):
        n, e = nat[key], ele[key]
        print(f"{key + ' (ms)':<28}{n:>12.1f}{e:>12.1f}{e / n if n else float('nan'):>17.1f}")
    print()
    for label, r in (("native", nat), ("Electric", ele)):
        print(f"{label}: {r['rows']} rows ({r['unstamped']} without arrived_at), "
              f"achieved {r['rate']:,.0f} tx/s on A "
              f"(pgbench tps {r['pgbench_tps']:,.0f}, schedule lag avg {r['schedule_lag_ms']:.2f} ms); "
              f"load average {fmt_load(r['load_before'])} before, {fmt_load(r['load_after'])} after the load")


if __name__ == "__main__":
    task.react(main, (sys.argv[1:],))
