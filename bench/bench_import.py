"""
Importing a database's existing rows: a table of N rows (default 1,000,000)
that Postgres A holds before Electric first sees it.

* native: Postgres B subscribes to A with ``CREATE SUBSCRIPTION ...
  copy_data = true`` (Postgres's own initial table synchronisation); time
  until B holds every row.
* Electric: `twistd electric` with A (holding the rows) and B (empty): A's
  connector creates its slot with an exported snapshot and copies the table
  into the hub as one transaction; B gets the rows through its subscription.
  Prints the import's own rate (rows into the hub per second, from
  /api/status/details), the end-to-end rate (until B holds every row), and
  Electric's peak RSS above idle (VmHWM of the twistd process, idle measured
  on the same data directory with B alone just before).

    .venv/bin/python bench/bench_import.py [--rows N]

Figures only; no assertions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.electric_process import ElectricProcess  # noqa: E402
from tests.pgcluster import PASSWORD, USER, PgCluster  # noqa: E402
from tests.polling import poll  # noqa: E402

SCHEMA = "CREATE TABLE public.big (id int PRIMARY KEY, v text NOT NULL, n int NOT NULL);"
FILL = "INSERT INTO big SELECT g, 'row number ' || g, g FROM generate_series(1, {n}) g; ANALYZE big;"
MB = 1024


def count(pg: PgCluster) -> int:
    return int(pg.psql("SELECT count(*) FROM big").strip())


def native(n: int, timeout: float) -> float:
    a, b = PgCluster().start(), PgCluster().start()
    try:
        a.psql(SCHEMA + FILL.format(n=n) + "CREATE PUBLICATION bench FOR ALL TABLES;")
        b.psql(SCHEMA)
        t0 = time.monotonic()
        b.psql(f"CREATE SUBSCRIPTION bench CONNECTION 'host=127.0.0.1 port={a.port} user={USER} "
               f"password={PASSWORD} dbname=electric' PUBLICATION bench WITH (copy_data = true)")
        poll(lambda: count(b) == n, timeout=timeout, what="the native copy", interval=0.2)
        return time.monotonic() - t0
    finally:
        a.destroy()
        b.destroy()


def electric(n: int, timeout: float, tmp: str):
    a, b = PgCluster().start(), PgCluster().start()
    e = ElectricProcess({"postgres_2": b.url}, workdir=os.path.join(tmp, "electric"))
    os.makedirs(e.workdir, exist_ok=True)
    try:
        a.psql(SCHEMA + FILL.format(n=n))
        b.psql(SCHEMA)
        # Idle: the same service on the same data directory, nothing to import.
        e.start().wait_ready(timeout=120)
        time.sleep(2.0)
        idle = e.rss_kb()
        e.stop()
        e.connectors = {"postgres_1": a.url, "postgres_2": b.url}
        t0 = time.monotonic()
        e.start()

        def imported():
            d = e.details() or {}
            imp = ((d.get("connectors") or {}).get("postgres_1") or {}).get("import")
            return imp if imp is not None and imp["state"] == "done" else None

        imp = poll(imported, timeout=timeout, what="the import", interval=0.5)
        poll(lambda: count(b) == n, timeout=timeout, what="every row in B", interval=0.5)
        end_to_end = time.monotonic() - t0
        peak = e.peak_rss_kb()
        lines = [line for line in e.log().splitlines() if "importing:" in line]
        return idle, peak, imp, end_to_end, lines
    finally:
        e.stop()
        a.destroy()
        b.destroy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--timeout", type=float, default=3600.0)
    args = ap.parse_args()
    n = args.rows
    tmp = tempfile.mkdtemp(prefix="bench_import_")
    try:
        took_native = native(n, args.timeout)
        idle, peak, imp, end_to_end, lines = electric(n, args.timeout, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    nat = n / took_native
    into_hub = imp["rows_done"] / imp["seconds"] if imp["seconds"] else float("nan")
    e2e = n / end_to_end
    print(f"import of {n} existing rows (one table)", flush=True)
    print(f"{'':<44}{'rows/s':>10}{'seconds':>10}{'vs native':>11}")
    print(f"{'native initial sync (copy_data = true)':<44}{nat:>10.0f}{took_native:>10.1f}{1.0:>10.2f}x")
    print(f"{'Electric: A -> hub (the import itself)':<44}{into_hub:>10.0f}{imp['seconds']:>10.1f}{into_hub / nat:>10.2f}x")
    print(f"{'Electric: A -> hub -> B (start to last row)':<44}{e2e:>10.0f}{end_to_end:>10.1f}{e2e / nat:>10.2f}x")
    print(f"Electric idle RSS {idle / MB:.0f} MB, peak {peak / MB:.0f} MB: +{(peak - idle) / MB:.0f} MB above idle "
          f"(target <= 200 MB)")
    print(f"progress log lines during the import: {len(lines)}" + (f", e.g. {lines[-1].split('] ', 1)[-1]}"
                                                                     if lines else ""))


if __name__ == "__main__":
    main()
