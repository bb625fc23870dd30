"""
Transition to the chunked hub contract: whole snapshots and whole
transactions for callers that are not converted yet.

Both hold everything in memory at once, exactly as the hub did before its
chunked contract, so they are only for callers whose data is small or that
have not been converted yet; they go away once every caller reads chunk by
chunk (`ISnapshotReader`, `ResolvedTransaction.more`).
"""

from __future__ import annotations

from typing import List

from twisted.internet import defer
from zope.interface import implementer

from electric.hub.interface import CHUNK_CHANGES, ISubscription, ResolvedTransaction, Snapshot


@defer.inlineCallbacks
def read_snapshot(hub, tables=None):
    """Deferred firing with the whole `Snapshot` of `tables`, read through the hub's chunked reader."""
    reader = yield hub.snapshot(tables)
    rows = []
    try:
        while True:
            chunk = yield reader.next(CHUNK_CHANGES)
            if not chunk:
                break
            rows.extend(chunk)
    finally:
        reader.close()
    return Snapshot(reader.position, tuple(rows))


@implementer(ISubscription)
class WholeTransactions:
    """An `ISubscription` whose items are whole transactions (the chunks of a big one joined)."""

    def __init__(self, subscription):
        self._sub = subscription
        self._open: List[ResolvedTransaction] = []

    @property
    def position(self):
        return self._sub.position

    def next(self, max_items=100):
        d = self._sub.next(max_items)
        return d.addCallback(self._join, max_items)

    def _join(self, items, max_items):
        out = []
        for item in items:
            if not item.more and not self._open:
                out.append(item)
                continue
            self._open.append(item)
            if not item.more:
                out.append(self._whole())
        if out:
            return out
        return self.next(max_items)

    def _whole(self) -> ResolvedTransaction:
        parts, self._open = self._open, []
        first = parts[0]
        changes = tuple(c for p in parts for c in p.changes)
        return ResolvedTransaction(first.position, first.origin, first.origin_id, first.commit_timestamp, changes,
                                   first.catch_up)

    def close(self):
        self._open = []
        self._sub.close()
