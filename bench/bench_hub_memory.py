"""
Resident memory of the embedded hub for one huge transaction, through the
hub alone: append it in chunks (begin/add/commit), read it back through a
subscription, a snapshot reader and a catch-up, and a backlog behind a
stopped subscriber.  Prints the process's RSS above idle for each phase (the
peak, reset between phases through /proc/self/clear_refs) and the time each
took.  Reference: the same rows as Python objects held at once (what a
whole-transaction hub costs), measured in a child process.

    .venv/bin/python bench/bench_hub_memory.py [--rows N] [--dir DIR]

Prints figures only; no assertions.  ~2-4 minutes for 1,000,000 rows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from electric.hub.embedded import EmbeddedHub  # noqa: E402
from electric.hub.interface import CHUNK_CHANGES, UPSERT, RowChange, Transaction  # noqa: E402


def status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def row(i, tag="row number"):
    k = str(i)
    return RowChange("public", "big", UPSERT, (k,), {"id": k, "v": f"{tag} {i}", "n": k})


REFERENCE = r"""
import sys
sys.path.insert(0, sys.argv[2])
from bench.bench_hub_memory import row, status_kb
from electric.hub.interface import Transaction
idle = status_kb("VmRSS")
t = Transaction("o", b"x", 0, tuple(row(i) for i in range(int(sys.argv[1]))))
print((status_kb("VmHWM") - idle) // 1024)
"""


class Phases:
    def __init__(self, idle_kb):
        self.idle = idle_kb
        self.rows = []

    def start(self):
        reset_peak()
        self.t0 = time.perf_counter()

    def end(self, what, n):
        took = time.perf_counter() - self.t0
        peak = status_kb("VmHWM")
        now = status_kb("VmRSS")
        self.rows.append((what, (peak - self.idle) / 1024, (now - self.idle) / 1024, took, n / took if took else 0))
        print(f"{what:<52} peak RSS +{(peak - self.idle) / 1024:6.0f} MB   after +{(now - self.idle) / 1024:6.0f} MB"
              f"   {took:6.1f} s  {n / took if took else 0:9.0f} rows/s", flush=True)


@defer.inlineCallbacks
def main(clock):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dir", default=None, help="directory on the disk to use (default: a temp dir under ./)")
    args = ap.parse_args()
    n = args.rows
    base = tempfile.mkdtemp(prefix="bench_hub_memory_", dir=args.dir or os.getcwd())
    try:
        hub = EmbeddedHub(os.path.join(base, "hub"), clock, compact_interval=0, retain=0)
        hub.startService()
        # Warm up every code path once, so idle includes the code and the thread pool.
        buf = hub.begin("warm", b"0")
        yield buf.add([row(i, "warm") for i in range(10)])
        yield buf.commit()
        r = yield hub.snapshot()
        yield r.next(10)
        r.close()
        idle = status_kb("VmRSS")
        print(f"idle RSS {idle / 1024:.0f} MB; {n} rows; chunk {CHUNK_CHANGES} changes; "
              f"peak reset {'works' if reset_peak() else 'NOT available (peaks are lifetime peaks)'}")
        ph = Phases(idle)

        ph.start()
        stopped = hub.subscribe(hub.head())  # a subscriber that never reads: the backlog costs it nothing
        buf = hub.begin("pg_a", b"big-1", 1_700_000_000_000_000)
        for s in range(0, n, CHUNK_CHANGES):
            yield buf.add([row(i) for i in range(s, min(n, s + CHUNK_CHANGES))])
        ph.end("stage 1 transaction (begin/add)", n)

        ph.start()
        c = yield buf.commit()
        ph.end(f"commit (resolve, store; position {c.position}, {c.change_count} changes)", n)

        ph.start()
        sub = hub.subscribe(c.position - 1)
        got = 0
        while sub.position < c.position:
            for item in (yield sub.next(100)):
                got += len(item.changes)
        sub.close()
        ph.end(f"read back through a subscription ({got} changes)", got)

        ph.start()
        reader = yield hub.snapshot()
        got = 0
        while True:
            chunk = yield reader.next(CHUNK_CHANGES)
            if not chunk:
                break
            got += len(chunk)
        ph.end(f"snapshot reader ({got} rows)", got)

        ph.start()
        # Overwrite every row in a second big transaction, then compact it
        # away: a subscriber from 1 needs a catch-up of every row.
        buf = hub.begin("pg_a", b"big-2", 1_700_000_000_000_001)
        for s in range(0, n, CHUNK_CHANGES):
            yield buf.add([row(i, "second") for i in range(s, min(n, s + CHUNK_CHANGES))])
        c2 = yield buf.commit()
        yield hub.append(Transaction("pg_a", b"small", 0, (row(0, "small"),)))
        horizon = yield hub.compact()
        ph.end(f"second transaction (overwrite all), compact to {horizon}", n)

        ph.start()
        sub = hub.subscribe(1)
        got = 0
        while sub.position < c2.position:
            for item in (yield sub.next(100)):
                got += len(item.changes)
        sub.close()
        ph.end(f"catch-up from position 1 ({got} changes)", got)

        backlog = hub.head() - stopped.position
        stopped.close()
        yield hub.stopService()
        print(f"a stopped subscriber sat behind a backlog of {backlog} transactions ({2 * n + 1} changes) throughout")

        out = subprocess.run([sys.executable, "-c", REFERENCE, str(n), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))],
                             capture_output=True, text=True, check=True)
        print(f"reference: {n} RowChanges held at once as Python objects: +{int(out.stdout)} MB")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    task.react(main)
