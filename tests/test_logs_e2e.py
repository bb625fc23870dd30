"""
What `twistd electric` logs, end to end, with LOG_FORMAT=json: a real
Postgres whose subscription streams from port 5433 over TLS, strangers
failing to log in there, Satellite clients with bad JWTs over wss://, a good
client coming and going, the HTTP API with a wrong and a right token, a table
skipped by design, and a SIGTERM.  Every line must be JSON carrying the
instance's identity and no secret of the configuration or of the peers; the
lines about a connector, a slot or a client name it as fields; a skipped
table is a warning and a clean shutdown logs no error.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
import urllib.error
import urllib.request

from twisted.internet import defer, threads
from twisted.trial import unittest

from electric.satellite import codec
from electric.satellite.auth import JWTAuth
from tests.electric_process import ElectricProcess
from tests.pgcluster import PgCluster
from tests.polling import wait_until
from tests.publisher_helpers import connect
from tests.satellite_helpers import WsClient, client_txn, drain_autobahn_timers, msg, relation
from tests.tls_helpers import TestCA

CONNECTOR = "logs_a"
PG_USER = "logs_owner"
PG_PASSWORD = "Pg-Password-Of-The-Logs-Test-41c7"
SIGNING_KEY = "Jwt-Signing-Key-Of-The-Logs-Test-0c5e9a7d31"
OTHER_KEY = "Some-Other-Signing-Key-Nobody-Configured-77"
API_TOKEN = "Api-Token-Of-The-Logs-Test-5d2b"
WRONG_5433_PASSWORD = "Wrong-5433-Password-93ab"
CLUSTER_ID = "logs-test.cluster"
INSTANCE_ID = "logs-test-instance-1.region-1"


class EverySecretStaysOut(unittest.TestCase):
    timeout = 300

    def setUp(self):
        self.ca = TestCA()
        self.addCleanup(self.ca.cleanup)
        self.files = self.ca.server_files(owner=None)
        self.pg = PgCluster().start()
        self.addCleanup(self.pg.destroy)
        self.pg.psql(f"CREATE ROLE {PG_USER} LOGIN SUPERUSER REPLICATION PASSWORD '{PG_PASSWORD}'",
                     dbname="postgres")
        self.pg.psql(f"CREATE DATABASE {CONNECTOR}_db OWNER {PG_USER}", dbname="postgres")
        self.pg.psql("CREATE TABLE public.items (id text PRIMARY KEY, content text);"
                     "CREATE TABLE public.nokey (v text)", dbname=f"{CONNECTOR}_db")
        url = f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{self.pg.port}/{CONNECTOR}_db"
        self.electric = ElectricProcess({CONNECTOR: url}, extra_env={
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "debug",
            "GLOBAL_CLUSTER_ID": CLUSTER_ID,
            "ELECTRIC_INSTANCE_ID": INSTANCE_ID,
            "SATELLITE_AUTH_SIGNING_KEY": SIGNING_KEY,
            "ELECTRIC_API_TOKEN": API_TOKEN,
            "POSTGRES_REPLICATION_TLS_CERT_FILE": self.files.cert,
            "POSTGRES_REPLICATION_TLS_KEY_FILE": self.files.key,
            "POSTGRES_REPLICATION_SSLROOTCERT": self.ca.ca_file,
            "WEBSOCKET_TLS_CERT_FILE": self.files.cert,
            "WEBSOCKET_TLS_KEY_FILE": self.files.key,
        })
        self.addCleanup(self.electric.kill)

    def http(self, path, token):
        request = urllib.request.Request(f"http://127.0.0.1:{self.electric.status_port}{path}",
                                         headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
        except OSError:
            return None, None

    def streaming(self):
        code, details = self.http("/api/status/details", API_TOKEN)
        if code != 200:
            return False
        slot = details["postgres_publisher"]["slots"].get(CONNECTOR)
        return bool(slot and slot["streaming"] and slot["tls"])

    @defer.inlineCallbacks
    def ws_auth(self, client_id, token):
        """A wss:// client sending SatAuthReq; the first message back (or None if closed at once) and the client."""
        client = WsClient(self.electric.ws_port, ca_file=self.ca.ca_file, host="localhost")
        yield client.connect()
        client.send(codec.auth_request(codec.ORIGINAL, client_id, token))
        try:
            reply = yield client.recv_message(codec.ORIGINAL)
        except Exception:
            reply = None
        return reply, client

    def lines(self):
        text = self.electric.log()
        events = []
        for line in text.splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                self.fail(f"not a JSON line: {line!r}")
        return text, events

    @defer.inlineCallbacks
    def test_real_links_log_fields_levels_and_no_secret(self):
        self.electric.start()
        yield threads.deferToThread(self.electric.wait_ready, 120)
        yield wait_until(lambda: threads.deferToThread(self.streaming), timeout=120,
                         what="the subscription streaming from port 5433 over TLS")

        # Strangers on port 5433: a connector's user with a wrong password, an unknown user.
        for user in (CONNECTOR, "mallory"):
            c = yield connect(self.electric.pg_port, user=user, password=WRONG_5433_PASSWORD,
                              tls_ca=self.ca.ca_file, host="localhost")
            self.assertEqual(c.error.sqlstate, "28P01")
            c.transport.loseConnection()

        # Satellite clients with bad tokens, then a good one that leaves normally.
        auth = JWTAuth(SIGNING_KEY, None)
        good, _ = auth.generate("alice")
        expired, _ = auth.generate("bob", now=time.time() - 3600)
        forged, _ = JWTAuth(OTHER_KEY, None).generate("carol")
        garbage = "Not-A-Jwt-Garbage-Token-6f1e"
        for n, token in enumerate((expired, forged, garbage)):
            reply, client = yield self.ws_auth(f"bad-client-{n}", token)
            self.assertEqual(codec.message_name(reply), "SatErrorResp")
            yield client.wait_closed()
        reply, client = yield self.ws_auth("logs-client-1", good)
        self.assertEqual(codec.message_name(reply), "SatAuthResp")
        yield client.recv_message(codec.ORIGINAL)  # SatInStartReplicationReq
        client.send(msg(codec.ORIGINAL, "SatInStartReplicationResp"))
        yield client.close()
        # Another client writes to a table nobody replicates: refused, and it says so.
        token, _ = auth.generate("dave")
        reply, writer = yield self.ws_auth("logs-client-2", token)
        self.assertEqual(codec.message_name(reply), "SatAuthResp")
        yield writer.recv_message(codec.ORIGINAL)
        writer.send(msg(codec.ORIGINAL, "SatInStartReplicationResp"))
        writer.send(relation(codec.ORIGINAL, 1, "nosuch", ["id"]))
        writer.send(client_txn(codec.ORIGINAL, b"L1", 1, ["1"]))
        self.assertEqual((yield writer.wait_closed()), 4008)

        # The HTTP API with a wrong and the right token.
        code, _ = yield threads.deferToThread(self.http, "/api/status/details", "Wrong-Api-Token-0000000")
        self.assertEqual(code, 401)
        code, details = yield threads.deferToThread(self.http, "/api/status/details", API_TOKEN)
        self.assertEqual(code, 200)
        self.assertEqual({k: details["instance"][k] for k in ("cluster_id", "instance_id")},
                         {"cluster_id": CLUSTER_ID, "instance_id": INSTANCE_ID})
        skipped = details["connectors"][CONNECTOR]["skipped_tables"]
        self.assertEqual([(s["table"], s["reason"]) for s in skipped], [("nokey", "table has no primary key")])

        yield wait_until(lambda: '"client disconnected"' in self.electric.log() or
                         "client disconnected" in self.electric.log(), timeout=30,
                         what="the good client's disconnection logged")
        code = yield threads.deferToThread(self.electric.stop, 30)
        self.assertEqual(code, 0, self.electric.log()[-3000:])
        yield drain_autobahn_timers()

        text, events = self.lines()
        self.assertGreater(len(events), 20)

        # Every line carries the instance's identity.
        self.assertEqual({(e["cluster_id"], e["instance_id"]) for e in events}, {(CLUSTER_ID, INSTANCE_ID)})

        # No secret anywhere: the configuration's, the peers', the TLS key's contents, the
        # subscription's 5433 password; and nothing needed hiding by the last-resort redactor.
        with open(self.files.key) as f:
            key_lines = [line for line in f.read().splitlines() if line and not line.startswith("-----")]
        with open(os.path.join(self.electric.workdir, "data", "subscriber_secret"), "rb") as f:
            subscriber_password = hmac.new(f.read(), CONNECTOR.encode(), hashlib.sha256).hexdigest()[:40]
        secrets = [PG_PASSWORD, SIGNING_KEY, OTHER_KEY, API_TOKEN, WRONG_5433_PASSWORD, "Wrong-Api-Token",
                   good, expired, forged, garbage, subscriber_password, *key_lines]
        for secret in secrets:
            self.assertNotIn(secret, text)
        for token in (good, expired, forged):
            self.assertNotIn(token.split(".")[2], text)  # not even a token's signature
        self.assertNotIn("***", text)
        self.assertIn(self.files.cert, text)  # paths are fine to show

        def where(level=None, **fields):
            return [e for e in events if (level is None or e["level"] == level)
                    and all(e.get(k) == v for k, v in fields.items())]

        # The connector's lines name it; its skipped table is a warning.
        connector_lines = [e for e in events if e["namespace"] == "electric.postgres.source.connector"]
        self.assertTrue(connector_lines)
        self.assertEqual({e.get("connector") for e in connector_lines}, {CONNECTOR})
        [skip] = [e for e in events if "not replicating table" in e["message"]]
        self.assertEqual((skip["level"], skip["connector"], skip["table"], skip["reason"]),
                         ("warn", CONNECTOR, "nokey", "table has no primary key"))

        # Port 5433: the apply slot's lines name slot, connector and peer; failed logins are warnings with the peer.
        [started] = [e for e in where("info", slot=CONNECTOR, connector=CONNECTOR) if "streaming from" in e["message"]]
        self.assertTrue(started["peer"].startswith("127.0.0.1:"), started)
        failed = [e for e in events if "5433 login failed" in e["message"]]
        self.assertEqual([e["level"] for e in failed], ["warn", "warn"])
        self.assertTrue(all(e["peer"].startswith("127.0.0.1:") for e in failed), failed)
        self.assertIn("user 'logs_a'", failed[0]["message"])
        self.assertIn("user 'mallory'", failed[1]["message"])

        # Satellite: bad tokens are warnings naming the peer and the reason; the good client's
        # lines carry its client id and user id, and its leaving is info.
        refused = [e for e in events if "authentication failed" in e["message"]]
        self.assertEqual(len(refused), 3, refused)
        self.assertEqual({e["level"] for e in refused}, {"warn"})
        self.assertTrue(all(e.get("peer") for e in refused), refused)
        self.assertIn("token expired", refused[0]["message"])
        self.assertIn("token signature does not verify", refused[1]["message"])
        client_lines = where(client_id="logs-client-1")
        self.assertTrue(any("authenticated" in e["message"] for e in client_lines), client_lines)
        self.assertTrue(all(e["user_id"] == "alice" and e.get("peer") for e in client_lines), client_lines)
        [left] = [e for e in client_lines if "client disconnected" in e["message"]]
        self.assertEqual(left["level"], "info")
        [refusal] = [e for e in events if "refused a transaction" in e["message"]]
        self.assertEqual((refusal["level"], refusal["client_id"], refusal["user_id"]), ("warn", "logs-client-2", "dave"))
        self.assertTrue(refusal["peer"].startswith("127.0.0.1:"), refusal)

        # A clean shutdown: no error, no "protocol violation"; the stream ends with the reason, at info.
        self.assertNotIn("protocol violation", text)
        sigterm = next(i for i, e in enumerate(events) if e["message"] == "SIGTERM: shutting down")
        after = events[sigterm:]
        self.assertEqual([e for e in after if e["level"] in ("error", "critical")], [])
        stopped = [e for e in after if e.get("slot") == CONNECTOR and "stream stopped" in e["message"]]
        self.assertTrue(stopped, after)
        self.assertEqual({e["level"] for e in stopped}, {"info"})
        self.assertIn("Electric is shutting down", stopped[0]["message"])
