"""
Incremental parsers of the frontend/backend protocol, one per direction.

Each direction has its own parser because the tag bytes overlap (``D`` is
DataRow from a backend but Describe from a frontend).  Parsers take
arbitrary chunks and return complete messages.  Every message length is
checked against a bound as soon as its header arrives, so a peer announcing
a huge message gets a `ProtocolError` instead of making us buffer it.
Malformed bodies also raise `ProtocolError`, and a parser that raised stays
failed: after a framing error nothing further on that byte stream can be
trusted.
"""

from __future__ import annotations

import struct
from typing import Dict, Optional

from electric.postgres.protocol.cursor import I32, Cursor, ProtocolError
from electric.postgres.protocol.messages import (
    BACKEND_MESSAGES,
    CANCEL_REQUEST_CODE,
    FRONTEND_MESSAGES,
    GSSENC_REQUEST_CODE,
    SSL_REQUEST_CODE,
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    SSLResponse,
    StartupMessage,
    Terminate,
)

DEFAULT_MAX_MESSAGE_SIZE = 1 << 30
"""1 GiB, Postgres' own limit for a single field/message."""
DEFAULT_MAX_STARTUP_SIZE = 10000
"""Postgres' MAX_STARTUP_PACKET_LENGTH."""

_HEADER = struct.Struct("!ci")


def decode_startup_packet(body: bytes):
    r = Cursor(body, "startup packet")
    code = r.int32()
    if code == SSL_REQUEST_CODE:
        r.end()
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        r.end()
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        r.what = "CancelRequest"
        pid, key = r.int32(), r.int32()
        r.end()
        return CancelRequest(pid, key)
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        raise ProtocolError(
            f"unsupported frontend protocol {major}.{minor}: server supports 3.0", "0A000")
    r.what = "StartupMessage"
    params: Dict[str, str] = {}
    while True:
        key = r.cstring()
        if key == "":
            break
        params[key] = r.cstring()
    r.end()
    return StartupMessage(params, code)



class _Parser:
    """Shared framing: buffer, bounds, sticky failure."""

    _table: Dict[bytes, type] = {}
    _direction = ""

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE):
        self.max_message_size = max_message_size
        self._buf = bytearray()
        self._pos = 0  # start of the first unparsed byte; compacted once per feed()
        self._error: Optional[ProtocolError] = None
        self.closed = False

    def _discard(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def _fail(self, err: ProtocolError) -> ProtocolError:
        self._error = err
        self._discard()
        return err

    def _check_length(self, tag: bytes, length: int) -> None:
        if length < 4:
            raise self._fail(ProtocolError(
                f"invalid {self._direction} message length {length} for type {tag!r}"))
        if length - 4 > self.max_message_size:
            raise self._fail(ProtocolError(
                f"{self._direction} message type {tag!r} of {length - 4} bytes exceeds the "
                f"limit of {self.max_message_size} bytes", "54000"))

    def _tagged(self, out: list) -> bool:
        """Parse one tagged message from the buffer into `out`; False if incomplete."""
        buf, p = self._buf, self._pos
        if len(buf) - p < 5:
            return False
        tag, length = _HEADER.unpack_from(buf, p)
        self._check_length(tag, length)
        if len(buf) - p < length + 1:
            return False
        cls = self._table.get(tag)
        if cls is None:
            raise self._fail(ProtocolError(
                f"unexpected {self._direction} message type {tag!r} (length {length})"))
        body = bytes(buf[p + 5:p + length + 1])
        self._pos = p + length + 1
        try:
            out.append(cls.decode_body(body))
        except ProtocolError as e:
            raise self._fail(e) from None
        return True

    def feed(self, data: bytes) -> list:
        """Append `data`; return every message it completed, in order."""
        if self._error is not None:
            raise self._error
        if self.closed:
            return []
        self._buf += data
        out: list = []
        try:
            while not self.closed and len(self._buf) > self._pos and self._step(out):
                pass
        finally:
            if self._pos:
                del self._buf[:self._pos]
                self._pos = 0
        return out

    def _step(self, out: list) -> bool:
        return self._tagged(out)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet forming a complete message."""
        return len(self._buf) - self._pos


class BackendParser(_Parser):
    """
    Client side: parses what a backend sends.

    Call `expect_ssl_response()` after sending an SSLRequest/GSSENCRequest;
    the next byte is then the unframed ``S``/``N`` answer (an ``E`` there is
    a real ErrorResponse from a server that does not know the request).
    """

    _table = BACKEND_MESSAGES
    _direction = "backend"

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE):
        super().__init__(max_message_size)
        self._await_ssl = False

    def expect_ssl_response(self) -> None:
        self._await_ssl = True

    def _step(self, out: list) -> bool:
        if self._await_ssl:
            b = bytes(self._buf[self._pos:self._pos + 1])
            if b in (b"S", b"N"):
                self._pos += 1
                self._await_ssl = False
                out.append(SSLResponse(b == b"S"))
                return True
            if b != b"E":
                raise self._fail(ProtocolError(
                    f"invalid answer to SSL/GSS request: {b!r} (expected S or N)"))
            self._await_ssl = False
        return self._tagged(out)


    def feed_copy_both(self, data: bytes) -> list:
        """
        `feed` for the CopyBoth phase of a replication stream, where nearly
        every message is a CopyData: a CopyData comes out as its payload
        (``bytes``), not as a `CopyData` object; any other message as `feed`
        gives it.  Same bounds, same errors, same sticky failure.  (A
        replication stream carries one CopyData per WAL record: building an
        object for each was a fifth of the reactor's time.)
        """
        if self._error is not None:
            raise self._error
        if self.closed:
            return []
        buf = self._buf
        buf += data
        out: list = []
        append = out.append
        p = self._pos
        n = len(buf)
        unpack = _HEADER.unpack_from
        limit = self.max_message_size + 4
        try:
            while n - p >= 5:
                tag, length = unpack(buf, p)
                if length < 4 or length > limit:
                    self._check_length(tag, length)
                end = p + length + 1
                if end > n:
                    break
                if tag == b"d":
                    append(bytes(buf[p + 5:end]))
                    p = end
                    continue
                self._pos = p
                if not self._step(out):  # pragma: no cover - a complete message always parses or raises
                    break
                p = self._pos
        finally:
            if self._error is None:
                del buf[:p]
            self._pos = 0
        return out


class FrontendParser(_Parser):
    """
    Server side: parses what a frontend sends.

    Starts in the startup phase (untagged packets: SSLRequest, GSSENCRequest,
    CancelRequest, StartupMessage); after a StartupMessage, tagged messages
    follow.  After a CancelRequest or Terminate the connection has nothing
    more to say, so later bytes are ignored (`closed` is set).
    """

    _table = FRONTEND_MESSAGES
    _direction = "frontend"

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 max_startup_size: int = DEFAULT_MAX_STARTUP_SIZE):
        super().__init__(max_message_size)
        self.max_startup_size = max_startup_size
        self.in_startup = True

    def _step(self, out: list) -> bool:
        if not self.in_startup:
            ok = self._tagged(out)
            if ok and isinstance(out[-1], Terminate):
                self.closed = True
                self._discard()
            return ok
        buf, p = self._buf, self._pos
        if len(buf) - p < 4:
            return False
        length = I32.unpack_from(buf, p)[0]
        if length < 8 or length > self.max_startup_size:
            raise self._fail(ProtocolError(
                f"invalid startup packet length {length} (allowed 8..{self.max_startup_size})"))
        if len(buf) - p < length:
            return False
        body = bytes(buf[p + 4:p + length])
        self._pos = p + length
        try:
            pkt = decode_startup_packet(body)
        except ProtocolError as e:
            raise self._fail(e) from None
        out.append(pkt)
        if isinstance(pkt, StartupMessage):
            self.in_startup = False
        elif isinstance(pkt, CancelRequest):
            self.closed = True
            self._discard()
        return True
