"""
Throwaway PostgreSQL 15 clusters for tests and benchmarks (plain helpers, no
test-framework dependency, so trial, pytest and the benchmark script all use
them).

Runs the server binaries as the ``postgres`` OS user with a scrubbed
environment when we are root (initdb refuses root), directly otherwise.
The role ``electric``/``password`` is the bootstrap superuser; the database
``electric`` exists.  See ../shared/spec/pg-dev-cluster.md.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import List, Optional

PGBIN = os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin")
USER = "electric"
PASSWORD = "password"
DATABASE = "electric"

_live: List["PgCluster"] = []


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _is_root() -> bool:
    return os.geteuid() == 0


def _as_pg(cmd: List[str]) -> List[str]:
    env = ["env", "-i", "PATH=/usr/bin:/bin", "LANG=C.UTF-8"]
    if _is_root():
        return ["runuser", "-u", "postgres", "--"] + env + cmd
    return env + cmd


class PgCluster:
    """One local cluster: `start()`, `psql(sql)`, `stop()`, `destroy()`."""

    def __init__(self, port: Optional[int] = None, datadir: Optional[str] = None,
                 extra_conf: Optional[List[str]] = None, durable: bool = False):
        self.port = port or free_port()
        self._own_dir = datadir is None
        self.datadir = datadir or tempfile.mkdtemp(prefix="epg", dir="/tmp")
        self.extra_conf = list(extra_conf or [])
        self.durable = durable
        self.started = False

    @property
    def url(self) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={USER} password={PASSWORD} dbname={DATABASE}"

    @property
    def logfile(self) -> str:
        return os.path.join(self.datadir, "server.log")

    def initdb(self) -> None:
        if os.path.exists(os.path.join(self.datadir, "PG_VERSION")):
            return
        os.makedirs(self.datadir, exist_ok=True)
        if _is_root():
            shutil.chown(self.datadir, "postgres", "postgres")
        os.chmod(self.datadir, 0o700)
        fd, pwfile = tempfile.mkstemp(prefix="epgpw")
        with os.fdopen(fd, "w") as f:
            f.write(PASSWORD + "\n")
        if _is_root():
            shutil.chown(pwfile, "postgres")
        try:
            subprocess.run(
                _as_pg([f"{PGBIN}/initdb", "-D", self.datadir, "-U", USER, f"--pwfile={pwfile}",
                        "-E", "UTF8", "--locale=C.UTF-8", "--auth-local=trust",
                        "--auth-host=scram-sha-256"]),
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
        finally:
            os.unlink(pwfile)
        conf = [
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.datadir}'",
            "wal_level = logical",
            "max_wal_senders = 20",
            "max_replication_slots = 20",
            "max_logical_replication_workers = 8",
            "max_worker_processes = 16",
            "wal_retrieve_retry_interval = '200ms'",
            "log_min_messages = notice",
        ]
        if not self.durable:
            conf += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        conf += self.extra_conf
        with open(os.path.join(self.datadir, "postgresql.conf"), "a") as f:
            f.write("\n".join(conf) + "\n")

    def start(self) -> "PgCluster":
        self.initdb()
        subprocess.run(
            _as_pg([f"{PGBIN}/pg_ctl", "-D", self.datadir, "-l", self.logfile, "-w", "-t", "60", "start"]),
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self.started = True
        if self not in _live:
            _live.append(self)
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'", dbname="postgres")
        if exists.strip() != "1":
            self.psql(f"CREATE DATABASE {DATABASE}", dbname="postgres")
        return self

    def stop(self, mode: str = "fast") -> None:
        if os.path.exists(os.path.join(self.datadir, "postmaster.pid")):
            subprocess.run(
                _as_pg([f"{PGBIN}/pg_ctl", "-D", self.datadir, "-m", mode, "-w", "-t", "60", "stop"]),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        self.started = False

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop("immediate")
        if self in _live:
            _live.remove(self)
        if self._own_dir:
            shutil.rmtree(self.datadir, ignore_errors=True)

    def psql(self, sql: str, dbname: str = DATABASE, check: bool = True) -> str:
        """Run `sql` with psql over TCP; returns unaligned, tuples-only output."""
        env = dict(os.environ, PGPASSWORD=PASSWORD)
        proc = subprocess.run(
            [f"{PGBIN}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
             "-p", str(self.port), "-U", USER, "-d", dbname, "-tA", "-c", sql],
            env=env, capture_output=True, text=True,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"psql failed on port {self.port}: {proc.stderr.strip()}\nSQL: {sql}")
        return proc.stdout

    def log(self) -> str:
        try:
            with open(self.logfile, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_for(self, sql: str, expected: str, timeout: float = 30.0) -> str:
        """Poll `sql` until its output (stripped) equals `expected`; returns the last output."""
        deadline = time.monotonic() + timeout
        out = None
        while time.monotonic() < deadline:
            out = self.psql(sql, check=False).strip()
            if out == expected:
                return out
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {sql!r} == {expected!r}; last: {out!r}")


def _cleanup() -> None:
    for cluster in list(_live):
        try:
            cluster.destroy()
        except Exception:
            pass


atexit.register(_cleanup)
