"""Arrays (PostgreSQL 13 to 16's array_in, quirks included) and ranges (range_in with canonical forms)."""

from __future__ import annotations

from fractions import Fraction
from typing import Callable, List, Optional, Tuple

from electric.postgres.protocol.values.common import (
    Check,
    InvalidValue,
    SPACE,
    _INT32,
    _lstrip,
    _shown,
    _strtol_prefix,
)
from electric.postgres.protocol.values.numbers import _integer, _numeric, parse_numeric
from electric.postgres.protocol.values.dates import (
    POSTGRES_EPOCH_JDATE,
    USECS_PER_DAY,
    _DATE_END_JD,
    _TIMESTAMP_RE,
    _date_fields,
    _julian,
    _special,
    _time_usecs,
    _timestamp,
    _zone_seconds,
    check_date,
)


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
