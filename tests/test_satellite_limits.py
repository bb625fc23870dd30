"""
The websocket before and after authentication, over real sockets: a stranger's
frames, messages and opening handshake are small and refused from their
headers; an authenticated client gets the full size; and wss:// with a
certificate from the configuration.
"""

import socket
import struct

from twisted.internet import defer, threads
from twisted.trial import unittest

from electric.satellite import codec
from electric.satellite import transport as transport_mod
from electric.satellite.codec import ORIGINAL
from tests.satellite_helpers import SatelliteFixture, eventually, msg, satellite_config
from tests.tls_helpers import TestCA

HANDSHAKE = ("GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n")


def big_ping(gen, size):
    """A SatPingReq carrying `size` bytes in an unknown field (protobuf skips it): a valid, large message."""
    body = b"\x7a" + _varint(size) + b"x" * size  # field 15, length-delimited
    return codec.encode(gen, gen.pb.SatPingReq()) + body


def _varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def masked_frame_header(length, opcode=0x2):
    """A client frame header (FIN, masked) announcing `length` payload bytes, with its mask key."""
    first = bytes([0x80 | opcode])
    if length < 126:
        head = first + bytes([0x80 | length])
    elif length < 1 << 16:
        head = first + bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head = first + bytes([0x80 | 127]) + struct.pack("!Q", length)
    return head + b"\0\0\0\0"  # zero mask: payload bytes go as they are


def raw_exchange(port, first, then=b"", read_until_close=True):
    """Blocking: send the handshake `first`, then `then`; return everything read until the server closes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(first)
        data = b""
        if then:
            while b"\r\n\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    return data
                data += chunk
            s.sendall(then)
        while read_until_close:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        return data
    finally:
        s.close()


def close_code(data):
    """The status code of the server's close frame in `data` (after the 101 response)."""
    frames = data.split(b"\r\n\r\n", 1)[1]
    while frames:
        opcode, length = frames[0] & 0x0F, frames[1] & 0x7F
        payload = frames[2:2 + length]
        if opcode == 0x8:
            return struct.unpack("!H", payload[:2])[0]
        frames = frames[2 + length:]
    return None


class BeforeAuthentication(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.fx = yield SatelliteFixture(self).start()

    @defer.inlineCallbacks
    def test_oversized_frame_before_auth_is_refused_from_its_header(self):
        # Only the header of a 16 MiB frame is sent: the server answers 1009
        # without waiting for (or buffering) the payload.
        header = masked_frame_header(16 * 1024 * 1024)
        data = yield threads.deferToThread(
            raw_exchange, self.fx.port, HANDSHAKE.format(extra="").encode(), header)
        self.assertTrue(data.startswith(b"HTTP/1.1 101"), data[:200])
        self.assertEqual(close_code(data), 1009)
        yield eventually(lambda: not self.fx.service.connections, message="connection gone")

    @defer.inlineCallbacks
    def test_limit_is_small_before_auth_and_full_after(self):
        size = transport_mod.PRE_AUTH_MAX_BYTES + 1000
        stranger = yield self.fx.client()
        stranger.send(big_ping(ORIGINAL, size))
        code = yield stranger.wait_closed()
        self.assertIn(code, (1009, 1006))  # the sender may see the drop before the close frame
        # The same message from an authenticated client is answered.
        c = yield self.fx.authed(ORIGINAL, "big-after-auth", "alice")
        c.send(big_ping(ORIGINAL, size))
        self.assertEqual((yield c.recv()), bytes.fromhex("06 0a 00"))  # SatPingResp
        c.send(msg(ORIGINAL, "SatPingReq"))
        self.assertEqual((yield c.recv()), bytes.fromhex("06 0a 00"))

    @defer.inlineCallbacks
    def test_a_message_fragmented_into_small_frames_is_capped_too(self):
        half = transport_mod.PRE_AUTH_MAX_BYTES // 2 + 10
        first = bytes([0x02, 0x80 | 126]) + struct.pack("!H", half) + b"\0\0\0\0" + b"\0" * half  # not FIN
        second = bytes([0x00, 0x80 | 126]) + struct.pack("!H", half) + b"\0\0\0\0"  # continuation header
        data = yield threads.deferToThread(
            raw_exchange, self.fx.port, HANDSHAKE.format(extra="").encode(), first + second)
        self.assertEqual(close_code(data), 1009, data[-200:])

    @defer.inlineCallbacks
    def test_oversized_opening_handshake_is_431(self):
        extra = "X-Padding: " + "a" * transport_mod.MAX_HANDSHAKE_BYTES + "\r\n"
        data = yield threads.deferToThread(raw_exchange, self.fx.port, HANDSHAKE.format(extra=extra).encode())
        self.assertTrue(data.startswith(b"HTTP/1.1 431 Request Header Fields Too Large"), data[:200])
        # A handshake that never ends is cut off at the limit too, not buffered.
        endless = HANDSHAKE.format(extra="").encode()[:-2] + b"X: " + b"b" * (transport_mod.MAX_HANDSHAKE_BYTES + 1)
        data = yield threads.deferToThread(raw_exchange, self.fx.port, endless)
        self.assertTrue(data.startswith(b"HTTP/1.1 431"), data[:200])
        yield eventually(lambda: not self.fx.service.connections, message="connections gone")


class Wss(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        from electric.tls import TLSFiles

        self.ca = TestCA()
        self.addCleanup(self.ca.cleanup)
        files = self.ca.server_files(owner=None)
        config = satellite_config(websocket_tls=TLSFiles(files.cert, files.key))
        self.fx = yield SatelliteFixture(self, config=config, ca_file=self.ca.ca_file).start()

    @defer.inlineCallbacks
    def test_wss_client_authenticates_and_pings(self):
        c = yield self.fx.authed(ORIGINAL, "over-tls", "alice")
        self.assertTrue(c.url.startswith("wss://"))
        c.send(msg(ORIGINAL, "SatPingReq"))
        self.assertEqual((yield c.recv()), bytes.fromhex("06 0a 00"))
        self.assertTrue(self.fx.service.status()["tls"])

    @defer.inlineCallbacks
    def test_plain_websocket_to_a_tls_port_gets_no_upgrade(self):
        data = yield threads.deferToThread(raw_exchange, self.fx.port, HANDSHAKE.format(extra="").encode())
        self.assertNotIn(b"HTTP/1.1 101", data)

    @defer.inlineCallbacks
    def test_a_client_trusting_another_ca_refuses_the_server(self):
        other = TestCA()
        self.addCleanup(other.cleanup)
        from tests.satellite_helpers import ClientClosed, WsClient

        c = WsClient(self.fx.port, ca_file=other.ca_file)
        self.fx.clients.append(c)
        with self.assertRaises(ClientClosed):
            yield c.connect()
