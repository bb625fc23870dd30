"""
The Postgres frontend/backend protocol v3, sans-IO, for both ends.

Electric is a Postgres *client* (it reads every database over logical
replication) and a Postgres *server* (the port-5433 publisher that each
database subscribes to).  Both sides share the message classes here; each
direction has its own incremental parser because the tag bytes overlap
(``D`` is DataRow from a backend but Describe from a frontend).

Parsers take arbitrary chunks and return complete messages.  Every message
length is checked against a bound as soon as its header arrives, so a peer
announcing a huge message gets a `ProtocolError` instead of making us buffer
it.  Malformed bodies also raise `ProtocolError` (never ``struct.error`` or
``IndexError``), and a parser that raised stays failed: after a framing error
nothing further on that byte stream can be trusted.

Every message class has ``encode() -> bytes`` (the complete framed message).
Replication sub-messages travel inside CopyData: their ``encode()`` returns
the CopyData *payload* and ``frame()`` the whole ``d`` message.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from electric.postgres.protocol.types import typlen_of

__all__ = [
    "ProtocolError", "BackendParser", "FrontendParser",
    "DEFAULT_MAX_MESSAGE_SIZE", "DEFAULT_MAX_STARTUP_SIZE",
]

PROTOCOL_3_0 = 196608
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

DEFAULT_MAX_MESSAGE_SIZE = 1 << 30
"""1 GiB, Postgres' own limit for a single field/message."""
DEFAULT_MAX_STARTUP_SIZE = 10000
"""Postgres' MAX_STARTUP_PACKET_LENGTH."""

_I16 = struct.Struct("!h")
_U16 = struct.Struct("!H")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_I64 = struct.Struct("!q")
_U64 = struct.Struct("!Q")
_HEADER = struct.Struct("!ci")


class ProtocolError(Exception):
    """
    The byte stream broke the protocol.

    `sqlstate` is what a server should report in its FATAL ErrorResponse
    (08P01 protocol_violation, 54000 for an oversize message).
    """

    def __init__(self, message: str, sqlstate: str = "08P01"):
        super().__init__(message)
        self.sqlstate = sqlstate

    @property
    def message(self) -> str:
        return self.args[0]


# --------------------------------------------------------------------------
# Reading and writing primitives

class Reader:
    """Cursor over one message body; every read failure is a ProtocolError."""

    __slots__ = ("buf", "pos", "what")

    def __init__(self, buf, what: str, pos: int = 0):
        self.buf = buf
        self.pos = pos
        self.what = what

    def _need(self, n: int) -> int:
        p = self.pos
        if n < 0 or p + n > len(self.buf):
            raise ProtocolError(
                f"malformed {self.what}: needs {n} more byte(s) at offset {p}, "
                f"only {len(self.buf) - p} left")
        self.pos = p + n
        return p

    def int8(self) -> int:
        p = self._need(1)
        v = self.buf[p]
        return v - 256 if v > 127 else v

    def uint8(self) -> int:
        return self.buf[self._need(1)]

    def byte(self) -> bytes:
        p = self._need(1)
        return bytes(self.buf[p:p + 1])

    def int16(self) -> int:
        return _I16.unpack_from(self.buf, self._need(2))[0]

    def uint16(self) -> int:
        return _U16.unpack_from(self.buf, self._need(2))[0]

    def int32(self) -> int:
        return _I32.unpack_from(self.buf, self._need(4))[0]

    def uint32(self) -> int:
        return _U32.unpack_from(self.buf, self._need(4))[0]

    def int64(self) -> int:
        return _I64.unpack_from(self.buf, self._need(8))[0]

    def uint64(self) -> int:
        return _U64.unpack_from(self.buf, self._need(8))[0]

    def bytes(self, n: int) -> bytes:
        if n < 0:
            raise ProtocolError(f"malformed {self.what}: negative length {n}")
        p = self._need(n)
        return bytes(self.buf[p:p + n])

    def cstring_bytes(self) -> bytes:
        end = self.buf.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolError(f"malformed {self.what}: string at offset {self.pos} is not NUL-terminated")
        v = bytes(self.buf[self.pos:end])
        self.pos = end + 1
        return v

    def cstring(self) -> str:
        raw = self.cstring_bytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError(f"malformed {self.what}: string is not valid UTF-8 ({e})") from None

    def rest(self) -> bytes:
        v = bytes(self.buf[self.pos:])
        self.pos = len(self.buf)
        return v

    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise ProtocolError(
                f"malformed {self.what}: {len(self.buf) - self.pos} unexpected trailing byte(s)")


def _cstr(s: Union[str, bytes]) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    if b"\0" in b:
        raise ValueError(f"string {s!r} contains a NUL byte and cannot be sent")
    return b + b"\0"


def frame(tag: bytes, body: bytes = b"") -> bytes:
    """Tag + Int32 length (counting itself) + body."""
    return tag + _I32.pack(len(body) + 4) + body


def encode_all(messages: Iterable["Message"]) -> bytes:
    return b"".join(m.encode() for m in messages)


class Message:
    """Base of every framed message; subclasses set TAG and implement _body/_decode."""

    __slots__ = ()
    TAG: bytes = b""

    def _body(self) -> bytes:
        return b""

    def encode(self) -> bytes:
        return frame(self.TAG, self._body())

    @classmethod
    def _decode(cls, r: Reader) -> "Message":
        return cls()

    @classmethod
    def decode_body(cls, body: bytes) -> "Message":
        r = Reader(body, cls.__name__)
        m = cls._decode(r)
        r.end()
        return m


# --------------------------------------------------------------------------
# Untagged startup-phase packets (frontend → backend)

class StartupPacket:
    """Base for the untagged first packets; encode() gives Int32 length + body."""

    __slots__ = ()

    def encode(self) -> bytes:
        body = self._body()  # type: ignore[attr-defined]
        return _I32.pack(len(body) + 4) + body


@dataclass(frozen=True, slots=True)
class SSLRequest(StartupPacket):
    def _body(self) -> bytes:
        return _I32.pack(SSL_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class GSSENCRequest(StartupPacket):
    def _body(self) -> bytes:
        return _I32.pack(GSSENC_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class CancelRequest(StartupPacket):
    pid: int
    key: int

    def _body(self) -> bytes:
        return _I32.pack(CANCEL_REQUEST_CODE) + _I32.pack(self.pid) + _I32.pack(self.key)


@dataclass(frozen=True, slots=True)
class StartupMessage(StartupPacket):
    parameters: Mapping[str, str]
    version: int = PROTOCOL_3_0

    def _body(self) -> bytes:
        parts = [_I32.pack(self.version)]
        for k, v in self.parameters.items():
            parts.append(_cstr(k))
            parts.append(_cstr(v))
        parts.append(b"\0")
        return b"".join(parts)

    @property
    def user(self) -> Optional[str]:
        return self.parameters.get("user")

    @property
    def database(self) -> Optional[str]:
        return self.parameters.get("database")


@dataclass(frozen=True, slots=True)
class SSLResponse:
    """The single unframed byte a server answers an SSL/GSSENC request with."""
    accepted: bool

    def encode(self) -> bytes:
        return b"S" if self.accepted else b"N"


def _decode_startup_packet(body: bytes):
    r = Reader(body, "startup packet")
    code = r.int32()
    if code == SSL_REQUEST_CODE:
        r.end()
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        r.end()
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        r.what = "CancelRequest"
        pid, key = r.int32(), r.int32()
        r.end()
        return CancelRequest(pid, key)
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        raise ProtocolError(
            f"unsupported frontend protocol {major}.{minor}: server supports 3.0", "0A000")
    r.what = "StartupMessage"
    params: Dict[str, str] = {}
    while True:
        key = r.cstring()
        if key == "":
            break
        params[key] = r.cstring()
    r.end()
    return StartupMessage(params, code)


# --------------------------------------------------------------------------
# Authentication (backend → frontend, tag R)

AUTH_OK = 0
AUTH_KERBEROS_V5 = 2
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_GSS = 7
AUTH_GSS_CONTINUE = 8
AUTH_SSPI = 9
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

_AUTH_NAMES = {AUTH_KERBEROS_V5: "KerberosV5", AUTH_GSS: "GSSAPI", AUTH_GSS_CONTINUE: "GSSAPI",
               AUTH_SSPI: "SSPI"}


class Authentication(Message):
    __slots__ = ()
    TAG = b"R"
    CODE = -1

    @classmethod
    def decode_body(cls, body: bytes) -> "Authentication":
        r = Reader(body, "Authentication")
        code = r.int32()
        sub = _AUTH_BY_CODE.get(code)
        if sub is None:
            m: Authentication = AuthenticationUnsupported(code, r.rest())
        else:
            r.what = sub.__name__
            m = sub._decode(r)
        r.end()
        return m


@dataclass(frozen=True, slots=True)
class AuthenticationOk(Authentication):
    CODE = AUTH_OK

    def _body(self) -> bytes:
        return _I32.pack(AUTH_OK)


@dataclass(frozen=True, slots=True)
class AuthenticationCleartextPassword(Authentication):
    CODE = AUTH_CLEARTEXT

    def _body(self) -> bytes:
        return _I32.pack(AUTH_CLEARTEXT)


@dataclass(frozen=True, slots=True)
class AuthenticationMD5Password(Authentication):
    salt: bytes
    CODE = AUTH_MD5

    def __post_init__(self):
        if len(self.salt) != 4:
            raise ValueError("md5 salt must be 4 bytes")

    def _body(self) -> bytes:
        return _I32.pack(AUTH_MD5) + self.salt

    @classmethod
    def _decode(cls, r: Reader):
        return cls(r.bytes(4))


@dataclass(frozen=True, slots=True)
class AuthenticationSASL(Authentication):
    mechanisms: Tuple[str, ...]
    CODE = AUTH_SASL

    def _body(self) -> bytes:
        return _I32.pack(AUTH_SASL) + b"".join(_cstr(m) for m in self.mechanisms) + b"\0"

    @classmethod
    def _decode(cls, r: Reader):
        mechs = []
        while True:
            m = r.cstring()
            if m == "":
                return cls(tuple(mechs))
            mechs.append(m)


@dataclass(frozen=True, slots=True)
class AuthenticationSASLContinue(Authentication):
    data: bytes
    CODE = AUTH_SASL_CONTINUE

    def _body(self) -> bytes:
        return _I32.pack(AUTH_SASL_CONTINUE) + self.data

    @classmethod
    def _decode(cls, r: Reader):
        return cls(r.rest())


@dataclass(frozen=True, slots=True)
class AuthenticationSASLFinal(Authentication):
    data: bytes
    CODE = AUTH_SASL_FINAL

    def _body(self) -> bytes:
        return _I32.pack(AUTH_SASL_FINAL) + self.data

    @classmethod
    def _decode(cls, r: Reader):
        return cls(r.rest())


@dataclass(frozen=True, slots=True)
class AuthenticationUnsupported(Authentication):
    """A method Electric does not implement (Kerberos, GSSAPI, SSPI, ...)."""
    code: int
    data: bytes = b""

    def _body(self) -> bytes:
        return _I32.pack(self.code) + self.data

    @property
    def method_name(self) -> str:
        return _AUTH_NAMES.get(self.code, f"code {self.code}")


_AUTH_BY_CODE = {c.CODE: c for c in (
    AuthenticationOk, AuthenticationCleartextPassword, AuthenticationMD5Password,
    AuthenticationSASL, AuthenticationSASLContinue, AuthenticationSASLFinal)}


# --------------------------------------------------------------------------
# Password family (frontend → backend, tag p)

@dataclass(frozen=True, slots=True)
class PasswordMessage(Message):
    """
    Any ``p`` message.  Its meaning (password, SASL initial response, SASL
    response) depends on what the server asked for, so the parser hands out
    the raw payload and the authentication state machine interprets it with
    `as_password` / `as_sasl_initial` / `as_sasl_response`.
    """
    data: bytes
    TAG = b"p"

    @classmethod
    def password(cls, password: Union[str, bytes]) -> "PasswordMessage":
        return cls(_cstr(password))

    def _body(self) -> bytes:
        return self.data

    @classmethod
    def _decode(cls, r: Reader):
        return cls(r.rest())

    def as_password(self) -> str:
        r = Reader(self.data, "PasswordMessage")
        pw = r.cstring()
        r.end()
        return pw

    def as_sasl_initial(self) -> "SASLInitialResponse":
        return SASLInitialResponse.decode_body(self.data)

    def as_sasl_response(self) -> "SASLResponse":
        return SASLResponse(self.data)


@dataclass(frozen=True, slots=True)
class SASLInitialResponse(Message):
    mechanism: str
    data: Optional[bytes]
    """None is "no initial response" (length -1 on the wire)."""
    TAG = b"p"

    def _body(self) -> bytes:
        if self.data is None:
            return _cstr(self.mechanism) + _I32.pack(-1)
        return _cstr(self.mechanism) + _I32.pack(len(self.data)) + self.data

    @classmethod
    def _decode(cls, r: Reader):
        mech = r.cstring()
        n = r.int32()
        return cls(mech, None if n == -1 else r.bytes(n))


@dataclass(frozen=True, slots=True)
class SASLResponse(Message):
    data: bytes
    TAG = b"p"

    def _body(self) -> bytes:
        return self.data

    @classmethod
    def _decode(cls, r: Reader):
        return cls(r.rest())


# --------------------------------------------------------------------------
# Session set-up and simple query (backend → frontend)

@dataclass(frozen=True, slots=True)
class ParameterStatus(Message):
    name: str
    value: str
    TAG = b"S"

    def _body(self) -> bytes:
        return _cstr(self.name) + _cstr(self.value)

    @classmethod
    def _decode(cls, r: Reader):
        return cls(r.cstring(), r.cstring())


@dataclass(frozen=True, slots=True)
class BackendKeyData(Message):
    pid: int
    key: int
    TAG = b"K"

    def _body(self) -> bytes:
        return _I32.pack(self.pid) + _I32.pack(self.key)

    @classmethod
    def _decode(cls, r: Reader):
        return cls(r.int32(), r.int32())


@dataclass(frozen=True, slots=True)
class ReadyForQuery(Message):
    status: str = "I"
    """``I`` idle, ``T`` in a transaction block, ``E`` in a failed one."""
    TAG = b"Z"

    def __post_init__(self):
        if self.status not in ("I", "T", "E"):
            raise ValueError(f"ReadyForQuery status must be I, T or E, not {self.status!r}")

    def _body(self) -> bytes:
        return self.status.encode("ascii")

    @classmethod
    def _decode(cls, r: Reader):
        s = r.byte()
        if s not in (b"I", b"T", b"E"):
            raise ProtocolError(f"malformed ReadyForQuery: unknown transaction status {s!r}")
        return cls(s.decode("ascii"))


@dataclass(frozen=True, slots=True)
class FieldDescription:
    name: str
    table_oid: int = 0
    attnum: int = 0
    type_oid: int = 25
    typlen: int = -1
    typmod: int = -1
    format: int = 0

    @classmethod
    def text(cls, name: str, type_oid: int = 25) -> "FieldDescription":
        """A text-format result column whose typlen comes from the OID table."""
        return cls(name, 0, 0, type_oid, typlen_of(type_oid), -1, 0)


@dataclass(frozen=True, slots=True)
class RowDescription(Message):
    fields: Tuple[FieldDescription, ...]
    TAG = b"T"

    def _body(self) -> bytes:
        parts = [_I16.pack(len(self.fields))]
        for f in self.fields:
            parts.append(_cstr(f.name))
            parts.append(struct.pack("!IhIhih", f.table_oid, f.attnum, f.type_oid,
                                     f.typlen, f.typmod, f.format))
        return b"".join(parts)

    @classmethod
    def _decode(cls, r: Reader):
        n = r.int16()
        if n < 0:
            raise ProtocolError(f"malformed RowDescription: negative field count {n}")
        fields = []
        for _ in range(n):
            name = r.cstring()
            fields.append(FieldDescription(name, r.uint32(), r.int16(), r.uint32(),
                                           r.int16(), r.int32(), r.int16()))
        return cls(tuple(fields))

    @property
    def names(self) -> List[str]:
        return [f.name for f in self.fields]


CellValue = Union[None, bytes, str, int, bool]


def _cell(v: CellValue) -> bytes:
    if v is None:
        return b"\xff\xff\xff\xff"
    if isinstance(v, bool):
        b = b"t" if v else b"f"
    elif isinstance(v, int):
        b = str(v).encode("ascii")
    elif isinstance(v, str):
        b = v.encode("utf-8")
    else:
        b = bytes(v)
    return _I32.pack(len(b)) + b


@dataclass(frozen=True, slots=True)
class DataRow(Message):
    """
    One result row.  Decoded values are raw ``bytes`` (None = NULL) because
    the format may be binary; `texts()` gives the usual text-format view.
    Encoding also accepts str, int (decimal) and bool (``t``/``f``).
    """
    values: Tuple[CellValue, ...]
    TAG = b"D"

    def _body(self) -> bytes:
        return _I16.pack(len(self.values)) + b"".join(_cell(v) for v in self.values)

    @classmethod
    def _decode(cls, r: Reader):
        n = r.int16()
        if n < 0:
            raise ProtocolError(f"malformed DataRow: negative column count {n}")
        vals: List[Optional[bytes]] = []
        for _ in range(n):
            ln = r.int32()
            if ln == -1:
                vals.append(None)
            elif ln < -1:
                raise ProtocolError(f"malformed DataRow: invalid value length {ln}")
            else:
                vals.append(r.bytes(ln))
        return cls(tuple(vals))

    def texts(self) -> List[Optional[str]]:
        out: List[Optional[str]] = []
        for v in self.values:
            if v is None or isinstance(v, str):
                out.append(v)
            elif isinstance(v, (bytes, bytearray)):
                try:
                    out.append(bytes(v).decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise ProtocolError(f"DataRow value is not valid UTF-8 ({e})") from None
            else:
                out.append(_cell(v)[4:].decode("utf-8"))
        return out


@dataclass(frozen=True, slots=True)
class CommandComplete(Message):
    tag: str
    TAG = b"C"

    def _body(self) -> bytes:
        return _cstr(self.tag)

    @classmethod
    def _decode(cls, r: Reader):
        return cls(r.cstring())


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse(Message):
    TAG = b"I"


# ErrorResponse / NoticeResponse field codes, in the order Postgres sends them.
ERROR_FIELDS = {
    "S": "severity", "V": "severity_nonlocalized", "C": "sqlstate", "M": "message",
    "D": "detail", "H": "hint", "P": "position", "p": "internal_position",
    "q": "internal_query", "W": "where", "s": "schema_name", "t": "table_name",
    "c": "column_name", "d": "data_type_name", "n": "constraint_name", "F": "file",
    "L": "line", "R": "routine",
}
_FIELD_BY_NAME = {v: k for k, v in ERROR_FIELDS.items()}


class _Notice(Message):
    """Shared shape of ErrorResponse and NoticeResponse: code → text fields."""

    __slots__ = ()

    def _body(self) -> bytes:
        parts = []
        for code, value in self.fields.items():  # type: ignore[attr-defined]
            if len(code) != 1 or code == "\0":
                raise ValueError(f"invalid error field code {code!r}")
            parts.append(code.encode("ascii") + _cstr(value))
        parts.append(b"\0")
        return b"".join(parts)

    @classmethod
    def _decode(cls, r: Reader):
        fields: Dict[str, str] = {}
        while True:
            code = r.byte()
            if code == b"\0":
                return cls(fields)  # type: ignore[call-arg]
            raw = r.cstring_bytes()
            # Servers send messages in their own encoding; never fail on text.
            fields[code.decode("latin-1")] = raw.decode("utf-8", "replace")

    @classmethod
    def build(cls, severity: str, sqlstate: str, message: str, **extra: str):
        """`severity` like ``ERROR``/``FATAL``; extra fields by name (detail=, hint=, ...)."""
        fields = {"S": severity, "V": severity, "C": sqlstate, "M": message}
        for name, value in extra.items():
            if value is None:
                continue
            code = _FIELD_BY_NAME.get(name)
            if code is None:
                raise TypeError(f"unknown error field {name!r}")
            fields[code] = str(value)
        return cls(fields)  # type: ignore[call-arg]

    def get(self, name: str) -> Optional[str]:
        return self.fields.get(_FIELD_BY_NAME.get(name, name))  # type: ignore[attr-defined]

    @property
    def severity(self) -> Optional[str]:
        f = self.fields  # type: ignore[attr-defined]
        return f.get("V") or f.get("S")

    @property
    def sqlstate(self) -> Optional[str]:
        return self.fields.get("C")  # type: ignore[attr-defined]

    @property
    def message(self) -> Optional[str]:
        return self.fields.get("M")  # type: ignore[attr-defined]

    @property
    def detail(self) -> Optional[str]:
        return self.fields.get("D")  # type: ignore[attr-defined]

    @property
    def hint(self) -> Optional[str]:
        return self.fields.get("H")  # type: ignore[attr-defined]

    def __str__(self) -> str:
        f = self.fields  # type: ignore[attr-defined]
        text = f"{f.get('S', 'ERROR')}:  {f.get('M', '')}"
        if "C" in f:
            text += f" (SQLSTATE {f['C']})"
        if "D" in f:
            text += f"\nDETAIL:  {f['D']}"
        if "H" in f:
            text += f"\nHINT:  {f['H']}"
        return text


@dataclass(frozen=True, slots=True)
class ErrorResponse(_Notice):
    fields: Dict[str, str]
    TAG = b"E"


@dataclass(frozen=True, slots=True)
class NoticeResponse(_Notice):
    fields: Dict[str, str]
    TAG = b"N"


@dataclass(frozen=True, slots=True)
class NotificationResponse(Message):
    pid: int
    channel: str
    payload: str
    TAG = b"A"

    def _body(self) -> bytes:
        return _I32.pack(self.pid) + _cstr(self.channel) + _cstr(self.payload)

    @classmethod
    def _decode(cls, r: Reader):
        return cls(r.int32(), r.cstring(), r.cstring())


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion(Message):
    newest_minor: int
    unrecognized: Tuple[str, ...] = ()
    TAG = b"v"

    def _body(self) -> bytes:
        return (_I32.pack(self.newest_minor) + _I32.pack(len(self.unrecognized))
                + b"".join(_cstr(o) for o in self.unrecognized))

    @classmethod
    def _decode(cls, r: Reader):
        minor = r.int32()
        n = r.int32()
        if n < 0:
            raise ProtocolError(f"malformed NegotiateProtocolVersion: negative count {n}")
        return cls(minor, tuple(r.cstring() for _ in range(n)))


# --------------------------------------------------------------------------
# COPY

class _CopyResponse(Message):
    __slots__ = ()

    def _body(self) -> bytes:
        cf = self.column_formats  # type: ignore[attr-defined]
        return (struct.pack("!bh", self.format, len(cf))  # type: ignore[attr-defined]
                + b"".join(_I16.pack(c) for c in cf))

    @classmethod
    def _decode(cls, r: Reader):
        fmt = r.int8()
        n = r.int16()
        if n < 0:
            raise ProtocolError(f"malformed {cls.__name__}: negative column count {n}")
        return cls(fmt, tuple(r.int16() for _ in range(n)))  # type: ignore[call-arg]


@dataclass(frozen=True, slots=True)
class CopyInResponse(_CopyResponse):
    format: int = 0
    column_formats: Tuple[int, ...] = ()
    TAG = b"G"


@dataclass(frozen=True, slots=True)
class CopyOutResponse(_CopyResponse):
    format: int = 0
    column_formats: Tuple[int, ...] = ()
    TAG = b"H"


@dataclass(frozen=True, slots=True)
class CopyBothResponse(_CopyResponse):
    format: int = 0
    column_formats: Tuple[int, ...] = ()
    TAG = b"W"


@dataclass(frozen=True, slots=True)
class CopyData(Message):
    data: bytes
    TAG = b"d"

    def _body(self) -> bytes:
        return bytes(self.data)

    @classmethod
    def _decode(cls, r: Reader):
        return cls(r.rest())

    def replication_message(self) -> "ReplicationMessage":
        """Decode the payload as a streaming-replication sub-message."""
        return decode_replication(self.data)


@dataclass(frozen=True, slots=True)
class CopyDone(Message):
    TAG = b"c"


@dataclass(frozen=True, slots=True)
class CopyFail(Message):
    message: str
    TAG = b"f"

    def _body(self) -> bytes:
        return _cstr(self.message)

    @classmethod
    def _decode(cls, r: Reader):
        return cls(r.cstring())


# --------------------------------------------------------------------------
# Frontend-only messages

@dataclass(frozen=True, slots=True)
class Query(Message):
    sql: str
    TAG = b"Q"

    def _body(self) -> bytes:
        return _cstr(self.sql)

    @classmethod
    def _decode(cls, r: Reader):
        return cls(r.cstring())


@dataclass(frozen=True, slots=True)
class Terminate(Message):
    TAG = b"X"


@dataclass(frozen=True, slots=True)
class Sync(Message):
    TAG = b"S"


@dataclass(frozen=True, slots=True)
class Flush(Message):
    TAG = b"H"


@dataclass(frozen=True, slots=True)
class Parse(Message):
    statement: str
    sql: str
    param_types: Tuple[int, ...] = ()
    TAG = b"P"

    def _body(self) -> bytes:
        return (_cstr(self.statement) + _cstr(self.sql) + _I16.pack(len(self.param_types))
                + b"".join(_U32.pack(t) for t in self.param_types))

    @classmethod
    def _decode(cls, r: Reader):
        stmt, sql = r.cstring(), r.cstring()
        n = r.int16()
        if n < 0:
            raise ProtocolError(f"malformed Parse: negative parameter count {n}")
        return cls(stmt, sql, tuple(r.uint32() for _ in range(n)))


@dataclass(frozen=True, slots=True)
class Bind(Message):
    portal: str
    statement: str
    param_formats: Tuple[int, ...] = ()
    params: Tuple[Optional[bytes], ...] = ()
    result_formats: Tuple[int, ...] = ()
    TAG = b"B"

    def _body(self) -> bytes:
        parts = [_cstr(self.portal), _cstr(self.statement), _I16.pack(len(self.param_formats))]
        parts += [_I16.pack(f) for f in self.param_formats]
        parts.append(_I16.pack(len(self.params)))
        parts += [_cell(p) for p in self.params]
        parts.append(_I16.pack(len(self.result_formats)))
        parts += [_I16.pack(f) for f in self.result_formats]
        return b"".join(parts)

    @classmethod
    def _decode(cls, r: Reader):
        portal, stmt = r.cstring(), r.cstring()

        def count() -> int:
            n = r.int16()
            if n < 0:
                raise ProtocolError(f"malformed Bind: negative count {n}")
            return n

        pf = tuple(r.int16() for _ in range(count()))
        params: List[Optional[bytes]] = []
        for _ in range(count()):
            ln = r.int32()
            params.append(None if ln == -1 else r.bytes(ln))
        rf = tuple(r.int16() for _ in range(count()))
        return cls(portal, stmt, pf, tuple(params), rf)


@dataclass(frozen=True, slots=True)
class Execute(Message):
    portal: str = ""
    max_rows: int = 0
    TAG = b"E"

    def _body(self) -> bytes:
        return _cstr(self.portal) + _I32.pack(self.max_rows)

    @classmethod
    def _decode(cls, r: Reader):
        return cls(r.cstring(), r.int32())


class _DescribeOrClose(Message):
    __slots__ = ()

    def _body(self) -> bytes:
        return self.kind.encode("ascii") + _cstr(self.name)  # type: ignore[attr-defined]

    @classmethod
    def _decode(cls, r: Reader):
        kind = r.byte()
        if kind not in (b"S", b"P"):
            raise ProtocolError(f"malformed {cls.__name__}: kind must be S or P, not {kind!r}")
        return cls(kind.decode("ascii"), r.cstring())  # type: ignore[call-arg]


@dataclass(frozen=True, slots=True)
class Describe(_DescribeOrClose):
    kind: str
    """``S`` prepared statement, ``P`` portal."""
    name: str = ""
    TAG = b"D"


@dataclass(frozen=True, slots=True)
class Close(_DescribeOrClose):
    kind: str
    name: str = ""
    TAG = b"C"


# Extended-protocol backend replies (no body or trivial body).
@dataclass(frozen=True, slots=True)
class ParseComplete(Message):
    TAG = b"1"


@dataclass(frozen=True, slots=True)
class BindComplete(Message):
    TAG = b"2"


@dataclass(frozen=True, slots=True)
class CloseComplete(Message):
    TAG = b"3"


@dataclass(frozen=True, slots=True)
class NoData(Message):
    TAG = b"n"


@dataclass(frozen=True, slots=True)
class PortalSuspended(Message):
    TAG = b"s"


@dataclass(frozen=True, slots=True)
class ParameterDescription(Message):
    type_oids: Tuple[int, ...]
    TAG = b"t"

    def _body(self) -> bytes:
        return _I16.pack(len(self.type_oids)) + b"".join(_U32.pack(t) for t in self.type_oids)

    @classmethod
    def _decode(cls, r: Reader):
        n = r.int16()
        if n < 0:
            raise ProtocolError(f"malformed ParameterDescription: negative count {n}")
        return cls(tuple(r.uint32() for _ in range(n)))


BACKEND_MESSAGES: Dict[bytes, type] = {c.TAG: c for c in (
    Authentication, ParameterStatus, BackendKeyData, ReadyForQuery, RowDescription, DataRow,
    CommandComplete, EmptyQueryResponse, ErrorResponse, NoticeResponse, NotificationResponse,
    NegotiateProtocolVersion, CopyInResponse, CopyOutResponse, CopyBothResponse, CopyData,
    CopyDone, ParseComplete, BindComplete, CloseComplete, NoData, PortalSuspended,
    ParameterDescription)}

FRONTEND_MESSAGES: Dict[bytes, type] = {c.TAG: c for c in (
    Query, PasswordMessage, CopyData, CopyDone, CopyFail, Terminate, Sync, Flush, Parse, Bind,
    Execute, Describe, Close)}


# --------------------------------------------------------------------------
# Incremental parsers

class _Parser:
    """Shared framing: buffer, bounds, sticky failure."""

    _table: Dict[bytes, type] = {}
    _direction = ""

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE):
        self.max_message_size = max_message_size
        self._buf = bytearray()
        self._pos = 0  # start of the first unparsed byte; compacted once per feed()
        self._error: Optional[ProtocolError] = None
        self.closed = False

    def _discard(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def _fail(self, err: ProtocolError) -> ProtocolError:
        self._error = err
        self._discard()
        return err

    def _check_length(self, tag: bytes, length: int) -> None:
        if length < 4:
            raise self._fail(ProtocolError(
                f"invalid {self._direction} message length {length} for type {tag!r}"))
        if length - 4 > self.max_message_size:
            raise self._fail(ProtocolError(
                f"{self._direction} message type {tag!r} of {length - 4} bytes exceeds the "
                f"limit of {self.max_message_size} bytes", "54000"))

    def _tagged(self, out: list) -> bool:
        """Parse one tagged message from the buffer into `out`; False if incomplete."""
        buf, p = self._buf, self._pos
        if len(buf) - p < 5:
            return False
        tag, length = _HEADER.unpack_from(buf, p)
        self._check_length(tag, length)
        if len(buf) - p < length + 1:
            return False
        cls = self._table.get(tag)
        if cls is None:
            raise self._fail(ProtocolError(
                f"unexpected {self._direction} message type {tag!r} (length {length})"))
        body = bytes(buf[p + 5:p + length + 1])
        self._pos = p + length + 1
        try:
            out.append(cls.decode_body(body))
        except ProtocolError as e:
            raise self._fail(e) from None
        return True

    def feed(self, data: bytes) -> list:
        """Append `data`; return every message it completed, in order."""
        if self._error is not None:
            raise self._error
        if self.closed:
            return []
        self._buf += data
        out: list = []
        try:
            while not self.closed and len(self._buf) > self._pos and self._step(out):
                pass
        finally:
            if self._pos:
                del self._buf[:self._pos]
                self._pos = 0
        return out

    def _step(self, out: list) -> bool:
        return self._tagged(out)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet forming a complete message."""
        return len(self._buf) - self._pos


class BackendParser(_Parser):
    """
    Client side: parses what a backend sends.

    Call `expect_ssl_response()` after sending an SSLRequest/GSSENCRequest;
    the next byte is then the unframed ``S``/``N`` answer (an ``E`` there is
    a real ErrorResponse from a server that does not know the request).
    """

    _table = BACKEND_MESSAGES
    _direction = "backend"

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE):
        super().__init__(max_message_size)
        self._await_ssl = False

    def expect_ssl_response(self) -> None:
        self._await_ssl = True

    def _step(self, out: list) -> bool:
        if self._await_ssl:
            b = bytes(self._buf[self._pos:self._pos + 1])
            if b in (b"S", b"N"):
                self._pos += 1
                self._await_ssl = False
                out.append(SSLResponse(b == b"S"))
                return True
            if b != b"E":
                raise self._fail(ProtocolError(
                    f"invalid answer to SSL/GSS request: {b!r} (expected S or N)"))
            self._await_ssl = False
        return self._tagged(out)


class FrontendParser(_Parser):
    """
    Server side: parses what a frontend sends.

    Starts in the startup phase (untagged packets: SSLRequest, GSSENCRequest,
    CancelRequest, StartupMessage); after a StartupMessage, tagged messages
    follow.  After a CancelRequest or Terminate the connection has nothing
    more to say, so later bytes are ignored (`closed` is set).
    """

    _table = FRONTEND_MESSAGES
    _direction = "frontend"

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 max_startup_size: int = DEFAULT_MAX_STARTUP_SIZE):
        super().__init__(max_message_size)
        self.max_startup_size = max_startup_size
        self.in_startup = True

    def _step(self, out: list) -> bool:
        if not self.in_startup:
            ok = self._tagged(out)
            if ok and isinstance(out[-1], Terminate):
                self.closed = True
                self._discard()
            return ok
        buf, p = self._buf, self._pos
        if len(buf) - p < 4:
            return False
        length = _I32.unpack_from(buf, p)[0]
        if length < 8 or length > self.max_startup_size:
            raise self._fail(ProtocolError(
                f"invalid startup packet length {length} (allowed 8..{self.max_startup_size})"))
        if len(buf) - p < length:
            return False
        body = bytes(buf[p + 4:p + length])
        self._pos = p + length
        try:
            pkt = _decode_startup_packet(body)
        except ProtocolError as e:
            raise self._fail(e) from None
        out.append(pkt)
        if isinstance(pkt, StartupMessage):
            self.in_startup = False
        elif isinstance(pkt, CancelRequest):
            self.closed = True
            self._discard()
        return True


# --------------------------------------------------------------------------
# Streaming-replication sub-messages (inside CopyData)

class ReplicationMessage:
    __slots__ = ()

    def frame(self) -> bytes:
        """The complete CopyData message carrying this payload."""
        return frame(b"d", self.encode())  # type: ignore[attr-defined]


_XLOG = struct.Struct("!QQq")
_KEEPALIVE = struct.Struct("!QqB")
_STATUS = struct.Struct("!QQQqB")
_FEEDBACK = struct.Struct("!qIIII")


@dataclass(frozen=True, slots=True)
class XLogData(ReplicationMessage):
    wal_start: int
    wal_end: int
    send_time: int
    """µs since 2000-01-01Z."""
    data: bytes

    def encode(self) -> bytes:
        return b"w" + _XLOG.pack(self.wal_start, self.wal_end, self.send_time) + self.data


@dataclass(frozen=True, slots=True)
class PrimaryKeepalive(ReplicationMessage):
    wal_end: int
    send_time: int
    reply_requested: bool = False

    def encode(self) -> bytes:
        return b"k" + _KEEPALIVE.pack(self.wal_end, self.send_time, 1 if self.reply_requested else 0)


@dataclass(frozen=True, slots=True)
class StandbyStatusUpdate(ReplicationMessage):
    written: int
    flushed: int
    applied: int
    send_time: int
    reply_requested: bool = False

    def encode(self) -> bytes:
        return b"r" + _STATUS.pack(self.written, self.flushed, self.applied, self.send_time,
                                   1 if self.reply_requested else 0)


@dataclass(frozen=True, slots=True)
class HotStandbyFeedback(ReplicationMessage):
    send_time: int
    xmin: int
    xmin_epoch: int
    catalog_xmin: int
    catalog_xmin_epoch: int

    def encode(self) -> bytes:
        return b"h" + _FEEDBACK.pack(self.send_time, self.xmin, self.xmin_epoch,
                                     self.catalog_xmin, self.catalog_xmin_epoch)


def decode_replication(payload: bytes) -> ReplicationMessage:
    """Decode a CopyData payload of a replication stream (w, k, r, h)."""
    if not payload:
        raise ProtocolError("empty CopyData payload in replication stream")
    kind = payload[:1]
    n = len(payload) - 1
    if kind == b"w":
        if n < _XLOG.size:
            raise ProtocolError(f"malformed XLogData: {n} bytes, header needs {_XLOG.size}")
        start, end, t = _XLOG.unpack_from(payload, 1)
        return XLogData(start, end, t, bytes(payload[1 + _XLOG.size:]))
    if kind == b"k":
        if n != _KEEPALIVE.size:
            raise ProtocolError(f"malformed PrimaryKeepalive: {n} bytes, expected {_KEEPALIVE.size}")
        end, t, reply = _KEEPALIVE.unpack_from(payload, 1)
        return PrimaryKeepalive(end, t, bool(reply))
    if kind == b"r":
        if n != _STATUS.size:
            raise ProtocolError(f"malformed StandbyStatusUpdate: {n} bytes, expected {_STATUS.size}")
        w, f, a, t, reply = _STATUS.unpack_from(payload, 1)
        return StandbyStatusUpdate(w, f, a, t, bool(reply))
    if kind == b"h":
        if n != _FEEDBACK.size:
            raise ProtocolError(f"malformed HotStandbyFeedback: {n} bytes, expected {_FEEDBACK.size}")
        return HotStandbyFeedback(*_FEEDBACK.unpack_from(payload, 1))
    raise ProtocolError(f"unknown replication message type {bytes(kind)!r} in CopyData")


# --------------------------------------------------------------------------
# COPY text format

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
