"""
Waiting for an eventual outcome: `wait_until` / `eventually` inside
reactor-driven (trial) tests, without blocking the reactor; `poll` in tests
that run blocking code (psql, child processes) outside the reactor.
"""

from __future__ import annotations

import time

from twisted.internet import defer, reactor, task


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def wait_until(check, timeout=30.0, what="condition", interval=0.1):
    """Poll `check()` (may return a Deferred) until truthy; returns that value."""
    deadline = reactor.seconds() + timeout
    last = None
    while True:
        last = yield defer.maybeDeferred(check)
        if last:
            return last
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value {last!r}")
        yield sleep(interval)


def eventually(check, timeout=30.0, interval=0.1):
    return wait_until(check, timeout=timeout, interval=interval)


def poll(check, timeout=60.0, what="condition", interval=0.1):
    """Blocking: call `check()` until truthy and return that value (AssertionError after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value {last!r}")
        time.sleep(interval)
