"""
Prometheus metrics: what every part of Electric counts, as one scrape.

Why it is built this way:

* Nothing on a hot path touches prometheus_client.  Each part keeps plain
  integer counters as it works (and the hub one bucketed `LatencyHistogram`)
  and answers `metrics()` with plain numbers; `ElectricCollector` asks each
  part at scrape time and builds the metric families then.  A part that
  learns to count something new adds a key to its `metrics()`; keys the
  collector reads but a part does not have yet (a connector's import
  progress and apply failures) give a family without samples, never a
  made-up zero.
* One `CollectorRegistry` per service (`registry_for`), never
  prometheus_client's global default: several Electric services in one
  process (the tests) each expose only their own parts.
* Every sample carries the instance's ``cluster_id`` and ``instance_id``
  (GLOBAL_CLUSTER_ID, ELECTRIC_INSTANCE_ID), so series of several Electric
  instances scraped into one Prometheus stay apart whatever the scrape
  configuration's target labels are.  Labels are few and bounded: the
  connector, the port-5433 slot, a state or an error kind; never a client
  id (Satellite figures are totals over every client).

Metric names follow Prometheus's conventions (``electric_`` prefix,
``_total`` for counters, base units seconds and bytes).  Hub positions are
one per transaction, so position differences are named ``_transactions``,
not bytes.  The README's "Metrics" section lists every family.
"""

from __future__ import annotations

import bisect
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import generate_latest
from twisted.logger import Logger

import electric

log = Logger(namespace="electric.metrics")

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""Content type of the classic text exposition format that `generate_latest` writes."""

APPEND_LATENCY_BUCKETS: Tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the hub's append latency buckets: an fsync is ~1-20 ms."""

CONNECTOR_STATES = ("init", "setup", "streaming", "ready", "backoff", "stopped")
"""Every value of `ConnectorService.state` (one `electric_connector_state` series each)."""


class LatencyHistogram:
    """
    A fixed-bucket histogram as cheap as a counter: `observe` is one bisect
    and two additions, no lock (it is only touched on the reactor thread).
    The collector turns `snapshot()` into a Prometheus histogram.
    """

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Sequence[float] = APPEND_LATENCY_BUCKETS):
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def snapshot(self) -> dict:
        """{"buckets": [(upper bound, cumulative count), ..., (inf, count)], "sum": s, "count": n}."""
        cumulative = 0
        buckets = []
        for bound, n in zip(self.bounds + (float("inf"),), self.counts):
            cumulative += n
            buckets.append((bound, cumulative))
        return {"buckets": buckets, "sum": self.sum, "count": self.count}


def _bound_text(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class _Families:
    """Builds families whose samples all carry the instance's constant labels first."""

    def __init__(self, constant: Mapping[str, str]):
        self.names = tuple(constant)
        self.values = tuple(constant.values())
        self.out: List = []

    def _add(self, family):
        self.out.append(family)
        return family

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> "_Family":
        return _Family(self._add(GaugeMetricFamily(name, doc, labels=self.names + tuple(labels))), self.values)

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> "_Family":
        return _Family(self._add(CounterMetricFamily(name, doc, labels=self.names + tuple(labels))), self.values)

    def histogram(self, name: str, doc: str, labels: Sequence[str] = ()) -> "_Family":
        return _Family(self._add(HistogramMetricFamily(name, doc, labels=self.names + tuple(labels))), self.values)


class _Family:
    def __init__(self, family, constant_values: Tuple[str, ...]):
        self.family = family
        self.constant = constant_values

    def add(self, value, *labels: str) -> None:
        """Add a sample; a value of None (not known, or not measured by this build) adds nothing."""
        if value is None:
            return
        self.family.add_metric(self.constant + tuple(str(v) for v in labels), float(value))

    def add_histogram(self, snapshot: Optional[dict], *labels: str) -> None:
        if not snapshot:
            return
        buckets = [(_bound_text(b), float(n)) for b, n in snapshot["buckets"]]
        self.family.add_metric(self.constant + tuple(labels), buckets, float(snapshot["sum"]))


def _add_errors(into: Dict[str, int], errors: Optional[Mapping[str, int]]) -> None:
    for kind, n in (errors or {}).items():
        into[kind] = into.get(kind, 0) + int(n)


class ElectricCollector:
    """
    A prometheus_client custom collector over the running parts: each is
    asked for its `metrics()` (plain numbers, see each part's docstring) at
    every scrape.  Any part may be None (not built); one whose `metrics()`
    raises is logged and counted as error kind ``metrics_collect``, and the
    others are still reported.
    """

    def __init__(self, config, hub=None, connectors: Optional[Mapping[str, object]] = None, publisher=None,
                 satellite=None, migrator=None, api=None, apply_monitor=None):
        self.config = config
        self.hub = hub
        self.connectors = connectors if connectors is not None else {}
        self.publisher = publisher
        self.satellite = satellite
        self.migrator = migrator
        self.api = api
        self.apply_monitor = apply_monitor
        self.collect_failures = 0

    def constant_labels(self) -> Dict[str, str]:
        return {"cluster_id": self.config.global_cluster_id, "instance_id": self.config.instance_id}

    def _metrics_of(self, part) -> Optional[dict]:
        if part is None:
            return None
        try:
            return part.metrics()
        except Exception:
            self.collect_failures += 1
            log.failure("metrics() of {part!r} failed", part=part)
            return None

    def collect(self) -> Iterable:
        f = _Families(self.constant_labels())
        errors: Dict[str, int] = {}
        info = f.gauge("electric_info", "Always 1: this Electric instance, its regional id (sent to Satellite"
                       " clients) and version.", ["regional_id", "version"])
        info.add(1, self.config.regional_id, electric.__version__)

        self._connectors(f, errors)
        self._publisher(f, errors)
        self._satellite(f, errors)
        self._hub(f, errors)
        self._migrations(f, errors)
        api = self._metrics_of(self.api)
        if api is not None:
            _add_errors(errors, api.get("errors"))

        errors["metrics_collect"] = self.collect_failures
        family = f.counter("electric_errors", "Errors by kind since start (see the README's Metrics section"
                           " for each kind).", ["kind"])
        for kind, n in sorted(errors.items()):
            family.add(n, kind)
        return f.out

    # -- each part ----------------------------------------------------------

    def _connectors(self, f: _Families, errors: Dict[str, int]) -> None:
        state = f.gauge("electric_connector_state", "1 for the connector's current state, 0 for the others.",
                        ["connector", "state"])
        transactions = f.counter("electric_connector_transactions", "Transactions from the connector's database"
                                 " the hub has made durable.", ["connector"])
        rows = f.counter("electric_connector_rows", "Row changes in those transactions.", ["connector"])
        dropped = f.counter("electric_connector_transactions_dropped", "Transactions read and not forwarded"
                            " (Electric's own writes coming back, bookkeeping tables, empty).", ["connector"])
        received = f.counter("electric_connector_received_bytes", "pgoutput bytes received on the replication"
                             " stream.", ["connector"])
        in_flight = f.gauge("electric_connector_appends_in_flight", "Transactions handed to the hub and not yet"
                            " durable.", ["connector"])
        lag_bytes = f.gauge("electric_connector_lag_bytes", "WAL received (or announced by the server's"
                            " keepalives) minus WAL flushed, i.e. made durable in the hub.", ["connector"])
        lag_seconds = f.gauge("electric_connector_lag_seconds", "Seconds since the commit of the oldest transaction"
                              " received and not yet durable in the hub; 0 when nothing is pending.", ["connector"])
        import_rows = f.counter("electric_connector_import_rows", "Existing rows imported into the hub.",
                                ["connector"])
        import_progress = f.gauge("electric_connector_import_progress_ratio", "Import of existing rows: done"
                                  " fraction (0 to 1).", ["connector"])
        apply_failures = f.counter("electric_connector_apply_failures", "Failures of the database's apply worker"
                                   " applying what Electric sends.", ["connector"])
        for name, connector in sorted(self.connectors.items()):
            m = self._metrics_of(connector)
            if m is None:
                continue
            for s in CONNECTOR_STATES:
                state.add(1 if m.get("state") == s else 0, name, s)
            transactions.add(m.get("transactions"), name)
            rows.add(m.get("rows"), name)
            dropped.add(m.get("transactions_dropped"), name)
            received.add(m.get("received_bytes"), name)
            in_flight.add(m.get("appends_in_flight"), name)
            lag_bytes.add(m.get("lag_bytes"), name)
            lag_seconds.add(m.get("lag_seconds"), name)
            import_rows.add(m.get("import_rows"), name)
            import_progress.add(m.get("import_progress"), name)
            failures = m.get("apply_failures")
            if failures is None and self.apply_monitor is not None:
                failures = self.apply_monitor.apply_failures(name)
            apply_failures.add(failures, name)
            _add_errors(errors, m.get("errors"))

    def _publisher(self, f: _Families, errors: Dict[str, int]) -> None:
        m = self._metrics_of(self.publisher)
        if m is None:
            return
        f.gauge("electric_publisher_connections", "Open connections on port 5433 (POSTGRES_REPLICATION_PORT).") \
            .add(m.get("connections"))
        f.gauge("electric_publisher_unauthenticated_connections", "Port-5433 connections that have not logged in"
                " yet.").add(m.get("unauthenticated"))
        labels = ["slot", "connector"]
        connected = f.gauge("electric_slot_connected", "1 while the slot's subscriber streams from port 5433.",
                            labels)
        sent = f.gauge("electric_slot_sent_position", "Hub position of the last transaction sent to the slot's"
                       " subscriber (while connected).", labels)
        acked = f.gauge("electric_slot_acked_position", "Hub position the slot's subscriber confirmed as applied.",
                        labels)
        lag_transactions = f.gauge("electric_slot_lag_transactions", "Hub head minus the confirmed position:"
                                   " hub transactions the subscriber has not confirmed.", labels)
        lag_seconds = f.gauge("electric_slot_lag_seconds", "Seconds since the commit of the oldest transaction sent"
                              " and not confirmed; 0 when the subscriber confirmed the hub's head.", labels)
        for name, slot in sorted((m.get("slots") or {}).items()):
            values = (name, slot.get("connector", ""))
            connected.add(1 if slot.get("connected") else 0, *values)
            sent.add(slot.get("sent_position"), *values)
            acked.add(slot.get("acked_position"), *values)
            lag_transactions.add(slot.get("lag_transactions"), *values)
            lag_seconds.add(slot.get("lag_seconds"), *values)
        _add_errors(errors, m.get("errors"))

    def _satellite(self, f: _Families, errors: Dict[str, int]) -> None:
        m = self._metrics_of(self.satellite)
        if m is None:
            return
        f.gauge("electric_satellite_connections", "Open websocket connections on WEBSOCKET_PORT.") \
            .add(m.get("connections"))
        f.gauge("electric_satellite_clients", "Authenticated Satellite clients (each holding its client id).") \
            .add(m.get("clients"))
        f.counter("electric_satellite_transactions_in", "Client transactions the hub made durable.") \
            .add(m.get("transactions_in"))
        f.counter("electric_satellite_transactions_out", "Client transactions sent to clients, initial-sync batches"
                  " included (a hub transaction bigger than one chunk is sent, and counted, as one client"
                  " transaction per chunk).") \
            .add(m.get("transactions_out"))
        f.counter("electric_satellite_refused_writes", "Client transactions refused (nothing of them stored).") \
            .add(m.get("refused_writes"))
        f.counter("electric_satellite_auth_failures", "Connections closed for failed or missing authentication.") \
            .add(m.get("auth_failures"))
        _add_errors(errors, m.get("errors"))

    def _hub(self, f: _Families, errors: Dict[str, int]) -> None:
        m = self._metrics_of(self.hub)
        if m is None:
            return
        f.gauge("electric_hub_head_position", "Position of the hub's last durable transaction.").add(m.get("head"))
        f.gauge("electric_hub_log_transactions", "Transactions kept in the hub's log (head minus the compaction"
                " horizon).").add(m.get("log_length"))
        f.gauge("electric_hub_rows", "Live rows in the hub.").add(m.get("rows"))
        f.counter("electric_hub_appends", "Transactions made durable, small appends and chunked commits alike"
                  " (duplicates not counted).").add(m.get("appends"))
        f.counter("electric_hub_chunked_commits", "Of those, big transactions staged in chunks and committed"
                  " (begin/add/commit).").add(m.get("chunked_commits"))
        f.counter("electric_hub_duplicate_appends", "Appends of a transaction the hub already had (resent after a"
                  " reconnect), answered with the earlier position.").add(m.get("duplicates"))
        f.counter("electric_hub_conflicts_resolved", "Writes whose origin saw the row otherwise than the hub had it"
                  " (a concurrent write came first) and were resolved (every chunk of a chunked commit counts).") \
            .add(m.get("conflicts"))
        f.counter("electric_hub_commit_groups", "SQLite commits (each makes one or more appends durable).") \
            .add(m.get("commit_groups"))
        f.histogram("electric_hub_append_latency_seconds", "From append (for a chunked transaction: from its"
                    " commit, its changes already staged) to durable and acknowledged to the producer.") \
            .add_histogram(m.get("append_latency"))
        _add_errors(errors, m.get("errors"))

    def _migrations(self, f: _Families, errors: Dict[str, int]) -> None:
        m = self._metrics_of(self.migrator)
        if m is None:
            return
        family = f.gauge("electric_migrations_pending", "Migrations another database has applied and this one has"
                         " not.", ["connector"])
        for name, n in sorted((m.get("pending") or {}).items()):
            family.add(n, name)
        _add_errors(errors, m.get("errors"))


def registry_for(collector: ElectricCollector) -> CollectorRegistry:
    """
    A registry of its own for one service.  auto_describe=False: nothing is
    collected when the collector is registered (no part is touched before
    the first scrape).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The text exposition format of everything in `registry` (what GET /metrics answers)."""
    return generate_latest(registry)


def seconds_since(now: float, timestamp_us: Optional[int]) -> Optional[float]:
    """Seconds from a commit timestamp (µs since the epoch) to `now` (s); never negative (clocks differ)."""
    if timestamp_us is None:
        return None
    return max(0.0, now - timestamp_us / 1_000_000)


__all__ = [
    "APPEND_LATENCY_BUCKETS", "CONNECTOR_STATES", "ElectricCollector", "LatencyHistogram", "TEXT_CONTENT_TYPE",
    "exposition", "registry_for", "seconds_since",
]
