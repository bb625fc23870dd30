"""
The migrations API and the `Migrator` that applies a migration to connectors.

`Migrator` coordinates: it checks a request completely (name, file, known
connector, connector ready) before any database sees it, applies the file
through `electric.migrations.MigrationDatabase` (file + record in one
transaction), then has the connector refresh (registry, upsert triggers on
new tables, ``REFRESH PUBLICATION``) and tells Satellite clients.  It never
disables a subscription, so a failed migration leaves replication exactly as
it was (the original disabled first and stayed disabled after an error).

`install_routes(app, migrator)` adds the HTTP routes to the shared Klein app.
Responses are compact JSON with sorted keys, as the original's integration
tests compare them as text.
"""

from __future__ import annotations

import json
import uuid
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from electric.hub import whole
from electric.hub.interface import RESEND, RowChange, Transaction
from electric.migrations import (
    AppliedMigration,
    ApplyResult,
    BadRequest,
    DatabaseUnavailable,
    InvalidState,
    Migration,
    MigrationDatabase,
    MigrationError,
    MigrationSource,
    RefreshFailed,
    UnknownConnector,
    validate_version,
)

log = Logger(namespace="electric.migrations")

# ConnectorService states in which the database is set up and its stream is
# live ("streaming" = the subscription back to Electric is not enabled yet;
# refresh() copes with that).  Anything else (init, setup, backoff) means
# setup may be introspecting right now, so a migration would race it.
MIGRATABLE_STATES = frozenset({"ready", "streaming"})


def dumps(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _state_name(connector) -> Optional[str]:
    """The connector's state as a lower-case word, or None if it does not say."""
    state = getattr(connector, "state", None)
    if state is None:
        return None
    if callable(state):
        state = state()
    state = getattr(state, "value", getattr(state, "name", state))
    return str(state).lower()


def _connector_name(connector) -> str:
    inner = getattr(connector, "connector", None)  # ConnectorService.connector: config.Connector
    if inner is not None and isinstance(getattr(inner, "name", None), str):
        return inner.name
    for attr in ("origin", "name"):
        value = getattr(connector, attr, None)
        if isinstance(value, str):
            return value
    raise ValueError(f"cannot tell the connector name of {connector!r}")


class Migrator(Service):
    """
    Applies migrations to the configured Postgres databases, one at a time
    per database, and remembers what each database has applied so that a
    database lagging behind the others is visible (``pending_migrations``).

    `connectors` maps connector name to its `ConnectorService` (anything with
    ``refresh()`` returning a Deferred, and optionally ``state``); a sequence
    of connector services is accepted too.  `notify_migration` (optional,
    e.g. ``SatelliteService.notify_migration``) is called as
    ``notify_migration(old_version, old_hash, new_version, new_hash)`` once
    per migration, after the first database has applied it and refreshed.
    """

    name = "migrations"

    def __init__(self, config, connectors: Union[Mapping[str, object], Iterable[object]],
                 notify_migration: Optional[Callable[..., object]] = None,
                 source: Optional[MigrationSource] = None,
                 refresh_timeout: float = 120.0, poll_interval: float = 30.0,
                 lock_timeout_ms: int = 30000, reactor=None, hub=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.config = config
        # A Mapping is kept by reference (the service builder may register
        # connectors after constructing us, as it does for the status API).
        if isinstance(connectors, Mapping):
            self.connectors: Mapping[str, object] = connectors
        else:
            self.connectors = {_connector_name(c): c for c in connectors}
        self.source = source or MigrationSource.from_config(config)
        self.notify_migration = notify_migration
        # With a hub, rows of tables a migration widened are re-sent (see _resend_widened).
        self.hub = hub
        self.refresh_timeout = refresh_timeout
        self.poll_interval = poll_interval
        self.lock_timeout_ms = lock_timeout_ms
        self.databases: Dict[str, MigrationDatabase] = {}
        self._locks: Dict[str, defer.DeferredLock] = {}
        self._applied: Dict[str, List[AppliedMigration]] = {}
        self._notified: set = set()
        self._loop: Optional[task.LoopingCall] = None
        self._loop_done: Optional[defer.Deferred] = None

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
                log.warn("cannot read applied migrations of {origin}: {error}", origin=name, error=str(e))
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
        state = _state_name(connector)
        if state is not None and state not in MIGRATABLE_STATES:
            raise InvalidState(state, migration.version, name)
        before = _column_sets(connector, name)
        try:
            result = yield self.database(name).apply(migration)
        except MigrationError as e:
            e.vsn = e.vsn or migration.version
            e.origin = e.origin or name
            log.warn("migration {vsn} not applied to {origin}: {error}",
                     vsn=migration.version, origin=name, error=str(e))
            raise
        self._applied[name] = [result.applied] + [
            m for m in self._applied.get(name, []) if m.version != result.applied.version
        ]
        yield self._refresh(name, connector, migration)
        yield self._resend_widened(name, before, _column_sets(connector, name))
        self._notify(result, migration)
        return result

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
        snap = yield whole.read_snapshot(self.hub, widened)
        keys = [(r.schema, r.table, tuple(r.key)) for r in snap.rows if not r.deleted]
        for i in range(0, len(keys), RESEND_BATCH):
            chunk = keys[i:i + RESEND_BATCH]
            yield self.hub.append(Transaction(
                origin="electric:migration",
                origin_id=f"{name}:{uuid.uuid4()}".encode(),
                commit_timestamp=int(self.reactor.seconds() * 1_000_000),
                changes=tuple(RowChange(s, t, RESEND, k) for s, t, k in chunk),
            ))
        log.info("migration on {origin}: re-sent {n} rows of {tables} whose table gained columns",
                 origin=name, n=len(keys), tables=", ".join(f"{s}.{t}" for s, t in widened))

    @defer.inlineCallbacks
    def _refresh(self, name, connector, migration: Migration):
        refresh = getattr(connector, "refresh", None)
        if refresh is None:
            return
        d = defer.maybeDeferred(refresh)
        d.addTimeout(self.refresh_timeout, self.reactor)
        try:
            yield d
        except defer.TimeoutError:
            raise RefreshFailed(
                f"migration {migration.version} is applied to {name}, but the connector did not finish "
                f"refreshing within {self.refresh_timeout:g}s (it keeps trying)", migration.version, name,
            ) from None
        except Exception as e:
            log.failure("refresh of {origin} after migration {vsn} failed", origin=name,
                        vsn=migration.version)
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
            log.failure("telling clients about migration {vsn} failed", vsn=migration.version)

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
                log.failure("applying {vsn} to {origin}", vsn=vsn, origin=name)
                err = MigrationError(f"internal error: {e}", vsn, name)
                outcomes.append((name, err))
            else:
                outcomes.append((name, result))
        return outcomes


def outcome_json(name: str, outcome: Union[ApplyResult, MigrationError]) -> Dict[str, object]:
    if isinstance(outcome, MigrationError):
        body = outcome.to_json()
        body.update(ok=False, origin=name)
        return body
    return {
        "applied_at": outcome.applied.to_json(name)["applied_at"],
        "hash": outcome.applied.hash,
        "ok": True,
        "origin": name,
        "status": 200,
        "vsn": outcome.applied.version,
    }


# -- HTTP --------------------------------------------------------------------


class _UnsupportedMediaType(MigrationError):
    status = 415
    code = ":unsupported_media_type"


def _json_response(request, status: int, value) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return dumps(value)


def _error_response(request, error: MigrationError) -> bytes:
    return _json_response(request, error.status, error.to_json())


def _requested_vsn(request) -> str:
    ctype = (request.getHeader(b"content-type") or b"").decode("latin-1")
    media = ctype.split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise _UnsupportedMediaType(
            f"Content-Type must be application/json, got {ctype or 'none'}")
    raw = request.content.read() if request.content is not None else b""
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest(f"Bad request: body is not JSON ({e})") from None
    if not isinstance(body, dict) or "vsn" not in body:
        raise BadRequest('Bad request: body must be a JSON object {"vsn": "<migration name>"}')
    vsn = body["vsn"]
    validate_version(vsn)
    return vsn


RESEND_BATCH = 5000


def _column_sets(connector, origin: str) -> Dict[Tuple[str, str], frozenset]:
    """Each table's column names as `origin`'s database defines them (from the registry)."""
    registry = getattr(connector, "registry", None)
    if registry is None:
        return {}
    return {t.qualified: frozenset(t.column_names) for t in registry.database_tables(origin)
            for t in [registry.database_table(origin, t.schema, t.name) or t]}


def install_routes(app, migrator: Migrator) -> None:
    """Add the /api/migrations routes to the Klein `app`."""

    @app.route("/api/migrations", methods=["GET"], strict_slashes=False, endpoint="migrations_list")
    @defer.inlineCallbacks
    def list_migrations(request):
        body = yield migrator.migrations_json()
        return _json_response(request, 200, body)

    @app.route("/api/migrations/<string:origin>", methods=["GET"], endpoint="migrations_show")
    @defer.inlineCallbacks
    def show_migration(request, origin):
        body = yield migrator.connector_json(origin)
        return _json_response(request, 200, body)

    @app.route("/api/migrations/<string:origin>", methods=["PUT"], endpoint="migrations_apply_one")
    @defer.inlineCallbacks
    def apply_one(request, origin):
        try:
            vsn = _requested_vsn(request)
            yield migrator.apply(origin, vsn)
        except MigrationError as e:
            if e.origin is None and not isinstance(e, (BadRequest, _UnsupportedMediaType)):
                e.origin = origin
            return _error_response(request, e)
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"ok"

    @app.route("/api/migrations", methods=["PUT"], strict_slashes=False, endpoint="migrations_apply_all")
    @defer.inlineCallbacks
    def apply_everywhere(request):
        try:
            vsn = _requested_vsn(request)
            outcomes = yield migrator.apply_all(vsn)
        except MigrationError as e:
            return _error_response(request, e)
        results = [outcome_json(n, o) for n, o in outcomes]
        statuses = {r["status"] for r in results}
        if not results:
            status = 404
        elif statuses == {200}:
            status = 200
        elif len(statuses) == 1:
            status = statuses.pop()
        else:
            status = 207  # some applied, some not: each result says which
        body = {"ok": status == 200, "results": results, "vsn": vsn}
        if not results:
            body["error"] = ":no_connectors: CONNECTORS is empty"
        return _json_response(request, status, body)


__all__ = ["Migrator", "install_routes", "outcome_json", "dumps", "DatabaseUnavailable"]
