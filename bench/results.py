"""The metrics the harness reports, their targets, and the values collected for them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.config import LIMITS, Sizes
from bench.stats import Summary, Value, summarise


@dataclass(frozen=True)
class Metric:
    """One row of the results table."""

    key: str
    label: str
    unit: str
    #: "higher" or "lower" is better ("" for figures that are only context)
    better: str
    #: the issue's target, in words
    target: str = ""
    #: met? from the summaries by system (None: cannot tell)
    check: Callable[[dict[str, Summary]], bool | None] | None = None
    #: metrics whose medians the cell adds in parentheses, joined by " + " (the CPU split)
    parts: tuple[str, ...] = ()


def _ratio_at_least(factor: float, peer: str) -> Callable[[dict[str, Summary]], bool | None]:
    def check(s: dict[str, Summary]) -> bool | None:
        if "jobengine" not in s or peer not in s:
            return None
        return s["jobengine"].median >= factor * s[peer].median
    return check


def _at_most(limit: float) -> Callable[[dict[str, Summary]], bool | None]:
    def check(s: dict[str, Summary]) -> bool | None:
        if "jobengine" not in s:
            return None
        return s["jobengine"].bound != ">" and s["jobengine"].median <= limit
    return check


def _at_least(limit: float) -> Callable[[dict[str, Summary]], bool | None]:
    def check(s: dict[str, Summary]) -> bool | None:
        return None if "jobengine" not in s else s["jobengine"].median >= limit
    return check


def _all_at_most(limit: float) -> Callable[[dict[str, Summary]], bool | None]:
    """Every repetition's figure (not only the median) at most `limit`."""
    def check(s: dict[str, Summary]) -> bool | None:
        return None if "jobengine" not in s else s["jobengine"].high <= limit
    return check


def _count(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else (
        f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n))


#: what the CPU of a rate row is split into: the client process, and every PostgreSQL process
CPU_PARTS = ("cpu_worker", "cpu_db")


def cpu_metric(rate: Metric, who: str) -> Metric:
    """The CPU-per-job row that goes under a rate row: total, with the split in parentheses."""
    return Metric(f"{rate.key}.cpu", f"{rate.label}: CPU per job, {who} + PostgreSQL", "µs/job",
                  "lower", parts=tuple(f"{rate.key}.{p}" for p in CPU_PARTS))


def _with_cpu(rate: Metric, who: str) -> list[Metric]:
    return [rate, cpu_metric(rate, who)]


def catalogue(sizes: Sizes) -> list[Metric]:
    """Every metric, in table order, labelled with this run's sizes."""
    s = sizes
    rescue_limit = s.rescue_lease_ttl + 2.0
    steady_backlog_limit = max(1.0, s.steady_rate * 0.1)
    producers = (f"many producers ({s.producers_connections} connections, one job per tx, "
                 f"{s.producers_seconds:g} s)")
    return [
        *_with_cpu(Metric("enqueue.bulk", f"enqueue {_count(s.bulk)} in one call", "jobs/s",
                          "higher"), "enqueuer"),
        *_with_cpu(Metric("enqueue.single", f"enqueue {_count(s.single)}, one tx each",
                          "jobs/s", "higher"), "enqueuer"),
        *[m for c in s.concurrencies for m in _with_cpu(
            Metric(f"burndown.c{c}", f"burn-down {_count(s.burndown)}, concurrency {c}",
                   "jobs/s", "higher", f"≥ {_burndown_target(c):g}x PgQueuer",
                   _ratio_at_least(_burndown_target(c), "pgqueuer")),
            "worker")],
        Metric("pickup.p50", "idle pickup p50", "ms", "lower"),
        Metric("pickup.p95", "idle pickup p95", "ms", "lower"),
        Metric("pickup.p99", "idle pickup p99", "ms", "lower", "≤ 5 ms", _at_most(5.0)),
        Metric("pickup.max", "idle pickup max", "ms", "lower"),
        Metric("steady.rate", f"steady load ({s.steady_rate:g}/s for {s.steady_seconds:g} s): "
               "achieved", "jobs/s", ""),
        Metric("steady.p50", "steady load pickup p50", "ms", "lower"),
        Metric("steady.p99", "steady load pickup p99", "ms", "lower", "≤ 15 ms", _at_most(15.0)),
        Metric("steady.backlog", "steady load: backlog at end", "jobs", "lower",
               f"≤ {steady_backlog_limit:g} (none growing)", _at_most(steady_backlog_limit)),
        *_with_cpu(Metric("producers.rate", producers, "jobs/s", "higher"), "producers"),
        Metric("producers.floor", "many producers / plain table (same repetition)", "x",
               "higher"),
        *_limits(s),
        *_with_cpu(Metric("dag.plain", f"DAG: burn-down {_count(s.burndown)} c50, nothing else",
                          "jobs/s", "higher"), "worker"),
        *_with_cpu(Metric("dag.waiting", f"DAG: burn-down {_count(s.burndown)} c50 beside "
                          f"{_count(s.dag_waiting)} jobs waiting on a dependency", "jobs/s",
                          "higher"), "worker"),
        Metric("dag.ratio", "DAG: beside waiting / alone (same repetition)", "x", "higher"),
        *_with_cpu(Metric("pyapi.sql", f"Python API: enqueue {_count(s.bulk)} by hand-written "
                          "bulk SQL", "jobs/s", "higher"), "enqueuer"),
        *_with_cpu(Metric("pyapi.defer_many", f"Python API: enqueue {_count(s.bulk)} with "
                          "defer_many (arguments checked)", "jobs/s", "higher"), "enqueuer"),
        Metric("pyapi.ratio", "defer_many / bulk SQL (same repetition)", "x", "higher",
               "≥ 1.0", _at_least(1.0)),
        Metric("scale.load", f"scale: load {_count(s.scale_rows)} finished jobs and their ledger "
               "by SQL", "s", "lower"),
        Metric("scale.size", "scale: database size after the load", "GB", ""),
        *_with_cpu(Metric("scale.empty", "burn-down c10, empty tables", "jobs/s", "higher"),
                   "worker"),
        *_with_cpu(Metric("scale.full", f"burn-down c10, {_count(s.scale_rows)} finished jobs "
                          "present", "jobs/s", "higher"), "worker"),
        Metric("scale.ratio", "scale: full / empty", "x", "higher", "≥ 0.9", _at_least(0.9)),
        Metric("scale.retention", f"scale: retention pass over {_count(s.scale_rows)} finished "
               "jobs", "s", "lower"),
        *_dashboard(s),
        Metric("memory.rss", f"peak RSS, {_count(s.memory_jobs)} running jobs", "MB", "lower",
               "≤ 300 MB",
               _at_most(300.0)),
        Metric("memory.claim", "time until all are running", "s", "lower"),
        Metric("rescue.seconds", f"rescue {s.rescue_jobs} jobs after SIGKILL "
               f"(lease_ttl {s.rescue_lease_ttl:g} s)", "s", "lower",
               f"≤ {rescue_limit:g} s", _at_most(rescue_limit)),
    ]


#: The dashboard workload's pages, as the table names them.
DASHBOARD_PAGES = {"overview": "overview /ui/", "jobs": "jobs list /ui/jobs",
                   "jobs_payload": "jobs filtered by payload", "job": "one job's page"}


def _dashboard(s: Sizes) -> list[Metric]:
    """The dashboard workload's rows: render time p50/p99 per page (the overview's target)."""
    rows = []
    for page, label in DASHBOARD_PAGES.items():
        for q in (50, 99):
            target = ("≤ 300 ms", _at_most(300.0)) if page == "overview" else ("", None)
            rows.append(Metric(f"dashboard.{page}.p{q}",
                               f"dashboard: {label} p{q}, {_count(s.scale_rows)} jobs", "ms",
                               "lower", *target))
    return rows


def _burndown_target(concurrency: int) -> float:
    """The ledger issue's burn-down target against PgQueuer: 2x at c10, 1.25x at c50."""
    return 1.25 if concurrency >= 50 else 2.0


def _limits(s: Sizes) -> list[Metric]:
    """The limits workload's rows: per concurrency its burn-downs, ratio and peaks; pickups."""
    n, lim = _count(s.burndown), LIMITS
    limited = (f"{lim.keys} keys, {len(lim.concurrency_keys())} at ≤ {lim.max_running} running, "
               f"{len(lim.rate_keys())} at ≤ {lim.max_starts} starts per {lim.per:g} s")
    out: list[Metric] = []
    for c in s.limits_concurrencies:
        key = f"limits.c{c}"
        out += [
            *_with_cpu(Metric(f"{key}.plain", f"limits c{c}: burn-down {n}, no limit keys",
                              "jobs/s", "higher"), "worker"),
            *_with_cpu(Metric(f"{key}.limited", f"limits c{c}: burn-down {n} over {limited}",
                              "jobs/s", "higher"), "worker"),
            Metric(f"{key}.ratio", f"limits c{c}: limited / plain (same repetition)", "x",
                   "higher", "≥ 0.90", _at_least(0.9)),
            Metric(f"{key}.peak_running", f"limits c{c}: most running at once, one "
                   "concurrency-limited key", "jobs", "", f"≤ {lim.max_running} (every run)",
                   _all_at_most(lim.max_running)),
            Metric(f"{key}.peak_starts", f"limits c{c}: most starts of one rate-limited key "
                   f"within {lim.checked_window:g} s", "jobs", "",
                   f"≤ {lim.max_starts} (every run)", _all_at_most(lim.max_starts)),
        ]
    for kind, label in (("free", "unlimited"), ("concurrency", "concurrency-limited"),
                        ("rate", "rate-limited")):
        out += [
            Metric(f"limits.pickup.{kind}.p50", f"idle pickup p50, limits set, {label} key",
                   "ms", "lower"),
            Metric(f"limits.pickup.{kind}.p99", f"idle pickup p99, limits set, {label} key",
                   "ms", "lower", "≤ 5 ms", _at_most(5.0)),
        ]
    return out


@dataclass
class Results:
    """Values by metric and system, and notes (failed checks, timeouts) in run order."""

    values: dict[str, dict[str, list[Value]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: what was left out on purpose, and why (not a failure: a missing feature or install)
    skipped: list[str] = field(default_factory=list)
    #: columns besides the systems' (e.g. the many-producers floor), key -> label, in order
    columns: dict[str, str] = field(default_factory=dict)

    def add(self, metric: str, system: str, value: Value) -> None:
        """Record one run's figure."""
        self.values.setdefault(metric, {}).setdefault(system, []).append(value)

    def add_cpu(self, metric: str, system: str, jobs: int, worker: float,
                database: float | None, foreign: float = 0.0) -> None:
        """Record one run's CPU seconds as µs per job: the client, the server and their sum.

        Without the server's figure (not visible from here) the sum is the
        client's alone, and the cell shows the server's part as "?". `foreign`
        (other databases' backends, left out of `database`) goes to the JSON only.
        """
        if jobs <= 0:
            return
        per_job = 1e6 / jobs
        self.add(f"{metric}.cpu_worker", system, Value(worker * per_job))
        self.add(f"{metric}.cpu_foreign", system, Value(foreign * per_job))
        if database is not None:
            self.add(f"{metric}.cpu_db", system, Value(database * per_job))
        self.add(f"{metric}.cpu", system, Value((worker + (database or 0.0)) * per_job))

    def column(self, key: str, label: str) -> None:
        """A column that is not a system under test (shown only where it has figures)."""
        self.columns.setdefault(key, label)

    def note(self, text: str) -> None:
        """Something the reader of the table must know."""
        self.notes.append(text)

    def skip(self, text: str) -> None:
        """Something not measured on purpose, and why (printed as `skipped:`, not a failure)."""
        if text not in self.skipped:
            self.skipped.append(text)

    def summaries(self, metric: str) -> dict[str, Summary]:
        """Median and range per system for one metric."""
        out: dict[str, Summary] = {}
        for system, values in self.values.get(metric, {}).items():
            summary = summarise(values)
            if summary is not None:
                out[system] = summary
        return out

    def as_json(self) -> dict[str, Any]:
        """Every summary with its runs, and the notes."""
        return {
            "metrics": {m: {s: summ.as_json() for s, summ in self.summaries(m).items()}
                        for m in self.values},
            "notes": self.notes,
            "skipped": self.skipped,
        }
