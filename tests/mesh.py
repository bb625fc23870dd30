"""
Electric's Postgres side in process, over one test cluster: the embedded hub,
the port-5433 publisher on a free port and one ConnectorService per database
of that cluster.  Each connector gets its own slot name because the databases
share one server (slots are per server).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from typing import Dict, Optional, Sequence

from twisted.internet import defer, reactor

from electric.config import Config
from electric.hub.embedded import EmbeddedHub
from electric.hub.offsets import OffsetStore
from electric.postgres.source.connector import ConnectorService
from electric.postgres.publisher.apply_failures import ApplyFailureMonitor
from electric.postgres.publisher.credentials import SubscriberCredentials
from electric.postgres.publisher.quarantine import QuarantineStore
from electric.postgres.publisher.service import PublisherService
from electric.schema import SchemaRegistry
from tests.pgcluster import PgCluster
from tests.polling import wait_until


class InProcessMesh:
    """`start()` builds and starts everything and waits until every connector is ready; `stop()` undoes it."""

    def __init__(self, pg: PgCluster, names: Sequence[str], prefix: str = "electric-mesh", params: str = "",
                 env: Optional[Dict[str, str]] = None, watch_apply: bool = False):
        """
        `params`: query string added to every connector URL (e.g. ``sslmode=verify-full&sslrootcert=...``);
        `env`: more configuration for every part (e.g. the POSTGRES_REPLICATION_TLS_* variables);
        `watch_apply`: the publisher gets an `ApplyFailureMonitor` (``self.apply_monitor``) and its quarantine.
        """
        self.env = dict(env or {})
        self.pg = pg
        self.names = tuple(names)
        self.params = params
        self.tmp = tempfile.mkdtemp(prefix=prefix)
        self.hub = EmbeddedHub(os.path.join(self.tmp, "hub"), reactor, compact_interval=0)
        self.registry = SchemaRegistry()
        self.credentials = SubscriberCredentials(self.tmp, self.names)
        self.offsets = OffsetStore(os.path.join(self.tmp, "offsets.sqlite3"))
        config = dataclasses.replace(Config.from_environ(self.env), postgres_replication_port=0,
                                     listen_host="127.0.0.1")
        self.quarantine = self.apply_monitor = None
        if watch_apply:
            # One server: each database names its own slot, as the connectors' POSTGRES_SLOT does.
            everyone = Config.from_environ({**self.env, "CONNECTORS": ";".join(
                f"{n}={self.url(n)}{'&' if self.params else '?'}slot=slot_{n}" for n in self.names)})
            self.quarantine = QuarantineStore(os.path.join(self.tmp, "data"))
            self.apply_monitor = ApplyFailureMonitor(everyone, self.hub, self.registry, self.quarantine, reactor)
        self.publisher = PublisherService(config, self.hub, self.registry, self.credentials, self.offsets, reactor,
                                          apply_monitor=self.apply_monitor)
        self.connectors: Dict[str, ConnectorService] = {}

    @staticmethod
    def database(name: str) -> str:
        return f"{name}_db"

    def url(self, name: str) -> str:
        return (f"postgresql://electric:password@127.0.0.1:{self.pg.port}/{self.database(name)}"
                + (f"?{self.params}" if self.params else ""))

    @defer.inlineCallbacks
    def start(self):
        self.hub.startService()
        self.offsets.startService()
        self.credentials.startService()
        if self.apply_monitor is not None:
            self.quarantine.startService()
            self.apply_monitor.startService()
        self.publisher.startService()
        port = yield self.publisher.listening
        for name in self.names:
            config = Config.from_environ({
                **self.env,
                "CONNECTORS": f"{name}={self.url(name)}",
                "POSTGRES_SLOT": f"slot_{name}",
                "POSTGRES_REPLICATION_PORT": str(port.getHost().port),
                "ELECTRIC_DATA_DIR": self.tmp,
            })
            svc = ConnectorService(config, config.connectors[0], self.hub, self.registry, self.credentials,
                                   publisher_ready=self.publisher.when_listening, echo=self.publisher.echo)
            svc.startService()
            self.connectors[name] = svc
        for svc in self.connectors.values():
            yield wait_until(lambda svc=svc: svc.state == "ready", timeout=60, what=f"{svc.connector.name} ready")

    @defer.inlineCallbacks
    def stop(self):
        for name, svc in self.connectors.items():
            yield svc.stopService()
            self.pg.psql(f'ALTER SUBSCRIPTION "{name}" DISABLE', dbname=self.database(name), check=False)
        yield self.publisher.stopService()
        if self.apply_monitor is not None:
            self.apply_monitor.stopService()
            self.quarantine.stopService()
        yield self.offsets.stopService()
        yield self.hub.stopService()
        shutil.rmtree(self.tmp, True)
