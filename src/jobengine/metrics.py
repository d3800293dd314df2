"""Prometheus metrics shared by the daemon (which moves jobs) and the API (which serves them).

Kept apart from both so that neither imports the other: the daemon records,
`/metrics` renders, and in `jobengine run --http` they share one registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: The registry jobengine's own metrics live in (not the global default, so
#: tests and embedders can render exactly jobengine's figures).
REGISTRY = CollectorRegistry(auto_describe=True)

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

JOBS = Gauge(
    "jobengine_jobs", "Jobs in the database by status (read at scrape time).",
    ["status"], registry=REGISTRY,
)
STATUS_CHANGES = Counter(
    "jobengine_transitions_total",
    "Status changes made by this process (counted where written), by kind and target status.",
    ["kind", "to_status"], registry=REGISTRY,
)
HANDLER_DURATION = Histogram(
    "jobengine_handler_duration_seconds", "How long handlers ran, by kind.",
    ["kind"], registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
)
PICKUP_LATENCY = Histogram(
    "jobengine_pickup_latency_seconds", "From when a job was due to when its handler started.",
    registry=REGISTRY, buckets=_FAST,
)
CLAIM_BATCH = Histogram(
    "jobengine_claim_batch_size", "Jobs claimed per claim statement.",
    registry=REGISTRY, buckets=(0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
LEASE_RENEWALS = Counter(
    "jobengine_lease_renewals_total", "Leases renewed.", registry=REGISTRY,
)
LEASE_EXPIRIES = Counter(
    "jobengine_lease_expiries_total", "Running jobs whose lease expired (reaped).",
    registry=REGISTRY,
)
LISTENER_RECONNECTS = Counter(
    "jobengine_listener_reconnects_total", "Times the LISTEN connection was re-established.",
    registry=REGISTRY,
)
FENCED_WRITES = Counter(
    "jobengine_fenced_writes_total",
    "Outcome writes refused because the job had moved on (stale worker).",
    registry=REGISTRY,
)
RUNNING = Gauge(
    "jobengine_daemon_running_jobs", "Jobs this daemon is running now.", registry=REGISTRY,
)


_transition_children: dict[tuple[str, str], Counter] = {}
_duration_children: dict[str, Histogram] = {}


def observe_handler_duration(kind: str, seconds: float) -> None:
    """HANDLER_DURATION.labels(kind).observe(seconds), the labelled child cached (hot path)."""
    child = _duration_children.get(kind)
    if child is None:
        child = _duration_children[kind] = HANDLER_DURATION.labels(kind)
    child.observe(seconds)


def count_status_change(kind: str, to_status: str, n: int = 1) -> None:
    """STATUS_CHANGES.labels(kind, to_status).inc(n), the labelled child cached (hot path)."""
    child = _transition_children.get((kind, to_status))
    if child is None:
        child = _transition_children[(kind, to_status)] = STATUS_CHANGES.labels(kind, to_status)
    child.inc(n)

# -- what `jobengine doctor` judges, read at scrape time ---------------------------

TABLE_BYTES = Gauge(
    "jobengine_table_bytes", "Size of jobengine's tables with their indexes (the ledger summed).",
    ["table"], registry=REGISTRY,
)
DEAD_ROWS = Gauge(
    "jobengine_dead_rows", "Dead rows in jobengine's tables, by the statistics collector.",
    ["table"], registry=REGISTRY,
)
OLDEST_TRANSACTION = Gauge(
    "jobengine_oldest_transaction_seconds", "Age of the oldest open transaction on the server.",
    registry=REGISTRY,
)
XMIN_AGE = Gauge(
    "jobengine_xmin_horizon_age", "Transaction ids the xmin horizon is held back, by holder.",
    ["holder"], registry=REGISTRY,
)
RETENTION_AGE = Gauge(
    "jobengine_retention_last_pass_age_seconds",
    "Seconds since the last retention pass (absent before the first).", registry=REGISTRY,
)
LEDGER_DEFAULT_ROWS = Gauge(
    "jobengine_ledger_default_partition_rows",
    "Ledger rows waiting in the default partition (a day without its partition).",
    registry=REGISTRY,
)

# -- scheduling, read at scrape time -----------------------------------------------

QUEUE_PAUSED = Gauge(
    "jobengine_queue_paused", "1 while a queue is paused, else 0 (queues with jobs or a pause "
    "record).", ["queue"], registry=REGISTRY,
)
LIMIT_HELD = Gauge(
    "jobengine_limit_held_jobs", "Due jobs of a limit key held back because its limit is full.",
    ["key"], registry=REGISTRY,
)
LIMIT_RUNNING = Gauge(
    "jobengine_limit_running", "Running jobs of a limit key (what its concurrency limit counts).",
    ["key"], registry=REGISTRY,
)
