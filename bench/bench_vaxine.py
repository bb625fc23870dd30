"""
The Vaxine links: hub transactions written per second over the PB link, and stream transactions
read and converted per second, each beside a raw-socket reference measured in the same run
against the same node.

    .venv/bin/python bench/bench_vaxine.py [--transactions N] [--concurrency C]

Uses a real Vaxine node (../shared/vaxine) in a temporary directory when it exists, else the
fake from tests/ (then the figures measure the fake, and say so).  Prints figures only; no
assertions.  Takes about a minute.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, reactor, threads  # noqa: E402

from electric.hub.interface import UPSERT, RowChange, Transaction  # noqa: E402
from electric.vaxine import antidote as A, datamodel as D, stream as S  # noqa: E402
from electric.vaxine.framing import FrameDecoder  # noqa: E402
from electric.vaxine.pb_client import AntidoteClient  # noqa: E402
from electric.vaxine.replication import ReplicationClient, WalQueue  # noqa: E402
from tests.vaxine_helpers import FakeNode, RealVaxine, real_available  # noqa: E402


def raw_round_trips(port, seconds=5.0):
    """Reference: sequential static reads of one register over a blocking socket, pre-encoded."""
    request = A.encode(A.static_read_objects([A.bound_object(b"bench-probe", A.LWWREG)]))
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        s.sendall(request)
        header = s.recv(4, socket.MSG_WAITALL)
        (length,) = struct.unpack(">I", header)
        s.recv(length, socket.MSG_WAITALL)
        n += 1
    elapsed = time.perf_counter() - start
    s.close()
    return n / elapsed


def raw_stream(port, expected):
    """Reference: read `expected` transaction frames from offset 0, no decoding."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    start = time.perf_counter()
    s.sendall(S.start_request(S.new_ref(), S.BEGINNING))
    decoder, frames, size = FrameDecoder(S.MAX_FRAME), 0, 0
    while frames < expected + 1:
        data = s.recv(1 << 16)
        if not data:
            raise RuntimeError("stream closed")
        for f in decoder.feed(data):
            frames += 1
            size += len(f)
    elapsed = time.perf_counter() - start
    s.close()
    return expected / elapsed, size / expected


def hub_txn(i):
    row = {"id": str(i), "title": f"item {i}", "body": "x" * 40, "n": str(i % 97)}
    return Transaction("postgres_1", i.to_bytes(8, "big"), 1660749606000000 + i,
                       (RowChange("public", "items", UPSERT, (str(i),), row),))


@defer.inlineCallbacks
def writes(client, first, count, concurrency):
    """`concurrency` writers, each writing its next transaction once the previous committed."""
    next_i = [first]
    end = first + count

    @defer.inlineCallbacks
    def writer():
        while next_i[0] < end:
            i = next_i[0]
            next_i[0] += 1
            yield client.write(D.transaction_updates(hub_txn(i), "all_tables"))

    start = time.perf_counter()
    yield defer.gatherResults([writer() for _ in range(concurrency)], consumeErrors=True)
    return count / (time.perf_counter() - start)


@defer.inlineCallbacks
def read_stream(node, expected):
    queue = WalQueue(high_water=256)
    client = ReplicationClient(queue, node.host, node.repl_port, offset=S.BEGINNING)
    start = time.perf_counter()
    client.startService()
    got = 0
    while got < expected:
        batch = yield queue.next(100)
        for txn in batch:
            D.from_wal(txn)
            got += 1
    elapsed = time.perf_counter() - start
    yield client.stopService()
    return expected / elapsed


@defer.inlineCallbacks
def main(args):
    node = RealVaxine() if real_available() else FakeNode()
    yield node.start()
    try:
        print(f"node: {node.description}")
        client = AntidoteClient(node.host, node.pb_port)
        client.startService()
        yield client.when_connected()
        # The references run in a thread, so they also work against the fake in this reactor.
        ref = yield threads.deferToThread(raw_round_trips, node.pb_port)
        n = args.transactions
        seq = yield writes(client, 0, n, 1)
        conc = yield writes(client, n, n, args.concurrency)
        total = 2 * n
        raw_rate, frame_size = yield threads.deferToThread(raw_stream, node.repl_port, total)
        stream_rate = yield read_stream(node, total)
        yield client.stopService()
        print(f"raw PB round trips/s (static read, blocking socket)    {ref:10.0f}")
        print(f"hub transactions written/s, 1 writer  (3 round trips)  {seq:10.0f}   x{seq / ref:.2f} of raw round trips")
        print(f"hub transactions written/s, {args.concurrency} writers                {conc:10.0f}   x{conc / ref:.2f}")
        print(f"raw stream frames/s from 0 (no decoding; {frame_size:.0f} B/txn) {raw_rate:10.0f}")
        print(f"stream transactions decoded + converted/s from 0      {stream_rate:10.0f}   x{stream_rate / raw_rate:.2f} of raw")
    finally:
        yield node.destroy()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    def run():
        d = main(args)
        d.addErrback(lambda f: (f.printTraceback(), None))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
