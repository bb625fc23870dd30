"""
The Vaxine hub (electric/vaxine/hub.py) through IHub: transactions appended per second (each
written into Vaxine, read back from the stream and stored locally) beside the embedded hub in the
same run; a second Electric catching up from the start of the stream; one big transaction
through begin/add/commit.

    .venv/bin/python bench/bench_vaxine_hub.py [--transactions N] [--concurrency C] [--big ROWS]

Uses a real Vaxine node (../shared/vaxine) in a temporary directory when it exists, else the
fake from tests/ (then the figures measure the fake, and say so).  Prints figures only.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, reactor, task  # noqa: E402

from electric.hub.embedded import EmbeddedHub  # noqa: E402
from electric.hub.interface import CHUNK_CHANGES, UPSERT, RowChange, Transaction  # noqa: E402
from electric.vaxine.hub import VaxineHub  # noqa: E402
from tests.vaxine_helpers import FakeNode, RealVaxine, real_available  # noqa: E402


def txn(origin, i):
    return Transaction(origin, i.to_bytes(8, "big"), 1_700_000_000_000_000 + i,
                       (RowChange("public", "bench", UPSERT, (str(i % 1000),), {"id": str(i % 1000), "v": f"value {i}"}),))


@defer.inlineCallbacks
def appends(hub, origin, n, concurrency):
    start = time.perf_counter()
    it = iter(range(n))

    @defer.inlineCallbacks
    def worker():
        for i in it:
            yield hub.append(txn(origin, i))

    yield defer.gatherResults([worker() for _ in range(concurrency)], consumeErrors=True)
    return n / (time.perf_counter() - start)


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@defer.inlineCallbacks
def main(args):
    node = RealVaxine() if real_available() else FakeNode()
    yield node.start()
    what = "real Vaxine node" if node.is_real else "FAKE Vaxine (tests/fake_vaxine.py; figures measure the fake)"
    print(f"{what}, {args.transactions} transactions, {args.concurrency} appenders")
    try:
        embedded = EmbeddedHub(tempfile.mkdtemp(prefix="bench-emb-"), reactor, compact_interval=0)
        embedded.startService()
        ref = yield appends(embedded, "embedded", args.transactions, args.concurrency)
        yield embedded.stopService()

        a = VaxineHub(tempfile.mkdtemp(prefix="bench-vx-"), node.host, node.pb_port, node.repl_port, 5.0, reactor,
                      compact_interval=0)
        a.startService()
        while not a.ready:
            yield task.deferLater(reactor, 0.05, lambda: None)
        rate = yield appends(a, "postgres_a", args.transactions, args.concurrency)
        print(f"appends/s: Vaxine hub {rate:,.0f}  | embedded hub {ref:,.0f}  (x{rate / ref:.2f})")

        b = VaxineHub(tempfile.mkdtemp(prefix="bench-vx-"), node.host, node.pb_port, node.repl_port, 5.0, reactor,
                      compact_interval=0)
        start = time.perf_counter()
        b.startService()
        while b.head() < a.head():
            yield task.deferLater(reactor, 0.02, lambda: None)
        took = time.perf_counter() - start
        print(f"second Electric catching up {a.head():,} transactions from the stream start: {took:.2f} s "
              f"({a.head() / took:,.0f} transactions/s)")

        before = rss_mb()
        start = time.perf_counter()
        buf = a.begin("postgres_a", (10**9).to_bytes(8, "big"))
        for s in range(0, args.big, CHUNK_CHANGES):
            yield buf.add([RowChange("public", "big", UPSERT, (str(k),), {"id": str(k), "v": "x" * 40})
                           for k in range(s, min(args.big, s + CHUNK_CHANGES))])
        committed = yield buf.commit()
        took = time.perf_counter() - start
        print(f"one {args.big:,}-row transaction through begin/add/commit: {took:.1f} s "
              f"({args.big / took:,.0f} rows/s), {committed.change_count:,} changes at one position; "
              f"peak RSS of this process {before:.0f} -> {rss_mb():.0f} MB (both hubs, node client)")
        while b.head() < a.head():
            yield task.deferLater(reactor, 0.05, lambda: None)
        print(f"  ... and in the second Electric {time.perf_counter() - start:.1f} s after the first add")
        yield b.stopService()
        yield a.stopService()
    finally:
        yield node.destroy()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--transactions", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--big", type=int, default=50_000)
    args = p.parse_args()
    d = main(args)
    d.addErrback(lambda f: f.printTraceback())
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
