"""
The data model through a running Vaxine (the real node where ../shared/vaxine exists, else the
fake): hub transactions written over the PB link come back from the replication stream with the
same origin, origin_id and commit time, and concurrent writers converge as spec 2.5 says.
"""

import uuid

from twisted.internet import defer
from twisted.trial import unittest

from electric.hub.interface import DELETE, RESEND, UPSERT, ResolvedChange, RowChange, Transaction
from electric.vaxine import antidote as A, datamodel as D, stream as S
from electric.vaxine.pb_client import AntidoteClient
from electric.vaxine.replication import ReplicationClient
from tests.polling import wait_until
from tests.vaxine_helpers import Collector, fast_retry, shared_vaxine


class OnVaxine(unittest.TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        node = yield shared_vaxine(self)
        self.pb = AntidoteClient(node.host, node.pb_port, retry_policy=fast_retry)
        self.pb.startService()
        self.addCleanup(self.pb.stopService)
        self.collector = Collector()
        self.stream = ReplicationClient(self.collector, node.host, node.repl_port, offset=S.EOF, retry_policy=fast_retry)
        self.stream.startService()
        self.addCleanup(self.stream.stopService)
        yield self.pb.when_connected()
        yield self.stream.when_streaming()
        self.table = f"t_{uuid.uuid4().hex[:10]}"

    def txn(self, *changes, origin="postgres_1", origin_id=None, ts=1660749606202865):
        return Transaction(origin, origin_id if origin_id is not None else uuid.uuid4().bytes, ts, tuple(changes))

    def row(self, op, key="1", values=None, old=None):
        return RowChange("public", self.table, op, (key,), values, old)

    def received(self, n):
        return wait_until(lambda: len(self.collector.electric(self.table)) >= n and self.collector.electric(self.table),
                          what=f"{n} transactions of {self.table}")

    @defer.inlineCallbacks
    def read_row(self, key="1"):
        (value,) = yield self.pb.static_read([D.row_object("public", self.table, (key,))])
        return value

    @defer.inlineCallbacks
    def test_origin_and_origin_id_round_trip_exactly(self):
        cases = [("postgres_1", b"\x00\x00\x00\x00\x01\x02\x03\x04"), ("satellite:client-ü", b""),
                 ("satellite:c", bytes(range(256))), ("postgres_2", b"\x83h\x02a\x01a\x02"), ("o" * 300, b"\xff" * 64)]
        for i, (origin, origin_id) in enumerate(cases):
            t = self.txn(self.row(UPSERT, str(i), {"id": str(i)}), origin=origin, origin_id=origin_id, ts=1_000_000 * i + i)
            yield self.pb.write(D.transaction_updates(t, "all_tables"))
        got = yield self.received(len(cases))
        self.assertEqual([(w.origin, w.origin_id, w.commit_timestamp, w.publication) for w in got],
                         [(o, oid, 1_000_000 * i + i, "all_tables") for i, (o, oid) in enumerate(cases)])

    @defer.inlineCallbacks
    def test_update_wins_over_a_concurrent_delete(self):
        yield self.pb.write(D.transaction_updates(self.txn(self.row(UPSERT, values={"id": "1", "v": "a"}))))
        deleter = yield self.pb.start_transaction()
        updater = yield self.pb.start_transaction()
        yield deleter.update(D.transaction_updates(self.txn(self.row(DELETE, values={"id": "1"}))))
        yield updater.update(D.transaction_updates(self.txn(self.row(UPSERT, values={"id": "1", "v": "b"}))))
        yield deleter.commit()
        yield updater.commit()
        got = yield self.received(3)
        self.assertEqual([w.changes[0].deleted for w in got], [False, True, False])
        self.assertEqual(got[-1].changes[0], ResolvedChange("public", self.table, ("1",), {"id": "1", "v": "b"}, False))
        state = yield self.read_row()
        self.assertEqual(state[(b"deleted?", A.FLAG_DW)], False)

    @defer.inlineCallbacks
    def test_a_later_delete_deletes_and_an_update_resurrects(self):
        yield self.pb.write(D.transaction_updates(self.txn(self.row(UPSERT, values={"id": "1", "v": "a"}))))
        yield self.pb.write(D.transaction_updates(self.txn(self.row(DELETE, values={"id": "1"}))))
        yield self.pb.write(D.transaction_updates(self.txn(self.row(RESEND))))
        yield self.pb.write(D.transaction_updates(self.txn(self.row(UPSERT, values={"id": "1", "w": "c"}))))
        got = yield self.received(4)
        self.assertEqual([(w.changes[0].deleted, w.changes[0].row) for w in got], [
            (False, {"id": "1", "v": "a"}),
            (True, {"id": "1", "v": "a"}),        # a tombstone keeps the last values
            (True, {"id": "1", "v": "a"}),        # RESEND: the current state again, nothing changed
            (False, {"id": "1", "v": "a", "w": "c"}),
        ])

    @defer.inlineCallbacks
    def test_concurrent_columns_merge_and_same_column_goes_to_the_later_update(self):
        yield self.pb.write(D.transaction_updates(self.txn(self.row(UPSERT, values={"id": "1", "a": "0", "b": "0", "c": "0"}))))
        old = {"id": "1", "a": "0", "b": "0", "c": "0"}
        first = yield self.pb.start_transaction()
        second = yield self.pb.start_transaction()
        # Both saw the same old row; each sends only what it changed (REPLICA IDENTITY FULL).
        yield first.update(D.transaction_updates(self.txn(self.row(UPSERT, values={**old, "a": "1", "c": "first"}, old=old))))
        yield second.update(D.transaction_updates(self.txn(self.row(UPSERT, values={**old, "b": "2", "c": "second"}, old=old))))
        yield second.commit()      # commits first, but its update was processed later: it wins column c
        yield first.commit()
        got = yield self.received(3)
        self.assertEqual(got[-1].changes[0].row, {"id": "1", "a": "1", "b": "2", "c": "second"})
        state = yield self.read_row()
        self.assertEqual(state[(b"row", A.RRMAP)], {(k.encode(), A.LWWREG): D.encode_value(v) for k, v in
                                                    {"id": "1", "a": "1", "b": "2", "c": "second"}.items()})

    @defer.inlineCallbacks
    def test_many_rows_in_one_transaction(self):
        changes = [self.row(UPSERT, str(i), {"id": str(i), "v": "x" * i}) for i in range(50)]
        changes.append(self.row(DELETE, "7", {"id": "7"}))
        yield self.pb.write(D.transaction_updates(self.txn(*changes)))
        (w,) = yield self.received(1)
        rows = {c.key: c for c in w.changes}
        self.assertEqual(len(rows), 50)
        self.assertEqual(rows[("7",)], ResolvedChange("public", self.table, ("7",), {"id": "7", "v": "x" * 7}, True))
        self.assertEqual(rows[("49",)].row, {"id": "49", "v": "x" * 49})
