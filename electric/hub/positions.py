"""
Hub positions as the outside world sees them.

Postgres subscribers
--------------------
A stock PG 15 subscriber stores the Commit's ``end_lsn`` as its origin
progress and later asks to START_REPLICATION from it, and it checks that
Begin.final_lsn equals Commit.commit_lsn.  So every hub position gets a
fixed window of LSN space, ``LSN_STRIDE`` wide, ending at its end LSN::

    end_lsn(p)    = base + p * LSN_STRIDE
    begin LSN     = end_lsn(p - 1) + 0x10      (XLogData dataStart of Begin)
    change i LSN  = min(begin LSN + i, commit_lsn)
    commit_lsn    = end_lsn(p) - 0x10          (= Begin.final_lsn)

All of these are strictly increasing across positions, and the window of
position p lies strictly between end_lsn(p - 1) and end_lsn(p), so "the
largest position whose end LSN ≤ L" is the last transaction a subscriber at
L has applied.  `base` is per slot (`electric.hub.offsets.OffsetStore`): if
the hub's data is replaced while a subscriber holds an LSN from the old data,
the publisher raises the slot's base with `rebased` so LSNs keep growing for
that subscriber.

Satellite clients
-----------------
Clients get opaque bytes: a version byte, the hub's 8-byte identity (random,
made when the data directory is created), the position, and a CRC-32.  A
client LSN from another hub (e.g. the data directory was replaced) or a
garbled one is refused with `ValueError`, so the caller can fall back to an
initial sync instead of silently resuming at a wrong place.
"""

from __future__ import annotations

import struct
import zlib
from typing import List, NamedTuple

LSN_STRIDE = 0x100
"""LSN space per hub position: room for Begin, up to 0xDF change LSNs and Commit."""

DEFAULT_BASE = 0
MAX_LSN = (1 << 64) - 1


def end_lsn(position: int, base: int = DEFAULT_BASE) -> int:
    """Commit end LSN of the transaction at `position` (for position 0: the LSN "before everything")."""
    if position < 0:
        raise ValueError(f"position {position} is negative")
    lsn = base + position * LSN_STRIDE
    if not 0 <= lsn <= MAX_LSN:
        raise ValueError(f"position {position} with base {base:#x} is outside the 64-bit LSN space")
    return lsn


def commit_lsn(position: int, base: int = DEFAULT_BASE) -> int:
    """Commit.commit_lsn = Begin.final_lsn of the transaction at `position` (≥ 1)."""
    if position < 1:
        raise ValueError("only positions ≥ 1 hold transactions")
    return end_lsn(position, base) - 0x10


def begin_lsn(position: int, base: int = DEFAULT_BASE) -> int:
    """XLogData dataStart for the Begin of the transaction at `position` (≥ 1)."""
    if position < 1:
        raise ValueError("only positions ≥ 1 hold transactions")
    return end_lsn(position - 1, base) + 0x10


def change_lsns(position: int, n_changes: int, base: int = DEFAULT_BASE) -> List[int]:
    """dataStart LSNs of the `n_changes` change messages, non-decreasing, inside the window."""
    first = begin_lsn(position, base)
    last = commit_lsn(position, base)
    return [min(first + i, last) for i in range(n_changes)]


class TransactionLsns(NamedTuple):
    begin: int
    changes: List[int]
    commit: int
    end: int


def transaction_lsns(position: int, n_changes: int, base: int = DEFAULT_BASE) -> TransactionLsns:
    """Every LSN the 5433 publisher needs for one transaction."""
    return TransactionLsns(
        begin_lsn(position, base),
        change_lsns(position, n_changes, base),
        commit_lsn(position, base),
        end_lsn(position, base),
    )


def position_for_lsn(lsn: int, base: int = DEFAULT_BASE) -> int:
    """The largest position whose end LSN ≤ `lsn` (0 if `lsn` is below the base)."""
    if lsn < base:
        return 0
    return (lsn - base) // LSN_STRIDE


def rebased(lsn: int, position: int) -> int:
    """
    The smallest base (a multiple of LSN_STRIDE) with end_lsn(position, base) ≥ lsn.

    For a subscriber that holds `lsn` from data this hub no longer has: with
    the new base, streaming from `position` continues strictly above `lsn`.
    """
    need = lsn - position * LSN_STRIDE
    if need <= 0:
        return 0
    return -(-need // LSN_STRIDE) * LSN_STRIDE


# --- Satellite client LSNs -------------------------------------------------

CLIENT_LSN_VERSION = 1
HUB_ID_SIZE = 8
_CLIENT = struct.Struct("!B8sQ")
CLIENT_LSN_SIZE = _CLIENT.size + 4


def client_lsn(hub_id: bytes, position: int) -> bytes:
    """Opaque client LSN naming `position` of the hub `hub_id`."""
    if len(hub_id) != HUB_ID_SIZE:
        raise ValueError(f"hub id must be {HUB_ID_SIZE} bytes")
    if position < 0:
        raise ValueError(f"position {position} is negative")
    body = _CLIENT.pack(CLIENT_LSN_VERSION, bytes(hub_id), position)
    return body + struct.pack("!I", zlib.crc32(body))


def position_from_client_lsn(hub_id: bytes, data: bytes) -> int:
    """The position in a client LSN made by `client_lsn(hub_id, ...)`; ValueError otherwise."""
    data = bytes(data)
    if len(data) != CLIENT_LSN_SIZE:
        raise ValueError(f"client LSN of {len(data)} bytes is not one of this hub's ({CLIENT_LSN_SIZE} bytes)")
    body, (crc,) = data[:-4], struct.unpack("!I", data[-4:])
    if zlib.crc32(body) != crc:
        raise ValueError("client LSN is garbled (checksum mismatch)")
    version, owner, position = _CLIENT.unpack(body)
    if version != CLIENT_LSN_VERSION:
        raise ValueError(f"client LSN version {version} is not supported")
    if owner != bytes(hub_id):
        raise ValueError(f"client LSN belongs to hub {owner.hex()}, not this hub {bytes(hub_id).hex()}")
    return position


class ClientLsnCodec:
    """`client_lsn` / `position_from_client_lsn` bound to one hub identity."""

    def __init__(self, hub_id: bytes):
        if len(hub_id) != HUB_ID_SIZE:
            raise ValueError(f"hub id must be {HUB_ID_SIZE} bytes")
        self.hub_id = bytes(hub_id)

    def client_lsn(self, position: int) -> bytes:
        return client_lsn(self.hub_id, position)

    def position_from_client_lsn(self, data: bytes) -> int:
        return position_from_client_lsn(self.hub_id, data)
