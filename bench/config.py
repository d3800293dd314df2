"""Sizes and options of one bench run: the protocol's full sizes, or `--quick` ones."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PEERS_DIR = BENCH_DIR / "peers"
PEER_VENV = BENCH_DIR / ".venv-peers"
OBAN_VENV = BENCH_DIR / ".venv-oban"


@dataclass(frozen=True)
class Sizes:
    """How much work each workload does (defaults: ../shared/BENCHMARKS.md and issue 6)."""

    bulk: int = 20_000
    single: int = 2_000
    burndown: int = 20_000
    concurrencies: tuple[int, ...] = (10, 50)
    pickups: int = 200
    pickup_interval: float = 0.020
    pickup_concurrency: int = 10
    steady_rate: float = 300.0
    steady_seconds: float = 30.0
    steady_connections: int = 4
    producers_connections: int = 32
    producers_seconds: float = 15.0
    scale_rows: int = 10_000_000
    #: requests timed per dashboard page and repetition (the dashboard workload)
    dashboard_requests: int = 100
    memory_jobs: int = 10_000
    rescue_jobs: int = 100
    rescue_lease_ttl: float = 5.0
    #: the limits workload: its burn-downs' variants and concurrencies, its pickups (a third
    #: per kind of key; 0: none)
    limits_variants: tuple[str, ...] = ("plain", "limited")
    limits_concurrencies: tuple[int, ...] = (10, 50)
    limits_pickups: int = 600
    #: the DAG workload: jobs waiting on a dependency beside the burn-down
    dag_waiting: int = 20_000
    reps: int = 3


FULL = Sizes()

#: tiny sizes for CI's smoke run: the harness keeps working, the figures mean nothing
QUICK = Sizes(
    bulk=500, single=50, burndown=500, pickups=20, steady_rate=100.0, steady_seconds=3.0,
    steady_connections=2, producers_connections=4, producers_seconds=1.0, scale_rows=5_000,
    dashboard_requests=5,
    memory_jobs=200, rescue_jobs=10, rescue_lease_ttl=2.0,
    # one run (~5 s) of what the burn-down workload does not run already
    limits_variants=("limited",), limits_concurrencies=(10,), limits_pickups=0, dag_waiting=200,
    reps=1,
)


@dataclass(frozen=True)
class LimitsPlan:
    """The limits workload's keys and limits (the same at every size).

    Keys `k000`, `k001`, ... in groups of `stride`: the first of each group has
    a concurrency limit, the second a rate limit, the others none, so the
    limited keys are spread over the claim's rotation (which is in key order).
    """

    keys: int = 100
    stride: int = 5
    max_running: int = 2
    max_starts: int = 100
    #: seconds: the rate limit's window
    per: float = 1.0
    #: seconds taken off `per` when the ledger is checked against the rate limit (the claim
    #: counts a window ending at a clock reading taken after its statement started, the time
    #: the ledger records)
    rate_slack: float = 0.05

    @property
    def checked_window(self) -> float:
        """Seconds of the window in which the check counts at most `max_starts` starts."""
        return self.per - self.rate_slack

    def names(self) -> list[str]:
        """Every key, in order."""
        return [f"k{j:03d}" for j in range(self.keys)]

    def concurrency_keys(self) -> list[str]:
        """The keys with `max_running`."""
        return self.names()[0::self.stride]

    def rate_keys(self) -> list[str]:
        """The keys with `max_starts` per `per`."""
        return self.names()[1::self.stride]

    def free_keys(self) -> list[str]:
        """The keys without a limit."""
        limited = {*self.concurrency_keys(), *self.rate_keys()}
        return [k for k in self.names() if k not in limited]


LIMITS = LimitsPlan()


@dataclass(frozen=True)
class Options:
    """Everything the workloads need besides the server."""

    sizes: Sizes
    reps: int
    limit: float
    out_dir: Path
    #: databases are named <db_prefix>_<system> (so runs on one server do not collide)
    db_prefix: str = "bench"
    poll_interval: float = 0.02

    def with_reps(self, reps: int | None) -> Options:
        """The same options with another repetition count (None: keep)."""
        return self if reps is None else replace(self, reps=reps)
