"""
One huge transaction through a real `twistd electric`: Postgres A -> Electric
-> Postgres B and a real electric-sql client, with Electric's resident memory
measured.  A plain helper shared by tests/test_e2e_big.py (200,000 rows) and
bench/bench_e2e_memory.py (1,000,000 rows).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, Optional

from twisted.internet import defer, threads

from tests.electric_process import ElectricProcess
from tests.node_client import NodeClient
from tests.pgcluster import PgCluster
from tests.polling import wait_until

SCHEMA = "CREATE TABLE public.big (id int PRIMARY KEY, v text NOT NULL, n int NOT NULL);"

BIG_SQLITE = {
    "name": "big",
    "columns": [{"name": "id", "type": "INTEGER"}, {"name": "v", "type": "TEXT"}, {"name": "n", "type": "INTEGER"}],
    "pk": ["id"],
}

MB = 1024


class RssSampler:
    """Electric's VmRSS sampled from a thread (VmHWM gives the exact peak; this gives a curve for the log)."""

    def __init__(self, electric: ElectricProcess, interval: float = 0.1):
        self.electric = electric
        self.interval = interval
        self.max_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.max_kb = max(self.max_kb, self.electric.rss_kb())
            except (OSError, KeyError):
                return
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class BigMesh:
    """Two clusters with table `big`, Electric as a child process, electric-sql clients on demand."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.a = self.b = None
        self.electric: Optional[ElectricProcess] = None
        self.nodes = []

    def start(self) -> "BigMesh":
        self.a = PgCluster().start()
        self.b = PgCluster().start()
        for pg in (self.a, self.b):
            pg.psql(SCHEMA)
        self.electric = ElectricProcess({"postgres_1": self.a.url, "postgres_2": self.b.url},
                                        workdir=os.path.join(self.workdir, "electric"))
        os.makedirs(self.electric.workdir, exist_ok=True)
        self.electric.start().wait_ready(timeout=120)
        return self

    @defer.inlineCallbacks
    def stop(self):
        for node in self.nodes:
            yield node.kill()
        if self.electric is not None:
            yield threads.deferToThread(self.electric.stop)
        for pg in (self.a, self.b):
            if pg is not None:
                pg.destroy()

    @defer.inlineCallbacks
    def node(self, name: str, user: str = "alice"):
        c = NodeClient(os.path.join(self.workdir, f"{name}.db"), self.electric.ws_port, user, tables=(BIG_SQLITE,))
        self.nodes.append(c)
        yield c.start()
        return c

    def count(self, pg: PgCluster, where: str = "") -> int:
        return int(pg.psql(f"SELECT count(*) FROM big {where}").strip())

    def wait_pg(self, pg: PgCluster, expected: int, where: str = "", timeout: float = 600, what: str = "rows"):
        return wait_until(lambda: threads.deferToThread(self.count, pg, where).addCallback(lambda n: n == expected),
                          timeout=timeout, what=what, interval=0.5)

    @staticmethod
    def node_count(node: NodeClient, where: str = ""):
        return node.query(f"SELECT count(*) AS c FROM big {where}").addCallback(lambda rows: rows[0]["c"])

    def wait_node(self, node: NodeClient, expected: int, where: str = "", timeout: float = 600, what: str = "rows"):
        return wait_until(lambda: self.node_count(node, where).addCallback(lambda n: n == expected),
                          timeout=timeout, what=what, interval=0.5)

    def hub_head(self) -> int:
        return self.electric.hub_head()


def mb(kb: int) -> float:
    return kb / MB


def report(line: str, out: Callable[[str], None] = print) -> None:
    out(f"[{time.strftime('%H:%M:%S')}] {line}")
