"""
The HTTP API's bearer token: who may apply migrations and read the details.

With ELECTRIC_API_TOKEN set, every request needs ``Authorization: Bearer
<token>`` except the open reads: ``GET``/``HEAD`` of ``/api/status``
(health checks) and of ``/api/migrations`` (which migrations ran).  Applying
a migration changes every database, and ``/api/status/details`` lists
users, client ids and positions, so both are closed; so is ``/metrics``
(connector names, positions and error counts: a Prometheus scrape job sends
the token, see the README's Metrics section) and any route added later
unless it is added to the open reads here (deny by default).  The
token is compared in constant time.  Without a token the API is open, as
the original's was.
"""

from __future__ import annotations

import hmac
import json
import re
from urllib.parse import unquote

from twisted.web import resource

OPEN_READS = ("/api/status", "/api/migrations")
_SLASHES = re.compile(r"/+")


def canonical_path(raw: bytes) -> str:
    """The path as routing sees it: percent-decoded, repeated and trailing slashes dropped."""
    path = _SLASHES.sub("/", unquote(raw.decode("latin-1")))
    return path.rstrip("/") or "/"


def is_open(method: bytes, raw_path: bytes) -> bool:
    if method not in (b"GET", b"HEAD"):
        return False
    path = canonical_path(raw_path)
    return path == "/api/status" or path == "/api/migrations" or (
        path.startswith("/api/migrations/") and path.count("/") == 3)


def bearer_token(request) -> bytes:
    header = request.getHeader(b"authorization") or b""
    scheme, _, token = header.strip().partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else b""


class TokenGuard(resource.Resource):
    """Wraps the API's resource: requests that are not open reads need the bearer token."""

    isLeaf = True

    def __init__(self, inner: resource.Resource, token: str):
        super().__init__()
        self.inner = inner
        self._token = token.encode()

    def render(self, request):
        if not is_open(request.method, request.path) and not hmac.compare_digest(bearer_token(request), self._token):
            request.setResponseCode(401)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"www-authenticate", b'Bearer realm="electric"')
            return json.dumps({"error": "unauthorized"}, separators=(",", ":")).encode()
        return self.inner.render(request)
