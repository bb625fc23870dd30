"""
A running Vaxine for tests: the real node when ``<repo>/../shared/vaxine/start.sh`` exists, else the fake.

Both kinds have the same Deferred-returning API, so tests of the links run
against whichever is there:

* ``node.host``, ``node.pb_port``, ``node.repl_port``, ``node.is_real``,
  ``node.description``;
* ``node.start()``, ``node.stop()`` (clean), ``node.kill()`` (SIGKILL for the
  real node: the OS process dies mid-flight; the fake drops its listeners and
  every connection abruptly), ``node.restart()`` (start again on the same
  ports and data -- the real node recovers from its log, the fake keeps its
  memory), ``node.destroy()`` (stop and delete the data directory).

`start_vaxine(testcase)` gives a node of the test's own (stopped and removed
at test end).  `shared_vaxine()` gives the process-wide real node (started on
first use, destroyed at session end or exit, like tests.pgcluster's shared
clusters); tests sharing it use their own keys and start streams from
``eof``.  The fake is never shared: it listens in the test reactor, and
trial requires each test to leave the reactor clean.

Ports of the real node: besides PB and replication it opens PB-2, PB-1,
PB+12, PB+13 and PB+14 (start.sh header).  They are chosen at random below
the kernel's ephemeral range (so no outgoing connection can be holding one
when the node binds), checked free by binding each, and a start that still
loses a race for one is retried on other ports.
"""

from __future__ import annotations

import array
import atexit
import fcntl
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import termios
import time
from typing import List, Optional

from twisted.internet import defer, threads
from zope.interface import implementer

from electric.vaxine import datamodel as D
from electric.vaxine.replication import IWalConsumer

from tests.fake_vaxine import FakeVaxine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAXINE_DIR = os.path.normpath(os.path.join(REPO, "..", "shared", "vaxine"))
START = os.path.join(VAXINE_DIR, "start.sh")
STOP = os.path.join(VAXINE_DIR, "stop.sh")

SIDE_PORT_OFFSETS = (-2, -1, 12, 13, 14)
PORT_RANGE = (20000, 32000)
START_TIMEOUT = 120


def real_available() -> bool:
    """True when the real node can be started (``../shared/vaxine/start.sh`` exists).

    ``ELECTRIC_TEST_VAXINE=fake`` makes the link tests use the fake even
    then (to exercise the fake path); the conformance test still uses both.
    """
    return os.path.exists(START)


def use_real() -> bool:
    return real_available() and os.environ.get("ELECTRIC_TEST_VAXINE", "auto") != "fake"


REAL_MISSING_REASON = (
    f"the real Vaxine node is not on this machine ({START} does not exist); "
    "the link tests ran against the fake instead")


def _port_free(port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def pick_ports(rng: Optional[random.Random] = None):
    """(pb, repl) with every port the node opens free right now."""
    rng = rng or random.SystemRandom()
    for _ in range(200):
        pb = rng.randrange(PORT_RANGE[0] + 2, PORT_RANGE[1] - 40)
        repl = pb + 20
        ports = [pb, repl] + [pb + d for d in SIDE_PORT_OFFSETS]
        if all(_port_free(p) for p in ports):
            return pb, repl
    raise RuntimeError(f"no free port set for a Vaxine node in {PORT_RANGE}")


_live: List["RealVaxine"] = []


class RealVaxine:
    """The real node (../shared/vaxine), in its own data dir, on free ports."""

    is_real = True
    host = "127.0.0.1"

    def __init__(self, datadir: Optional[str] = None):
        self.datadir = datadir or tempfile.mkdtemp(prefix="electric-vaxine-")
        self.pb_port: Optional[int] = None
        self.repl_port: Optional[int] = None
        self.pid: Optional[int] = None

    @property
    def description(self) -> str:
        return f"real Vaxine on 127.0.0.1:{self.pb_port}/{self.repl_port} ({self.datadir})"

    # Blocking primitives (run in a thread by the Deferred API).

    def _run_start(self) -> subprocess.CompletedProcess:
        return subprocess.run([START, str(self.pb_port), str(self.repl_port), self.datadir],
                              capture_output=True, text=True, timeout=START_TIMEOUT)

    def start_blocking(self) -> "RealVaxine":
        if self.pb_port is None:
            for _ in range(5):
                self.pb_port, self.repl_port = pick_ports()
                proc = self._run_start()
                if proc.returncode == 0:
                    break
                if "already in use" not in proc.stderr:
                    raise RuntimeError(f"Vaxine did not start: {proc.stderr.strip()}")
            else:
                raise RuntimeError(f"Vaxine did not start after 5 port choices: {proc.stderr.strip()}")
        else:
            proc = self._run_start()
            if proc.returncode != 0:
                raise RuntimeError(f"Vaxine did not restart on {self.pb_port}/{self.repl_port}: {proc.stderr.strip()}")
        with open(os.path.join(self.datadir, "vaxine.pid")) as f:
            self.pid = int(f.read().strip())
        if self not in _live:
            _live.append(self)
        return self

    def stop_blocking(self) -> None:
        if os.path.exists(os.path.join(self.datadir, "vaxine.pid")):
            subprocess.run([STOP, self.datadir], capture_output=True, text=True, timeout=60)
        self.pid = None

    def kill_blocking(self) -> None:
        pid = self.pid
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"Vaxine pid {pid} survived SIGKILL for 30 s")
        # Its listeners died with it (a restart can rebind at once: the node sets SO_REUSEADDR).
        try:
            os.unlink(os.path.join(self.datadir, "vaxine.pid"))
        except FileNotFoundError:
            pass
        self.pid = None

    def alive(self) -> bool:
        if self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
            return True
        except ProcessLookupError:
            return False

    def destroy_blocking(self) -> None:
        try:
            self.stop_blocking()
        finally:
            if self in _live:
                _live.remove(self)
            shutil.rmtree(self.datadir, ignore_errors=True)

    # Deferred API.

    def start(self) -> defer.Deferred:
        return threads.deferToThread(self.start_blocking)

    def stop(self) -> defer.Deferred:
        return threads.deferToThread(self.stop_blocking)

    def kill(self) -> defer.Deferred:
        return threads.deferToThread(self.kill_blocking)

    @defer.inlineCallbacks
    def restart(self):
        yield self.stop()
        yield self.start()

    def destroy(self) -> defer.Deferred:
        return threads.deferToThread(self.destroy_blocking)

    def console_log(self) -> str:
        try:
            with open(os.path.join(self.datadir, "console.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""


class FakeNode:
    """tests.fake_vaxine.FakeVaxine behind the same API as RealVaxine."""

    is_real = False
    host = "127.0.0.1"

    def __init__(self):
        self.fake = FakeVaxine()
        self.pb_port = 0
        self.repl_port = 0
        self.listening = False

    @property
    def description(self) -> str:
        return f"FAKE Vaxine (tests/fake_vaxine.py) on 127.0.0.1:{self.pb_port}/{self.repl_port}"

    def start(self) -> defer.Deferred:
        if not self.listening:
            self.pb_port, self.repl_port = self.fake.listen(self.pb_port, self.repl_port)
            self.listening = True
        return defer.succeed(self)

    @defer.inlineCallbacks
    def stop(self):
        if self.listening:
            self.listening = False
            yield self.fake.stop()

    kill = stop

    @defer.inlineCallbacks
    def restart(self):
        yield self.stop()
        yield self.start()

    destroy = stop


def start_vaxine(testcase, real: Optional[bool] = None) -> defer.Deferred:
    """A node of this test's own (real if available, unless `real` says otherwise); removed at test end."""
    node = RealVaxine() if (use_real() if real is None else real) else FakeNode()
    testcase.addCleanup(node.destroy)
    return node.start()


_shared: Optional[RealVaxine] = None


def shared_vaxine(testcase) -> defer.Deferred:
    """The process-wide real node if available (started on first use), else a fake of this test's own."""
    global _shared
    if not use_real():
        return start_vaxine(testcase, real=False)
    if _shared is not None and _shared in _live and _shared.alive():
        return defer.succeed(_shared)
    if _shared is not None:
        _shared.destroy_blocking()
    _shared = RealVaxine()
    return _shared.start()


def destroy_all() -> None:
    """Stop and delete every real node this process started (never raises)."""
    global _shared
    _shared = None
    for node in list(_live):
        try:
            node.destroy_blocking()
        except Exception:
            pass


atexit.register(destroy_all)


# --------------------------------------------------------------------------- link test helpers


def fast_retry(n):
    return 0.05


@implementer(IWalConsumer)
class Collector:
    """Records every transaction; pauses its producer after `pause_after` of them."""

    def __init__(self, pause_after=None):
        self.txns = []
        self.producer = None
        self.pause_after = pause_after

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def transactionReceived(self, txn):
        self.txns.append(txn)
        if self.pause_after is not None and len(self.txns) >= self.pause_after:
            self.producer.pauseProducing()

    def electric(self, table):
        """This test's transactions, converted (others on a shared node are skipped)."""
        result = []
        for txn in self.txns:
            try:
                w = D.from_wal(txn)
            except D.InvalidWalTransaction:
                continue
            if any(c.table == table for c in w.changes):
                result.append(w)
        return result


def unread_bytes(client):
    """Bytes the kernel holds for the client's stream socket that it has not read."""
    sock = client._protocol.transport.getHandle()
    buf = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf, True)
    return buf[0]
