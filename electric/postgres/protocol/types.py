"""
Built-in Postgres types: name, OID, array OID and typlen.

Relation messages and RowDescriptions carry OIDs, the schema registry and
logs speak names; this is the one table both directions use (postgres-inbound
spec §9, matching a stock PG 15 catalog).  Array types are named ``_<elem>``
like ``pg_type.typname`` does, so ``int4[]`` is ``_int4`` with OID 1007.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional


class UnknownTypeError(KeyError):
    """An OID or name that is not a built-in type Electric can carry."""

    def __str__(self):
        return self.args[0] if self.args else "unknown type"


@dataclass(frozen=True)
class PgType:
    name: str
    oid: int
    array_oid: int
    """OID of the array type whose elements are this type (0: none)."""
    typlen: int
    """Bytes of the fixed-size representation; -1 varlena, -2 C string."""
    element_oid: int = 0
    """For an array type: its element type's OID; 0 for scalars."""

    @property
    def is_array(self) -> bool:
        return self.element_oid != 0


# (typname, oid, array oid, typlen) -- postgres-inbound.md section 9.
_BUILTIN = [
    ('bool', 16, 1000, 1),
    ('bytea', 17, 1001, -1),
    ('char', 18, 1002, 1),
    ('name', 19, 1003, 64),
    ('int8', 20, 1016, 8),
    ('int2', 21, 1005, 2),
    ('int2vector', 22, 1006, -1),
    ('int4', 23, 1007, 4),
    ('regproc', 24, 1008, 4),
    ('text', 25, 1009, -1),
    ('oid', 26, 1028, 4),
    ('tid', 27, 1010, 6),
    ('xid', 28, 1011, 4),
    ('cid', 29, 1012, 4),
    ('oidvector', 30, 1013, -1),
    ('json', 114, 199, -1),
    ('xml', 142, 143, -1),
    ('point', 600, 1017, 16),
    ('lseg', 601, 1018, 32),
    ('path', 602, 1019, -1),
    ('box', 603, 1020, 32),
    ('polygon', 604, 1027, -1),
    ('line', 628, 629, 24),
    ('cidr', 650, 651, -1),
    ('float4', 700, 1021, 4),
    ('float8', 701, 1022, 8),
    ('unknown', 705, 0, -2),
    ('circle', 718, 719, 24),
    ('macaddr8', 774, 775, 8),
    ('money', 790, 791, 8),
    ('macaddr', 829, 1040, 6),
    ('inet', 869, 1041, -1),
    ('aclitem', 1033, 1034, 12),
    ('bpchar', 1042, 1014, -1),
    ('varchar', 1043, 1015, -1),
    ('date', 1082, 1182, 4),
    ('time', 1083, 1183, 8),
    ('timestamp', 1114, 1115, 8),
    ('timestamptz', 1184, 1185, 8),
    ('interval', 1186, 1187, 16),
    ('timetz', 1266, 1270, 12),
    ('bit', 1560, 1561, -1),
    ('varbit', 1562, 1563, -1),
    ('numeric', 1700, 1231, -1),
    ('refcursor', 1790, 2201, -1),
    ('regprocedure', 2202, 2207, 4),
    ('regoper', 2203, 2208, 4),
    ('regoperator', 2204, 2209, 4),
    ('regclass', 2205, 2210, 4),
    ('regtype', 2206, 2211, 4),
    ('record', 2249, 2287, -1),
    ('cstring', 2275, 1263, -2),
    ('uuid', 2950, 2951, 16),
    ('txid_snapshot', 2970, 2949, -1),
    ('tsvector', 3614, 3643, -1),
    ('tsquery', 3615, 3645, -1),
    ('gtsvector', 3642, 3644, -1),
    ('regconfig', 3734, 3735, 4),
    ('regdictionary', 3769, 3770, 4),
    ('jsonb', 3802, 3807, -1),
    ('int4range', 3904, 3905, -1),
    ('numrange', 3906, 3907, -1),
    ('tsrange', 3908, 3909, -1),
    ('tstzrange', 3910, 3911, -1),
    ('daterange', 3912, 3913, -1),
    ('int8range', 3926, 3927, -1),
    ('jsonpath', 4072, 4073, -1),
    ('regnamespace', 4089, 4090, 4),
    ('regrole', 4096, 4097, 4),
    ('regcollation', 4191, 4192, 4),
    ('xid8', 5069, 271, 8),
]

_BY_OID: Dict[int, PgType] = {}
_BY_NAME: Dict[str, PgType] = {}


def _register(t: PgType) -> None:
    _BY_OID[t.oid] = t
    _BY_NAME[t.name] = t


for _name, _oid, _array_oid, _typlen in _BUILTIN:
    _register(PgType(_name, _oid, _array_oid, _typlen))
for _name, _oid, _array_oid, _typlen in _BUILTIN:
    # `unknown` has no array type (array oid 0); do not invent one.
    if _array_oid:
        _register(PgType("_" + _name, _array_oid, 0, -1, element_oid=_oid))

BUILTIN_TYPES = tuple(_BY_OID.values())


def type_by_oid(oid: int) -> PgType:
    try:
        return _BY_OID[oid]
    except (KeyError, TypeError):
        raise UnknownTypeError(f"unsupported type OID {oid!r}: not a built-in Postgres type") from None


def type_by_name(name: str) -> PgType:
    """Accepts ``int4``, ``_int4`` and ``int4[]`` (the latter two are the same array type)."""
    key = name[:-2] if isinstance(name, str) and name.endswith("[]") else None
    try:
        if key is not None:
            return _BY_OID[_BY_NAME[key].array_oid]
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise UnknownTypeError(f"unsupported type {name!r}: not a built-in Postgres type") from None


def find_by_oid(oid: int) -> Optional[PgType]:
    return _BY_OID.get(oid)


def find_by_name(name: str) -> Optional[PgType]:
    try:
        return type_by_name(name)
    except UnknownTypeError:
        return None


def oid_of(name: str) -> int:
    return type_by_name(name).oid


def name_of(oid: int) -> str:
    return type_by_oid(oid).name


def typlen_of(oid: int) -> int:
    """typlen for RowDescription; -1 (varlena) for OIDs outside the table."""
    t = _BY_OID.get(oid)
    return t.typlen if t is not None else -1


# Convenience constants used by RowDescriptions on port 5433.
BOOL, BYTEA, CHAR, NAME, INT8, INT2, INT4, TEXT, OID = 16, 17, 18, 19, 20, 21, 23, 25, 26
NAME_ARRAY = 1003
INT2VECTOR = 22
