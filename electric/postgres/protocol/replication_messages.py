"""
Streaming-replication sub-messages, carried as the payload of CopyData.

XLogData and primary keepalives flow from a walsender to its client; standby
status updates and hot-standby feedback flow back.  ``encode()`` gives the
CopyData payload, ``frame()`` the complete ``d`` message, and
`decode_replication` reads a payload back (every malformed one is a
`ProtocolError`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from electric.postgres.protocol.cursor import I32, ProtocolError


class ReplicationMessage:
    __slots__ = ()

    def frame(self) -> bytes:
        """The complete CopyData message carrying this payload."""
        payload = self.encode()  # type: ignore[attr-defined]
        return b"d" + I32.pack(len(payload) + 4) + payload


_XLOG = struct.Struct("!QQq")
_KEEPALIVE = struct.Struct("!QqB")
_STATUS = struct.Struct("!QQQqB")
_FEEDBACK = struct.Struct("!qIIII")


@dataclass(frozen=True, slots=True)
class XLogData(ReplicationMessage):
    wal_start: int
    wal_end: int
    send_time: int
    """µs since 2000-01-01Z."""
    data: bytes

    def encode(self) -> bytes:
        return b"w" + _XLOG.pack(self.wal_start, self.wal_end, self.send_time) + self.data


@dataclass(frozen=True, slots=True)
class PrimaryKeepalive(ReplicationMessage):
    wal_end: int
    send_time: int
    reply_requested: bool = False

    def encode(self) -> bytes:
        return b"k" + _KEEPALIVE.pack(self.wal_end, self.send_time, 1 if self.reply_requested else 0)


@dataclass(frozen=True, slots=True)
class StandbyStatusUpdate(ReplicationMessage):
    written: int
    flushed: int
    applied: int
    send_time: int
    reply_requested: bool = False

    def encode(self) -> bytes:
        return b"r" + _STATUS.pack(self.written, self.flushed, self.applied, self.send_time,
                                   1 if self.reply_requested else 0)


@dataclass(frozen=True, slots=True)
class HotStandbyFeedback(ReplicationMessage):
    send_time: int
    xmin: int
    xmin_epoch: int
    catalog_xmin: int
    catalog_xmin_epoch: int

    def encode(self) -> bytes:
        return b"h" + _FEEDBACK.pack(self.send_time, self.xmin, self.xmin_epoch,
                                     self.catalog_xmin, self.catalog_xmin_epoch)


def decode_replication(payload: bytes) -> ReplicationMessage:
    """Decode a CopyData payload of a replication stream (w, k, r, h)."""
    if not payload:
        raise ProtocolError("empty CopyData payload in replication stream")
    kind = payload[:1]
    n = len(payload) - 1
    if kind == b"w":
        if n < _XLOG.size:
            raise ProtocolError(f"malformed XLogData: {n} bytes, header needs {_XLOG.size}")
        start, end, t = _XLOG.unpack_from(payload, 1)
        return XLogData(start, end, t, bytes(payload[1 + _XLOG.size:]))
    if kind == b"k":
        if n != _KEEPALIVE.size:
            raise ProtocolError(f"malformed PrimaryKeepalive: {n} bytes, expected {_KEEPALIVE.size}")
        end, t, reply = _KEEPALIVE.unpack_from(payload, 1)
        return PrimaryKeepalive(end, t, bool(reply))
    if kind == b"r":
        if n != _STATUS.size:
            raise ProtocolError(f"malformed StandbyStatusUpdate: {n} bytes, expected {_STATUS.size}")
        w, f, a, t, reply = _STATUS.unpack_from(payload, 1)
        return StandbyStatusUpdate(w, f, a, t, bool(reply))
    if kind == b"h":
        if n != _FEEDBACK.size:
            raise ProtocolError(f"malformed HotStandbyFeedback: {n} bytes, expected {_FEEDBACK.size}")
        return HotStandbyFeedback(*_FEEDBACK.unpack_from(payload, 1))
    raise ProtocolError(f"unknown replication message type {bytes(kind)!r} in CopyData")
