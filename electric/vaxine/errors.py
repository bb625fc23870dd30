"""
The exceptions of the Vaxine links, in one place so callers can catch by kind.

``VaxineError`` is the root.  The distinction that matters to a caller:

* `ProtocolError` -- the peer sent something this side cannot accept (bad
  framing, an unknown message code, undecodable protobuf or ETF, a term of an
  unexpected shape).  The link closes the connection; retrying on a fresh one
  is the only recovery.
* `RequestFailed` -- Vaxine understood the request and said no
  (``success = false`` or an ``ApbErrorResp``).  Carries the error code.
* `RequestTimeout` -- no reply in time; the connection is closed because a
  late reply could no longer be matched to its request.
* `Unavailable` -- there is no connection (connecting failed, timed out, or
  the connection was lost before the reply).

ETF decoding errors are `electric.vaxine.etf.ETFError` (a ``ValueError``);
the links wrap them into `ProtocolError`.
"""

from __future__ import annotations

from typing import Optional

# errorcode / errcode values of the Antidote PB API (spec 1.3).
ERROR_UNKNOWN = 0
ERROR_TIMEOUT = 1
ERROR_NO_PERMISSIONS = 2
ERROR_ABORTED = 3
ERROR_NAMES = {ERROR_UNKNOWN: "unknown", ERROR_TIMEOUT: "timeout",
               ERROR_NO_PERMISSIONS: "no_permissions", ERROR_ABORTED: "aborted"}


class VaxineError(Exception):
    """Anything that went wrong talking to Vaxine."""


class ProtocolError(VaxineError):
    """The peer sent bytes or terms that break the protocol; the connection is dropped."""


class FrameError(ProtocolError):
    """A length-prefixed frame that cannot be accepted (e.g. longer than the limit)."""


class RequestFailed(VaxineError):
    """Vaxine refused a request: a reply with success = false, or an ApbErrorResp."""

    def __init__(self, request: str, errorcode: Optional[int], errmsg: Optional[bytes] = None):
        self.request = request
        self.errorcode = errorcode
        self.errmsg = errmsg
        if errorcode is None:
            code = "no error code"
        else:
            code = f"error code {errorcode} ({ERROR_NAMES.get(errorcode, 'unrecognised')})"
        text = f"Vaxine refused {request}: {code}"
        if errmsg:
            text += f": {errmsg.decode('utf-8', 'replace')}"
        super().__init__(text)


class RequestTimeout(VaxineError):
    """No reply within the request timeout."""


class Unavailable(VaxineError):
    """No connection to Vaxine (connect failed or timed out, or the connection was lost)."""
