"""point, lseg, box, path, polygon, line and circle, read as geo_ops.c reads them."""

from __future__ import annotations

import math
from typing import List, Tuple

from electric.postgres.protocol.values.common import Check, InvalidValue, SPACE, _char_at, _lstrip, _syntax
from electric.postgres.protocol.values.numbers import _PG_FLOAT_WORDS, _strtod_prefix


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


def _pair_decode(text: str, i: int) -> Tuple[Tuple[float, float], int]:
    i = _lstrip(text, i)
    delimited = _char_at(text, i) == "("
    if delimited:
        i += 1
    x, i = _float8_prefix(text, i)
    if _char_at(text, i) != ",":
        raise _GeoError()
    y, i = _float8_prefix(text, i + 1)
    if delimited:
        if _char_at(text, i) != ")":
            raise _GeoError()
        i = _lstrip(text, i + 1)
    return (x, y), i


def _path_decode(text: str, i: int, opentype: bool, npts: int) -> Tuple[List[Tuple[float, float]], bool, int]:
    depth = 0
    i = _lstrip(text, i)
    is_open = _char_at(text, i) == "["
    if is_open:
        if not opentype:
            raise _GeoError()
        depth, i = 1, i + 1
    elif _char_at(text, i) == "(":
        cp = _lstrip(text, i + 1)
        if _char_at(text, cp) == "(" or text.rfind("(", i) == i:
            depth, i = 1, cp
    points = []
    for _ in range(npts):
        point, i = _pair_decode(text, i)
        points.append(point)
        if _char_at(text, i) == ",":
            i += 1
    while depth > 0:
        ch = _char_at(text, i)
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
        if _char_at(text, i) == "(" and text.rfind("(", i) == i:
            i, depth = i + 1, 1
        _points, _open, end = _path_decode(text, i, True, npts)
        if depth:
            if _char_at(text, end) != ")":
                raise _GeoError()
            end = _lstrip(text, end + 1)
    elif kind == "polygon":
        npts = _pair_count(text)
        if npts <= 0:
            raise _GeoError()
        _points, _open, end = _path_decode(text, 0, False, npts)
    elif kind == "line":
        i = _lstrip(text)
        if _char_at(text, i) == "{":
            a, i = _float8_prefix(text, i + 1)
            if _char_at(text, i) != ",":
                raise _GeoError()
            b, i = _float8_prefix(text, i + 1)
            if _char_at(text, i) != ",":
                raise _GeoError()
            _c, i = _float8_prefix(text, i + 1)
            if _char_at(text, i) != "}":
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
        if _char_at(text, i) == "<":
            depth, i = 1, i + 1
        elif _char_at(text, i) == "(":
            cp = _lstrip(text, i + 1)
            if _char_at(text, cp) == "(":
                depth, i = 1, cp
        _center, i = _pair_decode(text, i)
        if _char_at(text, i) == ",":
            i += 1
        radius, i = _float8_prefix(text, i)
        if radius < 0:
            raise _GeoError()
        while depth > 0:
            ch = _char_at(text, i)
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
