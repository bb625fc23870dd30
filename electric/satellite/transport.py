"""
The websocket transport: autobahn on the Twisted reactor, bytes only.

Accepts ``GET /ws`` (anything else is a 404), no subprotocol, no
compression; each binary message goes to the `ClientConnection`, each frame
the connection wants sent goes out as one binary message.  The protocol is
the transport's streaming producer, so a full socket buffer pauses the hub
stream of that connection and a drained one resumes it.

Before a client has authenticated it is a stranger: its opening handshake
may be at most `MAX_HANDSHAKE_BYTES` (autobahn itself buffers a request
without limit) and its frames and messages at most `PRE_AUTH_MAX_BYTES`
(a SatAuthReq with a token fits easily); a larger one is refused with close
code 1009 as soon as its header arrives, before its payload is buffered.
Only once the session authenticated are messages up to `MAX_FRAME_BYTES`
accepted.
"""

from __future__ import annotations

import socket

import autobahn.websocket.protocol as autobahn_protocol
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import tcp
from twisted.logger import Logger
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from electric.satellite.session import SharedFrame

log = Logger()

WS_PATH = "/ws"
MAX_FRAME_BYTES = 16 * 1024 * 1024
"""Largest websocket message accepted from an authenticated client (autobahn closes with 1009 beyond it)."""

PRE_AUTH_MAX_BYTES = 64 * 1024
"""Largest frame or message accepted before the client authenticated."""

MAX_HANDSHAKE_BYTES = 32 * 1024
"""Largest HTTP opening handshake request (request line and headers)."""

CLOSE_REFUSED = 4008
"""
Close code after a refused client write: 1008 (policy violation) moved into
the range RFC 6455 leaves to applications, which is all autobahn lets a
server send besides 1000.
"""

CLOSE_REASON_BYTES = 123


def close_reason(text: str) -> str:
    """`text` cut (with an ellipsis) to fit a websocket close frame, on a UTF-8 character boundary."""
    data = text.encode("utf-8")
    if len(data) <= CLOSE_REASON_BYTES:
        return text
    cut = data[:CLOSE_REASON_BYTES - 3].decode("utf-8", "ignore")
    return cut + "\u2026"


SEND_BUFFER_BYTES = 256 * 1024
"""
Kernel send buffer of each client socket (Linux doubles it).  Fixed rather
than autotuned (up to 4 MB by default): a client that stops reading then
holds at most this much kernel memory and makes Electric read and encode at
most this much of the hub for it, so thousands of slow clients stay cheap.
Enough to keep a client on a LAN or a fast WAN path at full speed.
"""

OPEN_HANDSHAKE_TIMEOUT = 10.0
CLOSE_HANDSHAKE_TIMEOUT = 2.0


class _LazyPformat:
    """pformat(obj), computed only if a log observer ever formats it."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __str__(self):
        return _real_pformat(self.obj)

    __repr__ = __str__


_real_pformat = autobahn_protocol.pformat


@implementer(IPushProducer)
class SatelliteServerProtocol(WebSocketServerProtocol):
    connection = None
    refused = False

    def _connectionMade(self):
        # autobahn formats its whole configuration with pformat for a debug
        # log line on every new connection, whether or not debug logging is
        # on: in a connect storm of thousands of clients a large share of the
        # reactor.  Here that argument is lazy (the same text if ever logged).
        autobahn_protocol.pformat = _LazyPformat
        try:
            super()._connectionMade()
        finally:
            autobahn_protocol.pformat = _real_pformat

    def dataReceived(self, data):
        if self.refused:
            return
        # autobahn buffers the opening handshake until the blank line, however
        # long: bound it (431, as an HTTP server answers oversized headers).
        if self.state == self.STATE_CONNECTING and len(self.data) + len(data) > MAX_HANDSHAKE_BYTES:
            peer = self.transport.getPeer()
            log.warn("websocket: opening handshake larger than {n} bytes; refused",
                     peer=f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}", n=MAX_HANDSHAKE_BYTES)
            self.refused = True
            self.data = b""
            self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                 b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.loseConnection()
            return
        super().dataReceived(data)

    def authenticated(self) -> None:
        """The session authenticated: from now on full-size messages are accepted."""
        self.maxFramePayloadSize = MAX_FRAME_BYTES
        self.maxMessagePayloadSize = MAX_FRAME_BYTES

    def onConnect(self, request):
        if request.path != WS_PATH:
            raise ConnectionDeny(ConnectionDeny.NOT_FOUND, f"no websocket at {request.path}; use {WS_PATH}")
        return None  # no subprotocol

    def connectionMade(self):
        super().connectionMade()
        sock = getattr(self.transport, "socket", None)
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            except OSError as e:
                log.warn("satellite: cannot set the socket send buffer: {e}", e=e)

    def onOpen(self):
        peer = self.transport.getPeer()
        self.connection = self.factory.service.connection_opened(self, f"{peer.host}:{peer.port}")
        self.transport.registerProducer(self, True)

    def onMessage(self, payload, isBinary):
        if self.connection is not None:
            self.connection.frame(payload, isBinary)

    def onClose(self, wasClean, code, reason):
        conn, self.connection = self.connection, None
        if conn is not None:
            try:
                self.transport.unregisterProducer()
            except Exception:
                pass
            conn.lost()

    # --- used by ClientConnection ---------------------------------

    def send_frame(self, data: bytes) -> None:
        if self.state != self.STATE_OPEN:
            return
        if type(data) is SharedFrame:
            # The same frame goes to many clients: framed once, then only written.
            prepared = data.__dict__.get("ws")
            if prepared is None:
                prepared = data.ws = self.factory.prepareMessage(bytes(data), isBinary=True, doNotCompress=True)
            if self.send_queue or self.logOctets:
                self.sendPreparedMessage(prepared)
            else:  # what sendPreparedMessage does, without its per-call debug formatting
                wire = prepared.payloadHybi
                self._write_now(wire)
                self.trafficStats.outgoingOctetsWireLevel += len(wire)
        else:
            self.sendMessage(data, isBinary=True)

    def _write_now(self, data: bytes) -> None:
        """
        `transport.write(data)`, but on a plain TCP connection with nothing
        buffered the bytes go to the socket at once: no write buffering, no
        epoll registration and deregistration, no separate reactor pass per
        client.  Whatever the socket does not take is buffered as usual (and
        pauses us as its producer when there is too much).
        """
        t = self.transport
        if (type(t) is tcp.Server and not t.TLS and t.connected and not t.disconnecting
                and not t._writeDisconnected and not t._tempDataLen and len(t.dataBuffer) == t.offset):
            try:
                sent = t.socket.send(data)
            except OSError:
                sent = 0  # would block, or broken: the ordinary path buffers it or reports the error
            if sent == len(data):
                return
            data = data[sent:]
        t.write(data)

    def close_connection(self, abort: bool, reason: str = "") -> None:
        """
        Close; `reason` (why a client's write was refused) goes to the client
        in the close frame with code CLOSE_REFUSED (4008), cut to the 123
        bytes a close reason may hold.
        """
        if abort:
            self.dropConnection(abort=True)
        elif self.state == self.STATE_OPEN:
            if reason:
                self.sendClose(code=CLOSE_REFUSED, reason=close_reason(reason))
            else:
                self.sendClose(code=1000)
        elif self.state not in (self.STATE_CLOSED, self.STATE_CLOSING):
            self.dropConnection(abort=True)

    # --- IPushProducer --------------------------------------------

    def pauseProducing(self):
        if self.connection is not None:
            self.connection.pause()

    def resumeProducing(self):
        if self.connection is not None:
            self.connection.resume()

    def stopProducing(self):
        pass


class SatelliteServerFactory(WebSocketServerFactory):
    protocol = SatelliteServerProtocol
    noisy = False  # no "Starting factory" lines

    def __init__(self, service, secure: bool = False):
        super().__init__("wss://localhost/ws" if secure else "ws://localhost/ws")
        self.service = service
        # Each connection starts with these; `authenticated()` raises them.
        self.setProtocolOptions(
            maxFramePayloadSize=PRE_AUTH_MAX_BYTES,
            maxMessagePayloadSize=PRE_AUTH_MAX_BYTES,
            # A refused client is told why (a close frame: 1009 for an
            # oversized message), then dropped after closeHandshakeTimeout.
            failByDrop=False,
            openHandshakeTimeout=OPEN_HANDSHAKE_TIMEOUT,
            closeHandshakeTimeout=CLOSE_HANDSHAKE_TIMEOUT,
            autoPingInterval=0,
            perMessageCompressionAccept=lambda offers: None,
        )
