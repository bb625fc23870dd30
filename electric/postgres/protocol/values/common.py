"""
What every input-function emulation of the package shares: the errors, C's
white space and number readers (strtol, strtoul), C strings.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple


class InvalidValue(ValueError):
    """Postgres would refuse this text for the column's type."""


class NotPortable(InvalidValue):
    """
    Postgres may accept this text, but databases do not all read it the same
    way (it depends on their settings or catalog), or it is a spelling
    Electric does not check: refused.
    """


Check = Callable[[str], None]

# C isspace() in the "C" locale, which every input function uses.
SPACE = " \t\n\r\v\f"
_DIGITS = "0123456789"
_HEX = "0123456789abcdefABCDEF"

VARHDRSZ = 4


def _syntax(type_label: str, text: str) -> InvalidValue:
    return InvalidValue(f'invalid input syntax for type {type_label}: "{_shown(text)}"')


def _range(type_label: str, text: str) -> InvalidValue:
    return InvalidValue(f'value "{_shown(text)}" is out of range for type {type_label}')


def _shown(text: str, limit: int = 200) -> str:
    """A value as quoted in an error message, cut so a huge value does not make a huge message."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _lstrip(text: str, i: int = 0) -> int:
    n = len(text)
    while i < n and text[i] in SPACE:
        i += 1
    return i


def _only_space_after(text: str, i: int) -> bool:
    return all(ch in SPACE for ch in text[i:])


def _strtoul_prefix(text: str, i: int, base: int) -> Tuple[int, Optional[int], bool]:
    """
    C strtoul/strtoull from `i`: (end index, value mod 2**64 or None if no
    digits, overflowed).  Leading spaces and a sign are eaten; base 0 reads
    0x.. as hex and 0.. as octal, like glibc.
    """
    start = i
    i = _lstrip(text, i)
    negative = False
    if i < len(text) and text[i] in "+-":
        negative = text[i] == "-"
        i += 1
    if base in (0, 16) and text[i:i + 2].lower() == "0x" and i + 2 < len(text) and text[i + 2] in _HEX:
        base, i = 16, i + 2
    elif base == 0:
        base = 8 if text[i:i + 1] == "0" else 10
    digits = _DIGITS[:base] if base <= 10 else _HEX
    j = i
    while j < len(text) and text[j] in digits:
        j += 1
    if j == i:
        return start, None, False
    significant = text[i:j].lstrip("0")
    magnitude = int(significant or "0", base) if len(significant) < 100 else 1 << 200
    overflow = magnitude >= 1 << 64
    if overflow:
        return j, (1 << 64) - 1, True
    return j, (-magnitude) % (1 << 64) if negative else magnitude, False


def _anything(text: str) -> None:
    """Input functions that take any text (text, name, "char", xid and cid in PG 15, ...)."""


class _CString:
    """A str read like a C string: past the end there is always a NUL."""

    __slots__ = ("text", "n")

    def __init__(self, text: str):
        self.text, self.n = text, len(text)

    def __getitem__(self, i: int) -> str:
        return self.text[i] if i < self.n else "\0"


def _is_digit(ch: str) -> bool:
    return "0" <= ch <= "9"


def _strtol_prefix(text: str, i: int) -> Tuple[int, Optional[int]]:
    """C strtol base 10 from `i`: (end, value clamped to a 64-bit long) or (i, None) without digits."""
    j = _lstrip(text, i)
    negative = False
    if j < len(text) and text[j] in "+-":
        negative = text[j] == "-"
        j += 1
    k = j
    while k < len(text) and "0" <= text[k] <= "9":
        k += 1
    if k == j:
        return i, None
    significant = text[j:k].lstrip("0")
    value = int(significant or "0") if len(significant) < 25 else 1 << 70
    value = -value if negative else value
    return k, max(-(1 << 63), min((1 << 63) - 1, value))


def _char_at(text: str, i: int) -> str:
    """text[i], or NUL past the end, as a C string reads."""
    return text[i] if i < len(text) else "\0"


def _context_dependent(label: str, why: str) -> Check:
    def check(text: str) -> None:
        raise NotPortable(f"{label} values {why}")

    return check


def _not_a_column_type(label: str) -> Check:
    def check(text: str) -> None:
        raise InvalidValue(f"type {label} cannot hold stored values")

    return check


_INT32 = (-(1 << 31), (1 << 31) - 1)
_INT64 = (-(1 << 63), (1 << 63) - 1)
