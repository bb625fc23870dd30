"""
One outgoing connection kept up with backoff: the reconnect loop both Vaxine links share.

Why not ``twisted.application.internet.ClientService``: the replication link
must count a connection as established only once Vaxine accepted the stream
start, and ClientService's ``prepareConnection`` failure path (Twisted 26)
neither closes the rejected connection nor survives its later loss (automat
``NoTransition``).  This loop is small and explicit instead; it uses
ClientService's backoff policy (`backoffPolicy`, with jitter).

States: ``stopped → connecting → preparing → ready``, and ``waiting``
between attempts.  An attempt is: connect through the endpoint, bounded by
`connect_timeout` (``VAXINE_CONNECTION_TIMEOUT``) on the injected clock;
then ``prepare(protocol)`` (the replication link sends its start request and
waits for the reply; it must bound its own wait); then ready.  A failed
attempt, or the loss of a ready connection, counts one failure and schedules
the next attempt ``retry_policy(failures)`` seconds later; becoming ready
resets the count.  Everything time-related goes through `clock`, so tests
drive it with ``task.Clock``.

Protocols used with it must have a ``closed`` Deferred that fires with None
(never fails) from connectionLost, after setting ``lost_reason`` (the
connectionLost Failure) and ``connected = False``.
"""

from __future__ import annotations

import random
from typing import Any, Callable, List, Optional, Tuple

from twisted.application.internet import backoffPolicy
from twisted.internet import defer, error
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from electric.vaxine.errors import Unavailable, VaxineError

_rng = random.Random()


def default_retry_policy() -> Callable[[int], float]:
    """100 ms doubling to 5 s (spec 3.7), plus up to 100 ms of jitter so clients do not retry in step."""
    return backoffPolicy(initialDelay=0.1, maxDelay=5.0, factor=2.0, jitter=lambda: _rng.uniform(0.0, 0.1))


class _Attempt:
    __slots__ = ("deferred", "protocol", "done")

    def __init__(self):
        self.deferred: Optional[defer.Deferred] = None
        self.protocol: Any = None
        self.done = False


def describe_failure(failure) -> str:
    """A one-line reason from a Failure (or an exception, or None)."""
    value = failure.value if isinstance(failure, Failure) else failure
    if value is None:
        return "unknown reason"
    if isinstance(value, VaxineError):
        return str(value)
    if isinstance(value, error.ConnectionDone):
        return "connection closed by the peer"
    text = str(value) or type(value).__name__
    return f"{type(value).__name__}: {text}" if type(value).__name__ not in text else text


class Reconnector:
    """Keeps one connection from `factory` through `endpoint` until stopped."""

    log = Logger()

    STOPPED, CONNECTING, PREPARING, READY, WAITING = "stopped", "connecting", "preparing", "ready", "waiting"

    def __init__(
        self,
        endpoint,
        factory: Factory,
        clock: IReactorTime,
        connect_timeout: float,
        retry_policy: Optional[Callable[[int], float]] = None,
        prepare: Optional[Callable[[Any], Any]] = None,
        on_ready: Optional[Callable[[Any], None]] = None,
        on_lost: Optional[Callable[[Any, Failure], None]] = None,
        name: str = "Vaxine",
    ):
        self.endpoint = endpoint
        self.factory = factory
        self.clock = clock
        self.connect_timeout = connect_timeout
        self.retry_policy = retry_policy or default_retry_policy()
        self.prepare = prepare
        self.on_ready = on_ready
        self.on_lost = on_lost
        self.name = name
        self.state = self.STOPPED
        self.failures = 0
        self.last_error: Optional[str] = None
        self.protocol: Any = None
        self._attempt: Optional[_Attempt] = None
        self._retry = None
        self._waiters: List[Tuple[defer.Deferred, Optional[int]]] = []
        self._stop_waiters: List[defer.Deferred] = []

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        if self.state != self.STOPPED or self._stop_waiters:
            return
        self._connect()

    def stop(self) -> defer.Deferred:
        """Stop retrying, close the connection; fires once nothing is open or pending."""
        self._fail_waiters(lambda remaining: True, Unavailable(f"{self.name} link stopped"))
        if self.state == self.STOPPED:
            return defer.succeed(None)
        d = defer.Deferred()
        self._stop_waiters.append(d)
        if self.state == self.WAITING:
            self._retry.cancel()
            self._retry = None
            self._stopped()
        elif self.state == self.CONNECTING:
            self._attempt.deferred.cancel()
        else:
            attempt = self._attempt
            if attempt is not None and attempt.protocol is not None and attempt.protocol.transport is not None:
                attempt.protocol.transport.abortConnection()
        return d

    def when_ready(self, fail_after_failures: Optional[int] = 1) -> defer.Deferred:
        """The ready protocol now, or the next one; fails with `Unavailable` after that many failed attempts."""
        if self.state == self.READY:
            return defer.succeed(self.protocol)
        if self.state == self.STOPPED:
            return defer.fail(Unavailable(f"{self.name} link is not running"))
        d = defer.Deferred()
        self._waiters.append((d, fail_after_failures))
        return d

    # ------------------------------------------------------------------ the loop

    def _connect(self) -> None:
        self._retry = None
        attempt = self._attempt = _Attempt()
        self.state = self.CONNECTING
        d = defer.maybeDeferred(self.endpoint.connect, self.factory)
        d.addTimeout(self.connect_timeout, self.clock)
        attempt.deferred = d
        d.addCallbacks(lambda protocol: self._connected(attempt, protocol),
                       lambda failure: self._failed(attempt, failure))

    def _connected(self, attempt: _Attempt, protocol) -> None:
        attempt.protocol = protocol
        if attempt.done or self._stop_waiters:
            attempt.done = True
            protocol.transport.abortConnection()
            protocol.closed.addCallback(lambda _: self._stopped())
            return
        protocol.closed.addCallback(lambda _: self._failed(attempt, protocol.lost_reason))
        self.state = self.PREPARING
        d = defer.maybeDeferred(self.prepare, protocol) if self.prepare else defer.succeed(None)
        d.addCallbacks(lambda _: self._ready(attempt), lambda failure: self._failed(attempt, failure))

    def _ready(self, attempt: _Attempt) -> None:
        if attempt.done:
            return
        self.state = self.READY
        self.failures = 0
        self.last_error = None
        self.protocol = attempt.protocol
        waiters, self._waiters = self._waiters, []
        for d, _ in waiters:
            d.callback(attempt.protocol)
        if self.on_ready is not None:
            self.on_ready(attempt.protocol)

    def _failed(self, attempt: _Attempt, failure: Failure) -> None:
        if attempt.done:
            return
        attempt.done = True
        was_ready = self.state == self.READY
        self.protocol = None
        if isinstance(failure.value, defer.TimeoutError) and attempt.protocol is None:
            reason = f"could not connect within {self.connect_timeout:g} s"
        elif isinstance(failure.value, defer.CancelledError) and self._stop_waiters:
            reason = "stopped"
        else:
            reason = describe_failure(failure)
        self.last_error = reason
        protocol = attempt.protocol
        if protocol is not None and protocol.transport is not None and protocol.connected:
            # The attempt failed while the connection is up (prepare failed):
            # close it; its `closed` will find the attempt done.
            protocol.transport.abortConnection()
        if was_ready and self.on_lost is not None:
            self.on_lost(protocol, failure)
        if self._stop_waiters:
            if protocol is not None and protocol.connected:
                protocol.closed.addCallback(lambda _: self._stopped())
            else:
                self._stopped()
            return
        self.failures += 1
        self._fail_waiters(lambda remaining: remaining is not None and remaining <= 1,
                           Unavailable(f"{self.name} unavailable: {reason}"), decrement=True)
        delay = self.retry_policy(self.failures)
        if was_ready:
            self.log.info("{name} connection lost ({reason}); reconnecting in {delay:.2f} s",
                          name=self.name, reason=reason, delay=delay)
        else:
            self.log.info("{name} connection attempt {n} failed ({reason}); retrying in {delay:.2f} s",
                          name=self.name, n=self.failures, reason=reason, delay=delay)
        self.state = self.WAITING
        self._retry = self.clock.callLater(delay, self._connect)

    def _stopped(self) -> None:
        if self.state == self.STOPPED:
            return
        self.state = self.STOPPED
        self._attempt = None
        self.protocol = None
        waiters, self._stop_waiters = self._stop_waiters, []
        for d in waiters:
            d.callback(None)

    def _fail_waiters(self, due: Callable[[Optional[int]], bool], exc: Exception, decrement: bool = False) -> None:
        keep = []
        for d, remaining in self._waiters:
            if due(remaining):
                d.errback(Failure(exc))
            else:
                keep.append((d, remaining - 1 if decrement and remaining is not None else remaining))
        self._waiters = keep
