"""
CPU cost of the inbound path, without Postgres: µs of reactor work per
replicated transaction, from the bytes of a replication stream to a
`Transaction` handed to the hub (which answers at once here), and rows/s of
one big transaction through the same path.

The stream is what a connector really reads while two databases replicate
single-row INSERTs through Electric, message for message:

* own:     B I C        a local single-row INSERT (goes to the hub)
* echo:    B O U C      the database applying Electric's echo of its own row
                        (the upsert trigger makes it an UPDATE; dropped)
* applied: B O I C      the database applying another database's row (dropped)
* big:     B I×N C      one transaction of N rows (staged in chunks)

CPU time (process_time), best of several rounds, so the figures hold on a
busy machine far better than wall-clock throughput does.  Figures only.

    .venv/bin/python bench/bench_inbound.py [--n 20000] [--big 200000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from electric.postgres.protocol import pgoutput as po  # noqa: E402
from electric.postgres.protocol.messages import CopyData  # noqa: E402
from electric.postgres.protocol.replication_messages import XLogData  # noqa: E402
from electric.postgres.source import assembly  # noqa: E402
from electric.postgres.source.connector import _Stream  # noqa: E402
from electric.postgres.source.replication import ReplicationClient  # noqa: E402
from electric.schema import Column, Table  # noqa: E402
from tests.test_pg_client_session import session, to_streaming  # noqa: E402

SUB_OID = 16999
TABLE = Table("public", "bench_single", (Column("id", "int8", 20, -1, True), Column("client", "int4", 23, -1, False),
                                         Column("payload", "text", 25, -1, False)), ("id",))
REL = po.Relation(16400, "public", "bench_single", "d",
                  (po.RelationColumn(1, "id", 20, -1), po.RelationColumn(0, "client", 23, -1),
                   po.RelationColumn(0, "payload", 25, -1)))


class Hub:
    """Answers every append at once; stages nothing (the chunks are dropped)."""

    def __init__(self):
        self.appended = 0
        self.rows = 0

    def append(self, txn):
        self.appended += 1
        self.rows += len(txn.changes)
        return defer.succeed(None)

    def begin(self, origin):
        hub = self

        class Buffer:
            def add(self, changes):
                hub.rows += len(changes)
                return defer.succeed(None)

            def commit(self, ts, origin_id=None):
                hub.appended += 1
                return defer.succeed(None)

            def abort(self):
                return defer.succeed(None)

        return Buffer()


class Transport:
    def write(self, data):
        pass

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass


def frames(kind, n, lsn):
    """The CopyData bytes of `n` transactions of `kind`, from WAL position `lsn`."""
    out = []
    for i in range(n):
        row = (str(i + 1), "1", "0123456789abcdef0123456789abcdef")
        if kind == "own":
            body = [po.Insert(REL.relation_id, row)]
        elif kind == "echo":
            body = [po.Origin(5, f"pg_{SUB_OID}"), po.Update(REL.relation_id, row)]
        else:
            body = [po.Origin(5, f"pg_{SUB_OID}"), po.Insert(REL.relation_id, row)]
        msgs = [po.Begin(lsn + 0x40, 1_000_000, 700 + i), *body, po.Commit(lsn + 0x40, lsn + 0x48, 1_000_000)]
        for m in msgs:
            out.append(CopyData(XLogData(lsn, lsn + 0x48, 0, m.encode()).encode()).encode())
        lsn += 0x50
    return out, lsn


def big_frames(rows, lsn):
    msgs = [po.Begin(lsn + 0x40, 1_000_000, 9)]
    msgs += [po.Insert(REL.relation_id, (str(i + 1), "7", "0123456789abcdef0123456789abcdef")) for i in range(rows)]
    msgs.append(po.Commit(lsn + 0x40, lsn + 0x48, 1_000_000))
    return [CopyData(XLogData(lsn, lsn + 0x48, 0, m.encode()).encode()).encode() for m in msgs], lsn + 0x50


def run(stream_bytes):
    """CPU seconds to push `stream_bytes` (in 64 KiB reads, as a socket delivers them) through a fresh connector."""
    hub = Hub()
    asm = assembly.TransactionAssembler("pg_a", lambda s, n: (TABLE, None), subscription_oid=SUB_OID)
    clock = task.Clock()
    try:
        stream = _Stream("pg_a", hub, asm, None, lambda e: print("error:", e), 0, reactor=clock)
    except TypeError:  # before status updates were coalesced
        stream = _Stream("pg_a", hub, asm, None, lambda e: print("error:", e), 0)
    client = ReplicationClient("electric", "pw", "db", "slot", "pub", stream, session=to_streaming(session("disable")))
    client.transport = Transport()
    stream.client = client
    client.dataReceived(CopyData(XLogData(0, 0, 0, REL.encode()).encode()).encode())
    reads = [stream_bytes[i:i + 65536] for i in range(0, len(stream_bytes), 65536)]
    start = time.process_time()
    for r in reads:
        client.dataReceived(r)
        clock.advance(0)  # the end of the reactor turn
    return time.process_time() - start, hub


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20_000, help="transactions per single-row kind")
    p.add_argument("--big", type=int, default=200_000, help="rows in the big transaction")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    print(f"inbound path, CPU µs per transaction (best of {args.rounds}); load {os.getloadavg()[0]:.1f}")
    lsn = 0x1000000
    total = 0.0
    for kind in ("own", "echo", "applied"):
        fr, lsn = frames(kind, args.n, lsn)
        data = b"".join(fr)
        best = min(run(data)[0] for _ in range(args.rounds))
        total += best
        print(f"  {kind:<8} {best / args.n * 1e6:7.1f} µs/txn")
    print(f"  {'all 3':<8} {total / args.n * 1e6:7.1f} µs per replicated single-row transaction")
    fr, lsn = big_frames(args.big, lsn)
    data = b"".join(fr)
    best, hub = min((run(data) for _ in range(max(1, args.rounds // 2))), key=lambda r: r[0])
    assert hub.rows == args.big, hub.rows
    print(f"  big      {best / args.big * 1e6:7.2f} µs/row ({args.big / best:,.0f} rows/s of inbound CPU)")


if __name__ == "__main__":
    main(sys.argv[1:])
