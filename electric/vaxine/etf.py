"""
Erlang external term format (ETF): the bytes of ``term_to_binary`` and back.

Vaxine's replication stream carries one ETF term per frame, and the PB API
carries ETF blobs inside protobuf fields (transaction descriptors, commit
clocks, the ``ignore`` timestamp, column values in row registers).  This
module is pure: bytes in, Python values out, and back.

Python representation (decoding always gives these types; encoding accepts
them plus ``bool`` and ``None`` as conveniences):

==================  ===================================  =====================
Erlang              Python                                tags decoded / written
==================  ===================================  =====================
atom                `Atom` (``Atom("ok")``)               100 115 118 119 / 100 (119 beyond Latin-1)
integer             ``int``                               97 98 110 111 / 97 98 110 111
float               ``float``                             70 / 70
binary              ``bytes``                             109 / 109
bitstring           `BitBinary`                           77 / 77
tuple               ``tuple``                             104 105 / 104 105
proper list         ``list``                              106 108 107 / 106 108 107
improper list       `ImproperList`                        108 / 108
map                 ``dict``                              116 / 116
pid                 `Pid` (opaque)                        88 / 88
reference           `Reference` (opaque)                  90 / 90
==================  ===================================  =====================

``True``/``False`` encode as the atoms ``true``/``false`` and ``None`` as the
atom ``nil`` (Elixir's NULL, which is what Vaxine rows store for SQL NULL);
they decode back as `Atom`.  A list of integers 0..255 (shorter than 65536)
encodes as STRING_EXT, as Erlang itself does, so OTP's own bytes re-encode
identically; STRING_EXT decodes to a ``list`` of ``int``.

Anything malformed -- a wrong version byte, an unknown tag, a length running
past the data, trailing bytes, nesting deeper than `MAX_DEPTH` -- raises
`ETFError` (a ``ValueError``) with a message saying what and where; never
``IndexError`` or ``struct.error``.  Lengths are checked against the bytes
actually present before anything is allocated, so a hostile header cannot
make the decoder reserve memory it was not sent.

Compressed terms (tag 80), distribution headers and the legacy pid/reference
tags (101, 103, 114) are not accepted: OTP 23+ never writes them for
``term_to_binary`` without options, and Vaxine does not use them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Tuple

VERSION = 131

NEW_FLOAT_EXT = 70
BIT_BINARY_EXT = 77
NEW_PID_EXT = 88
NEWER_REFERENCE_EXT = 90
SMALL_INTEGER_EXT = 97
INTEGER_EXT = 98
ATOM_EXT = 100
SMALL_TUPLE_EXT = 104
LARGE_TUPLE_EXT = 105
NIL_EXT = 106
STRING_EXT = 107
LIST_EXT = 108
BINARY_EXT = 109
SMALL_BIG_EXT = 110
LARGE_BIG_EXT = 111
SMALL_ATOM_EXT = 115
MAP_EXT = 116
ATOM_UTF8_EXT = 118
SMALL_ATOM_UTF8_EXT = 119

TAG_NAMES = {
    NEW_FLOAT_EXT: "NEW_FLOAT_EXT", BIT_BINARY_EXT: "BIT_BINARY_EXT", NEW_PID_EXT: "NEW_PID_EXT",
    NEWER_REFERENCE_EXT: "NEWER_REFERENCE_EXT", SMALL_INTEGER_EXT: "SMALL_INTEGER_EXT",
    INTEGER_EXT: "INTEGER_EXT", ATOM_EXT: "ATOM_EXT", SMALL_TUPLE_EXT: "SMALL_TUPLE_EXT",
    LARGE_TUPLE_EXT: "LARGE_TUPLE_EXT", NIL_EXT: "NIL_EXT", STRING_EXT: "STRING_EXT",
    LIST_EXT: "LIST_EXT", BINARY_EXT: "BINARY_EXT", SMALL_BIG_EXT: "SMALL_BIG_EXT",
    LARGE_BIG_EXT: "LARGE_BIG_EXT", SMALL_ATOM_EXT: "SMALL_ATOM_EXT", MAP_EXT: "MAP_EXT",
    ATOM_UTF8_EXT: "ATOM_UTF8_EXT", SMALL_ATOM_UTF8_EXT: "SMALL_ATOM_UTF8_EXT",
}
_KNOWN_UNSUPPORTED = {
    80: "compressed term", 68: "distribution header", 101: "REFERENCE_EXT (legacy)",
    103: "PID_EXT (legacy)", 114: "NEW_REFERENCE_EXT (legacy)", 99: "FLOAT_EXT (legacy)",
    102: "PORT_EXT", 89: "NEW_PORT_EXT", 120: "V4_PORT_EXT", 113: "EXPORT_EXT", 112: "NEW_FUN_EXT",
    117: "FUN_EXT", 82: "ATOM_CACHE_REF", 121: "LOCAL_EXT",
}

MAX_DEPTH = 512
"""Deepest nesting the decoder accepts (Vaxine's deepest terms are ~12 levels)."""

MAX_ATOM_CHARS = 255


class ETFError(ValueError):
    """Bytes that are not a valid term (decoding), or a value with no ETF form (encoding)."""


@dataclass(frozen=True, order=True)
class Atom:
    """An Erlang atom.  Distinct from ``str`` so atoms and binaries never mix up."""

    name: str

    def __repr__(self) -> str:
        return f"Atom({self.name!r})"

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class ImproperList:
    """``[e1, e2, ... | tail]`` with a tail that is not ``[]``; `items` is never empty.

    Erlang's ``dict`` stores each entry as the cons cell ``[Key | Value]``:
    ``ImproperList((key,), value)``, see `cons_cell`.
    """

    items: Tuple[Any, ...]
    tail: Any

    def __post_init__(self):
        if not self.items:
            raise ETFError("an improper list needs at least one element")
        if isinstance(self.tail, (list, ImproperList)):
            raise ETFError("an improper list's tail cannot be a list (that is a longer list)")


@dataclass(frozen=True)
class BitBinary:
    """A bitstring whose last byte holds only `bits` (1..8) significant high bits."""

    data: bytes
    bits: int


@dataclass(frozen=True)
class Pid:
    """An Erlang process id.  Opaque: only ever echoed or compared."""

    node: Atom
    id: int
    serial: int
    creation: int


@dataclass(frozen=True)
class Reference:
    """An Erlang reference.  Opaque; `ids` are the 32-bit words, 1..5 of them."""

    node: Atom
    creation: int
    ids: Tuple[int, ...]


def atom(name: str) -> Atom:
    return Atom(name)


def cons_cell(term: Any) -> Tuple[Any, Any]:
    """``[Key | Value]`` as ``(key, value)`` -- one entry of an Erlang dict bucket.

    A value that is itself a list makes the cell a proper list ``[Key, v...]``
    (the cell's tail is that list), so both shapes are accepted.
    """
    if isinstance(term, ImproperList) and len(term.items) == 1:
        return term.items[0], term.tail
    if isinstance(term, list) and term:
        return term[0], term[1:]
    raise ETFError(f"expected a cons cell [Key | Value], got {_short(term)}")


# --------------------------------------------------------------------------- encoding


def term_to_binary(term: Any) -> bytes:
    """The ETF bytes of `term` (version byte included)."""
    out = bytearray([VERSION])
    _encode(term, out, 0)
    return bytes(out)


def _encode_atom(name: str, out: bytearray) -> None:
    if len(name) > MAX_ATOM_CHARS:
        raise ETFError(f"atom of {len(name)} characters; Erlang allows at most {MAX_ATOM_CHARS}")
    try:
        data = name.encode("latin-1")
        out.append(ATOM_EXT)
        out += struct.pack(">H", len(data))
    except UnicodeEncodeError:
        data = name.encode("utf-8")
        if len(data) <= 255:
            out.append(SMALL_ATOM_UTF8_EXT)
            out.append(len(data))
        else:
            out.append(ATOM_UTF8_EXT)
            out += struct.pack(">H", len(data))
    out += data


def _encode_int(value: int, out: bytearray) -> None:
    if 0 <= value <= 255:
        out.append(SMALL_INTEGER_EXT)
        out.append(value)
    elif -(2 ** 31) <= value < 2 ** 31:
        out.append(INTEGER_EXT)
        out += struct.pack(">i", value)
    else:
        magnitude = abs(value)
        digits = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "little")
        if len(digits) <= 255:
            out.append(SMALL_BIG_EXT)
            out.append(len(digits))
        else:
            out.append(LARGE_BIG_EXT)
            out += struct.pack(">I", len(digits))
        out.append(1 if value < 0 else 0)
        out += digits


def _check_u32(value: int, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2 ** 32:
        raise ETFError(f"{what} must be an integer in 0..2**32-1, got {value!r}")


def _encode(term: Any, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ETFError(f"term nested deeper than {MAX_DEPTH} levels")
    if term is True or term is False:
        _encode_atom("true" if term else "false", out)
    elif term is None:
        _encode_atom("nil", out)
    elif isinstance(term, Atom):
        _encode_atom(term.name, out)
    elif isinstance(term, int):
        _encode_int(term, out)
    elif isinstance(term, float):
        if term != term or term in (float("inf"), float("-inf")):
            raise ETFError(f"Erlang floats are finite, got {term!r}")
        out.append(NEW_FLOAT_EXT)
        out += struct.pack(">d", term)
    elif isinstance(term, (bytes, bytearray, memoryview)):
        data = bytes(term)
        if len(data) >= 2 ** 32:
            raise ETFError("binary longer than 2**32-1 bytes")
        out.append(BINARY_EXT)
        out += struct.pack(">I", len(data))
        out += data
    elif isinstance(term, tuple):
        if len(term) <= 255:
            out.append(SMALL_TUPLE_EXT)
            out.append(len(term))
        else:
            out.append(LARGE_TUPLE_EXT)
            out += struct.pack(">I", len(term))
        for item in term:
            _encode(item, out, depth + 1)
    elif isinstance(term, list):
        if not term:
            out.append(NIL_EXT)
        elif len(term) < 65536 and all(
            isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 255 for x in term
        ):
            out.append(STRING_EXT)
            out += struct.pack(">H", len(term))
            out += bytes(term)
        else:
            out.append(LIST_EXT)
            out += struct.pack(">I", len(term))
            for item in term:
                _encode(item, out, depth + 1)
            out.append(NIL_EXT)
    elif isinstance(term, ImproperList):
        out.append(LIST_EXT)
        out += struct.pack(">I", len(term.items))
        for item in term.items:
            _encode(item, out, depth + 1)
        _encode(term.tail, out, depth + 1)
    elif isinstance(term, dict):
        out.append(MAP_EXT)
        out += struct.pack(">I", len(term))
        for key, value in term.items():
            _encode(key, out, depth + 1)
            _encode(value, out, depth + 1)
    elif isinstance(term, Pid):
        out.append(NEW_PID_EXT)
        _encode_atom(term.node.name, out)
        for what in ("id", "serial", "creation"):
            _check_u32(getattr(term, what), f"pid {what}")
        out += struct.pack(">III", term.id, term.serial, term.creation)
    elif isinstance(term, Reference):
        if not 1 <= len(term.ids) <= 5:
            raise ETFError(f"a reference has 1..5 id words, got {len(term.ids)}")
        _check_u32(term.creation, "reference creation")
        for word in term.ids:
            _check_u32(word, "reference id word")
        out.append(NEWER_REFERENCE_EXT)
        out += struct.pack(">H", len(term.ids))
        _encode_atom(term.node.name, out)
        out += struct.pack(">I", term.creation)
        for word in term.ids:
            out += struct.pack(">I", word)
    elif isinstance(term, BitBinary):
        if not 1 <= term.bits <= 8 or not term.data:
            raise ETFError(f"a bitstring needs data and 1..8 bits in its last byte, got {term!r}")
        out.append(BIT_BINARY_EXT)
        out += struct.pack(">I", len(term.data))
        out.append(term.bits)
        out += term.data
    else:
        raise ETFError(f"no Erlang term for a Python {type(term).__name__}: {_short(term)}")


# --------------------------------------------------------------------------- decoding


def binary_to_term(data: bytes) -> Any:
    """Decode exactly one term (with its version byte) from `data`; `ETFError` otherwise."""
    view = memoryview(bytes(data)) if not isinstance(data, bytes) else memoryview(data)
    if not view:
        raise ETFError("empty input: expected an ETF term")
    if view[0] != VERSION:
        raise ETFError(f"bad ETF version byte {view[0]} at offset 0 (expected 131)")
    decoder = _Decoder(view)
    term = decoder.term(1, 0)
    end = decoder.end
    if end != len(view):
        raise ETFError(f"{len(view) - end} trailing bytes after the term (term ends at offset {end})")
    return term


class _Decoder:
    __slots__ = ("data", "end")

    def __init__(self, data: memoryview):
        self.data = data
        self.end = 0

    def need(self, pos: int, n: int, what: str) -> None:
        if pos + n > len(self.data):
            raise ETFError(
                f"truncated term: {what} at offset {pos} needs {n} bytes, {len(self.data) - pos} left"
            )

    def u8(self, pos: int, what: str) -> int:
        self.need(pos, 1, what)
        return self.data[pos]

    def u16(self, pos: int, what: str) -> int:
        self.need(pos, 2, what)
        return (self.data[pos] << 8) | self.data[pos + 1]

    def u32(self, pos: int, what: str) -> int:
        self.need(pos, 4, what)
        return int.from_bytes(self.data[pos:pos + 4], "big")

    def count(self, pos: int, n: int, min_size: int, what: str) -> None:
        """Refuse a header that announces more elements than the remaining bytes can hold."""
        if n * min_size > len(self.data) - pos:
            raise ETFError(
                f"truncated term: {what} at offset {pos} announces {n} elements, "
                f"only {len(self.data) - pos} bytes left"
            )

    def atom_at(self, pos: int) -> Tuple[Atom, int]:
        tag = self.u8(pos, "atom tag")
        if tag in (ATOM_EXT, ATOM_UTF8_EXT):
            n, start = self.u16(pos + 1, "atom length"), pos + 3
        elif tag in (SMALL_ATOM_EXT, SMALL_ATOM_UTF8_EXT):
            n, start = self.u8(pos + 1, "atom length"), pos + 2
        else:
            raise ETFError(f"expected an atom at offset {pos}, got tag {tag}{_tag_suffix(tag)}")
        self.need(start, n, "atom text")
        raw = bytes(self.data[start:start + n])
        if tag in (ATOM_EXT, SMALL_ATOM_EXT):
            name = raw.decode("latin-1")
        else:
            try:
                name = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ETFError(f"atom at offset {pos} is not valid UTF-8: {e}") from None
        if len(name) > MAX_ATOM_CHARS:
            raise ETFError(f"atom at offset {pos} has {len(name)} characters (max {MAX_ATOM_CHARS})")
        return Atom(name), start + n

    def term(self, pos: int, depth: int) -> Any:
        """Decode the term starting at `pos`; leaves its end in self.end."""
        if depth > MAX_DEPTH:
            raise ETFError(f"term nested deeper than {MAX_DEPTH} levels at offset {pos}")
        tag = self.u8(pos, "tag")
        p = pos + 1
        if tag == SMALL_INTEGER_EXT:
            value = self.u8(p, "small integer")
            self.end = p + 1
            return value
        if tag == INTEGER_EXT:
            self.need(p, 4, "integer")
            self.end = p + 4
            return int.from_bytes(self.data[p:p + 4], "big", signed=True)
        if tag in (ATOM_EXT, SMALL_ATOM_EXT, ATOM_UTF8_EXT, SMALL_ATOM_UTF8_EXT):
            value, self.end = self.atom_at(pos)
            return value
        if tag == BINARY_EXT:
            n = self.u32(p, "binary length")
            self.need(p + 4, n, "binary data")
            self.end = p + 4 + n
            return bytes(self.data[p + 4:p + 4 + n])
        if tag in (SMALL_TUPLE_EXT, LARGE_TUPLE_EXT):
            if tag == SMALL_TUPLE_EXT:
                n, p = self.u8(p, "tuple arity"), p + 1
            else:
                n, p = self.u32(p, "tuple arity"), p + 4
            self.count(p, n, 1, "tuple")
            items = []
            for _ in range(n):
                items.append(self.term(p, depth + 1))
                p = self.end
            self.end = p
            return tuple(items)
        if tag == NIL_EXT:
            self.end = p
            return []
        if tag == LIST_EXT:
            n, p = self.u32(p, "list length"), p + 4
            self.count(p, n + 1, 1, "list")
            items = []
            for _ in range(n):
                items.append(self.term(p, depth + 1))
                p = self.end
            tail = self.term(p, depth + 1)
            if isinstance(tail, list) and not tail:
                return items
            if not items:
                raise ETFError(f"LIST_EXT at offset {pos} has no elements but a non-nil tail")
            if isinstance(tail, list):
                # [a | [b, c]] is the proper list [a, b, c] (unusual but valid).
                return items + tail
            if isinstance(tail, ImproperList):
                return ImproperList(tuple(items) + tail.items, tail.tail)
            return ImproperList(tuple(items), tail)
        if tag == STRING_EXT:
            n = self.u16(p, "string length")
            self.need(p + 2, n, "string data")
            self.end = p + 2 + n
            return list(self.data[p + 2:p + 2 + n])
        if tag in (SMALL_BIG_EXT, LARGE_BIG_EXT):
            if tag == SMALL_BIG_EXT:
                n, p = self.u8(p, "big integer length"), p + 1
            else:
                n, p = self.u32(p, "big integer length"), p + 4
            sign = self.u8(p, "big integer sign")
            if sign > 1:
                raise ETFError(f"big integer at offset {pos} has sign byte {sign} (expected 0 or 1)")
            self.need(p + 1, n, "big integer digits")
            value = int.from_bytes(self.data[p + 1:p + 1 + n], "little")
            self.end = p + 1 + n
            return -value if sign else value
        if tag == MAP_EXT:
            n, p = self.u32(p, "map size"), p + 4
            self.count(p, n, 2, "map")
            result = {}
            for _ in range(n):
                key = self.term(p, depth + 1)
                value = self.term(self.end, depth + 1)
                p = self.end
                try:
                    result[key] = value
                except TypeError:
                    raise ETFError(
                        f"map at offset {pos} has a key of type {type(key).__name__}, "
                        "which this decoder cannot use as a dict key"
                    ) from None
            if len(result) != n:
                raise ETFError(f"map at offset {pos} repeats a key (or has keys Python finds equal, like 1 and 1.0)")
            self.end = p
            return result
        if tag == NEW_PID_EXT:
            node, p = self.atom_at(p)
            self.need(p, 12, "pid")
            pid_id, serial, creation = struct.unpack_from(">III", self.data, p)
            self.end = p + 12
            return Pid(node, pid_id, serial, creation)
        if tag == NEWER_REFERENCE_EXT:
            n = self.u16(p, "reference length")
            if not 1 <= n <= 5:
                raise ETFError(f"reference at offset {pos} has {n} id words (expected 1..5)")
            node, p = self.atom_at(p + 2)
            self.need(p, 4 + 4 * n, "reference words")
            creation = int.from_bytes(self.data[p:p + 4], "big")
            ids = struct.unpack_from(f">{n}I", self.data, p + 4)
            self.end = p + 4 + 4 * n
            return Reference(node, creation, tuple(ids))
        if tag == NEW_FLOAT_EXT:
            self.need(p, 8, "float")
            (value,) = struct.unpack_from(">d", self.data, p)
            if value != value or value in (float("inf"), float("-inf")):
                raise ETFError(f"float at offset {pos} is not finite")
            self.end = p + 8
            return value
        if tag == BIT_BINARY_EXT:
            n = self.u32(p, "bitstring length")
            bits = self.u8(p + 4, "bitstring bits")
            if n == 0 or not 1 <= bits <= 8:
                raise ETFError(f"bitstring at offset {pos} has {n} bytes and {bits} trailing bits")
            self.need(p + 5, n, "bitstring data")
            self.end = p + 5 + n
            return BitBinary(bytes(self.data[p + 5:p + 5 + n]), bits)
        raise ETFError(f"unsupported ETF tag {tag}{_tag_suffix(tag)} at offset {pos}")


def _tag_suffix(tag: int) -> str:
    name = TAG_NAMES.get(tag) or _KNOWN_UNSUPPORTED.get(tag)
    return f" ({name})" if name else ""


def _short(term: Any, limit: int = 80) -> str:
    text = repr(term)
    return text if len(text) <= limit else text[: limit - 3] + "..."
