"""Small builders shared by the hub tests."""

from __future__ import annotations

import itertools
from typing import NamedTuple, Tuple

from twisted.internet import defer

from electric.hub.interface import (
    CHUNK_CHANGES,
    DELETE,
    TRUNCATE,
    UPSERT,
    ResolvedChange,
    ResolvedTransaction,
    RowChange,
    Transaction,
)


class Snapshot(NamedTuple):
    """A whole snapshot in memory (tests only: the hub hands out readers)."""

    position: int
    rows: Tuple[ResolvedChange, ...]

_ids = itertools.count(1)


def up(table, key, old=None, schema="public", **values):
    return RowChange(schema, table, UPSERT, (str(key),), {"id": str(key), **values}, old)


def dl(table, key, schema="public", **values):
    return RowChange(schema, table, DELETE, (str(key),), {"id": str(key), **values}, None)


def tr(table, schema="public"):
    return RowChange(schema, table, TRUNCATE, (), None, None)


def txn(*changes, origin="pg_a", origin_id=None, ts=None):
    n = next(_ids)
    if origin_id is None:
        origin_id = n.to_bytes(8, "big")
    return Transaction(origin, origin_id, ts if ts is not None else 1_700_000_000_000_000 + n, tuple(changes))


@defer.inlineCallbacks
def read_snapshot(hub, tables=None, max_rows=None):
    """A whole snapshot as `Snapshot(position, rows)`, read through the hub's chunked reader (tests only)."""
    reader = yield hub.snapshot(tables)
    rows = []
    try:
        while True:
            chunk = yield (reader.next(max_rows) if max_rows else reader.next(CHUNK_CHANGES))
            if not chunk:
                break
            rows.extend(chunk)
    finally:
        reader.close()
    return Snapshot(reader.position, tuple(rows))


@defer.inlineCallbacks
def read_transactions(sub, upto, max_items=100):
    """Items from `sub` until position `upto` is complete, joined into whole transactions (tests only)."""
    out = []
    open_items = []
    while sub.position < upto:
        for item in (yield sub.next(max_items)):
            if open_items and open_items[0].position != item.position:
                raise AssertionError(f"item at {item.position} while {open_items[0].position} is open")
            open_items.append(item)
            if not item.more:
                first = open_items[0]
                changes = tuple(c for i in open_items for c in i.changes)
                out.append(ResolvedTransaction(first.position, first.origin, first.origin_id, first.commit_timestamp,
                                               changes, first.catch_up))
                open_items = []
    return out
