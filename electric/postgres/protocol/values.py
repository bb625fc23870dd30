"""
Would Postgres accept this text as a value of that column?  Decided without a database.

Every value Electric carries travels in Postgres's text form and is parsed by
each database's input functions only when the apply worker of its
subscription stores it.  A value a database refuses there stops that
database's replication for good: the apply worker fails, restarts and fails
on the same transaction forever.  Values from Satellite clients are therefore
checked here, before Electric acknowledges them, against the same rules the
input functions of PostgreSQL 15 apply, including the column's type modifier
(`atttypmod`: varchar/char/bit lengths, numeric precision and scale, time
precision, array element modifiers).

`validator(type_name, typmod)` returns a function that raises `InvalidValue`
(with a message in Postgres's words where it has them) for text the type's
input function would refuse.

A few inputs mean different things, or are valid or not, depending on the
settings or catalog of the database that reads them: dates whose field order
depends on ``DateStyle``, time zone names and abbreviations (each server's
``timezone_abbreviations`` and time zone database), ``money`` beyond plain
integers (``lc_monetary``), names of database objects (``regclass`` ...),
roles (``aclitem``), ``xml`` (``xmloption``).  Electric cannot know how every
database will read them, so it refuses them with `NotPortable`, a
subclass of `InvalidValue`, even where this or that database would accept
them.  Everything else is decided exactly as PostgreSQL 15 decides it (the
property tests compare with a real server).

Pure: no I/O, nothing at import time beyond building constant tables.
"""

from __future__ import annotations

import functools
import math
import re
from fractions import Fraction
from typing import Callable, Dict, List, Optional, Tuple

from electric.postgres.protocol import types


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
# scanner_isspace(): the SQL lexer's whitespace (no vertical tab); arrays, ranges and records use isspace.
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


# -- integers --------------------------------------------------------------------------------


def _integer(label: str, bits: int) -> Check:
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    def check(text: str) -> None:
        # pg_strtoint16/32/64 in PostgreSQL 15: spaces, a sign, decimal digits, spaces.
        i = _lstrip(text)
        j = i
        if j < len(text) and text[j] in "+-":
            j += 1
        k = j
        while k < len(text) and "0" <= text[k] <= "9":
            k += 1
        if k == j:
            raise _syntax(label, text)
        significant = text[j:k].lstrip("0")
        value = int(significant or "0") if len(significant) < 30 else None
        if value is None or not low <= (-value if text[j - 1:j] == "-" else value) <= high:
            raise _range(label, text)
        if not _only_space_after(text, k):
            raise _syntax(label, text)

    return check


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


def _oid_like(label: str) -> Check:
    def check(text: str) -> None:
        # oidin / uint32in_subr: strtoul(..., 10); the result must fit 32 bits
        # (or be a sign-extended negative int32, which wraps).
        if text == "":
            raise _syntax(label, text)
        end, value, overflow = _strtoul_prefix(text, 0, 10)
        if value is None:
            raise _syntax(label, text)
        if overflow:
            raise _range(label, text)
        if not _only_space_after(text, end):
            raise _syntax(label, text)
        low = value & 0xFFFFFFFF
        signed = low - (1 << 32) if low & 0x80000000 else low
        if value != low and value != signed % (1 << 64):
            raise _range(label, text)

    return check


def _anything(text: str) -> None:
    """Input functions that take any text (text, name, "char", xid and cid in PG 15, ...)."""


# -- bool ------------------------------------------------------------------------------------


def check_bool(text: str) -> None:
    value = text.strip(SPACE)
    v = value.lower()
    n = len(v)
    ok = False
    if n:
        first = v[0]
        if first == "t":
            ok = "true".startswith(v)
        elif first == "f":
            ok = "false".startswith(v)
        elif first == "y":
            ok = "yes".startswith(v)
        elif first == "n":
            ok = "no".startswith(v)
        elif first == "o":
            ok = n >= 2 and ("on".startswith(v) or "off".startswith(v))
        elif v in ("1", "0"):
            ok = True
    if not ok:
        raise _syntax("boolean", text)


# -- floating point --------------------------------------------------------------------------

_FLOAT_DEC = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_FLOAT_HEX = re.compile(r"([+-]?)0[xX]((?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+))(?:[pP]([+-]?[0-9]+))?")
_FLOAT_WORD = re.compile(r"[+-]?(?:inf(?:inity)?|nan(?:\([0-9A-Za-z_]*\))?)", re.IGNORECASE)
_PG_FLOAT_WORDS = ("nan", "infinity", "+infinity", "-infinity", "inf", "+inf", "-inf")

# (mantissa bits, smallest subnormal exponent, largest finite value)
_FLOAT_FORMATS = {
    "float4": (24, -149, Fraction((1 << 24) - 1, 1) * Fraction(2) ** (127 - 23)),
    "float8": (53, -1074, Fraction((1 << 53) - 1, 1) * Fraction(2) ** (1023 - 52)),
}
_SIG_DIGITS = 1200  # more than any binary64 rounding decision needs (767)


def _decimal_parts(number: str) -> Tuple[str, int]:
    """(significant digits without leading zeros, decimal exponent of the last digit) of a decimal literal."""
    mant, _, exp = number.lower().lstrip("+-").partition("e")
    whole, _, frac = mant.partition(".")
    digits = (whole + frac).lstrip("0")
    exponent = (int(exp) if exp else 0) - len(frac)
    return digits, exponent


def _float_fits(kind: str, exact: Fraction) -> Optional[str]:
    """None if `exact` (> 0) rounds to a finite nonzero value of `kind`, else "overflow"/"underflow"."""
    bits, min_exp, largest = _FLOAT_FORMATS[kind]
    # Round to nearest, ties to even: the value becomes infinite from
    # largest + half an ulp of the top binade (that tie rounds to the even
    # neighbour, which is infinity), and zero up to half the smallest
    # subnormal inclusive (that tie rounds to the even neighbour, zero).
    top_exponent = (127 if kind == "float4" else 1023) - (bits - 1)
    overflow_at = largest + Fraction(2) ** top_exponent / 2
    if exact >= overflow_at:
        return "overflow"
    if exact <= Fraction(2) ** min_exp / 2:
        return "underflow"
    return None


def _float_value_check(kind: str, digits: str, exponent: int) -> Optional[str]:
    """Overflow/underflow of a nonzero decimal value digits * 10**exponent."""
    magnitude = len(digits) + exponent  # value is in [10**(magnitude-1), 10**magnitude)
    limit = 40 if kind == "float4" else 310
    if magnitude - 1 > limit:
        return "overflow"
    if magnitude < -(limit + 20 + (20 if kind == "float8" else 10)):
        return "underflow"
    if len(digits) > _SIG_DIGITS:
        sticky = "1" if digits[_SIG_DIGITS:].strip("0") else "0"
        exponent += len(digits) - _SIG_DIGITS - 1
        digits = digits[:_SIG_DIGITS] + sticky
    exact = Fraction(int(digits)) * (Fraction(10) ** exponent)
    return _float_fits(kind, exact)


def _strtod_prefix(text: str, i: int, kind: str) -> Tuple[int, Optional[str]]:
    """
    glibc strtod/strtof from `i` (spaces already skipped): (end, error) where
    end == i means no number was read and error is "overflow"/"underflow"
    when errno would be ERANGE with a zero or infinite result.
    """
    m = _FLOAT_HEX.match(text, i)
    if m:
        sign, mant, exp = m.groups()
        whole, _, frac = mant.partition(".")
        digits = (whole + frac).lstrip("0")
        if not digits:
            return m.end(), None
        value_exp = (int(exp) if exp else 0) - 4 * len(frac)
        # binary magnitude check before building a huge Fraction
        top = value_exp + 4 * len(digits)
        if top > 2000:
            return m.end(), "overflow"
        if top < -2000:
            return m.end(), "underflow"
        exact = Fraction(int(digits, 16)) * Fraction(2) ** value_exp
        min_exp = _FLOAT_FORMATS[kind][1]
        if exact < Fraction(2) ** (-126 if kind == "float4" else -1022) and \
                (exact / Fraction(2) ** min_exp).denominator != 1:
            # glibc rounds inexact subnormal hexadecimal input twice
            # (0x1.000001p-150 becomes 0 as a float4), other C libraries do not
            raise NotPortable(
                f'subnormal hexadecimal floating-point input "{_shown(text)}" is read differently by different C libraries')
        return m.end(), _float_fits(kind, exact)
    m = _FLOAT_WORD.match(text, i)
    if m:
        return m.end(), None
    m = _FLOAT_DEC.match(text, i)
    if m:
        digits, exponent = _decimal_parts(m.group())
        if not digits:
            return m.end(), None
        return m.end(), _float_value_check(kind, digits, exponent)
    return i, None


def _float(kind: str, label: str) -> Check:
    def check(text: str) -> None:
        # float4in / float8in_internal: spaces, strtod/strtof (which also reads
        # hex floats, inf, infinity, nan and nan(...)), then Postgres's own
        # spellings of the special values, then spaces.
        i = _lstrip(text)
        if i == len(text):
            raise _syntax(label, text)
        end, error = _strtod_prefix(text, i, kind)
        if end == i or error:
            lowered = text[i:].lower()
            for word in _PG_FLOAT_WORDS:
                if lowered.startswith(word):
                    end, error = i + len(word), None
                    break
            else:
                if error:
                    raise InvalidValue(f'"{_shown(text[i:])}" is out of range for type {label}')
                raise _syntax(label, text)
        if not _only_space_after(text, end):
            raise _syntax(label, text)

    return check


# -- numeric ---------------------------------------------------------------------------------

NUMERIC_WEIGHT_MAX = 0x7FFF  # base-10000 digits before the point
NUMERIC_DSCALE_MAX = 0x3FFF
_INT_MAX_HALF = (2**31 - 1) // 2
_NUMERIC_SPECIAL = (("nan", False), ("infinity", True), ("+infinity", True), ("-infinity", True),
                    ("inf", True), ("+inf", True), ("-inf", True))


def numeric_typmod(typmod: int) -> Optional[Tuple[int, int]]:
    """(precision, scale) of a numeric typmod, None when unconstrained."""
    if typmod < VARHDRSZ:
        return None
    value = typmod - VARHDRSZ
    precision = (value >> 16) & 0xFFFF
    scale = ((value & 0x7FF) ^ 1024) - 1024
    return precision, scale


def parse_numeric(text: str, label: str = "numeric") -> Tuple[str, object]:
    """
    numeric_in's reading of `text`: ("nan", None), ("inf", sign) or
    ("number", (negative, digits, exponent, dscale)) where the value is
    digits * 10**exponent.  Raises InvalidValue like numeric_in.
    """
    i = _lstrip(text)
    lowered = text[i:i + 9].lower()
    for word, infinite in _NUMERIC_SPECIAL:
        if lowered.startswith(word):
            if not _only_space_after(text, i + len(word)):
                raise _syntax(label, text)
            return ("inf", -1 if word.startswith("-") else 1) if infinite else ("nan", None)
    j = i
    negative = False
    if j < len(text) and text[j] in "+-":
        negative = text[j] == "-"
        j += 1
    start = j
    seen_point = False
    digits: List[str] = []
    frac = 0
    while j < len(text):
        ch = text[j]
        if "0" <= ch <= "9":
            digits.append(ch)
            if seen_point:
                frac += 1
        elif ch == "." and not seen_point:
            seen_point = True
        else:
            break
        j += 1
    if not digits:
        raise _syntax(label, text)
    del start
    exponent = 0
    if j < len(text) and text[j] in "eE":
        # the exponent is read with strtol: spaces and a sign before the digits are fine
        k = _lstrip(text, j + 1)
        sign = 1
        if k < len(text) and text[k] in "+-":
            sign = -1 if text[k] == "-" else 1
            k += 1
        m = k
        while m < len(text) and "0" <= text[m] <= "9":
            m += 1
        if m == k:
            raise _syntax(label, text)
        exp_text = text[k:m].lstrip("0") or "0"
        if len(exp_text) > 12 or int(exp_text) >= _INT_MAX_HALF:
            raise InvalidValue("value overflows numeric format")
        exponent = sign * int(exp_text)
        j = m
    if not _only_space_after(text, j):
        raise _syntax(label, text)
    dscale = max(0, frac - exponent)
    significant = "".join(digits).lstrip("0")
    return "number", (negative, significant, exponent - frac, dscale)


def _numeric(typmod: int) -> Check:
    constraint = numeric_typmod(typmod)

    def check(text: str) -> None:
        kind, parsed = parse_numeric(text)
        if kind == "nan":
            return
        if kind == "inf":
            if constraint is not None:
                precision, scale = constraint
                raise InvalidValue(
                    f"numeric field overflow: a field with precision {precision}, scale {scale} cannot hold an infinite value")
            return
        _negative, digits, exponent, dscale = parsed
        if constraint is None and dscale > NUMERIC_DSCALE_MAX:
            # (with a typmod the value is first rounded to the column's scale)
            raise InvalidValue("value overflows numeric format")
        if not digits:
            return  # zero fits every precision
        before_point = len(digits) + exponent  # decimal digits left of the point
        if constraint is None:
            if before_point > 4 * (NUMERIC_WEIGHT_MAX + 1):
                raise InvalidValue("value overflows numeric format")
            return
        precision, scale = constraint
        drop = -scale - exponent  # digits rounded away
        if drop > 0:
            if drop > len(digits):
                return  # rounds to zero
            kept, first_dropped = digits[:len(digits) - drop], digits[len(digits) - drop]
            if first_dropped >= "5":
                if not kept.strip("9"):
                    before_point += 1  # 99.5 -> 100
            elif not kept:
                return  # rounds to zero
        if before_point > precision - scale:
            raise InvalidValue(
                f"numeric field overflow: a field with precision {precision}, scale {scale} must round to an "
                f"absolute value less than {'10^' + str(precision - scale) if precision != scale else '1'}")

    return check


# -- money -----------------------------------------------------------------------------------

_MONEY_LIMIT = (1 << 63) - 1


def check_money(text: str) -> None:
    """
    cash_in reads currency symbols, separators and the decimal point from
    the database's lc_monetary, so '1.50' is 1.50 in one database and 150.00
    in another.  Only a plain integer means the same everywhere.
    """
    value = text.strip(SPACE)
    m = re.fullmatch(r"-?[0-9]+", value)
    if not m:
        raise NotPortable(
            f'money value "{_shown(text)}" is read according to each database\'s lc_monetary; send a whole number')
    if abs(int(value)) * 100 > _MONEY_LIMIT:
        raise InvalidValue(f'value "{_shown(text)}" is out of range for type money')


# -- character types -------------------------------------------------------------------------


def _bounded_string(label: str, typmod: int) -> Check:
    if typmod < VARHDRSZ:
        return _anything
    limit = typmod - VARHDRSZ

    def check(text: str) -> None:
        # varchar_input / bpchar_input: a longer value is refused unless the
        # excess characters are all plain spaces (which are cut off).
        if len(text) > limit and text[limit:].strip(" "):
            raise InvalidValue(f"value too long for type {label}({limit})")

    return check


def check_bytea(text: str) -> None:
    if text.startswith("\\x"):
        i, n = 2, len(text)
        while i < n:
            ch = text[i]
            if ch in " \n\t\r":
                i += 1
                continue
            if ch not in _HEX:
                raise InvalidValue(f'invalid hexadecimal digit: "{ch}"')
            if i + 1 >= n:
                raise InvalidValue("invalid hexadecimal data: odd number of digits")
            if text[i + 1] not in _HEX:
                raise InvalidValue(f'invalid hexadecimal digit: "{text[i + 1]}"')
            i += 2
        return
    i, n = 0, len(text)
    while i < n:
        if text[i] != "\\":
            i += 1
        elif i + 3 < n and text[i + 1] in "0123" and text[i + 2] in "01234567" and text[i + 3] in "01234567":
            i += 4
        elif text[i + 1:i + 2] == "\\":
            i += 2
        else:
            raise _syntax("bytea", text)


def check_uuid(text: str) -> None:
    i, n = 0, len(text)
    braces = text.startswith("{")
    if braces:
        i = 1
    for byte in range(16):
        if i + 1 >= n or text[i] not in _HEX or text[i + 1] not in _HEX:
            raise _syntax("uuid", text)
        i += 2
        if i < n and text[i] == "-" and byte % 2 == 1 and byte < 15:
            i += 1
    if braces:
        if i >= n or text[i] != "}":
            raise _syntax("uuid", text)
        i += 1
    if i != n:
        raise _syntax("uuid", text)


# -- bit strings -----------------------------------------------------------------------------


def _bits(varying: bool, typmod: int) -> Check:
    def check(text: str) -> None:
        if text[:1] in ("b", "B"):
            body, hexadecimal = text[1:], False
        elif text[:1] in ("x", "X"):
            body, hexadecimal = text[1:], True
        else:
            body, hexadecimal = text, False
        length = len(body) * 4 if hexadecimal else len(body)
        if typmod > 0:
            if varying and length > typmod:
                raise InvalidValue(f"bit string too long for type bit varying({typmod})")
            if not varying and length != typmod:
                raise InvalidValue(f"bit string length {length} does not match type bit({typmod})")
        for ch in body:
            if hexadecimal and ch not in _HEX:
                raise InvalidValue(f'"{ch}" is not a valid hexadecimal digit')
            if not hexadecimal and ch not in "01":
                raise InvalidValue(f'"{ch}" is not a valid binary digit')

    return check


# -- json / jsonb ----------------------------------------------------------------------------

JSON_DEPTH_LIMIT = 1000
"""
Deeper documents are refused: Postgres parses JSON recursively and fails
with "stack depth limit exceeded" at a depth that depends on each server's
max_stack_depth (about 20,000 with the default).
"""

_JSON_SPACE = " \t\n\r"


def _json_word_char(ch: str) -> bool:
    # JSON_ALPHANUMERIC_CHAR: ASCII letters, digits, '_' and any non-ASCII character
    return ch.isascii() and (ch.isalnum() or ch == "_") or not ch.isascii()


class _JsonError(Exception):
    pass


def _json_number(text: str, i: int) -> int:
    """End of the number token at `i` (after an optional '-'); raises _JsonError like json_lex_number."""
    n = len(text)
    bad = False
    if i < n and text[i] == "0":
        i += 1
    elif i < n and "1" <= text[i] <= "9":
        while i < n and "0" <= text[i] <= "9":
            i += 1
    else:
        bad = True
    if i < n and text[i] == ".":
        i += 1
        if i >= n or not "0" <= text[i] <= "9":
            bad = True
        while i < n and "0" <= text[i] <= "9":
            i += 1
    if i < n and text[i] in "eE":
        i += 1
        if i < n and text[i] in "+-":
            i += 1
        if i >= n or not "0" <= text[i] <= "9":
            bad = True
        while i < n and "0" <= text[i] <= "9":
            i += 1
    while i < n and _json_word_char(text[i]):
        bad = True
        i += 1
    if bad:
        raise _JsonError("invalid number")
    return i


def _json_string(text: str, i: int, binary: bool) -> int:
    """End of the string token starting at the quote `i` (json_lex_string)."""
    n = len(text)
    high: Optional[int] = None
    i += 1
    while True:
        if i >= n:
            raise _JsonError("unterminated string")
        ch = text[i]
        if ch == '"':
            break
        if ord(ch) < 32:
            raise _JsonError(f"character with value 0x{ord(ch):02x} must be escaped")
        if ch == "\\":
            i += 1
            if i >= n:
                raise _JsonError("unterminated string")
            esc = text[i]
            if esc == "u":
                code = text[i + 1:i + 5]
                if len(code) < 4 or any(c not in _HEX for c in code):
                    raise _JsonError('"\\u" must be followed by four hexadecimal digits')
                i += 4
                if binary:
                    value = int(code, 16)
                    if 0xD800 <= value <= 0xDBFF:
                        if high is not None:
                            raise _JsonError("Unicode high surrogate must not follow a high surrogate")
                        high = value
                        i += 1
                        continue
                    if 0xDC00 <= value <= 0xDFFF:
                        if high is None:
                            raise _JsonError("Unicode low surrogate must follow a high surrogate")
                        high = None
                    elif high is not None:
                        raise _JsonError("Unicode low surrogate must follow a high surrogate")
                    if value == 0:
                        raise _JsonError("unsupported Unicode escape sequence: \\u0000 cannot be converted to text")
            else:
                if binary and high is not None:
                    raise _JsonError("Unicode low surrogate must follow a high surrogate")
                if esc not in '"\\/bfnrt':
                    raise _JsonError(f'escape sequence "\\{esc}" is invalid')
        elif binary and high is not None:
            raise _JsonError("Unicode low surrogate must follow a high surrogate")
        i += 1
    if high is not None:
        raise _JsonError("Unicode low surrogate must follow a high surrogate")
    return i + 1


def _json(binary: bool) -> Check:
    label = "jsonb" if binary else "json"
    number_check = _numeric(-1)

    def check(text: str) -> None:
        try:
            _parse_json(text, binary, number_check)
        except _JsonError as e:
            raise InvalidValue(f"invalid input syntax for type {label}: {e}") from None

    return check


def _parse_json(text: str, binary: bool, number_check: Check) -> None:
    """pg_parse_json as a loop: an explicit stack instead of recursion."""
    n = len(text)
    i = 0
    # expect: "value", "value_or_close" (after '['), "key_or_close" (after '{'),
    # "key", "colon", "comma_or_close"; stack holds '[' / '{'
    stack: List[str] = []
    expect = "value"

    def token(i: int):
        while i < n and text[i] in _JSON_SPACE:
            i += 1
        if i >= n:
            return "end", i, i
        ch = text[i]
        if ch in "{}[],:":
            return ch, i, i + 1
        if ch == '"':
            return "string", i, _json_string(text, i, binary)
        if ch == "-" or "0" <= ch <= "9":
            return "number", i, _json_number(text, i + 1 if ch == "-" else i)
        j = i
        while j < n and _json_word_char(text[j]):
            j += 1
        if j == i:
            raise _JsonError(f'token "{ch}" is invalid')
        word = text[i:j]
        if word in ("true", "false", "null"):
            return "literal", i, j
        raise _JsonError(f'token "{_shown(word, 50)}" is invalid')

    while True:
        kind, start, end = token(i)
        i = end
        if expect in ("value", "value_or_close"):
            if kind == "]" and expect == "value_or_close":
                stack.pop()
                expect = "comma_or_close"
            elif kind in ("string", "number", "literal"):
                if kind == "number" and binary:
                    try:
                        number_check(text[start:end])
                    except InvalidValue as e:
                        raise _JsonError(str(e)) from None
                expect = "comma_or_close"
            elif kind in ("[", "{"):
                stack.append(kind)
                if len(stack) > JSON_DEPTH_LIMIT:
                    raise NotPortable(
                        f"JSON nested deeper than {JSON_DEPTH_LIMIT} levels (databases refuse deep nesting "
                        "depending on their max_stack_depth)")
                expect = "value_or_close" if kind == "[" else "key_or_close"
            else:
                raise _JsonError("expected JSON value" if kind != "end" else "the input string ended unexpectedly")
        elif expect in ("key", "key_or_close"):
            if kind == "}" and expect == "key_or_close":
                stack.pop()
                expect = "comma_or_close"
            elif kind == "string":
                expect = "colon"
            else:
                raise _JsonError("expected string or \"}\"" if kind != "end" else "the input string ended unexpectedly")
        elif expect == "colon":
            if kind != ":":
                raise _JsonError('expected ":"')
            expect = "value"
        else:  # comma_or_close
            if not stack:
                if kind != "end":
                    raise _JsonError("expected end of input")
                return
            if kind == ",":
                expect = "value" if stack[-1] == "[" else "key"
            elif kind == "]" and stack[-1] == "[":
                stack.pop()
            elif kind == "}" and stack[-1] == "{":
                stack.pop()
            else:
                raise _JsonError('expected "," or "]"' if stack[-1] == "[" else 'expected "," or "}"')


# -- network addresses -----------------------------------------------------------------------


class _CString:
    """A str read like a C string: past the end there is always a NUL."""

    __slots__ = ("text", "n")

    def __init__(self, text: str):
        self.text, self.n = text, len(text)

    def __getitem__(self, i: int) -> str:
        return self.text[i] if i < self.n else "\0"


def _is_digit(ch: str) -> bool:
    return "0" <= ch <= "9"


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


# -- geometric types -------------------------------------------------------------------------


class _GeoError(Exception):
    pass


def _float8_prefix(text: str, i: int) -> Tuple[float, int]:
    """float8in_internal with an end pointer: (value, index after the number and any spaces)."""
    i = _lstrip(text, i)
    if i >= len(text):
        raise _GeoError()
    end, error = _strtod_prefix(text, i, "float8")
    if end == i or error:
        lowered = text[i:i + 9].lower()
        for word in _PG_FLOAT_WORDS:
            if lowered.startswith(word):
                end, error = i + len(word), None
                break
        else:
            raise _GeoError()
    value = _float_value(text[i:end])
    return value, _lstrip(text, end)


def _float_value(token: str) -> float:
    t = token.strip(SPACE).lower()
    sign = -1.0 if t.startswith("-") else 1.0
    body = t.lstrip("+-")
    if body.startswith("nan"):
        return math.nan
    if body.startswith("inf"):
        return sign * math.inf
    if body.startswith("0x"):
        try:
            return sign * float.fromhex(body)
        except (ValueError, OverflowError):
            return sign * math.inf
    try:
        return sign * float(body)
    except (ValueError, OverflowError):
        return sign * math.inf


def _geo_char(text: str, i: int) -> str:
    return text[i] if i < len(text) else "\0"


def _pair_decode(text: str, i: int) -> Tuple[Tuple[float, float], int]:
    i = _lstrip(text, i)
    delimited = _geo_char(text, i) == "("
    if delimited:
        i += 1
    x, i = _float8_prefix(text, i)
    if _geo_char(text, i) != ",":
        raise _GeoError()
    y, i = _float8_prefix(text, i + 1)
    if delimited:
        if _geo_char(text, i) != ")":
            raise _GeoError()
        i = _lstrip(text, i + 1)
    return (x, y), i


def _path_decode(text: str, i: int, opentype: bool, npts: int) -> Tuple[List[Tuple[float, float]], bool, int]:
    depth = 0
    i = _lstrip(text, i)
    is_open = _geo_char(text, i) == "["
    if is_open:
        if not opentype:
            raise _GeoError()
        depth, i = 1, i + 1
    elif _geo_char(text, i) == "(":
        cp = _lstrip(text, i + 1)
        if _geo_char(text, cp) == "(" or text.rfind("(", i) == i:
            depth, i = 1, cp
    points = []
    for _ in range(npts):
        point, i = _pair_decode(text, i)
        points.append(point)
        if _geo_char(text, i) == ",":
            i += 1
    while depth > 0:
        ch = _geo_char(text, i)
        if ch == ")" or (ch == "]" and is_open and depth == 1):
            depth -= 1
            i = _lstrip(text, i + 1)
        else:
            raise _GeoError()
    return points, is_open, i


def _pair_count(text: str) -> int:
    delimiters = text.count(",")
    return (delimiters + 1) // 2 if delimiters % 2 else -1


def _fp_eq(a: float, b: float) -> bool:
    return a == b or abs(a - b) <= 1.0e-6 or (math.isnan(a) and math.isnan(b))


def _geometric(kind: str) -> Check:
    def check(text: str) -> None:
        try:
            _check_geometric(kind, text)
        except _GeoError:
            raise _syntax(kind, text) from None

    return check


def _check_geometric(kind: str, text: str) -> None:
    if kind == "point":
        _point, end = _pair_decode(text, 0)
    elif kind in ("lseg", "box"):
        _points, _open, end = _path_decode(text, 0, kind == "lseg", 2)
    elif kind == "path":
        npts = _pair_count(text)
        if npts <= 0:
            raise _GeoError()
        i = _lstrip(text)
        depth = 0
        if _geo_char(text, i) == "(" and text.rfind("(", i) == i:
            i, depth = i + 1, 1
        _points, _open, end = _path_decode(text, i, True, npts)
        if depth:
            if _geo_char(text, end) != ")":
                raise _GeoError()
            end = _lstrip(text, end + 1)
    elif kind == "polygon":
        npts = _pair_count(text)
        if npts <= 0:
            raise _GeoError()
        _points, _open, end = _path_decode(text, 0, False, npts)
    elif kind == "line":
        i = _lstrip(text)
        if _geo_char(text, i) == "{":
            a, i = _float8_prefix(text, i + 1)
            if _geo_char(text, i) != ",":
                raise _GeoError()
            b, i = _float8_prefix(text, i + 1)
            if _geo_char(text, i) != ",":
                raise _GeoError()
            _c, i = _float8_prefix(text, i + 1)
            if _geo_char(text, i) != "}":
                raise _GeoError()
            end = _lstrip(text, i + 1)
            if end != len(text):
                raise _GeoError()
            if abs(a) <= 1.0e-6 and abs(b) <= 1.0e-6:
                raise InvalidValue("invalid line specification: A and B cannot both be zero")
        else:
            points, _open, end = _path_decode(text, i, True, 2)
            if end != len(text):
                raise _GeoError()
            (x1, y1), (x2, y2) = points
            if _fp_eq(x1, x2) and _fp_eq(y1, y2):
                raise InvalidValue("invalid line specification: must be two distinct points")
    elif kind == "circle":
        i = _lstrip(text)
        depth = 0
        if _geo_char(text, i) == "<":
            depth, i = 1, i + 1
        elif _geo_char(text, i) == "(":
            cp = _lstrip(text, i + 1)
            if _geo_char(text, cp) == "(":
                depth, i = 1, cp
        _center, i = _pair_decode(text, i)
        if _geo_char(text, i) == ",":
            i += 1
        radius, i = _float8_prefix(text, i)
        if radius < 0:
            raise _GeoError()
        while depth > 0:
            ch = _geo_char(text, i)
            if ch == ")" or (ch == ">" and depth == 1):
                depth -= 1
                i = _lstrip(text, i + 1)
            else:
                raise _GeoError()
        end = i
    else:
        raise AssertionError(kind)
    if end != len(text):
        raise _GeoError()


# -- tid, vectors, snapshots, object identifiers ----------------------------------------------


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
    if overflow or _geo_char(text, end) != ",":
        raise _syntax("tid", text)
    low = value & 0xFFFFFFFF
    if value != low and value != (low - (1 << 32) if low & 0x80000000 else low) % (1 << 64):
        raise _syntax("tid", text)
    end, value, overflow = _strtoul_prefix(text, coords[1], 10)
    if value is None:
        end, value = coords[1], 0
    if overflow or _geo_char(text, end) != ")" or value > 0xFFFF:
        raise _syntax("tid", text)


FUNC_MAX_ARGS = 100


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
    if _geo_char(text, end) != ":":
        raise bad
    end, xmax = u64(end + 1)
    if _geo_char(text, end) != ":":
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


def _context_dependent(label: str, why: str) -> Check:
    def check(text: str) -> None:
        raise NotPortable(f"{label} values {why}")

    return check


def _not_a_column_type(label: str) -> Check:
    def check(text: str) -> None:
        raise InvalidValue(f"type {label} cannot hold stored values")

    return check


# -- text search -----------------------------------------------------------------------------

MAXSTRLEN = (1 << 11) - 1  # bytes of one lexeme
MAXSTRPOS = (1 << 20) - 1  # bytes of all lexemes
MAXENTRYPOS = 1 << 14
_TS_OPERATORS = "!&|()<"


class _TsError(Exception):
    pass


def _ts_space(ch: str) -> bool:
    if ch.isascii():
        return ch in SPACE
    if ch.isspace():
        # t_isspace asks the database's LC_CTYPE about non-ASCII characters
        raise NotPortable(
            "text search value with non-ASCII white space, which each database classifies by its own locale")
    return False


def _ts_token(text: str, i: int, query: bool, with_positions: bool) -> Tuple[Optional[str], int]:
    """
    gettoken_tsvector from `i`: (lexeme, end) or (None, i) at the end of
    input.  In a query operators end a word and positions are not read.
    """
    n = len(text)
    state = "word"
    after_escape = ""
    word: List[str] = []
    while True:
        ch = text[i] if i < n else "\0"
        if state == "word":
            if ch == "\0":
                return None, i
            if ch == "'":
                state = "quoted"
            elif ch == "\\":
                state, after_escape = "escaped", "inword"
            elif query and ch in _TS_OPERATORS:
                raise _TsError()
            elif not _ts_space(ch):
                word.append(ch)
                state = "inword"
        elif state == "escaped":
            if ch == "\0":
                raise InvalidValue(f'there is no escaped character: "{_shown(text)}"')
            word.append(ch)
            state = after_escape
        elif state == "inword":
            if ch == "\\":
                state, after_escape = "escaped", "inword"
            elif ch == "\0" or _ts_space(ch) or (query and ch in _TS_OPERATORS):
                if not word:
                    raise _TsError()
                return "".join(word), i
            elif ch == ":":
                if not word:
                    raise _TsError()
                if query:
                    return "".join(word), i
                state = "inpos"
            else:
                word.append(ch)
        elif state == "quoted":
            if ch == "'":
                state = "quote_end"
            elif ch == "\\":
                state, after_escape = "escaped", "quoted"
            elif ch == "\0":
                raise _TsError()
            else:
                word.append(ch)
        elif state == "quote_end":
            if ch == "'":
                word.append(ch)
                state = "quoted"
                i += 1
                continue
            if not word:
                raise _TsError()
            if query:
                return "".join(word), i
            state = "waitpos"
            continue  # recheck this character
        elif state == "waitpos":
            if ch == ":":
                state = "inpos"
            else:
                return "".join(word), i
        elif state == "inpos":
            if not ("0" <= ch <= "9"):
                raise _TsError()
            j = i
            while j < n and "0" <= text[j] <= "9":
                j += 1
            significant = text[i:j].lstrip("0")
            value = int(significant or "0") if len(significant) < 25 else (1 << 63) - 1
            value = min(value, (1 << 63) - 1) & 0xFFFFFFFF  # atoi: a long cut to int
            if value & 0x80000000:
                value -= 1 << 32
            limited = MAXENTRYPOS - 1 if value >= MAXENTRYPOS else value
            if limited & 0x3FFF == 0:
                raise InvalidValue(f'wrong position info in tsvector: "{_shown(text)}"')
            weight_set = False
            state = "posdelim"
        elif state == "posdelim":
            if ch == ",":
                state = "inpos"
            elif ch in "aAbBcC*":
                if weight_set:
                    raise _TsError()
                weight_set = True
            elif ch in "dD":
                if weight_set:
                    raise _TsError()
            elif ch == "\0" or _ts_space(ch):
                return "".join(word), i
            elif not ("0" <= ch <= "9"):
                raise _TsError()
        i += 1


def check_tsvector(text: str) -> None:
    if len(text.encode("utf-8")) > MAXSTRPOS:
        raise InvalidValue("string is too long for tsvector")
    i = 0
    try:
        while True:
            word, i = _ts_token(text, i, False, True)
            if word is None:
                return
            size = len(word.encode("utf-8"))
            if size >= MAXSTRLEN:
                raise InvalidValue(f"word is too long ({size} bytes, max {MAXSTRLEN} bytes)")
    except _TsError:
        raise InvalidValue(f'syntax error in tsvector: "{_shown(text)}"') from None


def check_tsquery(text: str) -> None:
    try:
        _parse_tsquery(text)
    except _TsError:
        raise InvalidValue(f'syntax error in tsquery: "{_shown(text)}"') from None


def _ts_modifiers(text: str, i: int) -> int:
    if i >= len(text) or text[i] != ":":
        return i
    i += 1
    while i < len(text) and text[i] in "aAbBcCdD*":
        i += 1
    return i


def _ts_phrase(text: str, i: int) -> Optional[int]:
    """parse_phrase_operator: the index after "<->" / "<N>", or None."""
    n = len(text)
    if i >= n or text[i] != "<":
        return None
    i += 1
    if i < n and text[i] == "-":
        i += 1
    elif i < n and "0" <= text[i] <= "9":
        j = i
        while j < n and "0" <= text[j] <= "9":
            j += 1
        significant = text[i:j].lstrip("0")
        if len(significant) > 6 or int(significant or "0") > MAXENTRYPOS:
            raise InvalidValue(f"distance in phrase operator must be an integer value between zero and {MAXENTRYPOS} inclusive")
        i = j
    else:
        return None
    if i >= n or text[i] != ">":
        return None
    i += 1
    return i if i < n else None  # at the very end it is not taken as an operator


def _parse_tsquery(text: str) -> None:
    n = len(text)
    i = 0
    state = "first"
    depth = 0
    operators: List[List[str]] = [[]]  # per parenthesis level: pending operators (for the 32-deep stack)
    priority = {"|": 1, "&": 2, "<": 3, "!": 4}

    def push_operator(op: str) -> None:
        stack = operators[-1]
        while stack:
            top = stack[-1]
            if (op != "!" and priority[op] > priority[top]) or (op == "!" and priority[op] >= priority[top]):
                break
            stack.pop()
        if len(stack) == 32:
            raise InvalidValue("tsquery stack too small")
        stack.append(op)

    while True:
        ch = text[i] if i < n else "\0"
        if state in ("first", "operand"):
            if ch == "!":
                push_operator("!")
                state = "operand"
                i += 1
                continue
            if ch == "(":
                depth += 1
                operators.append([])
                state = "operand"
                i += 1
                continue
            if ch == ":":
                raise _TsError()
            if ch == "\0" or not _ts_space(ch):
                word, end = _ts_token(text, i, True, False)
                if word is None:
                    if state == "first":
                        return
                    raise InvalidValue(f'no operand in tsquery: "{_shown(text)}"')
                if len(word.encode("utf-8")) >= MAXSTRLEN:
                    raise InvalidValue("word is too long in tsquery")
                i = _ts_modifiers(text, end)
                state = "operator"
                continue
            i += 1
        else:
            if ch in "&|":
                push_operator(ch)
                state = "operand"
                i += 1
                continue
            phrase_end = _ts_phrase(text, i)
            if phrase_end is not None:
                push_operator("<")
                state = "operand"
                i = phrase_end
                continue
            if ch == ")":
                depth -= 1
                if depth < 0:
                    raise _TsError()
                operators.pop()
                i += 1
                continue
            if ch == "\0":
                if depth:
                    raise _TsError()
                return
            if not _ts_space(ch):
                raise _TsError()
            i += 1


# -- date and time ---------------------------------------------------------------------------
#
# Postgres reads a great many date/time spellings, and several of them mean
# different things in different databases: numeric dates follow DateStyle
# ('01/02/2020'), time zone abbreviations follow timezone_abbreviations and
# zone names the server's time zone database, a timestamptz (or timetz)
# without an offset is read in the server's TimeZone, and 'now', 'today' ...
# depend on when the apply worker stores the row.  Electric accepts the ISO
# 8601 forms (what Postgres prints with DateStyle ISO, and what JavaScript's
# Date.toISOString() makes) and decides their validity exactly as
# PostgreSQL 15 does; other spellings are refused with NotPortable.

USECS_PER_DAY = 86_400_000_000
POSTGRES_EPOCH_JDATE = 2451545
_DATE_END_JD = None  # filled below
_TS_END = None  # first invalid timestamp (µs since 2000-01-01), exclusive
_TS_MIN = None  # smallest valid timestamp


def _julian(year: int, month: int, day: int) -> int:
    """date2j: Julian day number of an astronomical (proleptic Gregorian) date."""
    if month > 2:
        month += 1
        year += 4800
    else:
        month += 13
        year += 4799
    century = year // 100
    return year * 365 - 32167 + year // 4 - century + century // 4 + 7834 * month // 256 + day


_DATE_END_JD = _julian(5874898, 1, 1)
_TS_END = (_julian(294277, 1, 1) - POSTGRES_EPOCH_JDATE) * USECS_PER_DAY
_TS_MIN = (0 - POSTGRES_EPOCH_JDATE) * USECS_PER_DAY


_WS = "[ \\t\\n\\r\\v\\f]"
_DATE_PART = r"(?P<year>[0-9]{3,})-(?P<month>[0-9]{1,2})-(?P<day>[0-9]{1,2})"
_TIME_PART = r"(?P<hour>[0-9]{1,2}):(?P<minute>[0-9]{1,2})(?::(?P<second>[0-9]{1,2})(?P<frac>\.[0-9]*)?)?"
_ZONE_PART = (r"(?P<zone>[zZ]|[uU][tT][cC]|[gG][mM][tT]|(?P<zsign>[+-])(?P<zh>[0-9]{1,4})"
              r"(?::(?P<zm>[0-9]{1,2})(?::(?P<zs>[0-9]{1,2}))?)?)")
_ERA_PART = r"(?P<era>[aA][dD]|[bB][cC])"
_TIMESTAMP_RE = re.compile(
    f"{_WS}*{_DATE_PART}(?:(?P<sep>[tT]|{_WS}+){_TIME_PART}(?:{_WS}*{_ZONE_PART})?)?(?:{_WS}+{_ERA_PART})?{_WS}*")
_TIME_RE = re.compile(f"{_WS}*{_TIME_PART}(?:{_WS}*{_ZONE_PART})?{_WS}*")
_SPECIAL_WORDS = {"infinity", "-infinity", "epoch"}
_MOVING_WORDS = {"now", "today", "tomorrow", "yesterday", "current", "allballs"}
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _not_iso(label: str, text: str) -> NotPortable:
    return NotPortable(
        f'{label} value "{_shown(text)}" is not in ISO 8601 form (YYYY-MM-DD, HH:MM:SS, +HH:MM); other spellings '
        "depend on each database's DateStyle or time zone settings")


def _field_range(label: str, text: str) -> InvalidValue:
    return InvalidValue(f'date/time field value out of range: "{_shown(text)}"')


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def _date_fields(m, label: str, text: str) -> Tuple[int, int, int]:
    """(astronomical year, month, day), checked like ValidateDate."""
    if len(m.group("year")) > 9:
        raise _not_iso(label, text)
    year, month, day = int(m.group("year")), int(m.group("month")), int(m.group("day"))
    if year == 0:
        raise _field_range(label, text)
    if m.group("era") and m.group("era").lower() == "bc":
        year = 1 - year
    if not 1 <= month <= 12:
        raise _field_range(label, text)
    days = _DAYS_IN_MONTH[month - 1] + (1 if month == 2 and _leap(year) else 0)
    if not 1 <= day <= days:
        raise _field_range(label, text)
    return year, month, day


def _fraction_usecs(frac: Optional[str]) -> int:
    """ParseFractionalSecond: rint(strtod(".xxx") * 1e6), with the double arithmetic Postgres uses."""
    if not frac or frac == ".":
        return 0
    return int(round(float("0" + frac) * 1_000_000))


def _time_usecs(m, label: str, text: str) -> int:
    """Microseconds since midnight (hour 24 and second 60 allowed as Postgres allows them)."""
    if m.group("hour") is None:
        return 0
    hour, minute = int(m.group("hour")), int(m.group("minute"))
    second = int(m.group("second") or 0)
    fsec = _fraction_usecs(m.group("frac"))
    if hour > 24 or minute > 59 or second > 60 or fsec > 1_000_000:
        raise _field_range(label, text)
    total = ((hour * 60 + minute) * 60 + second) * 1_000_000 + fsec
    if total > USECS_PER_DAY:  # 24:00:00 and 23:59:60 are the latest
        raise _field_range(label, text)
    return total


def _zone_seconds(m, label: str, text: str) -> Optional[int]:
    """The offset east of UTC in seconds, None when the text has no zone."""
    zone = m.group("zone")
    if zone is None:
        return None
    if m.group("zsign") is None:
        return 0  # Z, UTC, GMT
    hours_text = m.group("zh")
    minute = int(m.group("zm")) if m.group("zm") is not None else None
    second = int(m.group("zs") or 0)
    hours = int(hours_text)
    if minute is None:
        if len(hours_text) + 1 > 3:  # "+hhmm" run together
            hours, minute = divmod(hours, 100)
        else:
            minute = 0
    if hours > 15 or minute >= 60 or second >= 60:
        raise InvalidValue(f'time zone displacement out of range: "{_shown(text)}"')
    offset = (hours * 60 + minute) * 60 + second
    return -offset if m.group("zsign") == "-" else offset


def _round_to_precision(usecs: int, typmod: int) -> int:
    """AdjustTimestampForTypmod / AdjustTimeForTypmod: round half away from zero to `typmod` digits."""
    if typmod < 0 or typmod >= 6:
        return usecs
    scale = 10 ** (6 - typmod)
    half = scale // 2
    if usecs >= 0:
        return (usecs + half) // scale * scale
    return -((-usecs + half) // scale * scale)


def _special(text: str, label: str) -> Optional[str]:
    word = text.strip(SPACE).lower()
    if word in _SPECIAL_WORDS:
        return word
    if word in _MOVING_WORDS:
        raise NotPortable(f'{label} value "{_shown(text)}" means a different moment in each database that stores it')
    return None


def _timestamp(with_zone: bool, typmod: int) -> Check:
    label = "timestamp with time zone" if with_zone else "timestamp without time zone"

    def check(text: str) -> None:
        if _special(text, label):
            return
        m = _TIMESTAMP_RE.fullmatch(text)
        if not m:
            raise _not_iso(label, text)
        year, month, day = _date_fields(m, label, text)
        usecs = _time_usecs(m, label, text)
        zone = _zone_seconds(m, label, text)
        if with_zone and zone is None:
            raise NotPortable(
                f'{label} value "{_shown(text)}" has no UTC offset, so each database would read it in its own '
                "TimeZone; add one (Z or +HH:MM)")
        if not (year > -4713 or (year == -4713 and month >= 11)) or not (
                year < 5874898 or (year == 5874898 and month < 6)):
            raise InvalidValue(f'timestamp out of range: "{_shown(text)}"')
        value = (_julian(year, month, day) - POSTGRES_EPOCH_JDATE) * USECS_PER_DAY + usecs
        if with_zone:
            value -= zone * 1_000_000
        if not _TS_MIN <= value < _TS_END:
            raise InvalidValue(f'timestamp out of range: "{_shown(text)}"')
        # AdjustTimestampForTypmod rounds to the column's precision without
        # checking the range again, so nothing more can fail here.

    return check


def check_date(text: str) -> None:
    label = "date"
    if _special(text, label):
        return
    m = _TIMESTAMP_RE.fullmatch(text)
    if not m:
        raise _not_iso(label, text)
    year, month, day = _date_fields(m, label, text)
    _time_usecs(m, label, text)
    _zone_seconds(m, label, text)
    if not 0 <= _julian(year, month, day) < _DATE_END_JD:
        raise InvalidValue(f'date out of range: "{_shown(text)}"')


def _time(with_zone: bool, typmod: int) -> Check:
    label = "time with time zone" if with_zone else "time without time zone"

    def check(text: str) -> None:
        m = _TIME_RE.fullmatch(text)
        if m is None:
            full = _TIMESTAMP_RE.fullmatch(text)
            if full is None or full.group("hour") is None or full.group("era") or full.group("sep") in ("t", "T"):
                raise _not_iso(label, text)
            _date_fields(full, label, text)
            m = full
        _time_usecs(m, label, text)
        zone = _zone_seconds(m, label, text)
        if with_zone and zone is None:
            raise NotPortable(
                f'{label} value "{_shown(text)}" has no UTC offset, so each database would use its own TimeZone; '
                "add one (Z or +HH:MM)")

    del typmod  # rounding to the precision never leaves the 00:00..24:00 range
    return check


# -- interval --------------------------------------------------------------------------------

_INT32 = (-(1 << 31), (1 << 31) - 1)
_INT64 = (-(1 << 63), (1 << 63) - 1)

# unit word -> (field, factor, mask bit)
_INTERVAL_UNITS: Dict[str, Tuple[str, int, str]] = {}
for _words, _spec in (
    (("microsecond", "microseconds", "microsecon", "us", "usec", "usecs", "useconds"), ("usec", 1, "usec")),
    (("millisecond", "milliseconds", "millisecon", "ms", "msec", "msecs", "mseconds"), ("usec", 1000, "msec")),
    (("second", "seconds", "s", "sec", "secs"), ("usec", 1_000_000, "second")),
    (("minute", "minutes", "m", "min", "mins"), ("usec", 60_000_000, "minute")),
    (("hour", "hours", "h", "hr", "hrs"), ("usec", 3_600_000_000, "hour")),
    (("day", "days", "d"), ("day", 1, "day")),
    (("week", "weeks", "w"), ("day", 7, "week")),
    (("month", "months", "mon", "mons"), ("month", 1, "month")),
    (("year", "years", "y", "yr", "yrs"), ("year", 1, "year")),
    (("decade", "decades", "dec", "decs"), ("year", 10, "decade")),
    (("century", "centuries", "c", "cent"), ("year", 100, "century")),
    (("millennium", "millennia", "mil", "mils"), ("year", 1000, "millennium")),
):
    for _w in _words:
        _INTERVAL_UNITS[_w] = _spec

_INTERVAL_TOKEN = re.compile(
    r"(?P<time>(?P<tsign>[+-])?(?P<th>[0-9]+):(?P<tm>[0-9]+)(?::(?P<ts>[0-9]+)(?P<tf>\.[0-9]*)?)?)"
    r"|(?P<num>(?P<nsign>[+-])?(?P<int>[0-9]+)(?P<nfrac>\.[0-9]*)?)(?:[ \t\n\r\v\f]*(?P<unit>[A-Za-z]+))?"
    r"|(?P<word>@|[Aa][Gg][Oo])")
_ISO_INTERVAL = re.compile(
    r"P(?:(?P<Y>-?[0-9]+)Y)?(?:(?P<M>-?[0-9]+)M)?(?:(?P<W>-?[0-9]+)W)?(?:(?P<D>-?[0-9]+)D)?"
    r"(?:T(?:(?P<h>-?[0-9]+)H)?(?:(?P<m>-?[0-9]+)M)?(?:(?P<s>-?[0-9]+(?:\.[0-9]*)?)S)?)?")


class _IntervalBuilder:
    """The pg_itm_in accumulation of DecodeInterval with its overflow checks."""

    def __init__(self, label_text: str):
        self.text = label_text
        self.usec = 0
        self.day = 0
        self.month = 0
        self.year = 0

    def overflow(self) -> InvalidValue:
        return InvalidValue(f'interval field value out of range: "{_shown(self.text)}"')

    def add(self, field: str, value: int, factor: int) -> None:
        bounds = _INT64 if field == "usec" else _INT32
        if field != "usec" and not _INT32[0] <= value <= _INT32[1]:
            raise self.overflow()
        product = value * factor
        if not bounds[0] <= product <= bounds[1]:
            raise self.overflow()
        total = getattr(self, field) + product
        if not bounds[0] <= total <= bounds[1]:
            raise self.overflow()
        setattr(self, field, total)

    def add_fraction_usecs(self, frac: float, scale: int) -> None:
        """AdjustFractMicroseconds."""
        if frac == 0:
            return
        frac *= scale
        usec = int(frac)
        frac -= usec
        usec += int(round(frac))
        total = self.usec + usec
        if not _INT64[0] <= total <= _INT64[1]:
            raise self.overflow()
        self.usec = total

    def negate(self) -> None:
        for field in ("usec", "day", "month", "year"):
            value = -getattr(self, field)
            bounds = _INT64 if field == "usec" else _INT32
            if not bounds[0] <= value <= bounds[1]:
                raise self.overflow()
            setattr(self, field, value)

    def finish(self) -> None:
        months = self.year * 12 + self.month
        if not _INT32[0] <= months <= _INT32[1]:
            raise InvalidValue("interval out of range")


def _interval(typmod: int) -> Check:
    label = "interval"
    restricted = typmod >= 0 and (typmod >> 16) & 0x7FFF != 0x7FFF

    def check(text: str) -> None:
        stripped = text.strip(SPACE)
        if stripped.lower() in ("infinity", "-infinity"):
            raise _syntax(label, text)  # intervals have no infinities in PostgreSQL 15
        if stripped.startswith("P"):
            if stripped != text:  # the ISO 8601 reader takes no surrounding white space
                raise _syntax(label, text)
            _iso_interval(stripped, text)
            return
        _postgres_interval(stripped, text, restricted)

    return check


def _iso_interval(stripped: str, text: str) -> None:
    m = _ISO_INTERVAL.fullmatch(stripped)
    if m is None or not any(m.groupdict().values()):
        raise NotPortable(f'interval value "{_shown(text)}" is not in a form Electric checks')
    b = _IntervalBuilder(text)
    for key, field, factor in (("Y", "year", 1), ("M", "month", 1), ("W", "day", 7), ("D", "day", 1),
                               ("h", "usec", 3_600_000_000), ("m", "usec", 60_000_000)):
        if m.group(key) is not None:
            b.add(field, int(m.group(key)), factor)
    if m.group("s") is not None:
        whole, _, frac = m.group("s").partition(".")
        b.add("usec", int(whole), 1_000_000)
        if frac:
            f = float("0." + frac)
            b.add_fraction_usecs(-f if whole.startswith("-") else f, 1_000_000)
    b.finish()


def _postgres_interval(stripped: str, text: str, restricted: bool) -> None:
    i, n = 0, len(stripped)
    tokens = []
    while i < n:
        if stripped[i] in SPACE:
            i += 1
            continue
        m = _INTERVAL_TOKEN.match(stripped, i)
        attached_fraction = m is not None and m.group("unit") and m.group("nfrac") and \
            stripped[m.end("num"):m.end("num") + 1] not in SPACE
        if m is None or (m.end() < n and stripped[m.end()] not in SPACE) or attached_fraction:
            # tokens are separated by white space (a unit may follow its integer directly)
            raise NotPortable(f'interval value "{_shown(text)}" is not in a form Electric checks')
        tokens.append(m)
        i = m.end()
    if not tokens:
        raise _syntax("interval", text)
    if tokens[0].group("word") == "@":
        tokens = tokens[1:]
    ago = bool(tokens) and (tokens[-1].group("word") or "").lower() == "ago"
    if ago:
        tokens = tokens[:-1]
    if not tokens or any(t.group("word") for t in tokens):
        raise NotPortable(f'interval value "{_shown(text)}" is not in a form Electric checks')
    b = _IntervalBuilder(text)
    seen = set()
    signs = [bool(t.group("tsign") or t.group("nsign")) for t in tokens]
    values_nonzero = []
    for k, t in enumerate(tokens):
        if t.group("time"):
            if restricted and t.group("ts") is None:
                raise NotPortable(f'interval value "{_shown(text)}": hours:minutes is read by the column\'s field range')
            if seen & {"hour", "minute", "second", "msec", "usec"}:
                raise _syntax("interval", text)
            seen |= {"hour", "minute", "second", "msec", "usec"}
            if any(len((t.group(g) or "").lstrip("0")) > 19 for g in ("th", "tm", "ts")):
                raise b.overflow()
            hours, minutes = int(t.group("th")), int(t.group("tm"))
            seconds = int(t.group("ts") or 0)
            if minutes > 59 or seconds > 60:
                raise b.overflow()
            usec = (hours * 60 + minutes) * 60_000_000 + seconds * 1_000_000 + _fraction_usecs(t.group("tf"))
            if not _INT64[0] <= usec <= _INT64[1]:
                raise b.overflow()
            b.add("usec", -usec if t.group("tsign") == "-" else usec, 1)
            values_nonzero.append(usec != 0)
            continue
        unit = t.group("unit")
        if unit is None:
            # a bare number is a day count before a time field, otherwise depends on the column
            if k + 1 < len(tokens) and tokens[k + 1].group("time") and "day" not in seen:
                field, factor, mask = "day", 1, "day"
            else:
                raise NotPortable(f'interval value "{_shown(text)}": give every number a unit')
        else:
            spec = _INTERVAL_UNITS.get(unit.lower())
            if spec is None:
                raise _syntax("interval", text)
            field, factor, mask = spec
        if t.group("nfrac") and t.group("nfrac") != "." and field != "usec":
            raise NotPortable(f'interval value "{_shown(text)}": fractions are checked only for seconds and smaller units')
        if len(t.group("int").lstrip("0")) > 19:
            raise b.overflow()
        value = int(t.group("int"))
        if value > _INT64[1] + (1 if t.group("nsign") == "-" else 0):
            raise b.overflow()
        value = -value if t.group("nsign") == "-" else value
        masks = {mask}
        if mask == "second" and t.group("nfrac") not in (None, ".") and float("0" + t.group("nfrac")) != 0:
            masks = {"second", "msec", "usec"}
        if seen & masks:
            raise _syntax("interval", text)
        seen |= masks
        b.add(field, value, factor)
        if field == "usec" and t.group("nfrac") not in (None, "."):
            f = float("0" + t.group("nfrac"))
            b.add_fraction_usecs(-f if t.group("nsign") == "-" else f, factor)
        values_nonzero.append(value != 0 or bool(t.group("nfrac") and float("0" + t.group("nfrac"))))
    if (tokens[0].group("tsign") or tokens[0].group("nsign")) == "-":
        if not any(signs[1:]) and any(values_nonzero[1:]):
            raise NotPortable(
                f'interval value "{_shown(text)}" reads differently with IntervalStyle sql_standard; '
                "give every field after a negative one its own sign")
    if ago:
        b.negate()
    b.finish()


# -- arrays ----------------------------------------------------------------------------------

MAXDIM = 6
_ARRAY_SPACE = SPACE


def _atoi(text: str) -> int:
    """C atoi on a string of digits and signs: strtol's value cut to an int."""
    _end, value = _strtol_prefix(text, 0)
    value = (value or 0) & 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _malformed_array(text: str, detail: str) -> InvalidValue:
    return InvalidValue(f'malformed array literal: "{_shown(text)}": {detail}')


def _array_dimensions(text: str) -> Tuple[int, Optional[List[Tuple[int, int]]]]:
    """Explicit "[lb:ub]...=" prefix: (index of the '{', [(lower, length)] or None)."""
    i, n = 0, len(text)
    dims: List[Tuple[int, int]] = []
    while True:
        i = _lstrip(text, i)
        if i >= n or text[i] != "[":
            break
        i += 1
        if len(dims) >= MAXDIM:
            raise InvalidValue(f"number of array dimensions ({len(dims) + 1}) exceeds the maximum allowed ({MAXDIM})")
        q = i
        while q < n and (text[q].isascii() and text[q].isdigit() or text[q] in "+-"):
            q += 1
        if q == i:
            raise _malformed_array(text, '"[" must introduce explicitly-specified array dimensions.')
        if q < n and text[q] == ":":
            lower = _atoi(text[i:q])
            i = q + 1
            q = i
            while q < n and (text[q].isascii() and text[q].isdigit() or text[q] in "+-"):
                q += 1
            if q == i:
                raise _malformed_array(text, "Missing array dimension value.")
        else:
            lower = 1
        if q >= n or text[q] != "]":
            raise _malformed_array(text, 'Missing "]" after array dimensions.')
        upper = _atoi(text[i:q])
        i = q + 1
        if upper < lower:
            raise InvalidValue("upper bound cannot be less than lower bound")
        dims.append((lower, upper - lower + 1))
    if not dims:
        if i >= n or text[i] != "{":
            raise _malformed_array(text, 'Array value must start with "{" or dimension information.')
        return i, None
    if i >= n or text[i] != "=":
        raise _malformed_array(text, 'Missing "=" after array dimensions.')
    i = _lstrip(text, i + 1)
    if i >= n or text[i] != "{":
        raise _malformed_array(text, 'Array contents must start with "{".')
    return i, dims


def _array_count(text: str, start: int, delim: str) -> List[int]:
    """
    ArrayCount as PostgreSQL 13 to 16 have it: the dimensions the braces
    describe ([] for an empty array), including its quirks (it takes
    '{{{1}},{2}}' for an array with a zero-length dimension, i.e. empty).
    """
    NO_LEVEL, LEVEL_STARTED, ELEM_STARTED, ELEM_COMPLETED, QUOTED_STARTED, QUOTED_COMPLETED, \
        ELEM_DELIMITED, LEVEL_COMPLETED, LEVEL_DELIMITED = range(9)
    n = len(text)
    nest = 0
    ndim = 1
    temp = [0] * MAXDIM
    nelems = [1] * MAXDIM
    nelems_last = [0] * MAXDIM
    in_quotes = False
    empty = True
    state = NO_LEVEL
    i = start
    done = False
    while not done:
        item_done = False
        while not item_done:
            if state in (ELEM_STARTED, QUOTED_STARTED):
                empty = False
            ch = text[i] if i < n else "\0"
            if ch == "\0":
                raise _malformed_array(text, "Unexpected end of input.")
            if ch == "\\":
                if state not in (LEVEL_STARTED, ELEM_STARTED, QUOTED_STARTED, ELEM_DELIMITED):
                    raise _malformed_array(text, 'Unexpected "\\" character.')
                if state != QUOTED_STARTED:
                    state = ELEM_STARTED
                if i + 1 < n:
                    i += 1
                else:
                    raise _malformed_array(text, "Unexpected end of input.")
            elif ch == '"':
                if state not in (LEVEL_STARTED, QUOTED_STARTED, ELEM_DELIMITED):
                    raise _malformed_array(text, "Unexpected array element.")
                in_quotes = not in_quotes
                state = QUOTED_STARTED if in_quotes else QUOTED_COMPLETED
            elif ch == "{" and not in_quotes:
                if state not in (NO_LEVEL, LEVEL_STARTED, LEVEL_DELIMITED):
                    raise _malformed_array(text, 'Unexpected "{" character.')
                state = LEVEL_STARTED
                if nest >= MAXDIM:
                    raise InvalidValue(f"number of array dimensions ({nest + 1}) exceeds the maximum allowed ({MAXDIM})")
                temp[nest] = 0
                nest += 1
                ndim = max(ndim, nest)
            elif ch == "}" and not in_quotes:
                if state not in (ELEM_STARTED, ELEM_COMPLETED, QUOTED_COMPLETED, LEVEL_COMPLETED) and \
                        not (nest == 1 and state == LEVEL_STARTED):
                    raise _malformed_array(text, 'Unexpected "}" character.')
                state = LEVEL_COMPLETED
                if nest == 0:
                    raise _malformed_array(text, 'Unmatched "}" character.')
                nest -= 1
                if nelems_last[nest] != 0 and nelems[nest] != nelems_last[nest]:
                    raise _malformed_array(text, "Multidimensional arrays must have sub-arrays with matching dimensions.")
                nelems_last[nest] = nelems[nest]
                nelems[nest] = 1
                if nest == 0:
                    done = item_done = True
                else:
                    temp[nest - 1] += 1
            elif not in_quotes:
                if ch == delim:
                    if state not in (ELEM_STARTED, ELEM_COMPLETED, QUOTED_COMPLETED, LEVEL_COMPLETED):
                        raise _malformed_array(text, f'Unexpected "{delim}" character.')
                    state = LEVEL_DELIMITED if state == LEVEL_COMPLETED else ELEM_DELIMITED
                    item_done = True
                    nelems[nest - 1] += 1
                elif ch not in _ARRAY_SPACE:
                    if state not in (LEVEL_STARTED, ELEM_STARTED, ELEM_DELIMITED):
                        raise _malformed_array(text, "Unexpected array element.")
                    state = ELEM_STARTED
            if not item_done:
                i += 1
        temp[ndim - 1] += 1
        i += 1
    if text[i:].strip(_ARRAY_SPACE):
        raise _malformed_array(text, "Junk after closing right brace.")
    if empty:
        return []
    return temp[:ndim]


def _array_items(text: str, start: int, delim: str, dims: List[int]):
    """ReadArrayStr: each element as (text, may_be_null), placed like Postgres places them."""
    n = len(text)
    ndim = len(dims)
    nitems = 1
    for d in dims:
        nitems *= d
    prod = [1] * ndim
    for k in range(ndim - 2, -1, -1):
        prod[k] = prod[k + 1] * dims[k + 1]
    index = [0] * ndim
    i = start
    in_quotes = False
    nest = 0
    done = False
    while not done:
        item_done = False
        leading = True
        quoted = False
        offset = -1
        out: List[str] = []
        end = 0
        while not item_done:
            ch = text[i] if i < n else "\0"
            if ch == "\\":
                i += 1
                out.append(text[i])
                i += 1
                leading = False
                end = len(out)
                quoted = True
            elif ch == '"':
                in_quotes = not in_quotes
                if in_quotes:
                    leading = False
                else:
                    end = len(out)
                quoted = True
                i += 1
            elif ch == "{" and not in_quotes:
                if nest >= ndim:
                    raise _malformed_array(text, "unexpected nesting")
                nest += 1
                index[nest - 1] = 0
                i += 1
            elif ch == "}" and not in_quotes:
                if offset == -1:
                    offset = sum(a * b for a, b in zip(index, prod))
                index[nest - 1] = 0
                nest -= 1
                if nest == 0:
                    done = item_done = True
                else:
                    index[nest - 1] += 1
                i += 1
            elif in_quotes:
                out.append(ch)
                i += 1
            elif ch == delim:
                if offset == -1:
                    offset = sum(a * b for a, b in zip(index, prod))
                item_done = True
                index[ndim - 1] += 1
                i += 1
            elif ch in _ARRAY_SPACE:
                if not leading:
                    out.append(ch)
                i += 1
            else:
                out.append(ch)
                leading = False
                end = len(out)
                i += 1
        if not 0 <= offset < nitems:
            raise _malformed_array(text, "element out of place")
        yield "".join(out[:end]), not quoted


def _array(element: Check, delim: str) -> Check:
    def check(text: str) -> None:
        start, dims = _array_dimensions(text)
        shape = _array_count(text, start, delim)
        if dims is not None:
            if len(shape) != len(dims) or any(length != s for (_lower, length), s in zip(dims, shape)):
                raise _malformed_array(text, "Specified array dimensions do not match array contents.")
            for lower, length in dims:
                if not _INT32[0] <= lower + length <= _INT32[1]:
                    raise InvalidValue(f"array lower bound is too large: {lower}")
        nitems = 1
        for length in shape:
            nitems *= length
        if not shape or nitems == 0:
            return  # an empty array: no element is read
        for item, may_be_null in _array_items(text, start, delim, shape):
            if may_be_null and item.lower() == "null":
                continue
            element(item)

    return check


# -- ranges ----------------------------------------------------------------------------------


def _range_bound(text: str, i: int) -> Tuple[Optional[str], int]:
    """range_parse_bound: (bound text or None when empty, index of the delimiter after it)."""
    n = len(text)
    if i < n and text[i] in ",)]":
        return None, i
    out: List[str] = []
    in_quote = False
    while True:
        ch = text[i] if i < n else "\0"
        if not in_quote and ch in ",)]":
            return "".join(out), i
        if ch == "\0":
            raise InvalidValue(f'malformed range literal: "{_shown(text)}": Unexpected end of input.')
        i += 1
        if ch == "\\":
            if i >= n:
                raise InvalidValue(f'malformed range literal: "{_shown(text)}": Unexpected end of input.')
            out.append(text[i])
            i += 1
        elif ch == '"':
            if not in_quote:
                in_quote = True
            elif i < n and text[i] == '"':
                out.append('"')
                i += 1
            else:
                in_quote = False
        else:
            out.append(ch)


def _parse_range(text: str):
    """range_parse: None for 'empty', else (lower text, upper text, lower inclusive, upper inclusive)."""
    malformed = InvalidValue(f'malformed range literal: "{_shown(text)}"')
    i = _lstrip(text)
    if text[i:i + 5].lower() == "empty":
        if text[i + 5:].strip(SPACE):
            raise malformed
        return None
    if i >= len(text) or text[i] not in "[(":
        raise malformed
    lower_inc = text[i] == "["
    lower, i = _range_bound(text, i + 1)
    if i >= len(text) or text[i] != ",":
        raise malformed
    upper, i = _range_bound(text, i + 1)
    if i >= len(text) or text[i] not in ")]":
        raise malformed
    upper_inc = text[i] == "]"
    if text[i + 1:].strip(SPACE):
        raise malformed
    return lower, upper, lower_inc, upper_inc


def _int_value(bits: int) -> Callable[[str], object]:
    check = _integer({16: "smallint", 32: "integer", 64: "bigint"}[bits], bits)

    def value(text: str) -> object:
        check(text)
        return int(text.strip(SPACE))

    return value


def _numeric_value(text: str) -> object:
    kind, parsed = parse_numeric(text)
    _numeric(-1)(text)
    if kind == "nan":
        return (2, 0)  # NaN sorts above everything, equal to itself
    if kind == "inf":
        return (parsed, 0)  # (-1, 0) / (1, 0)
    negative, digits, exponent, _dscale = parsed
    value = Fraction(int(digits), 1) * Fraction(10) ** exponent if digits else Fraction(0)
    return (0, -value if negative else value)


def _date_value(text: str) -> object:
    check_date(text)
    word = _special(text, "date")
    if word == "infinity":
        return (1, 0)
    if word == "-infinity":
        return (-1, 0)
    if word == "epoch":
        return (0, _julian(1970, 1, 1))
    m = _TIMESTAMP_RE.fullmatch(text)
    year, month, day = _date_fields(m, "date", text)
    return (0, _julian(year, month, day))


def _timestamp_value(with_zone: bool) -> Callable[[str], object]:
    check = _timestamp(with_zone, -1)

    def value(text: str) -> object:
        check(text)
        word = _special(text, "timestamp")
        if word == "infinity":
            return (1, 0)
        if word == "-infinity":
            return (-1, 0)
        if word == "epoch":
            return (0, (_julian(1970, 1, 1) - POSTGRES_EPOCH_JDATE) * USECS_PER_DAY)
        m = _TIMESTAMP_RE.fullmatch(text)
        year, month, day = _date_fields(m, "timestamp", text)
        usecs = (_julian(year, month, day) - POSTGRES_EPOCH_JDATE) * USECS_PER_DAY + _time_usecs(m, "timestamp", text)
        if with_zone:
            usecs -= _zone_seconds(m, "timestamp", text) * 1_000_000
        return (0, usecs)

    return value


def _range_type(subtype: str) -> Check:
    value_of = {
        "int4range": _int_value(32), "int8range": _int_value(64), "numrange": _numeric_value,
        "daterange": _date_value, "tsrange": _timestamp_value(False), "tstzrange": _timestamp_value(True),
    }[subtype]

    def check(text: str) -> None:
        parsed = _parse_range(text)
        if parsed is None:
            return
        lower_text, upper_text, lower_inc, upper_inc = parsed
        lower = value_of(lower_text) if lower_text is not None else None
        upper = value_of(upper_text) if upper_text is not None else None
        if lower is not None and upper is not None:
            if lower > upper:
                raise InvalidValue("range lower bound must be less than or equal to range upper bound")
            if lower == upper and not (lower_inc and upper_inc):
                return  # empty: not canonicalised
        # canonical forms of the discrete ranges: [lower, upper)
        if subtype in ("int4range", "int8range"):
            limit = (1 << 31) - 1 if subtype == "int4range" else (1 << 63) - 1
            label = "integer" if subtype == "int4range" else "bigint"
            if lower is not None and not lower_inc and lower == limit:
                raise InvalidValue(f"{label} out of range")
            if upper is not None and upper_inc and upper == limit:
                raise InvalidValue(f"{label} out of range")
        elif subtype == "daterange":
            last = _DATE_END_JD - 1
            if lower is not None and not lower_inc and lower == (0, last):
                raise InvalidValue("date out of range")
            if upper is not None and upper_inc and upper == (0, last):
                raise InvalidValue("date out of range")

    return check


# -- dispatch --------------------------------------------------------------------------------

_SCALARS: Dict[str, Callable[[int], Check]] = {
    "bool": lambda t: check_bool,
    "int2": lambda t: _integer("smallint", 16),
    "int4": lambda t: _integer("integer", 32),
    "int8": lambda t: _integer("bigint", 64),
    "oid": lambda t: _oid_like("oid"),
    "xid": lambda t: _anything,  # PostgreSQL 15 xidin/cidin read anything (garbage is 0)
    "cid": lambda t: _anything,
    "xid8": lambda t: _anything,
    "float4": lambda t: _float("float4", "real"),
    "float8": lambda t: _float("float8", "double precision"),
    "numeric": _numeric,
    "money": lambda t: check_money,
    "text": lambda t: _anything,
    "name": lambda t: _anything,  # longer names are cut to 63 bytes, never refused
    "char": lambda t: _anything,  # "char" keeps the first byte (or an \ooo escape)
    "refcursor": lambda t: _anything,
    "varchar": lambda t: _bounded_string("character varying", t),
    "bpchar": lambda t: _bounded_string("character", t),
    "bytea": lambda t: check_bytea,
    "uuid": lambda t: check_uuid,
    "json": lambda t: _json(False),
    "jsonb": lambda t: _json(True),
    "bit": lambda t: _bits(False, t),
    "varbit": lambda t: _bits(True, t),
    "inet": lambda t: _network(False),
    "cidr": lambda t: _network(True),
    "macaddr": lambda t: check_macaddr,
    "macaddr8": lambda t: check_macaddr8,
    "point": lambda t: _geometric("point"),
    "lseg": lambda t: _geometric("lseg"),
    "box": lambda t: _geometric("box"),
    "path": lambda t: _geometric("path"),
    "polygon": lambda t: _geometric("polygon"),
    "line": lambda t: _geometric("line"),
    "circle": lambda t: _geometric("circle"),
    "tid": lambda t: check_tid,
    "int2vector": lambda t: check_int2vector,
    "oidvector": lambda t: check_oidvector,
    "txid_snapshot": lambda t: check_txid_snapshot,
    "tsvector": lambda t: check_tsvector,
    "tsquery": lambda t: check_tsquery,
    "date": lambda t: check_date,
    "time": lambda t: _time(False, t),
    "timetz": lambda t: _time(True, t),
    "timestamp": lambda t: _timestamp(False, t),
    "timestamptz": lambda t: _timestamp(True, t),
    "interval": _interval,
    "int4range": lambda t: _range_type("int4range"),
    "int8range": lambda t: _range_type("int8range"),
    "numrange": lambda t: _range_type("numrange"),
    "daterange": lambda t: _range_type("daterange"),
    "tsrange": lambda t: _range_type("tsrange"),
    "tstzrange": lambda t: _range_type("tstzrange"),
    "xml": lambda t: _context_dependent("xml", "are parsed according to each database's xmloption and XML library"),
    "aclitem": lambda t: _context_dependent("aclitem", "name roles, which each database resolves in its own catalog"),
    "jsonpath": lambda t: _context_dependent("jsonpath", "are not checked by Electric, so clients cannot write them"),
    "gtsvector": lambda t: _not_a_column_type("gtsvector"),
    "record": lambda t: _not_a_column_type("record"),
    "cstring": lambda t: _not_a_column_type("cstring"),
    "unknown": lambda t: _not_a_column_type("unknown"),
}
for _name in ("regproc", "regprocedure", "regoper", "regoperator", "regclass", "regtype", "regconfig",
              "regdictionary", "regnamespace", "regrole", "regcollation"):
    _SCALARS[_name] = (lambda label: lambda t: _object_reference(label))(_name)


@functools.lru_cache(maxsize=512)
def validator(type_name: str, typmod: int = -1) -> Check:
    """
    The check for values of a column of type `type_name` (pg_type.typname:
    ``int4``, ``_int4`` for int4[], ...) with type modifier `typmod`
    (pg_attribute.atttypmod; -1 for none).  For arrays the modifier applies
    to the elements, as in Postgres.  Raises `UnknownTypeError` for a type
    Electric does not carry.
    """
    pgtype = types.type_by_name(type_name)
    if pgtype.is_array:
        element = types.type_by_oid(pgtype.element_oid)
        return _array(validator(element.name, typmod), ";" if element.name == "box" else ",")
    make = _SCALARS.get(pgtype.name)
    if make is None:
        return _not_a_column_type(pgtype.name)
    return make(typmod)


def check(type_name: str, typmod: int, text: str) -> None:
    """Raise `InvalidValue` unless Postgres would accept `text` for such a column."""
    validator(type_name, typmod)(text)
