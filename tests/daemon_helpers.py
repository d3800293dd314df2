"""Helpers for daemon tests: configs, SQL probes, and the lifecycle validity check."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from jobengine.daemon import DaemonConfig, DaemonSettings
from jobengine.domain import TRANSITIONS, JobStatus, RetryPolicy, RetryStrategy
from tests.dbutil import wait_for

FAST_RETRY = RetryPolicy(strategy=RetryStrategy.FIXED, base_delay=0.0, max_delay=0.0, jitter=False)


def config(**daemon: Any) -> DaemonConfig:
    """A daemon config for tests: quick retries; polling slow unless asked (NOTIFY must work)."""
    settings = {"concurrency": 10, "poll_interval": 30.0, "lease_ttl": 30.0,
                "shutdown_grace": 5.0, **daemon}
    return DaemonConfig(daemon=DaemonSettings(**settings), retry=FAST_RETRY)


async def status_of(conn: asyncpg.Connection | asyncpg.Pool, job_id: int) -> str:
    status: str = await conn.fetchval("SELECT status::text FROM jobengine.jobs WHERE id = $1",
                                      job_id)
    return status


async def insert(conn: asyncpg.Connection | asyncpg.Pool, kind: str, **cols: Any) -> int:
    """Insert a job with plain SQL, as an app would."""
    names = ["kind", *cols]
    values = [kind, *cols.values()]
    marks = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    job_id: int = await conn.fetchval(
        f"INSERT INTO jobengine.jobs ({', '.join(names)}) VALUES ({marks}) RETURNING id", *values
    )
    return job_id


async def wait_status(
    conn: asyncpg.Connection | asyncpg.Pool, job_id: int, *statuses: str, within: float = 10.0
) -> str:
    async def probe() -> str | None:
        s = await status_of(conn, job_id)
        return s if s in statuses else None

    return await wait_for(probe, within=within, message=f"job {job_id} to be {statuses}")


async def wait_settled(conn: asyncpg.Connection | asyncpg.Pool, within: float = 20.0) -> None:
    """Until no job is pending, scheduled or running."""

    async def probe() -> bool:
        n: int = await conn.fetchval(
            "SELECT count(*) FROM jobengine.jobs WHERE status IN ('pending','scheduled','running')"
        )
        return n == 0

    await wait_for(probe, within=within, message="every job to settle")


async def history(conn: asyncpg.Connection | asyncpg.Pool, job_id: int) -> list[tuple[Any, ...]]:
    rows = await conn.fetch(
        "SELECT from_status::text AS f, to_status::text AS t, reason, attempt"
        " FROM jobengine.job_history WHERE job_id = $1 ORDER BY id", job_id,
    )
    return [(r["f"], r["t"], r["reason"], r["attempt"]) for r in rows]


async def assert_every_history_is_a_valid_path(conn: asyncpg.Connection | asyncpg.Pool) -> None:
    """Each job's history starts at creation, chains, follows the table, ends at its status."""
    jobs = await conn.fetch("SELECT id, status::text AS status FROM jobengine.jobs")
    rows = await conn.fetch(
        "SELECT job_id, from_status::text AS f, to_status::text AS t FROM jobengine.job_history"
        " ORDER BY job_id, id"
    )
    by_job: dict[int, list[tuple[str | None, str]]] = {}
    for r in rows:
        by_job.setdefault(r["job_id"], []).append((r["f"], r["t"]))
    for job in jobs:
        steps = by_job.get(job["id"], [])
        assert steps, f"job {job['id']} has no history"
        assert steps[0] == (None, "pending"), f"job {job['id']} did not start at creation"
        current: str | None = None
        for src, dst in steps:
            assert src == current, f"job {job['id']}: history jumps from {current} to {src}"
            key = (JobStatus(src) if src else None, JobStatus(dst))
            assert key in TRANSITIONS, f"job {job['id']}: {src} -> {dst} is not allowed"
            current = dst
        assert current == job["status"], f"job {job['id']}: history ends at {current}"


async def daemon_ready(log: Path, marker: str = '"daemon.ready"') -> None:
    """Until a `jobengine run` process writing to `log` says it is claiming (`marker`)."""

    async def probe() -> bool:
        return marker in await anyio.Path(log).read_text(errors="replace")

    await wait_for(probe, within=30, message=f"daemon ready in {log}")


def read_spans(path: Path) -> dict[tuple[int, int], tuple[float, float | None]]:
    """The `tests.handlers:nap` log: (job, attempt) -> (start, end or stop; None if neither)."""
    spans: dict[tuple[int, int], tuple[float, float | None]] = {}
    for line in path.read_text().splitlines():
        what, job, attempt, _pid, at = line.split()
        key = (int(job), int(attempt))
        if what == "start":
            spans[key] = (float(at), None)
        else:
            spans[key] = (spans[key][0], float(at))
    return spans


async def assert_landed_attempts_never_overlapped(
    conn: asyncpg.Connection | asyncpg.Pool, spans_log: Path
) -> None:
    """No two executions of one job whose outcomes both landed ran at the same time.

    An attempt's outcome landed when the ledger has its handler's transition out
    of `running` (a reaped lease, `lease_expired`, is the reaper's, not the
    handler's). Each such attempt must have run, and ended, before the next began.
    """
    spans = read_spans(spans_log)
    rows = await conn.fetch(
        "SELECT job_id, attempt FROM jobengine.job_history"
        " WHERE from_status = 'running' AND reason IS DISTINCT FROM 'lease_expired'"
        " ORDER BY job_id, attempt")
    landed: dict[int, list[int]] = {}
    for r in rows:
        landed.setdefault(r["job_id"], []).append(r["attempt"])
    for job_id, attempts in landed.items():
        runs = []
        for attempt in attempts:
            assert (job_id, attempt) in spans, f"job {job_id} attempt {attempt} never ran"
            start, end = spans[(job_id, attempt)]
            assert end is not None, f"job {job_id} attempt {attempt} landed but never ended"
            runs.append((start, end, attempt))
        runs.sort()
        for (_s1, e1, a1), (s2, _e2, a2) in itertools.pairwise(runs):
            assert e1 <= s2, f"job {job_id}: attempts {a1} and {a2} overlapped ({e1} > {s2})"
