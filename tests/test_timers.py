"""
Timers driven by `task.Clock`, not by waiting: a connector stopped during its
retry backoff and the hub's periodic compaction.  (The connector's retry
delays, the publisher's keepalives, sender timeout and authentication
deadline and the Satellite heartbeat and deadlines are tested the same way
beside the rest of their service: test_pg_connector_retry,
test_pg_publisher_server, test_pg_publisher_limits, test_satellite_transport.)

Everything else is real: the connector really fails to reach a port nobody
listens on, the hub really compacts its SQLite log.
"""

from __future__ import annotations

import shutil
import tempfile

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from electric.config import Config
from electric.hub.embedded import EmbeddedHub
from electric.postgres.source.connector import ConnectorService, retry_policy
from electric.schema import SchemaRegistry
from tests.hub_helpers import txn, up
from tests.pgcluster import free_port
from tests.polling import wait_until


class TempDir:
    def tempdir(self):
        path = tempfile.mkdtemp(prefix="electric-timers-")
        self.addCleanup(shutil.rmtree, path, True)
        return path


class ConnectorBackoff(TempDir, unittest.TestCase):
    """(The retry delays themselves: test_pg_connector_retry.)"""

    timeout = 60

    @defer.inlineCallbacks
    def test_stop_during_backoff_cancels_the_retry(self):
        port = free_port()  # nothing listens there: every attempt fails at once
        config = Config.from_environ({"CONNECTORS": f"pg=postgresql://u:pw@127.0.0.1:{port}/db?sslmode=disable"})
        clock = task.Clock()
        service = ConnectorService(config, config.connectors[0], hub=None, registry=SchemaRegistry(),
                                   credentials=None, clock=clock, retry_delay=retry_policy(jitter=lambda: 0.0))
        service.startService()
        self.addCleanup(service.stopService)
        yield wait_until(lambda: service.phase == "backoff" and clock.getDelayedCalls(), what="a backoff")
        yield service.stopService()
        self.assertEqual(service.phase, "stopped")
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(60)
        self.assertEqual(service.phase, "stopped")


class HubCompactionInterval(TempDir, unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_compacts_once_per_interval(self):
        clock = task.Clock()
        hub = EmbeddedHub(self.tempdir(), reactor, compact_interval=30.0, retain=5, clock=clock)
        hub.startService()
        self.addCleanup(hub.stopService)
        for i in range(20):
            yield hub.append(txn(up("items", i, v=str(i))))
        clock.advance(29.9)
        self.assertEqual((hub.status()["horizon"], hub.status()["compactions"]), (0, 0))
        clock.advance(0.1)  # the first interval: everything but the last `retain` entries goes
        yield wait_until(lambda: hub.status()["compactions"] == 1, what="the first compaction")
        self.assertEqual(hub.status()["horizon"], 15)
        self.assertEqual(hub.status()["log_length"], 5)
        for i in range(20, 30):
            yield hub.append(txn(up("items", i, v=str(i))))
        clock.advance(30.0)
        yield wait_until(lambda: hub.status()["compactions"] == 2, what="the second compaction")
        self.assertEqual(hub.status()["horizon"], 25)
        yield hub.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])  # stopping the hub stops its timer

