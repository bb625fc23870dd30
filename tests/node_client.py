"""
The real electric-sql@0.4.3 client, driven from Python over a Node subprocess.

`ensure_installed()` runs ``npm ci`` in tests/satellite_client once per test
run (when node_modules is missing or older than package-lock.json); without
node or npm it raises with a clear message, so those tests fail loudly
rather than skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading

from twisted.internet import defer, protocol, reactor

from tests.polling import wait_until

CLIENT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "satellite_client")
DRIVER = os.path.join(CLIENT_DIR, "driver.mjs")

_install_lock = threading.Lock()
_installed = False


class NodeClientError(Exception):
    pass


def ensure_installed() -> None:
    global _installed
    with _install_lock:
        if _installed:
            return
        node, npm = shutil.which("node"), shutil.which("npm")
        if node is None or npm is None:
            raise NodeClientError(
                "the Satellite end-to-end tests need Node.js 20 and npm on PATH "
                "(apt-get install nodejs npm); they run the real electric-sql client"
            )
        modules = os.path.join(CLIENT_DIR, "node_modules")
        lock = os.path.join(CLIENT_DIR, "package-lock.json")
        marker = os.path.join(modules, ".package-lock.json")
        fresh = os.path.exists(marker) and os.path.getmtime(marker) >= os.path.getmtime(lock)
        if not fresh or not os.path.exists(os.path.join(modules, "better-sqlite3", "build", "Release", "better_sqlite3.node")):
            proc = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"], cwd=CLIENT_DIR, capture_output=True, text=True, timeout=600
            )
            if proc.returncode != 0:
                raise NodeClientError(f"npm ci in {CLIENT_DIR} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        _installed = True


ITEMS_SQLITE = {
    "name": "items",
    "columns": [
        {"name": "id", "type": "TEXT"},
        {"name": "content", "type": "TEXT"},
        {"name": "n", "type": "INTEGER"},
        {"name": "electric_user_id", "type": "TEXT"},
    ],
    "pk": ["id"],
}


class _Proto(protocol.ProcessProtocol):
    def __init__(self, client):
        self.client = client
        self.buffer = b""
        self.stderr = b""

    def outReceived(self, data):
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                self.client.log_lines.append(line.decode("utf-8", "replace"))  # the client's own logging
                continue
            if isinstance(obj, dict):
                self.client._line(obj)
            else:
                self.client.log_lines.append(line.decode("utf-8", "replace"))

    def errReceived(self, data):
        self.stderr += data

    def processEnded(self, reason):
        self.client._ended(reason.value.exitCode)


class NodeClient:
    """One electric-sql client process on its own SQLite file."""

    def __init__(self, db_path: str, port: int, token: str, tables=(ITEMS_SQLITE,), debug=False, ca_file=None):
        # ca_file: connect with wss://, trusting that CA (Node reads it from NODE_EXTRA_CA_CERTS)
        self.config = {"db": db_path, "port": port, "token": token, "tables": list(tables), "debug": debug,
                       "ssl": ca_file is not None}
        self.ca_file = ca_file
        self.events = []
        self.log_lines = []
        self._pending = {}
        self._ids = 0
        self.exit_code = None
        self.ended = defer.Deferred()
        self.ready = defer.Deferred()

    def start(self):
        ensure_installed()
        self.proto = _Proto(self)
        env = dict(os.environ)
        if self.ca_file is not None:
            env["NODE_EXTRA_CA_CERTS"] = self.ca_file
        self.transport = reactor.spawnProcess(
            self.proto, shutil.which("node"), ["node", DRIVER, json.dumps(self.config)], env=env, path=CLIENT_DIR
        )
        return self.ready

    def _line(self, obj):
        if "event" in obj:
            self.events.append(obj)
            if obj["event"] == "ready" and not self.ready.called:
                self.ready.callback(self)
            return
        d = self._pending.pop(obj.get("id"), None)
        if d is None:
            self.events.append(obj)
        elif "error" in obj:
            d.errback(NodeClientError(obj["error"]))
        else:
            d.callback(obj)

    def _ended(self, code):
        self.exit_code = code
        for d in self._pending.values():
            d.errback(NodeClientError(f"node client exited ({code}): {self.stderr_text()[-2000:]} {self.events}"))
        self._pending.clear()
        if not self.ready.called:
            self.ready.errback(NodeClientError(f"node client exited ({code}) before ready: {self.stderr_text()[-3000:]}"))
        self.ended.callback(code)

    def stderr_text(self):
        return self.proto.stderr.decode("utf-8", "replace")

    def _call(self, **cmd):
        if self.exit_code is not None:
            return defer.fail(NodeClientError(f"node client has exited ({self.exit_code}): {self.events}"))
        self._ids += 1
        cmd["id"] = self._ids
        d = defer.Deferred()
        self._pending[self._ids] = d
        self.transport.write((json.dumps(cmd) + "\n").encode())
        return d

    # electric-sql@0.4.3 pushes its outgoing queue at most every 500 ms and a
    # push sends only the *first* queued transaction (it splices the whole
    # queue away), so two local transactions queued inside one push window
    # lose the second until the next connection.  Tests that make separate
    # local transactions therefore wait until each one has been sent before
    # the next, as an app whose writes follow user input would.

    @defer.inlineCallbacks
    def execute(self, sql, *args):
        result = yield self._call(op="exec", sql=sql, args=list(args))
        yield self.wait_sent()
        return result

    def execute_local(self, sql, *args):
        """A local write without waiting for it to be sent: for a client Electric refused to replicate with."""
        return self._call(op="exec", sql=sql, args=list(args))

    @defer.inlineCallbacks
    def wait_sent(self, timeout=60.0):
        """
        Until every local write so far has left the client: the client records
        the oplog row id of the last transaction it sent in _electric_meta
        (``lastSentRowId``); the oplog's AUTOINCREMENT sequence is the last
        row id written.
        """
        seq = yield self.query("SELECT seq FROM sqlite_sequence WHERE name = '_electric_oplog'")
        written = seq[0]["seq"] if seq else 0

        @defer.inlineCallbacks
        def sent():
            rows = yield self.query(
                "SELECT CAST(value AS INTEGER) AS sent FROM _electric_meta WHERE key = 'lastSentRowId'")
            return rows[0]["sent"] >= written

        if written:
            yield wait_until(sent, timeout=timeout, what=f"the client to send its oplog up to row {written}")

    @defer.inlineCallbacks
    def query(self, sql, *args):
        result = yield self._call(op="query", sql=sql, args=list(args))
        return result["rows"]

    @defer.inlineCallbacks
    def stop(self):
        if self.exit_code is None:
            try:
                yield self._call(op="stop")
            except NodeClientError:
                pass
        if self.exit_code is None:
            yield self.ended
        return self.exit_code

    @defer.inlineCallbacks
    def kill(self):
        if self.exit_code is None:
            self.transport.signalProcess("KILL")
            yield self.ended

    # The 0.4.3 client rejects (unhandled) when a local write is snapshotted
    # before the server's SatInStartReplicationReq arrived; the write stays in
    # its oplog and goes out on the next poll, so this one is not a failure.
    KNOWN_QUIRKS = ("enqueuing a transaction while outbound replication has not started",)

    def crashes(self):
        return [
            e for e in self.events
            if e.get("event") in ("crash", "unhandled") and not any(q in e.get("error", "") for q in self.KNOWN_QUIRKS)
        ]
