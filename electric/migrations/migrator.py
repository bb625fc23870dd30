"""
The `Migrator`: applies a migration to connectors and keeps replication going.

`Migrator` coordinates: it checks a request completely (name, file, known
connector, connector ready) before any database sees it, applies the file
through `electric.migrations.migration.MigrationDatabase` (file + record in
one transaction), then has the connector refresh (registry, upsert triggers
on new tables, ``REFRESH PUBLICATION``) and tells Satellite clients.  It
never disables a subscription, so a failed migration leaves replication
exactly as it was (the original disabled first and stayed disabled after an
error).  The HTTP routes that drive it are in `electric.http.migrations`.
"""

from __future__ import annotations

import uuid
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger, LogLevel

from electric.hub.interface import CHUNK_CHANGES, RESEND, RowChange, Transaction
from electric.migrations.migration import (
    AlreadyMigrated,
    AppliedMigration,
    ApplyResult,
    InvalidState,
    Migration,
    MigrationDatabase,
    MigrationError,
    MigrationSource,
    RefreshFailed,
    UnknownConnector,
    validate_version,
)
from electric.schema import SchemaRegistry

log = Logger(namespace="electric.migrations.migrator")

# ConnectorService states in which the database is set up and its stream is
# live ("streaming" = the subscription back to Electric is not enabled yet;
# refresh() copes with that).  Anything else (init, setup, backoff) means
# setup may be introspecting right now, so a migration would race it.
MIGRATABLE_STATES = frozenset({"ready", "streaming"})


class Migrator(Service):
    """
    Applies migrations to the configured Postgres databases, one at a time
    per database, and remembers what each database has applied so that a
    database lagging behind the others is visible (``pending_migrations``).

    `connectors` maps connector name to its `ConnectorService`, or anything
    with a ``state`` word and ``refresh()`` returning a Deferred; the mapping
    is read on every request.  `notify_migration` (optional, e.g.
    ``SatelliteService.notify_migration``) is called as
    ``notify_migration(old_version, old_hash, new_version, new_hash)`` once
    per migration, after the first database has applied it and refreshed.
    With `hub` and `registry`, rows of tables a migration widened are re-sent
    (see `_resend_widened`); `registry` tells which columns each database has.
    """

    name = "migrations"

    def __init__(self, config, connectors: Mapping[str, object],
                 notify_migration: Optional[Callable[..., object]] = None,
                 source: Optional[MigrationSource] = None,
                 refresh_timeout: float = 120.0, poll_interval: float = 30.0,
                 lock_timeout_ms: int = 30000, reactor=None, hub=None,
                 registry: Optional[SchemaRegistry] = None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.config = config
        self.connectors = connectors
        self.source = source or MigrationSource.from_config(config)
        self.notify_migration = notify_migration
        self.hub = hub
        self.registry = registry
        self.refresh_timeout = refresh_timeout
        self.poll_interval = poll_interval
        self.lock_timeout_ms = lock_timeout_ms
        self.databases: Dict[str, MigrationDatabase] = {}
        self._locks: Dict[str, defer.DeferredLock] = {}
        self._applied: Dict[str, List[AppliedMigration]] = {}
        self._notified: set = set()
        self._loop: Optional[task.LoopingCall] = None
        self._loop_done: Optional[defer.Deferred] = None
        self.failed_applies = 0  # migrations a database refused or failed (since start)

    # -- service --

    def startService(self):
        super().startService()
        if self.poll_interval:
            self._loop = task.LoopingCall(self._poll)
            self._loop.clock = self.reactor
            self._loop_done = self._loop.start(self.poll_interval, now=True)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return defer.succeed(None)

    def _poll(self):
        d = self.reload()
        d.addErrback(lambda f: log.failure("reloading applied migrations failed", f))
        return d

    # -- queries --

    def names(self) -> List[str]:
        return sorted(self.connectors)

    def database(self, name: str) -> MigrationDatabase:
        """The migration session factory for connector `name` (its DSN comes from the config)."""
        db = self.databases.get(name)
        if db is None:
            try:
                dsn = self.config.connector(name).dsn()
            except KeyError:
                raise UnknownConnector(f"connector {name!r} is not in CONNECTORS", origin=name) from None
            db = MigrationDatabase(name, dsn, lock_timeout_ms=self.lock_timeout_ms, reactor=self.reactor)
            self.databases[name] = db
        return db

    def _check_connector(self, name: str, vsn: Optional[str] = None):
        if name not in self.connectors:
            raise UnknownConnector(f"no connector named {name!r} (known: {', '.join(self.names()) or 'none'})",
                                   vsn, name)
        return self.connectors[name]

    @defer.inlineCallbacks
    def reload(self, names: Optional[Iterable[str]] = None):
        """Re-read electric.migrations of each database; unreachable ones keep their last known list."""
        names = list(names) if names is not None else self.names()

        @defer.inlineCallbacks
        def one(name):
            try:
                rows = yield self.database(name).applied()
            except MigrationError as e:
                log.warn("cannot read applied migrations of {connector}: {error}", connector=name, error=str(e))
                return
            self._applied[name] = rows

        yield defer.gatherResults([one(n) for n in names], consumeErrors=True)
        return {n: list(self._applied.get(n, [])) for n in names}

    def applied(self, name: str) -> Optional[List[AppliedMigration]]:
        """The last known applied migrations of `name`, newest first (None if never read)."""
        rows = self._applied.get(name)
        return None if rows is None else list(rows)

    def pending_migrations(self, name: str) -> List[str]:
        """Versions another database has applied and `name`'s database has not (name order)."""
        own = self._applied.get(name)
        if own is None:
            return []
        mine = {m.version for m in own}
        others = set()
        for other, rows in self._applied.items():
            if other != name:
                others.update(m.version for m in rows)
        return sorted(others - mine)

    def status(self) -> Dict[str, Dict[str, object]]:
        """Per connector: latest known version and pending migrations (for the status API)."""
        out = {}
        for name in self.names():
            rows = self._applied.get(name)
            out[name] = {
                "latest": rows[0].version if rows else None,
                "pending_migrations": self.pending_migrations(name),
            }
        return out

    def metrics(self) -> dict:
        """
        Plain numbers for /metrics (`electric.metrics`): per connector the
        number of `pending` migrations (applied elsewhere, not in its
        database), and `errors` by kind: ``migration_failed`` (a migration
        a database did not apply; asking again for one it has is not
        counted).
        """
        return {
            "pending": {name: len(self.pending_migrations(name)) for name in self.names()},
            "errors": {"migration_failed": self.failed_applies},
        }

    def _entry(self, name: str):
        rows = self._applied.get(name)
        pending = self.pending_migrations(name)
        if rows:
            entry = rows[0].to_json(name)
        elif pending:
            entry = {"applied_at": None, "hash": None, "origin": name, "vsn": None}
        else:
            return "unknown"
        if pending:
            entry["pending_migrations"] = pending
        return entry

    @defer.inlineCallbacks
    def migrations_json(self):
        """Body of GET /api/migrations: each connector's latest migration, name order."""
        yield self.reload()
        return [self._entry(n) for n in self.names()]

    @defer.inlineCallbacks
    def connector_json(self, name: str):
        """Body of GET /api/migrations/<name> ("unknown" for an unknown connector, as the original)."""
        if name not in self.connectors:
            return "unknown"
        yield self.reload()
        return self._entry(name)

    # -- applying --

    def prepare(self, vsn) -> Migration:
        """Check `vsn` and read its file; raises MigrationError (nothing touched)."""
        validate_version(vsn)
        return self.source.load(vsn)

    @defer.inlineCallbacks
    def apply(self, name: str, vsn) -> ApplyResult:
        """
        Apply migration `vsn` to connector `name`'s database, then refresh
        that connector.  Fires with the ApplyResult; fails with a
        MigrationError whose ``status`` is the HTTP status to answer.
        """
        validate_version(vsn)
        self._check_connector(name, vsn)
        migration = self.prepare(vsn)
        lock = self._locks.setdefault(name, defer.DeferredLock())
        result = yield lock.run(self._apply_locked, name, migration)
        return result

    @defer.inlineCallbacks
    def _apply_locked(self, name: str, migration: Migration):
        connector = self.connectors[name]
        state = connector.state
        if state not in MIGRATABLE_STATES:
            raise InvalidState(state, migration.version, name)
        before = self._column_sets(name)
        try:
            result = yield self.database(name).apply(migration)
        except MigrationError as e:
            if not isinstance(e, AlreadyMigrated):  # applying it again is an answer, not a failure
                self.failed_applies += 1
            e.vsn = e.vsn or migration.version
            e.origin = e.origin or name
            # Applied already is the answer to a repeated request, not a problem.
            log.emit(LogLevel.info if isinstance(e, AlreadyMigrated) else LogLevel.warn,
                     "migration {vsn} not applied to {connector}: {error}",
                     vsn=migration.version, connector=name, error=str(e))
            raise
        self._applied[name] = [result.applied] + [
            m for m in self._applied.get(name, []) if m.version != result.applied.version
        ]
        yield self._refresh(name, connector, migration)
        yield self._resend_widened(name, before, self._column_sets(name))
        self._notify(result, migration)
        return result

    def _column_sets(self, origin: str) -> Dict[Tuple[str, str], frozenset]:
        """Each table's column names as `origin`'s database defines them (from the registry)."""
        registry = self.registry
        if registry is None:
            return {}
        return {t.qualified: frozenset(t.column_names) for t in registry.database_tables(origin)
                for t in [registry.database_table(origin, t.schema, t.name) or t]}

    @defer.inlineCallbacks
    def _resend_widened(self, name, before, after):
        """
        A table that gained columns in this database may have rows whose new
        columns other replicas filled while this one could not store them.
        Re-send those rows' current state to every replica (a RESEND changes
        nothing in the hub, so racing writes are safe); this database's apply
        worker then fills the columns in.
        """
        widened = sorted(t for t, cols in after.items() if t in before and not cols <= before[t])
        if self.hub is None or not widened:
            return
        # Chunk by chunk from a snapshot reader: one small RESEND transaction
        # per chunk, so a table of any size costs one chunk of memory.
        reader = yield self.hub.snapshot(widened)
        n = 0
        try:
            while True:
                rows = yield reader.next(CHUNK_CHANGES)
                if not rows:
                    break
                yield self.hub.append(Transaction(
                    origin="electric:migration",
                    origin_id=f"{name}:{uuid.uuid4()}".encode(),
                    commit_timestamp=int(self.reactor.seconds() * 1_000_000),
                    changes=tuple(RowChange(r.schema, r.table, RESEND, tuple(r.key)) for r in rows if not r.deleted),
                ))
                n += len(rows)
        finally:
            reader.close()
        log.info("migration on {connector}: re-sent {n} rows of {tables} whose table gained columns",
                 connector=name, n=n, tables=", ".join(f"{s}.{t}" for s, t in widened))

    @defer.inlineCallbacks
    def _refresh(self, name, connector, migration: Migration):
        d = defer.maybeDeferred(connector.refresh)
        d.addTimeout(self.refresh_timeout, self.reactor)
        try:
            yield d
        except defer.TimeoutError:
            raise RefreshFailed(
                f"migration {migration.version} is applied to {name}, but the connector did not finish "
                f"refreshing within {self.refresh_timeout:g}s (it keeps trying)", migration.version, name,
            ) from None
        except Exception as e:
            log.failure("refresh of {connector} after migration {vsn} failed", connector=name,
                        vsn=migration.version, level=LogLevel.error)
            raise RefreshFailed(
                f"migration {migration.version} is applied to {name}, but refreshing replication failed: "
                f"{e} (the connector retries)", migration.version, name,
            ) from None

    def _notify(self, result: ApplyResult, migration: Migration) -> None:
        if self.notify_migration is None or migration.version in self._notified:
            return
        self._notified.add(migration.version)
        previous = result.previous
        try:
            self.notify_migration(
                previous.version if previous else "",
                previous.hash if previous else "",
                result.applied.version,
                result.applied.hash,
            )
        except Exception:
            log.failure("telling clients about migration {vsn} failed", vsn=migration.version, level=LogLevel.error)

    @defer.inlineCallbacks
    def apply_all(self, vsn) -> List[Tuple[str, Union[ApplyResult, MigrationError]]]:
        """
        Apply `vsn` to every connector in name order, continuing past failures
        (a database that already has it does not stop the others).  Raises
        only for problems with the request itself (bad name, no file).
        """
        self.prepare(vsn)
        outcomes = []
        for name in self.names():
            try:
                result = yield self.apply(name, vsn)
            except MigrationError as e:
                outcomes.append((name, e))
            except Exception as e:  # a bug must not hide the other connectors' outcomes
                log.failure("applying {vsn} to {connector}", vsn=vsn, connector=name, level=LogLevel.error)
                err = MigrationError(f"internal error: {e}", vsn, name)
                outcomes.append((name, err))
            else:
                outcomes.append((name, result))
        return outcomes
