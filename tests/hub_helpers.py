"""Small builders shared by the hub tests."""

from __future__ import annotations

import itertools

from electric.hub.interface import DELETE, TRUNCATE, UPSERT, RowChange, Transaction

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
