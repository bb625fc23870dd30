"""
Log sequence numbers and Postgres timestamps.

LSNs are plain 64-bit ints inside Electric; the ``X/Y`` text form (two
uppercase hex halves without leading zeros, as Postgres prints them) exists
only at the edges: SQL, replication commands, logs.  Postgres timestamps on
the replication wire count microseconds from 2000-01-01 UTC, while the rest
of Electric uses Unix microseconds, so conversions live here too.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone

MAX_LSN = 0xFFFF_FFFF_FFFF_FFFF

PG_EPOCH_UNIX_US = 946_684_800 * 1_000_000
"""2000-01-01T00:00:00Z in Unix microseconds."""

PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)

_LSN_RE = re.compile(r"\A([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})\Z")


class LSNError(ValueError):
    """A string or number that is not a valid LSN."""


def parse_lsn(text: str) -> int:
    """``"16/B374D848"`` → ``0x16B374D848``; rejects anything Postgres would."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    m = _LSN_RE.match(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise LSNError(f"invalid LSN {text!r}: expected X/Y with 1-8 hex digits each")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def format_lsn(lsn: int) -> str:
    """``0x16B374D848`` → ``"16/B374D848"``."""
    check_lsn(lsn)
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def check_lsn(lsn: int) -> int:
    if not isinstance(lsn, int) or isinstance(lsn, bool) or not 0 <= lsn <= MAX_LSN:
        raise LSNError(f"invalid LSN {lsn!r}: must be an int in 0..2**64-1")
    return lsn


def pg_to_unix_us(pg_us: int) -> int:
    return pg_us + PG_EPOCH_UNIX_US


def unix_to_pg_us(unix_us: int) -> int:
    return unix_us - PG_EPOCH_UNIX_US


def pg_now() -> int:
    """Current time as a Postgres wire timestamp (µs since 2000-01-01Z)."""
    return unix_to_pg_us(time.time_ns() // 1000)


def pg_to_datetime(pg_us: int) -> datetime:
    """Wire timestamp → aware UTC datetime (exact, no float rounding)."""
    return PG_EPOCH + timedelta(microseconds=pg_us)


def datetime_to_pg(dt: datetime) -> int:
    if dt.tzinfo is None:
        raise ValueError("datetime_to_pg needs an aware datetime")
    delta = dt - PG_EPOCH
    return delta // timedelta(microseconds=1)
