"""
The PB API link to Vaxine (Antidote protocol buffers, ``VAXINE_API_PORT``): Twisted side.

`AntidoteProtocol` moves frames: it writes encoded requests, feeds received
bytes to `electric.vaxine.antidote.Decoder`, and matches replies to requests
in order (the server answers strictly in request order, spec 1.1).  Requests
are pipelined up to `max_pipeline` deep; the spec notes the original never
pipelined, and the real node was checked to answer pipelined requests in
order.  Each request has its own timeout on the injected clock; a timeout or
any protocol violation closes the connection, because later replies could no
longer be matched (every request still waiting then fails).

`AntidoteClient` is the long-lived ``IService``: it keeps one connection up
through `electric.vaxine.connection.Reconnector` (connect timeout
``VAXINE_CONNECTION_TIMEOUT``, backoff with jitter) and offers the
operations Electric needs.  Every operation returns a Deferred that fails
with a `electric.vaxine.errors.VaxineError`: `Unavailable` (no connection,
or it was lost before the reply), `RequestTimeout`, `RequestFailed` (Vaxine
said no; ``errorcode``), `ProtocolError`.

Interactive transactions (spec 1.4) are `InteractiveTransaction` objects:
start, any number of update/read calls, commit.  They are pinned to the
connection they started on; if it is lost, every later call fails with
`Unavailable` and the caller retries the *whole* transaction (the original
retried with backoff for up to 10 s, then failed loudly).  An abandoned
transaction is left to the server, as the original did.
"""

from __future__ import annotations

import collections
from typing import Deque, Optional, Sequence

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from electric.vaxine import antidote
from electric.vaxine.connection import Reconnector, describe_failure
from electric.vaxine.errors import ProtocolError, RequestTimeout, Unavailable, VaxineError
from electric.vaxine.pb import antidote_pb2 as pb

DEFAULT_REQUEST_TIMEOUT = 10.0
"""Seconds a request may wait for its reply (the original's client-side timeout)."""

PROBE_KEY = b"__electric_liveness_probe"


class _Pending:
    __slots__ = ("request", "deferred", "timer", "sent")

    def __init__(self, request, deferred, timer):
        self.request = request
        self.deferred = deferred
        self.timer = timer
        self.sent = False


class AntidoteProtocol(Protocol):
    """One PB connection: requests out in order, replies matched in order."""

    def __init__(self, clock, request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
                 max_frame: int = antidote.MAX_FRAME, max_pipeline: int = 16):
        self.clock = clock
        self.request_timeout = request_timeout
        self.max_pipeline = max_pipeline
        self.closed: defer.Deferred = defer.Deferred()
        self.lost_reason: Optional[Failure] = None
        self.connected = False
        self._decoder = antidote.Decoder(max_frame)
        self._inflight: Deque[_Pending] = collections.deque()
        self._queued: Deque[_Pending] = collections.deque()
        self._error: Optional[VaxineError] = None

    def connectionMade(self):
        self.connected = True
        if hasattr(self.transport, "setTcpKeepAlive"):
            self.transport.setTcpKeepAlive(True)

    @property
    def outstanding(self) -> int:
        return len(self._inflight) + len(self._queued)

    def request(self, message) -> defer.Deferred:
        """Deferred firing with the successful reply to `message` (see `antidote.check_reply`)."""
        if not self.connected or self._error is not None:
            return defer.fail(self._error or Unavailable("Vaxine PB connection is closed"))
        d = defer.Deferred()
        pending = _Pending(message, d, None)
        pending.timer = self.clock.callLater(self.request_timeout, self._timed_out, pending)
        self._queued.append(pending)
        self._send_more()
        return d

    def _send_more(self) -> None:
        while self._queued and len(self._inflight) < self.max_pipeline and self._error is None:
            pending = self._queued.popleft()
            pending.sent = True
            self._inflight.append(pending)
            self.transport.write(antidote.encode(pending.request))

    def dataReceived(self, data: bytes) -> None:
        if self._error is not None:
            return
        try:
            replies = self._decoder.feed(data)
        except ProtocolError as e:
            self._abort(e)
            return
        for reply in replies:
            if not self._inflight:
                self._abort(ProtocolError(f"unsolicited {type(reply).__name__} from Vaxine"))
                return
            pending = self._inflight.popleft()
            pending.timer.cancel()
            try:
                checked = antidote.check_reply(pending.request, reply)
            except ProtocolError as e:
                self._inflight.appendleft(pending)
                self._abort(e)
                return
            except VaxineError as e:
                pending.deferred.errback(Failure(e))
            else:
                pending.deferred.callback(checked)
            if self._error is not None:
                return
        self._send_more()

    def _timed_out(self, pending: _Pending) -> None:
        pending.timer = None
        name = antidote.request_name(pending.request)
        self._abort(RequestTimeout(f"no reply to {name} within {self.request_timeout:g} s"), first=pending)

    def _abort(self, exc: VaxineError, first: Optional[_Pending] = None) -> None:
        """Drop the link: `first` (or, without one, every request) fails with `exc`, the rest as Unavailable."""
        if self._error is None:
            self._error = exc
        others = Unavailable(f"Vaxine PB connection closed after another request failed: {exc}")
        self._fail_all(lambda pending: exc if first is None or pending is first else others)
        if self.transport is not None:
            self.transport.abortConnection()

    def _fail_all(self, exc_for) -> None:
        waiting = list(self._inflight) + list(self._queued)
        self._inflight.clear()
        self._queued.clear()
        for pending in waiting:
            if pending.timer is not None and pending.timer.active():
                pending.timer.cancel()
            pending.deferred.errback(Failure(exc_for(pending)))

    def connectionLost(self, reason=None):
        self.connected = False
        lost = Unavailable(f"Vaxine PB connection lost: {describe_failure(reason)}")
        if self._error is None:
            self._error = lost
        self._fail_all(lambda pending: lost)
        self.lost_reason = reason
        self.closed.callback(None)


class InteractiveTransaction:
    """A started Vaxine transaction; every call goes over the connection it started on."""

    def __init__(self, protocol: AntidoteProtocol, descriptor: bytes):
        self.protocol = protocol
        self.descriptor = descriptor
        self.finished = False

    def _request(self, message) -> defer.Deferred:
        if self.finished:
            return defer.fail(VaxineError("the transaction was already committed or aborted"))
        return self.protocol.request(message)

    def update(self, updates: Sequence[pb.ApbUpdateOp]) -> defer.Deferred:
        """Deferred[None] once Vaxine applied `updates` (one ApbUpdateObjects)."""
        return self._request(antidote.update_objects(self.descriptor, updates)).addCallback(lambda _: None)

    def read(self, objects: Sequence[pb.ApbBoundObject]) -> defer.Deferred:
        """Deferred[list] of the objects' values within this transaction (`antidote.read_value`)."""
        return self._request(antidote.read_objects(self.descriptor, objects)).addCallback(antidote.read_values)

    def commit(self) -> defer.Deferred:
        """Deferred[bytes]: the opaque ETF commit clock."""
        d = self._request(antidote.commit_transaction(self.descriptor))
        self.finished = True
        return d.addCallback(lambda reply: bytes(reply.commit_time))

    def abort(self) -> defer.Deferred:
        d = self._request(antidote.abort_transaction(self.descriptor))
        self.finished = True
        return d.addCallback(lambda _: None)


class _ProtocolFactory(Factory):
    def __init__(self, client: "AntidoteClient"):
        self.client = client

    def buildProtocol(self, addr):
        c = self.client
        return AntidoteProtocol(c.clock, c.request_timeout, c.max_frame, c.max_pipeline)


class AntidoteClient(service.Service):
    """
    The PB API link as a service: one connection, kept up with backoff.

    `host`/`port` are ``VAXINE_HOST``/``VAXINE_API_PORT``; `connect_timeout`
    (seconds) is ``VAXINE_CONNECTION_TIMEOUT`` / 1000.  `reactor` makes the
    connection, `clock` (default: the reactor) runs every timer.  `endpoint`
    replaces the default ``HostnameEndpoint`` (tests).
    """

    log = Logger()

    def __init__(self, host: str = "127.0.0.1", port: int = 8087, connect_timeout: float = 5.0,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT, retry_policy=None, reactor=None,
                 clock=None, endpoint=None, max_frame: int = antidote.MAX_FRAME, max_pipeline: int = 16):
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.host, self.port = host, port
        self.clock = clock or reactor
        self.request_timeout = request_timeout
        self.max_frame = max_frame
        self.max_pipeline = max_pipeline
        if endpoint is None:
            endpoint = HostnameEndpoint(reactor, host, port, timeout=connect_timeout)
        self.connection = Reconnector(endpoint, _ProtocolFactory(self), self.clock, connect_timeout,
                                      retry_policy=retry_policy, name=f"Vaxine PB API {host}:{port}")

    @classmethod
    def from_config(cls, config, **kwargs) -> "AntidoteClient":
        """A client for ``VAXINE_HOST``/``VAXINE_API_PORT``/``VAXINE_CONNECTION_TIMEOUT`` of an `electric.config.Config`."""
        return cls(config.vaxine_host, config.vaxine_api_port,
                   connect_timeout=config.vaxine_connection_timeout_ms / 1000.0, **kwargs)

    def startService(self):
        super().startService()
        self.connection.start()

    def stopService(self):
        super().stopService()
        return self.connection.stop()

    @property
    def connected(self) -> bool:
        return self.connection.state == Reconnector.READY

    def status(self) -> dict:
        c = self.connection
        return {"state": c.state, "failures": c.failures, "last_error": c.last_error,
                "outstanding": c.protocol.outstanding if c.protocol is not None else 0}

    def when_connected(self, fail_after_failures: Optional[int] = None) -> defer.Deferred:
        """Deferred firing (with None) once connected; with `fail_after_failures`, fails after that many failed attempts."""
        return self.connection.when_ready(fail_after_failures).addCallback(lambda _: None)

    def _protocol(self) -> defer.Deferred:
        return self.connection.when_ready(fail_after_failures=1)

    def request(self, message) -> defer.Deferred:
        """Send any top-level request; Deferred[the checked reply message]."""
        return self._protocol().addCallback(lambda protocol: protocol.request(message))

    def start_transaction(self) -> defer.Deferred:
        """Deferred[`InteractiveTransaction`] (ApbStartTransaction with ``ignore`` and empty properties)."""
        def started(protocol):
            return protocol.request(antidote.start_transaction()).addCallback(
                lambda reply: InteractiveTransaction(protocol, antidote.descriptor_of(reply)))
        return self._protocol().addCallback(started)

    @defer.inlineCallbacks
    def write(self, updates: Sequence[pb.ApbUpdateOp]):
        """One interactive transaction: start, all `updates` in one ApbUpdateObjects, commit.

        Deferred[bytes] (the commit clock).  Nothing is retried here: on any
        failure the caller retries the whole transaction (spec 1.4).
        """
        txn = yield self.start_transaction()
        if updates:
            yield txn.update(updates)
        commit_time = yield txn.commit()
        return commit_time

    def static_read(self, objects: Sequence[pb.ApbBoundObject]) -> defer.Deferred:
        """Deferred[list] of the objects' current values (ApbStaticReadObjects)."""
        return self.request(antidote.static_read_objects(objects)).addCallback(antidote.read_values)

    def static_update(self, updates: Sequence[pb.ApbUpdateOp]) -> defer.Deferred:
        """Deferred[bytes] commit clock of a one-shot write (ApbStaticUpdateObjects)."""
        return self.request(antidote.static_update_objects(updates)).addCallback(
            lambda reply: bytes(reply.commit_time))

    def ping(self) -> defer.Deferred:
        """Liveness probe: a static read of a key nobody writes; Deferred[None] or a VaxineError."""
        return self.static_read([antidote.bound_object(PROBE_KEY, antidote.LWWREG)]).addCallback(lambda _: None)


__all__ = ["AntidoteProtocol", "AntidoteClient", "InteractiveTransaction", "DEFAULT_REQUEST_TIMEOUT"]
