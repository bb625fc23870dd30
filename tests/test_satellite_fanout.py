"""
The shared hub cursor (`electric.satellite.fanout`) over real websockets:
caught-up clients share one hub subscription and one encoding of each
transaction; a client whose socket pushes back leaves it, goes on at its own
pace without losing or repeating a row, and joins again once caught up.
"""

from twisted.internet import defer
from twisted.trial import unittest

from electric.hub.interface import UPSERT, RowChange, Transaction
from electric.satellite import codec
from electric.satellite.codec import ORIGINAL, V0_2

from tests.satellite_helpers import SatelliteFixture, eventually

ITEMS = ["id", "content", "n", "electric_user_id"]


def pg_txn(n, *rows, origin="postgres_1"):
    changes = tuple(
        RowChange("public", "items", UPSERT, (r["id"],), {"content": None, "n": None, "electric_user_id": None, **r})
        for r in rows
    )
    return Transaction(origin, n.to_bytes(8, "big"), 1_700_000_000_000_000 + n, changes)


def updates(log):
    return [codec.decode_row(op.update.row_data, ITEMS) for op in log.ops if op.WhichOneof("op") == "update"]


class SharedCursor(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.fx = yield SatelliteFixture(self).start()

    def conn(self, client_id):
        return next(c for c in self.fx.service.connections if c.session.client_id == client_id)

    @defer.inlineCallbacks
    def pieces(self, client, until_lsn):
        """(begin lsn, ids) per client transaction until the one committing with `until_lsn`."""
        pieces = []
        while not pieces or pieces[-1][0] != until_lsn:
            log = yield client.recv_message(ORIGINAL)
            if codec.message_name(log) != "SatOpLog":
                continue
            for op in log.ops:
                kind = op.WhichOneof("op")
                if kind == "begin":
                    ids, lsn = [], op.begin.lsn
                elif kind == "update":
                    ids.append(codec.decode_row(op.update.row_data, ITEMS)["id"])
                elif kind == "commit":
                    pieces.append((lsn, ids))
        return pieces

    @defer.inlineCallbacks
    def test_caught_up_clients_share_one_subscription_and_one_encoding(self):
        a = yield self.fx.authed(ORIGINAL, "a", "alice", start_lsn=b"eof")
        b = yield self.fx.authed(ORIGINAL, "b", "bob", start_lsn=b"eof")
        c = yield self.fx.authed(V0_2, "c", "carol", start_lsn=b"eof")
        fanout = self.fx.service.fanout
        yield eventually(lambda: fanout.attached == 3, message="three clients on the shared cursor")
        self.assertEqual(self.fx.hub.status()["subscriptions"], 1)
        # One transaction, rows for everyone and for alice only: alice sees both, the others one.
        yield self.fx.hub.append(pg_txn(1, {"id": "all"}, {"id": "mine", "electric_user_id": "alice"}))
        got = {}
        for name, client, gen in (("a", a, ORIGINAL), ("b", b, ORIGINAL), ("c", c, V0_2)):
            yield client.recv_message(gen)  # relation
            log = yield client.recv_message(gen)
            got[name] = [r["id"] for r in updates(log)]
        self.assertEqual(got, {"a": ["all", "mine"], "b": ["all"], "c": ["all"]})
        self.assertEqual(fanout.attached, 3)
        self.assertEqual([self.conn(x).session.delivered for x in "abc"], [1, 1, 1])
        # Plain TCP: shared frames go straight to the socket (SatelliteServerProtocol._write_now).
        from twisted.internet import tcp
        self.assertIs(type(self.conn("a").transport.transport), tcp.Server)

    @defer.inlineCallbacks
    def test_stalled_client_leaves_the_shared_cursor_and_catches_up_alone(self):
        fast = yield self.fx.authed(ORIGINAL, "fast", "alice", start_lsn=b"eof")
        slow = yield self.fx.authed(ORIGINAL, "slow", "alice", start_lsn=b"eof")
        fanout = self.fx.service.fanout
        yield eventually(lambda: fanout.attached == 2)
        slow.proto.transport.pauseProducing()  # the client stops reading its socket
        n = 400
        big = "x" * 20_000
        for i in range(n):
            yield self.fx.hub.append(pg_txn(i + 1, {"id": f"r{i}", "content": big}))
        conn = self.conn("slow")
        yield eventually(lambda: conn._paused, message="server paused by the slow client's transport")
        self.assertFalse(conn._attached)
        self.assertIsNotNone(conn._subscription)
        self.assertLess(conn.session.delivered, n)  # read no further than its socket took
        # The other one is not held up.
        yield fast.recv_message(ORIGINAL)  # relation
        for i in range(n):
            log = yield fast.recv_message(ORIGINAL)
            self.assertEqual(updates(log)[0]["id"], f"r{i}")
        slow.proto.transport.resumeProducing()
        yield slow.recv_message(ORIGINAL)  # relation
        for i in range(n):
            log = yield slow.recv_message(ORIGINAL)
            self.assertEqual(updates(log)[0]["id"], f"r{i}")
        # Caught up: it joins the shared cursor again (at the latest with the next transaction).
        yield self.fx.hub.append(pg_txn(n + 1, {"id": "next"}))
        for client in (fast, slow):
            log = yield client.recv_message(ORIGINAL)
            self.assertEqual([r["id"] for r in updates(log)], ["next"])
        yield eventually(lambda: conn._attached and conn._subscription is None, message="slow client rejoined")
        self.assertEqual(fanout.attached, 2)

    @defer.inlineCallbacks
    def test_client_stalled_inside_a_big_transaction_gets_the_rest_once(self):
        first = yield self.fx.hub.append(pg_txn(1, {"id": "before"}))
        lsn = self.fx.hub.client_lsn(first.position)
        fast = yield self.fx.authed(ORIGINAL, "fast", "alice", start_lsn=lsn)
        slow = yield self.fx.authed(ORIGINAL, "slow", "alice", start_lsn=lsn)
        fanout = self.fx.service.fanout
        yield eventually(lambda: fanout.attached == 2)
        slow.proto.transport.pauseProducing()
        n = 5000  # three hub items of at most 2,000 rows, 4 MB each: far beyond the socket buffers
        buf = self.fx.hub.begin("postgres_1", b"big")
        for s in range(0, n, 1000):
            yield buf.add(pg_txn(0, *[{"id": f"b{i:05d}", "content": "y" * 2000} for i in range(s, s + 1000)]).changes)
        big = yield buf.commit()
        conn = self.conn("slow")
        yield eventually(lambda: conn._paused and not conn._attached, message="slow client left the shared cursor")
        # It left with the first piece written: its own subscription re-reads the transaction and drops that piece.
        self.assertEqual((conn._skip_pos, conn._skip_n), (big.position, 2000))
        fast_pieces = yield self.pieces(fast, self.fx.hub.client_lsn(big.position))
        slow.proto.transport.resumeProducing()
        slow_pieces = yield self.pieces(slow, self.fx.hub.client_lsn(big.position))
        expected_ids = [f"b{i:05d}" for i in range(n)]
        for pieces in (fast_pieces, slow_pieces):
            self.assertEqual([len(p[1]) for p in pieces], [2000, 2000, 1000])
            self.assertEqual([p[0] for p in pieces], [lsn, lsn, self.fx.hub.client_lsn(big.position)])
            self.assertEqual([i for p in pieces for i in p[1]], expected_ids)
        yield self.fx.hub.append(pg_txn(2, {"id": "after"}))
        for client in (fast, slow):
            log = yield client.recv_message(ORIGINAL)
            self.assertEqual([r["id"] for r in updates(log)], ["after"])

    @defer.inlineCallbacks
    def test_last_client_gone_closes_the_shared_subscription(self):
        a = yield self.fx.authed(ORIGINAL, "a", "alice", start_lsn=b"eof")
        fanout = self.fx.service.fanout
        yield eventually(lambda: fanout.attached == 1)
        yield a.close()
        yield eventually(lambda: not self.fx.service.connections)
        self.assertEqual(fanout.attached, 0)
        self.assertEqual(self.fx.hub.status()["subscriptions"], 0)


def masked(payload: bytes, key: bytes, opcode: int = 2) -> bytes:
    """A client frame (FIN, `opcode`) masked with `key`."""
    n = len(payload)
    head = bytes((0x80 | opcode, 0x80 | n)) if n <= 125 else bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class SmallMessages(unittest.TestCase):
    """Small and large client messages and control frames in one TCP segment, masked with various keys."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.fx = yield SatelliteFixture(self).start()

    @defer.inlineCallbacks
    def test_small_and_large_frames_and_a_ping_in_one_segment(self):
        import socket

        from twisted.internet import threads

        ping = codec.encode(ORIGINAL, ORIGINAL.pb.SatPingReq())
        rel = codec.encode(ORIGINAL, ORIGINAL.pb.SatRelation(
            schema_name="public", table_name="items", relation_id=7,
            columns=[ORIGINAL.pb.SatRelationColumn(name="c" * 40 + str(i), type="TEXT") for i in range(4)]))
        self.assertGreater(len(rel), 125)  # goes through autobahn's parser
        segment = (masked(ping, b"\x01\x02\x03\x04") + masked(b"hi", b"\x05\x06\x07\x08", opcode=9)
                   + masked(rel, b"\x09\x0a\x0b\x0c") + masked(ping, b"\x00\x00\x00\x00")
                   + masked(ping, b"\xff\xfe\xfd\xfc"))

        def go():
            s = socket.create_connection(("127.0.0.1", self.fx.port), timeout=20)
            try:
                s.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
                data = b""
                while b"\r\n\r\n" not in data:
                    data += s.recv(4096)
                data = data.split(b"\r\n\r\n", 1)[1]
                s.sendall(masked(codec.auth_request(ORIGINAL, "raw-1", "alice"), b"\x11\x22\x33\x44"))
                frames = []

                def read(count):
                    nonlocal data
                    while len(frames) < count:
                        while len(data) >= 2 and len(data) >= 2 + (data[1] & 0x7F):
                            n = data[1] & 0x7F
                            frames.append((data[0] & 0x0F, data[2:2 + n]))
                            data = data[2 + n:]
                        if len(frames) >= count:
                            break
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        data += chunk

                read(2)  # SatAuthResp, SatInStartReplicationReq
                s.sendall(segment)
                read(6)
                return frames, s
            except BaseException:
                s.close()
                raise

        frames, sock = yield threads.deferToThread(go)
        # The socket stays open until the server's side is checked: once
        # closed, the service may drop the connection before this runs.
        self.addCleanup(sock.close)
        self.assertEqual([f[1][:1] for f in frames[:2]], [b"\x02", b"\x07"])
        pong = codec.encode(ORIGINAL, ORIGINAL.pb.SatPingResp(lsn=b""))
        self.assertEqual(frames[2:], [(2, pong), (10, b"hi"), (2, pong), (2, pong)])
        conn = self.fx.service.connections[0]
        self.assertEqual(conn.session._client_relations[7].table_name, "items")


class ProcessLimits(unittest.TestCase):
    """What the service sets up for many clients at start: open files, GC."""

    def test_open_files_limit_raised_to_the_hard_limit(self):
        import resource

        from electric.satellite import service as service_mod

        soft, hard = service_mod.raise_open_files_limit()
        self.assertEqual(soft, hard)
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE), (hard, hard))

    def test_a_low_limit_is_reported(self):
        import resource

        from twisted.logger import globalLogPublisher

        from electric.satellite import service as service_mod

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if hard == resource.RLIM_INFINITY:
            raise unittest.SkipTest("no hard limit on open files here: nothing can be too low")
        service_mod.raise_open_files_limit(wanted=hard + 1)
        texts = [e.get("log_format", "") for e in events if "open files limit" in e.get("log_format", "")]
        self.assertEqual(len(texts), 1, texts)
        events.clear()
        service_mod.raise_open_files_limit(wanted=hard)
        self.assertFalse([e for e in events if "open files limit" in e.get("log_format", "")])
