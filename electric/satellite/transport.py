"""
The websocket transport: autobahn on the Twisted reactor, bytes only.

Accepts ``GET /ws`` (anything else is a 404), no subprotocol, no
compression; each binary message goes to the `ClientConnection`, each frame
the connection wants sent goes out as one binary message.  The protocol is
the transport's streaming producer, so a full socket buffer pauses the hub
stream of that connection and a drained one resumes it.
"""

from __future__ import annotations

import socket

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.logger import Logger
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

log = Logger()

WS_PATH = "/ws"
MAX_FRAME_BYTES = 16 * 1024 * 1024
"""Largest websocket message accepted (autobahn closes with 1009 beyond it)."""

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


@implementer(IPushProducer)
class SatelliteServerProtocol(WebSocketServerProtocol):
    connection = None

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
        if self.state == self.STATE_OPEN:
            self.sendMessage(data, isBinary=True)

    def close_connection(self, abort: bool) -> None:
        if abort:
            self.dropConnection(abort=True)
        elif self.state == self.STATE_OPEN:
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

    def __init__(self, service):
        super().__init__()
        self.service = service
        self.setProtocolOptions(
            maxFramePayloadSize=MAX_FRAME_BYTES,
            maxMessagePayloadSize=MAX_FRAME_BYTES,
            openHandshakeTimeout=OPEN_HANDSHAKE_TIMEOUT,
            closeHandshakeTimeout=CLOSE_HANDSHAKE_TIMEOUT,
            autoPingInterval=0,
            perMessageCompressionAccept=lambda offers: None,
        )
