"""
The hub's memory does not grow with a transaction's size: a 200,000-row
transaction is staged, committed, read back through a subscription and a
snapshot reader, and left as a backlog behind a stopped subscriber, in a
child process whose resident memory is sampled.  Holding the transaction as
Python objects would cost ~100 MB for the rows alone (bench_hub_memory.py
prints the reference); the hub's own bound is its SQLite page caches.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

from twisted.internet import threads
from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = 200_000
BOUND_MB = 100

CHILD = r"""
import json, sys
from twisted.internet import defer, task
from electric.hub.embedded import EmbeddedHub
from electric.hub.interface import CHUNK_CHANGES, UPSERT, RowChange

def kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])

def rows(s, e, tag):
    return [RowChange("public", "big", UPSERT, (str(i),), {"id": str(i), "v": f"{tag} {i}"}) for i in range(s, e)]

@defer.inlineCallbacks
def main(reactor):
    data_dir, n = sys.argv[1], int(sys.argv[2])
    hub = EmbeddedHub(data_dir, reactor, compact_interval=0)
    hub.startService()
    buf = hub.begin("warm", b"0")
    yield buf.add(rows(0, 10, "warm"))
    yield buf.commit()
    reader = yield hub.snapshot()
    yield reader.next(10)
    idle = kb("VmRSS")
    stopped = hub.subscribe(hub.head())
    buf = hub.begin("pg_a", b"big")
    for s in range(0, n, CHUNK_CHANGES):
        yield buf.add(rows(s, min(n, s + CHUNK_CHANGES), "row"))
    c = yield buf.commit()
    sub = hub.subscribe(c.position - 1)
    read = 0
    while sub.position < c.position:
        for item in (yield sub.next(100)):
            read += len(item.changes)
    reader = yield hub.snapshot()
    snap = 0
    while True:
        chunk = yield reader.next(CHUNK_CHANGES)
        if not chunk:
            break
        snap += len(chunk)
    out = {"idle_kb": idle, "peak_kb": kb("VmHWM"), "read": read, "snapshot": snap, "count": c.change_count,
           "backlog": hub.head() - stopped.position}
    yield hub.stopService()
    print(json.dumps(out))

task.react(main)
"""


class MemoryBoundTests(unittest.TestCase):
    timeout = 600

    def test_big_transaction_costs_bounded_memory(self):
        tmp = tempfile.mkdtemp(prefix="hubmem-")
        self.addCleanup(shutil.rmtree, tmp, True)

        def run():
            return subprocess.run([sys.executable, "-c", CHILD, os.path.join(tmp, "hub"), str(ROWS)],
                                  cwd=ROOT, capture_output=True, text=True, timeout=500)

        d = threads.deferToThread(run)

        def check(proc):
            self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            grown = (out["peak_kb"] - out["idle_kb"]) / 1024
            print(f"{ROWS}-row transaction through the hub: peak RSS {grown:.0f} MB above idle "
                  f"({out['idle_kb'] // 1024} MB)")
            self.assertEqual((out["count"], out["read"], out["snapshot"]), (ROWS, ROWS, ROWS))  # the warm-up rows were overwritten
            self.assertEqual(out["backlog"], 1)
            self.assertLess(grown, BOUND_MB, f"peak RSS grew by {grown:.0f} MB for a {ROWS}-row transaction")

        return d.addCallback(check)
