"""
The HTTP API on STATUS_PORT: status routes, plus one shared Klein app that
other components (migrations) add their routes to.

Bodies are compact JSON with sorted keys because the original's integration
tests compare them as text.  Every flag is read live from the component at
request time, never cached, so the answer is the real state of each link.
Unknown routes and methods answer 404 with a JSON body, as API clients of
this service parse every body as JSON.
"""

from __future__ import annotations

import json
from typing import Dict, Mapping, Optional

from klein import Klein
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger, LogLevel
from twisted.protocols.policies import WrappingFactory
from twisted.web import server
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from electric.listener import Listener
from electric.http.auth import TokenGuard

log = Logger(namespace="electric.http")


def dumps(value) -> bytes:
    """Compact, key-sorted JSON (what the original emits and its tests compare)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str).encode()


def _json(request, status: int, value) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return dumps(value)


def _is_running(component) -> bool:
    return bool(getattr(component, "running", False))


def _safe_status(component) -> object:
    """A component's status() for /details; a failing status() must not hide the others."""
    try:
        return component.status()
    except Exception as e:  # one broken component must not take the whole report down
        log.failure("status() of {component!r} failed", component=component, level=LogLevel.error)
        return {"error": f"{type(e).__name__}: {e}"}


class HttpApi:
    """
    `connectors` maps name -> object with `.ready` (bool) and `.status()`
    (dict), read on every request.  `hub` is the IHub (its `running` and
    `status()` are reported).
    `vaxine` is whatever answers the Vaxine health check (`.ready`); None in
    this build, which reports `"vaxine": false`.
    """

    def __init__(self, config, hub, connectors: Mapping[str, object], vaxine: Optional[object] = None):
        self.config = config
        self.hub = hub
        self.connectors = connectors
        self.vaxine = vaxine
        # Other links (port 5433, Satellite, migrations) report here too.
        self.components: Dict[str, object] = {}
        # Per-connector problems found elsewhere (key in details -> problem(name) -> dict or None);
        # a connector with one is not healthy in /api/status.
        self.connector_problems: Dict[str, object] = {}
        self.app = Klein()
        self._catch_all_installed = False
        self.internal_errors = 0  # requests answered 500 (since start)
        self._install()

    # -- what the routes report ---------------------------------------------

    def add_connector_problems(self, key: str, problem) -> None:
        """`problem(name)` -> dict or None: shown as connectors[name][key] in details; non-None = unhealthy."""
        self.connector_problems[key] = problem

    def _problems(self, name: str) -> dict:
        out = {}
        for key, problem in self.connector_problems.items():
            try:
                out[key] = problem(name)
            except Exception as e:  # a broken check must not hide the others, nor pass as healthy
                log.failure("connector problem check {key} failed", key=key)
                out[key] = {"error": f"{type(e).__name__}: {e}"}
        return out

    def _healthy(self, name: str, connector) -> bool:
        return bool(connector.ready) and not any(v is not None for v in self._problems(name).values())

    def status(self) -> dict:
        return {
            "connectors": {name: self._healthy(name, c) for name, c in sorted(self.connectors.items())},
            "hub": _is_running(self.hub),
            "vaxine": bool(self.vaxine is not None and self.vaxine.ready),
        }

    def add_component(self, name: str, component) -> None:
        """Show `component.status()` under `name` in /api/status/details."""
        self.components[name] = component

    def instance(self) -> dict:
        """Who this Electric is: GLOBAL_CLUSTER_ID, ELECTRIC_INSTANCE_ID, ELECTRIC_REGIONAL_ID (also metric labels)."""
        return {
            "cluster_id": self.config.global_cluster_id,
            "instance_id": self.config.instance_id,
            "regional_id": self.config.regional_id,
        }

    def metrics(self) -> dict:
        """Plain numbers for /metrics (`electric.metrics`): `errors` by kind: ``http_internal`` (answered 500)."""
        return {"errors": {"http_internal": self.internal_errors}}

    def details(self) -> dict:
        connectors = {}
        for name, c in sorted(self.connectors.items()):
            report = _safe_status(c)
            if isinstance(report, dict):
                report = {**report, **self._problems(name)}
            connectors[name] = report
        out = {
            "connectors": connectors,
            "hub": _safe_status(self.hub),
            "instance": self.instance(),
            "running": {"hub": _is_running(self.hub)},
        }
        for name, component in sorted(self.components.items()):
            out[name] = _safe_status(component)
        return out

    # -- routes ---------------------------------------------------------------

    def _install(self) -> None:
        app = self.app

        @app.route("/api/status", methods=["GET", "HEAD"])
        def status(request):
            return _json(request, 200, self.status())

        @app.route("/api/status/", methods=["GET", "HEAD"], endpoint="status_slash")
        def status_slash(request):
            return _json(request, 200, self.status())

        @app.route("/api/status/details", methods=["GET", "HEAD"])
        def details(request):
            return _json(request, 200, self.details())

        @app.handle_errors(NotFound, MethodNotAllowed)
        def not_found(request, failure):
            return _json(request, 404, {"error": "not found"})

    def resource(self):
        """
        The twisted.web resource to serve.  The catch-all 500 handler is added
        here, after every component added its routes and error handlers,
        because Klein tries handlers in registration order.  With
        ELECTRIC_API_TOKEN set the resource is wrapped in a `TokenGuard`.
        """
        if not self._catch_all_installed:
            self._catch_all_installed = True

            @self.app.handle_errors(Exception)
            def internal_error(request, failure):
                if failure.check(HTTPException):
                    # e.g. a redirect werkzeug chose: keep its code and headers.
                    response = failure.value.get_response({})
                    for header, value in response.headers:
                        if header.lower() in ("location", "allow"):
                            request.setHeader(header.encode("latin-1"), str(value).encode("latin-1"))
                    return _json(request, failure.value.code, {"error": failure.value.name.lower()})
                self.internal_errors += 1
                log.failure("{method} {uri} failed", failure,
                            method=request.method.decode("latin-1"), uri=request.uri.decode("latin-1"))
                return _json(request, 500, {"error": "internal error", "detail": failure.getErrorMessage()})

        api = self.app.resource()
        token = getattr(self.config, "api_token", None)
        return TokenGuard(api, token) if token else api


class _QuietSite(server.Site):
    """No access log: health checks poll /api/status many times a second."""

    def log(self, request):
        pass


class HttpService(service.Service):
    """
    Listens on LISTEN_HOST:STATUS_PORT (https with STATUS_TLS_CERT_FILE and
    its key).  `listening` fires with the IListeningPort once bound, or
    errbacks (CannotListenError) if the port cannot be bound.
    stopService closes the listener and every open connection (keep-alive
    clients would otherwise hold the process past SIGTERM).
    """

    name = "http"

    def __init__(self, config, api: HttpApi, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.api = api
        self.reactor = reactor
        self._factory: Optional[WrappingFactory] = None
        self.listener = Listener(reactor, "HTTP API", "https" if config.status_tls else "http",
                                 config.listen_host, config.status_port, None, tls=config.status_tls)

    @property
    def listening(self) -> defer.Deferred:
        return self.listener.listening

    @property
    def port(self):
        return self.listener.port

    def startService(self):
        site = _QuietSite(self.api.resource())
        site.noisy = False
        self._factory = WrappingFactory(site)
        self._factory.noisy = False
        self.listener.factory = self._factory
        self.listener.startService()
        if self.listener.port is not None:
            service.Service.startService(self)

    def stopService(self):
        service.Service.stopService(self)
        d = self.listener.stopService()
        if self._factory is not None:
            for protocol in list(self._factory.protocols):
                protocol.transport.abortConnection()
        return d
