"""
Throwaway PostgreSQL 15 clusters for tests and benchmarks (plain helpers, no
test-framework dependency, so trial, pytest and the benchmark script all use
them).

Runs the server binaries as the ``postgres`` OS user with a scrubbed
environment when we are root (initdb refuses root), directly otherwise.
The role ``electric``/``password`` is the bootstrap superuser; the database
``electric`` exists.  See ../shared/spec/pg-dev-cluster.md.

Also the command line behind `make start_dev_env` / `make stop_dev_env`:

    python -m tests.pgcluster start --port 54321 --datadir /tmp/electric-dev/pg1
    python -m tests.pgcluster stop --datadir /tmp/electric-dev/pg1 [--remove]

`start` is idempotent (creates the cluster only if missing, starts it only if
stopped, creates the database only if missing) and leaves the server running.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import socket
import subprocess
import sys
import re
import tempfile
import time
from typing import Dict, List, Optional, Sequence

PGBIN = os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin")
USER = "electric"
PASSWORD = "password"
DATABASE = "electric"

_live: List["PgCluster"] = []


def read_text(path: str) -> str:
    """A log file's text so far ("" if it does not exist yet)."""
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


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
    """
    One local cluster: `start()`, `psql(sql)`, `stop()`, `destroy()`.

    TLS: `tls` is anything with `cert`, `key` and `ca` paths (e.g.
    tests.tls_helpers.ServerFiles; the key must be readable by the server's
    OS user only): the server gets ``ssl = on`` with those files
    (``ssl_ca_file`` is what client certificates are checked against).
    `hostssl_only` turns every TCP rule of pg_hba.conf into ``hostssl``, so
    a connection without TLS is refused; `hba_options` is appended to those
    rules (e.g. ``clientcert=verify-ca``).  Unix-socket rules stay as they
    are; `psql()` (TCP, libpq's default sslmode=prefer) works either way.
    """

    def __init__(self, port: Optional[int] = None, datadir: Optional[str] = None,
                 extra_conf: Optional[List[str]] = None, durable: bool = False,
                 tls=None, hostssl_only: bool = False, hba_options: str = ""):
        self.port = port or free_port()
        self._own_dir = datadir is None
        self.datadir = datadir or tempfile.mkdtemp(prefix="epg", dir="/tmp")
        self.extra_conf = list(extra_conf or [])
        self.durable = durable
        self.tls = tls
        self.hostssl_only = hostssl_only
        self.hba_options = hba_options
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
        if self.tls is not None:
            conf += ["ssl = on", f"ssl_cert_file = '{self.tls.cert}'", f"ssl_key_file = '{self.tls.key}'"]
            if getattr(self.tls, "ca", None):
                conf.append(f"ssl_ca_file = '{self.tls.ca}'")
        conf += self.extra_conf
        with open(os.path.join(self.datadir, "postgresql.conf"), "a") as f:
            f.write("\n".join(conf) + "\n")
        if self.hostssl_only or self.hba_options:
            self._rewrite_hba()

    def _rewrite_hba(self) -> None:
        hba = os.path.join(self.datadir, "pg_hba.conf")
        with open(hba) as f:
            lines = f.read().splitlines()
        out = []
        for line in lines:
            if re.match(r"host(ssl|nossl)?\s", line):
                if self.hostssl_only:
                    line = re.sub(r"\Ahost(ssl|nossl)?", "hostssl", line)
                if self.hba_options:
                    line = f"{line} {self.hba_options}"
            out.append(line)
        with open(hba, "w") as f:
            f.write("\n".join(out) + "\n")

    def running(self) -> bool:
        """Whether a server is running on this data directory (pg_ctl status)."""
        if not os.path.exists(os.path.join(self.datadir, "PG_VERSION")):
            return False
        proc = subprocess.run(_as_pg([f"{PGBIN}/pg_ctl", "-D", self.datadir, "status"]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return proc.returncode == 0

    def start(self) -> "PgCluster":
        self.initdb()
        if not self.running():
            proc = subprocess.run(
                _as_pg([f"{PGBIN}/pg_ctl", "-D", self.datadir, "-l", self.logfile, "-w", "-t", "60", "start"]),
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )
            if proc.returncode != 0:
                tail = "\n".join(self.log().splitlines()[-5:])
                raise RuntimeError(
                    f"PostgreSQL on port {self.port} ({self.datadir}) did not start: "
                    f"{proc.stderr.strip()}\nserver.log:\n{tail}"
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

    def destroy(self, remove: Optional[bool] = None) -> None:
        """Stop and forget the cluster; its directory goes if we made it (or `remove`)."""
        self.stop("immediate")
        if self in _live:
            _live.remove(self)
        if self._own_dir if remove is None else remove:
            shutil.rmtree(self.datadir, ignore_errors=True)

    def detach(self) -> None:
        """Keep the server running after this process exits (the dev env)."""
        if self in _live:
            _live.remove(self)

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
        return read_text(self.logfile)

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


_shared: Dict[str, PgCluster] = {}


def shared_cluster(key: str = "default") -> PgCluster:
    """
    One cluster per `key` for the whole test process, started on first use
    (trial has no setUpClass, and initdb per test would dominate the suite's
    runtime).  Tests sharing one must use their own table names.  Destroyed
    by `destroy_all` at the end of the pytest session, or at exit.
    """
    cluster = _shared.get(key)
    if cluster is None or cluster not in _live:
        cluster = _shared[key] = PgCluster().start()
    return cluster


def destroy_all() -> None:
    """Stop and delete every cluster this process started (never raises)."""
    _shared.clear()
    for cluster in list(_live):
        try:
            cluster.destroy()
        except Exception:
            pass


_cleanup = destroy_all
atexit.register(destroy_all)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.pgcluster",
                                     description="Start or stop a local PostgreSQL 15 cluster for Electric.")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="create if missing, start if stopped; print its URL")
    start.add_argument("--port", type=int, required=True)
    start.add_argument("--datadir", required=True)
    stop = sub.add_parser("stop", help="stop the server")
    stop.add_argument("--datadir", required=True)
    stop.add_argument("--remove", action="store_true", help="also delete the data directory")
    args = parser.parse_args(argv)
    datadir = os.path.abspath(args.datadir)
    if args.command == "start":
        cluster = PgCluster(port=args.port, datadir=datadir)
        try:
            cluster.start()
        except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
            detail = getattr(e, "stderr", None) or ""
            print(f"error: {e} {detail}".strip(), file=sys.stderr)
            return 1
        finally:
            cluster.detach()
        print(cluster.url)
        return 0
    cluster = PgCluster(port=1, datadir=datadir)
    cluster.destroy(remove=args.remove)
    return 0


if __name__ == "__main__":
    sys.exit(main())
