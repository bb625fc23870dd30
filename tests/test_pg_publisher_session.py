"""
Port 5433 without sockets: the walsender session, the query recognisers and
the outbound pgoutput encoder, bytes in and bytes out.

The client side of every conversation is driven with Electric's own wire
codec and ClientAuth (the same code the inbound side uses against real
Postgres), and query texts are the exact strings a PG 15 subscriber sends
(pg15-subscriber-trace.md).
"""

from __future__ import annotations

from twisted.trial import unittest

from electric.hub import positions
from electric.hub.interface import ResolvedChange, ResolvedTransaction
from electric.postgres.publisher import catalog_answers as ca
from electric.postgres.protocol import pgoutput
from electric.postgres.publisher.session import (
    CLOSED,
    Authenticated,
    CancelRequested,
    CopyRequest,
    CreateSlotRequest,
    Disconnect,
    Send,
    Session,
    StartRequest,
    StatusUpdate,
    StreamStopped,
)
from electric.postgres.protocol.messages import (
    Authentication,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLFinal,
    BackendKeyData,
    Bind,
    CancelRequest,
    CommandComplete,
    CopyBothResponse,
    CopyData,
    CopyDone,
    CopyOutResponse,
    DataRow,
    EmptyQueryResponse,
    ErrorResponse,
    Execute,
    GSSENCRequest,
    ParameterStatus,
    Parse,
    PasswordMessage,
    Query,
    ReadyForQuery,
    RowDescription,
    SSLRequest,
    SSLResponse,
    StartupMessage,
    Sync,
    Terminate,
    encode_all,
)
from electric.postgres.protocol.parsers import BackendParser
from electric.postgres.protocol.replication_messages import StandbyStatusUpdate, XLogData
from electric.postgres.protocol.auth import ClientAuth
from electric.postgres.protocol.lsn import format_lsn
from electric.postgres.publisher.outbound import OutboundEncoder, PayloadCache
from electric.schema import Column, SchemaRegistry, Table

PASSWORD = "s3cret-pw"


def items_table(extra=()):
    cols = (
        Column("id", "text", 25, -1, True),
        Column("content", "text", 25, -1, False),
        Column("n", "int4", 23, -1, False),
    ) + tuple(extra)
    return Table("public", "items", cols, ("id",))


def make_registry():
    reg = SchemaRegistry()
    items = reg.register(items_table())
    other = reg.register(Table("public", "other", (Column("k", "int4", 23, -1, True),), ("k",)))
    reg.set_database_tables("postgres_1", [items])
    reg.set_database_tables("postgres_2", [items, other])
    return reg


class FakeBackend:
    """Plain values standing in for the publisher service."""

    publication = "all_tables"
    system_id = "7712374346367675096"

    def __init__(self, registry=None):
        self.registry = registry or make_registry()
        self.dropped = []

    def password_for(self, user):
        return PASSWORD if user in ("postgres_1", "postgres_2") else None

    def current_lsn(self, origin):
        return 0x1925A50

    def drop_slot(self, name, origin):
        self.dropped.append((name, origin))


class Client:
    """A frontend talking to a Session: sends bytes, collects backend messages and actions."""

    def __init__(self, session: Session):
        self.session = session
        self.parser = BackendParser()
        self.actions = []
        self.disconnected = None
        self.raw = b""

    def _take(self, actions):
        msgs = []
        for a in actions:
            if isinstance(a, Send):
                self.raw += a.data
                msgs.extend(self.parser.feed(a.data))
            elif isinstance(a, Disconnect):
                self.disconnected = a.reason
            else:
                self.actions.append(a)
        return msgs

    def send(self, data: bytes, one_byte_at_a_time=False):
        if one_byte_at_a_time:
            acts = []
            for i in range(len(data)):
                acts += self.session.feed(data[i:i + 1])
            return self._take(acts)
        return self._take(self.session.feed(data))

    def take(self, actions):
        return self._take(actions)

    def query(self, sql):
        return self.send(Query(sql).encode())

    def login(self, user="postgres_1", password=PASSWORD, app="postgres_1", ssl=True, extra=None):
        out = []
        if ssl:
            self.parser.expect_ssl_response()
            out += self.send(SSLRequest().encode())
        params = {"user": user, "database": "postgres_1", "replication": "database",
                  "options": " -c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3",
                  "application_name": app, "client_encoding": "UTF8"}
        params.update(extra or {})
        msgs = self.send(StartupMessage(params).encode())
        auth = ClientAuth(user, password)
        while True:
            out += msgs
            replies = []
            for m in msgs:
                if isinstance(m, Authentication):
                    replies += auth.receive(m)
            if not replies or self.disconnected:
                break
            msgs = self.send(encode_all(replies))
        return out


def of(msgs, cls):
    return [m for m in msgs if isinstance(m, cls)]


def rows(msgs):
    return [m.texts() for m in of(msgs, DataRow)]


def new_session(method="scram-sha-256", backend=None):
    return Session(backend or FakeBackend(), pid=4242, secret=99, auth_method=method)


# Exact subscriber texts (pg15-subscriber-trace.md §3, §5), with our relation id pasted in.
SET_CONFIG = "SELECT pg_catalog.set_config('search_path', '', false);"
PUB_CHECK = "SELECT t.pubname FROM\n pg_catalog.pg_publication t WHERE\n t.pubname IN ('all_tables')"
TABLE_LIST = ("SELECT DISTINCT t.schemaname, t.tablename \n, t.attnames\nFROM pg_catalog.pg_publication_tables t\n"
              " WHERE t.pubname IN ('all_tables')")
TABLE_LIST_14 = ("SELECT DISTINCT t.schemaname, t.tablename \nFROM pg_catalog.pg_publication_tables t\n"
                 " WHERE t.pubname IN ('all_tables')")
RELATION_Q = ("SELECT c.oid, c.relreplident, c.relkind  FROM pg_catalog.pg_class c  INNER JOIN pg_catalog.pg_namespace n"
              "        ON (c.relnamespace = n.oid) WHERE n.nspname = 'public'   AND c.relname = 'items'")
COLUMN_LIST_Q = ("SELECT DISTINCT  (CASE WHEN (array_length(gpt.attrs, 1) = c.relnatts)   THEN NULL ELSE gpt.attrs END)"
                 "  FROM pg_publication p,  LATERAL pg_get_publication_tables(p.pubname) gpt,  pg_class c"
                 " WHERE gpt.relid = {relid} AND c.oid = gpt.relid   AND p.pubname IN ( 'all_tables' )")
ATTRS_Q = ("SELECT a.attnum,       a.attname,       a.atttypid,       a.attnum = ANY(i.indkey)"
           "  FROM pg_catalog.pg_attribute a  LEFT JOIN pg_catalog.pg_index i"
           "       ON (i.indexrelid = pg_get_replica_identity_index({relid})) WHERE a.attnum > 0::pg_catalog.int2"
           "   AND NOT a.attisdropped AND a.attgenerated = ''   AND a.attrelid = {relid} ORDER BY a.attnum")
ROW_FILTER_Q = ("SELECT DISTINCT pg_get_expr(gpt.qual, gpt.relid)  FROM pg_publication p,"
                "  LATERAL pg_get_publication_tables(p.pubname) gpt WHERE gpt.relid = {relid}"
                "   AND p.pubname IN ( 'all_tables' )")


class Startup(unittest.TestCase):
    def test_scram_login_sends_pg15_parameters(self):
        c = Client(new_session())
        msgs = c.login()
        self.assertEqual(c.raw[:1], b"N")  # SSL refused with one unframed byte
        self.assertIsInstance(msgs[0], SSLResponse)
        self.assertFalse(msgs[0].accepted)
        self.assertTrue(of(msgs, AuthenticationSASL))
        self.assertTrue(of(msgs, AuthenticationSASLFinal))
        self.assertTrue(of(msgs, AuthenticationOk))
        params = {m.name: m.value for m in of(msgs, ParameterStatus)}
        self.assertEqual(params["server_version"], "15.0 (Electric)")
        self.assertEqual(params["application_name"], "postgres_1")
        self.assertEqual(params["server_encoding"], "UTF8")
        self.assertEqual(params["client_encoding"], "UTF8")
        self.assertEqual(params["DateStyle"], "ISO, MDY")
        self.assertEqual(params["integer_datetimes"], "on")
        self.assertEqual(params["standard_conforming_strings"], "on")
        self.assertEqual(of(msgs, BackendKeyData), [BackendKeyData(4242, 99)])
        self.assertEqual(msgs[-1], ReadyForQuery("I"))
        self.assertEqual(c.session.origin, "postgres_1")
        self.assertEqual([type(a) for a in c.actions], [Authenticated])
        self.assertIsNone(c.disconnected)

    def test_md5_login(self):
        c = Client(new_session("md5"))
        msgs = c.login(ssl=False)
        self.assertTrue(of(msgs, AuthenticationMD5Password))
        self.assertEqual(msgs[-1], ReadyForQuery("I"))

    def test_gssenc_request_refused_then_login(self):
        c = Client(new_session())
        c.parser.expect_ssl_response()
        msgs = c.send(GSSENCRequest().encode())
        self.assertEqual(msgs, [SSLResponse(False)])
        msgs = c.login(ssl=False)
        self.assertEqual(msgs[-1], ReadyForQuery("I"))

    def test_login_one_byte_at_a_time(self):
        s = new_session("md5")
        c = Client(s)
        params = {"user": "postgres_1", "database": "x", "replication": "database", "application_name": "a"}
        data = SSLRequest().encode() + StartupMessage(params).encode()
        c.parser.expect_ssl_response()
        msgs = c.send(data, one_byte_at_a_time=True)
        salt = of(msgs, AuthenticationMD5Password)[0].salt
        from electric.postgres.protocol.auth import md5_response
        msgs = c.send(PasswordMessage.password(md5_response("postgres_1", PASSWORD, salt)).encode(),
                      one_byte_at_a_time=True)
        self.assertEqual(msgs[-1], ReadyForQuery("I"))
        msgs = c.send(Query(SET_CONFIG).encode(), one_byte_at_a_time=True)
        self.assertEqual(rows(msgs), [[""]])

    def test_wrong_password_is_fatal_28p01(self):
        for method in ("scram-sha-256", "md5"):
            c = Client(new_session(method))
            msgs = c.login(password="wrong")
            err = of(msgs, ErrorResponse)[0]
            self.assertEqual(err.severity, "FATAL")
            self.assertEqual(err.sqlstate, "28P01")
            self.assertEqual(err.message, 'password authentication failed for user "postgres_1"')
            self.assertFalse(of(msgs, AuthenticationOk))
            self.assertIsNotNone(c.disconnected)
            self.assertEqual(c.session.state, CLOSED)

    def test_connector_not_set_up_yet_is_refused_08004(self):
        """
        A subscription left enabled by an earlier run reconnects as soon as
        the port listens; until its connector has registered the database's
        tables it must be refused (not streamed to with every table skipped).
        """
        registry = make_registry()
        registry.register(items_table())
        c = Client(Session(FakeBackend(registry), 1, 2))
        msgs = c.login(user="postgres_1", password=PASSWORD)
        self.assertFalse(of(msgs, ErrorResponse))
        fresh = SchemaRegistry()
        fresh.register(items_table())
        c = Client(Session(FakeBackend(fresh), 1, 2))
        msgs = c.login(user="postgres_1", password=PASSWORD)
        err = of(msgs, ErrorResponse)[0]
        self.assertEqual((err.severity, err.sqlstate), ("FATAL", "08004"))
        self.assertEqual(err.message, "Electric replication is not ready, missing schema for postgres_1")
        self.assertIsNotNone(c.disconnected)

    def test_unknown_user_is_fatal_28p01(self):
        c = Client(new_session())
        msgs = c.login(user="mallory", password=PASSWORD)
        err = of(msgs, ErrorResponse)[0]
        self.assertEqual((err.severity, err.sqlstate), ("FATAL", "28P01"))
        self.assertEqual(err.message, 'password authentication failed for user "mallory"')
        self.assertIsNotNone(c.disconnected)

    def test_non_replication_startup_is_refused(self):
        c = Client(new_session())
        msgs = c.send(StartupMessage({"user": "postgres_1", "database": "x"}).encode())
        err = of(msgs, ErrorResponse)[0]
        self.assertEqual((err.severity, err.sqlstate), ("FATAL", "08004"))
        self.assertEqual(err.message, "Electric mesh allows connection only in `replication=database` mode")
        self.assertIsNotNone(c.disconnected)

    def test_non_utf8_client_encoding_is_refused(self):
        c = Client(new_session())
        msgs = c.login(extra={"client_encoding": "LATIN1"}, ssl=False)
        err = of(msgs, ErrorResponse)[0]
        self.assertEqual((err.severity, err.sqlstate), ("FATAL", "22023"))
        self.assertIn("LATIN1", err.message)

    def test_garbage_before_startup_is_fatal_08p01(self):
        c = Client(new_session())
        msgs = c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        err = of(msgs, ErrorResponse)[0]
        self.assertEqual((err.severity, err.sqlstate), ("FATAL", "08P01"))
        self.assertIsNotNone(c.disconnected)
        self.assertEqual(c.send(b"more"), [])

    def test_garbage_after_login_is_fatal_08p01(self):
        c = Client(new_session())
        c.login()
        msgs = c.send(b"\x01\x00\x00\x00\x05x")
        err = of(msgs, ErrorResponse)[0]
        self.assertEqual((err.severity, err.sqlstate), ("FATAL", "08P01"))
        self.assertIn("unexpected frontend message type", err.message)
        self.assertIsNotNone(c.disconnected)

    def test_query_before_authentication_is_fatal(self):
        c = Client(new_session())
        c.send(StartupMessage({"user": "postgres_1", "replication": "database"}).encode())
        msgs = c.send(Query("IDENTIFY_SYSTEM").encode())
        err = of(msgs, ErrorResponse)[0]
        self.assertEqual((err.severity, err.sqlstate), ("FATAL", "08P01"))

    def test_cancel_request(self):
        c = Client(new_session())
        c.send(CancelRequest(4242, 99).encode())
        self.assertEqual(c.actions, [CancelRequested(4242, 99)])
        self.assertIsNotNone(c.disconnected)


class Queries(unittest.TestCase):
    def setUp(self):
        self.backend = FakeBackend()
        self.c = Client(new_session(backend=self.backend))
        self.c.login()

    def test_create_subscription_conversation(self):
        c = self.c
        msgs = c.query(SET_CONFIG)
        desc = of(msgs, RowDescription)[0]
        self.assertEqual([(f.name, f.type_oid, f.typlen) for f in desc.fields], [("set_config", 25, -1)])
        self.assertEqual(of(msgs, DataRow)[0].values, (b"",))
        self.assertEqual(of(msgs, CommandComplete), [CommandComplete("SELECT 1")])
        msgs = c.query(PUB_CHECK)
        self.assertEqual(rows(msgs), [["all_tables"]])
        self.assertEqual(of(msgs, RowDescription)[0].fields[0].type_oid, 19)
        msgs = c.query(TABLE_LIST)
        self.assertEqual(of(msgs, RowDescription)[0].names, ["schemaname", "tablename", "attnames"])
        self.assertEqual(rows(msgs), [["public", "items", "{id,content,n}"]])
        msgs = c.query(TABLE_LIST_14)
        self.assertEqual(rows(msgs), [["public", "items"]])
        msgs = c.query("CREATE_REPLICATION_SLOT \"postgres_1\" LOGICAL pgoutput (SNAPSHOT 'nothing')")
        self.assertEqual(msgs, [])
        req = c.actions[-1]
        self.assertIsInstance(req, CreateSlotRequest)
        self.assertEqual(req.command, ca.CreateSlot("postgres_1", "nothing"))
        # Input while the driver works is answered afterwards, in order.
        self.assertEqual(c.query("IDENTIFY_SYSTEM"), [])
        msgs = c.take(c.session.slot_created("postgres_1", 0x1925A50))
        self.assertEqual(of(msgs, RowDescription)[0].names,
                         ["slot_name", "consistent_point", "snapshot_name", "output_plugin"])
        self.assertEqual(rows(msgs)[0], ["postgres_1", "0/1925A50", None, "pgoutput"])
        self.assertEqual(rows(msgs)[1], ["7712374346367675096", "1", "0/1925A50", "postgres_1"])
        self.assertEqual([m.tag for m in of(msgs, CommandComplete)], ["CREATE_REPLICATION_SLOT", "IDENTIFY_SYSTEM"])
        self.assertEqual(of(msgs, ReadyForQuery), [ReadyForQuery("I")] * 2)

    def test_pre15_slot_syntax(self):
        self.c.query('CREATE_REPLICATION_SLOT "s" LOGICAL pgoutput NOEXPORT_SNAPSHOT')
        self.assertEqual(self.c.actions[-1].command, ca.CreateSlot("s", "nothing"))

    def test_export_snapshot_refused(self):
        msgs = self.c.query('CREATE_REPLICATION_SLOT "s" LOGICAL pgoutput EXPORT_SNAPSHOT')
        err = of(msgs, ErrorResponse)[0]
        self.assertEqual((err.severity, err.sqlstate), ("ERROR", "0A000"))
        self.assertEqual(msgs[-1], ReadyForQuery("I"))

    def test_unknown_query_then_connection_still_answers(self):
        c = self.c
        for sql in ("SELECT 1", "SHOW data_directory_mode", "DROP TABLE items", "TIMELINE_HISTORY 1"):
            msgs = c.query(sql)
            err = of(msgs, ErrorResponse)[0]
            self.assertEqual(err.severity, "ERROR")
            self.assertIn(err.sqlstate, ("0A000", "42601"))
            self.assertTrue(err.message)
            self.assertEqual(msgs[-1], ReadyForQuery("I"))
        self.assertEqual(rows(c.query(SET_CONFIG)), [[""]])
        self.assertIsNone(c.disconnected)

    def test_bad_start_replication_syntax(self):
        msgs = self.c.query("START_REPLICATION SLOT \"x\" LOGICAL nonsense")
        err = of(msgs, ErrorResponse)[0]
        self.assertEqual(err.sqlstate, "42601")
        self.assertIn("LSN", err.message)
        self.assertEqual(msgs[-1], ReadyForQuery("I"))

    def test_unknown_publication(self):
        for sql in (PUB_CHECK.replace("all_tables", "nope"), TABLE_LIST.replace("all_tables", "nope"),
                    "START_REPLICATION SLOT \"x\" LOGICAL 0/0 (proto_version '3', publication_names '\"nope\"')"):
            msgs = self.c.query(sql)
            err = of(msgs, ErrorResponse)[0]
            self.assertEqual((err.sqlstate, err.message), ("42704", 'publication "nope" does not exist'))
            self.assertEqual(msgs[-1], ReadyForQuery("I"))

    def test_drop_slot_always_ok(self):
        msgs = self.c.query("DROP_REPLICATION_SLOT sub2 WAIT")
        self.assertEqual(of(msgs, CommandComplete), [CommandComplete("DROP_REPLICATION_SLOT")])
        self.assertEqual(self.backend.dropped, [("sub2", "postgres_1")])

    def test_transaction_status(self):
        c = self.c
        msgs = c.query("BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ")
        self.assertEqual(msgs, [CommandComplete("BEGIN"), ReadyForQuery("T")])
        msgs = c.query("SELECT nonsense")
        self.assertEqual(msgs[-1], ReadyForQuery("E"))
        msgs = c.query(SET_CONFIG)
        self.assertEqual(of(msgs, ErrorResponse)[0].sqlstate, "25P02")
        msgs = c.query("COMMIT")
        self.assertEqual(msgs, [CommandComplete("ROLLBACK"), ReadyForQuery("I")])

    def test_empty_query(self):
        self.assertEqual(self.c.query(" ; "), [EmptyQueryResponse(), ReadyForQuery("I")])

    def test_extended_protocol_refused_until_sync(self):
        c = self.c
        data = Parse("", "SELECT 1").encode() + Bind("", "").encode() + Execute().encode()
        msgs = c.send(data)
        self.assertEqual(len(msgs), 1)
        self.assertEqual(msgs[0].sqlstate, "08P01")
        self.assertEqual(c.send(Sync().encode()), [ReadyForQuery("I")])
        self.assertEqual(rows(c.query(SET_CONFIG)), [[""]])

    def test_table_sync_conversation(self):
        c = self.c
        reg = self.backend.registry
        relid = reg.find("public", "items").relation_id
        app = "pg_16397_sync_16385_7712374349014268656"
        c.session.application_name = app
        self.assertTrue(c.session.is_sync_worker)
        self.assertEqual(c.query("BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ")[-1], ReadyForQuery("T"))
        c.query(f"CREATE_REPLICATION_SLOT \"{app}\" LOGICAL pgoutput (SNAPSHOT 'use')")
        self.assertEqual(c.actions[-1].command.snapshot, "use")
        msgs = c.take(c.session.slot_created(app, positions.end_lsn(7), use_snapshot=True))
        self.assertEqual(rows(msgs), [[app, format_lsn(positions.end_lsn(7)), None, "pgoutput"]])
        self.assertEqual(msgs[-1], ReadyForQuery("T"))
        msgs = c.query(RELATION_Q)
        self.assertEqual(rows(msgs), [[str(relid), "d", "r"]])
        self.assertEqual([f.type_oid for f in of(msgs, RowDescription)[0].fields], [26, 18, 18])
        msgs = c.query(COLUMN_LIST_Q.format(relid=relid))
        self.assertEqual(rows(msgs), [[None]])
        msgs = c.query(ATTRS_Q.format(relid=relid))
        self.assertEqual(rows(msgs), [["1", "id", "25", "t"], ["2", "content", "25", "f"], ["3", "n", "23", "f"]])
        self.assertEqual(of(msgs, CommandComplete), [CommandComplete("SELECT 3")])
        msgs = c.query(ROW_FILTER_Q.format(relid=relid))
        self.assertEqual(rows(msgs), [[None]])
        self.assertEqual(msgs[-1], ReadyForQuery("T"))
        self.assertEqual(c.query("COPY public.items (id, content, n) TO STDOUT"), [])
        req = c.actions[-1]
        self.assertIsInstance(req, CopyRequest)
        self.assertEqual((req.command.schema, req.command.table, req.columns, req.slot),
                         ("public", "items", ("id", "content", "n"), app))
        actions = c.session.copy_start() + c.session.copy_data([
            ResolvedChange("public", "items", ("a",), {"id": "a", "content": "tab\there\nnew \\ line", "n": "1"}),
        ]) + c.session.copy_data([]) + c.session.copy_data([
            ResolvedChange("public", "items", ("b",), {"id": "b", "content": None}),
            ResolvedChange("public", "items", ("c",), {"id": "c", "content": "gone", "n": "3"}, deleted=True),
        ]) + c.session.copy_end()
        self.assertTrue(all(isinstance(a, Send) for a in actions))
        msgs = c.take(actions)
        self.assertEqual(msgs[0], CopyOutResponse(0, (0, 0, 0)))
        data = b"".join(m.data for m in of(msgs, CopyData))
        self.assertEqual(data, b"a\ttab\\there\\nnew \\\\ line\t1\nb\t\\N\t\\N\n")
        self.assertEqual(msgs[-3:], [CopyDone(), CommandComplete("COPY 2"), ReadyForQuery("T")])
        # Input queued behind the COPY is answered after resume().
        self.assertEqual(c.query("COMMIT"), [])
        self.assertEqual(c.take(c.session.resume()), [CommandComplete("COMMIT"), ReadyForQuery("I")])
        self.assertIsNone(c.session.sync_slot)

    def test_copy_unknown_column_and_outside_sync(self):
        msgs = self.c.query("COPY public.items (id, nope) TO STDOUT")
        self.assertEqual(of(msgs, ErrorResponse)[0].sqlstate, "42703")
        msgs = self.c.query("COPY public.items (id) TO STDOUT")
        self.assertEqual(of(msgs, ErrorResponse)[0].sqlstate, "0A000")
        msgs = self.c.query("COPY public.other (k) TO STDOUT")  # not in postgres_1's database
        self.assertEqual(of(msgs, ErrorResponse)[0].sqlstate, "42P01")
        self.assertEqual(msgs[-1], ReadyForQuery("I"))

    def test_streaming_and_copydone(self):
        c = self.c
        msgs = c.query("START_REPLICATION SLOT \"postgres_1\"  LOGICAL 0/1A00 "
                       "(proto_version '3', publication_names '\"all_tables\"')")
        self.assertEqual(msgs, [])
        start = c.actions[-1]
        self.assertIsInstance(start, StartRequest)
        self.assertEqual((start.command.slot, start.command.lsn), ("postgres_1", 0x1A00))
        msgs = c.take(c.session.start_streaming(start.command))
        self.assertEqual(msgs, [CopyBothResponse(0, ())])
        upd = StandbyStatusUpdate(0x1A00, 0x1900, 0x1A00, 0, True)
        self.assertEqual(c.send(upd.frame()), [])
        self.assertEqual(c.actions[-1], StatusUpdate(upd))
        msgs = c.send(CopyDone().encode())
        self.assertIsInstance(c.actions[-1], StreamStopped)
        self.assertEqual(msgs, [CopyDone(), CommandComplete("COPY 0"),
                                CommandComplete("START_REPLICATION"), ReadyForQuery("I")])
        msgs = c.query("DROP_REPLICATION_SLOT x WAIT")
        self.assertEqual(msgs[-1], ReadyForQuery("I"))

    def test_slot_busy_answer(self):
        c = self.c
        c.query("START_REPLICATION SLOT \"postgres_1\" LOGICAL 0/0 (proto_version '1', publication_names 'all_tables')")
        msgs = c.take(c.session.command_failed("55006", 'replication slot "postgres_1" is active for PID 1'))
        self.assertFalse(of(msgs, CopyBothResponse))
        self.assertEqual(of(msgs, ErrorResponse)[0].sqlstate, "55006")
        self.assertEqual(msgs[-1], ReadyForQuery("I"))

    def test_terminate_while_streaming(self):
        c = self.c
        c.query("START_REPLICATION SLOT \"postgres_1\" LOGICAL 0/0 (proto_version '1', publication_names 'all_tables')")
        c.take(c.session.start_streaming(c.actions[-1].command))
        c.send(Terminate().encode())
        self.assertIsInstance(c.actions[-1], StreamStopped)
        self.assertIsNotNone(c.disconnected)

    def test_ending_a_stream_ourselves_is_not_a_protocol_violation(self):
        # Shutdown or a timeout: the stop reason (what the log says) is ours; a client's bad message is a violation.
        c = self.c
        c.query("START_REPLICATION SLOT \"postgres_1\" LOGICAL 0/0 (proto_version '1', publication_names 'all_tables')")
        c.take(c.session.start_streaming(c.actions[-1].command))
        actions = c.session.end_stream("57P01", "terminating connection: Electric is shutting down")
        self.assertEqual([a for a in actions if isinstance(a, StreamStopped)],
                         [StreamStopped("terminating connection: Electric is shutting down")])
        c2 = Client(new_session(backend=self.backend))
        c2.login()
        c2.query("START_REPLICATION SLOT \"postgres_1\" LOGICAL 0/0 (proto_version '1', publication_names 'all_tables')")
        c2.take(c2.session.start_streaming(c2.actions[-1].command))
        c2.query("IDENTIFY_SYSTEM")
        self.assertEqual([a.reason for a in c2.actions if isinstance(a, StreamStopped)],
                         ["protocol violation: unexpected message type b'Q' during COPY"])

    def test_query_while_streaming_is_fatal(self):
        c = self.c
        c.query("START_REPLICATION SLOT \"postgres_1\" LOGICAL 0/0 (proto_version '1', publication_names 'all_tables')")
        c.take(c.session.start_streaming(c.actions[-1].command))
        msgs = c.query("IDENTIFY_SYSTEM")
        self.assertEqual(of(msgs, ErrorResponse)[0].sqlstate, "08P01")
        self.assertIsInstance(c.actions[-1], StreamStopped)
        self.assertIsNotNone(c.disconnected)

    def test_garbage_copydata_while_streaming_is_fatal(self):
        c = self.c
        c.query("START_REPLICATION SLOT \"postgres_1\" LOGICAL 0/0 (proto_version '1', publication_names 'all_tables')")
        c.take(c.session.start_streaming(c.actions[-1].command))
        msgs = c.send(CopyData(b"r\x00").encode())
        err = of(msgs, ErrorResponse)[0]
        self.assertEqual((err.severity, err.sqlstate), ("FATAL", "08P01"))
        self.assertIn("StandbyStatusUpdate", err.message)


class Recognisers(unittest.TestCase):
    def test_normalize(self):
        self.assertEqual(ca.normalize("  SELECT  a,\n\tb ;\x00"), "SELECT a, b")
        self.assertEqual(ca.normalize("SELECT 'a   b'  ,  \"x  y\""), "SELECT 'a   b' , \"x  y\"")

    def test_quoted_names(self):
        cmd = ca.parse("SELECT c.oid, c.relreplident, c.relkind FROM pg_catalog.pg_class c INNER JOIN "
                       "pg_catalog.pg_namespace n ON (c.relnamespace = n.oid) WHERE n.nspname = 'My ''S'"
                       " AND c.relname = E'a\\\\b'")
        self.assertEqual(cmd, ca.RelationInfo("My 'S", "a\\b"))
        cmd = ca.parse('COPY "My Schema"."T ""q""" ("Id", x) TO STDOUT')
        self.assertEqual(cmd, ca.CopyTable("My Schema", 'T "q"', ("Id", "x")))

    def test_start_replication_options(self):
        cmd = ca.parse("START_REPLICATION SLOT \"sub1\" LOGICAL 16/B374D848 (proto_version '3', streaming 'on',"
                       " publication_names '\"pub2\",\"x y\"', binary 'true')")
        self.assertEqual(cmd.lsn, 0x16B374D848)
        self.assertEqual(cmd.publications, ("pub2", "x y"))
        self.assertEqual(cmd.proto_version, 3)
        with self.assertRaises(ca.QueryError) as e:
            ca.parse("START_REPLICATION SLOT \"s\" LOGICAL 0/0 (proto_version '1', origin 'none')")
        self.assertEqual((e.exception.sqlstate, e.exception.message), ("42601", "unrecognized pgoutput option: origin"))

    def test_array_literal(self):
        self.assertEqual(ca.array_literal(["id", "a b", "NULL", 'q"', ""]), '{id,"a b","NULL","q\\"",""}')

    def test_pg14_attributes_query(self):
        q = ("SELECT a.attname,       a.atttypid,       a.attnum = ANY(i.indkey)  FROM pg_catalog.pg_attribute a"
             "  LEFT JOIN pg_catalog.pg_index i       ON (i.indexrelid = pg_get_replica_identity_index(20000))"
             " WHERE a.attnum > 0::pg_catalog.int2   AND NOT a.attisdropped AND a.attgenerated = ''"
             "   AND a.attrelid = 20000 ORDER BY a.attnum")
        self.assertEqual(ca.parse(q), ca.Attributes(20000, with_attnum=False))


def decode_frames(frames):
    out = []
    for f in frames:
        (msg,) = BackendParser().feed(f)
        rep = msg.replication_message()
        if isinstance(rep, XLogData):
            out.append((rep.wal_start, pgoutput.decode(rep.data)))
        else:
            out.append((rep.wal_end, rep))
    return out


class Encoder(unittest.TestCase):
    def setUp(self):
        self.reg = make_registry()
        self.items_id = self.reg.find("public", "items").relation_id
        self.other_id = self.reg.find("public", "other").relation_id

    def tx(self, position, *changes, ts=1_700_000_000_000_000):
        return ResolvedTransaction(position, "postgres_2", b"x", ts, tuple(changes))

    def test_transaction_layout(self):
        enc = OutboundEncoder(self.reg, "postgres_1", base=0, clock=lambda: 5)
        rt = self.tx(
            3,
            ResolvedChange("public", "items", ("a",), {"id": "a", "content": "x", "n": "1", "gone": "?"}),
            ResolvedChange("public", "other", ("1",), {"k": "1"}),  # not in postgres_1's database
            ResolvedChange("public", "items", ("b",), {"id": "b"}),  # missing columns -> NULL
            ResolvedChange("public", "items", ("c",), {"id": "c", "content": "old", "n": "9"}, deleted=True),
        )
        out = decode_frames(enc.frames(rt))
        kinds = [type(m).__name__ for _, m in out]
        self.assertEqual(kinds, ["Begin", "Relation", "Insert", "Insert", "Delete", "Commit"])
        begin, commit = out[0][1], out[-1][1]
        self.assertEqual(begin.final_lsn, commit.commit_lsn)
        self.assertEqual(commit.end_lsn, positions.end_lsn(3))
        self.assertEqual(begin.commit_timestamp, 1_700_000_000_000_000 - 946_684_800_000_000)
        rel = out[1][1]
        self.assertEqual(out[1][0], 0)
        self.assertEqual((rel.relation_id, rel.namespace, rel.name, rel.replica_identity),
                         (self.items_id, "public", "items", "d"))
        self.assertEqual([(c.flags, c.name, c.type_oid) for c in rel.columns],
                         [(1, "id", 25), (0, "content", 25), (0, "n", 23)])
        self.assertEqual(out[2][1].new, ("a", "x", "1"))
        self.assertEqual(out[3][1].new, ("b", None, None))
        self.assertEqual((out[4][1].key, out[4][1].old), (("c", None, None), None))
        lsns = [lsn for lsn, _ in out]
        self.assertTrue(positions.end_lsn(2) < lsns[0] <= lsns[2] <= lsns[4] <= commit.commit_lsn < lsns[5])
        self.assertEqual(enc.wal_end, positions.end_lsn(3))
        self.assertEqual(enc.skipped_changes, 1)
        # Next transaction: the relation is cached on this connection.
        out = decode_frames(enc.frames(self.tx(4, ResolvedChange("public", "items", ("d",), {"id": "d"}))))
        self.assertEqual([type(m).__name__ for _, m in out], ["Begin", "Insert", "Commit"])
        # Never re-sends a transaction at or below its position.
        self.assertEqual(enc.encode(self.tx(4, ResolvedChange("public", "items", ("d",), {"id": "d"}))), [])
        self.assertEqual(enc.encode(self.tx(2, ResolvedChange("public", "items", ("d",), {"id": "d"}))), [])

    def test_transaction_without_rows_for_this_database(self):
        enc = OutboundEncoder(self.reg, "postgres_1", base=0x1000, start_position=5)
        self.assertEqual(enc.wal_end, positions.end_lsn(5, 0x1000))
        frames = enc.encode(self.tx(6, ResolvedChange("public", "other", ("1",), {"k": "1"})))
        self.assertEqual(frames, [])
        self.assertEqual(enc.wal_end, positions.end_lsn(6, 0x1000))
        ((lsn, ka),) = decode_frames([enc.keepalive(True)])
        self.assertEqual(lsn, positions.end_lsn(6, 0x1000))
        self.assertTrue(ka.reply_requested)

    def test_relation_resent_when_database_definition_changes(self):
        enc = OutboundEncoder(self.reg, "postgres_1", base=0)
        enc.encode(self.tx(1, ResolvedChange("public", "items", ("a",), {"id": "a"})))
        wider = self.reg.register(items_table((Column("extra", "text", 25, -1, False),)))
        self.reg.set_database_tables("postgres_1", [wider])
        out = decode_frames(enc.frames(self.tx(2, ResolvedChange("public", "items", ("a",), {"id": "a", "extra": "e"}))))
        self.assertEqual([type(m).__name__ for _, m in out], ["Begin", "Relation", "Insert", "Commit"])
        self.assertEqual(out[1][1].column_names, ("id", "content", "n", "extra"))
        self.assertEqual(out[2][1].new, ("a", None, None, "e"))


    def test_subscribers_share_the_change_messages_of_an_item(self):
        """Encoded once per table shape: only the XLogData headers (LSNs) are each subscriber's own."""
        cache = PayloadCache()
        wider = self.reg.register(items_table((Column("extra", "text", 25, -1, False),)))
        self.reg.set_database_tables("postgres_3", [wider])
        now = lambda: 5  # noqa: E731
        a = OutboundEncoder(self.reg, "postgres_1", base=0, payloads=cache, clock=now)
        b = OutboundEncoder(self.reg, "postgres_2", base=0x5000, payloads=cache, clock=now)  # other LSNs
        c = OutboundEncoder(self.reg, "postgres_3", base=0, payloads=cache, clock=now)  # one more column there
        plain = OutboundEncoder(self.reg, "postgres_2", base=0x5000, clock=now)
        rt = self.tx(
            3,
            ResolvedChange("public", "items", ("a",), {"id": "a", "content": "x", "n": "1", "extra": "e"}),
            ResolvedChange("public", "other", ("1",), {"k": "1"}),
            ResolvedChange("public", "items", ("c",), {"id": "c"}, deleted=True),
        )
        outs = {name: enc.encode(rt) for name, enc in (("a", a), ("b", b), ("c", c), ("plain", plain))}
        self.assertEqual(outs["b"], outs["plain"])  # same bytes as without the cache
        body = lambda frames: [f[1 + 4 + 1 + 24:] for f in frames]  # noqa: E731  CopyData tag, length, 'w', 3 x 8
        rel = self.items_id.to_bytes(4, "big")
        inserts = {name: [m for m in body(frames) if m[:1] in (b"I", b"D") and m[1:5] == rel]
                   for name, frames in outs.items()}
        self.assertEqual(len(inserts["a"]), 2)
        self.assertEqual(inserts["a"], inserts["b"])
        self.assertNotEqual(inserts["a"], inserts["c"])
        self.assertEqual([type(m).__name__ for _, m in decode_frames(outs["c"])],
                         ["Begin", "Relation", "Insert", "Delete", "Commit"])
        self.assertEqual(decode_frames(outs["c"])[2][1].new, ("a", "x", "1", "e"))
        self.assertNotEqual([lsn for lsn, _ in decode_frames(outs["a"])], [lsn for lsn, _ in decode_frames(outs["b"])])
        # a encoded the items rows, b found them (and encoded "other", in its database only), c its own shape.
        self.assertEqual((cache.misses, cache.hits), (2 + 1 + 2, 2))
        self.assertEqual(len(cache), 1)
        del rt, outs
        import gc
        gc.collect()
        self.assertEqual(len(cache), 0)  # an entry lives only as long as its item


class TLSAndLimits(unittest.TestCase):
    """The session's side of TLS, pre-login caps, failed logins and slot names (bytes in, actions out)."""

    def test_ssl_request_with_tls_available_asks_the_driver_to_start_tls(self):
        from electric.postgres.publisher.session import StartTLS

        s = Session(FakeBackend(), 1, 2, tls_available=True)
        actions = s.feed(SSLRequest().encode())
        self.assertEqual(actions, [Send(b"S"), StartTLS()])
        self.assertEqual(s.tls_started(), [])
        self.assertTrue(s.tls_active)
        # Over TLS: a second SSLRequest is a protocol violation; GSSENC is still refused.
        self.assertEqual(s.feed(GSSENCRequest().encode()), [Send(b"N")])
        actions = s.feed(SSLRequest().encode())
        self.assertEqual(actions[-1], Disconnect("FATAL 08P01: SSLRequest over an established TLS connection"))

    def test_cleartext_behind_the_ssl_request_is_fatal(self):
        s = Session(FakeBackend(), 1, 2, tls_available=True)
        actions = s.feed(SSLRequest().encode() + b"\0\0")
        self.assertEqual(actions[-1], Disconnect("FATAL 08P01: received unencrypted data after SSL request"))
        self.assertNotIn(Send(b"S"), actions)

    def test_startup_without_tls_is_refused_when_tls_is_available(self):
        s = Session(FakeBackend(), 1, 2, tls_available=True)
        actions = s.feed(StartupMessage({"user": "postgres_1", "replication": "database"}).encode())
        self.assertEqual(actions[-1].reason, "FATAL 28000: Electric's port 5433 accepts only TLS connections:"
                                             " connect with sslmode=require or verify-full")

    def test_pre_login_caps_then_the_full_cap(self):
        from electric.postgres.publisher import session as sm

        s = new_session()
        s.feed(StartupMessage({"user": "postgres_1", "replication": "database"}).encode())
        self.assertEqual(s.parser.max_message_size, sm.MAX_SASL_MESSAGE)
        actions = s.feed(b"p" + (sm.MAX_SASL_MESSAGE + 5).to_bytes(4, "big"))
        self.assertEqual(actions[-1].reason, "FATAL 54000: frontend message type b'p' of 1025 bytes exceeds the"
                                             " limit of 1024 bytes")
        self.assertEqual(new_session("md5").parser.max_message_size, sm.MAX_PASSWORD_MESSAGE)
        c = Client(new_session())
        c.login()
        self.assertEqual(c.session.parser.max_message_size, sm.MAX_MESSAGE_SIZE)

    def test_wrong_password_reports_login_failed_without_the_password(self):
        from electric.postgres.publisher.session import LoginFailed

        c = Client(new_session())
        c.login(password="not-the-password")
        failed = of(c.actions, LoginFailed)
        self.assertEqual(failed, [LoginFailed("postgres_1", "SCRAM proof does not match (wrong password)")])

    def test_flooding_while_busy_is_cut_off(self):
        from electric.postgres.publisher import session as sm

        c = Client(new_session())
        c.login()
        c.session.state = sm.BUSY  # e.g. a COPY being written
        actions = c.session.feed(Query("SELECT 1").encode() * (sm.MAX_QUEUED + 1))
        self.assertEqual(actions[-1].reason, f"FATAL 54000: more than {sm.MAX_QUEUED} messages sent without"
                                             " waiting for the answers")

    def test_slot_refusal(self):
        from electric.postgres.publisher.session import slot_refusal

        connectors = ("postgres_1", "postgres_2")
        for ok in ("postgres_1", "pg_16397_sync_16385_7712374349014268656", "another", "x" * 63):
            self.assertIsNone(slot_refusal("postgres_1", ok, connectors), ok)
        err = slot_refusal("postgres_1", "postgres_2", connectors)
        self.assertEqual(err.sqlstate, "42501")
        for bad in ("", "Upper", "a-b", "x" * 64, 'a"b'):
            self.assertEqual(slot_refusal("postgres_1", bad, connectors).sqlstate, "42602", bad)
