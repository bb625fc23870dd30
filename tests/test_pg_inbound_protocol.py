"""
The replication client protocol against a real Postgres 15: every password
method it must speak, the server's refusal text, and keepalive replies that
keep an idle stream alive past wal_sender_timeout.
"""

from __future__ import annotations

import os

from twisted.internet import defer, reactor
from twisted.trial import unittest

from electric.postgres.protocol import pgoutput
from electric.postgres.source import replication
from electric.postgres.protocol.lsn import parse_lsn
from tests.pgcluster import DATABASE, PgCluster
from tests.test_pg_inbound import wait_until

_cluster = None

ROLES = {"trust_user": "trust", "clear_user": "password", "md5_user": "md5", "scram_user": "scram-sha-256"}


def cluster() -> PgCluster:
    global _cluster
    if _cluster is None:
        pg = PgCluster(extra_conf=["wal_sender_timeout = '2s'"]).start()
        for role, method in ROLES.items():
            enc = "md5" if method == "md5" else "scram-sha-256"
            pg.psql(f"SET password_encryption = '{enc}'; CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'pw_{role}'")
        hba = os.path.join(pg.datadir, "pg_hba.conf")
        with open(hba) as f:
            original = f.read()
        lines = "".join(f"host all {role} 127.0.0.1/32 {method}\n" for role, method in ROLES.items())
        with open(hba, "w") as f:
            f.write(lines + original)
        pg.psql("SELECT pg_reload_conf()")
        pg.psql("CREATE PUBLICATION pub FOR ALL TABLES; CREATE TABLE t (id int PRIMARY KEY)")
        pg.psql("SELECT pg_create_logical_replication_slot('proto_slot', 'pgoutput')")
        _cluster = pg
    return _cluster


def tearDownModule():
    global _cluster
    if _cluster is not None:
        _cluster.destroy()
        _cluster = None


class Recorder:
    """A consumer that acknowledges every commit as soon as it sees it."""

    def __init__(self):
        self.messages = []
        self.keepalives = 0
        self.flushed = 0
        self.client = None

    def stream_started(self, client):
        self.client = client

    def xlog_data(self, wal_start, wal_end, data):
        msg = pgoutput.decode(data)
        self.messages.append(msg)
        if isinstance(msg, pgoutput.Commit):
            self.flushed = msg.end_lsn
            self.client.send_status(self.flushed)

    def keepalive(self, wal_end):
        self.keepalives += 1
        return self.flushed


class ProtocolTests(unittest.TestCase):
    def setUp(self):
        self.pg = cluster()

    @defer.inlineCallbacks
    def connect(self, user, password, slot="proto_slot"):
        rec = Recorder()
        client = replication.ReplicationClient(user, password, DATABASE, slot, "pub", rec, label="test")
        try:
            yield replication.connect(reactor, "127.0.0.1", self.pg.port, client, timeout=5)
        finally:
            self.addCleanup(client.close)
        return client, rec

    @defer.inlineCallbacks
    def test_every_password_method_streams(self):
        for role in ROLES:
            client, rec = yield self.connect(role, f"pw_{role}")
            self.assertEqual(client.state, "streaming", role)
            self.assertEqual(len(client.system), 4, role)
            self.assertEqual(client.system[3], DATABASE, role)
            client.close()
            yield client.done
            # The slot is free again before the next login uses it.
            yield wait_until(lambda: self.pg.psql(
                "SELECT active FROM pg_replication_slots WHERE slot_name = 'proto_slot'").strip() == "f")

    @defer.inlineCallbacks
    def test_wrong_password_is_reported_with_server_text(self):
        for role in ("clear_user", "md5_user", "scram_user"):
            with self.assertRaises(replication.ReplicationError) as cm:
                yield self.connect(role, "wrong")
            self.assertIn(f'password authentication failed for user "{role}"', str(cm.exception))

    @defer.inlineCallbacks
    def test_missing_slot_is_reported(self):
        with self.assertRaises(replication.ReplicationError) as cm:
            yield self.connect("scram_user", "pw_scram_user", slot="no_such_slot")
        self.assertIn('replication slot "no_such_slot" does not exist', str(cm.exception))

    @defer.inlineCallbacks
    def test_keepalives_keep_idle_stream_and_flush_reaches_slot(self):
        client, rec = yield self.connect("scram_user", "pw_scram_user")
        self.pg.psql("INSERT INTO t VALUES (1)")
        yield wait_until(lambda: any(isinstance(m, pgoutput.Commit) for m in rec.messages))
        # wal_sender_timeout is 2 s: an unanswered server would have dropped
        # us by now; the server asks for replies and gets them.
        yield wait_until(lambda: rec.keepalives >= 3, timeout=30, what="several keepalives")
        self.assertEqual(client.state, "streaming")

        def slot_confirmed():
            text = self.pg.psql(
                "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'proto_slot'").strip()
            return text if parse_lsn(text) >= rec.flushed else None

        # The walsender takes our status update in its own time: wait for it, not for a reactor turn.
        confirmed = yield wait_until(slot_confirmed, what="our flush position in the slot")
        self.assertGreaterEqual(parse_lsn(confirmed), rec.flushed)
        self.assertNotIn("terminating walsender process due to replication timeout", self.pg.log())
