"""The client write checker without sockets: values against every database's definition, write rules, guards."""

from __future__ import annotations

from twisted.trial import unittest

from electric.hub.interface import DELETE, UPSERT, WriteGuard
from electric.satellite.validation import Refused, WriteChecker
from electric.schema import Column, SchemaRegistry, Table


def table(v_typmod=24, must_not_null=True, with_owner=True):
    cols = [Column("id", "int8", 20, -1, True, True), Column("v", "varchar", 1043, v_typmod),
            Column("must", "text", 25, -1, False, must_not_null)]
    if with_owner:
        cols.append(Column("electric_user_id", "text", 25))
    return Table("public", "t", tuple(cols), ("id",))


class Checker(unittest.TestCase):
    def setUp(self):
        self.registry = SchemaRegistry()
        self.t = self.registry.register(table())
        self.checker = WriteChecker(self.registry)

    def changes(self, kind="insert", new=None, old=None, user="alice", names=None):
        row = new or old
        return self.checker.changes(self.t, kind, names or list(row), new, old, user)

    def test_guarded_changes(self):
        (change,) = self.changes(new={"id": "1", "v": "x", "must": "m", "electric_user_id": "alice"})
        self.assertEqual((change.op, change.key), (UPSERT, ("1",)))
        self.assertEqual(change.guard, WriteGuard("electric_user_id", "alice", frozenset({"id", "must"})))
        (gone,) = self.changes("delete", old={"id": "1", "v": None, "must": None, "electric_user_id": None})
        self.assertEqual((gone.op, gone.guard.owner), (DELETE, "alice"))

    def test_values_checked(self):
        with self.assertRaises(Refused) as caught:
            self.changes(new={"id": "one", "v": "x", "must": "m"})
        self.assertEqual(str(caught.exception),
                         '"public"."t": column "id" (int8): invalid input syntax for type bigint: "one"')
        with self.assertRaises(Refused) as caught:
            self.changes(new={"id": "1", "v": "x" * 21, "must": "m"})
        self.assertIn("(varchar(20)): value too long for type character varying(20)", str(caught.exception))
        # old rows are checked too: their values can end up in the hub
        self.assertRaises(Refused, self.changes, "update", new={"id": "1", "v": "x", "must": "m"},
                          old={"id": "1", "v": "y" * 30, "must": "m"})

    def test_null_in_not_null_and_key(self):
        self.assertRaises(Refused, self.changes, new={"id": "1", "v": "x", "must": None})
        with self.assertRaises(Refused) as caught:
            self.changes(new={"id": None, "v": "x", "must": "m"})
        self.assertIn("NOT NULL", str(caught.exception))

    def test_every_database_definition_counts(self):
        """A migration applied in one database only: the stricter definition wins."""
        self.registry.set_database_tables("postgres_1", [table(v_typmod=24)])
        self.registry.set_database_tables("postgres_2", [table(v_typmod=14, must_not_null=False)])
        self.changes(new={"id": "1", "v": "x" * 10, "must": "m"})
        self.assertRaises(Refused, self.changes, new={"id": "1", "v": "x" * 11, "must": "m"})
        self.assertRaises(Refused, self.changes, new={"id": "1", "v": "x", "must": None})

    def test_table_no_database_has(self):
        self.registry.set_database_tables("postgres_1", [])
        with self.assertRaises(Refused) as caught:
            self.changes(new={"id": "1"})
        self.assertEqual(str(caught.exception), 'table "public"."t" is not replicated by any database')

    def test_relation_naming_a_column_twice_or_an_unknown_one(self):
        with self.assertRaises(Refused):
            self.checker.changes(self.t, "insert", ["id", "v", "v"], {"id": "1", "v": "x"}, None, "alice")
        with self.assertRaises(Refused):
            self.changes(new={"id": "1", "nope": "x"})

    def test_write_rules(self):
        self.changes(new={"id": "1", "must": "m", "electric_user_id": ""})
        self.changes(new={"id": "1", "must": "m", "electric_user_id": None})
        with self.assertRaises(Refused) as caught:
            self.changes(new={"id": "1", "must": "m", "electric_user_id": "bob"})
        self.assertIn("may not write rows owned by another user", str(caught.exception))

    def test_tables_without_owner_column_have_no_owner_guard(self):
        t = self.registry.register(Table("public", "open", (Column("id", "int4", 23, -1, True, True),), ("id",)))
        (change,) = self.checker.changes(t, "insert", ["id"], {"id": "1"}, None, "bob")
        self.assertEqual(change.guard, WriteGuard(None, None, frozenset({"id"})))
