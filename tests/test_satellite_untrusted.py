"""
Untrusted Satellite clients over real websockets, with the embedded hub:
values Postgres would refuse, write rules in tables with electric_user_id,
client ids bound to their user.  (The same with the real npm client and two
Postgres databases: tests/test_untrusted_e2e.py.)
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest

from electric.hub.interface import UPSERT, RowChange, Transaction
from electric.hub.offsets import OffsetStore
from electric.satellite import codec
from electric.satellite.codec import ORIGINAL
from electric.satellite.transport import CLOSE_REFUSED
from electric.schema import Column, SchemaRegistry, Table

from tests.hub_helpers import read_snapshot
from tests.satellite_helpers import (
    SatelliteFixture, begin, commit, delete, eventually, insert, msg, oplog, relation, start_req, update,
)

REFUSED_FRAME = codec.encode(ORIGINAL, codec.satellite_pb2.SatErrorResp(error_type=codec.INVALID_REQUEST))

TYPED = Table(
    "public", "typed",
    (
        Column("id", "text", 25, -1, True, True),
        Column("n", "int4", 23),
        Column("v", "varchar", 1043, 64 + 4),
        Column("must", "text", 25, -1, False, True),
        Column("at", "timestamptz", 1184),
        Column("doc", "jsonb", 3802),
        Column("amount", "numeric", 1700, (6 << 16 | 2) + 4),
        Column("tags", "_int4", 1007),
    ),
    ("id",),
)
TYPED_COLS = [c.name for c in TYPED.columns]

ITEMS = Table(
    "public", "items",
    (Column("id", "text", 25, -1, True, True), Column("content", "text", 25), Column("n", "int4", 23),
     Column("electric_user_id", "text", 25)),
    ("id",),
)
ITEMS_COLS = ["id", "content", "n", "electric_user_id"]


def registry():
    r = SchemaRegistry()
    r.register(ITEMS)
    r.register(TYPED)
    return r


def good_typed(key):
    return [key, "7", "x" * 64, "present", "2020-01-02T12:34:56.789Z", '{"a": [1, 2]}', "1234.56", "{1,2,3}"]


class Base(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.fx = yield SatelliteFixture(self, registry=registry()).start()

    @defer.inlineCallbacks
    def rows(self, table):
        snap = yield read_snapshot(self.fx.hub, [("public", table)])
        return {r.key[0]: dict(r.row) for r in snap.rows}

    @defer.inlineCallbacks
    def write(self, c, lsn, *ops, rel=None):
        """One client transaction; the ack frame or the error frame that answers it."""
        if rel is not None:
            c.send(rel)
        c.send(oplog(ORIGINAL, begin(ORIGINAL, lsn), *ops, commit(ORIGINAL)))
        frame = yield c.recv()
        return frame

    def assertAcked(self, frame, lsn):
        self.assertEqual(codec.decode(ORIGINAL, frame).lsn, lsn)

    @defer.inlineCallbacks
    def assertRefused(self, c, frame, reason_part):
        self.assertEqual(frame, REFUSED_FRAME)
        code = yield c.wait_closed()
        self.assertEqual(code, CLOSE_REFUSED)
        self.assertIn(reason_part, c.close_reason)
        return c.close_reason


class BadValues(Base):
    @defer.inlineCallbacks
    def test_valid_values_of_many_types_are_appended(self):
        c = yield self.fx.authed(ORIGINAL, "good", "alice")
        frame = yield self.write(c, b"L1", insert(ORIGINAL, 1, good_typed("t1")),
                                 rel=relation(ORIGINAL, 1, "typed", TYPED_COLS))
        self.assertAcked(frame, b"L1")
        rows = yield self.rows("typed")
        self.assertEqual(rows["t1"]["amount"], "1234.56")

    @defer.inlineCallbacks
    def test_poison_int_is_refused_whole_and_others_keep_going(self):
        head = self.fx.hub.head()
        bystander = yield self.fx.authed(ORIGINAL, "bystander", "bob", start_lsn=b"eof")
        c = yield self.fx.authed(ORIGINAL, "poisoner", "alice")
        frame = yield self.write(
            c, b"P1",
            insert(ORIGINAL, 0, ["fine", "x", "1", None]),
            insert(ORIGINAL, 0, ["poison_int", "x", "notanint", None]),
            rel=relation(ORIGINAL, 0, "items", ITEMS_COLS),
        )
        reason = yield self.assertRefused(c, frame, 'invalid input syntax for type integer: "notanint"')
        self.assertIn('column "n"', reason)
        self.assertEqual(self.fx.hub.head(), head)  # nothing of the transaction reached the hub
        self.assertEqual((yield self.rows("items")), {})
        status = self.fx.service.status()
        self.assertEqual(status["refused_transactions"], 1)
        self.assertEqual(status["recent_refusals"][0]["client_id"], "poisoner")
        self.assertIn('"notanint"', status["recent_refusals"][0]["reason"])
        # everybody else keeps replicating
        frame = yield self.write(bystander, b"B1", insert(ORIGINAL, 0, ["b1", "fine", "2", None]),
                                 rel=relation(ORIGINAL, 0, "items", ITEMS_COLS))
        self.assertAcked(frame, b"B1")
        self.assertEqual(set((yield self.rows("items"))), {"b1"})

    @defer.inlineCallbacks
    def test_not_null_sent_as_null(self):
        c = yield self.fx.authed(ORIGINAL, "nuller", "alice")
        row = good_typed("t2")
        row[3] = None
        frame = yield self.write(c, b"N1", insert(ORIGINAL, 1, row), rel=relation(ORIGINAL, 1, "typed", TYPED_COLS))
        yield self.assertRefused(c, frame, 'column "must" is NOT NULL')

    @defer.inlineCallbacks
    def test_not_null_column_left_out_of_a_new_row(self):
        """The client's relation lacks the NOT NULL column: only the hub knows the row has no value for it."""
        c = yield self.fx.authed(ORIGINAL, "partial", "alice")
        frame = yield self.write(c, b"N2", insert(ORIGINAL, 1, ["t3", "1"]),
                                 rel=relation(ORIGINAL, 1, "typed", ["id", "n"]))
        yield self.assertRefused(c, frame, 'column "must" is NOT NULL and the row has no value for it')
        self.assertEqual((yield self.rows("typed")), {})

    @defer.inlineCallbacks
    def test_varchar_too_long(self):
        c = yield self.fx.authed(ORIGINAL, "longer", "alice")
        row = good_typed("t4")
        row[2] = "y" * 100
        frame = yield self.write(c, b"V1", insert(ORIGINAL, 1, row), rel=relation(ORIGINAL, 1, "typed", TYPED_COLS))
        reason = yield self.assertRefused(c, frame, "value too long for type character varying(64)")
        self.assertIn("varchar(64)", reason)

    @defer.inlineCallbacks
    def test_each_kind_of_bad_value(self):
        cases = [
            (4, "2020-13-45T00:00:00Z", "date/time field value out of range"),
            (4, "2020-01-02 12:00:00", "has no UTC offset"),
            (5, '{"a": }', "invalid input syntax for type jsonb"),
            (6, "12345.678", "numeric field overflow"),
            (7, "{1,two}", 'invalid input syntax for type integer: "two"'),
        ]
        for k, (column, value, expected) in enumerate(cases):
            c = yield self.fx.authed(ORIGINAL, f"bad{k}", "alice")
            row = good_typed(f"b{k}")
            row[column] = value
            frame = yield self.write(c, b"X1", insert(ORIGINAL, 1, row), rel=relation(ORIGINAL, 1, "typed", TYPED_COLS))
            yield self.assertRefused(c, frame, expected)
        self.assertEqual((yield self.rows("typed")), {})
        self.assertEqual(self.fx.service.status()["refused_transactions"], len(cases))

    @defer.inlineCallbacks
    def test_unknown_table_and_column(self):
        c = yield self.fx.authed(ORIGINAL, "notable", "alice")
        frame = yield self.write(c, b"U1", insert(ORIGINAL, 2, ["1"]), rel=relation(ORIGINAL, 2, "nosuch", ["id"]))
        yield self.assertRefused(c, frame, 'unknown table "public"."nosuch"')
        c = yield self.fx.authed(ORIGINAL, "nocolumn", "alice")
        frame = yield self.write(c, b"U2", insert(ORIGINAL, 2, ["1", "x"]),
                                 rel=relation(ORIGINAL, 2, "items", ["id", "bogus"]))
        yield self.assertRefused(c, frame, 'has no column "bogus"')

    @defer.inlineCallbacks
    def test_delete_with_a_bad_key_is_refused(self):
        c = yield self.fx.authed(ORIGINAL, "badkey", "alice")
        frame = yield self.write(c, b"D1", delete(ORIGINAL, 1, ["t9", "nine"] + [None] * 6),
                                 rel=relation(ORIGINAL, 1, "typed", TYPED_COLS))
        yield self.assertRefused(c, frame, 'invalid input syntax for type integer: "nine"')


class WriteRules(Base):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        changes = (
            RowChange("public", "items", UPSERT, ("a1",), {"id": "a1", "content": "alice's", "n": "1",
                                                          "electric_user_id": "alice"}),
            RowChange("public", "items", UPSERT, ("s1",), {"id": "s1", "content": "shared", "n": "1",
                                                          "electric_user_id": None}),
        )
        yield self.fx.hub.append(Transaction("postgres_1", b"\x00" * 7 + b"\x01", 1_700_000_000_000_000, changes))

    @defer.inlineCallbacks
    def test_bob_cannot_overwrite_delete_or_plant_alices_rows(self):
        rel = relation(ORIGINAL, 0, "items", ITEMS_COLS)
        attempts = [
            (insert(ORIGINAL, 0, ["a1", "bob was here", "1", "alice"]), "may not write rows owned by another user"),
            (insert(ORIGINAL, 0, ["a1", "bob was here", "1", "bob"]), "(a1) belongs to another user"),
            (insert(ORIGINAL, 0, ["a1", "bob was here", "1", None]), "(a1) belongs to another user"),
            (update(ORIGINAL, 0, ["a1", "bob", "1", "bob"], old=["a1", "alice's", "1", "bob"]),
             "(a1) belongs to another user"),
            (delete(ORIGINAL, 0, ["a1", "alice's", "1", "alice"]), "belongs to another user"),
            (insert(ORIGINAL, 0, ["planted", "for alice", "1", "alice"]), "may not write rows owned by another user"),
        ]
        for k, (op, expected) in enumerate(attempts):
            bob = yield self.fx.authed(ORIGINAL, f"bob-{k}", "bob")
            frame = yield self.write(bob, b"B%d" % k, op, rel=rel)
            yield self.assertRefused(bob, frame, expected)
        rows = yield self.rows("items")
        self.assertEqual(rows["a1"]["content"], "alice's")
        self.assertNotIn("planted", rows)

    @defer.inlineCallbacks
    def test_a_relation_without_the_owner_column_is_checked_by_the_hub(self):
        bob = yield self.fx.authed(ORIGINAL, "sneaky", "bob")
        frame = yield self.write(bob, b"S1", insert(ORIGINAL, 5, ["a1", "no owner column sent"]),
                                 rel=relation(ORIGINAL, 5, "items", ["id", "content"]))
        yield self.assertRefused(bob, frame, '"public"."items" (a1) belongs to another user')
        self.assertEqual((yield self.rows("items"))["a1"]["content"], "alice's")

    @defer.inlineCallbacks
    def test_owners_write_their_rows_and_everybody_shared_ones(self):
        rel = relation(ORIGINAL, 0, "items", ITEMS_COLS)
        alice = yield self.fx.authed(ORIGINAL, "alice-1", "alice")
        self.assertAcked((yield self.write(alice, b"A1", insert(ORIGINAL, 0, ["a1", "edited", "2", "alice"]),
                                           insert(ORIGINAL, 0, ["a2", "new", "1", "alice"]), rel=rel)), b"A1")
        self.assertAcked((yield self.write(alice, b"A2", delete(ORIGINAL, 0, ["a2", "new", "1", "alice"]))), b"A2")
        bob = yield self.fx.authed(ORIGINAL, "bob-1", "bob")
        self.assertAcked((yield self.write(bob, b"B1", insert(ORIGINAL, 0, ["s1", "bob edits shared", "3", None]),
                                           insert(ORIGINAL, 0, ["b1", "bob's", "1", "bob"]), rel=rel)), b"B1")
        rows = yield self.rows("items")
        self.assertEqual({k: (v["content"], v["electric_user_id"]) for k, v in rows.items()},
                         {"a1": ("edited", "alice"), "s1": ("bob edits shared", None), "b1": ("bob's", "bob")})

    @defer.inlineCallbacks
    def test_owner_cannot_be_changed(self):
        rel = relation(ORIGINAL, 0, "items", ITEMS_COLS)
        alice = yield self.fx.authed(ORIGINAL, "giver", "alice")
        frame = yield self.write(alice, b"G1", insert(ORIGINAL, 0, ["a1", "yours now", "1", None]), rel=rel)
        yield self.assertRefused(alice, frame, "may not change the row's owner")
        alice = yield self.fx.authed(ORIGINAL, "taker", "alice")
        frame = yield self.write(alice, b"T1", insert(ORIGINAL, 0, ["s1", "mine now", "1", "alice"]), rel=rel)
        yield self.assertRefused(alice, frame, "may not change the row's owner")


class ClientIdentity(Base):
    @defer.inlineCallbacks
    def test_another_user_cannot_use_a_client_id(self):
        rel = relation(ORIGINAL, 0, "items", ITEMS_COLS)
        alice = yield self.fx.authed(ORIGINAL, "alices-device", "alice")
        self.assertAcked((yield self.write(alice, b"\x00\x00\x00\x01", insert(ORIGINAL, 0, ["a1", "one", "1", "alice"]),
                                           rel=rel)), b"\x00\x00\x00\x01")
        yield alice.close()
        yield eventually(lambda: "alices-device" not in self.fx.service.connected_clients(), message="alice gone")
        stored = yield eventually(lambda: self.fx.offsets.client_lsn("alices-device"), message="alice's position stored")
        self.assertEqual(stored, b"\x00\x00\x00\x01")
        # mallory, with a valid token of her own, presents alice's client id
        mallory = yield self.fx.client()
        mallory.send(codec.auth_request(ORIGINAL, "alices-device", "mallory"))
        self.assertEqual((yield mallory.recv()), REFUSED_FRAME)
        self.assertEqual((yield mallory.wait_closed()), CLOSE_REFUSED)
        self.assertIn("belongs to another user", mallory.close_reason)
        self.assertEqual(self.fx.offsets.client_lsn("alices-device"), stored)
        self.assertEqual(self.fx.offsets.client_owner("alices-device"), "alice")
        self.assertEqual(self.fx.service.status()["refused_foreign_client_ids"], 1)
        # alice's next transaction, with the next lsn, is acknowledged and reaches the hub
        alice = yield self.fx.authed(ORIGINAL, "alices-device", "alice")
        self.assertEqual(alice.server_start.lsn, stored)
        self.assertAcked((yield self.write(alice, b"\x00\x00\x00\x02", insert(ORIGINAL, 0, ["a2", "two", "2", "alice"]),
                                           rel=rel)), b"\x00\x00\x00\x02")
        self.assertEqual(set((yield self.rows("items"))), {"a1", "a2"})

    @defer.inlineCallbacks
    def test_a_client_id_cannot_be_taken_while_its_owner_is_connected(self):
        alice = yield self.fx.authed(ORIGINAL, "busy-id", "alice")
        mallory = yield self.fx.client()
        mallory.send(codec.auth_request(ORIGINAL, "busy-id", "mallory"))
        self.assertEqual((yield mallory.recv()), REFUSED_FRAME)
        yield mallory.wait_closed()
        alice.send(msg(ORIGINAL, "SatPingReq"))
        self.assertEqual((yield alice.recv()), bytes.fromhex("06 0a 00"))
        self.assertIn("busy-id", self.fx.service.connected_clients())

    def test_binding_is_durable(self):
        path = self.fx.dir + "/binding.db"
        store = OffsetStore(path)
        store.startService()
        self.assertTrue(store.claim_client("device-1", "alice"))
        self.assertTrue(store.claim_client("device-1", "alice"))
        self.assertFalse(store.claim_client("device-1", "mallory"))
        store.stopService()
        again = OffsetStore(path)
        again.startService()
        self.addCleanup(again.stopService)
        self.assertFalse(again.claim_client("device-1", "mallory"))
        self.assertEqual(again.client_owner("device-1"), "alice")
        self.assertIsNone(again.client_owner("device-2"))

    @defer.inlineCallbacks
    def test_outgoing_stream_still_filtered_for_a_fresh_client(self):
        """A new client id of another user starts from its own position, not alice's."""
        alice = yield self.fx.authed(ORIGINAL, "alice-phone", "alice")
        rel = relation(ORIGINAL, 0, "items", ITEMS_COLS)
        self.assertAcked((yield self.write(alice, b"\x00\x00\x00\x09", insert(ORIGINAL, 0, ["a9", "x", "1", "alice"]),
                                           rel=rel)), b"\x00\x00\x00\x09")
        bob = yield self.fx.authed(ORIGINAL, "bob-phone", "bob")
        self.assertEqual(bob.server_start.lsn, b"")
        bob.send(start_req(ORIGINAL, b"0"))
        self.assertEqual(codec.message_name((yield bob.recv_message(ORIGINAL))), "SatInStartReplicationResp")
