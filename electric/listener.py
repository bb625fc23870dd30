"""
One way to listen, for all three of Electric's ports.

A `Listener` is Twisted's `StreamServerEndpointService` over the endpoint
description ``tcp:port=<port>:interface=<LISTEN_HOST>`` (`serverFromString`),
so an IPv6 ``LISTEN_HOST`` (``::1``, or ``::`` for every interface, IPv4
included where the system maps it) works like an IPv4 one; with a
certificate the factory is wrapped in TLS (the same wrapper Twisted's ``ssl:``
endpoints use), loaded when the listener starts.

A port that cannot be bound is not raised: `listening` errbacks with the
endpoint's own `CannotListenError` ("Couldn't listen on 127.0.0.1:5050:
[Errno 98] Address already in use."), which the service root turns into one
log line and exit status 1.  On success `listening` fires with the
IListeningPort.
"""

from __future__ import annotations

from typing import Optional

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer
from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from electric.tls import TLSFiles, server_context

log = Logger(namespace="electric.listener")


def endpoint_description(host: str, port: int, backlog: Optional[int] = None) -> str:
    """
    The server endpoint description for `host` (IPv4, IPv6 or a name;
    brackets allowed) and `port`; `backlog`: the listen queue (Twisted's
    default is 50; the kernel caps it at net.core.somaxconn).
    """
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    description = f"tcp:port={int(port)}:interface={quoteStringArgument(host)}"
    if backlog is not None:
        description += f":backlog={int(backlog)}"
    return description


def url_host(host: str) -> str:
    """`host` as it appears in a URL (IPv6 addresses in brackets)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class Listener(StreamServerEndpointService):
    """
    `what` names the port in log lines ("HTTP API"), `scheme` is how its
    address is shown ("http", "wss", ...).  `tls` (TLSFiles or None): serve
    TLS on every connection.  Startable again after a stop.
    """

    def __init__(self, reactor, what: str, scheme: str, host: str, port: int, factory,
                 tls: Optional[TLSFiles] = None, backlog: Optional[int] = None):
        super().__init__(None, factory)
        self.reactor = reactor
        self.what = what
        self.scheme = scheme
        self.host = host
        self.description = endpoint_description(host, port, backlog)
        self.tls = tls
        self.listening: defer.Deferred = defer.Deferred()
        self.port = None

    @property
    def bound_port(self) -> Optional[int]:
        return self.port.getHost().port if self.port is not None else None

    def privilegedStartService(self):
        if self.listening.called:
            self.listening = defer.Deferred()
        self.endpoint = serverFromString(self.reactor, self.description)
        inner = self.factory
        try:
            if self.tls is not None:
                self.factory = TLSMemoryBIOFactory(server_context(self.tls), False, inner)
            # The endpoint service raises a synchronous listen failure here
            # instead of logging it with a traceback.
            self._raiseSynchronously = True
            super().privilegedStartService()
        except Exception:
            failure = Failure()
            self.running = False
            self._waitingForPort = None
            self.listening.errback(failure)
            return
        finally:
            self.factory = inner
        self._waitingForPort.addCallback(self._bound)

    def fail(self, failure) -> None:
        """Report a failure to start that happened before listening (e.g. unreadable TLS files)."""
        if self.listening.called:
            self.listening = defer.Deferred()
        self.listening.errback(failure)

    def _bound(self, port):
        self.port = port
        address = port.getHost()
        log.info("{what} listening on {scheme}://{host}:{port}", what=self.what, scheme=self.scheme,
                 host=url_host(address.host), port=address.port)
        if not self.listening.called:
            self.listening.callback(port)
        return port

    def stopService(self):
        self.port = None
        if self._waitingForPort is None:
            self.running = False
            return defer.succeed(None)
        d = super().stopService()
        self._waitingForPort = None
        return d
