"""The Satellite session state machine, without sockets, hub or clock."""

from twisted.trial import unittest

from electric.hub.interface import DELETE, UPSERT, ResolvedChange, ResolvedTransaction
from electric.hub.positions import ClientLsnCodec
from electric.satellite import codec
from electric.satellite import session as sm
from electric.satellite.auth import InsecureAuth, JWTAuth
from electric.satellite.codec import ORIGINAL, V0_2
from electric.schema import Column, Table

from tests.satellite_helpers import (
    begin, client_txn, commit, delete, insert, msg, oplog, registry_with_tables, relation, start_req, update,
)

HUB = ClientLsnCodec(b"\x01" * 8)
OTHER_HUB = ClientLsnCodec(b"\x02" * 8)
ERR = {code: codec.encode(ORIGINAL, codec.satellite_pb2.SatErrorResp(error_type=code)) for code in range(5)}
ITEMS_COLS = ["id", "content", "n", "electric_user_id"]


def frames(actions):
    return [a.data for a in actions if isinstance(a, sm.Send)]


def of(actions, cls):
    return [a for a in actions if isinstance(a, cls)]


class Base(unittest.TestCase):
    gen = ORIGINAL

    def make(self, authenticator=None):
        self.registry = registry_with_tables()
        self.logs = []
        return sm.SatelliteSession(
            self.registry, authenticator or InsecureAuth(), "region-1.test",
            HUB.client_lsn, HUB.position_from_client_lsn,
            logger=self.logs.append, clock=lambda: 1_700_000_000.0,
        )

    def ready(self, user="alice", client="c1", stored=None, incoming=True):
        s = self.make()
        actions = s.receive(codec.auth_request(self.gen, client, user))
        self.assertEqual(actions, [sm.ClaimClient(client, user)])
        actions = s.claim_granted(stored)
        self.assertEqual(s.state, sm.READY)
        if incoming:
            self.assertEqual(s.receive(msg(self.gen, "SatInStartReplicationResp")), [])
        return s, actions

    def assertFails(self, actions, code):
        self.assertEqual(len(actions), 2, actions)
        self.assertEqual(actions[0], sm.Send(ERR[code]))
        self.assertIsInstance(actions[1], sm.Close)


class Authentication(Base):
    def test_success_original(self):
        s, actions = self.ready(incoming=False)
        self.assertEqual(
            frames(actions),
            [b"\x02\x0a\x0dregion-1.test", bytes.fromhex("07 12 01 02 18 01")],
        )
        self.assertEqual((s.client_id, s.user_id, s.gen), ("c1", "alice", ORIGINAL))

    def test_success_v0_2(self):
        self.gen = V0_2
        s, actions = self.ready(incoming=False, stored=b"\x00\x00\x00\x07")
        self.assertEqual(
            frames(actions),
            [b"\x02\x0a\x0dregion-1.test", bytes.fromhex("05 0a 04 00 00 00 07 12 01 02 18 01")],
        )
        self.assertIs(s.gen, V0_2)

    def test_empty_id(self):
        s = self.make()
        self.assertFails(s.receive(codec.auth_request(ORIGINAL, "", "alice")), codec.INVALID_REQUEST)
        self.assertTrue(s.closed)

    def test_empty_token(self):
        s = self.make()
        self.assertFails(s.receive(codec.auth_request(ORIGINAL, "c1", "")), codec.INVALID_REQUEST)

    def test_bad_token(self):
        s = self.make(JWTAuth("k" * 32, "iss"))
        self.assertFails(s.receive(codec.auth_request(ORIGINAL, "c1", "alice")), codec.AUTH_REQUIRED)
        self.assertFalse(any("k" * 32 in line for line in self.logs))

    def test_message_before_auth(self):
        s = self.make()
        self.assertFails(s.receive(msg(ORIGINAL, "SatPingReq")), codec.AUTH_REQUIRED)
        s = self.make()
        self.assertFails(s.receive(start_req(ORIGINAL, b"0")), codec.AUTH_REQUIRED)

    def test_second_auth(self):
        s, _ = self.ready()
        self.assertFails(s.receive(codec.auth_request(ORIGINAL, "c1", "alice")), codec.INVALID_REQUEST)

    def test_claim_refused(self):
        s = self.make()
        s.receive(codec.auth_request(ORIGINAL, "c1", "alice"))
        self.assertFails(s.claim_refused(), codec.INVALID_REQUEST)

    def test_unknown_protocol_version(self):
        s = self.make()
        pb = V0_2.pb
        frame = codec.encode(V0_2, pb.SatAuthReq(id="c", token="t", headers=[pb.SatAuthHeaderPair(key=1, value="Electric.Satellite.v9")]))
        actions = s.receive(frame)
        self.assertEqual(frames(actions), [b"\x00\x08\x05"])

    def test_frames_while_claiming_are_kept_in_order(self):
        s = self.make()
        s.receive(codec.auth_request(ORIGINAL, "c1", "alice"))
        self.assertEqual(s.receive(msg(ORIGINAL, "SatPingReq")), [])
        actions = s.claim_granted(None)
        self.assertEqual(frames(actions)[-1], bytes.fromhex("06 0a 00"))

    def test_auth_deadline(self):
        s = self.make()
        self.assertFails(s.auth_deadline(), codec.AUTH_REQUIRED)
        s, _ = self.ready()
        self.assertEqual(s.auth_deadline(), [])


class BadInput(Base):
    def test_text_frame(self):
        s, _ = self.ready()
        self.assertFails(s.receive(b"\x05", binary=False), codec.INTERNAL)
        self.assertEqual(s.receive(msg(ORIGINAL, "SatPingReq")), [])  # closed: nothing more

    def test_empty_frame(self):
        s, _ = self.ready()
        self.assertFails(s.receive(b""), codec.INTERNAL)

    def test_rubbish(self):
        s = self.make()
        self.assertFails(s.receive(b"rubbish"), codec.INTERNAL)

    def test_undecodable_payload(self):
        s, _ = self.ready()
        self.assertFails(s.receive(b"\x0b\xff\xff"), codec.INTERNAL)

    def test_server_info_request_is_unexpected(self):
        s, _ = self.ready()
        self.assertFails(s.receive(msg(ORIGINAL, "SatGetServerInfoReq")), codec.INVALID_REQUEST)

    def test_migration_notification_from_client_is_unexpected(self):
        self.gen = V0_2
        s, _ = self.ready()
        actions = s.receive(msg(V0_2, "SatMigrationNotification"))
        self.assertEqual(frames(actions), [b"\x00\x08\x04"])

    def test_client_error_closes(self):
        s, _ = self.ready()
        actions = s.receive(msg(ORIGINAL, "SatErrorResp", error_type=3))
        self.assertEqual(frames(actions), [])
        self.assertIsInstance(actions[0], sm.Close)


class Pings(Base):
    def test_ping_answered_present_empty(self):
        s, _ = self.ready()
        self.assertEqual(frames(s.receive(msg(ORIGINAL, "SatPingReq"))), [bytes.fromhex("06 0a 00")])

    def test_ping_resp_recorded(self):
        s, _ = self.ready()
        self.assertEqual(s.receive(bytes.fromhex("06 0a 00")), [])
        self.assertIsNone(s.client_ack_lsn)
        s.receive(bytes.fromhex("06 0a 02 01 02"))
        self.assertEqual(s.client_ack_lsn, b"\x01\x02")

    def test_heartbeat(self):
        s, _ = self.ready()
        self.assertEqual(s.tick(), [])  # activity since the last tick
        self.assertEqual(frames(s.tick()), [bytes.fromhex("05")])
        close = s.tick()
        self.assertEqual(close, [sm.Close("heartbeat timeout", abort=True)])
        self.assertTrue(s.closed)

    def test_any_message_counts_as_alive(self):
        s, _ = self.ready()
        s.tick()
        self.assertEqual(frames(s.tick()), [bytes.fromhex("05")])
        s.receive(msg(ORIGINAL, "SatRelation"))
        self.assertEqual(s.tick(), [])
        self.assertEqual(frames(s.tick()), [bytes.fromhex("05")])

    def test_no_ping_while_auth_unanswered(self):
        s = self.make()
        s.receive(codec.auth_request(ORIGINAL, "c1", "alice"))
        for _ in range(3):
            self.assertEqual(s.tick(), [])
        self.assertFalse(s.closed)


class StartOutgoing(Base):
    def start(self, s, frame):
        return s.receive(frame)

    def test_from_zero(self):
        s, _ = self.ready()
        actions = s.receive(start_req(ORIGINAL, b"0"))
        self.assertEqual(frames(actions), [b"\x08"])
        self.assertEqual(of(actions, sm.StartOutgoing), [sm.StartOutgoing(sm.FROM_START)])
        self.assertTrue(s.wants_transactions)

    def test_first_lsn(self):
        s, _ = self.ready()
        actions = s.receive(start_req(ORIGINAL, b"", [codec.OPT_FIRST_LSN]))
        self.assertEqual(of(actions, sm.StartOutgoing), [sm.StartOutgoing(sm.FROM_START)])

    def test_eof(self):
        s, _ = self.ready()
        actions = s.receive(start_req(ORIGINAL, b"eof"))
        self.assertEqual(of(actions, sm.StartOutgoing), [sm.StartOutgoing(sm.FROM_HEAD)])

    def test_issued_lsn(self):
        s, _ = self.ready()
        actions = s.receive(start_req(ORIGINAL, HUB.client_lsn(42)))
        self.assertEqual(of(actions, sm.StartOutgoing), [sm.StartOutgoing(sm.FROM_POSITION, 42)])

    def test_garbage_lsn(self):
        s, _ = self.ready()
        self.assertFails(s.receive(start_req(ORIGINAL, b"\x83\x61\x05")), codec.INVALID_REQUEST)
        s, _ = self.ready()
        garbled = bytearray(HUB.client_lsn(42))
        garbled[5] ^= 0xFF
        self.assertFails(s.receive(start_req(ORIGINAL, bytes(garbled))), codec.INVALID_REQUEST)

    def test_lsn_of_other_hub_resyncs(self):
        s, _ = self.ready()
        actions = s.receive(start_req(ORIGINAL, OTHER_HUB.client_lsn(42)))
        self.assertEqual(of(actions, sm.StartOutgoing), [sm.StartOutgoing(sm.FROM_START)])
        self.assertTrue(any("another hub" in line for line in self.logs))

    def test_sync_mode_needs_batch(self):
        s, _ = self.ready()
        self.assertFails(s.receive(start_req(ORIGINAL, b"0", [codec.OPT_SYNC_MODE], 0)), codec.INVALID_REQUEST)

    def test_restart_while_active(self):
        s, _ = self.ready()
        s.receive(start_req(ORIGINAL, b"0"))
        actions = s.receive(start_req(ORIGINAL, b"eof"))
        self.assertEqual(actions[0], sm.StopOutgoing())
        self.assertEqual(of(actions, sm.StartOutgoing), [sm.StartOutgoing(sm.FROM_HEAD)])

    def test_stop(self):
        s, _ = self.ready()
        self.assertFails(s.receive(msg(ORIGINAL, "SatInStopReplicationReq")), codec.INVALID_REQUEST)
        s, _ = self.ready()
        s.receive(start_req(ORIGINAL, b"0"))
        actions = s.receive(msg(ORIGINAL, "SatInStopReplicationReq"))
        self.assertEqual(actions, [sm.StopOutgoing(), sm.Send(b"\x0a")])
        self.assertFalse(s.wants_transactions)


class Incoming(Base):
    def test_oplog_before_incoming_active_dropped(self):
        s, _ = self.ready(incoming=False)
        s.receive(relation(ORIGINAL, 0, "items", ITEMS_COLS))
        self.assertEqual(s.receive(client_txn(ORIGINAL, b"\x00\x00\x00\x01", 0, ["a", "x", "1", None])), [])
        self.assertFalse(s.closed)

    def test_transaction_appended_then_acked(self):
        s, _ = self.ready()
        s.receive(relation(ORIGINAL, 0, "items", ITEMS_COLS))
        actions = s.receive(client_txn(ORIGINAL, b"\x00\x00\x00\x01", 0, ["a", "x", "1", None], ts=1_700_000_000_123))
        (append,) = actions
        self.assertIsInstance(append, sm.Append)
        t = append.transaction
        self.assertEqual((t.origin, t.origin_id, t.commit_timestamp), ("satellite:c1", b"\x00\x00\x00\x01", 1_700_000_000_123_000))
        (change,) = t.changes
        self.assertEqual((change.schema, change.table, change.op, change.key), ("public", "items", UPSERT, ("a",)))
        self.assertEqual(dict(change.values), {"id": "a", "content": "x", "n": "1", "electric_user_id": None})
        done = s.append_done(b"\x00\x00\x00\x01")
        self.assertEqual(done, [sm.Send(bytes.fromhex("06 0a 04 00 00 00 01")), sm.PersistClientLsn("c1", b"\x00\x00\x00\x01")])

    def test_update_and_delete(self):
        s, _ = self.ready()
        s.receive(relation(ORIGINAL, 3, "notes", ["id", "body"]))
        actions = s.receive(oplog(
            ORIGINAL,
            begin(ORIGINAL, b"L1"),
            update(ORIGINAL, 3, ["1", "new"], old=["1", "old"]),
            update(ORIGINAL, 3, ["2", "moved"], old=["9", "moved"]),
            delete(ORIGINAL, 3, ["5", None]),
            commit(ORIGINAL),
        ))
        (append,) = of(actions, sm.Append)
        ops = [(c.op, c.key) for c in append.transaction.changes]
        self.assertEqual(ops, [(UPSERT, ("1",)), (DELETE, ("9",)), (UPSERT, ("2",)), (DELETE, ("5",))])
        self.assertEqual(dict(append.transaction.changes[0].old_values or {}), {})  # partial old row: columns unknown
        self.assertEqual(append.transaction.changes[0].values["body"], "new")

    def test_split_and_combined_messages(self):
        s, _ = self.ready()
        s.receive(relation(ORIGINAL, 0, "notes", ["id", "body", "flag"]))
        self.assertEqual(s.receive(oplog(ORIGINAL, begin(ORIGINAL, b"A"), insert(ORIGINAL, 0, ["1", "a", "t"]))), [])
        actions = s.receive(oplog(
            ORIGINAL, commit(ORIGINAL),
            begin(ORIGINAL, b"B"), insert(ORIGINAL, 0, ["2", "b", "f"]), commit(ORIGINAL),
        ))
        # one append at a time: B waits for A
        self.assertEqual([a.lsn for a in of(actions, sm.Append)], [b"A"])
        actions = s.append_done(b"A")
        self.assertEqual(frames(actions), [bytes.fromhex("06 0a 01") + b"A"])
        self.assertEqual([a.lsn for a in of(actions, sm.Append)], [b"B"])
        self.assertEqual(frames(s.append_done(b"B")), [bytes.fromhex("06 0a 01") + b"B"])

    def bad(self, *ops, rel_cols=ITEMS_COLS, table="items", schema="public"):
        s, _ = self.ready()
        s.receive(relation(ORIGINAL, 0, table, rel_cols, schema=schema))
        actions = s.receive(oplog(ORIGINAL, *ops))
        self.assertFalse(of(actions, sm.Append))
        self.assertEqual(frames(actions), [ERR[codec.INVALID_REQUEST]])
        self.assertTrue(s.closed)
        return actions

    def test_unknown_relation(self):
        self.bad(begin(ORIGINAL, b"A"), insert(ORIGINAL, 7, ["a", "x", "1", None]), commit(ORIGINAL))

    def test_unknown_table(self):
        self.bad(begin(ORIGINAL, b"A"), insert(ORIGINAL, 0, ["a"]), commit(ORIGINAL), table="nope", rel_cols=["id"])

    def register(self, schema, name):
        return self.registry.register(Table(schema, name, (Column("id", "text", 25, -1, True),
                                                           Column("v", "text", 25, -1, False)), ("id",)))

    def test_table_of_another_schema_is_found_by_name(self):
        s, _ = self.ready()
        self.register("electric", "things")
        # Clients name tables without a schema ("public" on the wire).
        s.receive(relation(ORIGINAL, 0, "things", ["id", "v"]))
        (append,) = s.receive(client_txn(ORIGINAL, b"\x00\x00\x00\x01", 0, ["a", "x"]))
        (change,) = append.transaction.changes
        self.assertEqual((change.schema, change.table, change.key), ("electric", "things", ("a",)))

    def test_public_table_wins_over_a_namesake(self):
        s, _ = self.ready()
        self.register("electric", "items")
        s.receive(relation(ORIGINAL, 0, "items", ITEMS_COLS))
        (append,) = s.receive(client_txn(ORIGINAL, b"\x00\x00\x00\x01", 0, ["a", "x", "1", None]))
        self.assertEqual(append.transaction.changes[0].schema, "public")

    def test_ambiguous_name(self):
        s, _ = self.ready()
        self.register("electric", "twice")
        self.register("other", "twice")
        s.receive(relation(ORIGINAL, 0, "twice", ["id", "v"]))
        actions = s.receive(client_txn(ORIGINAL, b"\x00\x00\x00\x01", 0, ["a", "x"]))
        self.assertEqual(frames(actions), [ERR[codec.INVALID_REQUEST]])
        self.assertTrue(s.closed)
        self.assertIn('closing: table "twice" is ambiguous: it exists in schemas "electric", "other", none of them "public"',
                      self.logs)

    def test_unknown_column(self):
        self.bad(begin(ORIGINAL, b"A"), insert(ORIGINAL, 0, ["a", "b"]), commit(ORIGINAL), rel_cols=["id", "nope"])

    def test_wrong_column_count(self):
        self.bad(begin(ORIGINAL, b"A"), insert(ORIGINAL, 0, ["a", "x"]), commit(ORIGINAL))

    def test_missing_key(self):
        self.bad(begin(ORIGINAL, b"A"), insert(ORIGINAL, 0, [None, "x", "1", None]), commit(ORIGINAL))

    def test_empty_begin_lsn(self):
        self.bad(begin(ORIGINAL, b""), commit(ORIGINAL))

    def test_op_outside_transaction(self):
        self.bad(insert(ORIGINAL, 0, ["a", "x", "1", None]))

    def test_commit_outside_transaction(self):
        self.bad(commit(ORIGINAL))

    def test_begin_inside_transaction(self):
        self.bad(begin(ORIGINAL, b"A"), begin(ORIGINAL, b"B"))

    def test_insert_without_row(self):
        self.bad(begin(ORIGINAL, b"A"), ORIGINAL.pb.SatTransOp(insert=ORIGINAL.pb.SatOpInsert(relation_id=0)), commit(ORIGINAL))

    def test_disconnect_mid_transaction_drops_it(self):
        s, _ = self.ready()
        s.receive(relation(ORIGINAL, 0, "items", ITEMS_COLS))
        self.assertEqual(s.receive(oplog(ORIGINAL, begin(ORIGINAL, b"A"), insert(ORIGINAL, 0, ["a", "x", "1", None]))), [])
        s.disconnected()
        self.assertEqual(s.receive(oplog(ORIGINAL, commit(ORIGINAL))), [])
        self.assertTrue(any("dropped" in line for line in self.logs))

    def test_append_failure_closes(self):
        s, _ = self.ready()
        s.receive(relation(ORIGINAL, 0, "items", ITEMS_COLS))
        s.receive(client_txn(ORIGINAL, b"A", 0, ["a", "x", "1", None]))
        self.assertFails(s.append_failed("hub stopped"), codec.INTERNAL)

    def test_append_rejected_is_invalid_request(self):
        s, _ = self.ready()
        s.receive(relation(ORIGINAL, 0, "items", ITEMS_COLS))
        s.receive(client_txn(ORIGINAL, b"A", 0, ["a", "x", "1", None]))
        self.assertFails(s.append_failed("invalid transaction: bad", rejected=True), codec.INVALID_REQUEST)

    def test_nul_value_refused(self):
        self.bad(begin(ORIGINAL, b"A"), insert(ORIGINAL, 0, ["a", "x\x00y", "1", None]), commit(ORIGINAL))

    def test_paused_incoming(self):
        s, _ = self.ready()
        self.assertEqual(s.receive(msg(ORIGINAL, "SatInStopReplicationResp")), [])
        self.assertEqual(s.incoming_state, sm.PAUSED)
        self.assertEqual(frames(s.receive(msg(ORIGINAL, "SatInStartReplicationResp"))), [b"\x09"])


def rt(position, *changes, ts=1_700_000_000_000_000):
    return ResolvedTransaction(position, "pg", b"x", ts, tuple(changes))


def item(key, user=None, deleted=False, content="c"):
    return ResolvedChange("public", "items", (key,), {"id": key, "content": content, "n": "1", "electric_user_id": user}, deleted)


class Outgoing(Base):
    def started(self, gen=ORIGINAL, user="alice"):
        self.gen = gen
        s, _ = self.ready(user=user)
        s.receive(start_req(gen, b"0"))
        return s

    def decode_all(self, actions, gen=ORIGINAL):
        return [codec.decode(gen, f) for f in frames(actions)]

    def test_relation_then_transaction(self):
        s = self.started()
        msgs = self.decode_all(s.outgoing([rt(5, item("a"), item("b", deleted=True))]))
        rel, log = msgs
        self.assertEqual(codec.message_name(rel), "SatRelation")
        self.assertEqual((rel.schema_name, rel.table_name, rel.relation_id), ("public", "items", 20000))
        self.assertEqual([(c.name, c.type) for c in rel.columns], [("id", "text"), ("content", "varchar"), ("n", "int4"), ("electric_user_id", "text")])
        ops = [op.WhichOneof("op") for op in log.ops]
        self.assertEqual(ops, ["begin", "update", "delete", "commit"])
        lsn = HUB.client_lsn(5)
        self.assertEqual((log.ops[0].begin.lsn, log.ops[0].begin.commit_timestamp), (lsn, 1_700_000_000_000))
        self.assertEqual((log.ops[-1].commit.lsn, log.ops[-1].commit.commit_timestamp), (lsn, 1_700_000_000_000))
        self.assertFalse(log.ops[1].update.HasField("old_row_data"))
        self.assertEqual(codec.decode_row(log.ops[1].update.row_data, ["id", "content", "n", "u"]), {"id": "a", "content": "c", "n": "1", "u": None})
        self.assertEqual(log.ops[1].update.row_data.nulls_bitmask, b"\x10")
        # second transaction: no relation again
        msgs = self.decode_all(s.outgoing([rt(6, item("c"))]))
        self.assertEqual([codec.message_name(m) for m in msgs], ["SatOpLog"])

    def test_v0_2_type_bytes(self):
        s = self.started(V0_2)
        data = frames(s.outgoing([rt(5, item("a"))]))
        self.assertEqual([d[0] for d in data], [10, 9])

    def test_relation_resent_after_schema_change(self):
        s = self.started()
        s.outgoing([rt(1, item("a"))])
        from electric.schema import Column, Table
        t = self.registry.get("public", "items")
        self.registry.register(Table("public", "items", t.columns + (Column("extra", "text", 25),), ("id",)))
        msgs = self.decode_all(s.outgoing([rt(2, item("b"))]))
        self.assertEqual([codec.message_name(m) for m in msgs], ["SatRelation", "SatOpLog"])
        self.assertEqual(len(msgs[0].columns), 5)

    def test_user_filter_row_by_row(self):
        s = self.started(user="alice")
        msgs = self.decode_all(s.outgoing([rt(1, item("a", "alice"), item("b", "bob"), item("c", None), item("d", ""))]))
        log = msgs[-1]
        keys = [codec.decode_row(op.update.row_data, ITEMS_COLS)["id"] for op in log.ops if op.WhichOneof("op") == "update"]
        self.assertEqual(keys, ["a", "c", "d"])

    def test_empty_after_filter_not_sent(self):
        s = self.started(user="alice")
        self.assertEqual(s.outgoing([rt(1, item("b", "bob"))]), [])
        self.assertEqual(s.delivered, 0)

    def test_unknown_table_change_skipped(self):
        s = self.started()
        odd = ResolvedChange("public", "ghost", ("1",), {"id": "1"})
        msgs = self.decode_all(s.outgoing([rt(1, odd, item("a"))]))
        self.assertEqual(len([op for op in msgs[-1].ops if op.WhichOneof("op") == "update"]), 1)

    def test_ack_before_later_transactions(self):
        """Departure 5: nothing from the hub overtakes the ack of an in-flight client transaction."""
        s = self.started()
        s.receive(relation(ORIGINAL, 0, "items", ITEMS_COLS))
        s.receive(client_txn(ORIGINAL, b"A", 0, ["a", "x", "1", None]))
        self.assertFalse(s.wants_transactions)
        self.assertEqual(s.outgoing([rt(7, item("z"))]), [])
        actions = s.append_done(b"A")
        data = frames(actions)
        self.assertEqual(data[0], bytes.fromhex("06 0a 01") + b"A")
        self.assertEqual([d[0] for d in data[1:]], [12, 11])
        self.assertTrue(s.wants_transactions)

    def test_snapshot_chunks(self):
        s = self.started()
        n = sm.SNAPSHOT_ROWS_PER_TRANSACTION + 3
        rows = [item(f"k{i}") for i in range(n)] + [item("hidden", "bob"), item("gone", deleted=True)]
        msgs = self.decode_all(s.initial_sync(rows[:7]) + s.initial_sync(rows[7:]) + s.initial_sync_done(9))
        self.assertEqual([codec.message_name(m) for m in msgs], ["SatRelation", "SatOpLog", "SatOpLog"])
        first, last = msgs[1], msgs[2]
        self.assertEqual(first.ops[0].begin.lsn, sm.INITIAL_SYNC_LSN)
        self.assertEqual(last.ops[0].begin.lsn, HUB.client_lsn(9))
        self.assertEqual(last.ops[-1].commit.lsn, HUB.client_lsn(9))
        self.assertEqual(len(first.ops) - 2 + len(last.ops) - 2, n)
        self.assertEqual(first.ops[0].begin.commit_timestamp, 1_700_000_000_000)

    def test_big_transaction_reaches_the_client_in_resumable_pieces(self):
        s = self.started(user="alice")
        s.streaming_from(4)
        n = sm.OPS_PER_MESSAGE + 10
        parts = [
            ResolvedTransaction(5, "pg", b"x", 1_700_000_000_000_000, (item("hidden", "bob"),), more=True),
            ResolvedTransaction(5, "pg", b"x", 1_700_000_000_000_000,
                                tuple(item(f"k{i}") for i in range(n)), more=True),
            ResolvedTransaction(5, "pg", b"x", 1_700_000_000_000_000, (item("last"),), more=False),
        ]
        msgs = []
        for part in parts:
            msgs += self.decode_all(s.outgoing([part]))
            self.assertTrue(s.wants_transactions)
        names = [codec.message_name(m) for m in msgs]
        self.assertEqual(names, ["SatRelation", "SatOpLog", "SatOpLog", "SatOpLog"])
        # Piece 1 (nothing visible) sends nothing; piece 2 is one client transaction over two
        # messages with the LSN of position 4 (a client dropping here resumes at the start of 5);
        # the last piece carries position 5's LSN.
        piece = [op for m in msgs[1:3] for op in m.ops]
        self.assertEqual([op.WhichOneof("op") for op in piece], ["begin"] + ["update"] * n + ["commit"])
        self.assertEqual([len(m.ops) for m in msgs[1:3]], [1 + sm.OPS_PER_MESSAGE, 10 + 1])
        self.assertEqual(piece[0].begin.lsn, HUB.client_lsn(4))
        last = msgs[3].ops
        self.assertEqual([op.WhichOneof("op") for op in last], ["begin", "update", "commit"])
        self.assertEqual(last[0].begin.lsn, HUB.client_lsn(5))
        # The next big transaction's pieces resume from 5.
        msgs = self.decode_all(s.outgoing([ResolvedTransaction(6, "pg", b"y", 1, (item("a"),), more=True)]))
        self.assertEqual(msgs[-1].ops[0].begin.lsn, HUB.client_lsn(5))

    def test_catch_up_pieces_resume_where_the_client_was(self):
        s = self.started()
        s.streaming_from(2)
        cu = [ResolvedTransaction(40, "electric:catch-up", b"", 1, (item(f"c{i}"),), catch_up=True, more=m)
              for i, m in enumerate((True, True, False))]
        lsns = [self.decode_all(s.outgoing([c]))[-1].ops[0].begin.lsn for c in cu]
        self.assertEqual(lsns, [HUB.client_lsn(2), HUB.client_lsn(2), HUB.client_lsn(40)])
        # Without a known start, a piece makes the client restart from an initial sync.
        s.receive(start_req(self.gen, b"0"))
        msgs = self.decode_all(s.outgoing(cu[:1]))
        self.assertEqual(msgs[-1].ops[0].begin.lsn, sm.INITIAL_SYNC_LSN)

    def test_initial_sync_held_behind_a_pending_append(self):
        s = self.started()
        s.receive(relation(ORIGINAL, 0, "items", ITEMS_COLS))
        s.receive(client_txn(ORIGINAL, b"A", 0, ["a", "x", "1", None]))
        self.assertEqual(s.initial_sync([item("k")]) + s.initial_sync_done(3), [])
        data = self.decode_all(s.append_done(b"A"))
        self.assertEqual([codec.message_name(m) for m in data], ["SatPingResp", "SatRelation", "SatOpLog"])
        self.assertEqual(data[-1].ops[0].begin.lsn, HUB.client_lsn(3))

    def test_empty_snapshot_sends_nothing(self):
        s = self.started()
        self.assertEqual(s.initial_sync([]) + s.initial_sync_done(0), [])

    def test_nothing_after_stop(self):
        s = self.started()
        s.receive(msg(ORIGINAL, "SatInStopReplicationReq"))
        self.assertEqual(s.outgoing([rt(1, item("a"))]), [])

    def test_stream_failure(self):
        s = self.started()
        self.assertFails(s.stream_failed("hub stopped"), codec.INTERNAL)
