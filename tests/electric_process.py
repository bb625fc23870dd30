"""
Run the real service (`twistd -n electric`) as a child process for end-to-end
tests and benchmarks, with its own free ports, data directory and log.

A plain helper (no test framework), so trial, pytest and bench scripts share it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Dict, Optional

from tests.pgcluster import free_port, read_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class ElectricProcess:
    def __init__(self, connectors: Dict[str, str], extra_env: Optional[Dict[str, str]] = None,
                 workdir: Optional[str] = None):
        self.workdir = workdir or tempfile.mkdtemp(prefix="electric-e2e-")
        self.status_port = free_port()
        self.pg_port = free_port()
        self.ws_port = free_port()
        self.connectors = dict(connectors)
        self.extra_env = dict(extra_env or {})
        self.proc: Optional[subprocess.Popen] = None
        self.logfile = os.path.join(self.workdir, "electric.log")

    def env(self) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(
            CONNECTORS=";".join(f"{n}={u}" for n, u in sorted(self.connectors.items())),
            ELECTRIC_HOST="127.0.0.1",
            LISTEN_HOST="127.0.0.1",
            STATUS_PORT=str(self.status_port),
            POSTGRES_REPLICATION_PORT=str(self.pg_port),
            WEBSOCKET_PORT=str(self.ws_port),
            ELECTRIC_DATA_DIR=os.path.join(self.workdir, "data"),
            OFFSET_STORAGE_FILE=os.path.join(self.workdir, "offsets.dat"),
            MIGRATIONS_DIR=os.path.join(self.workdir, "migrations"),
            PYTHONPATH=ROOT,
        )
        env.update(self.extra_env)
        return env

    def start(self) -> "ElectricProcess":
        log = open(self.logfile, "ab")
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "electric"],
            cwd=self.workdir, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        return self

    def status(self) -> Optional[dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}/api/status", timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def details(self) -> Optional[dict]:
        """/api/status/details (None while the service does not answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}/api/status/details", timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def hub_head(self) -> int:
        """The hub's last durable position: grows by one with every transaction the hub takes."""
        details = self.details()
        if details is None:
            raise AssertionError(f"electric does not answer on {self.status_port}:\n{self.log()[-4000:]}")
        return details["hub"]["head"]

    def wait_ready(self, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"electric exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            last = self.status()
            if last and last.get("connectors") and all(last["connectors"].values()):
                return last
            time.sleep(0.2)
        raise AssertionError(f"electric not ready after {timeout}s: {last}\n{self.log()[-4000:]}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode if self.proc else None

    def log(self) -> str:
        return read_text(self.logfile)

    # --- memory of the process (Linux /proc) ------------------------------

    def _status_kb(self, field: str) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise KeyError(field)

    def rss_kb(self) -> int:
        """Resident set size now (VmRSS)."""
        return self._status_kb("VmRSS")

    def peak_rss_kb(self) -> int:
        """Peak resident set size since start or the last `reset_peak_rss` (VmHWM)."""
        return self._status_kb("VmHWM")

    def reset_peak_rss(self) -> None:
        """Start a new peak (writing 5 to clear_refs resets VmHWM to the current RSS)."""
        with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
            f.write("5")

