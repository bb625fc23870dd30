"""The Satellite service over real websockets (autobahn client), with the embedded hub."""

import socket

from twisted.internet import defer, task, threads
from twisted.trial import unittest

from electric.hub.interface import UPSERT, RowChange, Transaction
from electric.satellite import codec
from electric.satellite import service as service_mod
from electric.satellite import session as sm
from electric.satellite.codec import ORIGINAL, V0_2

from tests.hub_helpers import read_snapshot
from tests.satellite_helpers import (
    ClientClosed, SatelliteFixture, begin, client_txn, eventually, insert, msg, oplog, relation, satellite_config,
    start_req,
)

ITEMS = ["id", "content", "n", "electric_user_id"]


def pg_txn(n, *rows, origin="postgres_1"):
    changes = tuple(
        RowChange("public", "items", UPSERT, (r["id"],), {"content": None, "n": None, "electric_user_id": None, **r})
        for r in rows
    )
    return Transaction(origin, n.to_bytes(8, "big"), 1_700_000_000_000_000 + n, changes)


def updates(log):
    return [codec.decode_row(op.update.row_data, ITEMS) for op in log.ops if op.WhichOneof("op") == "update"]


class Base(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.fx = yield SatelliteFixture(self).start()

    @defer.inlineCallbacks
    def rows(self):
        snap = yield read_snapshot(self.fx.hub, [("public", "items")])
        return {r.key[0]: dict(r.row) for r in snap.rows}


class Handshake(Base):
    def http_get(self, path):
        def go():
            s = socket.create_connection(("127.0.0.1", self.fx.port), timeout=10)
            try:
                s.sendall(
                    f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
                )
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                return data.decode("latin-1")
            finally:
                s.close()

        return threads.deferToThread(go)

    @defer.inlineCallbacks
    def test_other_path_is_404(self):
        response = yield self.http_get("/other")
        self.assertTrue(response.startswith("HTTP/1.1 404"), response)

    @defer.inlineCallbacks
    def test_ws_path_upgrades_without_subprotocol(self):
        response = yield self.http_get("/ws")
        self.assertTrue(response.startswith("HTTP/1.1 101"), response)
        self.assertNotIn("sec-websocket-protocol", response.lower())


class Replication(Base):
    @defer.inlineCallbacks
    def test_original_round_trip(self):
        c = yield self.fx.client()
        c.send(bytes.fromhex("01 0a 05 64 65 76 2d 31 12 05 61 6c 69 63 65"))  # dev-1 / alice
        self.assertEqual((yield c.recv()), b"\x02\x0a\x19region-1.test.electric-db")
        self.assertEqual((yield c.recv()), bytes.fromhex("07 12 01 02 18 01"))
        c.send(b"\x08")
        c.send(start_req(ORIGINAL, b"eof"))
        self.assertEqual((yield c.recv()), b"\x08")

        # client -> hub
        c.send(relation(ORIGINAL, 0, "items", ITEMS))
        c.send(client_txn(ORIGINAL, b"\x00\x00\x00\x01", 0, ["a", "from client", "5", None], ts=1_700_000_000_500))
        self.assertEqual((yield c.recv()), bytes.fromhex("06 0a 04 00 00 00 01"))
        rows = yield self.rows()
        self.assertEqual(rows["a"]["content"], "from client")
        yield eventually(lambda: self.fx.offsets.client_lsn("dev-1") == b"\x00\x00\x00\x01", message="client LSN stored")

        # the resolved write comes back (origin included), then hub -> client
        rel = yield c.recv_message(ORIGINAL)
        self.assertEqual((codec.message_name(rel), rel.table_name), ("SatRelation", "items"))
        echo = yield c.recv_message(ORIGINAL)
        self.assertEqual(updates(echo)[0]["content"], "from client")
        self.assertEqual(echo.ops[0].begin.commit_timestamp, 1_700_000_000_500)

        yield self.fx.hub.append(pg_txn(1, {"id": "b", "content": "from pg"}))
        log = yield c.recv_message(ORIGINAL)
        self.assertEqual(updates(log), [{"id": "b", "content": "from pg", "n": None, "electric_user_id": None}])
        self.assertEqual(log.ops[0].begin.lsn, log.ops[-1].commit.lsn)
        self.assertEqual(log.ops[0].begin.lsn, self.fx.hub.client_lsn(self.fx.hub.head()))

    @defer.inlineCallbacks
    def test_status(self):
        import json

        c = yield self.fx.authed(V0_2, "st", "alice", start_lsn=b"eof")
        status = self.fx.service.status()
        json.dumps(status)
        self.assertEqual((status["listening"], status["auth"], status["connections"]), (True, "insecure", 1))
        (client,) = status["clients"]
        self.assertEqual((client["client_id"], client["user_id"], client["protocol"], client["outgoing"], client["incoming"]),
                         ("st", "alice", "v0_2", "active", "active"))
        yield c.close()

    @defer.inlineCallbacks
    def test_v0_2_round_trip(self):
        c = yield self.fx.authed(V0_2, "v2-client", "alice", start_lsn=b"", start_options=[codec.OPT_FIRST_LSN])
        self.assertEqual(list(c.server_start.options), [codec.OPT_SYNC_MODE])
        c.send(relation(V0_2, 0, "items", ITEMS))
        c.send(client_txn(V0_2, b"\x00\x00\x00\x02", 0, ["v", "two", None, None]))
        ack = yield c.recv()
        self.assertEqual(ack, bytes.fromhex("04 0a 04 00 00 00 02"))
        frame = yield c.recv()
        self.assertEqual(frame[0], 10)  # SatRelation in the v0_2 table
        frame = yield c.recv()
        self.assertEqual(frame[0], 9)  # SatOpLog
        c.send(msg(V0_2, "SatPingReq"))
        self.assertEqual((yield c.recv()), bytes.fromhex("04 0a 00"))

    @defer.inlineCallbacks
    def test_resent_transaction_is_idempotent(self):
        c = yield self.fx.authed(ORIGINAL, "dup", "alice")
        c.send(relation(ORIGINAL, 0, "items", ITEMS))
        c.send(client_txn(ORIGINAL, b"L1", 0, ["a", "x", "1", None]))
        yield c.recv()
        head = self.fx.hub.head()
        yield eventually(lambda: self.fx.offsets.client_lsn("dup") == b"L1", message="client LSN stored")
        yield c.close()
        c2 = yield self.fx.authed(ORIGINAL, "dup", "alice")
        self.assertEqual(c2.server_start.lsn, b"L1")
        c2.send(relation(ORIGINAL, 0, "items", ITEMS))
        c2.send(client_txn(ORIGINAL, b"L1", 0, ["a", "x", "1", None]))
        self.assertEqual((yield c2.recv()), bytes.fromhex("06 0a 02") + b"L1")
        self.assertEqual(self.fx.hub.head(), head)

    @defer.inlineCallbacks
    def test_initial_sync_then_live_then_resume(self):
        for i in range(3):
            yield self.fx.hub.append(pg_txn(i + 1, {"id": f"k{i}", "content": str(i)}))
        c = yield self.fx.authed(ORIGINAL, "sync", "alice", start_lsn=b"0")
        yield c.recv_message(ORIGINAL)  # relation
        snap = yield c.recv_message(ORIGINAL)
        self.assertEqual(sorted(r["id"] for r in updates(snap)), ["k0", "k1", "k2"])
        self.assertEqual(snap.ops[0].begin.lsn, self.fx.hub.client_lsn(3))
        yield self.fx.hub.append(pg_txn(4, {"id": "k3", "content": "3"}))
        live = yield c.recv_message(ORIGINAL)
        self.assertEqual([r["id"] for r in updates(live)], ["k3"])
        resume_at = live.ops[0].begin.lsn
        yield c.close()
        yield self.fx.hub.append(pg_txn(5, {"id": "k4", "content": "4"}))
        c2 = yield self.fx.authed(ORIGINAL, "sync", "alice", start_lsn=resume_at)
        yield c2.recv_message(ORIGINAL)  # relation
        nxt = yield c2.recv_message(ORIGINAL)
        self.assertEqual([r["id"] for r in updates(nxt)], ["k4"])

    @defer.inlineCallbacks
    def test_lsn_beyond_head_resyncs(self):
        """An LSN of this hub naming a position it never reached (data restored from a backup): initial sync."""
        yield self.fx.hub.append(pg_txn(1, {"id": "only"}))
        c = yield self.fx.authed(ORIGINAL, "ahead", "alice", start_lsn=self.fx.hub.client_lsn(999))
        yield c.recv_message(ORIGINAL)
        log = yield c.recv_message(ORIGINAL)
        self.assertEqual([r["id"] for r in updates(log)], ["only"])
        self.assertEqual(log.ops[0].begin.lsn, self.fx.hub.client_lsn(1))

    @defer.inlineCallbacks
    def test_eof_sends_only_new(self):
        yield self.fx.hub.append(pg_txn(1, {"id": "old"}))
        c = yield self.fx.authed(ORIGINAL, "eof", "alice", start_lsn=b"eof")
        yield self.fx.hub.append(pg_txn(2, {"id": "new"}))
        yield c.recv_message(ORIGINAL)
        log = yield c.recv_message(ORIGINAL)
        self.assertEqual([r["id"] for r in updates(log)], ["new"])

    @defer.inlineCallbacks
    def test_users_see_only_their_rows(self):
        alice = yield self.fx.authed(ORIGINAL, "ca", "alice", start_lsn=b"eof")
        bob = yield self.fx.authed(ORIGINAL, "cb", "bob", start_lsn=b"eof")
        yield self.fx.hub.append(pg_txn(1, {"id": "1", "electric_user_id": "alice"}, {"id": "2", "electric_user_id": "bob"}, {"id": "3"}))
        yield self.fx.hub.append(pg_txn(2, {"id": "4", "electric_user_id": "bob"}))
        yield self.fx.hub.append(pg_txn(3, {"id": "5", "electric_user_id": "alice"}))
        got = {}
        for name, c in (("alice", alice), ("bob", bob)):
            yield c.recv_message(ORIGINAL)
            ids = []
            for _ in range(2):
                log = yield c.recv_message(ORIGINAL)
                ids += [r["id"] for r in updates(log)]
            got[name] = ids
        self.assertEqual(got, {"alice": ["1", "3", "5"], "bob": ["2", "3", "4"]})

    @defer.inlineCallbacks
    def test_large_backlog_arrives_in_order(self):
        n = 1500
        for i in range(n):
            yield self.fx.hub.append(pg_txn(i + 1, {"id": f"r{i}", "content": "x" * 200}))
        c = yield self.fx.authed(ORIGINAL, "backlog", "alice", start_lsn=self.fx.hub.client_lsn(0))
        yield c.recv_message(ORIGINAL)
        for i in range(n):
            log = yield c.recv_message(ORIGINAL)
            self.assertEqual(updates(log)[0]["id"], f"r{i}")

    @defer.inlineCallbacks
    def test_slow_reader_pauses_the_stream(self):
        """A client that stops reading stops the server pulling from the hub; nothing is lost when it reads again."""
        n = 1000
        c = yield self.fx.authed(ORIGINAL, "slow", "alice", start_lsn=b"eof")
        (conn,) = self.fx.service.connections
        c.proto.transport.pauseProducing()  # the client stops reading its socket
        big = "x" * 20_000
        for i in range(n):
            yield self.fx.hub.append(pg_txn(i + 1, {"id": f"r{i}", "content": big}))
        yield eventually(lambda: conn._paused, message="server paused by its transport")
        self.assertLess(conn.session.delivered, n)
        self.assertLess(conn._subscription.position, self.fx.hub.head())
        c.proto.transport.resumeProducing()
        yield c.recv_message(ORIGINAL)  # relation
        for i in range(n):
            log = yield c.recv_message(ORIGINAL)
            self.assertEqual(updates(log)[0]["id"], f"r{i}")
        self.assertFalse(conn._paused)

    @defer.inlineCallbacks
    def test_initial_sync_pulls_only_while_the_client_reads(self):
        """A client that stalls mid initial sync holds no more than a chunk; the others are not held up."""
        n = 6000
        buf = self.fx.hub.begin("postgres_1", b"load")
        for s in range(0, n, 1000):
            yield buf.add(pg_txn(0, *[{"id": f"r{i:05d}", "content": "x" * 2000} for i in range(s, s + 1000)]).changes)
        loaded = yield buf.commit()
        c = yield self.fx.authed(ORIGINAL, "stall", "alice")
        c.proto.transport.pauseProducing()  # the client stops reading its socket
        c.send(start_req(ORIGINAL, b"0"))
        conn = yield eventually(lambda: next((x for x in self.fx.service.connections
                                              if x.session.client_id == "stall"), None))
        yield eventually(lambda: conn._paused and not conn._pulling, message="server paused by its transport")
        reader = conn._sync
        self.assertIsNotNone(reader)
        held = reader.rows_read
        self.assertLess(held, n)  # 12 MB of rows: only what the socket buffers took, plus one chunk
        self.assertEqual(self.fx.hub.status()["snapshot_readers"], 1)
        # Another client syncs completely meanwhile.
        other = yield self.fx.authed(ORIGINAL, "other", "bob", start_lsn=b"0")
        got = 0
        while got < n:
            log = yield other.recv_message(ORIGINAL)
            if codec.message_name(log) == "SatOpLog":
                got += len(updates(log))
        self.assertEqual(log.ops[-1].commit.lsn, self.fx.hub.client_lsn(loaded.position))
        # The stalled one is still far from done: it read on only as far as its socket buffers drained.
        self.assertLess(reader.rows_read, n)
        c.proto.transport.resumeProducing()
        ids = []
        while len(ids) < n:
            log = yield c.recv_message(ORIGINAL)
            if codec.message_name(log) == "SatOpLog":
                ids += [r["id"] for r in updates(log)]
                lsns = {op.begin.lsn for op in log.ops if op.WhichOneof("op") == "begin"}
                self.assertEqual(lsns, {self.fx.hub.client_lsn(loaded.position)} if len(ids) == n
                                 else {sm.INITIAL_SYNC_LSN})
        self.assertEqual(sorted(ids), [f"r{i:05d}" for i in range(n)])
        yield eventually(lambda: self.fx.hub.status()["snapshot_readers"] == 0)
        self.assertIsNone(conn._sync)
        # Then live.
        yield self.fx.hub.append(pg_txn(1, {"id": "live"}))
        log = yield c.recv_message(ORIGINAL)
        self.assertEqual([r["id"] for r in updates(log)], ["live"])

    @defer.inlineCallbacks
    def test_initial_syncs_share_a_service_wide_cap_on_chunks_in_flight(self):
        """
        Clients syncing at once hold at most `sync_reads` chunks read or being
        encoded (a connect storm must not hold one decoded chunk per client),
        and every client still gets every row.
        """
        n, clients, cap = 3000, 6, 2
        self.fx.service.sync_reads = defer.DeferredSemaphore(cap)
        buf = self.fx.hub.begin("postgres_1", b"load")
        for s in range(0, n, 1000):
            yield buf.add(pg_txn(0, *[{"id": f"r{i:05d}", "content": "x" * 100} for i in range(s, s + 1000)]).changes)
        yield buf.commit()
        in_flight = {"now": 0, "max": 0}
        real_snapshot = self.fx.hub.snapshot

        def counted(reader):
            real_next = reader.next

            def next_chunk(max_rows):
                in_flight["now"] += 1
                in_flight["max"] = max(in_flight["max"], in_flight["now"])

                def done(result):
                    in_flight["now"] -= 1
                    return result

                return real_next(max_rows).addBoth(done)

            reader.next = next_chunk
            return reader

        self.patch(self.fx.hub, "snapshot", lambda tables=None: real_snapshot(tables).addCallback(counted))
        cs = []
        for i in range(clients):
            c = yield self.fx.authed(ORIGINAL, f"storm-{i}", "alice")
            cs.append(c)
        for c in cs:
            c.send(start_req(ORIGINAL, b"0"))

        @defer.inlineCallbacks
        def all_rows(c):
            ids = []
            while len(ids) < n:
                log = yield c.recv_message(ORIGINAL, timeout=60)
                if codec.message_name(log) == "SatOpLog":
                    ids += [r["id"] for r in updates(log)]
            return sorted(ids)

        got = yield defer.gatherResults([all_rows(c) for c in cs])
        for ids in got:
            self.assertEqual(ids, [f"r{i:05d}" for i in range(n)])
        self.assertGreater(in_flight["max"], 0)
        self.assertLessEqual(in_flight["max"], cap)
        self.assertEqual(self.fx.service.sync_reads.tokens, cap)

    @defer.inlineCallbacks
    def test_client_gone_mid_initial_sync_releases_the_reader(self):
        buf = self.fx.hub.begin("postgres_1", b"load")
        yield buf.add(pg_txn(0, *[{"id": f"r{i:05d}", "content": "x" * 5000} for i in range(4000)]).changes)
        yield buf.commit()
        c = yield self.fx.authed(ORIGINAL, "gone", "alice")
        c.proto.transport.pauseProducing()
        c.send(start_req(ORIGINAL, b"0"))
        yield eventually(lambda: self.fx.hub.status()["snapshot_readers"] == 1)
        yield c.abort()
        yield eventually(lambda: not self.fx.service.connections)
        self.assertEqual(self.fx.hub.status()["snapshot_readers"], 0)

    @defer.inlineCallbacks
    def test_big_transaction_in_resumable_pieces(self):
        first = yield self.fx.hub.append(pg_txn(1, {"id": "before"}))
        c = yield self.fx.authed(ORIGINAL, "big", "alice", start_lsn=self.fx.hub.client_lsn(first.position))
        n = 5000
        buf = self.fx.hub.begin("postgres_1", b"big")
        for s in range(0, n, 1000):
            yield buf.add(pg_txn(0, *[{"id": f"b{i:05d}", "content": "y"} for i in range(s, s + 1000)]).changes)
        big = yield buf.commit()
        yield self.fx.hub.append(pg_txn(2, {"id": "after"}))
        yield c.recv_message(ORIGINAL)  # relation
        pieces = []  # (begin lsn, ids) per client transaction
        ids = None
        while not pieces or pieces[-1][0] != self.fx.hub.client_lsn(big.position):
            log = yield c.recv_message(ORIGINAL)
            for op in log.ops:
                kind = op.WhichOneof("op")
                if kind == "begin":
                    ids = []
                    lsn = op.begin.lsn
                elif kind == "update":
                    ids.append(codec.decode_row(op.update.row_data, ITEMS)["id"])
                elif kind == "commit":
                    pieces.append((lsn, ids))
        self.assertEqual([len(p[1]) for p in pieces], [2000, 2000, 1000])
        self.assertEqual([p[0] for p in pieces], [self.fx.hub.client_lsn(first.position)] * 2
                         + [self.fx.hub.client_lsn(big.position)])
        self.assertEqual([i for p in pieces for i in p[1]], [f"b{i:05d}" for i in range(n)])
        log = yield c.recv_message(ORIGINAL)
        self.assertEqual([r["id"] for r in updates(log)], ["after"])

    @defer.inlineCallbacks
    def test_migration_notification_off_by_default(self):
        c = yield self.fx.authed(V0_2, "v2", "alice")
        self.assertEqual(self.fx.service.notify_migration("1", "h1", "2", "h2"), 0)
        c.send(msg(V0_2, "SatPingReq"))
        self.assertEqual((yield c.recv()), bytes.fromhex("04 0a 00"))

    @defer.inlineCallbacks
    def test_migration_notification_only_to_v0_2(self):
        self.fx.service.migration_notifications = True
        old = yield self.fx.authed(ORIGINAL, "orig", "alice")
        new = yield self.fx.authed(V0_2, "newer", "alice")
        self.assertEqual(self.fx.service.notify_migration("1", "h1", "2", "h2"), 1)
        frame = yield new.recv()
        self.assertEqual(frame[0], 11)
        note = codec.decode(V0_2, frame)
        self.assertEqual((note.old_schema_version, note.new_schema_hash), ("1", "h2"))
        old.send(msg(ORIGINAL, "SatPingReq"))
        self.assertEqual((yield old.recv()), bytes.fromhex("06 0a 00"))  # nothing before the pong


class BadInput(Base):
    @defer.inlineCallbacks
    def expect_error(self, c, frame, binary=True, error=b"\x00"):
        c.send(frame, binary=binary)
        self.assertEqual((yield c.recv()), error)
        yield c.wait_closed()

    @defer.inlineCallbacks
    def test_text_frame(self):
        other = yield self.fx.authed(ORIGINAL, "bystander", "alice", start_lsn=b"eof")
        c = yield self.fx.authed(ORIGINAL, "texter", "alice")
        yield self.expect_error(c, b"hello", binary=False)
        other.send(msg(ORIGINAL, "SatPingReq"))
        self.assertEqual((yield other.recv()), bytes.fromhex("06 0a 00"))

    @defer.inlineCallbacks
    def test_empty_frame(self):
        c = yield self.fx.authed(ORIGINAL, "empty", "alice")
        yield self.expect_error(c, b"")

    @defer.inlineCallbacks
    def test_rubbish_before_auth(self):
        c = yield self.fx.client()
        yield self.expect_error(c, b"rubbish")

    @defer.inlineCallbacks
    def test_ping_before_auth(self):
        c = yield self.fx.client()
        yield self.expect_error(c, b"\x05", error=b"\x00\x08\x01")

    @defer.inlineCallbacks
    def test_unknown_relation_nothing_appended(self):
        head = self.fx.hub.head()
        c = yield self.fx.authed(ORIGINAL, "badrel", "alice")
        yield self.expect_error(c, client_txn(ORIGINAL, b"A", 9, ["a", "b", "c", None]), error=b"\x00\x08\x04")
        self.assertEqual(self.fx.hub.head(), head)

    @defer.inlineCallbacks
    def test_wrong_column_count_nothing_appended(self):
        head = self.fx.hub.head()
        c = yield self.fx.authed(ORIGINAL, "badcount", "alice")
        c.send(relation(ORIGINAL, 0, "items", ITEMS))
        yield self.expect_error(c, client_txn(ORIGINAL, b"A", 0, ["a", "b"]), error=b"\x00\x08\x04")
        self.assertEqual(self.fx.hub.head(), head)

    @defer.inlineCallbacks
    def test_out_of_order(self):
        c = yield self.fx.authed(ORIGINAL, "ooo", "alice")
        yield self.expect_error(c, msg(ORIGINAL, "SatInStopReplicationReq"), error=b"\x00\x08\x04")

    @defer.inlineCallbacks
    def test_bad_start_lsn(self):
        c = yield self.fx.authed(ORIGINAL, "badlsn", "alice")
        yield self.expect_error(c, start_req(ORIGINAL, b"\x83\x61\x05"), error=b"\x00\x08\x04")

    @defer.inlineCallbacks
    def test_disconnect_mid_transaction(self):
        head = self.fx.hub.head()
        c = yield self.fx.authed(ORIGINAL, "midtxn", "alice")
        c.send(relation(ORIGINAL, 0, "items", ITEMS))
        c.send(oplog(ORIGINAL, begin(ORIGINAL, b"A"), insert(ORIGINAL, 0, ["a", "b", "1", None])))
        c.send(msg(ORIGINAL, "SatPingReq"))
        yield c.recv()  # the server has processed the partial transaction
        yield c.abort()
        yield eventually(lambda: not self.fx.service.connections, message="connection gone")
        self.assertEqual(self.fx.hub.head(), head)

    @defer.inlineCallbacks
    def test_oversized_frame_closes(self):
        c = yield self.fx.authed(ORIGINAL, "huge", "alice")
        from electric.satellite.transport import MAX_FRAME_BYTES

        c.send(b"\x0b" + b"\x00" * (MAX_FRAME_BYTES + 1))
        code = yield c.wait_closed()
        # autobahn fails the connection with 1009 and may drop TCP before the
        # sender finishes the frame, which the sender sees as 1006
        self.assertIn(code, (1009, 1006))
        yield eventually(lambda: not self.fx.service.connections, message="connection gone")
        other = yield self.fx.authed(ORIGINAL, "after-huge", "alice")
        other.send(msg(ORIGINAL, "SatPingReq"))
        self.assertEqual((yield other.recv()), bytes.fromhex("06 0a 00"))


class ClientIds(Base):
    def claim_waiting(self, client_id):
        return eventually(lambda: client_id in self.fx.service._claim_waiters, message="second connection waiting")

    @defer.inlineCallbacks
    def test_second_connection_refused_while_first_lives(self):
        clock = self.fx.service.clock = task.Clock()
        first = yield self.fx.authed(ORIGINAL, "same", "alice")
        second = yield self.fx.client()
        second.send(codec.auth_request(ORIGINAL, "same", "alice"))
        yield self.claim_waiting("same")
        clock.advance(service_mod.CLAIM_WAIT)
        self.assertEqual((yield second.recv()), b"\x00\x08\x04")
        yield second.wait_closed()
        first.send(msg(ORIGINAL, "SatPingReq"))
        self.assertEqual((yield first.recv()), bytes.fromhex("06 0a 00"))

    @defer.inlineCallbacks
    def test_second_connection_waits_for_first_to_go(self):
        self.fx.service.clock = task.Clock()  # the claim wait cannot run out under load
        first = yield self.fx.authed(ORIGINAL, "handover", "alice")
        second = yield self.fx.client()
        second.send(codec.auth_request(ORIGINAL, "handover", "alice"))
        yield self.claim_waiting("handover")
        yield first.close()
        self.assertEqual(codec.message_name((yield second.recv_message(ORIGINAL))), "SatAuthResp")


class Timers(Base):
    @defer.inlineCallbacks
    def test_silent_client_pinged_then_closed(self):
        clock = self.fx.service.clock = task.Clock()
        interval = service_mod.HEARTBEAT_INTERVAL
        c = yield self.fx.authed(ORIGINAL, "silent", "alice")
        conn, = self.fx.service.connections
        clock.advance(interval)  # the SatAuthReq was heard in this interval: no ping yet
        self.assertFalse(conn.session._ping_outstanding)
        clock.advance(interval)  # a whole silent interval: ping
        self.assertEqual((yield c.recv()), b"\x05")
        clock.advance(interval)  # no answer for another one: closed
        with self.assertRaises(ClientClosed):
            yield c.recv()
        self.assertEqual(self.fx.service.connections, [])

    @defer.inlineCallbacks
    def test_auth_deadline(self):
        clock = self.fx.service.clock = task.Clock()
        c = yield self.fx.client()
        conn, = yield eventually(lambda: self.fx.service.connections, message="connection opened")
        clock.advance(service_mod.AUTH_DEADLINE - 0.5)
        self.assertEqual(conn.session.state, "await_auth")
        clock.advance(0.5)
        self.assertEqual((yield c.recv()), b"\x00\x08\x01")
        yield c.wait_closed()


class Stop(Base):
    @defer.inlineCallbacks
    def test_stop_service_closes_every_connection(self):
        a = yield self.fx.authed(ORIGINAL, "s1", "alice", start_lsn=b"0")
        b = yield self.fx.client()
        yield self.fx.service.stopService()
        yield a.wait_closed()
        yield b.wait_closed()
        self.assertEqual(self.fx.service.connections, [])


class JWTMode(unittest.TestCase):
    timeout = 60
    KEY = "s3cr3t-" * 6

    @defer.inlineCallbacks
    def setUp(self):
        config = satellite_config(auth_signing_key=self.KEY, auth_signing_iss="test.electric-db")
        self.fx = yield SatelliteFixture(self, config=config).start()
        from electric.satellite.auth import JWTAuth

        self.auth = JWTAuth(self.KEY, "test.electric-db")

    @defer.inlineCallbacks
    def test_valid_token(self):
        token, _ = self.auth.generate("alice", ttl=60)
        c = yield self.fx.authed(ORIGINAL, "jwt-ok", token)
        self.assertEqual(self.fx.service.connected_clients(), ["jwt-ok"])
        self.assertEqual(self.fx.service.connections[0].session.user_id, "alice")
        yield c.close()

    @defer.inlineCallbacks
    def test_expired_token(self):
        token, _ = self.auth.generate("alice", ttl=-60)
        c = yield self.fx.client()
        c.send(codec.auth_request(V0_2, "jwt-old", token))
        self.assertEqual((yield c.recv()), b"\x00\x08\x01")
        yield c.wait_closed()

    @defer.inlineCallbacks
    def test_insecure_style_token_refused(self):
        c = yield self.fx.client()
        c.send(codec.auth_request(ORIGINAL, "jwt-plain", "alice"))
        self.assertEqual((yield c.recv()), b"\x00\x08\x01")
        yield c.wait_closed()
