"""
date, time, timetz, timestamp, timestamptz and interval.

Postgres reads a great many date/time spellings, and several of them mean
different things in different databases: numeric dates follow DateStyle
('01/02/2020'), time zone abbreviations follow timezone_abbreviations and
zone names the server's time zone database, a timestamptz (or timetz)
without an offset is read in the server's TimeZone, and 'now', 'today' ...
depend on when the apply worker stores the row.  Electric accepts the ISO
8601 forms (what Postgres prints with DateStyle ISO, and what JavaScript's
Date.toISOString() makes) and decides their validity exactly as
PostgreSQL 15 does; other spellings are refused with NotPortable.
"""

from __future__ import annotations

import re
from typing import Dict, Optional, Tuple

from electric.postgres.protocol.values.common import (
    Check,
    InvalidValue,
    NotPortable,
    SPACE,
    _INT32,
    _INT64,
    _shown,
    _syntax,
)


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
