"""
Throwaway certificates for TLS tests (plain helpers: trial, pytest and benches use them).

A `TestCA` is a fresh certificate authority made with `trustme` in a temp
directory; `server_files()` issues a certificate for the given host names and
writes PEM files that a PostgreSQL server (running as the `postgres` OS user
when the tests run as root) and Electric can both read.  Nothing is shared
between tests: each makes its own CA, so a "wrong CA" test just makes two.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Optional, Sequence

import trustme

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class ServerFiles:
    """Paths of one issued certificate: its chain, its key, and the CA that signed it."""

    cert: str
    key: str
    ca: str


class TestCA:
    __test__ = False  # not a test class, whatever pytest's name matching thinks

    def __init__(self, directory: Optional[str] = None):
        self.ca = trustme.CA()
        self.dir = directory or tempfile.mkdtemp(prefix="etls")
        os.chmod(self.dir, 0o755)
        self.ca_file = os.path.join(self.dir, "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        os.chmod(self.ca_file, 0o644)
        self._issued = 0

    def server_files(self, hosts: Sequence[str] = DEFAULT_HOSTS, owner: Optional[str] = None) -> ServerFiles:
        """
        A certificate for `hosts` (DNS names and IP addresses).  `owner`: OS
        user to own the key (PostgreSQL refuses a key that its server user
        cannot read or that others can); defaults to `postgres` when running
        as root, else the current user.
        """
        self._issued += 1
        cert = self.ca.issue_cert(*hosts)
        base = os.path.join(self.dir, f"server{self._issued}")
        cert_file, key_file = base + ".crt", base + ".key"
        cert.cert_chain_pems[0].write_to_path(cert_file)
        for extra in cert.cert_chain_pems[1:]:
            extra.write_to_path(cert_file, append=True)
        cert.private_key_pem.write_to_path(key_file)
        os.chmod(cert_file, 0o644)
        os.chmod(key_file, 0o600)
        if owner is None and os.geteuid() == 0:
            owner = "postgres"
        if owner is not None and os.geteuid() == 0:
            shutil.chown(key_file, owner, owner)
        return ServerFiles(cert_file, key_file, self.ca_file)

    def client_files(self, name: str = "electric") -> ServerFiles:
        """A client certificate (for sslcert/sslkey tests), readable by the current user."""
        self._issued += 1
        cert = self.ca.issue_cert(name)
        base = os.path.join(self.dir, f"client{self._issued}")
        cert.cert_chain_pems[0].write_to_path(base + ".crt")
        cert.private_key_pem.write_to_path(base + ".key")
        os.chmod(base + ".key", 0o600)
        return ServerFiles(base + ".crt", base + ".key", self.ca_file)

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
