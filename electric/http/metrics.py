"""
GET /metrics on STATUS_PORT: the Prometheus text exposition format.

`install_routes(app, registry)` adds the route to the shared Klein app; what
is measured and how lives in `electric.metrics`.  The route is a scrape
target, so it answers whatever the state of the parts (a part that cannot
answer is left out of the scrape, not turned into a 500).
"""

from __future__ import annotations

from electric.metrics import TEXT_CONTENT_TYPE, exposition


def install_routes(app, registry) -> None:
    """Serve `registry` (a prometheus_client CollectorRegistry) on GET/HEAD /metrics."""

    @app.route("/metrics", methods=["GET", "HEAD"])
    def metrics(request):
        body = exposition(registry)
        request.setHeader(b"content-type", TEXT_CONTENT_TYPE.encode("ascii"))
        return body
