"""
Ordinary (non-replication) SQL sessions to a connector's Postgres, over txpostgres.

Setup, introspection and migrations all use these; the replication stream
uses Electric's own wire codec instead (`electric.postgres.source.replication`).
"""

from __future__ import annotations

import psycopg2
from txpostgres import txpostgres


class Connection(txpostgres.Connection):
    """
    txpostgres re-polls a connection whose startup failed (e.g. a wrong
    password) after it already failed the connect Deferred; that second
    error must not escape into the reactor as an unhandled exception.
    """

    def _quiet(self, method):
        try:
            method()
        except psycopg2.Error:
            self.reactor.removeReader(self)
            self.reactor.removeWriter(self)

    def doRead(self):
        self._quiet(super().doRead)

    def doWrite(self):
        self._quiet(super().doWrite)


def error_text(exc) -> str:
    """The server's message (from an exception or a Failure), without psycopg2's decoration."""
    exc = getattr(exc, "value", exc)
    text = getattr(exc, "pgerror", None)
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    if primary:
        return primary
    if text:
        return " ".join(text.split())
    return " ".join(str(exc).split()) or exc.__class__.__name__
