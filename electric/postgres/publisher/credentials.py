"""
Credentials Electric writes into each Postgres's subscription and checks on port 5433.

Each connector's subscription connects back as user ``<connector name>``
with a password derived from a random secret kept (mode 0600) in the data
directory: stable across restarts, different per connector, and never
configured by hand.  Whoever knows a connector name but not the secret is
refused on port 5433 (the original accepted anyone).

The secret is read (or made) in `startService`, not at construction, so
building the service tree touches no disk before twistd daemonises; the
root starts this service before the publisher and the connectors.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from typing import Iterable, Optional, Tuple

from twisted.application import service

from electric import files

SECRET_FILE = "subscriber_secret"


class SubscriberCredentials(service.Service):
    """Per-connector subscription credentials; usable once started (RuntimeError before)."""

    name = "subscriber-credentials"

    def __init__(self, data_dir: str, connector_names: Iterable[str]):
        self.data_dir = data_dir
        self._names = frozenset(connector_names)
        self._secret: Optional[bytes] = None

    def startService(self):
        self._secret = self._load_or_create(self.data_dir)
        super().startService()

    @staticmethod
    def _load_or_create(data_dir: str) -> bytes:
        files.private_dir(data_dir)
        path = os.path.join(data_dir, SECRET_FILE)
        try:
            with open(path, "rb") as f:
                secret = f.read().strip()
            if len(secret) >= 32:
                files.private_file(path)
                return secret
        except FileNotFoundError:
            pass
        secret = secrets.token_hex(32).encode()
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return secret

    @property
    def names(self) -> frozenset:
        """Every connector name (each one is a user on port 5433)."""
        return self._names

    def for_connector(self, name: str) -> Tuple[str, str]:
        """(user, password) that connector `name`'s subscription uses."""
        if self._secret is None:
            raise RuntimeError("subscriber credentials are not loaded (service not started)")
        digest = hmac.new(self._secret, name.encode(), hashlib.sha256).hexdigest()
        return name, digest[:40]

    def password_for_user(self, user: str) -> Optional[str]:
        """The password `user` must present on port 5433, or None if no such user."""
        if user not in self._names:
            return None
        return self.for_connector(user)[1]
