"""
The Postgres frontend/backend protocol v3: every message, both directions.

Electric is a Postgres *client* (it reads every database over logical
replication) and a Postgres *server* (the port-5433 publisher that each
database subscribes to).  Both sides share the message classes here; the
parsers (`electric.postgres.protocol.parsers`) frame a byte stream into them.

Every message class has ``encode() -> bytes`` (the complete framed message)
and decodes its body with a `Cursor`, so a malformed body is always a
`ProtocolError`.  The untagged startup packets (SSLRequest, StartupMessage,
...) live here too; the streaming-replication sub-messages carried inside
CopyData are in `electric.postgres.protocol.replication_messages`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Tuple, Union

from electric.postgres.protocol.cursor import I16, I32, U32, Cursor, ProtocolError
from electric.postgres.protocol.replication_messages import ReplicationMessage, decode_replication
from electric.postgres.protocol.types import typlen_of

PROTOCOL_3_0 = 196608
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

# --------------------------------------------------------------------------
# Writing primitives

def cstr(s: Union[str, bytes]) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    if b"\0" in b:
        raise ValueError(f"string {s!r} contains a NUL byte and cannot be sent")
    return b + b"\0"


def frame(tag: bytes, body: bytes = b"") -> bytes:
    """Tag + Int32 length (counting itself) + body."""
    return tag + I32.pack(len(body) + 4) + body


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
    def _decode(cls, r: Cursor) -> "Message":
        return cls()

    @classmethod
    def decode_body(cls, body: bytes) -> "Message":
        r = Cursor(body, cls.__name__)
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
        return I32.pack(len(body) + 4) + body


@dataclass(frozen=True, slots=True)
class SSLRequest(StartupPacket):
    def _body(self) -> bytes:
        return I32.pack(SSL_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class GSSENCRequest(StartupPacket):
    def _body(self) -> bytes:
        return I32.pack(GSSENC_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class CancelRequest(StartupPacket):
    pid: int
    key: int

    def _body(self) -> bytes:
        return I32.pack(CANCEL_REQUEST_CODE) + I32.pack(self.pid) + I32.pack(self.key)


@dataclass(frozen=True, slots=True)
class StartupMessage(StartupPacket):
    parameters: Mapping[str, str]
    version: int = PROTOCOL_3_0

    def _body(self) -> bytes:
        parts = [I32.pack(self.version)]
        for k, v in self.parameters.items():
            parts.append(cstr(k))
            parts.append(cstr(v))
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
        r = Cursor(body, "Authentication")
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
        return I32.pack(AUTH_OK)


@dataclass(frozen=True, slots=True)
class AuthenticationCleartextPassword(Authentication):
    CODE = AUTH_CLEARTEXT

    def _body(self) -> bytes:
        return I32.pack(AUTH_CLEARTEXT)


@dataclass(frozen=True, slots=True)
class AuthenticationMD5Password(Authentication):
    salt: bytes
    CODE = AUTH_MD5

    def __post_init__(self):
        if len(self.salt) != 4:
            raise ValueError("md5 salt must be 4 bytes")

    def _body(self) -> bytes:
        return I32.pack(AUTH_MD5) + self.salt

    @classmethod
    def _decode(cls, r: Cursor):
        return cls(r.bytes(4))


@dataclass(frozen=True, slots=True)
class AuthenticationSASL(Authentication):
    mechanisms: Tuple[str, ...]
    CODE = AUTH_SASL

    def _body(self) -> bytes:
        return I32.pack(AUTH_SASL) + b"".join(cstr(m) for m in self.mechanisms) + b"\0"

    @classmethod
    def _decode(cls, r: Cursor):
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
        return I32.pack(AUTH_SASL_CONTINUE) + self.data

    @classmethod
    def _decode(cls, r: Cursor):
        return cls(r.rest())


@dataclass(frozen=True, slots=True)
class AuthenticationSASLFinal(Authentication):
    data: bytes
    CODE = AUTH_SASL_FINAL

    def _body(self) -> bytes:
        return I32.pack(AUTH_SASL_FINAL) + self.data

    @classmethod
    def _decode(cls, r: Cursor):
        return cls(r.rest())


@dataclass(frozen=True, slots=True)
class AuthenticationUnsupported(Authentication):
    """A method Electric does not implement (Kerberos, GSSAPI, SSPI, ...)."""
    code: int
    data: bytes = b""

    def _body(self) -> bytes:
        return I32.pack(self.code) + self.data

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
        return cls(cstr(password))

    def _body(self) -> bytes:
        return self.data

    @classmethod
    def _decode(cls, r: Cursor):
        return cls(r.rest())

    def as_password(self) -> str:
        r = Cursor(self.data, "PasswordMessage")
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
            return cstr(self.mechanism) + I32.pack(-1)
        return cstr(self.mechanism) + I32.pack(len(self.data)) + self.data

    @classmethod
    def _decode(cls, r: Cursor):
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
    def _decode(cls, r: Cursor):
        return cls(r.rest())


# --------------------------------------------------------------------------
# Session set-up and simple query (backend → frontend)

@dataclass(frozen=True, slots=True)
class ParameterStatus(Message):
    name: str
    value: str
    TAG = b"S"

    def _body(self) -> bytes:
        return cstr(self.name) + cstr(self.value)

    @classmethod
    def _decode(cls, r: Cursor):
        return cls(r.cstring(), r.cstring())


@dataclass(frozen=True, slots=True)
class BackendKeyData(Message):
    pid: int
    key: int
    TAG = b"K"

    def _body(self) -> bytes:
        return I32.pack(self.pid) + I32.pack(self.key)

    @classmethod
    def _decode(cls, r: Cursor):
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
    def _decode(cls, r: Cursor):
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
        parts = [I16.pack(len(self.fields))]
        for f in self.fields:
            parts.append(cstr(f.name))
            parts.append(struct.pack("!IhIhih", f.table_oid, f.attnum, f.type_oid,
                                     f.typlen, f.typmod, f.format))
        return b"".join(parts)

    @classmethod
    def _decode(cls, r: Cursor):
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
    return I32.pack(len(b)) + b


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
        return I16.pack(len(self.values)) + b"".join(_cell(v) for v in self.values)

    @classmethod
    def _decode(cls, r: Cursor):
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
        return cstr(self.tag)

    @classmethod
    def _decode(cls, r: Cursor):
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
            parts.append(code.encode("ascii") + cstr(value))
        parts.append(b"\0")
        return b"".join(parts)

    @classmethod
    def _decode(cls, r: Cursor):
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
        return I32.pack(self.pid) + cstr(self.channel) + cstr(self.payload)

    @classmethod
    def _decode(cls, r: Cursor):
        return cls(r.int32(), r.cstring(), r.cstring())


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion(Message):
    newest_minor: int
    unrecognized: Tuple[str, ...] = ()
    TAG = b"v"

    def _body(self) -> bytes:
        return (I32.pack(self.newest_minor) + I32.pack(len(self.unrecognized))
                + b"".join(cstr(o) for o in self.unrecognized))

    @classmethod
    def _decode(cls, r: Cursor):
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
                + b"".join(I16.pack(c) for c in cf))

    @classmethod
    def _decode(cls, r: Cursor):
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
    def _decode(cls, r: Cursor):
        return cls(r.rest())

    def replication_message(self) -> ReplicationMessage:
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
        return cstr(self.message)

    @classmethod
    def _decode(cls, r: Cursor):
        return cls(r.cstring())


# --------------------------------------------------------------------------
# Frontend-only messages

@dataclass(frozen=True, slots=True)
class Query(Message):
    sql: str
    TAG = b"Q"

    def _body(self) -> bytes:
        return cstr(self.sql)

    @classmethod
    def _decode(cls, r: Cursor):
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
        return (cstr(self.statement) + cstr(self.sql) + I16.pack(len(self.param_types))
                + b"".join(U32.pack(t) for t in self.param_types))

    @classmethod
    def _decode(cls, r: Cursor):
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
        parts = [cstr(self.portal), cstr(self.statement), I16.pack(len(self.param_formats))]
        parts += [I16.pack(f) for f in self.param_formats]
        parts.append(I16.pack(len(self.params)))
        parts += [_cell(p) for p in self.params]
        parts.append(I16.pack(len(self.result_formats)))
        parts += [I16.pack(f) for f in self.result_formats]
        return b"".join(parts)

    @classmethod
    def _decode(cls, r: Cursor):
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
        return cstr(self.portal) + I32.pack(self.max_rows)

    @classmethod
    def _decode(cls, r: Cursor):
        return cls(r.cstring(), r.int32())


class _DescribeOrClose(Message):
    __slots__ = ()

    def _body(self) -> bytes:
        return self.kind.encode("ascii") + cstr(self.name)  # type: ignore[attr-defined]

    @classmethod
    def _decode(cls, r: Cursor):
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
        return I16.pack(len(self.type_oids)) + b"".join(U32.pack(t) for t in self.type_oids)

    @classmethod
    def _decode(cls, r: Cursor):
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
