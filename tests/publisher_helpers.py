"""
Shared fixtures for the port-5433 tests: a real hub + registry + PublisherService
on a free port, and a small protocol-level client built on Electric's codec.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable, List

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol

from electric.config import Config
from electric.hub import changes
from electric.hub.embedded import EmbeddedHub
from electric.hub.interface import Transaction
from electric.hub.offsets import OffsetStore
from electric.postgres.protocol.messages import (
    Authentication,
    ErrorResponse,
    Query,
    ReadyForQuery,
    SSLRequest,
    SSLResponse,
    StartupMessage,
)
from electric.postgres.protocol.parsers import BackendParser
from electric.postgres.protocol.auth import ClientAuth
from electric.postgres.publisher.credentials import SubscriberCredentials
from electric.postgres.publisher.service import PublisherService
from electric.schema import Column, SchemaRegistry, Table
from tests.polling import eventually, sleep  # noqa: F401  (re-exported for the publisher tests)

ITEMS = Table(
    "public", "items",
    (Column("id", "text", 25, -1, True), Column("content", "text", 25, -1, False), Column("n", "int4", 23, -1, False)),
    ("id",),
)


class Electric:
    """Hub, registry, credentials, offsets and the publisher, in one temp dir."""

    def __init__(self, connectors=("postgres_1", "postgres_2"), data_dir=None, port=0, tls=None,
                 listen_host="127.0.0.1", hub_kw=None, **publisher_kw):
        self.tls = tls  # electric.tls.TLSFiles for port 5433, or None
        self.listen_host = listen_host
        self.own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="electric-publisher-")
        self.connectors = connectors
        self.port = port
        self.publisher_kw = publisher_kw
        self.hub_kw = hub_kw or {}
        self.registry = SchemaRegistry()
        self.credentials = SubscriberCredentials(self.data_dir, connectors)
        self.credentials.startService()
        self.hub = None
        self.publisher = None
        self.offsets = None
        self._txn = 0

    @defer.inlineCallbacks
    def start(self):
        self.hub = EmbeddedHub(os.path.join(self.data_dir, "hub"), reactor, compact_interval=0, **self.hub_kw)
        self.hub.startService()
        self.offsets = OffsetStore(os.path.join(self.data_dir, "offsets.sqlite3"))
        self.offsets.startService()
        config = Config(postgres_replication_port=self.port, listen_host=self.listen_host, publication="all_tables",
                        postgres_replication_tls=self.tls)
        self.publisher = PublisherService(config, self.hub, self.registry, self.credentials, self.offsets,
                                        reactor, **self.publisher_kw)
        self.publisher.startService()
        port = yield self.publisher.listening
        self.port = port.getHost().port
        return self

    @defer.inlineCallbacks
    def stop(self):
        if self.publisher is not None:
            yield self.publisher.stopService()
            self.publisher = None
        if self.hub is not None:
            yield self.hub.stopService()
            self.hub = None
        if self.offsets is not None:
            self.offsets.stopService()
            self.offsets = None

    def destroy(self):
        if self.own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def password(self, origin):
        return self.credentials.for_connector(origin)[1]

    def register(self, table: Table, origins=None) -> Table:
        t = self.registry.register(table)
        for origin in origins or self.connectors:
            present = [x for x in self.registry.database_tables(origin) if x.qualified != t.qualified]
            self.registry.set_database_tables(origin, present + [t])
            self.registry.allow_streaming(origin)
        return t

    def append(self, *row_changes, origin="postgres_9", ts=None):
        """Append one transaction of RowChanges (from electric.hub.changes) to the hub."""
        self._txn += 1
        ident = os.urandom(8)
        return self.hub.append(Transaction(origin, ident, ts or 1_700_000_000_000_000 + self._txn,
                                           tuple(c for group in row_changes for c in group)))

    @defer.inlineCallbacks
    def commit(self, changes, origin="postgres_9", add_size=1000):
        """One transaction of any size through begin/add/commit; fires with `Committed`."""
        self._txn += 1
        buf = self.hub.begin(origin, os.urandom(8), 1_700_000_000_000_000 + self._txn)
        for i in range(0, len(changes), add_size):
            yield buf.add(changes[i:i + add_size])
        result = yield buf.commit()
        return result

    def upsert(self, table, row):
        return changes.insert(table, row)

    def delete(self, table, row):
        return changes.delete(table, row)


class PgClient(protocol.Protocol):
    """A frontend over a real socket: send messages, wait for backend messages."""

    def __init__(self):
        self.parser = BackendParser()
        self.inbox: List = []
        self.raw = b""
        self.lost = defer.Deferred()
        self.is_closed = False
        self._waiter = None

    def connectionMade(self):
        pass

    def dataReceived(self, data):
        self.raw += data
        self.inbox.extend(self.parser.feed(data))
        self._poke()

    def connectionLost(self, reason=None):
        self.is_closed = True
        self._poke()
        if not self.lost.called:
            self.lost.callback(None)

    def _poke(self):
        if self._waiter is not None:
            d, self._waiter = self._waiter, None
            d.callback(None)

    def send(self, *messages):
        self.transport.write(b"".join(m.encode() if hasattr(m, "encode") else m for m in messages))

    @defer.inlineCallbacks
    def until(self, pred: Callable, timeout: float = 15.0):
        """Consume messages up to the first one matching `pred`; returns (it, everything consumed)."""
        seen = []
        deadline = reactor.seconds() + timeout
        while True:
            while self.inbox:
                m = self.inbox.pop(0)
                seen.append(m)
                if pred(m):
                    return m, seen
            if self.is_closed:
                raise AssertionError(f"connection closed while waiting; got {seen!r}")
            if reactor.seconds() > deadline:
                raise AssertionError(f"timed out waiting; got {seen!r}")
            self._waiter = d = defer.Deferred()
            timer = reactor.callLater(0.2, lambda: self._poke())
            yield d
            if timer.active():
                timer.cancel()

    @defer.inlineCallbacks
    def query(self, sql):
        self.send(Query(sql))
        _, msgs = yield self.until(lambda m: isinstance(m, ReadyForQuery))
        return msgs


@defer.inlineCallbacks
def connect(port, user="postgres_1", password=None, app=None, ssl=True, replication="database", tls_ca=None,
            host="127.0.0.1"):
    """
    A logged-in PgClient (or one holding the server's error in its inbox).
    `tls_ca`: a CA file: the server must answer the SSLRequest with S, and the
    connection goes on over TLS, checking the certificate names `host`.
    """
    endpoint = (TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint)(reactor, host, port)
    client = yield connectProtocol(endpoint, PgClient())
    if ssl or tls_ca:
        client.parser.expect_ssl_response()
        client.send(SSLRequest())
        answer, _ = yield client.until(lambda m: isinstance(m, SSLResponse))
        if tls_ca:
            assert answer.accepted, "the server refused TLS"
            from twisted.internet import ssl as tssl

            with open(tls_ca, "rb") as f:
                client.transport.startTLS(tssl.optionsForClientTLS(host, trustRoot=tssl.Certificate.loadPEM(f.read())))
    params = {"user": user, "database": user, "application_name": app or user, "client_encoding": "UTF8"}
    if replication is not None:
        params["replication"] = replication
    client.send(StartupMessage(params))
    auth = ClientAuth(user, password)
    client.startup = []
    while True:
        m, seen = yield client.until(lambda m: isinstance(m, (Authentication, ErrorResponse,
                                                               ReadyForQuery)))
        client.startup += seen
        if isinstance(m, ErrorResponse):
            client.error = m
            return client
        if isinstance(m, ReadyForQuery):
            client.error = None
            return client
        replies = auth.receive(m)
        if replies:
            client.send(*replies)


def subscriber_errors(pg, expected=(), since: int = 0):
    """
    Every ERROR/FATAL line of a subscriber's log except the ones a scenario
    causes on purpose (`expected` substrings) and the ones Electric's normal
    start-up produces: a subscription that reconnects before its connector
    has read the catalog or refreshed the subscription is told "Electric
    replication is not ready" and retries; DISABLE stops its worker.
    `since`: only lines after this offset of the log text (``len(pg.log())``
    taken before the scenario).
    """
    allowed = ("terminating logical replication worker due to administrator command",
               "Electric replication is not ready") + tuple(expected)
    return [line for line in pg.log()[since:].splitlines()
            if ("ERROR:" in line or "FATAL:" in line) and not any(ok in line for ok in allowed)]
