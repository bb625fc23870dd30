"""
Every listener over TLS from one throwaway CA, end to end: two real Postgres
databases whose subscriptions (written by Electric's setup) connect to port
5433 with sslmode=verify-full and replicate both ways, the real electric-sql
client over wss:// (trusting the CA through NODE_EXTRA_CA_CERTS), and the
HTTP API over https://.
"""

from __future__ import annotations

import dataclasses
import json
import os

from twisted.internet import defer, reactor
from twisted.internet.ssl import Certificate
from twisted.trial import unittest
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, readBody

from electric.http.status import HttpApi, HttpService
from electric.satellite.service import SatelliteService
from electric.tls import TLSFiles
from tests.mesh import InProcessMesh
from tests.node_client import ITEMS_SQLITE, NodeClient, ensure_installed
from tests.pgcluster import PgCluster
from tests.publisher_helpers import subscriber_errors
from tests.satellite_helpers import drain_autobahn_timers, eventually, satellite_config
from tests.tls_helpers import TestCA

NAMES = ("tls_a", "tls_b")


class EverythingOverTLS(unittest.TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def setUp(self):
        ensure_installed()
        self.ca = TestCA()
        self.addCleanup(self.ca.cleanup)
        # Electric runs as this test process: the key is for us (as root we can
        # read a postgres-owned one too, but there is no need).
        self.files = self.ca.server_files(owner=None)
        self.pg = PgCluster().start()
        self.addCleanup(self.pg.destroy)
        for name in NAMES:
            self.pg.psql(f"CREATE DATABASE {name}_db", dbname="postgres")
            self.sql(name, "CREATE TABLE public.items (id text PRIMARY KEY, content text, n int4,"
                           " electric_user_id text)")
        env = {
            "POSTGRES_REPLICATION_TLS_CERT_FILE": self.files.cert,
            "POSTGRES_REPLICATION_TLS_KEY_FILE": self.files.key,
            # The apply workers run on the Postgres server: this path is read there.
            "POSTGRES_REPLICATION_SSLROOTCERT": self.ca.ca_file,
        }
        self.mesh = InProcessMesh(self.pg, NAMES, prefix="electric-tls-e2e", env=env)
        self.addCleanup(self.mesh.stop)
        yield self.mesh.start()
        tls = TLSFiles(self.files.cert, self.files.key)
        self.satellite = SatelliteService(satellite_config(websocket_tls=tls), self.mesh.hub, self.mesh.registry,
                                          self.mesh.offsets, reactor=reactor)
        self.satellite.startService()
        yield self.satellite.listening
        http_config = dataclasses.replace(satellite_config(), status_port=0, status_tls=tls)
        api = HttpApi(http_config, self.mesh.hub, self.mesh.connectors)
        api.add_component("postgres_publisher", self.mesh.publisher)
        self.http = HttpService(http_config, api, reactor)
        self.http.startService()
        yield self.http.listening
        self.nodes = []
        self.addCleanup(self._stop)

    @defer.inlineCallbacks
    def _stop(self):
        for node in self.nodes:
            yield node.kill()
        yield self.http.stopService()
        yield self.satellite.stopService()
        yield drain_autobahn_timers()

    def sql(self, name, text):
        return self.pg.psql(text, dbname=f"{name}_db").strip()

    def rows(self, name):
        return self.sql(name, "SELECT id, content, n FROM public.items ORDER BY id").splitlines()

    def both(self, expected, message):
        return eventually(lambda: all(self.rows(n) == expected for n in NAMES), timeout=90, message=message)

    @defer.inlineCallbacks
    def https_json(self, path):
        with open(self.ca.ca_file, "rb") as f:
            policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(f.read()))
        agent = Agent(reactor, contextFactory=policy)
        response = yield agent.request(b"GET", f"https://127.0.0.1:{self.http.port.getHost().port}{path}".encode())
        body = yield readBody(response)
        return response.code, json.loads(body)

    @defer.inlineCallbacks
    def test_subscribers_client_and_api_over_tls(self):
        a, b = NAMES
        # The subscriptions Electric wrote verify its certificate against the CA.
        for name in NAMES:
            conninfo = self.sql(name, f"SELECT subconninfo FROM pg_subscription WHERE subname = '{name}'")
            self.assertIn("sslmode=verify-full", conninfo)
            self.assertIn(f"sslrootcert={self.ca.ca_file}", conninfo)
        self.sql(a, "INSERT INTO public.items VALUES ('1', 'from a', 1)")
        yield self.both(["1|from a|1"], "a's row in both databases")
        self.sql(b, "UPDATE public.items SET content = 'changed on b' WHERE id = '1'")
        yield self.both(["1|changed on b|1"], "b's update in both databases")
        # Both apply workers stream over TLS.
        slots = self.mesh.publisher.status()["slots"]
        self.assertEqual({n: (slots[n]["streaming"], slots[n]["tls"]) for n in NAMES},
                         {n: (True, True) for n in NAMES})

        # The HTTP API over https://.
        code, status = yield self.https_json("/api/status")
        self.assertEqual((code, status["connectors"]), (200, {n: True for n in NAMES}))
        code, details = yield self.https_json("/api/status/details")
        self.assertTrue(details["postgres_publisher"]["tls"])
        self.assertEqual(details["postgres_publisher"]["failed_logins"], 0)

        # The real client over wss://, trusting the CA through NODE_EXTRA_CA_CERTS.
        node = NodeClient(os.path.join(self.mesh.tmp, "client.db"), self.satellite.port, "alice",
                          tables=(ITEMS_SQLITE,), ca_file=self.ca.ca_file)
        self.nodes.append(node)
        yield node.start()

        @defer.inlineCallbacks
        def client_rows():
            rows = yield node.query("SELECT id, content, n FROM items ORDER BY id")
            return [f"{r['id']}|{r['content']}|{r['n']}" for r in rows]

        yield eventually(lambda: client_rows().addCallback(lambda r: r == ["1|changed on b|1"]), timeout=60,
                         message="the Postgres row in the client")
        yield node.execute("INSERT INTO items (id, content, n) VALUES (?, ?, ?)", "c1", "from the client", 5)
        yield self.both(["1|changed on b|1", "c1|from the client|5"], "the client's row in both databases")
        self.assertEqual(node.crashes(), [])
        self.assertEqual(subscriber_errors(self.pg), [])
