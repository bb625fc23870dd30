"""
Write guards: the hub refuses an untrusted producer's write that touches
another user's row, changes a row's owner or leaves a NOT NULL column empty,
checked against its own row state atomically with the write.
"""

from __future__ import annotations

import shutil
import tempfile

from twisted.internet import defer, reactor
from twisted.trial import unittest

from electric.hub.embedded import EmbeddedHub
from electric.hub.interface import DELETE, UPSERT, HubError, RowChange, Transaction, WriteGuard
from electric.hub.resolution import InvalidTransaction, MemoryState, WriteRefused, check_transaction
from tests.hub_helpers import read_snapshot

OWNER = "electric_user_id"


def guard(user, not_null=()):
    return WriteGuard(owner_column=OWNER, owner=user, not_null=frozenset(not_null))


def up(key, owner=None, g=None, content="x", old=None, **extra):
    values = {"id": key, "content": content, OWNER: owner, **extra}
    return RowChange("public", "items", UPSERT, (key,), values, old, g)


def rm(key, g=None):
    return RowChange("public", "items", DELETE, (key,), {"id": key}, None, g)


_n = [0]


def txn(*changes, origin="satellite:c1"):
    _n[0] += 1
    return Transaction(origin, _n[0].to_bytes(4, "big"), 1_700_000_000_000_000, tuple(changes))


class GuardResolution(unittest.TestCase):
    def setUp(self):
        self.state = MemoryState()
        self.state.resolve_and_apply(txn(up("a1", "alice"), up("b1", "bob"), up("s1", None), up("e1", ""),
                                         origin="postgres_1"))

    def apply(self, *changes):
        return self.state.resolve_and_apply(txn(*changes))

    def refused(self, *changes):
        before = dict(self.state.rows)
        with self.assertRaises(WriteRefused) as caught:
            self.apply(*changes)
        self.assertEqual(self.state.rows, before)  # nothing of the transaction applied
        return str(caught.exception)

    def test_own_rows_and_shared_rows(self):
        self.apply(up("a1", "alice", guard("alice"), content="mine"))
        self.apply(up("s1", None, guard("alice"), content="shared, changed"))
        self.apply(up("e1", "", guard("alice"), content="empty owner counts as shared"))
        self.apply(up("new", "alice", guard("alice")), up("new2", None, guard("alice")))
        self.apply(rm("a1", guard("alice")), rm("s1", guard("alice")))
        live = self.state.live()
        self.assertEqual(live[("public", "items", ("e1",))]["content"], "empty owner counts as shared")
        self.assertNotIn(("public", "items", ("a1",)), live)

    def test_another_users_row(self):
        message = self.refused(up("b1", "bob", guard("alice"), content="overwritten"))
        self.assertEqual(message, '"public"."items" (b1) belongs to another user')
        self.assertIn("belongs to another user", self.refused(rm("b1", guard("alice"))))
        # also when the client claims the row is its own: the hub's state decides
        self.assertIn("belongs to another user",
                      self.refused(up("b1", "alice", guard("alice"), old={"id": "b1", OWNER: "alice"})))

    def test_planting_rows_for_someone_else(self):
        self.assertIn("would belong to another user", self.refused(up("planted", "bob", guard("alice"))))

    def test_owner_may_not_change(self):
        self.assertIn("may not change the row's owner", self.refused(up("a1", "bob", guard("alice"))))
        self.assertIn("may not change the row's owner", self.refused(up("a1", None, guard("alice"))))
        self.assertIn("may not change the row's owner", self.refused(up("s1", "alice", guard("alice"))))

    def test_whole_transaction_refused(self):
        self.refused(up("ok", "alice", guard("alice")), up("b1", "bob", guard("alice")))
        self.assertNotIn(("public", "items", ("ok",)), self.state.live())

    def test_sees_earlier_changes_of_the_same_transaction(self):
        self.refused(up("t1", "alice", guard("alice")), up("t1", "bob", guard("alice")))
        self.apply(up("t2", "alice", guard("alice")), up("t2", "alice", guard("alice"), content="again"))

    def test_tombstone_of_another_users_row(self):
        self.state.resolve_and_apply(txn(rm("b1"), origin="postgres_1"))
        # a write that sets only some columns would bring bob's row back with bob as owner
        self.assertIn("would belong to another user",
                      self.refused(up("b1", "alice", guard("alice"), content="y",
                                      old={"id": "b1", "content": "x", OWNER: "alice"})))
        self.apply(up("b1", "alice", guard("alice"), content="new row, alice's"))

    def test_not_null_on_the_resolved_row(self):
        self.assertIn('column "must" is NOT NULL',
                      self.refused(RowChange("public", "items", UPSERT, ("n1",), {"id": "n1"}, None,
                                             WriteGuard(not_null=frozenset({"must"})))))
        self.state.resolve_and_apply(txn(up("n2", None, must="set"), origin="postgres_1"))
        # a partial write of a row that has the column keeps its value
        self.apply(RowChange("public", "items", UPSERT, ("n2",), {"id": "n2", "content": "y"}, None,
                             WriteGuard(not_null=frozenset({"must"}))))

    def test_trusted_writes_are_not_guarded(self):
        self.state.resolve_and_apply(txn(up("b1", "alice"), origin="postgres_1"))

    def test_malformed_guard(self):
        bad = RowChange("public", "items", UPSERT, ("x",), {"id": "x"}, None, "alice")
        self.assertRaises(InvalidTransaction, check_transaction, txn(bad))


class GuardInEmbeddedHub(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="guardhub-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.hub = EmbeddedHub(self.dir, reactor, compact_interval=0)
        self.hub.startService()
        self.addCleanup(self.hub.stopService)
        yield self.hub.append(txn(up("b1", "bob"), origin="postgres_1"))

    @defer.inlineCallbacks
    def test_refused_append_stores_nothing_and_is_not_deduplicated(self):
        head = self.hub.head()
        refused = txn(up("a1", "alice", guard("alice")), up("b1", "bob", guard("alice"), content="stolen"))
        with self.assertRaises(HubError) as caught:
            yield self.hub.append(refused)
        self.assertEqual(str(caught.exception), 'invalid transaction: "public"."items" (b1) belongs to another user')
        self.assertEqual(self.hub.head(), head)
        snap = yield read_snapshot(self.hub)
        self.assertEqual({r.key for r in snap.rows}, {("b1",)})
        # the same identity with acceptable content is appended, not answered as a duplicate
        again = Transaction(refused.origin, refused.origin_id, refused.commit_timestamp,
                            (up("a1", "alice", guard("alice")),))
        result = yield self.hub.append(again)
        self.assertEqual(result.position, head + 1)
        # the writer thread is still working for everybody else
        yield self.hub.append(txn(up("c1", "carol"), origin="postgres_1"))
