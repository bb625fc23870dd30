"""
The one byte cursor every Postgres decoder reads with, and the error it raises.

Messages of the frontend/backend protocol, pgoutput payloads and startup
packets are all read the same way: big-endian integers, NUL-terminated
strings, counted byte strings, nothing left over at the end.  A peer may send
anything, so every read is bounds-checked and every failure is a
`ProtocolError` naming what was being read (``malformed DataRow: ...``),
never a ``struct.error`` or ``IndexError`` escaping from deep inside a parser.
"""

from __future__ import annotations

import struct
from typing import Type

I16 = struct.Struct("!h")
U16 = struct.Struct("!H")
I32 = struct.Struct("!i")
U32 = struct.Struct("!I")
I64 = struct.Struct("!q")
U64 = struct.Struct("!Q")


class ProtocolError(Exception):
    """
    The byte stream broke the protocol.

    `sqlstate` is what a server should report in its FATAL ErrorResponse
    (08P01 protocol_violation, 54000 for an oversize message).
    """

    def __init__(self, message: str, sqlstate: str = "08P01"):
        super().__init__(message)
        self.sqlstate = sqlstate

    @property
    def message(self) -> str:
        return self.args[0]


class Cursor:
    """
    A read position in one message body.

    `what` names the message in errors; `error` is the ProtocolError subclass
    raised (pgoutput raises its own).  `end()` checks that nothing is left.
    """

    __slots__ = ("buf", "pos", "what", "error_class")

    def __init__(self, buf, what: str, pos: int = 0, error_class: Type[ProtocolError] = ProtocolError):
        self.buf = buf
        self.pos = pos
        self.what = what
        self.error_class = error_class

    def error(self, text: str) -> ProtocolError:
        """The exception to raise for a malformed body (``malformed <what>: <text>``)."""
        return self.error_class(f"malformed {self.what}: {text}")

    def _need(self, n: int) -> int:
        p = self.pos
        if n < 0 or p + n > len(self.buf):
            raise self.error(f"needs {n} more byte(s) at offset {p}, only {len(self.buf) - p} left")
        self.pos = p + n
        return p

    def unpack(self, st: struct.Struct) -> tuple:
        """Several fixed-size fields at once."""
        return st.unpack_from(self.buf, self._need(st.size))

    def int8(self) -> int:
        p = self._need(1)
        v = self.buf[p]
        return v - 256 if v > 127 else v

    def uint8(self) -> int:
        return self.buf[self._need(1)]

    def byte(self) -> bytes:
        p = self._need(1)
        return bytes(self.buf[p:p + 1])

    def int16(self) -> int:
        return I16.unpack_from(self.buf, self._need(2))[0]

    def uint16(self) -> int:
        return U16.unpack_from(self.buf, self._need(2))[0]

    def int32(self) -> int:
        return I32.unpack_from(self.buf, self._need(4))[0]

    def uint32(self) -> int:
        return U32.unpack_from(self.buf, self._need(4))[0]

    def int64(self) -> int:
        return I64.unpack_from(self.buf, self._need(8))[0]

    def uint64(self) -> int:
        return U64.unpack_from(self.buf, self._need(8))[0]

    def bytes(self, n: int) -> bytes:
        if n < 0:
            raise self.error(f"negative length {n}")
        p = self._need(n)
        return bytes(self.buf[p:p + n])

    def cstring_bytes(self) -> bytes:
        end = self.buf.find(b"\0", self.pos)
        if end < 0:
            raise self.error(f"string at offset {self.pos} is not NUL-terminated")
        v = bytes(self.buf[self.pos:end])
        self.pos = end + 1
        return v

    def cstring(self) -> str:
        raw = self.cstring_bytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.error(f"string is not valid UTF-8 ({e})") from None

    def rest(self) -> bytes:
        v = bytes(self.buf[self.pos:])
        self.pos = len(self.buf)
        return v

    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise self.error(f"{len(self.buf) - self.pos} unexpected trailing byte(s)")
