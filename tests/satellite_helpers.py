"""Shared builders for the Satellite tests: tables, client frames."""

from __future__ import annotations

from electric.satellite import codec
from electric.schema import Column, SchemaRegistry, Table


def items_table() -> Table:
    return Table(
        "public",
        "items",
        (
            Column("id", "text", 25),
            Column("content", "varchar", 1043),
            Column("n", "int4", 23),
            Column("electric_user_id", "text", 25),
        ),
        ("id",),
    )


def notes_table() -> Table:
    return Table("public", "notes", (Column("id", "int8", 20), Column("body", "text", 25), Column("flag", "bool", 16)), ("id",))


def registry_with_tables() -> SchemaRegistry:
    registry = SchemaRegistry()
    registry.register(items_table())
    registry.register(notes_table())
    return registry


def relation(gen, relation_id, table, columns, schema="public"):
    pb = gen.pb
    return codec.encode(
        gen,
        pb.SatRelation(
            schema_name=schema,
            table_name=table,
            relation_id=relation_id,
            columns=[pb.SatRelationColumn(name=c, type="TEXT") for c in columns],
        ),
    )


def row(gen, values):
    """SatOpRow from a list of str-or-None."""
    pb = gen.pb
    return pb.SatOpRow(
        nulls_bitmask=codec.nulls_bitmask([v is None for v in values]),
        values=[b"" if v is None else v.encode() for v in values],
    )


def oplog(gen, *ops):
    return codec.encode(gen, gen.pb.SatOpLog(ops=list(ops)))


def begin(gen, lsn, ts=1_700_000_000_000):
    return gen.pb.SatTransOp(begin=gen.pb.SatOpBegin(commit_timestamp=ts, lsn=lsn))


def commit(gen):
    return gen.pb.SatTransOp(commit=gen.pb.SatOpCommit())


def insert(gen, relation_id, values):
    return gen.pb.SatTransOp(insert=gen.pb.SatOpInsert(relation_id=relation_id, row_data=row(gen, values)))


def update(gen, relation_id, values, old=None):
    op = gen.pb.SatOpUpdate(relation_id=relation_id, row_data=row(gen, values))
    if old is not None:
        op.old_row_data.CopyFrom(row(gen, old))
    return gen.pb.SatTransOp(update=op)


def delete(gen, relation_id, values):
    return gen.pb.SatTransOp(delete=gen.pb.SatOpDelete(relation_id=relation_id, old_row_data=row(gen, values)))


def client_txn(gen, lsn, rel, values, ts=1_700_000_000_000):
    return oplog(gen, begin(gen, lsn, ts), insert(gen, rel, values), commit(gen))


def start_req(gen, lsn=b"", options=(), batch=0):
    return codec.encode(gen, gen.pb.SatInStartReplicationReq(lsn=lsn, options=list(options), sync_batch_size=batch))


def msg(gen, name, **fields):
    return codec.encode(gen, getattr(gen.pb, name)(**fields))


# --- a websocket client for the transport tests -------------------------------

import dataclasses  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS  # noqa: E402
from twisted.internet import defer, reactor  # noqa: E402
from twisted.internet.task import deferLater  # noqa: E402

from electric.config import Config  # noqa: E402
from tests.polling import wait_until  # noqa: E402


class ClientClosed(Exception):
    pass


class _ClientProtocol(WebSocketClientProtocol):
    def onOpen(self):
        self.factory.client._opened(self)

    def onMessage(self, payload, isBinary):
        self.factory.client._message(payload)

    def onClose(self, wasClean, code, reason):
        self.factory.client._closed(code, reason)


class WsClient:
    """A raw websocket peer: send frames, receive frames in order, see the close."""

    def __init__(self, port, path="/ws", ca_file=None, host="127.0.0.1"):
        # ca_file: connect with wss://, trusting that CA (and checking the certificate names `host`)
        self.ca_file = ca_file
        self.host = host
        self.url = f"{'wss' if ca_file else 'ws'}://{host if ':' not in host else '[' + host + ']'}:{port}{path}"
        self.frames = []
        self._waiting = []
        self.close_code = None
        self.close_reason = None
        self.closed = defer.Deferred()
        self.proto = None
        self._open = defer.Deferred()

    def connect(self):
        factory = WebSocketClientFactory(self.url)
        factory.protocol = _ClientProtocol
        factory.client = self
        factory.setProtocolOptions(autoPingInterval=0)
        context = None
        if self.ca_file:
            from twisted.internet import ssl

            with open(self.ca_file, "rb") as f:
                context = ssl.optionsForClientTLS(self.host, trustRoot=ssl.Certificate.loadPEM(f.read()))
        self.connector = connectWS(factory, contextFactory=context)
        return self._open

    def _opened(self, proto):
        self.proto = proto
        self._open.callback(self)

    def _message(self, payload):
        self.frames.append(bytes(payload))
        self._wake()

    def _closed(self, code, reason):
        self.close_code = code
        self.close_reason = reason
        if not self._open.called:
            self._open.errback(ClientClosed(f"handshake failed: {code} {reason}"))
        if not self.closed.called:
            self.closed.callback(code)
        self._wake()

    def _wake(self):
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if not d.called:
                d.callback(None)

    def send(self, data, binary=True):
        self.proto.sendMessage(data, isBinary=binary)

    def close(self):
        if self.proto is not None:
            self.proto.sendClose(1000)
        return self.closed

    def abort(self):
        self.proto.dropConnection(abort=True)
        return self.closed

    @defer.inlineCallbacks
    def recv(self, timeout=10.0):
        """The next frame; ClientClosed if the connection closes first."""
        deadline = reactor.seconds() + timeout
        while not self.frames:
            if self.closed.called:
                raise ClientClosed(f"closed ({self.close_code}) with no frame pending")
            if reactor.seconds() > deadline:
                raise AssertionError(f"no frame within {timeout} s")
            d = defer.Deferred()
            self._waiting.append(d)
            timer = reactor.callLater(0.2, lambda: None if d.called else d.callback(None))
            yield d
            if timer.active():
                timer.cancel()
        return self.frames.pop(0)

    @defer.inlineCallbacks
    def recv_message(self, gen, timeout=10.0):
        from electric.satellite import codec

        frame = yield self.recv(timeout)
        return codec.decode(gen, frame)

    @defer.inlineCallbacks
    def wait_closed(self, timeout=10.0):
        deadline = reactor.seconds() + timeout
        while not self.closed.called:
            if reactor.seconds() > deadline:
                raise AssertionError(f"connection not closed within {timeout} s")
            yield deferLater(reactor, 0.05, lambda: None)
        return self.close_code


def eventually(check, timeout=60.0, interval=0.05, message="condition"):
    """Poll `check()` (may return a Deferred) until truthy; returns its value."""
    return wait_until(check, timeout=timeout, what=message, interval=interval)


@defer.inlineCallbacks
def drain_autobahn_timers(timeout=10.0):
    """
    Wait out autobahn's batched timers: cancelling a websocket timeout leaves
    its bucket's DelayedCall pending (a no-op when it fires), which trial
    would report as a dirty reactor.
    """
    deadline = reactor.seconds() + timeout
    while reactor.seconds() < deadline:
        pending = [c for c in reactor.getDelayedCalls() if getattr(c.func, "__name__", "") == "_notify_bucket"]
        if not pending:
            return
        yield deferLater(reactor, 0.1, lambda: None)


def satellite_config(**kw):
    return dataclasses.replace(Config.from_environ({}), websocket_port=0, listen_host="127.0.0.1",
                               regional_id="region-1.test.electric-db", **kw)


class SatelliteFixture:
    """EmbeddedHub + OffsetStore + registry + SatelliteService on an ephemeral port."""

    def __init__(self, testcase, config=None, registry=None, data_dir=None, ca_file=None):
        from electric.hub.embedded import EmbeddedHub
        from electric.hub.offsets import OffsetStore
        from electric.satellite.service import SatelliteService

        self.tc = testcase
        if data_dir is None:
            data_dir = tempfile.mkdtemp(prefix="sattest-")
            testcase.addCleanup(shutil.rmtree, data_dir, True)
        self.dir = data_dir
        self.registry = registry or registry_with_tables()
        self.hub = EmbeddedHub(data_dir + "/hub", reactor, compact_interval=0)
        self.offsets = OffsetStore(data_dir + "/offsets.db")
        self.config = config or satellite_config()
        self.service = SatelliteService(self.config, self.hub, self.registry, self.offsets, reactor=reactor)
        self.clients = []
        self.ca_file = ca_file  # set with a TLS config: clients use wss:// trusting this CA

    @defer.inlineCallbacks
    def start(self):
        self.hub.startService()
        self.offsets.startService()
        self.service.startService()
        yield self.service.listening
        self.tc.addCleanup(self.stop)
        return self

    @defer.inlineCallbacks
    def stop(self):
        for c in self.clients:
            if c.proto is not None and not c.closed.called:
                c.proto.dropConnection(abort=True)
        if self.service.running:
            yield self.service.stopService()
        if self.hub.running:
            yield self.hub.stopService()
        self.offsets.stopService()
        for c in self.clients:
            if c.proto is not None:
                yield c.wait_closed()
        yield drain_autobahn_timers()

    @property
    def port(self):
        return self.service.port

    @defer.inlineCallbacks
    def client(self, path="/ws"):
        c = WsClient(self.port, path, ca_file=self.ca_file)
        self.clients.append(c)
        yield c.connect()
        return c

    @defer.inlineCallbacks
    def authed(self, gen, client_id, user, start_lsn=None, start_options=()):
        """A client past auth with incoming replication active (and outgoing started if start_lsn is given)."""
        from electric.satellite import codec

        c = yield self.client()
        c.send(codec.auth_request(gen, client_id, user))
        resp = yield c.recv_message(gen)
        assert codec.message_name(resp) == "SatAuthResp", resp
        req = yield c.recv_message(gen)
        assert codec.message_name(req) == "SatInStartReplicationReq", req
        c.server_start = req
        c.send(msg(gen, "SatInStartReplicationResp"))
        if start_lsn is not None:
            c.send(start_req(gen, start_lsn, start_options))
            resp = yield c.recv_message(gen)
            assert codec.message_name(resp) == "SatInStartReplicationResp", resp
        return c
