"""TransactionAssembler and AckTracker on hand-made pgoutput messages (no I/O)."""

from __future__ import annotations

from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from electric.hub.interface import DELETE, TRUNCATE, UNCHANGED, UPSERT
from electric.postgres.source import assembly
from electric.postgres.protocol import pgoutput as po
from electric.postgres.protocol.lsn import PG_EPOCH_UNIX_US
from electric.schema import Column, Table

ITEMS = Table("public", "items", (Column("id", "text", 25, -1, True), Column("v", "text", 25, -1, False)), ("id",))
RC = (po.RelationColumn(1, "id", 25, -1), po.RelationColumn(0, "v", 25, -1))
REL = po.Relation(16400, "public", "items", "d", RC)
MIG = po.Relation(16500, "electric", "migrations", "d", (po.RelationColumn(1, "id", 23, -1),))


def lookup_with(tables, skipped=None):
    skipped = skipped or {}

    def lookup(schema, name):
        t = tables.get((schema, name))
        return t, skipped.get((schema, name))

    return lookup


def run(assembler, msgs):
    out = []
    for m in msgs:
        ev = assembler.feed(m)
        if ev is not None:
            out.append(ev)
    return out


def tx(lsn, *body, origin=None):
    msgs = [po.Begin(lsn, 1_000_000, 7)]
    if origin:
        msgs.append(po.Origin(0, origin))
    msgs.extend(body)
    msgs.append(po.Commit(lsn, lsn + 0x30, 1_000_000))
    return msgs


class AssemblerTests(unittest.TestCase):
    def setUp(self):
        self.a = assembly.TransactionAssembler("pg1", lookup_with({("public", "items"): ITEMS}), subscription_oid=16397)
        self.assertIsNone(self.a.feed(REL))

    def test_insert_update_delete(self):
        [ev] = run(self.a, tx(0x100,
                              po.Insert(16400, ("a", "x")),
                              po.Update(16400, ("a", UNCHANGED)),
                              po.Update(16400, ("b", "y"), key=("a", None)),
                              po.Delete(16400, key=("b", None))))
        t = ev.transaction
        self.assertEqual(ev.end_lsn, 0x130)
        self.assertEqual(t.origin, "pg1")
        self.assertEqual(t.origin_id, (0x130).to_bytes(8, "big"))
        self.assertEqual(t.commit_timestamp, PG_EPOCH_UNIX_US + 1_000_000)
        ops = [(c.op, c.key, c.values) for c in t.changes]
        self.assertEqual(ops, [
            (UPSERT, ("a",), {"id": "a", "v": "x"}),
            (UPSERT, ("a",), {"id": "a", "v": UNCHANGED}),
            (DELETE, ("a",), {"id": "a"}),
            (UPSERT, ("b",), {"id": "b", "v": "y"}),
            (DELETE, ("b",), {"id": "b"}),
        ])

    def test_full_old_row_is_kept(self):
        [ev] = run(self.a, tx(0x100, po.Update(16400, ("a", "new"), old=("a", "old"))))
        self.assertEqual(ev.transaction.changes[0].old_values, {"id": "a", "v": "old"})

    def test_truncate(self):
        # Handed over as a chunk at once: the hub expands it row by row, in bounded memory only when chunked.
        chunk, ev = run(self.a, tx(0x100, po.Truncate((16400,), po.TRUNCATE_CASCADE | po.TRUNCATE_RESTART_IDENTITY)))
        self.assertEqual([(c.op, c.table) for c in chunk.changes], [(TRUNCATE, "items")])
        self.assertTrue(ev.chunked)
        self.assertEqual(ev.transaction.changes, ())

    def test_big_transaction_goes_out_in_chunks(self):
        a = assembly.TransactionAssembler("pg1", lookup_with({("public", "items"): ITEMS}), chunk=3)
        a.feed(REL)
        body = [po.Insert(16400, (f"k{i}", "x")) for i in range(7)] + [po.Update(16400, ("z", "y"), key=("k0", None))]
        events = run(a, tx(0x200, *body))
        self.assertEqual([type(e).__name__ for e in events], ["Chunk", "Chunk", "Assembled"])
        self.assertEqual([len(e.changes) for e in events[:2]] + [len(events[2].transaction.changes)], [3, 3, 3])
        keys = [c.key for e in events[:2] for c in e.changes] + [c.key for c in events[2].transaction.changes]
        self.assertEqual(keys, [(f"k{i}",) for i in range(7)] + [("k0",), ("z",)])
        done = events[2]
        self.assertTrue(done.chunked)
        self.assertEqual((done.end_lsn, done.transaction.origin_id), (0x230, (0x230).to_bytes(8, "big")))
        # A transaction of at most one chunk stays whole.
        [ev] = run(a, tx(0x300, *[po.Insert(16400, (f"s{i}", "x")) for i in range(3)]))
        self.assertFalse(ev.chunked)
        self.assertEqual(len(ev.transaction.changes), 3)
        # Exactly past a chunk boundary: the commit carries no changes of its own.
        events = run(a, tx(0x400, *[po.Insert(16400, (f"e{i}", "x")) for i in range(4)]))
        self.assertEqual([type(e).__name__ for e in events], ["Chunk", "Assembled"])
        self.assertEqual((len(events[1].transaction.changes), events[1].chunked), (1, True))

    def test_big_transaction_dropped_after_its_chunks(self):
        a = assembly.TransactionAssembler("pg1", lookup_with({("public", "items"): ITEMS}), chunk=2)
        a.feed(REL)
        a.feed(MIG)
        events = run(a, tx(0x200, *[po.Insert(16400, (f"k{i}", "x")) for i in range(5)], po.Insert(16500, ("1",)),
                           po.Insert(16400, ("late", "x"))))
        self.assertEqual([type(e).__name__ for e in events], ["Chunk", "Chunk", "Assembled"])
        self.assertEqual((events[-1].transaction, events[-1].dropped, events[-1].chunked),
                         (None, assembly.ELECTRIC_TABLES, True))

    def test_origin_filter_is_exact(self):
        evs = run(self.a, tx(0x100, po.Insert(16400, ("a", "x")), origin="pg_16397")
                  + tx(0x200, po.Insert(16400, ("b", "x")), origin="pg_16397_16420")
                  + tx(0x300, po.Insert(16400, ("c", "x")), origin="pg_163970")
                  + tx(0x400, po.Insert(16400, ("d", "x")), origin="some_other_sub"))
        self.assertEqual([e.dropped for e in evs], [assembly.OWN_ORIGIN, assembly.OWN_ORIGIN, None, None])
        self.assertEqual([e.transaction.changes[0].key for e in evs[2:]], [("c",), ("d",)])

    def test_migrations_table_drops_whole_transaction(self):
        self.a.feed(MIG)
        [ev] = run(self.a, tx(0x100, po.Insert(16400, ("a", "x")), po.Insert(16500, ("1",))))
        self.assertIsNone(ev.transaction)
        self.assertEqual(ev.dropped, assembly.ELECTRIC_TABLES)

    def test_meta_table_drops_whole_transaction(self):
        self.a.feed(po.Relation(16501, "electric", "meta", "d", (po.RelationColumn(1, "key", 25, -1),)))
        [ev] = run(self.a, tx(0x100, po.Insert(16400, ("a", "x")), po.Insert(16501, ("k",))))
        self.assertEqual((ev.transaction, ev.dropped), (None, assembly.ELECTRIC_TABLES))

    def test_user_table_in_schema_electric_replicates(self):
        things = Table("electric", "things", ITEMS.columns, ("id",))
        a = assembly.TransactionAssembler("pg1", lookup_with({("electric", "things"): things}))
        self.assertIsNone(a.feed(po.Relation(16600, "electric", "things", "d", RC)))
        [ev] = run(a, tx(0x100, po.Insert(16600, ("a", "x"))))
        self.assertEqual([(c.schema, c.table, c.key) for c in ev.transaction.changes], [("electric", "things", ("a",))])
        # Not known yet (created after setup): looked up like any other table.
        need = a.feed(po.Relation(16601, "electric", "later", "d", RC))
        self.assertEqual((need.schema, need.name), ("electric", "later"))

    def test_empty_transaction(self):
        [ev] = run(self.a, tx(0x100))
        self.assertEqual((ev.transaction, ev.dropped, ev.end_lsn), (None, assembly.EMPTY, 0x130))

    def test_unknown_table_needs_lookup_then_skip(self):
        rel = po.Relation(16600, "public", "nokey", "d", (po.RelationColumn(0, "v", 25, -1),))
        need = self.a.feed(rel)
        self.assertIsInstance(need, assembly.NeedTable)
        self.assertEqual((need.schema, need.name), ("public", "nokey"))
        with self.assertRaises(assembly.InboundError):
            self.a.feed(po.Begin(1, 1, 1))
        self.a.table_resolved(None, "table has no primary key")
        [ev] = run(self.a, tx(0x100, po.Insert(16600, ("v",)), po.Insert(16400, ("a", "x"))))
        self.assertEqual([c.table for c in ev.transaction.changes], ["items"])
        self.assertEqual(self.a.dropped_changes[("public", "nokey")], 1)

    def test_skipped_table_log_is_rate_limited(self):
        now = [0.0]
        a = assembly.TransactionAssembler("pg1", lookup_with({}, {("public", "nokey"): "table has no primary key"}),
                                         clock=lambda: now[0], skipped_log_interval=60)
        lines = []

        def observe(event):
            if event.get("log_namespace") == "electric.postgres.source.assembly":
                lines.append((event["log_level"].name, event.get("connector"), formatEvent(event)))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        rel = po.Relation(16600, "public", "nokey", "d", (po.RelationColumn(0, "v", 25, -1),))
        self.assertIsInstance(a.feed(rel), assembly.NeedTable)
        a.table_resolved(None, "table has no primary key")
        for i in range(5):
            evs = run(a, tx(0x100 * (i + 1), po.Insert(16600, ("v",))))
            self.assertEqual(evs[0].dropped, assembly.EMPTY)
            now[0] += 20
        self.assertEqual(a.dropped_changes[("public", "nokey")], 5)
        self.assertEqual(lines, [
            ("warn", "pg1", "dropped 1 change(s) to skipped table public.nokey (table has no primary key)"),
            ("warn", "pg1", "dropped 3 change(s) to skipped table public.nokey (table has no primary key)"),
        ])

    def test_ddl_relation_needs_lookup(self):
        wider = po.Relation(16400, "public", "items", "d", RC + (po.RelationColumn(0, "w", 23, -1),))
        self.assertIsInstance(self.a.feed(wider), assembly.NeedTable)
        new_table = Table("public", "items", ITEMS.columns + (Column("w", "int4", 23, -1, False),), ("id",))
        self.a.table_resolved(new_table, None)
        [ev] = run(self.a, tx(0x100, po.Insert(16400, ("a", "x", "5"))))
        self.assertEqual(ev.transaction.changes[0].values, {"id": "a", "v": "x", "w": "5"})

    def test_catalog_moved_on_stream_columns_win(self):
        # WAL written before a later DDL: the stream still has column x, the
        # catalog already dropped it and added w.
        rel = po.Relation(16400, "public", "items", "d", RC + (po.RelationColumn(0, "x", 23, -1),))
        self.assertIsInstance(self.a.feed(rel), assembly.NeedTable)
        catalog = Table("public", "items", ITEMS.columns + (Column("w", "text", 25, -1, False),), ("id",))
        self.a.table_resolved(catalog, None)
        [ev] = run(self.a, tx(0x100, po.Insert(16400, ("a", "x", "5"))))
        self.assertEqual(ev.transaction.changes[0].values, {"id": "a", "v": "x", "x": "5"})

    def test_catalog_moved_on_without_the_key_skips(self):
        rel = po.Relation(16400, "public", "items", "d", (po.RelationColumn(1, "other", 25, -1),))
        self.assertIsInstance(self.a.feed(rel), assembly.NeedTable)
        self.a.table_resolved(ITEMS, None)
        [ev] = run(self.a, tx(0x100, po.Insert(16400, ("a",))))
        self.assertEqual(ev.dropped, assembly.EMPTY)
        self.assertEqual(self.a.dropped_changes[("public", "items")], 1)

    def test_contradictions_raise(self):
        with self.assertRaises(assembly.InboundError):
            self.a.feed(po.Insert(16400, ("a", "x")))
        self.a.feed(po.Begin(0x100, 1, 1))
        with self.assertRaises(assembly.InboundError):
            self.a.feed(po.Insert(99999, ("a", "x")))
        with self.assertRaises(assembly.InboundError):
            self.a.feed(po.Insert(16400, ("a",)))
        with self.assertRaises(assembly.InboundError):
            self.a.feed(po.Commit(0x999, 0x1000, 1))


class AckTrackerTests(unittest.TestCase):
    def test_flush_covers_only_completed_prefix(self):
        acks = assembly.AckTracker(flushed=10)
        a = acks.add(100)
        b = acks.add(200)
        acks.add(250, done=True)  # dropped: covered by the next ack
        c = acks.add(300)
        self.assertFalse(acks.done(b))
        self.assertEqual(acks.flushed, 10)
        self.assertTrue(acks.done(a))
        self.assertEqual(acks.flushed, 250)
        self.assertTrue(acks.done(c))
        self.assertEqual(acks.flushed, 300)
        self.assertEqual(acks.pending, 0)

    def test_dropped_with_nothing_pending_acks_at_once(self):
        acks = assembly.AckTracker()
        acks.add(100, done=True)
        self.assertEqual(acks.flushed, 100)

    def test_idle_advance_only_when_nothing_pending(self):
        acks = assembly.AckTracker()
        e = acks.add(100)
        self.assertFalse(acks.idle_advance(500))
        acks.done(e)
        self.assertTrue(acks.idle_advance(500))
        self.assertEqual(acks.flushed, 500)

    def test_long_runs_compact(self):
        acks = assembly.AckTracker()
        for i in range(5000):
            acks.done(acks.add(i + 1))
        self.assertEqual(acks.flushed, 5000)
        self.assertLess(len(acks._entries), 2100)


class WiringTests(unittest.TestCase):
    def test_build_service_wires_every_connector(self):
        import shutil
        import tempfile

        from electric.config import Config
        from electric.postgres.source.connector import ConnectorService
        from electric.service import build_service

        tmp = tempfile.mkdtemp(prefix="ewiring")
        config = Config.from_environ({
            "CONNECTORS": "postgres_1=postgresql://u:p@127.0.0.1:1/db1;postgres_2=postgresql://u:p@127.0.0.1:2/db2",
            "ELECTRIC_DATA_DIR": tmp,
            "OFFSET_STORAGE_FILE": tmp + "/offsets.dat",
        })
        self.addCleanup(shutil.rmtree, config.data_dir, True)
        root = build_service(config)
        connectors = {s.connector.name: s for s in root if isinstance(s, ConnectorService)}
        services = [connectors[name] for name in sorted(connectors)]
        self.assertEqual(sorted(connectors), ["postgres_1", "postgres_2"])
        api = root.getServiceNamed("http").api
        publisher = root.getServiceNamed("postgres-publisher")
        self.assertEqual(dict(api.connectors), connectors)
        for svc in services:
            self.assertIsInstance(svc, ConnectorService)
            self.assertIs(root.getServiceNamed(svc.name), svc)
            self.assertIs(svc.registry, publisher.registry)
            self.assertIs(svc.credentials, publisher.credentials)
            self.assertIs(svc.hub, root.getServiceNamed("hub"))
            self.assertFalse(svc.ready)
            self.assertEqual(svc.status()["state"], "init")


class StreamSkipTests(unittest.TestCase):
    """The connector's stream consumer does not decode the row changes of a transaction it will drop."""

    def make_stream(self):
        from twisted.internet import defer

        from electric.postgres.source.connector import _Stream

        appended, errors = [], []

        class Hub:
            def append(self, txn):
                appended.append(txn)
                return defer.succeed(None)

        asm = assembly.TransactionAssembler("pg_a", lookup_with({("public", "items"): ITEMS}), subscription_oid=77)
        from twisted.internet.task import Clock

        stream = _Stream("pg_a", Hub(), asm, None, errors.append, 0, reactor=Clock())
        return stream, asm, appended, errors

    def feed(self, stream, msgs):
        for m in msgs:
            data = m if isinstance(m, bytes) else m.encode()
            stream.xlog_data(0, 0, data)

    def test_own_origin_rows_are_not_decoded_but_relations_are(self):
        stream, asm, appended, errors = self.make_stream()
        other = po.Relation(16401, "public", "items", "d", RC)
        # An Insert body no decoder would accept: skipped by its tag byte.
        garbage = b"I" + b"\xff" * 7
        self.feed(stream, tx(0x100, REL, garbage, po.Update(16400, ("1", "x")), origin="pg_77"))
        self.feed(stream, tx(0x200, other, po.Insert(16401, ("2", "y")), origin="pg_77_16401"))
        self.assertEqual((errors, appended, stream.skipped_changes, stream.dropped), ([], [], 3, 2))
        # The Relation of the skipped transaction was read: the next local change uses it.
        self.feed(stream, tx(0x300, po.Insert(16401, ("3", "z"))))
        self.assertEqual(errors, [])
        [txn] = appended
        self.assertEqual([(c.key, dict(c.values)) for c in txn.changes], [(("3",), {"id": "3", "v": "z"})])

    def test_other_origins_and_local_rows_are_decoded(self):
        stream, asm, appended, errors = self.make_stream()
        self.feed(stream, tx(0x100, REL, po.Insert(16400, ("1", "a")), origin="someone_else"))
        self.feed(stream, tx(0x200, b"I" + b"\xff" * 7))
        self.assertEqual(len(appended), 1)
        self.assertEqual(stream.skipped_changes, 0)
        self.assertEqual(len(errors), 1)
        self.assertIn("cannot decode pgoutput", errors[0])


class StreamStagingTests(unittest.TestCase):
    """A big transaction's chunks: the next one is assembled while the hub stages the previous one."""

    def make_stream(self):
        from twisted.internet import defer

        from electric.postgres.source.connector import _Stream

        log = []

        class Buffer:
            def __init__(self):
                self.pending = []

            def add(self, changes):
                d = defer.Deferred()
                log.append(("add", len(changes)))
                self.pending.append(d)
                return d

            def commit(self, ts, origin_id=None):
                log.append(("commit", origin_id))
                return defer.succeed(None)

            def abort(self):
                log.append(("abort",))
                return defer.succeed(None)

        class Hub:
            buffer = None

            def begin(self, origin):
                self.buffer = Buffer()
                return self.buffer

            def append(self, txn):
                log.append(("append", txn.origin_id))
                return defer.succeed(None)

        class Client:
            paused = 0

            def pause(self):
                self.paused += 1

            def resume(self):
                pass

            def send_status(self, flushed):
                pass

        asm = assembly.TransactionAssembler("pg_a", lookup_with({("public", "items"): ITEMS}), chunk=3)
        hub = Hub()
        from twisted.internet.task import Clock

        stream = _Stream("pg_a", hub, asm, None, lambda e: log.append(("error", e)), 0, reactor=Clock())
        stream.client = Client()
        return stream, hub, log

    def feed(self, stream, msgs):
        for m in msgs:
            stream.xlog_data(0, 0, m.encode())

    def test_one_add_outstanding_one_waiting_then_commit_in_order(self):
        stream, hub, log = self.make_stream()
        rows = [po.Insert(16400, (str(i), "v")) for i in range(11)]
        self.feed(stream, tx(0x100, REL, *rows) + tx(0x200, po.Insert(16400, ("x", "after"))))
        # First chunk staging; the second assembled and waiting; reading stopped.
        self.assertEqual(log, [("add", 3)])
        self.assertTrue(stream.ops_full)
        for expected in ([("add", 3)], [("add", 3)]):
            hub.buffer.pending.pop(0).callback(None)
            self.assertEqual(log[-1:], expected)
        # The rest (2 rows), then the commit, and only then the next transaction.
        hub.buffer.pending.pop(0).callback(None)
        self.assertEqual(log[3:], [("add", 2)])
        self.assertTrue(stream.ops_full)
        hub.buffer.pending.pop(0).callback(None)
        self.assertEqual(log[4:], [("commit", assembly.origin_id_of(0x130)), ("append", assembly.origin_id_of(0x230))])
        self.assertEqual((stream.staged_rows, stream.ops_full, stream.op_busy), (11, False, False))

    def test_dropped_big_transaction_aborts_after_the_outstanding_add(self):
        stream, hub, log = self.make_stream()
        rows = [po.Insert(16400, (str(i), "v")) for i in range(5)]
        self.feed(stream, tx(0x100, REL, *rows, MIG, po.Insert(16500, ("1",))))
        self.assertEqual(log, [("add", 3)])
        hub.buffer.pending.pop(0).callback(None)
        self.assertEqual(log, [("add", 3), ("abort",)])
        self.assertEqual(stream.dropped, 1)
