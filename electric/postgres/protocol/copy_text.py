"""
COPY's text format: one row per line, tab-separated fields, backslash escapes, ``\\N`` for NULL.

The publisher writes the hub's rows in this format when a subscriber's
table-sync worker runs ``COPY ... TO STDOUT``.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

from electric.postgres.protocol.cursor import ProtocolError

_COPY_ESCAPES = {
    "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
}
_COPY_ESCAPE_TABLE = str.maketrans(_COPY_ESCAPES)
_COPY_UNESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}


def copy_text_escape(value: Optional[str]) -> str:
    """One field in COPY text format; None → ``\\N``."""
    if value is None:
        return "\\N"
    return value.translate(_COPY_ESCAPE_TABLE)


def copy_text_row(values: Sequence[Optional[str]]) -> bytes:
    """A whole COPY text line: tab-separated, ``\\n``-terminated, UTF-8."""
    return ("\t".join(copy_text_escape(v) for v in values) + "\n").encode("utf-8")


def parse_copy_text_row(line: Union[bytes, str]) -> List[Optional[str]]:
    """Inverse of `copy_text_row` (also understands octal/hex escapes Postgres accepts)."""
    if isinstance(line, (bytes, bytearray)):
        try:
            line = bytes(line).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError(f"COPY line is not valid UTF-8 ({e})") from None
    if line.endswith("\n"):
        line = line[:-1]
    fields: List[Optional[str]] = []
    for raw in line.split("\t"):
        if raw == "\\N":
            fields.append(None)
            continue
        if "\\" not in raw:
            fields.append(raw)
            continue
        out = []
        i = 0
        while i < len(raw):
            c = raw[i]
            if c != "\\":
                out.append(c)
                i += 1
                continue
            if i + 1 >= len(raw):
                raise ProtocolError(f"COPY field ends in a lone backslash: {raw!r}")
            e = raw[i + 1]
            if e in _COPY_UNESCAPES:
                out.append(_COPY_UNESCAPES[e])
                i += 2
            elif e in "01234567":
                j = i + 1
                while j < len(raw) and j < i + 4 and raw[j] in "01234567":
                    j += 1
                out.append(chr(int(raw[i + 1:j], 8)))
                i = j
            elif e == "x" and i + 2 < len(raw) and raw[i + 2] in "0123456789abcdefABCDEF":
                j = i + 2
                while j < len(raw) and j < i + 4 and raw[j] in "0123456789abcdefABCDEF":
                    j += 1
                out.append(chr(int(raw[i + 2:j], 16)))
                i = j
            else:
                out.append(e)
                i += 2
        fields.append("".join(out))
    return fields
