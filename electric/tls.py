"""
TLS material for Electric's listeners: checking a certificate and its key, and
turning them into the context a listener serves with.

Each listener (port 5433, the websocket, the HTTP API) may be given a
certificate file (PEM: the server certificate first, then any intermediate
certificates) and the matching private key (PEM, unencrypted).  `problems()`
checks a pair once at startup so a bad configuration is reported with every
other configuration problem; `server_context()` loads it when the listener
starts (nothing reads the files at import or construction time).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import List, Optional, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import serialization


@dataclass(frozen=True)
class TLSFiles:
    """A certificate chain file and its private key file."""

    cert_file: str
    key_file: str


def _read(path: str, what: str, problems: List[str], variable: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        problems.append(f"{variable}={path!r}: cannot read the {what}: {e.strerror or e}")
        return None


def load(files: TLSFiles) -> Tuple[List[x509.Certificate], object]:
    """(certificate chain, private key) from the files; ValueError/OSError when unusable."""
    with open(files.cert_file, "rb") as f:
        chain = x509.load_pem_x509_certificates(f.read())
    with open(files.key_file, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    return chain, key


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def problems(cert_variable: str, key_variable: str, files: TLSFiles) -> List[str]:
    """Everything wrong with a certificate/key pair, one message per problem (empty when usable)."""
    out: List[str] = []
    cert_pem = _read(files.cert_file, "certificate", out, cert_variable)
    key_pem = _read(files.key_file, "private key", out, key_variable)
    chain = key = None
    if cert_pem is not None:
        try:
            chain = x509.load_pem_x509_certificates(cert_pem)
        except ValueError:
            out.append(f"{cert_variable}={files.cert_file!r}: not a PEM certificate file")
    if key_pem is not None:
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except TypeError:
            out.append(f"{key_variable}={files.key_file!r}: the private key is encrypted; give an unencrypted key")
        except (ValueError, Exception):  # cryptography raises several types for garbage
            out.append(f"{key_variable}={files.key_file!r}: not a PEM private key file")
    if chain and key is not None and _spki(chain[0].public_key()) != _spki(key.public_key()):
        out.append(f"{key_variable}={files.key_file!r} does not match the certificate in "
                   f"{cert_variable}={files.cert_file!r}")
    return out


def names_host(cert_file: str, host: str) -> bool:
    """True when the certificate in `cert_file` is valid for `host` (a DNS name or an IP address)."""
    from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address
    from service_identity.exceptions import VerificationError, CertificateError

    with open(cert_file, "rb") as f:
        cert = x509.load_pem_x509_certificates(f.read())[0]
    try:
        try:
            verify_certificate_ip_address(cert, ipaddress.ip_address(host.strip("[]")))
        except ValueError:
            verify_certificate_hostname(cert, host)
    except (VerificationError, CertificateError):
        return False
    return True


def server_context(files: TLSFiles):
    """
    The OpenSSL context factory a listener serves TLS with: Twisted's
    `CertificateOptions` (TLS 1.2 or later, its secure cipher defaults) with
    the intermediates of the chain file sent after the certificate.
    """
    from twisted.internet import ssl

    chain, key = load(files)
    return ssl.CertificateOptions(
        privateKey=key,
        certificate=chain[0],
        extraCertChain=chain[1:] or None,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )
