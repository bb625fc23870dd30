"""
The service tree: one root MultiService, one named child per external link.

`build_service(config)` only constructs objects; nothing listens, connects or
touches the disk until the root's startService (twistd calls it).  Children
start in the order they were added, which is dependency order: the hub first
(everything writes into it), the HTTP API next so /api/status answers while
the links come up, then the Postgres publisher, the connectors and Satellite.
They stop in reverse order, one after the other, so a connector still
flushing into the hub finds it open; each gets a bounded time so SIGTERM ends
the process promptly even when a peer hangs.

A component that cannot start (port taken, hub file unreadable) stops the
process with a non-zero exit status and one clear log line rather than
leaving a half-started service that answers /api/status.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from typing import Dict, Optional

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from electric.config import Config, ConfigError
from electric.http.status import HttpApi, HttpService
from electric.http.migrations import install_routes
from electric.hub.embedded import EmbeddedHub
from electric.hub.offsets import OffsetStore
from electric.migrations.migrator import Migrator
from electric.postgres.source.connector import add_to_service as add_connectors
from electric.postgres.publisher.credentials import SubscriberCredentials
from electric.postgres.publisher.service import PublisherService
from electric.satellite.service import SatelliteService
from electric.schema import SchemaRegistry

log = Logger(namespace="electric")

VAXINE_UNAVAILABLE = (
    "VAXINE_HOST is set: Vaxine hub is not available in this build; unset VAXINE_HOST to use the embedded hub"
)

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
    The root.  `hub`, `api` and `connectors` are kept as attributes so the
    `_add_*` helpers (and tests) can reach the shared objects.

    A child that fails to start is logged and kept in `failure`; with
    `exit_on_failure` (set by the twistd plugin, never in tests sharing a
    reactor) it also stops the reactor and makes the process exit 1.
    """

    def __init__(self, config: Config, reactor=None):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.reactor = reactor
        self.hub = None
        self.api: Optional[HttpApi] = None
        self.connectors: Dict[str, object] = {}
        self.registry = None
        self.credentials = None
        self.offsets = None
        self.publisher = None
        self.satellite = None
        self.migrator = None
        self.failure: Optional[Failure] = None
        self.exit_on_failure = False
        self._stopping: Optional[defer.Deferred] = None

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
                log.failure("{name} failed to stop cleanly", name=child.name)


# -- one helper per component; build_service calls them in dependency order --


def _add_hub(root: ElectricService) -> EmbeddedHub:
    config = root.config
    if not config.embedded_hub:
        raise ConfigError([VAXINE_UNAVAILABLE])
    hub = EmbeddedHub(config.data_dir, root.reactor)
    hub.setServiceParent(root)
    root.hub = hub
    return hub


def _add_http(root: ElectricService) -> HttpApi:
    """Status API; other components add routes to `root.api.app` before startService."""
    api = HttpApi(root.config, root.hub, root.connectors)
    HttpService(root.config, api, root.reactor).setServiceParent(root)
    root.api = api
    return api


class _OffsetStoreService(service.Service):
    """
    Owns the offset store file (OFFSET_STORAGE_FILE).  Added right after the
    hub so it stops after everything that writes client and slot positions.
    """

    name = "offsets"

    def __init__(self, path: str):
        self.path = path
        self.store = OffsetStore(path)

    def stopService(self):
        super().stopService()
        self.store.close()


def _add_offsets(root: ElectricService) -> OffsetStore:
    holder = _OffsetStoreService(root.config.offset_storage_file)
    holder.setServiceParent(root)
    root.offsets = holder.store
    return holder.store


def _add_publisher(root: ElectricService) -> PublisherService:
    """Port 5433: added before the connectors, which enable their subscriptions once it listens."""
    config = root.config
    root.registry = SchemaRegistry()
    root.credentials = SubscriberCredentials(config.data_dir, [c.name for c in config.connectors])
    publisher = PublisherService(config, root.hub, root.registry, root.credentials, root.offsets, root.reactor)
    publisher.setServiceParent(root)
    root.publisher = publisher
    root.api.add_component("postgres_publisher", publisher)
    return publisher


def _add_connectors(root: ElectricService) -> None:
    add_connectors(root, registry=root.registry, credentials=root.credentials,
                   publisher_ready=root.publisher.listening)


def _add_satellite(root: ElectricService) -> SatelliteService:
    satellite = SatelliteService(root.config, root.hub, root.registry, root.offsets, root.reactor)
    satellite.setServiceParent(root)
    root.satellite = satellite
    root.api.add_component("satellite", satellite)
    return satellite


def _add_migrations(root: ElectricService) -> Migrator:
    migrator = Migrator(root.config, root.connectors, notify_migration=root.satellite.notify_migration,
                        reactor=root.reactor, hub=root.hub, registry=root.registry)
    migrator.setServiceParent(root)
    install_routes(root.api.app, migrator)
    root.api.add_component("migrations", migrator)
    root.migrator = migrator
    return migrator


def build_service(config: Config, reactor=None) -> ElectricService:
    """
    The whole service for `config`.  Raises ConfigError for configurations
    this build cannot run (VAXINE_HOST set).

    Components not yet wired here are added the same way: construct with the
    shared objects (root.hub, root.connectors, a SchemaRegistry, credentials,
    offsets), `setServiceParent(root)`, and register connectors in
    `root.connectors` so /api/status lists them.
    """
    root = ElectricService(config, reactor)
    _add_hub(root)
    _add_offsets(root)
    _add_http(root)
    _add_publisher(root)
    _add_connectors(root)
    _add_satellite(root)
    _add_migrations(root)
    return root
