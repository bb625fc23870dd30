"""
Would Postgres accept this text as a value of that column?  Decided without a database.

Every value Electric carries travels in Postgres's text form and is parsed by
each database's input functions only when the apply worker of its
subscription stores it.  A value a database refuses there stops that
database's replication for good: the apply worker fails, restarts and fails
on the same transaction forever.  Values from Satellite clients are therefore
checked here, before Electric acknowledges them, against the same rules the
input functions of PostgreSQL 15 apply, including the column's type modifier
(`atttypmod`: varchar/char/bit lengths, numeric precision and scale, time
precision, array element modifiers).

`validator(type_name, typmod)` returns a function that raises `InvalidValue`
(with a message in Postgres's words where it has them) for text the type's
input function would refuse.

A few inputs mean different things, or are valid or not, depending on the
settings or catalog of the database that reads them: dates whose field order
depends on ``DateStyle``, time zone names and abbreviations (each server's
``timezone_abbreviations`` and time zone database), ``money`` beyond plain
integers (``lc_monetary``), names of database objects (``regclass`` ...),
roles (``aclitem``), ``xml`` (``xmloption``).  Electric cannot know how every
database will read them, so it refuses them with `NotPortable`, a
subclass of `InvalidValue`, even where this or that database would accept
them.  Everything else is decided exactly as PostgreSQL 15 decides it (the
property tests compare with a real server).

One module per family of types: `numbers` (integers, oid, bool, floats,
numeric, money), `text` (character types, bytea, uuid, bit strings, json,
text search), `dates` (date/time types and interval), `network`,
`geometry`, `identifiers` (tid, vectors, snapshots, reg*), `containers`
(arrays, ranges); `common` holds what they share.

Pure: no I/O, nothing at import time beyond building constant tables.
"""

from __future__ import annotations

import functools
from typing import Callable, Dict

from electric.postgres.protocol import types
from electric.postgres.protocol.values.common import (
    Check, InvalidValue, NotPortable, _anything, _context_dependent, _not_a_column_type,
)
from electric.postgres.protocol.values.containers import _array, _range_type
from electric.postgres.protocol.values.dates import _interval, _time, _timestamp, check_date
from electric.postgres.protocol.values.geometry import _geometric
from electric.postgres.protocol.values.identifiers import (
    _object_reference, check_int2vector, check_oidvector, check_tid, check_txid_snapshot,
)
from electric.postgres.protocol.values.network import _network, check_macaddr, check_macaddr8
from electric.postgres.protocol.values.numbers import (
    _float, _integer, _numeric, _oid_like, check_bool, check_money, numeric_typmod, parse_numeric,
)
from electric.postgres.protocol.values.text import (
    _bits, _bounded_string, _json, check_bytea, check_tsquery, check_tsvector, check_uuid,
)


__all__ = ["Check", "InvalidValue", "NotPortable", "check", "numeric_typmod", "parse_numeric", "validator"]

_SCALARS: Dict[str, Callable[[int], Check]] = {
    "bool": lambda t: check_bool,
    "int2": lambda t: _integer("smallint", 16),
    "int4": lambda t: _integer("integer", 32),
    "int8": lambda t: _integer("bigint", 64),
    "oid": lambda t: _oid_like("oid"),
    "xid": lambda t: _anything,  # PostgreSQL 15 xidin/cidin read anything (garbage is 0)
    "cid": lambda t: _anything,
    "xid8": lambda t: _anything,
    "float4": lambda t: _float("float4", "real"),
    "float8": lambda t: _float("float8", "double precision"),
    "numeric": _numeric,
    "money": lambda t: check_money,
    "text": lambda t: _anything,
    "name": lambda t: _anything,  # longer names are cut to 63 bytes, never refused
    "char": lambda t: _anything,  # "char" keeps the first byte (or an \ooo escape)
    "refcursor": lambda t: _anything,
    "varchar": lambda t: _bounded_string("character varying", t),
    "bpchar": lambda t: _bounded_string("character", t),
    "bytea": lambda t: check_bytea,
    "uuid": lambda t: check_uuid,
    "json": lambda t: _json(False),
    "jsonb": lambda t: _json(True),
    "bit": lambda t: _bits(False, t),
    "varbit": lambda t: _bits(True, t),
    "inet": lambda t: _network(False),
    "cidr": lambda t: _network(True),
    "macaddr": lambda t: check_macaddr,
    "macaddr8": lambda t: check_macaddr8,
    "point": lambda t: _geometric("point"),
    "lseg": lambda t: _geometric("lseg"),
    "box": lambda t: _geometric("box"),
    "path": lambda t: _geometric("path"),
    "polygon": lambda t: _geometric("polygon"),
    "line": lambda t: _geometric("line"),
    "circle": lambda t: _geometric("circle"),
    "tid": lambda t: check_tid,
    "int2vector": lambda t: check_int2vector,
    "oidvector": lambda t: check_oidvector,
    "txid_snapshot": lambda t: check_txid_snapshot,
    "tsvector": lambda t: check_tsvector,
    "tsquery": lambda t: check_tsquery,
    "date": lambda t: check_date,
    "time": lambda t: _time(False, t),
    "timetz": lambda t: _time(True, t),
    "timestamp": lambda t: _timestamp(False, t),
    "timestamptz": lambda t: _timestamp(True, t),
    "interval": _interval,
    "int4range": lambda t: _range_type("int4range"),
    "int8range": lambda t: _range_type("int8range"),
    "numrange": lambda t: _range_type("numrange"),
    "daterange": lambda t: _range_type("daterange"),
    "tsrange": lambda t: _range_type("tsrange"),
    "tstzrange": lambda t: _range_type("tstzrange"),
    "xml": lambda t: _context_dependent("xml", "are parsed according to each database's xmloption and XML library"),
    "aclitem": lambda t: _context_dependent("aclitem", "name roles, which each database resolves in its own catalog"),
    "jsonpath": lambda t: _context_dependent("jsonpath", "are not checked by Electric, so clients cannot write them"),
    "gtsvector": lambda t: _not_a_column_type("gtsvector"),
    "record": lambda t: _not_a_column_type("record"),
    "cstring": lambda t: _not_a_column_type("cstring"),
    "unknown": lambda t: _not_a_column_type("unknown"),
}
for _name in ("regproc", "regprocedure", "regoper", "regoperator", "regclass", "regtype", "regconfig",
              "regdictionary", "regnamespace", "regrole", "regcollation"):
    _SCALARS[_name] = (lambda label: lambda t: _object_reference(label))(_name)


@functools.lru_cache(maxsize=512)
def validator(type_name: str, typmod: int = -1) -> Check:
    """
    The check for values of a column of type `type_name` (pg_type.typname:
    ``int4``, ``_int4`` for int4[], ...) with type modifier `typmod`
    (pg_attribute.atttypmod; -1 for none).  For arrays the modifier applies
    to the elements, as in Postgres.  Raises `UnknownTypeError` for a type
    Electric does not carry.
    """
    pgtype = types.type_by_name(type_name)
    if pgtype.is_array:
        element = types.type_by_oid(pgtype.element_oid)
        return _array(validator(element.name, typmod), ";" if element.name == "box" else ",")
    make = _SCALARS.get(pgtype.name)
    if make is None:
        return _not_a_column_type(pgtype.name)
    return make(typmod)


def check(type_name: str, typmod: int, text: str) -> None:
    """Raise `InvalidValue` unless Postgres would accept `text` for such a column."""
    validator(type_name, typmod)(text)
