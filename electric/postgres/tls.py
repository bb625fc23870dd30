"""
TLS to Postgres with libpq's rules (sslmode, sslrootcert, sslcert, sslkey,
sslcrl, sslpassword), for the connections Electric opens without libpq.

Electric reaches each database two ways: ordinary SQL sessions through libpq
(psycopg2/txpostgres: set-up, catalog, migrations) and the logical
replication stream through its own wire codec.  An operator writes one set of
``ssl*`` parameters in the connector URL and expects both to behave as libpq
documents, so this module copies libpq's decisions rather than inventing
its own:

* which modes try TLS first, which fall back, which refuse a server that
  answers 'N' (`TLSSettings.attempts`);
* PGSSLMODE, PGSSLROOTCERT, PGSSLCERT, PGSSLKEY and PGSSLCRL stand in for
  parameters the URL leaves out;
* the default files under ``~/.postgresql/`` (root.crt, root.crl,
  postgresql.crt, postgresql.key), read at every connection attempt like
  libpq, so a renewed certificate is picked up without a restart;
* a root certificate file that exists makes ``prefer`` and ``require``
  check the chain too (libpq: "require with a root CA file behaves like
  verify-ca"); ``verify-ca``/``verify-full`` without one is an error;
* ``sslrootcert=system`` uses OpenSSL's default trust store and insists on
  ``verify-full``;
* a private key readable by group or others is refused, and an encrypted
  one needs ``sslpassword`` (never a terminal prompt: Electric is a daemon);
* ``verify-full`` checks the server's host name (subjectAltName DNS names
  and IP addresses) with service_identity.

`TLSSettings` is plain data (parsed from the URL, validated by the
configuration); `ClientTLS` builds one OpenSSL context per attempt and is
what Twisted's ``startTLS`` takes.  It is not ``optionsForClientTLS``
because that always checks the host name (verify-ca must not), loads no CRL
and no certificate chain file, and sends SNI only when it checks the name;
libpq sends SNI for every host name.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import stat
from dataclasses import dataclass, field
from typing import List, Mapping, Optional, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
"""libpq's sslmode values, weakest first."""

DEFAULT_MODE = "prefer"
SYSTEM = "system"

PARAMETERS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "sslpassword")
"""The connector URL parameters this module reads (all of them reach libpq too)."""

ROOT_CERT_FILE = "root.crt"
ROOT_CRL_FILE = "root.crl"
USER_CERT_FILE = "postgresql.crt"
USER_KEY_FILE = "postgresql.key"


class TLSError(Exception):
    """A local TLS problem (a file missing or unreadable, a bad key), before any handshake."""


ENVIRONMENT = {
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcrl": "PGSSLCRL",
}
"""libpq's environment variables for a parameter the URL leaves out (libpq has none for sslpassword)."""


@dataclass(frozen=True)
class TLSSettings:
    """
    One connector's TLS parameters as given (URL, else libpq's environment
    variable); None means libpq's default: ``prefer`` (``verify-full`` with
    ``sslrootcert=system``), and files under ``~/.postgresql/`` used only if
    they exist.
    """

    sslmode: Optional[str] = None
    rootcert: Optional[str] = None
    cert: Optional[str] = None
    key: Optional[str] = None
    crl: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)

    @classmethod
    def from_params(cls, params: Mapping[str, str], environ: Optional[Mapping[str, str]] = None) -> "TLSSettings":
        """
        The URL's ``ssl*`` parameters, falling back to PGSSLMODE & co. in
        `environ` as libpq does (so the SQL sessions, where libpq reads them
        itself, and the replication stream agree); raises ValueError naming
        the problem.
        """
        env = environ or {}

        def get(key: str) -> Optional[str]:
            value = params.get(key)
            if not value and key in ENVIRONMENT:
                value = env.get(ENVIRONMENT[key])
            return value or None

        settings = cls(sslmode=get("sslmode"), rootcert=get("sslrootcert"), cert=get("sslcert"),
                       key=get("sslkey"), crl=get("sslcrl"), password=get("sslpassword"))
        if settings.sslmode is not None and settings.sslmode not in MODES:
            raise ValueError(f"sslmode={settings.sslmode!r} is not one of {', '.join(MODES)}")
        if settings.rootcert == SYSTEM and settings.mode != "verify-full":
            raise ValueError(f"sslmode={settings.mode!r} may not be used with sslrootcert=system (use verify-full)")
        return settings

    @property
    def mode(self) -> str:
        """The sslmode in force."""
        if self.sslmode:
            return self.sslmode
        return "verify-full" if self.rootcert == SYSTEM else DEFAULT_MODE

    @property
    def attempts(self) -> Tuple[bool, ...]:
        """
        Whether each connection attempt asks for TLS, in order: libpq's
        ``allow`` tries plain first and TLS if that fails, ``prefer`` the
        other way round; the rest make one attempt.
        """
        if self.mode == "disable":
            return (False,)
        if self.mode == "allow":
            return (False, True)
        if self.mode == "prefer":
            return (True, False)
        return (True,)

    @property
    def required(self) -> bool:
        """A server answering 'N' to the SSLRequest is refused."""
        return self.mode in ("require", "verify-ca", "verify-full")

    def files(self, home: Optional[str] = None) -> "TLSFiles":
        """The files to use, libpq's defaults filled in from `home` (default: the user's)."""
        if home is None:
            home = _home()
        base = os.path.join(home, ".postgresql") if home else None

        def pick(given: Optional[str], default: str) -> Optional[str]:
            if given:
                return given
            return os.path.join(base, default) if base else None

        return TLSFiles(
            rootcert=pick(self.rootcert, ROOT_CERT_FILE),
            crl=pick(self.crl, ROOT_CRL_FILE),
            cert=pick(self.cert, USER_CERT_FILE),
            key=pick(self.key, USER_KEY_FILE),
        )

    def libpq_params(self) -> List[Tuple[str, str]]:
        """The settings given, as libpq DSN keywords (libpq applies the same defaults itself)."""
        pairs = (("sslmode", self.sslmode), ("sslrootcert", self.rootcert), ("sslcert", self.cert),
                 ("sslkey", self.key), ("sslcrl", self.crl), ("sslpassword", self.password))
        return [(k, v) for k, v in pairs if v]


@dataclass(frozen=True)
class TLSFiles:
    rootcert: Optional[str]
    crl: Optional[str]
    cert: Optional[str]
    key: Optional[str]


def _home() -> Optional[str]:
    home = os.path.expanduser("~")
    return None if home.startswith("~") else home


def _exists(path: Optional[str]) -> bool:
    if not path:
        return False
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _openssl_reason(e: Exception) -> str:
    """The reason strings of an OpenSSL error queue, or the exception's text."""
    args = getattr(e, "args", ())
    if args and isinstance(args[0], list):
        reasons = [str(entry[-1]) for entry in args[0] if isinstance(entry, tuple) and entry]
        if reasons:
            return "; ".join(dict.fromkeys(reasons))
    return str(e) or type(e).__name__


# The verification errors one meets in practice, worded as OpenSSL does
# (pyOpenSSL gives only the number to a verify callback).
_X509_ERRORS = {
    2: "unable to get issuer certificate",
    3: "unable to get certificate CRL",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    11: "CRL is not yet valid",
    12: "CRL has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    23: "certificate revoked",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose",
}


def _load_private_key(path: str, password: Optional[str]):
    """The key in `path` (PEM or DER), after libpq's ownership and permission checks."""
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise TLSError(f'certificate present, but not private key file "{path}"') from None
        raise TLSError(f'could not stat private key file "{path}": {e.strerror}') from None
    if not stat.S_ISREG(st.st_mode):
        raise TLSError(f'private key file "{path}" is not a regular file')
    if (st.st_uid == os.geteuid() and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO)) or (
            st.st_uid == 0 and st.st_mode & (stat.S_IWGRP | stat.S_IXGRP | stat.S_IRWXO)):
        raise TLSError(
            f'private key file "{path}" has group or world access; file must have permissions '
            "u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) "
            "or less if owned by root")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TLSError(f'could not read private key file "{path}": {e.strerror}') from None
    secret = password.encode("utf-8") if password else None
    loaders = (serialization.load_pem_private_key, serialization.load_der_private_key)
    problem = "not a PEM or DER private key"
    for load in loaders:
        try:
            return load(data, password=secret)
        except TypeError:
            # cryptography's way of saying "encrypted but no password" (or the reverse)
            if secret is None:
                raise TLSError(f'private key file "{path}" is encrypted: give its passphrase '
                               "as sslpassword") from None
            problem = "the key is not encrypted but sslpassword is set"
        except ValueError as e:
            text = str(e)
            if "password" in text.lower() or "decrypt" in text.lower():
                raise TLSError(f'could not decrypt private key file "{path}": wrong sslpassword') from None
            if load is serialization.load_pem_private_key and b"-----BEGIN" in data:
                problem = text
        except Exception as e:  # unsupported key types and the like
            problem = str(e) or type(e).__name__
    raise TLSError(f'could not load private key file "{path}": {problem}')


def _certificate_names(cert: Optional[x509.Certificate]) -> List[str]:
    if cert is None:
        return []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names: List[str] = []
    else:
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        names += [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    if not names:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    return names


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


@implementer(IOpenSSLClientConnectionCreator)
class ClientTLS:
    """
    One TLS attempt to `host` under `settings`: the OpenSSL context (built
    here, reading the files as libpq would, so a `TLSError` comes before any
    byte is sent), the per-connection set-up for Twisted's ``startTLS``, the
    host-name check once the handshake is done, and readable failure texts.
    """

    def __init__(self, settings: TLSSettings, host: str, home: Optional[str] = None):
        self.settings = settings
        self.host = host
        self.verify_chain = False
        self._verify_error: Optional[str] = None
        self._ctx = self._context(settings.files(home))

    def _context(self, files: TLSFiles) -> SSL.Context:
        s = self.settings
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)  # libpq's ssl_min_protocol_version default
        ctx.set_options(SSL.OP_NO_COMPRESSION | getattr(SSL, "OP_NO_RENEGOTIATION", 0))
        if s.rootcert == SYSTEM:
            ctx.set_default_verify_paths()
            self.verify_chain = True
        elif _exists(files.rootcert):
            try:
                ctx.load_verify_locations(files.rootcert)
            except SSL.Error as e:
                raise TLSError(f'could not read root certificate file "{files.rootcert}": '
                               f"{_openssl_reason(e)}") from None
            if files.crl and _exists(files.crl):
                store = ctx.get_cert_store()
                try:
                    store.load_locations(files.crl)
                except (crypto.Error, SSL.Error, OSError):
                    pass  # libpq ignores an unreadable CRL too: it is optional
                else:
                    store.set_flags(crypto.X509StoreFlags.CRL_CHECK | crypto.X509StoreFlags.CRL_CHECK_ALL)
            self.verify_chain = True
        elif s.mode in ("verify-ca", "verify-full"):
            where = f'root certificate file "{files.rootcert}" does not exist' if files.rootcert else \
                "no home directory to find the root certificate file in"
            raise TLSError(f"{where}: provide the file (sslrootcert=...), use the system's trusted roots "
                           "with sslrootcert=system, or change sslmode to disable server certificate "
                           "verification")
        if files.cert:
            try:
                os.stat(files.cert)
                have_cert = True
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENOTDIR):
                    raise TLSError(f'could not open certificate file "{files.cert}": {e.strerror}') from None
                have_cert = False  # no client certificate; the server may or may not mind
            if have_cert:
                try:
                    ctx.use_certificate_chain_file(files.cert)
                except SSL.Error as e:
                    raise TLSError(f'could not read certificate file "{files.cert}": '
                                   f"{_openssl_reason(e)}") from None
                if not files.key:
                    raise TLSError("certificate present, but no private key file (no home directory)")
                key = _load_private_key(files.key, s.password)
                try:
                    ctx.use_privatekey(key)
                    ctx.check_privatekey()
                except SSL.Error as e:
                    raise TLSError(f'certificate does not match private key file "{files.key}": '
                                   f"{_openssl_reason(e)}") from None
        if self.verify_chain:
            ctx.set_verify(SSL.VERIFY_PEER, self._verified)
        else:
            ctx.set_verify(SSL.VERIFY_NONE)
        return ctx

    def _verified(self, connection, cert, errnum, depth, ok):
        if not ok and self._verify_error is None:
            text = _X509_ERRORS.get(errnum, f"X509 verification error {errnum}")
            try:
                subject = cert.to_cryptography().subject.rfc4514_string()
            except Exception:
                subject = ""
            self._verify_error = f"{text} (depth {depth}{', ' + subject if subject else ''})"
        return ok

    # IOpenSSLClientConnectionCreator

    def clientConnectionForTLS(self, tlsProtocol):
        connection = SSL.Connection(self._ctx, None)
        connection.set_app_data(tlsProtocol)
        if not _is_ip(self.host):
            try:
                connection.set_tlsext_host_name(self.host.encode("idna"))
            except (UnicodeError, ValueError):
                pass  # a name IDNA cannot encode gets no SNI, as with libpq
        return connection

    # after the handshake

    def check_peer(self, connection) -> Optional[str]:
        """None when the server's certificate suits this mode, else why not (verify-full only)."""
        if self.settings.mode != "verify-full":
            return None
        import service_identity
        from service_identity.pyopenssl import verify_hostname, verify_ip_address

        try:
            if _is_ip(self.host):
                verify_ip_address(connection, self.host)
            else:
                verify_hostname(connection, self.host)
        except (service_identity.VerificationError, service_identity.CertificateError):
            names = _certificate_names(connection.get_peer_certificate(as_cryptography=True))
            if not names:
                return f'server certificate has no names to match host name "{self.host}" against'
            shown = f'"{names[0]}"' + (f" (and {len(names) - 1} other names)" if len(names) > 1 else "")
            return f'server certificate for {shown} does not match host name "{self.host}"'
        return None

    def describe(self, error: BaseException) -> str:
        """A handshake failure (an OpenSSL error) in words, naming the certificate problem."""
        if isinstance(error, SSL.Error):
            text = _openssl_reason(error)
            if self._verify_error and "certificate verify failed" in text:
                return f"certificate verify failed: {self._verify_error}"
            return text
        return str(error) or type(error).__name__

