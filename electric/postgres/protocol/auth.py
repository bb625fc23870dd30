"""
Postgres password authentication, both roles, sans-IO.

Electric is a client of every Postgres it reads (a stock PG 15 asks for
SCRAM-SHA-256 by default, older set-ups for md5 or cleartext) and the server
on port 5433 that those databases' subscriptions log in to with the
credentials Electric wrote into them.  `ClientAuth` answers a server's
Authentication requests; `ServerAuth` runs the exchange for one incoming
connection.  Both only turn messages into messages.

SCRAM-SHA-256 follows RFC 5802 / RFC 7677 the way Postgres uses it: no
channel binding over plain TCP (gs2 header ``n,,``), an empty ``n=`` user
name (the user comes from the startup packet), PBKDF2-HMAC-SHA256 with 4096
iterations, and the password passed through SASLprep when it is valid for it
(used raw otherwise, as Postgres does).

SASLprep is scramp's.  Its exchange classes cannot speak Postgres' dialect
(scramp 1.5): its server refuses the empty user name ``n=`` that libpq always
sends ("Attribute values must at least one character long"), so it cannot
log in a single Postgres subscriber; its client refuses to send ``n=``, and
refuses salts under 12 bytes and fewer than 4096 iterations, which a
Postgres 16+ server with a lowered ``scram_iterations`` uses.  The exchange
below is therefore Postgres' own: message parsing with Postgres' error texts
and SQLSTATEs, around the RFC 5802 key derivation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from typing import List, Optional, Tuple

from scramp import ScramException
from scramp.utils import saslprep as _scramp_saslprep

from electric.postgres.protocol.cursor import ProtocolError
from electric.postgres.protocol.messages import (
    AuthenticationCleartextPassword,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    AuthenticationUnsupported,
    ErrorResponse,
    Message,
    PasswordMessage,
    SASLInitialResponse,
    SASLResponse,
)

__all__ = [
    "AuthenticationError", "ClientAuth", "ServerAuth", "md5_password_hash", "md5_response",
    "scram_secret", "saslprep", "SCRAM_SHA_256", "METHODS",
]

SCRAM_SHA_256 = "SCRAM-SHA-256"
DEFAULT_ITERATIONS = 4096
METHODS = ("trust", "password", "md5", "scram-sha-256")

_SCRAM_SECRET_RE = re.compile(r"\ASCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)\Z")
_MD5_SECRET_RE = re.compile(r"\Amd5[0-9a-f]{32}\Z")


class AuthenticationError(Exception):
    """
    Client side: the server refused us, or misbehaved.  `error` holds the
    server's ErrorResponse when there was one (its sqlstate is then 28P01
    for a wrong password).
    """

    def __init__(self, message: str, error: Optional[ErrorResponse] = None):
        super().__init__(message)
        self.error = error

    @property
    def sqlstate(self) -> Optional[str]:
        return self.error.sqlstate if self.error is not None else None


# --------------------------------------------------------------------------
# Primitives

def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: str, what: str) -> bytes:
    try:
        return base64.b64decode(s.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ProtocolError(f"malformed SCRAM message: invalid base64 in {what}") from None


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def saslprep(password: str) -> bytes:
    """
    The password bytes SCRAM salts, as Postgres computes them: the RFC 4013
    SASLprep profile (scramp's implementation, stringprep tables of Unicode
    3.2), except that a password SASLprep rejects or maps to nothing is used
    as raw UTF-8 instead of failing (libpq and the server both fall back so),
    so any password a stock Postgres accepts works here too.
    """
    try:
        prepared = _scramp_saslprep(password)
    except ScramException:
        prepared = ""
    return (prepared or password).encode("utf-8")


def _salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", saslprep(password), salt, iterations)


def _scram_keys(salted: bytes) -> Tuple[bytes, bytes]:
    """(StoredKey, ServerKey) from a SaltedPassword."""
    client_key = _hmac(salted, b"Client Key")
    return hashlib.sha256(client_key).digest(), _hmac(salted, b"Server Key")


def scram_secret(password: str, salt: Optional[bytes] = None,
                 iterations: int = DEFAULT_ITERATIONS) -> str:
    """The verifier Postgres stores in pg_authid (``SCRAM-SHA-256$i:salt$stored:server``)."""
    salt = os.urandom(16) if salt is None else salt
    stored, server = _scram_keys(_salted_password(password, salt, iterations))
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored)}:{_b64(server)}"


def md5_password_hash(user: str, password: str) -> str:
    """The md5 secret Postgres stores: ``md5`` + md5(password ‖ user)."""
    return "md5" + hashlib.md5((password + user).encode("utf-8")).hexdigest()


def md5_response(user: str, password: str, salt: bytes) -> str:
    """What a client sends for AuthenticationMD5Password: ``md5`` + md5(md5(password ‖ user) ‖ salt)."""
    return _md5_from_secret(md5_password_hash(user, password), salt)


def _md5_from_secret(secret: str, salt: bytes) -> str:
    return "md5" + hashlib.md5(secret[3:].encode("ascii") + salt).hexdigest()


def _nonce() -> str:
    return _b64(os.urandom(18))


def _parse_attrs(text: str, what: str) -> List[Tuple[str, str]]:
    out = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or not part[0].isalpha():
            raise ProtocolError(f"malformed SCRAM message: bad attribute {part[:20]!r} in {what}")
        out.append((part[0], part[2:]))
    return out


def _printable_nonce(n: str) -> bool:
    return bool(n) and all(0x21 <= ord(c) <= 0x7E and c != "," for c in n)


# --------------------------------------------------------------------------
# Client

class ClientAuth:
    """
    Answers a server's Authentication messages for one connection.

    Feed every Authentication (and an ErrorResponse, if one arrives during
    authentication) to `receive`; send back what it returns.  `done` turns
    true on AuthenticationOk.  Everything that must stop the login raises
    `AuthenticationError` with the reason: no password, an unsupported
    method, a server whose SCRAM signature does not prove it knows the
    password, or the server's own error.
    """

    def __init__(self, user: str, password: Optional[str], *, client_nonce: Optional[str] = None,
                 scram_user: str = ""):
        self.user = user
        # Postgres ignores the SCRAM user name (the startup packet's counts), and
        # libpq sends it empty; other servers may want it.
        self.scram_user = scram_user.replace("=", "=3D").replace(",", "=2C")
        self.password = password
        self.done = False
        self.method: Optional[str] = None
        self._nonce = client_nonce or _nonce()
        self._scram_state: Optional[str] = None
        self._client_first_bare = ""
        self._server_signature = b""

    def _need_password(self) -> str:
        if self.password is None:
            raise AuthenticationError(f"server requested {self.method} authentication for user "
                                      f"{self.user!r} but no password was supplied")
        return self.password

    def receive(self, msg: Message) -> List[Message]:
        if isinstance(msg, ErrorResponse):
            raise AuthenticationError(f"authentication failed: {msg.message} (SQLSTATE {msg.sqlstate})", msg)
        if self.done:
            raise AuthenticationError(f"unexpected {type(msg).__name__} after authentication completed")
        if isinstance(msg, AuthenticationOk):
            if self._scram_state is not None and self._scram_state != "verified":
                raise AuthenticationError(
                    "server sent AuthenticationOk before completing the SCRAM exchange; refusing to "
                    "trust it")
            self.done = True
            return []
        if isinstance(msg, AuthenticationCleartextPassword):
            self.method = "password"
            return [PasswordMessage.password(self._need_password())]
        if isinstance(msg, AuthenticationMD5Password):
            self.method = "md5"
            return [PasswordMessage.password(md5_response(self.user, self._need_password(), msg.salt))]
        if isinstance(msg, AuthenticationSASL):
            return [self._scram_start(msg)]
        if isinstance(msg, AuthenticationSASLContinue):
            return [self._scram_continue(msg.data)]
        if isinstance(msg, AuthenticationSASLFinal):
            self._scram_final(msg.data)
            return []
        if isinstance(msg, AuthenticationUnsupported):
            raise AuthenticationError(
                f"server requested unsupported authentication method {msg.method_name} "
                "(Electric supports trust, password, md5 and SCRAM-SHA-256)")
        raise AuthenticationError(f"unexpected {type(msg).__name__} during authentication")

    def _scram_start(self, msg: AuthenticationSASL) -> SASLInitialResponse:
        self.method = "scram-sha-256"
        if SCRAM_SHA_256 not in msg.mechanisms:
            raise AuthenticationError(
                f"server offers no supported SASL mechanism ({', '.join(msg.mechanisms) or 'none'}); "
                "Electric supports SCRAM-SHA-256 without channel binding")
        if self._scram_state is not None:
            raise AuthenticationError("server restarted the SASL exchange")
        self._need_password()
        self._client_first_bare = f"n={self.scram_user},r={self._nonce}"
        self._scram_state = "first-sent"
        return SASLInitialResponse(SCRAM_SHA_256, ("n,," + self._client_first_bare).encode("ascii"))

    def _scram_continue(self, data: bytes) -> SASLResponse:
        if self._scram_state != "first-sent":
            raise AuthenticationError("unexpected SASL continue message")
        try:
            server_first = data.decode("ascii")
            attrs = _parse_attrs(server_first, "server-first-message")
        except (UnicodeDecodeError, ProtocolError) as e:
            raise AuthenticationError(f"malformed SCRAM server-first-message: {e}") from None
        if [k for k, _ in attrs[:3]] != ["r", "s", "i"]:
            raise AuthenticationError(f"malformed SCRAM server-first-message {server_first!r}")
        nonce, salt_b64, iters = (v for _, v in attrs[:3])
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise AuthenticationError("SCRAM server nonce does not extend the client nonce")
        try:
            salt = base64.b64decode(salt_b64, validate=True)
            iterations = int(iters)
        except ValueError:
            raise AuthenticationError(f"malformed SCRAM server-first-message {server_first!r}") from None
        if iterations < 1 or not salt:
            raise AuthenticationError(f"invalid SCRAM salt or iteration count in {server_first!r}")
        salted = _salted_password(self._need_password(), salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self._client_first_bare},{server_first},{without_proof}".encode("ascii")
        proof = _xor(client_key, _hmac(stored_key, auth_message))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        self._scram_state = "final-sent"
        return SASLResponse(f"{without_proof},p={_b64(proof)}".encode("ascii"))

    def _scram_final(self, data: bytes) -> None:
        if self._scram_state != "final-sent":
            raise AuthenticationError("unexpected SASL final message")
        text = data.decode("ascii", "replace")
        if text.startswith("e="):
            raise AuthenticationError(f"SCRAM authentication failed on the server: {text[2:]}")
        if not text.startswith("v="):
            raise AuthenticationError(f"malformed SCRAM server-final-message {text!r}")
        try:
            sig = base64.b64decode(text[2:].split(",")[0], validate=True)
        except ValueError:
            raise AuthenticationError(f"malformed SCRAM server-final-message {text!r}") from None
        if not hmac.compare_digest(sig, self._server_signature):
            raise AuthenticationError(
                "SCRAM server signature is wrong: the server does not know the password "
                "(possible impostor); refusing to continue")
        self._scram_state = "verified"


# --------------------------------------------------------------------------
# Server

_FAKE_SALT_KEY = os.urandom(32)


class ServerAuth:
    """
    Runs password authentication for one incoming connection.

    `password` is what the user must know: a plaintext password, a stored
    SCRAM verifier (``SCRAM-SHA-256$...``) or an md5 secret (``md5...``), or
    None for an unknown user.  An unknown user still gets a complete-looking
    exchange (a salt derived from the name, as Postgres does) and then fails,
    so port 5433 does not reveal which users exist.

    `start()` gives the first request to send; `receive(PasswordMessage)`
    gives the replies.  When `done` is true the caller sends AuthenticationOk
    (and the rest of the session start-up); when `failed` is true it sends
    `error_response()` (FATAL 28P01) and closes.  Malformed SCRAM messages
    raise ProtocolError (08P01), like Postgres.
    """

    def __init__(self, user: str, password: Optional[str], method: str = "scram-sha-256", *,
                 iterations: int = DEFAULT_ITERATIONS, salt: Optional[bytes] = None,
                 server_nonce: Optional[str] = None):
        if method not in METHODS:
            raise ValueError(f"unknown authentication method {method!r}; expected one of {METHODS}")
        self.user = user
        self.password = password
        self.iterations = iterations
        self.done = False
        self.failed = False
        self.failure_reason: Optional[str] = None
        self._salt = salt
        self._server_nonce = server_nonce or _nonce()
        self._md5_salt = b""
        self._state = "new"
        self._stored_key = self._server_key = b""
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        # Postgres runs SCRAM for an "md5" line when the stored secret is SCRAM.
        if method == "md5" and password is not None and _SCRAM_SECRET_RE.match(password):
            method = "scram-sha-256"
        self.method = method

    # -- public ---------------------------------------------------------------

    def start(self) -> List[Message]:
        if self._state != "new":
            raise ProtocolError("authentication already started")
        if self.method == "trust":
            self._state = "finished"
            self.done = True
            return []
        if self.method == "password":
            self._state = "password"
            return [AuthenticationCleartextPassword()]
        if self.method == "md5":
            self._state = "md5"
            self._md5_salt = os.urandom(4)
            return [AuthenticationMD5Password(self._md5_salt)]
        self._state = "sasl-initial"
        return [AuthenticationSASL((SCRAM_SHA_256,))]

    def receive(self, msg: PasswordMessage) -> List[Message]:
        if not isinstance(msg, PasswordMessage):
            raise ProtocolError(f"expected a password message, got {type(msg).__name__}")
        state = self._state
        if state == "password":
            return self._check_cleartext(msg.as_password())
        if state == "md5":
            return self._check_md5(msg.as_password())
        if state == "sasl-initial":
            return self._sasl_initial(msg.as_sasl_initial())
        if state == "sasl-final":
            return self._sasl_final(msg.data)
        raise ProtocolError(f"unexpected password message (authentication is {state})")

    def error_response(self) -> ErrorResponse:
        return ErrorResponse.build("FATAL", "28P01",
                                   f'password authentication failed for user "{self.user}"')

    # -- internals ------------------------------------------------------------

    def _fail(self, reason: str) -> List[Message]:
        self._state = "finished"
        self.failed = True
        self.failure_reason = reason
        return []

    def _ok(self, replies: List[Message]) -> List[Message]:
        self._state = "finished"
        self.done = True
        return replies

    def _check_cleartext(self, given: str) -> List[Message]:
        pw = self.password
        if pw is None:
            return self._fail(f'user "{self.user}" has no password')
        if _SCRAM_SECRET_RE.match(pw):
            iters, salt, stored, server = self._parse_scram_secret(pw)
            matches = hmac.compare_digest(_scram_keys(_salted_password(given, salt, iters))[0], stored)
        elif _MD5_SECRET_RE.match(pw):
            matches = hmac.compare_digest(md5_password_hash(self.user, given), pw)
        else:
            matches = hmac.compare_digest(given.encode("utf-8"), pw.encode("utf-8"))
        return self._ok([]) if matches else self._fail("password does not match")

    def _check_md5(self, given: str) -> List[Message]:
        pw = self.password
        if pw is None:
            return self._fail(f'user "{self.user}" has no password')
        secret = pw if _MD5_SECRET_RE.match(pw) else md5_password_hash(self.user, pw)
        expected = _md5_from_secret(secret, self._md5_salt)
        if hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("ascii")):
            return self._ok([])
        return self._fail("md5 password does not match")

    @staticmethod
    def _parse_scram_secret(secret: str) -> Tuple[int, bytes, bytes, bytes]:
        m = _SCRAM_SECRET_RE.match(secret)
        if m is None:
            raise ValueError("not a SCRAM-SHA-256 secret")
        return (int(m.group(1)), base64.b64decode(m.group(2)), base64.b64decode(m.group(3)),
                base64.b64decode(m.group(4)))

    def _scram_material(self) -> Tuple[int, bytes]:
        """(iterations, salt) and, as a side effect, the keys to check against."""
        pw = self.password
        if pw is not None and _SCRAM_SECRET_RE.match(pw):
            iters, salt, self._stored_key, self._server_key = self._parse_scram_secret(pw)
            return iters, salt
        if pw is None or _MD5_SECRET_RE.match(pw):
            # Unknown user, or a secret SCRAM cannot use: look normal, then fail.
            salt = _hmac(_FAKE_SALT_KEY, self.user.encode("utf-8"))[:16]
            return self.iterations, salt
        salt = self._salt if self._salt is not None else os.urandom(16)
        self._stored_key, self._server_key = _scram_keys(_salted_password(pw, salt, self.iterations))
        return self.iterations, salt

    def _sasl_initial(self, init: SASLInitialResponse) -> List[Message]:
        if init.mechanism != SCRAM_SHA_256:
            raise ProtocolError(f"client selected an invalid SASL authentication mechanism "
                                f"{init.mechanism!r}")
        if init.data is None:
            raise ProtocolError("malformed SCRAM message: empty client-first-message")
        try:
            text = init.data.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("malformed SCRAM message: client-first-message is not UTF-8") from None
        # gs2-header: cbind-flag "," [authzid] ","
        parts = text.split(",", 2)
        if len(parts) != 3:
            raise ProtocolError(f"malformed SCRAM message: bad client-first-message {text[:60]!r}")
        cbind, authzid, bare = parts
        if cbind.startswith("p="):
            raise ProtocolError("channel binding is not supported (the server did not offer "
                                "SCRAM-SHA-256-PLUS)")
        if cbind not in ("n", "y"):
            raise ProtocolError(f"malformed SCRAM message: unexpected channel-binding flag {cbind!r}")
        if authzid:
            raise ProtocolError("client uses authorization identity, but it is not supported")
        attrs = _parse_attrs(bare, "client-first-message")
        if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r":
            if attrs and attrs[0][0] == "m":
                raise ProtocolError("client requires an unsupported SCRAM extension")
            raise ProtocolError(f"malformed SCRAM message: bad client-first-message {bare[:60]!r}")
        client_nonce = attrs[1][1]
        if not _printable_nonce(client_nonce):
            raise ProtocolError("malformed SCRAM message: client nonce is not printable")
        self._gs2_header = f"{cbind},{authzid},"
        self._client_first_bare = bare
        self._nonce = client_nonce + self._server_nonce
        iterations, salt = self._scram_material()
        self._server_first = f"r={self._nonce},s={_b64(salt)},i={iterations}"
        self._state = "sasl-final"
        return [AuthenticationSASLContinue(self._server_first.encode("ascii"))]

    def _sasl_final(self, data: bytes) -> List[Message]:
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError("malformed SCRAM message: client-final-message is not ASCII") from None
        attrs = _parse_attrs(text, "client-final-message")
        if len(attrs) < 3 or attrs[0][0] != "c" or attrs[1][0] != "r" or attrs[-1][0] != "p":
            raise ProtocolError(f"malformed SCRAM message: bad client-final-message {text[:80]!r}")
        if _unb64(attrs[0][1], "channel binding") != self._gs2_header.encode("utf-8"):
            raise ProtocolError("SCRAM channel binding check failed")
        if attrs[1][1] != self._nonce:
            raise ProtocolError("malformed SCRAM message: nonce does not match")
        proof = _unb64(attrs[-1][1], "proof")
        if len(proof) != 32:
            raise ProtocolError("malformed SCRAM message: proof has the wrong length")
        without_proof = text[:text.rindex(",p=")]
        if not self._stored_key:
            return self._fail(
                f'user "{self.user}" has no password' if self.password is None
                else f'user "{self.user}" has an md5 secret, which SCRAM cannot use')
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode("utf-8")
        client_key = _xor(proof, _hmac(self._stored_key, auth_message))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self._stored_key):
            return self._fail("SCRAM proof does not match (wrong password)")
        server_sig = _hmac(self._server_key, auth_message)
        return self._ok([AuthenticationSASLFinal(f"v={_b64(server_sig)}".encode("ascii"))])
