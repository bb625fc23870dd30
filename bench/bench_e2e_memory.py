"""
Electric's resident memory for one huge transaction end to end: Postgres A
-> `twistd electric` -> Postgres B and a real electric-sql@0.4.3 client,
then the same number of changes accumulating behind a stopped subscriber
(B's subscription disabled, the client stopped) and their catch-up, then a
new client's initial sync.  Prints, per phase, Electric's peak RSS above
idle (VmHWM of the twistd process, reset between phases) and the time.

    .venv/bin/python bench/bench_e2e_memory.py [--rows N]

Prints figures only; no assertions.  ~5-10 minutes for 1,000,000 rows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task, threads  # noqa: E402

from tests.big_e2e import BigMesh, RssSampler, mb  # noqa: E402
from tests.polling import sleep, wait_until  # noqa: E402


class Phase:
    def __init__(self, mesh, idle_kb, name, rows):
        self.mesh, self.idle, self.name, self.rows = mesh, idle_kb, name, rows

    def __enter__(self):
        self.mesh.electric.reset_peak_rss()
        self.sampler = RssSampler(self.mesh.electric).__enter__()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        took = time.perf_counter() - self.t0
        self.sampler.__exit__(*exc)
        if exc[0] is None:
            peak = self.mesh.electric.peak_rss_kb()
            print(f"{self.name:<58} peak RSS +{mb(peak - self.idle):5.0f} MB above idle   {took:6.1f} s"
                  f"   {self.rows / took:8.0f} rows/s", flush=True)


@defer.inlineCallbacks
def main(reactor):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    n = args.rows
    tmp = tempfile.mkdtemp(prefix="bench_e2e_memory_")
    m = BigMesh(tmp)
    try:
        yield threads.deferToThread(m.start)
        a, b, e = m.a, m.b, m.electric
        live = yield m.node("live")
        a.psql("INSERT INTO big VALUES (0, 'warm-up', 0)")
        yield m.wait_pg(b, 1)
        yield m.wait_node(live, 1)
        yield sleep(1.0)
        idle = e.rss_kb()
        print(f"Electric idle RSS {mb(idle):.0f} MB; one transaction of {n} rows", flush=True)

        with Phase(m, idle, "insert: A -> Electric -> B and a live client", n):
            yield threads.deferToThread(
                a.psql, f"INSERT INTO big SELECT g, 'row number ' || g, g FROM generate_series(1, {n}) g")
            yield m.wait_pg(b, n + 1, timeout=3600)
            yield m.wait_node(live, n + 1, timeout=3600)

        b.psql("ALTER SUBSCRIPTION postgres_2 DISABLE")
        yield live.stop()
        head = m.hub_head()
        with Phase(m, idle, "update of every row behind a stopped B and client", n + 1):
            yield threads.deferToThread(a.psql, "UPDATE big SET n = n + 1")
            yield wait_until(lambda: m.hub_head() > head, timeout=3600, interval=0.5)

        with Phase(m, idle, "catch-up of B and the client", n + 1):
            b.psql("ALTER SUBSCRIPTION postgres_2 ENABLE")
            again = yield m.node("live")
            yield m.wait_pg(b, n + 1, where="WHERE n = id + 1", timeout=3600)
            yield m.wait_node(again, n + 1, where="WHERE n = id + 1", timeout=3600)

        with Phase(m, idle, "initial sync of a new client", n + 1):
            late = yield m.node("late", user="bob")
            yield m.wait_node(late, n + 1, where="WHERE n = id + 1", timeout=3600)
        print(f"Electric RSS at the end {mb(e.rss_kb()):.0f} MB", flush=True)
    finally:
        yield m.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    task.react(main)
