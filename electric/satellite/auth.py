"""
Who a Satellite client is: the user id behind the token of its SatAuthReq.

Two modes, chosen from the configuration at start-up:

- insecure (no SATELLITE_AUTH_SIGNING_KEY): the token *is* the user id, for
  development;
- JWT: a compact HS256 JWS signed with the configured key.  The algorithm is
  pinned (a token that names another one, ``none`` included, is refused before
  any signature check), ``exp`` is required and enforced with a small leeway
  for clock skew, ``iss`` must be the configured issuer, ``user_id`` must be a
  non-empty string and ``type``, when present, must be ``access`` (refresh
  tokens must not open a replication stream).

Every refusal is an `AuthError` whose message is safe to log: it never holds
the key, and holds the token only as far as the caller chooses to log it.
"""

from __future__ import annotations

import datetime as _dt
import secrets
import time
from typing import Optional, Tuple, Union

import jwt

from electric.config import MIN_SIGNING_KEY_BYTES, Config

ALGORITHM = "HS256"
LEEWAY_SECONDS = 5
DEFAULT_TOKEN_TTL = 15 * 60


class AuthError(Exception):
    """The token does not authenticate anybody (reason in the message)."""


class InsecureAuth:
    """Development mode: every non-empty token is accepted as the user id."""

    mode = "insecure"

    def authenticate(self, token: str) -> str:
        if not token:
            raise AuthError("empty token")
        return token

    def __repr__(self):
        return "InsecureAuth()"


class JWTAuth:
    mode = "jwt"

    def __init__(self, key: Union[str, bytes], issuer: Optional[str], leeway: float = LEEWAY_SECONDS):
        key_bytes = key.encode("utf-8") if isinstance(key, str) else bytes(key)
        if len(key_bytes) < MIN_SIGNING_KEY_BYTES:
            raise ValueError(
                f"the JWT signing key has {len(key_bytes)} bytes; at least {MIN_SIGNING_KEY_BYTES} are required"
            )
        self._key = key_bytes
        self.issuer = issuer
        self.leeway = leeway

    def __repr__(self):
        # Never show the key.
        return f"JWTAuth(issuer={self.issuer!r}, key=<{len(self._key)} bytes hidden>)"

    def authenticate(self, token: str) -> str:
        if not token:
            raise AuthError("empty token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise AuthError(f"malformed token: {e}") from None
        if header.get("alg") != ALGORITHM:
            raise AuthError(f"token algorithm {header.get('alg')!r} is not {ALGORITHM}")
        require = ["exp"] + (["iss"] if self.issuer is not None else [])
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": require, "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidIssuerError:
            raise AuthError("token issuer is not the configured issuer") from None
        except jwt.InvalidSignatureError:
            raise AuthError("token signature does not verify") from None
        except jwt.MissingRequiredClaimError as e:
            raise AuthError(f"token lacks the {e.claim!r} claim") from None
        except jwt.PyJWTError as e:
            raise AuthError(f"invalid token: {e}") from None
        if "type" in claims and claims["type"] != "access":
            raise AuthError(f"token type {claims['type']!r} is not 'access'")
        user_id = claims.get("user_id")
        if not isinstance(user_id, str) or not user_id:
            raise AuthError("token lacks a non-empty string 'user_id' claim")
        return user_id

    def generate(self, user_id: str, ttl: float = DEFAULT_TOKEN_TTL, now: Optional[float] = None) -> Tuple[str, _dt.datetime]:
        """A token for `user_id` and its expiry (UTC, whole seconds as JWT carries them)."""
        now = time.time() if now is None else now
        exp = int(now + ttl)
        claims = {
            "user_id": user_id,
            "type": "access",
            "nonce": secrets.token_hex(16),
            "exp": exp,
        }
        if self.issuer is not None:
            claims["iss"] = self.issuer
        token = jwt.encode(claims, self._key, algorithm=ALGORITHM)
        return token, _dt.datetime.fromtimestamp(exp, tz=_dt.timezone.utc)


def from_config(config: Config):
    """The authenticator the configuration selects."""
    if config.auth_signing_key is None:
        return InsecureAuth()
    return JWTAuth(config.auth_signing_key, config.auth_signing_iss)
