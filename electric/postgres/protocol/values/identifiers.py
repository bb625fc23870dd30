"""tid, int2vector and oidvector, txid_snapshot, and the reg* types (OIDs only: names are each database's)."""

from __future__ import annotations

from typing import List, Tuple

from electric.postgres.protocol.values.common import (
    Check,
    InvalidValue,
    NotPortable,
    _char_at,
    _lstrip,
    _range,
    _shown,
    _strtol_prefix,
    _strtoul_prefix,
    _syntax,
)
from electric.postgres.protocol.values.numbers import _oid_like


def check_tid(text: str) -> None:
    coords: List[int] = []
    for k, ch in enumerate(text):
        if len(coords) == 2 or ch == ")":
            break
        if ch == "," or (ch == "(" and not coords):
            coords.append(k + 1)
    if len(coords) < 2:
        raise _syntax("tid", text)
    end, value, overflow = _strtoul_prefix(text, coords[0], 10)
    if value is None:
        end, value = coords[0], 0
    if overflow or _char_at(text, end) != ",":
        raise _syntax("tid", text)
    low = value & 0xFFFFFFFF
    if value != low and value != (low - (1 << 32) if low & 0x80000000 else low) % (1 << 64):
        raise _syntax("tid", text)
    end, value, overflow = _strtoul_prefix(text, coords[1], 10)
    if value is None:
        end, value = coords[1], 0
    if overflow or _char_at(text, end) != ")" or value > 0xFFFF:
        raise _syntax("tid", text)


FUNC_MAX_ARGS = 100


def check_int2vector(text: str) -> None:
    i, n = 0, len(text)
    for _ in range(FUNC_MAX_ARGS):
        i = _lstrip(text, i)
        if i >= n:
            return
        end, value = _strtol_prefix(text, i)
        if value is None:
            raise _syntax("smallint", text[i:])
        if not -32768 <= value <= 32767:
            raise _range("smallint", text[i:end])
        if end < n and text[end] != " ":
            raise _syntax("smallint", text[i:])
        i = end
    if _lstrip(text, i) < n:
        raise InvalidValue("int2vector has too many elements")


def _oid_subr(text: str, i: int) -> int:
    """oidin_subr with an end pointer: the index after the number."""
    end, value, overflow = _strtoul_prefix(text, i, 10)
    if value is None:
        raise _syntax("oid", text[i:])
    if overflow:
        raise _range("oid", text[i:end])
    low = value & 0xFFFFFFFF
    if value != low and value != (low - (1 << 32) if low & 0x80000000 else low) % (1 << 64):
        raise _range("oid", text[i:end])
    return end


def check_oidvector(text: str) -> None:
    i, n = 0, len(text)
    for _ in range(FUNC_MAX_ARGS):
        i = _lstrip(text, i)
        if i >= n:
            return
        i = _oid_subr(text, i)
    if _lstrip(text, i) < n:
        raise InvalidValue("oidvector has too many elements")


def check_txid_snapshot(text: str) -> None:
    def u64(i: int) -> Tuple[int, int]:
        end, value, _overflow = _strtoul_prefix(text, i, 10)
        return (i, 0) if value is None else (end, value)

    bad = _syntax("txid_snapshot", text)
    end, xmin = u64(0)
    if _char_at(text, end) != ":":
        raise bad
    end, xmax = u64(end + 1)
    if _char_at(text, end) != ":":
        raise bad
    i = end + 1
    if xmin == 0 or xmax == 0 or xmax < xmin:
        raise bad
    last = 0
    while i < len(text):
        end, value = u64(i)
        i = end
        if value < xmin or value >= xmax or value < last:
            raise bad
        last = value
        if i < len(text) and text[i] == ",":
            i += 1
        elif i < len(text):
            raise bad


def _object_reference(label: str) -> Check:
    oid_check = _oid_like("oid")

    def check(text: str) -> None:
        # reg*in: "-" is InvalidOid and digits are an OID, read by oidin; a
        # name is looked up in the database that reads it.
        if text == "-":
            return
        if text[:1].isdigit() and text.isascii() and text.isdigit():
            oid_check(text)
            return
        raise NotPortable(
            f'{label} value "{_shown(text)}" names a database object, which each database resolves in its own '
            "catalog; send the numeric OID")

    return check
