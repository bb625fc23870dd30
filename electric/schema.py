"""
The schema registry: which tables Electric replicates, their columns and keys.

One registry serves every connector, every port-5433 subscriber and every
Satellite client.  Each Postgres gives the same table its own OID, so the
registry hands out its own *relation ids* (starting at 20000, stable for the
life of the process and ordered by first registration) and those are what
Electric sends to subscribers and clients.

The registry is filled by the Postgres connectors from catalog introspection
(`electric.postgres.source.setup`), refreshed when a Relation message or a
migration shows the schema changed.  Readers look tables up on every use
(the publisher compares each database's definition per transaction), so a
change needs no notification.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

FIRST_RELATION_ID = 20000

# Electric's schema in every Postgres.  It is an ordinary schema for user
# tables too: a role named "electric" has it first in its default
# search_path, so that role's unqualified CREATE TABLEs land here, and they
# replicate like tables of any other schema.
ELECTRIC_SCHEMA = "electric"

# Electric's own bookkeeping tables, the only tables it never replicates:
# not introspected, never offered to a subscriber or a client, and a
# transaction that writes one is not forwarded (postgres-inbound.md §10).
#
# * electric.migrations: created by Electric (setup and the migrations API);
#   which migrations ran in this database.
# * electric.meta: not created by Electric, but the original service's
#   tooling used it for the same kind of bookkeeping, so it stays out.
#
# Besides these tables Electric creates only functions in its schema (the
# upsert trigger functions, electric.upsert_<table oid>) and the sequence
# behind electric.migrations.id.
BOOKKEEPING_TABLES = frozenset({(ELECTRIC_SCHEMA, "migrations"), (ELECTRIC_SCHEMA, "meta")})


def is_bookkeeping(schema: str, name: str) -> bool:
    """True for Electric's own tables (`BOOKKEEPING_TABLES`), which never replicate."""
    return (schema, name) in BOOKKEEPING_TABLES


@dataclass(frozen=True)
class Column:
    name: str
    type_name: str  # pg_type.typname, e.g. "int4", "varchar", "_int4" for int4[]
    type_oid: int
    type_modifier: int = -1
    # True/False for DEFAULT/INDEX identity, None for FULL identity (every
    # column identifies the row), as pgoutput's Relation flags need it.
    part_of_identity: Optional[bool] = None
    # pg_attribute.attnotnull: a write that leaves the column NULL would stop
    # the apply worker of every database that has the constraint.
    not_null: bool = False


@dataclass(frozen=True)
class Table:
    schema: str
    name: str
    columns: Tuple[Column, ...]
    primary_key: Tuple[str, ...]
    replica_identity: str = "d"  # d / n / f / i, as pg_class.relreplident
    relation_id: int = 0  # assigned by the registry

    @property
    def qualified(self) -> Tuple[str, str]:
        return (self.schema, self.name)

    @property
    def column_names(self) -> Tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Optional[Column]:
        for c in self.columns:
            if c.name == name:
                return c
        return None


class UnknownTable(KeyError):
    """A change or a request named a table the registry does not know."""

    def __init__(self, schema: str, name: str):
        super().__init__(f"{schema}.{name}")
        self.schema = schema
        self.name = name

    def __str__(self):
        return f'unknown table "{self.schema}"."{self.name}"'


@dataclass
class SchemaRegistry:
    """Tables by qualified name and by relation id."""

    _tables: Dict[Tuple[str, str], Table] = field(default_factory=dict)
    _by_id: Dict[int, Table] = field(default_factory=dict)
    _ids: Dict[Tuple[str, str], int] = field(default_factory=dict)
    _present: Dict[str, Tuple[Tuple[str, str], ...]] = field(default_factory=dict)
    _present_sets: Dict[str, frozenset] = field(default_factory=dict)
    _shapes: Dict[Tuple[str, Tuple[str, str]], Table] = field(default_factory=dict)
    _streamable: set = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, table: Table) -> Table:
        """Add or replace `table`; returns it with its relation id set."""
        key = table.qualified
        with self._lock:
            rel_id = self._ids.get(key)
            if rel_id is None:
                rel_id = FIRST_RELATION_ID + len(self._ids)
                self._ids[key] = rel_id
            stored = Table(
                schema=table.schema,
                name=table.name,
                columns=tuple(table.columns),
                primary_key=tuple(table.primary_key),
                replica_identity=table.replica_identity,
                relation_id=rel_id,
            )
            self._tables[key] = stored
            self._by_id[rel_id] = stored
        return stored

    def get(self, schema: str, name: str) -> Table:
        try:
            return self._tables[(schema, name)]
        except KeyError:
            raise UnknownTable(schema, name) from None

    def find(self, schema: str, name: str) -> Optional[Table]:
        return self._tables.get((schema, name))

    def named(self, name: str) -> List[Table]:
        """Every table called `name`, whatever its schema, in relation-id order."""
        return [t for t in self.tables() if t.name == name]

    def by_relation_id(self, relation_id: int) -> Optional[Table]:
        return self._by_id.get(relation_id)

    def tables(self) -> List[Table]:
        """Every table, in relation-id order."""
        return sorted(self._tables.values(), key=lambda t: t.relation_id)

    def set_database_tables(self, origin: str, tables: Iterable[Table]) -> None:
        """
        Record which tables exist in connector `origin`'s database, as that
        database defines them.  A subscriber may only be offered tables it
        has, and a database whose definition of a table differs from the
        registry's (a migration not applied there yet) is reported, not fed
        rows it cannot store.
        """
        tables = list(tables)
        with self._lock:
            self._present[origin] = tuple(t.qualified for t in tables)
            self._present_sets[origin] = frozenset(self._present[origin])
            for t in tables:
                self._shapes[(origin, t.qualified)] = t

    def allow_streaming(self, origin: str) -> None:
        """
        `origin`'s subscription lists every table it replicates (its connector
        enabled and refreshed it), so its apply worker may stream: before that
        Postgres would silently skip changes to tables not yet in the
        subscription.
        """
        self._streamable.add(origin)

    def may_stream(self, origin: str) -> bool:
        return origin in self._streamable

    def has_database(self, origin: str) -> bool:
        """True once connector `origin` has registered its database's tables (setup done)."""
        return origin in self._present

    def database_tables(self, origin: str) -> List[Table]:
        """Registry tables that exist in `origin`'s database, in relation-id order."""
        names = set(self._present.get(origin, ()))
        return [t for t in self.tables() if t.qualified in names]

    def database_table(self, origin: str, schema: str, name: str) -> Optional[Table]:
        """The table as `origin`'s database defines it (None if absent there)."""
        return self._shapes.get((origin, (schema, name)))

    def definitions(self, schema: str, name: str) -> List[Table]:
        """
        Every database's own definition of a table (types, modifiers and NOT
        NULL may differ while a migration is not applied everywhere); empty
        when no database has it.  A value sent to that table must suit all
        of them.  (A registry no database has registered with answers with
        its own definition.)
        """
        with self._lock:
            if not self._present:
                table = self._tables.get((schema, name))
                return [table] if table is not None else []
            key = (schema, name)
            return [self._shapes[(origin, key)] for origin in sorted(self._present_sets)
                    if key in self._present_sets[origin]]

    def __iter__(self) -> Iterable[Table]:
        return iter(self.tables())

    def __len__(self) -> int:
        return len(self._tables)
