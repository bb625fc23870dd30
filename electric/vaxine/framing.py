"""
Erlang ``{packet, 4}`` framing: a 4-byte big-endian length, then that many bytes.

Both Vaxine links use it (spec 1.1 and 3.1).  `FrameDecoder` is the sans-IO
half that turns an arbitrarily split byte stream into whole frames; it never
holds more than one incomplete frame plus what one ``feed`` brought, and it
refuses a frame longer than `max_frame` as soon as its header arrives, so a
hostile or broken peer cannot make it buffer without bound.
"""

from __future__ import annotations

import struct
from typing import List

from electric.vaxine.errors import FrameError

HEADER = struct.Struct(">I")


def frame(body: bytes) -> bytes:
    """`body` with its length prefix."""
    if len(body) >= 2 ** 32:
        raise FrameError(f"frame of {len(body)} bytes does not fit a 32-bit length")
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Accumulates bytes, yields complete frame bodies (without the length)."""

    def __init__(self, max_frame: int):
        self.max_frame = max_frame
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> List[bytes]:
        """Append `data`; return the bodies of every frame now complete, in order.

        Raises `FrameError` for a length above `max_frame`; the decoder is then
        unusable (the stream has lost its framing).
        """
        buf = self._buffer
        buf += data
        frames = []
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            (length,) = HEADER.unpack_from(buf, pos)
            if length > self.max_frame:
                raise FrameError(f"frame of {length} bytes announced; the limit is {self.max_frame}")
            if end - pos - 4 < length:
                break
            frames.append(bytes(buf[pos + 4:pos + 4 + length]))
            pos += 4 + length
        if pos:
            del buf[:pos]
        return frames
