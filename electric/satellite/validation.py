"""
What a Satellite client may write, decided before Electric acknowledges it.

Every value a client sends ends up in the apply worker of every database's
subscription, and a value a database cannot store stops that database's
replication for good.  Clients are untrusted, so each row a client writes is
checked here against every database's definition of its table
(`SchemaRegistry.definitions`):

* the table is replicated and the client's relation names only its columns,
  each once;
* every value is valid input for its column's type and type modifier
  (`electric.postgres.protocol.values`, the rules of PostgreSQL 15);
* NOT NULL columns and primary-key columns are not sent as NULL;
* write rules: in a table with an ``electric_user_id`` column a client
  writes only rows whose owner is its own user or nobody (NULL or '',
  rows every user sees), and never changes a row's owner.

What can only be decided against the row as the hub holds it (the owner of
an existing row, the NOT NULL columns a partial write leaves to the current
row) travels with each change as a `WriteGuard`, which the hub checks
atomically with the write.  Constraints Electric cannot check (CHECK,
foreign keys, unique columns other than the key) are not checked.

Pure: no I/O.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from electric.hub import changes as hub_changes
from electric.hub.interface import RowChange, WriteGuard
from electric.postgres.protocol import values
from electric.postgres.protocol.types import UnknownTypeError
from electric.schema import SchemaRegistry, Table

USER_COLUMN = "electric_user_id"
"""The column that makes a row one user's: the only rows a client reads and writes (besides shared ones)."""


class Refused(Exception):
    """A client write Electric does not accept; the message says why (it is sent to the client)."""


def _shared(owner: Optional[str]) -> bool:
    return owner is None or owner == ""


class WriteChecker:
    """Turns one client row operation into guarded hub changes, or refuses it."""

    def __init__(self, registry: SchemaRegistry):
        self.registry = registry

    def changes(self, table: Table, kind: str, names: Sequence[str], new: Optional[Mapping[str, Optional[str]]],
                old: Optional[Mapping[str, Optional[str]]], user_id: str) -> List[RowChange]:
        """
        `kind` is "insert", "update" or "delete"; `new` the new row (insert,
        update), `old` the old row (update: optional, delete: required), both
        keyed by the client relation's column `names`.
        """
        where = f'"{table.schema}"."{table.name}"'
        definitions = self.registry.definitions(table.schema, table.name)
        if not definitions:
            raise Refused(f"table {where} is not replicated by any database")
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if list(names).count(n) > 1})
            raise Refused(f'{where}: the relation lists column "{twice[0]}" more than once')
        columns = self._columns(definitions)
        for name in names:
            if name not in columns:
                raise Refused(f'{where} has no column "{name}"')
        for row in (new, old):
            if row:
                self._check_values(where, columns, row)
        not_null = frozenset(name for name, specs in columns.items() if any(nn for _t, _m, nn in specs))
        if new is not None:
            for name, value in new.items():
                if value is None and name in not_null:
                    raise Refused(f'{where}: column "{name}" is NOT NULL')
        owned = USER_COLUMN in columns
        if owned and new is not None:
            owner = new.get(USER_COLUMN)
            if not _shared(owner) and owner != user_id:
                raise Refused(f"{where}: a client may not write rows owned by another user")
        guard = WriteGuard(USER_COLUMN if owned else None, user_id if owned else None, not_null)
        try:
            if kind == "insert":
                return hub_changes.insert(table, new, guard)
            if kind == "update":
                return hub_changes.update(table, old, new, guard)
            return hub_changes.delete(table, old, guard)
        except hub_changes.MissingKey as e:
            raise Refused(str(e)) from None

    @staticmethod
    def _columns(definitions: Sequence[Table]) -> Dict[str, List[Tuple[str, int, bool]]]:
        """column -> the distinct (type, typmod, NOT NULL) it has in the databases that have it."""
        out: Dict[str, List[Tuple[str, int, bool]]] = {}
        for table in definitions:
            for c in table.columns:
                spec = (c.type_name, c.type_modifier, c.not_null)
                specs = out.setdefault(c.name, [])
                if spec not in specs:
                    specs.append(spec)
        return out

    @staticmethod
    def _check_values(where: str, columns: Mapping[str, List[Tuple[str, int, bool]]],
                      row: Mapping[str, Optional[str]]) -> None:
        for name, value in row.items():
            if value is None:
                continue
            for type_name, typmod, _not_null in columns[name]:
                try:
                    values.check(type_name, typmod, value)
                except values.InvalidValue as e:
                    raise Refused(f'{where}: column "{name}" ({_type_label(type_name, typmod)}): {e}') from None
                except UnknownTypeError as e:
                    raise Refused(f'{where}: column "{name}": {e}') from None


def _type_label(type_name: str, typmod: int) -> str:
    """int4 -> int4, varchar with typmod 68 -> varchar(64): how an operator would recognise the column."""
    base = type_name[1:] + "[]" if type_name.startswith("_") else type_name
    if typmod < 0:
        return base
    core = base[:-2] if base.endswith("[]") else base
    suffix = "[]" if base.endswith("[]") else ""
    if core in ("varchar", "bpchar"):
        return f"{core}({typmod - 4}){suffix}"
    if core == "numeric":
        spec = values.numeric_typmod(typmod)
        return f"numeric({spec[0]},{spec[1]}){suffix}" if spec else base
    if core in ("bit", "varbit", "timestamp", "timestamptz", "time", "timetz"):
        return f"{core}({typmod}){suffix}"
    return base
