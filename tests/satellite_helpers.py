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
