"""
Satellite websocket throughput and fan-out latency, each beside a reference
measured in the same run on the same machine:

1. fan-out: time from a hub commit (its append is durable) until each of N
   connected websocket clients (100, then 1,000; autobahn clients in this
   process) has received the SatOpLog for it -- p50/p99 over every delivery,
   and p50/p99 of the time until the last of the N has it.  Reference: the
   same number of raw TCP connections on the same reactor, the server writing
   a frame of the same size to each (what a plain TCP fan-out costs here).
2. client -> hub: acknowledged client transactions per second from 20
   websocket clients each sending its transactions back to back (the session
   appends one at a time per client, acking each once durable); once with
   write-only clients, once with clients that also receive every write
   (the resolved echo of all 20 clients' writes, as real clients do).  Reference:
   the hub's own durable append rate for the same transactions with the same
   per-origin sequencing, no websocket in between.

3. with Postgres (one PG 15 cluster, a connector reading it, the 5433
   publisher feeding it back): time from a Postgres COMMIT (psycopg2 returns)
   until each of N clients has the row -- reference: the same clients fed
   by a direct hub append (section 1), so the ratio is what the Postgres
   leg adds; and client -> Postgres transactions per second (clients write,
   measured until the last row is in the table) beside client -> hub.

    .venv/bin/python bench/bench_satellite.py [--clients 100,1000] [--rounds 20] [--no-postgres]

Prints figures only; no assertions.  Takes about 1-2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS  # noqa: E402
from twisted.internet import defer, protocol, reactor, task  # noqa: E402

from electric.config import Config  # noqa: E402
from electric.hub.embedded import EmbeddedHub  # noqa: E402
from electric.hub.interface import UPSERT, RowChange, Transaction  # noqa: E402
from electric.hub.offsets import OffsetStore  # noqa: E402
from electric.satellite import codec  # noqa: E402
from electric.satellite.service import SatelliteService  # noqa: E402
from electric.schema import Column, SchemaRegistry, Table  # noqa: E402

ORIGINAL = codec.ORIGINAL
OPLOG = ORIGINAL.type_byte("SatOpLog")
PING_RESP = ORIGINAL.type_byte("SatPingResp")


def pct(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, int(round(p / 100.0 * (len(values) - 1)))))
    return values[k]


def ms(x):
    return f"{x * 1000:8.2f} ms"


class Rounds:
    """Arrival times per round, shared by the clients of one measurement."""

    def __init__(self, n_clients):
        self.n = n_clients
        self.sent_at = {}
        self.arrivals = {}
        self.waiter = None
        self.current = None

    def start(self, rnd, t0):
        self.current = rnd
        self.sent_at[rnd] = t0
        self.arrivals.setdefault(rnd, [])
        self.waiter = defer.Deferred()
        if len(self.arrivals[rnd]) >= self.n:
            self.waiter.callback(None)
        return self.waiter

    def arrived(self, rnd, t):
        arr = self.arrivals.setdefault(rnd, [])
        arr.append(t)
        if rnd == self.current and len(arr) >= self.n and self.waiter is not None and not self.waiter.called:
            self.waiter.callback(None)

    def stats(self):
        per_delivery, per_round = [], []
        for rnd, t0 in self.sent_at.items():
            lat = [t - t0 for t in self.arrivals.get(rnd, [])]
            per_delivery += lat
            if lat:
                per_round.append(max(lat))
        return per_delivery, per_round


# --- websocket clients ------------------------------------------------------


class BenchClient(WebSocketClientProtocol):
    def onOpen(self):
        self.oplogs = 0
        self.acks = 0
        self.phase = "auth"
        self.sendMessage(codec.auth_request(ORIGINAL, self.factory.next_id(), "bench"), isBinary=True)

    def onMessage(self, payload, isBinary):
        now = time.perf_counter()
        kind = payload[0]
        if self.phase == "auth":
            if payload[:1] == b"\x07":  # the server's start request: answer, then ask for "eof"
                self.sendMessage(codec.encode(ORIGINAL, ORIGINAL.pb.SatInStartReplicationResp()), isBinary=True)
                if self.factory.subscribe:
                    self.sendMessage(codec.encode(ORIGINAL, ORIGINAL.pb.SatInStartReplicationReq(lsn=b"eof")), isBinary=True)
                else:
                    self.phase = "live"
                    self.factory.ready(self)
            elif payload[:1] == b"\x08":
                self.phase = "live"
                self.factory.ready(self)
            return
        if kind == OPLOG:
            rounds = self.factory.rounds
            if rounds is not None:
                rounds.arrived(self.oplogs, now)
            self.oplogs += 1
        elif kind == PING_RESP:
            self.acks += 1
            self.factory.acked(self)
        elif kind == ORIGINAL.type_byte("SatPingReq"):
            self.sendMessage(codec.encode(ORIGINAL, ORIGINAL.pb.SatPingResp()), isBinary=True)


class BenchFactory(WebSocketClientFactory):
    protocol = BenchClient

    def __init__(self, url, n, subscribe=True):
        super().__init__(url)
        self.subscribe = subscribe
        self.setProtocolOptions(autoPingInterval=0, openHandshakeTimeout=60)
        self.n = n
        self._ids = 0
        self.clients = []
        self.all_ready = defer.Deferred()
        self.rounds = None
        self.on_ack = None

    def next_id(self):
        self._ids += 1
        return f"bench-{id(self)}-{self._ids}"

    def ready(self, client):
        self.clients.append(client)
        if len(self.clients) == self.n and not self.all_ready.called:
            self.all_ready.callback(None)

    def acked(self, client):
        if self.on_ack is not None:
            self.on_ack(client)


@defer.inlineCallbacks
def disconnect_all(factory, service):
    """Close every bench client and wait until the server has let go of them."""
    for c in factory.clients:
        c.sendClose(1000)
    while service.connections:
        yield task.deferLater(reactor, 0.05, lambda: None)


@defer.inlineCallbacks
def connect_clients(port, n, subscribe=True):
    factory = BenchFactory(f"ws://127.0.0.1:{port}/ws", n, subscribe)
    batch = 50
    for i in range(0, n, batch):
        for _ in range(min(batch, n - i)):
            connectWS(factory)
        yield task.deferLater(reactor, 0.05, lambda: None)
    yield factory.all_ready
    return factory


# --- raw TCP reference ------------------------------------------------------


class RawServerProto(protocol.Protocol):
    def connectionMade(self):
        self.factory.conns.append(self)


class RawClientProto(protocol.Protocol):
    def connectionMade(self):
        self.count = 0
        self.factory.ready(self)

    def dataReceived(self, data):
        now = time.perf_counter()
        self.buf = getattr(self, "buf", 0) + len(data)
        while self.buf >= self.factory.frame_size:
            self.buf -= self.factory.frame_size
            self.factory.rounds.arrived(self.count, now)
            self.count += 1


@defer.inlineCallbacks
def raw_fanout(n, rounds_n, frame):
    server_factory = protocol.Factory()
    server_factory.protocol = RawServerProto
    server_factory.conns = []
    port = reactor.listenTCP(0, server_factory, interface="127.0.0.1")
    client_factory = protocol.ClientFactory()
    client_factory.protocol = RawClientProto
    client_factory.frame_size = len(frame)
    client_factory.rounds = Rounds(n)
    ready = defer.Deferred()
    clients = []

    def is_ready(c):
        clients.append(c)
        if len(clients) == n and not ready.called:
            ready.callback(None)

    client_factory.ready = is_ready
    for i in range(n):
        reactor.connectTCP("127.0.0.1", port.getHost().port, client_factory)
        if i % 50 == 49:
            yield task.deferLater(reactor, 0.01, lambda: None)
    yield ready
    while len(server_factory.conns) < n:
        yield task.deferLater(reactor, 0.01, lambda: None)
    for rnd in range(rounds_n):
        t0 = time.perf_counter()
        waiter = client_factory.rounds.start(rnd, t0)
        for conn in server_factory.conns:
            conn.transport.write(frame)
        yield waiter
        yield task.deferLater(reactor, 0.01, lambda: None)
    for c in clients:
        c.transport.loseConnection()
    for c in server_factory.conns:
        c.transport.loseConnection()
    yield port.stopListening()
    yield task.deferLater(reactor, 0.2, lambda: None)
    return client_factory.rounds.stats()


# --- the measurements -------------------------------------------------------


def items_table():
    return Table("public", "items", (Column("id", "text", 25), Column("content", "text", 25)), ("id",))


_seq = [0]


def hub_txn(origin="postgres_1", key=None):
    _seq[0] += 1
    key = key or f"k{_seq[0]}"
    return Transaction(origin, _seq[0].to_bytes(8, "big"), int(time.time() * 1e6),
                       (RowChange("public", "items", UPSERT, (key,), {"id": key, "content": "x" * 40}),))


@defer.inlineCallbacks
def fanout(service, hub, n, rounds_n):
    factory = yield connect_clients(service.port, n)
    factory.rounds = Rounds(n)
    # warm-up: the first transaction also carries the SatRelation
    yield hub.append(hub_txn())
    while any(c.oplogs < 1 for c in factory.clients):
        yield task.deferLater(reactor, 0.01, lambda: None)
    for c in factory.clients:
        c.oplogs = 0
    frame_size = None
    for rnd in range(rounds_n):
        d = hub.append(hub_txn())
        yield d
        t0 = time.perf_counter()
        yield factory.rounds.start(rnd, t0)
        yield task.deferLater(reactor, 0.01, lambda: None)
    per_delivery, per_round = factory.rounds.stats()
    # size of the frame each client got, for the raw reference
    log = codec.encode(ORIGINAL, ORIGINAL.pb.SatOpLog(ops=[
        ORIGINAL.pb.SatTransOp(begin=ORIGINAL.pb.SatOpBegin(commit_timestamp=1, lsn=b"x" * 25)),
        ORIGINAL.pb.SatTransOp(update=ORIGINAL.pb.SatOpUpdate(relation_id=20000, row_data=codec.encode_row(ORIGINAL, ["id", "content"], {"id": "k1", "content": "x" * 40}))),
        ORIGINAL.pb.SatTransOp(commit=ORIGINAL.pb.SatOpCommit(commit_timestamp=1, lsn=b"x" * 25)),
    ]))
    frame_size = len(log) + 2  # + websocket header
    yield disconnect_all(factory, service)
    return per_delivery, per_round, frame_size


@defer.inlineCallbacks
def client_writes(service, n_clients, per_client, subscribe):
    factory = yield connect_clients(service.port, n_clients, subscribe)
    rel = codec.encode(ORIGINAL, ORIGINAL.pb.SatRelation(
        schema_name="public", table_name="items", relation_id=0,
        columns=[ORIGINAL.pb.SatRelationColumn(name="id", type="TEXT"), ORIGINAL.pb.SatRelationColumn(name="content", type="TEXT")]))
    total = n_clients * per_client
    done = defer.Deferred()
    count = [0]

    def on_ack(_client):
        count[0] += 1
        if count[0] == total and not done.called:
            done.callback(None)

    factory.on_ack = on_ack
    t0 = time.perf_counter()
    for ci, c in enumerate(factory.clients):
        c.sendMessage(rel, isBinary=True)
        for i in range(per_client):
            lsn = (i + 1).to_bytes(4, "big")
            row = codec.encode_row(ORIGINAL, ["id", "content"], {"id": f"c{ci}-{i}", "content": "y" * 40})
            frame = codec.encode(ORIGINAL, ORIGINAL.pb.SatOpLog(ops=[
                ORIGINAL.pb.SatTransOp(begin=ORIGINAL.pb.SatOpBegin(commit_timestamp=int(time.time() * 1000), lsn=lsn)),
                ORIGINAL.pb.SatTransOp(insert=ORIGINAL.pb.SatOpInsert(relation_id=0, row_data=row)),
                ORIGINAL.pb.SatTransOp(commit=ORIGINAL.pb.SatOpCommit()),
            ]))
            c.sendMessage(frame, isBinary=True)
    yield done
    elapsed = time.perf_counter() - t0
    yield disconnect_all(factory, service)
    return total / elapsed


@defer.inlineCallbacks
def hub_only_writes(hub, n_origins, per_origin):
    total = n_origins * per_origin

    @defer.inlineCallbacks
    def origin(o):
        for i in range(per_origin):
            key = f"h{o}-{i}"
            yield hub.append(Transaction(f"satellite:ref-{o}", (i + 1).to_bytes(4, "big"), int(time.time() * 1e6),
                                         (RowChange("public", "items", UPSERT, (key,), {"id": key, "content": "y" * 40}),)))

    t0 = time.perf_counter()
    yield defer.gatherResults([origin(o) for o in range(n_origins)])
    return total / (time.perf_counter() - t0)


# --- with Postgres -----------------------------------------------------------


class PostgresSide:
    """One cluster, one database, a ConnectorService and the 5433 publisher, sharing the bench's hub."""

    def __init__(self, tmp, hub, registry, offsets):
        from tests.pgcluster import PgCluster

        self.tmp, self.hub, self.registry, self.offsets = tmp, hub, registry, offsets
        # synchronous_commit on: with it off, a commit reaches the WAL sender only when the WAL
        # writer flushes (every 200 ms), which would be measured as Electric latency.
        self.pg = PgCluster(extra_conf=["synchronous_commit = on"]).start()
        self.pg.psql("CREATE TABLE public.items (id text PRIMARY KEY, content text)")

    @defer.inlineCallbacks
    def start(self):
        from electric.postgres.source.connector import ConnectorService
        from electric.postgres.publisher.credentials import SubscriberCredentials
        from electric.postgres.publisher.service import PublisherService

        self.credentials = SubscriberCredentials(self.tmp, ("postgres_1",))
        self.credentials.startService()
        base = Config(postgres_replication_port=0, listen_host="127.0.0.1")
        self.publisher = PublisherService(base, self.hub, self.registry, self.credentials, self.offsets, reactor)
        self.publisher.startService()
        port = yield self.publisher.listening
        config = Config.from_environ({
            "CONNECTORS": f"postgres_1={self.pg.url}",
            "POSTGRES_REPLICATION_PORT": str(port.getHost().port),
            "ELECTRIC_DATA_DIR": self.tmp,
        })
        self.connector = ConnectorService(config, config.connectors[0], self.hub, self.registry, self.credentials,
                                          publisher_ready=self.publisher.when_listening)
        self.connector.startService()
        deadline = time.monotonic() + 120
        while self.connector.state != "ready":
            if time.monotonic() > deadline:
                raise RuntimeError("connector did not become ready")
            yield task.deferLater(reactor, 0.1, lambda: None)
        import psycopg2

        self.conn = psycopg2.connect(self.pg.dsn)
        self.conn.autocommit = True

    def insert(self, key):
        with self.conn.cursor() as cur:
            cur.execute("INSERT INTO items VALUES (%s, %s)", (key, "p" * 40))

    def count(self, prefix):
        with self.conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM items WHERE id LIKE %s", (prefix + "%",))
            return cur.fetchone()[0]

    @defer.inlineCallbacks
    def stop(self):
        yield self.connector.stopService()
        self.pg.psql('ALTER SUBSCRIPTION "postgres_1" DISABLE', check=False)
        yield self.publisher.stopService()
        self.conn.close()
        self.pg.destroy()


@defer.inlineCallbacks
def pg_fanout(service, pgside, n, rounds_n):
    from twisted.internet import threads

    factory = yield connect_clients(service.port, n)
    factory.rounds = Rounds(n)
    yield threads.deferToThread(pgside.insert, f"warm-up-{n}")
    while any(c.oplogs < 1 for c in factory.clients):
        yield task.deferLater(reactor, 0.01, lambda: None)
    for c in factory.clients:
        c.oplogs = 0
    for rnd in range(rounds_n):
        yield threads.deferToThread(pgside.insert, f"pg-{n}-{rnd}")
        t0 = time.perf_counter()
        yield factory.rounds.start(rnd, t0)
        yield task.deferLater(reactor, 0.01, lambda: None)
    yield disconnect_all(factory, service)
    return factory.rounds.stats()


@defer.inlineCallbacks
def client_to_postgres(service, pgside, n_clients, per_client):
    """Like client_writes, but timed until the last row is in the Postgres table."""
    from twisted.internet import threads

    factory = yield connect_clients(service.port, n_clients, subscribe=False)
    rel = codec.encode(ORIGINAL, ORIGINAL.pb.SatRelation(
        schema_name="public", table_name="items", relation_id=0,
        columns=[ORIGINAL.pb.SatRelationColumn(name="id", type="TEXT"), ORIGINAL.pb.SatRelationColumn(name="content", type="TEXT")]))
    total = n_clients * per_client
    t0 = time.perf_counter()
    for ci, c in enumerate(factory.clients):
        c.sendMessage(rel, isBinary=True)
        for i in range(per_client):
            row = codec.encode_row(ORIGINAL, ["id", "content"], {"id": f"w{ci}-{i}", "content": "y" * 40})
            c.sendMessage(codec.encode(ORIGINAL, ORIGINAL.pb.SatOpLog(ops=[
                ORIGINAL.pb.SatTransOp(begin=ORIGINAL.pb.SatOpBegin(commit_timestamp=int(time.time() * 1000), lsn=(i + 1).to_bytes(4, "big"))),
                ORIGINAL.pb.SatTransOp(insert=ORIGINAL.pb.SatOpInsert(relation_id=0, row_data=row)),
                ORIGINAL.pb.SatTransOp(commit=ORIGINAL.pb.SatOpCommit()),
            ])), isBinary=True)
    deadline = time.monotonic() + 120
    while (yield threads.deferToThread(pgside.count, "w")) < total:
        if time.monotonic() > deadline:
            raise RuntimeError("client rows did not all reach Postgres")
        yield task.deferLater(reactor, 0.02, lambda: None)
    elapsed = time.perf_counter() - t0
    yield disconnect_all(factory, service)
    return total / elapsed


@defer.inlineCallbacks
def main(args):
    tmp = tempfile.mkdtemp(prefix="bench-satellite-")
    try:
        registry = SchemaRegistry()
        registry.register(items_table())
        hub = EmbeddedHub(os.path.join(tmp, "hub"), reactor, compact_interval=0)
        hub.startService()
        offsets = OffsetStore(os.path.join(tmp, "offsets.db"))
        offsets.startService()
        config = dataclasses.replace(Config.from_environ({}), websocket_port=0, listen_host="127.0.0.1")
        service = SatelliteService(config, hub, registry, offsets, reactor=reactor)
        service.startService()
        yield service.listening
        print(f"bench_satellite: {os.cpu_count()} cpus, python {sys.version.split()[0]}")
        print()
        fanout_results = {}
        hub_rates = {}
        print("1. hub commit -> N websocket clients (each gets the SatOpLog); reference: raw TCP fan-out of an equal frame")
        for n in args.clients:
            rounds_n = args.rounds if n <= 100 else max(5, args.rounds // 2)
            t_start = time.perf_counter()
            per_delivery, per_round, frame_size = yield fanout(service, hub, n, rounds_n)
            fanout_results[n] = (per_delivery, per_round)
            ref_delivery, ref_round = yield raw_fanout(n, rounds_n, b"\x00" * frame_size)
            print(f"   N={n:5d}  rounds={rounds_n}  ({time.perf_counter() - t_start:.1f} s incl. connecting)")
            for label, got, ref in (
                ("each delivery p50", pct(per_delivery, 50), pct(ref_delivery, 50)),
                ("each delivery p99", pct(per_delivery, 99), pct(ref_delivery, 99)),
                ("last of N     p50", pct(per_round, 50), pct(ref_round, 50)),
                ("last of N     p99", pct(per_round, 99), pct(ref_round, 99)),
            ):
                print(f"     {label}: satellite {ms(got)}   raw TCP {ms(ref)}   ratio {got / ref if ref else float('nan'):6.1f}x")
        print()
        print("2. client -> hub transactions/s (acked once durable); reference: hub appends alone, same per-origin sequencing")
        n_clients, per = args.writers, args.per_writer
        ref = yield hub_only_writes(hub, n_clients, per)
        for subscribe, label in ((False, "write-only clients"), (True, "clients also receiving every write")):
            rate = yield client_writes(service, n_clients, per, subscribe)
            hub_rates[subscribe] = rate
            print(f"   {n_clients} {label} x {per} txns: satellite {rate:8.0f} txn/s   hub alone {ref:8.0f} txn/s   ratio {rate / ref:5.2f}")
        if args.postgres:
            print()
            print("3. with Postgres: PG commit -> N clients (reference: hub append -> N clients, section 1); client -> PG txn/s")
            pgside = PostgresSide(tmp, hub, registry, offsets)
            try:
                yield pgside.start()
                for n in args.clients:
                    rounds_n = args.rounds if n <= 100 else max(5, args.rounds // 2)
                    per_delivery, per_round = yield pg_fanout(service, pgside, n, rounds_n)
                    ref_delivery, ref_round = fanout_results[n]
                    print(f"   N={n:5d}  rounds={rounds_n}")
                    for label, got, ref in (
                        ("each delivery p50", pct(per_delivery, 50), pct(ref_delivery, 50)),
                        ("each delivery p99", pct(per_delivery, 99), pct(ref_delivery, 99)),
                        ("last of N     p50", pct(per_round, 50), pct(ref_round, 50)),
                        ("last of N     p99", pct(per_round, 99), pct(ref_round, 99)),
                    ):
                        print(f"     {label}: from PG {ms(got)}   from hub {ms(ref)}   ratio {got / ref if ref else float('nan'):6.1f}x")
                pg_rate = yield client_to_postgres(service, pgside, args.writers, args.per_writer)
                print(f"   {args.writers} write-only clients x {args.per_writer} txns into Postgres: {pg_rate:8.0f} txn/s"
                      f"   (client -> hub {hub_rates[False]:8.0f} txn/s, ratio {pg_rate / hub_rates[False]:5.2f})")
            finally:
                yield pgside.stop()
        yield service.stopService()
        yield hub.stopService()
        offsets.stopService()
    finally:
        shutil.rmtree(tmp, True)


def run():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="100,1000", help="comma-separated client counts")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--writers", type=int, default=20)
    parser.add_argument("--per-writer", type=int, default=100)
    parser.add_argument("--no-postgres", dest="postgres", action="store_false",
                        help="skip the sections that need a Postgres 15 cluster")
    args = parser.parse_args()
    args.clients = [int(x) for x in args.clients.split(",")]
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
