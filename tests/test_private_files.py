"""Electric's data on disk is private: the data directory 0700, its files (and the offset store) 0600."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile

from twisted.internet import defer, reactor
from twisted.trial import unittest

from electric import files
from electric.hub.embedded import EmbeddedHub
from electric.hub.interface import UPSERT, RowChange, Transaction
from electric.hub.offsets import OffsetStore
from electric.postgres.publisher.credentials import SubscriberCredentials


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


class PrivateFiles(unittest.TestCase):
    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="electric-modes-")
        self.addCleanup(shutil.rmtree, self.root, True)
        os.chmod(self.root, 0o755)

    @defer.inlineCallbacks
    def test_data_directory_and_every_file_in_it(self):
        data = os.path.join(self.root, "nested", "electric_data")
        offsets_path = os.path.join(self.root, "state", "offsets.dat")
        hub = EmbeddedHub(data, reactor, compact_interval=0)
        credentials = SubscriberCredentials(data, ["postgres_1"])
        offsets = OffsetStore(offsets_path)
        for svc in (hub, credentials, offsets):
            svc.startService()
        try:
            yield hub.append(Transaction("postgres_1", b"\x00" * 8, 1, (
                RowChange("public", "t", UPSERT, ("1",), {"id": "1"}),)))
            offsets.claim_client("c1", "alice")
            offsets.set_client_lsn("c1", b"\x01")
            self.assertEqual(mode(data), 0o700)
            self.assertEqual(mode(os.path.dirname(offsets_path)), 0o700)  # made by Electric: private too
            present = sorted(os.listdir(data))
            self.assertIn("hub.sqlite3-wal", present)
            self.assertIn("subscriber_secret", present)
            for name in present:
                path = os.path.join(data, name)  # the hub's staging directory ("spill") is private too
                self.assertEqual(mode(path), 0o700 if os.path.isdir(path) else 0o600, name)
            for name in os.listdir(os.path.dirname(offsets_path)):
                self.assertEqual(mode(os.path.join(os.path.dirname(offsets_path), name)), 0o600, name)
            self.assertEqual(mode(self.root), 0o755)  # a parent that already existed is not Electric's
        finally:
            offsets.stopService()
            credentials.stopService()
            yield hub.stopService()

    @defer.inlineCallbacks
    def test_an_older_installation_is_tightened(self):
        data = os.path.join(self.root, "old_data")
        hub = EmbeddedHub(data, reactor, compact_interval=0)
        hub.startService()
        yield hub.stopService()
        SubscriberCredentials(data, []).startService()
        os.chmod(data, 0o755)
        for name in os.listdir(data):
            os.chmod(os.path.join(data, name), 0o644)
        hub = EmbeddedHub(data, reactor, compact_interval=0)
        hub.startService()
        SubscriberCredentials(data, []).startService()
        yield hub.stopService()
        self.assertEqual(mode(data), 0o700)
        for name in os.listdir(data):
            path = os.path.join(data, name)
            self.assertEqual(mode(path), 0o700 if os.path.isdir(path) else 0o600, name)

    def test_helpers(self):
        path = os.path.join(self.root, "f")
        files.private_file(path)
        self.assertEqual(mode(path), 0o600)
        os.chmod(path, 0o640)
        files.private_file(path)
        self.assertEqual(mode(path), 0o600)
        os.chmod(path, 0o400)
        files.private_file(path)
        self.assertEqual(mode(path), 0o400)  # never loosened
        directory = os.path.join(self.root, "d")
        files.private_file(directory + "-not-a-file-check")
        os.mkdir(directory, 0o755)
        files.private_file(directory)  # a directory given as a file is left for its opener to refuse
        self.assertEqual(mode(directory), 0o755)
        files.private_dir(directory)
        self.assertEqual(mode(directory), 0o700)
