"""
The port-5433 server over real sockets, with a real embedded hub, driven by a
protocol-level client (Electric's own codec): authentication, errors that
keep or close the connection, streaming, one stream per slot, CopyDone,
acknowledgements into the hub, flow control and shutdown.
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.trial import unittest

from electric.hub import positions
from electric.postgres.protocol import pgoutput
from electric.postgres.protocol.messages import (
    BackendKeyData,
    CancelRequest,
    CommandComplete,
    CopyBothResponse,
    CopyData,
    CopyDone,
    DataRow,
    ErrorResponse,
    Query,
    ReadyForQuery,
    Terminate,
)
from electric.postgres.protocol.replication_messages import PrimaryKeepalive, StandbyStatusUpdate, XLogData
from electric.postgres.protocol.lsn import format_lsn
from electric.postgres.publisher.service import hub_consumer
from tests.publisher_helpers import ITEMS, Electric, connect, eventually

START = "START_REPLICATION SLOT \"{slot}\" LOGICAL {lsn} (proto_version '3', publication_names '\"all_tables\"')"


def xlog(m):
    """The replication payload of a CopyData, decoded (XLogData → (lsn, pgoutput message))."""
    rep = m.replication_message()
    if isinstance(rep, XLogData):
        return ("w", rep.wal_start, pgoutput.decode(rep.data))
    if isinstance(rep, PrimaryKeepalive):
        return ("k", rep.wal_end, rep)
    return ("?", 0, rep)


def is_commit(m):
    return isinstance(m, CopyData) and m.data[:1] == b"w" and xlog(m)[2].__class__ is pgoutput.Commit


class Server(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.e = Electric()
        yield self.e.start()
        self.addCleanup(self.e.destroy)
        self.addCleanup(self.e.stop)
        self.items = self.e.register(ITEMS)
        self.clients = []

        def close_clients():
            for c in self.clients:
                if c.transport is not None:
                    c.transport.abortConnection()
        self.addCleanup(close_clients)

    @defer.inlineCallbacks
    def login(self, user="postgres_1", password=None, **kw):
        if password is None:
            password = self.e.password(user)
        c = yield connect(self.e.port, user, password, **kw)
        self.clients.append(c)
        return c

    @defer.inlineCallbacks
    def test_login_and_queries(self):
        c = yield self.login()
        self.assertIsNone(c.error)
        msgs = yield c.query("IDENTIFY_SYSTEM")
        row = [m for m in msgs if isinstance(m, DataRow)][0].texts()
        self.assertEqual(row[1:], ["1", "0/0", "postgres_1"])
        msgs = yield c.query("SELECT nonsense FROM nowhere")
        err = [m for m in msgs if isinstance(m, ErrorResponse)][0]
        self.assertEqual((err.severity, err.sqlstate), ("ERROR", "0A000"))
        msgs = yield c.query("SELECT pg_catalog.set_config('search_path', '', false);")
        self.assertEqual([m.texts() for m in msgs if isinstance(m, DataRow)], [[""]])

    @defer.inlineCallbacks
    def test_md5_server(self):
        yield self.e.stop()
        self.e.publisher_kw = {"auth_method": "md5"}
        yield self.e.start()
        c = yield self.login()
        self.assertIsNone(c.error)

    @defer.inlineCallbacks
    def test_bad_password_and_unknown_user_are_refused(self):
        for user, password in (("postgres_1", "wrong"), ("postgres_1", self.e.password("postgres_2")),
                               ("nobody", "x")):
            c = yield self.login(user, password)
            self.assertEqual((c.error.severity, c.error.sqlstate), ("FATAL", "28P01"))
            self.assertEqual(c.error.message, f'password authentication failed for user "{user}"')
            yield c.lost

    @defer.inlineCallbacks
    def test_plain_connection_refused(self):
        c = yield self.login(replication=None, ssl=False)
        self.assertEqual((c.error.severity, c.error.sqlstate), ("FATAL", "08004"))
        self.assertIn("replication=database", c.error.message)
        yield c.lost

    @defer.inlineCallbacks
    def test_garbage_is_fatal(self):
        from tests.publisher_helpers import PgClient
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        c = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.e.port), PgClient())
        self.clients.append(c)
        c.transport.write(b"\x00\x00\x00\x10garbage-garbage!")
        m, _ = yield c.until(lambda m: isinstance(m, ErrorResponse))
        # Postgres's own answer to a startup packet naming no protocol it speaks.
        self.assertEqual((m.severity, m.sqlstate), ("FATAL", "0A000"))
        self.assertIn("unsupported frontend protocol", m.message)
        yield c.lost
        # After login, an unknown message type is a protocol violation.
        c = yield self.login()
        c.transport.write(b"\x01\x00\x00\x00\x08junk")
        m, _ = yield c.until(lambda m: isinstance(m, ErrorResponse))
        self.assertEqual((m.severity, m.sqlstate), ("FATAL", "08P01"))
        yield c.lost

    @defer.inlineCallbacks
    def test_apply_worker_waits_until_the_subscription_is_refreshed(self):
        """
        Until its connector has refreshed the subscription (every table in
        it), an origin's apply stream is refused with 55000 before any
        CopyBoth, and the connection lives; afterwards it streams.
        """
        e = Electric(connectors=("postgres_3",))
        yield e.start()
        self.addCleanup(e.destroy)
        self.addCleanup(e.stop)
        e.registry.set_database_tables("postgres_3", [e.registry.register(ITEMS)])
        c = yield connect(e.port, "postgres_3", e.password("postgres_3"))
        self.clients.append(c)
        msgs = yield c.query(START.format(slot="postgres_3", lsn="0/0"))
        self.assertFalse([m for m in msgs if isinstance(m, CopyBothResponse)])
        err = [m for m in msgs if isinstance(m, ErrorResponse)][0]
        self.assertEqual((err.severity, err.sqlstate), ("ERROR", "55000"))
        self.assertIn("subscription is being refreshed", err.message)
        e.registry.allow_streaming("postgres_3")
        c.send(Query(START.format(slot="postgres_3", lsn="0/0")))
        yield c.until(lambda m: isinstance(m, CopyBothResponse))

    @defer.inlineCallbacks
    def test_streaming_one_stream_per_slot_and_resume(self):
        e = self.e
        r1 = yield e.append(e.upsert(self.items, {"id": "a", "content": "first", "n": "1"}))
        c = yield self.login()
        c.send(Query(START.format(slot="postgres_1", lsn="0/0")))
        m, _ = yield c.until(lambda m: isinstance(m, CopyBothResponse))
        ka, _ = yield c.until(lambda m: isinstance(m, CopyData))
        self.assertEqual(xlog(ka)[:2], ("k", 0))
        _, seen = yield c.until(is_commit)
        decoded = [xlog(m)[2] for m in seen if isinstance(m, CopyData) and m.data[:1] == b"w"]
        self.assertEqual([type(x).__name__ for x in decoded], ["Begin", "Relation", "Insert", "Commit"])
        self.assertEqual(decoded[2].new, ("a", "first", "1"))
        self.assertEqual(decoded[3].end_lsn, positions.end_lsn(r1.position))
        # A second START_REPLICATION for the streaming slot: 55006, no CopyBoth, connection lives.
        c2 = yield self.login()
        msgs = yield c2.query(START.format(slot="postgres_1", lsn="0/0"))
        self.assertFalse([m for m in msgs if isinstance(m, CopyBothResponse)])
        err = [m for m in msgs if isinstance(m, ErrorResponse)][0]
        self.assertEqual((err.severity, err.sqlstate), ("ERROR", "55006"))
        self.assertIn('replication slot "postgres_1" is active', err.message)
        msgs = yield c2.query("IDENTIFY_SYSTEM")
        self.assertTrue([m for m in msgs if isinstance(m, DataRow)])
        # Live transactions, then a reply-requested status update gets a keepalive.
        r2 = yield e.append(e.upsert(self.items, {"id": "b", "content": None, "n": "2"}),
                            e.delete(self.items, {"id": "a"}))
        _, seen = yield c.until(is_commit)
        decoded = [xlog(m)[2] for m in seen if isinstance(m, CopyData) and m.data[:1] == b"w"]
        self.assertEqual([type(x).__name__ for x in decoded], ["Begin", "Insert", "Delete", "Commit"])
        self.assertEqual(decoded[2].key, ("a", None, None))
        end2 = positions.end_lsn(r2.position)
        c.send(StandbyStatusUpdate(end2, end2, end2, 0, True).frame())
        ka, _ = yield c.until(lambda m: isinstance(m, CopyData) and xlog(m)[0] == "k"
                              and xlog(m)[1] == end2)
        # The flush position reached the hub as this subscriber's durable ack.
        yield eventually(lambda: e.hub.status()["consumers"].get(hub_consumer("postgres_1"), {}).get("acked")
                         == r2.position)
        # CopyDone from the subscriber ends the stream the way Postgres does.
        c.send(CopyDone())
        _, seen = yield c.until(lambda m: isinstance(m, ReadyForQuery))
        tail = [m for m in seen if not isinstance(m, CopyData)]
        self.assertEqual(tail, [CopyDone(), CommandComplete("COPY 0"),
                                CommandComplete("START_REPLICATION"), ReadyForQuery("I")])
        # The slot is free again.  Like Postgres, it starts at max(requested,
        # confirmed flush): asked for r1's end it resumes after r2 (flushed).
        end1 = format_lsn(positions.end_lsn(r1.position))
        c2.send(Query(START.format(slot="postgres_1", lsn=end1)))
        ka, _ = yield c2.until(lambda m: isinstance(m, CopyData))
        self.assertEqual(xlog(ka)[:2], ("k", end2))
        r3 = yield e.append(e.upsert(self.items, {"id": "c", "content": "3", "n": "3"}))
        _, seen = yield c2.until(is_commit)
        decoded = [xlog(m)[2] for m in seen if isinstance(m, CopyData) and m.data[:1] == b"w"]
        self.assertEqual([type(x).__name__ for x in decoded], ["Begin", "Relation", "Insert", "Commit"])
        self.assertEqual(decoded[2].new, ("c", "3", "3"))
        st = e.publisher.status()["slots"]["postgres_1"]
        self.assertTrue(st["streaming"])
        self.assertEqual(st["sent_position"], r3.position)
        # A slot with no history starts exactly after the requested LSN: never r1 again.
        c3 = yield self.login()
        c3.send(Query(START.format(slot="another", lsn=end1)))
        _, seen = yield c3.until(is_commit)
        decoded = [xlog(m)[2] for m in seen if isinstance(m, CopyData) and m.data[:1] == b"w"]
        self.assertEqual([type(x).__name__ for x in decoded], ["Begin", "Relation", "Insert", "Delete", "Commit"])
        self.assertEqual(decoded[-1].end_lsn, end2)
        # Terminate ends streaming and frees the slot.
        c2.send(Terminate())
        yield c2.lost
        yield eventually(lambda: not e.publisher.status()["slots"]["postgres_1"]["streaming"])

    @defer.inlineCallbacks
    def test_table_sync_no_gap_no_duplicate(self):
        e = self.e
        yield e.append(e.upsert(self.items, {"id": "a", "content": "one", "n": "1"}))
        app = "pg_16397_sync_16385_7712374349014268656"
        c = yield self.login(app=app)
        yield c.query("BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ")
        msgs = yield c.query(f"CREATE_REPLICATION_SLOT \"{app}\" LOGICAL pgoutput (SNAPSHOT 'use')")
        consistent = [m for m in msgs if isinstance(m, DataRow)][0].texts()[1]
        self.assertEqual(consistent, format_lsn(positions.end_lsn(1)))
        self.assertEqual(msgs[-1], ReadyForQuery("T"))
        # Written after the consistent point but before the COPY: the copy has it ...
        yield e.append(e.upsert(self.items, {"id": "b", "content": "two", "n": "2"}),
                       e.upsert(self.items, {"id": "a", "content": "one!", "n": "11"}))
        yield e.append(e.delete(self.items, {"id": "b"}), e.upsert(self.items, {"id": "c", "content": None}))
        msgs = yield c.query("COPY public.items (id, content, n) TO STDOUT")
        data = b"".join(m.data for m in msgs if isinstance(m, CopyData))
        self.assertEqual(sorted(data.splitlines()), [b"a\tone!\t11", b"c\t\\N\t\\N"])
        self.assertIn(CommandComplete("COPY 2"), msgs)
        self.assertEqual(msgs[-1], ReadyForQuery("T"))
        yield c.query("COMMIT")
        # ... so the catch-up stream from the consistent point starts after the snapshot.
        c.send(Query(START.format(slot=app, lsn=consistent)))
        ka, _ = yield c.until(lambda m: isinstance(m, CopyData))
        self.assertEqual(xlog(ka)[:2], ("k", positions.end_lsn(3)))
        r4 = yield e.append(e.upsert(self.items, {"id": "d", "content": "four", "n": "4"}))
        m, seen = yield c.until(is_commit)
        inserts = [xlog(x)[2].new for x in seen if isinstance(x, CopyData) and x.data[:1] == b"w"
                   and isinstance(xlog(x)[2], pgoutput.Insert)]
        self.assertEqual(inserts, [("d", "four", "4")])
        self.assertEqual(xlog(m)[2].end_lsn, positions.end_lsn(r4.position))
        # The sync worker ends the stream and drops its slot; the hub consumer is untouched.
        c.send(CopyDone())
        yield c.until(lambda m: m == ReadyForQuery("I"))
        msgs = yield c.query(f"DROP_REPLICATION_SLOT {app} WAIT")
        self.assertIn(CommandComplete("DROP_REPLICATION_SLOT"), msgs)
        self.assertNotIn(hub_consumer("postgres_1"), e.hub.status()["consumers"])

    @defer.inlineCallbacks
    def test_start_beyond_hub_raises_base(self):
        e = self.e
        yield e.append(e.upsert(self.items, {"id": "a", "content": "x", "n": "1"}))
        c = yield self.login()
        c.send(Query(START.format(slot="postgres_1", lsn="5/0")))
        ka, _ = yield c.until(lambda m: isinstance(m, CopyData))
        self.assertGreaterEqual(xlog(ka)[1], 0x500000000)
        m, seen = yield c.until(is_commit)
        commit = xlog(m)[2]
        self.assertGreater(commit.end_lsn, 0x500000000)
        self.assertEqual(e.offsets.slot_base("postgres_1"), positions.rebased(0x500000000, 0))

    @defer.inlineCallbacks
    def test_replaced_hub_data_is_replayed_with_higher_lsns(self):
        import os
        import shutil
        e = self.e
        for i in range(3):
            last = yield e.append(e.upsert(self.items, {"id": f"old{i}", "content": "x", "n": "1"}))
        c = yield self.login()
        c.send(Query(START.format(slot="postgres_1", lsn="0/0")))
        m, _ = yield c.until(lambda m: is_commit(m) and xlog(m)[2].end_lsn == positions.end_lsn(last.position))
        held = positions.end_lsn(last.position)  # the subscriber's origin progress
        c.transport.abortConnection()
        # The hub's data directory is replaced (same offsets file); the new hub grows past the old position.
        yield e.stop()
        shutil.rmtree(os.path.join(e.data_dir, "hub"))
        yield e.start()
        for i in range(5):
            yield e.append(e.upsert(self.items, {"id": f"new{i}", "content": "y", "n": "2"}))
        c = yield self.login()
        c.send(Query(START.format(slot="postgres_1", lsn=format_lsn(held))))
        ka, _ = yield c.until(lambda m: isinstance(m, CopyData))
        self.assertGreaterEqual(xlog(ka)[1], held)
        inserted, ends = [], []
        while len(ends) < 5:
            m, seen = yield c.until(is_commit)
            for x in seen:
                if isinstance(x, CopyData) and x.data[:1] == b"w":
                    msg = xlog(x)[2]
                    if isinstance(msg, pgoutput.Insert):
                        inserted.append(msg.new[0])
            ends.append(xlog(m)[2].end_lsn)
        # Every transaction of the new hub, none skipped, all above what the subscriber holds.
        self.assertEqual(inserted, [f"new{i}" for i in range(5)])
        self.assertTrue(all(end > held for end in ends))
        self.assertGreaterEqual(e.offsets.slot_base("postgres_1"), held)

    @defer.inlineCallbacks
    def test_flow_control(self):
        e = self.e
        big = "x" * 8000
        for batch in range(10):
            yield defer.gatherResults([
                e.append(e.upsert(self.items, {"id": f"r{batch}-{i}", "content": big, "n": str(i)}))
                for i in range(300)])
        c = yield self.login()
        c.transport.pauseProducing()  # stop reading: the server's socket buffer fills up
        c.send(Query(START.format(slot="postgres_1", lsn="0/0")))
        stream = yield eventually(lambda: e.publisher.slots.get("postgres_1") and e.publisher.slots["postgres_1"].stream)
        yield eventually(lambda: stream.paused, timeout=30)
        # Once paused, only the hub read in flight can still land; after it nothing may move.
        yield eventually(lambda: not stream._waiting, timeout=30)
        held = stream.encoder.position
        self.assertLess(held, 3000)
        self.assertTrue(stream.paused)
        c.transport.resumeProducing()
        last = None
        while last is None or last.end_lsn < positions.end_lsn(3000):
            m, _ = yield c.until(is_commit, timeout=60)
            last = xlog(m)[2]
        self.assertEqual(last.end_lsn, positions.end_lsn(3000))

    @defer.inlineCallbacks
    def test_silent_subscriber_is_pinged_then_dropped(self):
        yield self.e.stop()
        clock = task.Clock()  # keepalive and sender timeout run on it: no real waiting
        self.e.publisher_kw = {"keepalive_interval": 0.2, "sender_timeout": 3.0, "clock": clock}
        yield self.e.start()
        c = yield self.login()
        c.send(Query(START.format(slot="postgres_1", lsn="0/0")))
        yield c.until(lambda m: isinstance(m, CopyBothResponse))
        stream = yield eventually(lambda: self.e.publisher.slots["postgres_1"].stream)
        clock.pump([0.2] * 8)  # 1.6 s of silence: past half the timeout
        ping, before = yield c.until(lambda m: isinstance(m, CopyData) and xlog(m)[0] == "k"
                                     and xlog(m)[2].reply_requested)
        keepalives = [m for m in before if isinstance(m, CopyData) and xlog(m)[0] == "k"]
        self.assertGreaterEqual(len(keepalives), 8)  # one at start, one per tick
        self.assertFalse(any(xlog(m)[2].reply_requested for m in keepalives[:-1]))
        # Answering keeps it alive ...
        c.send(StandbyStatusUpdate(0, 0, 0, 0, False).frame())
        yield eventually(lambda: stream.last_heard == clock.seconds())
        clock.pump([0.2] * 14)  # 2.8 s since the answer
        self.assertFalse(stream.stopped)
        self.assertFalse(c.is_closed)
        # ... silence ends it, and frees the slot for the subscriber's next attempt.
        clock.pump([0.2] * 3)  # 3.4 s since the answer
        self.assertTrue(stream.stopped)
        m, _ = yield c.until(lambda m: isinstance(m, ErrorResponse), timeout=10)
        self.assertEqual((m.severity, m.sqlstate), ("FATAL", "57P01"))
        self.assertIn("replication timeout", m.message)
        yield c.lost
        yield eventually(lambda: not self.e.publisher.status()["slots"]["postgres_1"]["streaming"])

    @defer.inlineCallbacks
    def test_cancel_request_ends_stream(self):
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        from tests.publisher_helpers import PgClient
        c = yield self.login()
        key = [m for m in c.startup if isinstance(m, BackendKeyData)][0]
        c.send(Query(START.format(slot="postgres_1", lsn="0/0")))
        yield c.until(lambda m: isinstance(m, CopyBothResponse))
        for secret in (key.key ^ 1, key.key):
            k = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.e.port), PgClient())
            k.send(CancelRequest(key.pid, secret))
            yield k.lost
            if secret != key.key:  # a wrong key changes nothing
                self.assertTrue(self.e.publisher.status()["slots"]["postgres_1"]["streaming"])
                self.assertFalse([m for m in c.inbox if isinstance(m, ErrorResponse)])
        m, _ = yield c.until(lambda m: isinstance(m, ErrorResponse))
        self.assertEqual((m.severity, m.sqlstate), ("ERROR", "57014"))
        yield c.until(lambda m: m == ReadyForQuery("I"))
        self.assertFalse(self.e.publisher.status()["slots"]["postgres_1"]["streaming"])
        msgs = yield c.query("IDENTIFY_SYSTEM")
        self.assertTrue([m for m in msgs if isinstance(m, DataRow)])

    @defer.inlineCallbacks
    def test_drop_slot_releases_hub_consumer(self):
        e = self.e
        yield e.append(e.upsert(self.items, {"id": "a", "content": "x", "n": "1"}))
        c = yield self.login()
        c.send(Query(START.format(slot="postgres_1", lsn="0/0")))
        yield c.until(is_commit)
        consumers = e.hub.status()["consumers"]
        self.assertIn(hub_consumer("postgres_1"), consumers)
        # Dropping a streaming slot is a no-op success (the apply worker is stopped first).
        c2 = yield self.login()
        msgs = yield c2.query("DROP_REPLICATION_SLOT postgres_1 WAIT")
        self.assertIn(CommandComplete("DROP_REPLICATION_SLOT"), msgs)
        self.assertIn(hub_consumer("postgres_1"), e.hub.status()["consumers"])
        c.send(Terminate())
        yield c.lost
        yield eventually(lambda: not e.publisher.status()["slots"]["postgres_1"]["streaming"])
        # A table-sync slot's drop changes nothing; the apply slot's drop releases compaction.
        yield c2.query("DROP_REPLICATION_SLOT pg_16397_sync_16385_7712374349014268656 WAIT")
        self.assertIn(hub_consumer("postgres_1"), e.hub.status()["consumers"])
        msgs = yield c2.query("DROP_REPLICATION_SLOT postgres_1 WAIT")
        self.assertIn(CommandComplete("DROP_REPLICATION_SLOT"), msgs)
        yield eventually(lambda: hub_consumer("postgres_1") not in e.hub.status()["consumers"])
        self.assertNotIn("postgres_1", e.publisher.status()["slots"])

    @defer.inlineCallbacks
    def test_unencodable_row_ends_stream_with_clear_error(self):
        e = self.e
        from electric.schema import Column, Table
        yield e.append(e.upsert(self.items, {"id": "a", "content": "fine", "n": "1"}))
        # The hub only takes text values, so break the other input: a database definition
        # whose column name cannot go into a Relation message (NUL byte).
        broken = Table("public", "other", (Column("k", "int4", 23, -1, True), Column("x\x00y", "text", 25)), ("k",))
        broken = e.registry.register(broken)
        e.registry.set_database_tables("postgres_1", [self.items, broken])
        yield e.append(e.upsert(broken, {"k": "1"}))
        c = yield self.login()
        c.send(Query(START.format(slot="postgres_1", lsn="0/0")))
        m, seen = yield c.until(lambda m: isinstance(m, ErrorResponse))
        self.assertEqual(len([x for x in seen if is_commit(x)]), 1)  # the good transaction went out
        self.assertEqual((m.severity, m.sqlstate), ("FATAL", "57P01"))
        self.assertIn("cannot encode the transaction after hub position 1", m.message)
        yield c.lost
        self.assertEqual(len(self.flushLoggedErrors(pgoutput.PgoutputError)), 1)

    @defer.inlineCallbacks
    def test_hub_stopping(self):
        c = yield self.login()
        c.send(Query(START.format(slot="postgres_1", lsn="0/0")))
        yield c.until(lambda m: isinstance(m, CopyBothResponse))
        yield self.e.hub.stopService()
        m, _ = yield c.until(lambda m: isinstance(m, ErrorResponse))
        self.assertEqual((m.severity, m.sqlstate), ("FATAL", "57P01"))
        self.assertIn("hub is shutting down", m.message)
        yield c.lost
        # With the hub down, START_REPLICATION is refused before any CopyBoth; the connection lives.
        c = yield self.login()
        msgs = yield c.query(START.format(slot="postgres_1", lsn="0/0"))
        self.assertFalse([m for m in msgs if isinstance(m, CopyBothResponse)])
        err = [m for m in msgs if isinstance(m, ErrorResponse)][0]
        self.assertEqual((err.severity, err.sqlstate), ("ERROR", "55000"))
        msgs = yield c.query("SELECT pg_catalog.set_config('search_path', '', false)")
        self.assertTrue([m for m in msgs if isinstance(m, DataRow)])

    @defer.inlineCallbacks
    def test_stop_service_closes_connections(self):
        c = yield self.login()
        c.send(Query(START.format(slot="postgres_1", lsn="0/0")))
        yield c.until(lambda m: isinstance(m, CopyBothResponse))
        yield e_stop(self.e)
        m, _ = yield c.until(lambda m: isinstance(m, ErrorResponse))
        self.assertEqual((m.severity, m.sqlstate), ("FATAL", "57P01"))
        yield c.lost


def e_stop(e):
    return e.publisher.stopService()


class BigTransactions(unittest.TestCase):
    """A hub with a tiny chunk, so big-transaction paths run with a few hundred rows."""

    timeout = 120
    CHUNK = 50

    @defer.inlineCallbacks
    def setUp(self):
        self.e = Electric(hub_kw={"chunk": self.CHUNK})
        yield self.e.start()
        self.addCleanup(self.e.destroy)
        self.addCleanup(self.e.stop)
        self.items = self.e.register(ITEMS)
        self.clients = []
        self.addCleanup(lambda: [c.transport.abortConnection() for c in self.clients if c.transport is not None])

    @defer.inlineCallbacks
    def login(self, **kw):
        c = yield connect(self.e.port, "postgres_1", self.e.password("postgres_1"), **kw)
        self.clients.append(c)
        return c

    def rows(self, n, tag="big"):
        return [c for i in range(n) for c in self.e.upsert(self.items, {"id": f"{tag}{i:05d}", "content": tag, "n": str(i)})]

    @defer.inlineCallbacks
    def test_big_transaction_is_one_transaction_on_the_wire(self):
        e = self.e
        r1 = yield e.append(e.upsert(self.items, {"id": "small", "content": "s", "n": "0"}))
        big = yield e.commit(self.rows(437))
        r3 = yield e.append(e.upsert(self.items, {"id": "after", "content": "a", "n": "1"}))
        c = yield self.login()
        c.send(Query(START.format(slot="postgres_1", lsn="0/0")))
        decoded = []
        while len([d for d in decoded if isinstance(d, pgoutput.Commit)]) < 3:
            _, seen = yield c.until(is_commit)
            decoded += [xlog(m)[2] for m in seen if isinstance(m, CopyData) and m.data[:1] == b"w"]
        names = [type(x).__name__ for x in decoded]
        self.assertEqual(names, ["Begin", "Relation", "Insert", "Commit", "Begin"] + ["Insert"] * 437
                         + ["Commit", "Begin", "Insert", "Commit"])
        self.assertEqual(decoded[3].end_lsn, positions.end_lsn(r1.position))
        self.assertEqual(decoded[4].final_lsn, positions.commit_lsn(big.position))
        self.assertEqual(decoded[442].end_lsn, positions.end_lsn(big.position))
        self.assertEqual([d.new[0] for d in decoded[5:442]], [f"big{i:05d}" for i in range(437)])
        self.assertEqual(decoded[-1].end_lsn, positions.end_lsn(r3.position))
        st = e.publisher.status()["slots"]["postgres_1"]
        self.assertEqual((st["transactions_sent"], st["changes_sent"], st["in_transaction"]), (3, 439, False))

    @defer.inlineCallbacks
    def test_subscriber_lost_mid_transaction_gets_it_whole_again(self):
        e = self.e
        big = yield e.commit(self.rows(2000, tag="x" * 5000))  # 10 MB: more than socket buffers hold
        c = yield self.login()
        c.transport.pauseProducing()
        c.send(Query(START.format(slot="postgres_1", lsn="0/0")))
        stream = yield eventually(lambda: e.publisher.slots.get("postgres_1") and e.publisher.slots["postgres_1"].stream)
        yield eventually(lambda: stream.paused and stream.encoder.in_transaction, timeout=30)
        self.assertEqual(stream.encoder.position, 0)
        c.transport.abortConnection()
        yield eventually(lambda: not e.publisher.status()["slots"]["postgres_1"]["streaming"])
        c = yield self.login()
        c.send(Query(START.format(slot="postgres_1", lsn="0/0")))
        m, seen = yield c.until(is_commit, timeout=60)
        inserts = [x for x in seen if isinstance(x, CopyData) and x.data[:1] == b"w"
                   and isinstance(xlog(x)[2], pgoutput.Insert)]
        self.assertEqual(len(inserts), 2000)
        self.assertEqual(xlog(m)[2].end_lsn, positions.end_lsn(big.position))

    @defer.inlineCallbacks
    def test_copy_reads_the_hub_only_as_fast_as_the_subscriber(self):
        e = self.e
        n = 3000
        yield e.commit(self.rows(n, tag="y" * 3000))
        app = "pg_16397_sync_16385_7712374349014268656"
        c = yield self.login(app=app)
        yield c.query("BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ")
        yield c.query(f"CREATE_REPLICATION_SLOT \"{app}\" LOGICAL pgoutput (SNAPSHOT 'use')")
        c.transport.pauseProducing()  # stop reading: the server's socket buffer fills up
        c.send(Query("COPY public.items (id, content, n) TO STDOUT"))
        conn = yield eventually(lambda: next((p for p in e.publisher.connections if p.copy_writer), None))
        pump = conn.copy_writer
        yield eventually(lambda: pump.paused and not pump._pulling, timeout=30)
        held = pump.rows
        self.assertLess(held, n)  # 9 MB of rows: the socket buffers hold a part
        self.assertFalse(pump._pulling)  # nothing read ahead while the subscriber does not read
        self.assertEqual(e.hub.status()["snapshot_readers"], 1)
        c.transport.resumeProducing()
        _, msgs = yield c.until(lambda m: isinstance(m, ReadyForQuery), timeout=60)
        self.assertIn(CommandComplete(f"COPY {n}"), msgs)
        data = b"".join(m.data for m in msgs if isinstance(m, CopyData))
        self.assertEqual(len(data.splitlines()), n)
        self.assertEqual(e.hub.status()["snapshot_readers"], 0)
        self.assertIsNone(conn.copy_writer)
