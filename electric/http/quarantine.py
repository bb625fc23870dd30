"""
The quarantine API: HTTP routes over an
`electric.postgres.publisher.apply_failures.ApplyFailureMonitor`.

Routing and shaping only.  None of these routes is an open read
(`electric.http.auth`): they show whole rows and change what a database
receives, so with ELECTRIC_API_TOKEN set every one needs the token.

* ``GET /api/quarantine`` / ``GET /api/quarantine/<connector>``: entries,
  oldest first, each with its full row, and the connector's diagnosed
  failure (if any).
* ``POST /api/quarantine/<connector>``: set changes aside for that
  database.  No body (or ``{}``): every failing change of its diagnosed
  failure.  Or one change: ``{"position": P, "schema": S, "table": T,
  "key": [...]}``.
* ``POST /api/quarantine/<connector>/resend``: re-send the rows of held
  entries (all of them, or ``{"ids": [...]}``).
"""

from __future__ import annotations

import json

from twisted.internet import defer

from electric.http.migrations import dumps
from electric.postgres.publisher.apply_failures import ApplyFailureMonitor, QuarantineError

MAX_BODY = 64 * 1024


def _json(request, status: int, value) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return dumps(value)


def _body(request) -> dict:
    raw = request.content.read(MAX_BODY + 1) if request.content is not None else b""
    if len(raw) > MAX_BODY:
        raise QuarantineError(f"request body larger than {MAX_BODY} bytes", 413)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise QuarantineError(f"body is not JSON ({e})") from None
    if not isinstance(body, dict):
        raise QuarantineError("body must be a JSON object")
    return body


def _change(body: dict) -> dict:
    unknown = sorted(set(body) - {"position", "schema", "table", "key"})
    if unknown:
        raise QuarantineError(f"unknown fields {unknown}")
    if not body:
        return {}
    position, schema, table, key = (body.get(k) for k in ("position", "schema", "table", "key"))
    if not isinstance(position, int) or isinstance(position, bool) or position < 1:
        raise QuarantineError("position must be a hub position (an integer >= 1)")
    if not isinstance(schema, str) or not isinstance(table, str):
        raise QuarantineError("schema and table must be strings")
    if not isinstance(key, list) or not key or not all(k is None or isinstance(k, (str, int)) for k in key):
        raise QuarantineError("key must be a non-empty list of the primary-key values (text)")
    return {"position": position, "schema": schema, "table": table, "key": key}


def _ids(body: dict):
    unknown = sorted(set(body) - {"ids"})
    if unknown:
        raise QuarantineError(f"unknown fields {unknown}")
    ids = body.get("ids")
    if ids is None:
        return None
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise QuarantineError("ids must be a list of quarantine entry ids")
    return ids


def install_routes(app, monitor: ApplyFailureMonitor) -> None:
    """Add the /api/quarantine routes to the Klein `app`."""

    def listing(origin=None) -> dict:
        names = [origin] if origin is not None else sorted(monitor.connectors)
        return {name: {"failure": monitor.problem(name), "entries": monitor.entries(name)} for name in names}

    @app.route("/api/quarantine", methods=["GET"], strict_slashes=False, endpoint="quarantine_list")
    def list_all(request):
        return _json(request, 200, listing())

    @app.route("/api/quarantine/<string:origin>", methods=["GET"], endpoint="quarantine_show")
    def show(request, origin):
        if origin not in monitor.connectors:
            return _json(request, 404, {"error": f"no connector named {origin!r}"})
        return _json(request, 200, listing(origin)[origin])

    @app.route("/api/quarantine/<string:origin>", methods=["POST"], endpoint="quarantine_add")
    @defer.inlineCallbacks
    def add(request, origin):
        try:
            change = _change(_body(request))
            entries = yield defer.ensureDeferred(monitor.quarantine_changes(origin, **change))
        except QuarantineError as e:
            return _json(request, e.status, {"error": str(e)})
        return _json(request, 200, {"quarantined": entries})

    @app.route("/api/quarantine/<string:origin>/resend", methods=["POST"], endpoint="quarantine_resend")
    @defer.inlineCallbacks
    def resend(request, origin):
        try:
            ids = _ids(_body(request))
            result = yield defer.ensureDeferred(monitor.resend(origin, ids))
        except QuarantineError as e:
            return _json(request, e.status, {"error": str(e)})
        return _json(request, 200, result)
