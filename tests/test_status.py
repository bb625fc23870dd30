"""The HTTP API over real sockets: status shape and live flags, details, errors, listener life cycle."""

import json
import shutil
import tempfile

from twisted.internet import defer, protocol, reactor
from twisted.internet.error import CannotListenError
from twisted.trial import unittest
from twisted.web.client import Agent, readBody

from electric.config import Config
from electric.http.status import HttpApi, HttpService
from electric.hub.embedded import EmbeddedHub


class Link:
    """Stands in for a connector: the API only reads `.ready` and calls `.status()`."""

    def __init__(self, ready=False, broken=False):
        self.ready = ready
        self.broken = broken

    def status(self):
        if self.broken:
            raise RuntimeError("introspection exploded")
        return {"state": "ready" if self.ready else "init"}


class _Collect(protocol.Protocol):
    def __init__(self):
        self.data = b""
        self.closed = defer.Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason=None):
        self.closed.callback(self.data)


class StatusApiTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="electric-status-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.hub = EmbeddedHub(self.tmp, reactor, compact_interval=0)
        self.hub.startService()
        self.addCleanup(self._stop_hub)
        self.connectors = {"postgres_2": Link(ready=False), "postgres_1": Link(ready=True)}
        # port 0: the kernel picks a free one, so parallel runs never collide
        self.config = Config(status_port=0, listen_host="127.0.0.1")
        self.api = HttpApi(self.config, self.hub, self.connectors)
        self.service = HttpService(self.config, self.api, reactor)
        self.service.startService()
        port = yield self.service.listening
        self.addCleanup(self.service.stopService)
        self.base = f"http://127.0.0.1:{port.getHost().port}"
        self.agent = Agent(reactor)

    def _stop_hub(self):
        if self.hub.running:
            return self.hub.stopService()

    @defer.inlineCallbacks
    def request(self, path, method=b"GET"):
        response = yield self.agent.request(method, (self.base + path).encode())
        body = yield readBody(response)
        ctype = response.headers.getRawHeaders(b"content-type", [b""])[0]
        return response.code, ctype, body

    @defer.inlineCallbacks
    def test_status_shape_is_compact_sorted_json(self):
        code, ctype, body = yield self.request("/api/status")
        self.assertEqual(code, 200)
        self.assertEqual(ctype, b"application/json")
        self.assertEqual(body, b'{"connectors":{"postgres_1":true,"postgres_2":false},"hub":true,"vaxine":false}')

    @defer.inlineCallbacks
    def test_trailing_slash(self):
        code, _, body = yield self.request("/api/status/")
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body)["connectors"], {"postgres_1": True, "postgres_2": False})

    @defer.inlineCallbacks
    def test_flags_are_live(self):
        self.connectors["postgres_2"].ready = True
        self.connectors["postgres_0"] = Link(ready=False)
        _, _, body = yield self.request("/api/status")
        self.assertEqual(body, b'{"connectors":{"postgres_0":false,"postgres_1":true,"postgres_2":true},'
                               b'"hub":true,"vaxine":false}')
        yield self.hub.stopService()
        _, _, body = yield self.request("/api/status")
        self.assertEqual(json.loads(body)["hub"], False)

    @defer.inlineCallbacks
    def test_no_connectors(self):
        self.connectors.clear()
        _, _, body = yield self.request("/api/status")
        self.assertEqual(body, b'{"connectors":{},"hub":true,"vaxine":false}')

    @defer.inlineCallbacks
    def test_details_include_each_status(self):
        code, ctype, body = yield self.request("/api/status/details")
        self.assertEqual((code, ctype), (200, b"application/json"))
        details = json.loads(body)
        self.assertEqual(details["connectors"], {"postgres_1": {"state": "ready"}, "postgres_2": {"state": "init"}})
        self.assertEqual(details["hub"]["hub"], "embedded")
        self.assertEqual(details["hub"]["head"], 0)
        self.assertEqual(details["running"], {"hub": True})

    @defer.inlineCallbacks
    def test_one_broken_status_does_not_hide_the_others(self):
        self.connectors["postgres_1"].broken = True
        code, _, body = yield self.request("/api/status/details")
        self.assertEqual(code, 200)
        details = json.loads(body)
        self.assertEqual(details["connectors"]["postgres_1"], {"error": "RuntimeError: introspection exploded"})
        self.assertEqual(details["connectors"]["postgres_2"], {"state": "init"})
        self.flushLoggedErrors(RuntimeError)

    @defer.inlineCallbacks
    def test_unknown_route_is_json_404(self):
        for path in ("/", "/api", "/api/status/nope", "/favicon.ico"):
            code, ctype, body = yield self.request(path)
            self.assertEqual((code, ctype, body), (404, b"application/json", b'{"error":"not found"}'), path)

    @defer.inlineCallbacks
    def test_wrong_method_is_json_404(self):
        code, ctype, body = yield self.request("/api/status", method=b"POST")
        self.assertEqual((code, ctype, body), (404, b"application/json", b'{"error":"not found"}'))

    @defer.inlineCallbacks
    def test_routes_added_by_other_components(self):
        @self.api.app.route("/api/extra")
        def extra(request):
            return b"extra"

        @self.api.app.route("/api/explode")
        def explode(request):
            raise ValueError("boom")

        code, _, body = yield self.request("/api/extra")
        self.assertEqual((code, body), (200, b"extra"))
        code, ctype, body = yield self.request("/api/explode")
        self.assertEqual((code, ctype), (500, b"application/json"))
        self.assertEqual(json.loads(body), {"error": "internal error", "detail": "boom"})
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    @defer.inlineCallbacks
    def test_stop_closes_listener_and_open_connections(self):
        port = self.service.port.getHost().port
        client = yield protocol.ClientCreator(reactor, _Collect).connectTCP("127.0.0.1", port)
        client.transport.write(b"GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n")
        # wait until the keep-alive response arrived, then stop with the connection open
        deadline = reactor.seconds() + 30
        while b'"vaxine":false}' not in client.data:
            self.assertLess(reactor.seconds(), deadline, f"no response; got {client.data!r}")
            yield _tick()
        yield self.service.stopService()
        data = yield client.closed
        self.assertIn(b"200 OK", data)
        self.assertFalse(self.service.running)
        creator = protocol.ClientCreator(reactor, _Collect)
        yield self.assertFailure(creator.connectTCP("127.0.0.1", port), Exception)


def _tick():
    d = defer.Deferred()
    reactor.callLater(0.01, d.callback, None)
    return d


class ListenFailureTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_port_in_use_errbacks_listening(self):
        blocker = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        self.addCleanup(blocker.stopListening)
        taken = blocker.getHost().port
        config = Config(status_port=taken, listen_host="127.0.0.1")
        service = HttpService(config, HttpApi(config, None, {}), reactor)
        service.startService()
        error = yield self.assertFailure(service.listening, CannotListenError)
        self.assertIn(str(taken), str(error))
        self.assertFalse(service.running)
        yield service.stopService()

    def test_hub_missing_reports_false(self):
        api = HttpApi(Config(), None, {})
        self.assertEqual(api.status(), {"connectors": {}, "hub": False, "vaxine": False})


class ApiToken(unittest.TestCase):
    """ELECTRIC_API_TOKEN: migrations and details need the bearer token, health checks do not."""

    TOKEN = "s3cret-token_for.tests~0123456789"

    @defer.inlineCallbacks
    def setUp(self):
        from electric.http.migrations import install_routes

        self.tmp = tempfile.mkdtemp(prefix="electric-token-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.hub = EmbeddedHub(self.tmp, reactor, compact_interval=0)
        self.hub.startService()
        self.addCleanup(self.hub.stopService)
        self.config = Config(status_port=0, listen_host="127.0.0.1", api_token=self.TOKEN)
        self.api = HttpApi(self.config, self.hub, {"postgres_1": Link(ready=True)})
        self.migrator = FakeMigrator()
        install_routes(self.api.app, self.migrator)
        self.service = HttpService(self.config, self.api, reactor)
        self.service.startService()
        port = yield self.service.listening
        self.addCleanup(self.service.stopService)
        self.base = f"http://127.0.0.1:{port.getHost().port}"
        self.agent = Agent(reactor)

    @defer.inlineCallbacks
    def request(self, path, method=b"GET", token=None, body=None):
        from twisted.web.client import FileBodyProducer
        from twisted.web.http_headers import Headers
        import io

        headers = Headers({b"content-type": [b"application/json"]})
        if token is not None:
            headers.addRawHeader(b"authorization", token)
        producer = FileBodyProducer(io.BytesIO(body)) if body is not None else None
        response = yield self.agent.request(method, (self.base + path).encode(), headers, producer)
        data = yield readBody(response)
        return response.code, data, response.headers

    @defer.inlineCallbacks
    def test_health_checks_and_migration_reads_stay_open(self):
        for path in ("/api/status", "/api/status/", "/api/migrations", "/api/migrations/postgres_1"):
            code, _, _ = yield self.request(path)
            self.assertEqual(code, 200, path)

    @defer.inlineCallbacks
    def test_details_need_the_token(self):
        for token in (None, b"Bearer wrong-token-wrong-token", b"Basic " + self.TOKEN.encode(),
                      b"Bearer " + self.TOKEN.encode()[:-1], b"Bearer"):
            for path in ("/api/status/details", "/api/status/details/", "//api/status//details",
                         "/api/status/%64etails"):
                code, body, headers = yield self.request(path, token=token)
                self.assertEqual((code, body), (401, b'{"error":"unauthorized"}'), (path, token))
                self.assertEqual(headers.getRawHeaders(b"www-authenticate"), [b'Bearer realm="electric"'])
        code, body, _ = yield self.request("/api/status/details", token=b"Bearer " + self.TOKEN.encode())
        self.assertEqual(code, 200)
        self.assertIn(b'"connectors"', body)
        code, _, _ = yield self.request("/api/status/details", token=b"bearer  " + self.TOKEN.encode())
        self.assertEqual(code, 200)

    @defer.inlineCallbacks
    def test_migration_puts_need_the_token(self):
        body = b'{"vsn": "1_x"}'
        for path in ("/api/migrations", "/api/migrations/postgres_1"):
            code, _, _ = yield self.request(path, b"PUT", body=body)
            self.assertEqual(code, 401, path)
            code, _, _ = yield self.request(path, b"PUT", token=b"Bearer nope-nope-nope-nope", body=body)
            self.assertEqual(code, 401, path)
        self.assertEqual(self.migrator.calls, [])
        code, _, _ = yield self.request("/api/migrations/postgres_1", b"PUT",
                                        token=b"Bearer " + self.TOKEN.encode(), body=body)
        self.assertEqual(code, 200)
        self.assertEqual(len(self.migrator.calls), 1)

    @defer.inlineCallbacks
    def test_other_methods_and_unknown_routes_are_closed(self):
        for method, path in ((b"POST", "/api/status"), (b"DELETE", "/api/migrations/postgres_1"),
                             (b"GET", "/api/anything")):
            code, _, _ = yield self.request(path, method)
            self.assertEqual(code, 401, (method, path))
        code, _, _ = yield self.request("/api/anything", token=b"Bearer " + self.TOKEN.encode())
        self.assertEqual(code, 404)


class FakeMigrator:
    """The four calls the migration routes make, recorded."""

    def __init__(self):
        self.calls = []

    def migrations_json(self):
        return defer.succeed([])

    def connector_json(self, origin):
        return defer.succeed({"origin": origin})

    def apply(self, origin, vsn):
        self.calls.append((origin, vsn))
        return defer.succeed(None)

    def apply_all(self, vsn):
        self.calls.append((None, vsn))
        return defer.succeed([])
