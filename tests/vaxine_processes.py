"""
A Vaxine node for end-to-end tests whose Electrics run as child processes (blocking API).

`process_vaxine()` gives the real node (tests.vaxine_helpers.RealVaxine) where
``../shared/vaxine`` exists (unless ELECTRIC_TEST_VAXINE=fake), else the FAKE
in a process of its own (tests/fake_vaxine_server.py, state in memory).  Both
offer ``host``, ``pb_port``, ``repl_port``, ``is_real``, ``description``,
``start_blocking()``, ``kill_blocking()`` (the node dies mid-flight),
``restart_blocking()`` (same ports, same data) and ``destroy_blocking()``;
``env()`` gives the VAXINE_* variables for an Electric.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

from tests.vaxine_helpers import REPO, RealVaxine, use_real


class FakeVaxineProcess:
    is_real = False
    host = "127.0.0.1"

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="electric-fakevaxine-")
        self.portfile = os.path.join(self.dir, "ports")
        self.proc = None
        self.pb_port = self.repl_port = None

    @property
    def description(self):
        return f"FAKE Vaxine process (tests/fake_vaxine_server.py) on 127.0.0.1:{self.pb_port}/{self.repl_port}"

    def start_blocking(self):
        if self.proc is None:
            log = open(os.path.join(self.dir, "fake.log"), "ab")
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.fake_vaxine_server", self.portfile],
                                         cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            log.close()
            deadline = time.monotonic() + 60
            while not os.path.exists(self.portfile):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the fake Vaxine did not start: {open(os.path.join(self.dir, 'fake.log')).read()}")
                time.sleep(0.05)
            with open(self.portfile) as f:
                self.pb_port, self.repl_port = map(int, f.read().split())
        else:
            self.proc.send_signal(signal.SIGUSR2)
        return self

    def kill_blocking(self):
        self.proc.send_signal(signal.SIGUSR1)

    def restart_blocking(self):
        self.start_blocking()

    def destroy_blocking(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def env(self):
        return vaxine_env(self)


def vaxine_env(node) -> dict:
    return {"VAXINE_HOST": node.host, "VAXINE_API_PORT": str(node.pb_port),
            "VAXINE_REPLICATION_PORT": str(node.repl_port), "VAXINE_CONNECTION_TIMEOUT": "2000"}


def process_vaxine(testcase):
    """A started node of this test's own, destroyed at test end."""
    if use_real():
        node = RealVaxine()
        node.restart_blocking = node.start_blocking
        node.env = lambda: vaxine_env(node)
    else:
        node = FakeVaxineProcess()
    testcase.addCleanup(node.destroy_blocking)
    node.start_blocking()
    print(node.description)
    return node
