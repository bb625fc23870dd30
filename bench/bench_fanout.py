"""
Satellite fan-out to many websocket clients (issue 12 item 5): 1,000 and
10,000 connected clients, Electric's RSS, and the time from a commit until
each client has the SatOpLog -- beside a reference measured in the same run.

The clients run in another process (bench/fanout_clients.py: raw websocket
clients speaking the real Satellite protocol -- auth, start replication,
receive SatOpLog, acknowledge its LSN), so their work is not on Electric's
reactor.  Electric (hub, Satellite service, and with Postgres a connector and
the 5433 publisher) runs in this process.

For each N:
  * hub commit -> N clients: from the hub append being durable until each
    client has the transaction;
  * Postgres commit -> N clients: from psycopg2's COMMIT returning (a row
    inserted into a PG 15 cluster, read by the connector) until each client
    has it;
  * reference: a bare websocket server on the same reactor writing the same
    frame (same size as the SatOpLog) to N connections of the same client
    process, which acknowledges each message the same way.
p50/p99 over every delivery and p99 of the last of the N per round; RSS
of this process idle, with N clients connected; 1-minute load average.

    .venv/bin/python bench/bench_fanout.py [--clients 1000,10000] [--rounds 10] [--no-postgres]

Prints figures only; no assertions.  A few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import gc
import hashlib
import os
import resource
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from twisted.internet import defer, protocol, reactor, task, threads  # noqa: E402

from electric.config import Config  # noqa: E402
from electric.hub.embedded import EmbeddedHub  # noqa: E402
from electric.hub.interface import UPSERT, RowChange, Transaction  # noqa: E402
from electric.hub.offsets import OffsetStore  # noqa: E402
from electric.satellite import codec  # noqa: E402
from electric.satellite.service import SatelliteService  # noqa: E402
from electric.schema import SchemaRegistry  # noqa: E402

import bench_satellite  # noqa: E402

G = codec.ORIGINAL
ROUND_TIMEOUT = 120.0


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def load() -> str:
    return "load %.2f %.2f %.2f" % os.getloadavg()


def pct(values, p):
    return bench_satellite.pct(values, p)


def ms(x):
    return f"{x * 1000:8.1f} ms"


class Swarm(protocol.ProcessProtocol):
    """The client process: `ready` fires when every client streams; `txn(k)` when all have transaction k."""

    def __init__(self, n):
        self.n = n
        self.ready = defer.Deferred()
        self.exited = defer.Deferred()
        self.arrivals = {}
        self.waiters = {}
        self.errors = []
        self._buf = b""

    def outReceived(self, data):
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            kind, _, rest = line.decode().partition(" ")
            if kind == "ready":
                if not self.ready.called:
                    self.ready.callback(None)
            elif kind == "txn":
                k, _, times = rest.partition(" ")
                k = int(k)
                self.arrivals[k] = [float(t) for t in times.split(",")]
                d = self.waiters.pop(k, None)
                if d is not None:
                    d.callback(self.arrivals[k])
            elif kind == "error":
                self.errors.append(rest)
                if len(self.errors) <= 5:
                    print(f"   client error: {rest}")

    def errReceived(self, data):
        sys.stderr.write(data.decode(errors="replace"))

    def processEnded(self, reason):
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"client process ended before all were ready: {self.errors[:3]}"))
        for d in self.waiters.values():
            d.errback(RuntimeError("client process ended"))
        self.waiters.clear()
        self.exited.callback(None)

    def txn(self, k) -> defer.Deferred:
        if k in self.arrivals:
            return defer.succeed(self.arrivals[k])
        d = self.waiters[k] = defer.Deferred()
        return d.addTimeout(ROUND_TIMEOUT, reactor)

    @defer.inlineCallbacks
    def stop(self):
        self.transport.closeStdin()
        yield self.exited


WINDOW = [200]


def spawn(port, n, mode):
    swarm = Swarm(n)
    reactor.spawnProcess(swarm, sys.executable,
                         [sys.executable, os.path.join(HERE, "fanout_clients.py"), "--port", str(port), "--n", str(n),
                          "--mode", mode, "--window", str(WINDOW[0])], env=os.environ.copy())
    return swarm


# --- the reference: a bare websocket broadcast -------------------------------------


class RawWS(protocol.Protocol):
    """Just enough websocket server: the opening handshake, then bytes in are dropped."""

    def connectionMade(self):
        self.open = False
        self.buf = b""

    def dataReceived(self, data):
        if self.open:
            return
        self.buf += data
        if b"\r\n\r\n" not in self.buf:
            return
        key = next(line.split(b":", 1)[1].strip() for line in self.buf.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        self.open = True
        self.factory.conns.append(self)


def ws_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n <= 125:
        return bytes((0x82, n)) + payload
    return bytes((0x82, 126)) + n.to_bytes(2, "big") + payload


def oplog_frame() -> bytes:
    """A SatOpLog frame of the size the bench's transactions have (begin, one row, commit)."""
    pb = G.pb
    lsn = b"x" * 25
    row = codec.encode_row(G, ["id", "content"], {"id": "k1", "content": "x" * 40})
    return codec.encode(G, pb.SatOpLog(ops=[
        pb.SatTransOp(begin=pb.SatOpBegin(commit_timestamp=int(time.time() * 1000), lsn=lsn)),
        pb.SatTransOp(update=pb.SatOpUpdate(relation_id=20000, row_data=row)),
        pb.SatTransOp(commit=pb.SatOpCommit(commit_timestamp=int(time.time() * 1000), lsn=lsn)),
    ]))


@defer.inlineCallbacks
def raw_reference(n, rounds):
    factory = protocol.Factory()
    factory.protocol = RawWS
    factory.conns = []
    port = reactor.listenTCP(0, factory, interface="127.0.0.1", backlog=1024)
    swarm = spawn(port.getHost().port, n, "raw")
    yield swarm.ready
    frame = ws_frame(oplog_frame())
    per, last = [], []
    for k in range(rounds):
        t0 = time.monotonic()
        for c in factory.conns:
            c.transport.write(frame)
        times = yield swarm.txn(k)
        lat = [t - t0 for t in times]
        per += lat
        last.append(max(lat))
        yield task.deferLater(reactor, 0.05, lambda: None)
    yield swarm.stop()
    for c in factory.conns:
        c.transport.loseConnection()
    yield port.stopListening()
    return per, last


# --- Electric ---------------------------------------------------------------------


_seq = [0]


def hub_txn():
    _seq[0] += 1
    key = f"f{_seq[0]}"
    return Transaction("postgres_bench", _seq[0].to_bytes(8, "big"), int(time.time() * 1e6),
                       (RowChange("public", "items", UPSERT, (key,), {"id": key, "content": "x" * 40}),))


@defer.inlineCallbacks
def electric_rounds(swarm, first_k, rounds, commit):
    """`rounds` commits through `commit()` (a Deferred firing at the commit); latencies per delivery and per round."""
    per, last = [], []
    for i in range(rounds):
        yield commit()
        t0 = time.monotonic()
        times = yield swarm.txn(first_k + i)
        lat = [t - t0 for t in times]
        per += lat
        last.append(max(lat))
        yield task.deferLater(reactor, 0.05, lambda: None)
    return per, last


class GcPauses:
    """Garbage collector passes in this process (a full one over 10,000 connections' objects is long)."""

    def __init__(self):
        self.pauses = []
        self._t = {}
        gc.callbacks.append(self._cb)

    def _cb(self, phase, info):
        if phase == "start":
            self._t[info["generation"]] = time.monotonic()
        else:
            t0 = self._t.pop(info["generation"], None)
            if t0 is not None:
                self.pauses.append((info["generation"], time.monotonic() - t0))

    def take(self) -> str:
        p, self.pauses = self.pauses, []
        full = [d for g, d in p if g == 2]
        return (f"{len(p)} GC passes, {sum(d for _, d in p) * 1000:.0f} ms in all; {len(full)} full,"
                f" longest {max(full, default=0) * 1000:.0f} ms")


def server_state(service) -> str:
    """What the server thinks of its clients (printed when a round times out)."""
    conns = service.connections
    f = service.fanout
    return (f"{len(conns)} connections, {f.attached} on the shared cursor at {f.position},"
            f" {sum(1 for c in conns if c._subscription is not None)} on their own subscription,"
            f" {sum(1 for c in conns if c._paused)} paused, {sum(1 for c in conns if c._pulling)} pulling,"
            f" delivered {sorted(set(c.session.delivered for c in conns))[:10]}")


def line(label, got, ref, what="raw ws"):
    ratio = got / ref if ref else float("nan")
    print(f"     {label}: satellite {ms(got)}   {what} {ms(ref)}   ratio {ratio:6.1f}x")


@defer.inlineCallbacks
def main(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"bench_fanout: {os.cpu_count()} cpus, python {sys.version.split()[0]}, open files limit {hard}, {load()}")
    tmp = tempfile.mkdtemp(prefix="bench-fanout-")
    pgside = None
    try:
        registry = SchemaRegistry()
        registry.register(bench_satellite.items_table())
        hub = EmbeddedHub(os.path.join(tmp, "hub"), reactor, compact_interval=0)
        hub.startService()
        offsets = OffsetStore(os.path.join(tmp, "offsets.db"))
        offsets.startService()
        config = dataclasses.replace(Config.from_environ({}), websocket_port=0, listen_host="127.0.0.1")
        service = SatelliteService(config, hub, registry, offsets, reactor=reactor)
        service.startService()
        yield service.listening
        if args.postgres:
            pgside = bench_satellite.PostgresSide(tmp, hub, registry, offsets)
            yield pgside.start()
        idle = rss_mb()
        gcs = GcPauses()
        print(f"Electric RSS idle: {idle:.0f} MB")
        for n in args.clients:
            print()
            print(f"N = {n} clients  ({load()})")
            t = time.monotonic()
            swarm = spawn(service.port, n, "satellite")
            yield swarm.ready
            connected = time.monotonic() - t
            print(f"   connected and streaming in {connected:.1f} s; Electric RSS {rss_mb():.0f} MB"
                  f" (+{rss_mb() - idle:.0f} MB, {(rss_mb() - idle) * 1024 / n:.1f} KB per client)")
            k = 0
            yield hub.append(hub_txn())  # warm-up: the first transaction also carries the SatRelation
            try:
                yield swarm.txn(k)
            except defer.TimeoutError:
                print(f"   warm-up did not reach every client: {server_state(service)}")
                raise
            k += 1
            gcs.take()
            hub_per, hub_last = yield electric_rounds(swarm, k, args.rounds, lambda: hub.append(hub_txn()))
            gc_hub = gcs.take()
            k += args.rounds
            pg_per = pg_last = gc_pg = None
            if pgside is not None:
                def pg_commit():
                    _seq[0] += 1
                    return threads.deferToThread(pgside.insert, f"pg{_seq[0]}")
                pg_per, pg_last = yield electric_rounds(swarm, k, args.rounds, pg_commit)
                gc_pg = gcs.take()
                k += args.rounds
            rss_live = rss_mb()
            load_live = load()
            yield swarm.stop()
            if swarm.errors:
                print(f"   {len(swarm.errors)} client errors")
            while service.connections:
                yield task.deferLater(reactor, 0.1, lambda: None)
            ref_per, ref_last = yield raw_reference(n, args.rounds)
            print(f"   after the rounds: Electric RSS {rss_live:.0f} MB ({load_live})")
            print(f"   hub commit -> client ({args.rounds} rounds; {gc_hub})")
            line("each delivery p50", pct(hub_per, 50), pct(ref_per, 50))
            line("each delivery p99", pct(hub_per, 99), pct(ref_per, 99))
            line("last of N     p99", pct(hub_last, 99), pct(ref_last, 99))
            if pg_per is not None:
                print(f"   Postgres COMMIT -> client ({args.rounds} rounds; {gc_pg})")
                line("each delivery p50", pct(pg_per, 50), pct(ref_per, 50))
                line("each delivery p99", pct(pg_per, 99), pct(ref_per, 99))
                line("last of N     p99", pct(pg_last, 99), pct(ref_last, 99))
        print()
        print(f"done ({load()})")
        yield service.stopService()
        if pgside is not None:
            yield pgside.stop()
            pgside = None
        yield hub.stopService()
        offsets.stopService()
    finally:
        if pgside is not None:
            pgside.pg.destroy()
        shutil.rmtree(tmp, True)


def run():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1000,10000", help="comma-separated client counts")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--window", type=int, default=200,
                        help="opening handshakes the client process keeps in flight at once (the connect storm)")
    parser.add_argument("--no-postgres", dest="postgres", action="store_false",
                        help="skip the Postgres commit rounds (no PG 15 cluster needed)")
    args = parser.parse_args()
    args.clients = [int(x) for x in args.clients.split(",")]
    WINDOW[0] = args.window
    failure = []

    def go():
        d = main(args)
        d.addErrback(lambda f: (failure.append(f), f.printTraceback(file=sys.stderr)))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(run())
