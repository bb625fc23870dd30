"""
The service tree: one root MultiService, one named child per part.

`build_service(config)` only constructs objects, handing each part what it
needs as constructor arguments (no part looks anything up on the root);
nothing listens, connects or touches the disk until the root's startService
(twistd calls it, after daemonising).  Children start in the order they were
added, which is dependency order: the hub first (everything writes into it),
the offset store and the subscriber credentials (files the publisher, the
connectors and Satellite read), the HTTP API so /api/status answers while the
links come up, then the Postgres publisher, the connectors, Satellite and the
migrations.  They stop in reverse order, one after the other, so a connector
still flushing into the hub finds it open; each gets a bounded time so
SIGTERM ends the process promptly even when a peer hangs.

A component that cannot start (port taken, hub file unreadable) stops the
process with a non-zero exit status and one clear log line rather than
leaving a half-started service that answers /api/status.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from typing import Optional

from twisted.application import service
from twisted.internet import defer
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.python.failure import Failure

from electric.config import Config, ConfigError
from electric.http.status import HttpApi, HttpService
from electric.http.migrations import install_routes
from electric.http.metrics import install_routes as install_metrics_routes
from electric.http import quarantine as quarantine_routes
from electric.hub.embedded import EmbeddedHub
from electric.hub.offsets import OffsetStore
from electric.metrics import ElectricCollector, registry_for
from electric.migrations.migrator import Migrator
from electric.postgres.source.connector import ConnectorService
from electric.postgres.publisher.apply_failures import ApplyFailureMonitor
from electric.postgres.publisher.credentials import SubscriberCredentials
from electric.postgres.publisher.quarantine import QuarantineStore
from electric.postgres.publisher.service import PublisherService
from electric.satellite.service import SatelliteService
from electric.schema import SchemaRegistry

log = Logger(namespace="electric")

# Total time stopService may take before the remaining children are abandoned
# (SIGTERM must end the process within 5 s).
STOP_BUDGET = 4.0


def _exit_nonzero() -> None:
    """atexit hook: twistd exits 0 after any reactor stop; a failed start must not."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(1)


def exit_zero_on_sigterm(reactor) -> None:
    """
    Make SIGTERM a normal shutdown with exit status 0.

    twistd re-raises the terminating signal after the reactor stopped, so a
    container or supervisor sees "killed by SIGTERM" instead of a clean exit.
    Our handler replaces the reactor's (installed while it starts, hence
    callWhenRunning) and stops the reactor the same way, minus the re-raise.
    """

    def install():
        def on_sigterm(signum, frame):
            log.info("SIGTERM: shutting down")
            reactor.callFromThread(reactor.stop)

        signal.signal(signal.SIGTERM, on_sigterm)

    reactor.callWhenRunning(install)


class ElectricService(service.MultiService):
    """
    The root: starts its children in order and stops them in reverse.  It
    holds no shared objects; reach a part by its service name
    (``root.getServiceNamed("hub")``).

    A child that fails to start is logged and kept in `failure`; with
    `exit_on_failure` (set by the twistd plugin, never in tests sharing a
    reactor) it also stops the reactor and makes the process exit 1.
    """

    def __init__(self, reactor=None):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.failure: Optional[Failure] = None
        self.exit_on_failure = False
        self._stopping: Optional[defer.Deferred] = None
        # Set by the twistd plugin (electric.logs.observer): handed to twistd
        # as the application's ILogObserver when this service joins it.
        self.log_observer = None

    def setServiceParent(self, parent):
        if self.log_observer is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.log_observer)
        return super().setServiceParent(parent)

    def startService(self):
        service.Service.startService(self)
        self.failure = None
        self._stopping = None
        for child in list(self):
            if self.failure is not None:
                return
            try:
                child.startService()
            except Exception:
                self._fatal(child, Failure())
                return
            listening = getattr(child, "listening", None)
            if isinstance(listening, defer.Deferred):
                listening.addErrback(lambda f, child=child: self._fatal(child, f))
        if self.failure is None:
            log.info("electric started: {names}", names=", ".join(c.name for c in self))

    def _fatal(self, child, failure: Failure) -> None:
        if self.failure is not None:
            return None
        self.failure = failure
        log.critical("electric cannot start: {name}: {error}", name=child.name, error=failure.getErrorMessage())
        if not self.exit_on_failure:
            return None
        atexit.register(_exit_nonzero)
        if self.reactor.running:
            self.reactor.stop()
        else:
            self.reactor.callWhenRunning(self.reactor.stop)
        return None

    def stopService(self):
        if self._stopping is None:
            self._stopping = defer.ensureDeferred(self._stop_children())
        return self._stopping

    async def _stop_children(self):
        service.Service.stopService(self)
        deadline = self.reactor.seconds() + STOP_BUDGET
        for child in reversed(list(self)):
            if not child.running:
                continue
            d = defer.maybeDeferred(child.stopService)
            remaining = max(0.1, deadline - self.reactor.seconds())
            d.addTimeout(remaining, self.reactor)
            try:
                await d
            except defer.TimeoutError:
                log.warn("{name} did not stop within {t:.1f}s; abandoning it", name=child.name, t=remaining)
            except Exception:
                log.failure("{name} failed to stop cleanly", name=child.name, level=LogLevel.error)


def build_service(config: Config, reactor=None) -> ElectricService:
    """
    The whole service for `config`.  Raises ConfigError for configurations
    this build cannot run.  VAXINE_HOST set selects the Vaxine hub
    (`electric.vaxine.hub.VaxineHub`, its local copy in ELECTRIC_DATA_DIR),
    unset the embedded hub.

    Each part is built with the parts it uses and added to the root in
    start order; the root keeps nothing else.
    """
    root = ElectricService(reactor)
    reactor = root.reactor

    if config.embedded_hub:
        hub = EmbeddedHub(config.data_dir, reactor)
    else:
        from electric.vaxine.hub import VaxineHub
        hub = VaxineHub.from_config(config, reactor)
    offsets = OffsetStore(config.offset_storage_file)
    credentials = SubscriberCredentials(config.data_dir, [c.name for c in config.connectors])
    registry = SchemaRegistry()
    quarantine = QuarantineStore(config.data_dir)
    apply_monitor = ApplyFailureMonitor(config, hub, registry, quarantine, reactor)
    publisher = PublisherService(config, hub, registry, credentials, offsets, reactor, apply_monitor=apply_monitor)
    connectors = {
        c.name: ConnectorService(config, c, hub, registry, credentials,
                                 publisher_ready=publisher.when_listening, reactor=reactor, echo=publisher.echo)
        for c in config.connectors
    }
    satellite = SatelliteService(config, hub, registry, offsets, reactor)
    migrator = Migrator(config, connectors, notify_migration=satellite.notify_migration,
                        reactor=reactor, hub=hub, registry=registry)
    api = HttpApi(config, hub, connectors, vaxine=None if config.embedded_hub else hub)
    api.add_component("postgres_publisher", publisher)
    api.add_component("satellite", satellite)
    api.add_component("migrations", migrator)
    api.add_component("apply_failures", apply_monitor)
    api.add_connector_problems("apply_failure", apply_monitor.problem)
    install_routes(api.app, migrator)
    collector = ElectricCollector(config, hub=hub, connectors=connectors, publisher=publisher, satellite=satellite,
                                  migrator=migrator, api=api, apply_monitor=apply_monitor)
    install_metrics_routes(api.app, registry_for(collector))
    quarantine_routes.install_routes(api.app, apply_monitor)

    for child in (hub, offsets, credentials, quarantine, apply_monitor, HttpService(config, api, reactor), publisher,
                  *connectors.values(), satellite, migrator):
        child.setServiceParent(root)
    return root
