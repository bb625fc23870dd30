"""
Durable appends per second of the embedded hub, beside a reference measured in
the same run on the same disk: raw sqlite3, one single-row INSERT + COMMIT per
transaction with WAL and synchronous=FULL (what a naive durable log costs).

    .venv/bin/python bench/bench_hub.py [--dir DIR] [--seconds S] [--rows N]

Prints figures only; no assertions.  Takes about 1-3 minutes.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from electric.hub.embedded import EmbeddedHub  # noqa: E402
from electric.hub.interface import UPSERT, RowChange, Transaction  # noqa: E402
from tests import seeds  # noqa: E402


def reference(path, seconds):
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t (v) VALUES (?)", ("x" * 40,))
        conn.execute("COMMIT")
        n += 1
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


class Load:
    """`concurrency` appenders, each appending its next transaction as soon as the previous one is durable."""

    def __init__(self, hub, make_txn, concurrency, seconds):
        self.hub = hub
        self.make_txn = make_txn
        self.concurrency = concurrency
        self.seconds = seconds
        self.done = 0
        self.seq = 0

    def run(self, clock):
        self.end = time.perf_counter() + self.seconds
        self.start = time.perf_counter()
        finished = defer.Deferred()
        self.running = self.concurrency

        def one(_=None):
            if time.perf_counter() >= self.end:
                self.running -= 1
                if self.running == 0:
                    finished.callback(self.done / (time.perf_counter() - self.start))
                return
            self.seq += 1
            d = self.hub.append(self.make_txn(self.seq))

            def ok(_):
                self.done += 1
                clock.callLater(0, one)

            d.addCallbacks(ok, finished.errback)

        for _ in range(self.concurrency):
            one()
        return finished


def small_state_txn(origin):
    def make(i):
        return Transaction(
            origin, i.to_bytes(8, "big"), 1_700_000_000_000_000 + i,
            (RowChange("public", "items", UPSERT, ("1",), {"id": "1", "content": f"value {i}", "n": str(i)}),),
        )

    return make


def big_state_txn(origin, nrows, rnd):
    def make(i):
        k = str(rnd.randrange(nrows))
        return Transaction(
            origin, i.to_bytes(8, "big"), 1_700_000_000_000_000 + i,
            (RowChange("public", "items", UPSERT, (k,), {"id": k, "content": f"value {i}", "n": str(i)}),),
        )

    return make


@defer.inlineCallbacks
def build_state(hub, nrows, batch=5000):
    """Fill `nrows` rows fast: big transactions, several in flight so they share commits."""
    start = time.perf_counter()
    ds = []
    for b in range(0, nrows, batch):
        chs = tuple(
            RowChange("public", "items", UPSERT, (str(k),), {"id": str(k), "content": "initial", "n": "0"})
            for k in range(b, min(nrows, b + batch))
        )
        ds.append(hub.append(Transaction("loader", b.to_bytes(8, "big"), 0, chs)))
        if len(ds) >= 8:
            yield defer.gatherResults(ds)
            ds = []
    yield defer.gatherResults(ds)
    return time.perf_counter() - start


@defer.inlineCallbacks
def main(clock):
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=None, help="directory on the disk to measure (default: a temp dir under ./)")
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of each measurement")
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of state for the big-state run")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="bench_hub_", dir=args.dir or os.getcwd())
    try:
        ref = reference(os.path.join(base, "reference.sqlite3"), args.seconds)
        print(f"reference: raw sqlite3 INSERT+COMMIT (WAL, synchronous=FULL): {ref:9.0f} commits/s")

        hub = EmbeddedHub(os.path.join(base, "small"), clock, compact_interval=1.0, retain=10000)
        hub.startService()
        for conc in (1, 16, 64):
            rate = yield Load(hub, small_state_txn(f"small{conc}"), conc, args.seconds).run(clock)
            st = hub.status()
            print(
                f"hub, ~1 row of state, {conc:3d} concurrent appenders: {rate:9.0f} appends/s "
                f"(x{rate / ref:.2f} of reference; {st['appends'] / max(1, st['commit_groups']):.1f} appends/commit so far)"
            )
        yield hub.stopService()

        hub = EmbeddedHub(os.path.join(base, "big"), clock, compact_interval=1.0, retain=10000)
        hub.startService()
        took = yield build_state(hub, args.rows)
        print(f"built {args.rows} rows of state in {took:.1f} s ({args.rows / took:.0f} rows/s in batched appends)")
        seed = seeds.choose()
        print(f"random keys: seed {seed} (same keys again: {seeds.ENV}={seed})")
        rnd = random.Random(seed)
        for conc in (1, 64):
            rate = yield Load(hub, big_state_txn(f"big{conc}", args.rows, rnd), conc, args.seconds).run(clock)
            print(
                f"hub, {hub.status()['row_count']} rows of state, {conc:3d} concurrent appenders: {rate:9.0f} appends/s "
                f"(x{rate / ref:.2f} of reference)"
            )
        st = hub.status()
        print(f"status: head {st['head']}, horizon {st['horizon']}, log_length {st['log_length']}, "
              f"commit groups {st['commit_groups']}, file {os.path.getsize(hub.path) / 1e6:.0f} MB")
        yield hub.stopService()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    task.react(main)
