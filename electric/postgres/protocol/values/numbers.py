"""Integers, oid, booleans, floats (as glibc's strtod reads them), numeric with precision and scale, money."""

from __future__ import annotations

import re
from fractions import Fraction
from typing import List, Optional, Tuple

from electric.postgres.protocol.values.common import (
    Check,
    InvalidValue,
    NotPortable,
    SPACE,
    VARHDRSZ,
    _lstrip,
    _only_space_after,
    _range,
    _shown,
    _strtoul_prefix,
    _syntax,
)


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
