"""
The replication-stream link to Vaxine (``VAXINE_REPLICATION_PORT``): Twisted side.

`ReplicationProtocol` moves bytes between the socket and
`electric.vaxine.stream.StreamClient` (which does the framing, term decoding
and the start/stop state machine).  `ReplicationClient` is the long-lived
``IService``: it connects (``VAXINE_CONNECTION_TIMEOUT``), sends the start
request from its current `position`, treats the connection as up once Vaxine
accepted the start (within `start_timeout`), and hands every
`electric.vaxine.stream.WalTransaction` to its consumer in commit order.  On
any failure -- refused connection, timeout, a close, an undecodable frame, a
refused or unanswered start (e.g. an offset the server cannot serve) -- it
closes the socket, waits (backoff with jitter) and starts again from
`position`, the offset of the last transaction it *handed to the consumer*
(spec 3.7).  Resumption is exclusive and duplicates are dropped
(`StreamClient`), so the consumer sees each transaction once per client.

Acknowledgements (spec 3.6): the stream has none; Vaxine keeps no position
for a client.  The consumer owns its position: it stores the offsets of what
it has durably processed (`electric.vaxine.stream.offset_to_bytes`) and, after
a restart, creates the client with that offset.  `position` only tells where
*this* client would resume.

Flow control: `ReplicationClient` is an ``IPushProducer`` for its consumer.
A consumer that cannot keep up calls ``pauseProducing()`` (even from inside
``transactionReceived``); the client then stops reading the socket
(``transport.pauseProducing()``), so Vaxine's sends stall on TCP
back-pressure instead of anything piling up here.  Transactions already
decoded from the last read are held (at most what one read delivered) and
handed over after ``resumeProducing()``.  `WalQueue` is a ready-made consumer
that pauses above a high-water mark and offers a pull API (``next``), like
the hub's ``ISubscription``.
"""

from __future__ import annotations

import collections
import random
from typing import Any, Deque, List, Optional

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from electric.vaxine.connection import Reconnector, describe_failure
from electric.vaxine.errors import ProtocolError, RequestTimeout, Unavailable, VaxineError
from electric.vaxine.stream import (
    BEGINNING, MAX_FRAME, Offset, Started, StreamClient, WalTransaction, check_offset,
)

DEFAULT_START_TIMEOUT = 10.0
"""Seconds Vaxine may take to accept a start request before the attempt counts as failed."""


class IWalConsumer(Interface):
    """Receives the transactions of a `ReplicationClient`."""

    def transactionReceived(transaction):
        """One `WalTransaction`, in commit order.  May call the producer's pauseProducing()."""


class ReplicationProtocol(Protocol):
    """One stream connection: start, then transactions; bytes only, decoding in `StreamClient`."""

    def __init__(self, client: "ReplicationClient"):
        self.client = client
        self.session = StreamClient(rng=client.rng, max_frame=client.max_frame)
        self.closed: defer.Deferred = defer.Deferred()
        self.lost_reason: Optional[Failure] = None
        self.connected = False
        self._started: Optional[defer.Deferred] = None
        self._start_timer = None
        self._error: Optional[VaxineError] = None

    def connectionMade(self):
        self.connected = True
        if hasattr(self.transport, "setTcpKeepAlive"):
            self.transport.setTcpKeepAlive(True)

    def start(self, offset: Offset, timeout: float, clock) -> defer.Deferred:
        """Send the start request; Deferred firing once Vaxine accepted it (fails otherwise)."""
        self._started = defer.Deferred()
        self._start_timer = clock.callLater(timeout, self._start_timed_out, timeout)
        self.transport.write(self.session.start(offset, raw_values=self.client.raw_values))
        return self._started

    def _start_timed_out(self, timeout: float) -> None:
        self._start_timer = None
        self._fail(RequestTimeout(f"Vaxine did not accept the stream start within {timeout:g} s"))

    def dataReceived(self, data: bytes) -> None:
        if self._error is not None:
            return
        try:
            events = self.session.receive(data)
        except ProtocolError as e:
            self._fail(e)
            return
        for event in events:
            if isinstance(event, Started):
                self._cancel_start_timer()
                d, self._started = self._started, None
                if d is not None:
                    d.callback(event)
            elif isinstance(event, WalTransaction):
                self.client._received(self, event)
            if self._error is not None or not self.connected:
                return

    def _cancel_start_timer(self) -> None:
        if self._start_timer is not None and self._start_timer.active():
            self._start_timer.cancel()
        self._start_timer = None

    def _fail(self, exc: VaxineError) -> None:
        if self._error is None:
            self._error = exc
        self._cancel_start_timer()
        d, self._started = self._started, None
        if d is not None:
            d.errback(Failure(exc))
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason=None):
        self.connected = False
        self._cancel_start_timer()
        d, self._started = self._started, None
        if d is not None:
            if self.session.state == StreamClient.STARTING:
                what = "closed the connection before accepting the stream start (bad offset?)"
            else:
                what = "connection lost"
            d.errback(Failure(Unavailable(f"Vaxine {what}: {describe_failure(reason)}")))
        if self._error is not None:
            # Report the real cause (e.g. the ProtocolError) rather than the abort it caused.
            reason = Failure(self._error)
        self.lost_reason = reason
        self.closed.callback(None)


class _ProtocolFactory(Factory):
    def __init__(self, client: "ReplicationClient"):
        self.client = client

    def buildProtocol(self, addr):
        return ReplicationProtocol(self.client)


@implementer(IPushProducer)
class ReplicationClient(service.Service):
    """
    The replication stream as a service, from `offset` on, into `consumer`.

    `consumer` provides `IWalConsumer`; if it has ``registerProducer`` it is
    called with ``(self, True)`` at construction, so it can pause this client.
    `offset` is `BEGINNING` (0), `EOF` or a stored `WalOffset`.  `host`/`port`
    are ``VAXINE_HOST``/``VAXINE_REPLICATION_PORT``; `connect_timeout` is
    ``VAXINE_CONNECTION_TIMEOUT`` / 1000 seconds.  `reactor` connects,
    `clock` (default: the reactor) runs the timers; `endpoint` replaces the
    default ``HostnameEndpoint`` (tests).
    """

    log = Logger()

    def __init__(self, consumer, host: str = "127.0.0.1", port: int = 8088, offset: Offset = BEGINNING,
                 connect_timeout: float = 5.0, start_timeout: float = DEFAULT_START_TIMEOUT,
                 retry_policy=None, reactor=None, clock=None, endpoint=None, max_frame: int = MAX_FRAME,
                 raw_values: bool = False, rng: Optional[random.Random] = None):
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.consumer = consumer
        self.host, self.port = host, port
        self.position: Offset = check_offset(offset)
        self.clock = clock or reactor
        self.start_timeout = start_timeout
        self.max_frame = max_frame
        self.raw_values = raw_values
        self.rng = rng
        self.paused = False
        self.delivered = 0
        self._held: Deque[WalTransaction] = collections.deque()
        self._protocol: Optional[ReplicationProtocol] = None
        self._started_waiters: List[defer.Deferred] = []
        if endpoint is None:
            endpoint = HostnameEndpoint(reactor, host, port, timeout=connect_timeout)
        self.connection = Reconnector(
            endpoint, _ProtocolFactory(self), self.clock, connect_timeout, retry_policy=retry_policy,
            prepare=self._prepare, on_ready=self._on_ready, on_lost=self._on_lost,
            name=f"Vaxine replication {host}:{port}")
        if hasattr(consumer, "registerProducer"):
            consumer.registerProducer(self, True)

    @classmethod
    def from_config(cls, config, consumer, offset: Offset = BEGINNING, **kwargs) -> "ReplicationClient":
        """A client for ``VAXINE_HOST``/``VAXINE_REPLICATION_PORT``/``VAXINE_CONNECTION_TIMEOUT``."""
        return cls(consumer, config.vaxine_host, config.vaxine_replication_port, offset=offset,
                   connect_timeout=config.vaxine_connection_timeout_ms / 1000.0, **kwargs)

    # ------------------------------------------------------------------ service

    def startService(self):
        super().startService()
        self.connection.start()

    def stopService(self):
        """Close the stream (the original just closed the socket too); fires once it is closed."""
        super().stopService()
        return self.connection.stop()

    @property
    def streaming(self) -> bool:
        """True while a connection's start has been accepted."""
        return self.connection.state == Reconnector.READY

    def when_streaming(self) -> defer.Deferred:
        """Deferred firing (with None) once the current or next start is accepted."""
        if self.streaming:
            return defer.succeed(None)
        d = defer.Deferred()
        self._started_waiters.append(d)
        return d

    def status(self) -> dict:
        c = self.connection
        return {"state": c.state, "failures": c.failures, "last_error": c.last_error,
                "position": repr(self.position), "paused": self.paused, "held": len(self._held),
                "delivered": self.delivered}

    # ------------------------------------------------------------------ connection hooks

    def _prepare(self, protocol: ReplicationProtocol) -> defer.Deferred:
        # The start reply is read even while the consumer has paused us;
        # reading stops right after it (_on_ready).
        self._held.clear()
        self._protocol = protocol
        return protocol.start(self.position, self.start_timeout, self.clock)

    def _on_ready(self, protocol: ReplicationProtocol) -> None:
        if self.paused and protocol.transport is not None:
            protocol.transport.pauseProducing()
        self.log.info("Vaxine replication stream started from {position!r}", position=self.position)
        waiters, self._started_waiters = self._started_waiters, []
        for d in waiters:
            d.callback(None)

    def _on_lost(self, protocol: ReplicationProtocol, reason: Failure) -> None:
        if self._protocol is protocol:
            self._protocol = None
        # Held transactions were not handed over; the next start re-reads them.
        self._held.clear()

    # ------------------------------------------------------------------ delivery

    def _received(self, protocol: ReplicationProtocol, txn: WalTransaction) -> None:
        if protocol is not self._protocol:
            return
        if self.paused or self._held:
            self._held.append(txn)
            return
        self._deliver(txn)

    def _deliver(self, txn: WalTransaction) -> None:
        self.position = txn.offset
        self.delivered += 1
        self.consumer.transactionReceived(txn)

    # ------------------------------------------------------------------ IPushProducer

    def pauseProducing(self) -> None:
        if self.paused:
            return
        self.paused = True
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if not self.paused:
            return
        self.paused = False
        while self._held and not self.paused:
            self._deliver(self._held.popleft())
        if not self.paused and self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.resumeProducing()

    def stopProducing(self) -> None:
        """The consumer is gone: stop the service's connection (the position is kept)."""
        self.connection.stop()


@implementer(IWalConsumer)
class WalQueue:
    """
    A bounded buffer between a `ReplicationClient` and a pulling reader.

    Holds at most about `high_water` transactions: at that many it pauses the
    producer, and it resumes it once a `next` call drained the buffer to
    `low_water`.  `next(max_items)` returns a Deferred firing with a non-empty
    list of `WalTransaction`s as soon as one is there; one call may be
    outstanding.  `close()` makes an outstanding and every later `next` fail
    with `Unavailable`.
    """

    def __init__(self, high_water: int = 64, low_water: Optional[int] = None):
        if high_water < 1:
            raise ValueError("high_water must be at least 1")
        self.high_water = high_water
        self.low_water = high_water // 2 if low_water is None else low_water
        self.producer: Any = None
        self._items: Deque[WalTransaction] = collections.deque()
        self._waiter: Optional[tuple] = None
        self._closed = False
        self._paused = False

    def __len__(self) -> int:
        return len(self._items)

    def registerProducer(self, producer, streaming) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def transactionReceived(self, transaction: WalTransaction) -> None:
        self._items.append(transaction)
        if self._waiter is not None:
            d, max_items = self._waiter
            self._waiter = None
            d.callback(self._take(max_items))
        if len(self._items) >= self.high_water and not self._paused and self.producer is not None:
            self._paused = True
            self.producer.pauseProducing()

    def _take(self, max_items: int) -> List[WalTransaction]:
        batch = []
        while self._items and len(batch) < max_items:
            batch.append(self._items.popleft())
        if self._paused and len(self._items) <= self.low_water and self.producer is not None:
            self._paused = False
            self.producer.resumeProducing()
        return batch

    def next(self, max_items: int = 100) -> defer.Deferred:
        if self._closed:
            return defer.fail(Unavailable("the WAL queue is closed"))
        if self._waiter is not None:
            return defer.fail(VaxineError("a next() call is already outstanding"))
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        if self._items:
            return defer.succeed(self._take(max_items))
        d = defer.Deferred()
        self._waiter = (d, max_items)
        return d

    def close(self) -> None:
        self._closed = True
        self._items.clear()
        if self._waiter is not None:
            d, _ = self._waiter
            self._waiter = None
            d.errback(Failure(Unavailable("the WAL queue is closed")))
