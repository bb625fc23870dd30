"""inet and cidr (Postgres's inet_net_pton), macaddr (glibc sscanf) and macaddr8."""

from __future__ import annotations

from typing import List, Optional, Tuple

from electric.postgres.protocol.values.common import (
    Check,
    InvalidValue,
    SPACE,
    _CString,
    _DIGITS,
    _HEX,
    _is_digit,
    _lstrip,
    _shown,
    _syntax,
)


def _cidr_bits(s: "_CString", i: int) -> Tuple[int, Optional[int]]:
    """The digits of a "/NN" suffix starting at `i`: (end, bits), bits None when invalid (junk after it, or > 32)."""
    bits = 0
    ch = s[i]
    i += 1
    while True:
        bits = min(bits * 10 + int(ch), 1000)
        ch = s[i]
        i += 1
        if ch == "\0" or not _is_digit(ch):
            break
    return (i, bits) if ch == "\0" and bits <= 32 else (i, None)


def _ipv4_net(text: str) -> Optional[Tuple[List[int], int]]:
    """inet_net_pton_ipv4 (inet): (octets, bits) or None."""
    s = _CString(text)
    out: List[int] = []
    i = 0
    ch = s[i]
    i += 1
    while _is_digit(ch):
        tmp = 0
        while True:
            tmp = tmp * 10 + int(ch)
            if tmp > 255:
                return None
            ch = s[i]
            i += 1
            if ch == "\0" or not _is_digit(ch):
                break
        if len(out) == 4:
            return None
        out.append(tmp)
        if ch in ("\0", "/"):
            break
        if ch != ".":
            return None
        ch = s[i]
        i += 1
    bits = -1
    if ch == "/" and _is_digit(s[i]) and out:
        i, got = _cidr_bits(s, i)
        if got is None:
            return None
        bits, ch = got, "\0"
    if ch != "\0":
        return None
    if bits == -1:
        if len(out) != 4:
            return None
        bits = 32
    if not out or bits // 8 > len(out):
        return None
    return out + [0] * (4 - len(out)), bits


def _ipv4_cidr(text: str) -> Optional[Tuple[List[int], int]]:
    """inet_cidr_pton_ipv4 (cidr, classful default widths): (octets, bits) or None."""
    s = _CString(text)
    out: List[int] = []
    i = 0
    ch = s[i]
    i += 1
    if ch == "0" and s[i] in ("x", "X") and s[i + 1] in _HEX:
        i += 1
        dirty, tmp = 0, 0
        while True:
            ch = s[i]
            i += 1
            if ch == "\0" or ch not in _HEX:
                break
            tmp = int(ch, 16) if dirty == 0 else (tmp << 4) | int(ch, 16)
            dirty += 1
            if dirty == 2:
                if len(out) == 4:
                    return None
                out.append(tmp)
                dirty = 0
        if dirty:
            if len(out) == 4:
                return None
            out.append((tmp << 4) & 0xFF)
    elif _is_digit(ch):
        while True:
            tmp = 0
            while True:
                tmp = tmp * 10 + int(ch)
                if tmp > 255:
                    return None
                ch = s[i]
                i += 1
                if ch == "\0" or not _is_digit(ch):
                    break
            if len(out) == 4:
                return None
            out.append(tmp)
            if ch in ("\0", "/"):
                break
            if ch != ".":
                return None
            ch = s[i]
            i += 1
            if not _is_digit(ch):
                return None
    else:
        return None
    bits = -1
    if ch == "/" and _is_digit(s[i]) and out:
        i, got = _cidr_bits(s, i)
        if got is None:
            return None
        bits, ch = got, "\0"
    if ch != "\0" or not out:
        return None
    if bits == -1:
        first = out[0]
        bits = 32 if first >= 240 else 8 if first >= 224 else 24 if first >= 192 else 16 if first >= 128 else 8
        if bits < len(out) * 8:
            bits = len(out) * 8
        if bits == 8 and first == 224:
            bits = 4
    while bits > len(out) * 8:
        if len(out) == 4:
            return None
        out.append(0)
    return out + [0] * (4 - len(out)), bits


def _getbits(src: str) -> Optional[int]:
    if not src:
        return None
    val = 0
    for k, ch in enumerate(src):
        if ch not in _DIGITS:
            return None
        if k != 0 and val == 0:
            return None  # no leading zeros
        val = val * 10 + int(ch)
        if val > 128:
            return None
    return val


def _getv4(src: str) -> Optional[Tuple[List[int], int]]:
    """
    getv4: an embedded IPv4 address in IPv6 input, as lax as Postgres's
    (fewer than four octets and empty octets pass; missing octets are 0):
    (4 octets, bits or -1) or None.
    """
    out: List[int] = []
    val, digits = 0, 0
    for k, ch in enumerate(src):
        if ch in _DIGITS:
            if digits and val == 0:
                return None  # no leading zeros
            digits += 1
            val = val * 10 + int(ch)
            if val > 255:
                return None
            continue
        if ch in "./":
            if len(out) > 3:
                return None
            out.append(val)
            if ch == "/":
                bits = _getbits(src[k + 1:])
                return (out + [0] * (4 - len(out)), bits) if bits is not None else None
            val, digits = 0, 0
            continue
        return None
    if not digits or len(out) > 3:
        return None
    out.append(val)
    return out + [0] * (4 - len(out)), -1


def _ipv6(src: str) -> Optional[Tuple[bytes, int]]:
    """inet_cidr_pton_ipv6: (16 bytes, bits) or None."""
    tp: List[int] = []
    colon_at: Optional[int] = None
    i, n = 0, len(src)
    if src.startswith(":"):
        if src[1:2] != ":":
            return None
        i = 1
    curtok = i
    saw_xdigit = False
    val = 0
    digits = 0
    bits = -1
    while i < n:
        ch = src[i]
        i += 1
        if ch in _HEX:
            val = (val << 4) | int(ch, 16)
            digits += 1
            if digits > 4:
                return None
            saw_xdigit = True
            continue
        if ch == ":":
            curtok = i
            if not saw_xdigit:
                if colon_at is not None:
                    return None
                colon_at = len(tp)
                continue
            if i >= n:
                return None
            if len(tp) + 2 > 16:
                return None
            tp += [val >> 8 & 0xFF, val & 0xFF]
            saw_xdigit, digits, val = False, 0, 0
            continue
        if ch == ".":
            v4 = _getv4(src[curtok:]) if len(tp) + 4 <= 16 else None
            if v4 is not None:
                tp += v4[0]
                bits = v4[1]
                saw_xdigit = False
                break
            return None
        if ch == "/":
            b = _getbits(src[i:])
            if b is not None:
                bits = b
                break
        return None
    if saw_xdigit:
        if len(tp) + 2 > 16:
            return None
        tp += [val >> 8 & 0xFF, val & 0xFF]
    if bits == -1:
        bits = 128
    if colon_at is not None:
        if len(tp) == 16:
            return None
        tail = tp[colon_at:]
        tp = tp[:colon_at] + [0] * (16 - len(tp)) + tail
    if len(tp) != 16:
        return None
    return bytes(tp), bits


def _network(cidr: bool) -> Check:
    label = "cidr" if cidr else "inet"

    def check(text: str) -> None:
        if ":" in text:
            parsed6 = _ipv6(text)
            if parsed6 is None or parsed6[1] > 128:
                raise _syntax(label, text)
            address, bits, width = parsed6[0], parsed6[1], 128
        else:
            parsed4 = _ipv4_cidr(text) if cidr else _ipv4_net(text)
            if parsed4 is None or parsed4[1] > 32:
                raise _syntax(label, text)
            address, bits, width = bytes(parsed4[0]), parsed4[1], 32
        if cidr:
            value = int.from_bytes(address, "big")
            if bits < width and value & ((1 << (width - bits)) - 1):
                raise InvalidValue(f'invalid cidr value: "{_shown(text)}": value has bits set to right of mask')

    return check


def _scanf_hex(text: str, i: int, width: Optional[int]) -> Optional[Tuple[int, int]]:
    """glibc sscanf "%x" / "%2x" at `i`: (value as a C int, end) or None on a matching failure."""
    n = len(text)
    while i < n and text[i] in SPACE:
        i += 1
    limit = n if width is None else min(n, i + width)
    j = i
    negative = False
    if j < limit and text[j] in "+-":
        negative = text[j] == "-"
        j += 1
    if j + 1 < limit and text[j] == "0" and text[j + 1] in "xX":
        j += 2  # glibc eats the prefix even when no hex digit follows: "0x" alone reads as 0
        k = j
        while k < limit and text[k] in _HEX:
            k += 1
        if k == j:
            return 0, k
    k = j
    while k < limit and text[k] in _HEX:
        k += 1
    if k == j:
        return None
    significant = text[j:k].lstrip("0") or "0"
    value = int(significant, 16) if len(significant) <= 16 else (1 << 64) - 1
    if value >= 1 << 64:
        value = (1 << 64) - 1
    if negative:
        value = (-value) % (1 << 64)
    value &= 0xFFFFFFFF  # stored into an unsigned int, read back as int
    if value & 0x80000000:
        value -= 1 << 32
    return value, k


_MAC_FORMATS = (
    (None, ":::::"), (None, "-----"), (2, "  :  "), (2, "  -  "), (2, " . . "), (2, " - - "), (2, "     "),
)


def check_macaddr(text: str) -> None:
    for width, separators in _MAC_FORMATS:
        values = []
        i = 0
        ok = True
        for k in range(6):
            got = _scanf_hex(text, i, width)
            if got is None:
                ok = False
                break
            values.append(got[0])
            i = got[1]
            if k < 5 and separators[k] != " ":
                if i < len(text) and text[i] == separators[k]:
                    i += 1
                else:
                    ok = False
                    break
        if not ok or len(values) != 6:
            continue
        if text[i:].strip(SPACE):
            continue  # "%1s" matched trailing garbage
        if any(not 0 <= v <= 255 for v in values):
            raise InvalidValue(f'invalid octet value in "macaddr" value: "{_shown(text)}"')
        return
    raise _syntax("macaddr", text)


def check_macaddr8(text: str) -> None:
    text = text.encode("utf-8").decode("latin-1")  # macaddr8_in walks bytes
    i = _lstrip(text)
    n = len(text)
    count = 0
    spacer = ""
    while i < n and i + 1 < n:
        count += 1
        if count > 8 or text[i] not in _HEX or text[i + 1] not in _HEX:
            raise _syntax("macaddr8", text)
        i += 2
        if i < n and text[i] in ":-.":
            if not spacer:
                spacer = text[i]
            elif spacer != text[i]:
                raise _syntax("macaddr8", text)
            i += 1
        if count in (6, 8) and i < n and text[i] in SPACE:
            i += 1
            while i < n and text[i] in SPACE:
                i += 1
            if i < n:
                raise _syntax("macaddr8", text)
    if count not in (6, 8):
        raise _syntax("macaddr8", text)
