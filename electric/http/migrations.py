"""
The migrations API: HTTP routes over a `electric.migrations.migrator.Migrator`.

`install_routes(app, migrator)` adds the routes to the shared Klein app;
they only parse requests and shape responses.  Responses are compact JSON
with sorted keys, as the original's integration tests compare them as text.
"""

from __future__ import annotations

import json
from typing import Dict, Union

from twisted.internet import defer

from electric.migrations.migration import ApplyResult, BadRequest, MigrationError, validate_version
from electric.migrations.migrator import Migrator


def dumps(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


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


__all__ = ["install_routes", "outcome_json", "dumps"]
