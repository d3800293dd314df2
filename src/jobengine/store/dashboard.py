"""What the web dashboard reads: bounded counts, the last hour by minute, pages of jobs.

Every read here costs the same on a table of ten million jobs as on one of
ten thousand (`queries/dashboard.sql`): each reads through an index and
stops after a fixed number of rows. Counts are exact up to `exact_up_to`
jobs of a status; past that they are the planner's estimate from the
table's statistics (`Count.exact` is then False), which is what a status
holding millions of finished jobs gets. The last hour is read per minute
from the jobs that finished in it: up to `minute_count` of them counted
through the index alone, and `minute_sample` picks spread evenly over those
read whole for their status and pickup latency; a fuller minute is scaled up
from what was read.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from jobengine.domain.models import Job
from jobengine.domain.status import JobStatus
from jobengine.store.executor import Executor, connection_of, fetch_on
from jobengine.store.records import job_from_row

#: Jobs of one status counted exactly before the count becomes an estimate.
EXACT_UP_TO = 5_000
#: Picks per minute of the last hour, spread evenly over its finished jobs (their
#: status and latency are read); up to this many jobs a minute, every one is read.
MINUTE_SAMPLE = 100
#: Jobs read per pick: those that finished at the same moment (one batch), at most.
PICK_ROWS = 10
#: Finished jobs counted per minute (through the index alone) before the count is scaled.
MINUTE_COUNT = 10_000
#: Jobs a page of the jobs list reads at most to find its matches.
PAGE_SCAN = 50_000
#: Jobs after a job that are searched for its children (see `children`).
CHILDREN_WINDOW = 20_000
#: Queues the overview estimates separately (the rest are not shown).
MAX_QUEUES = 50

_SETTINGS = (
    # A status passed as a parameter must still select its partial index:
    # plan each statement for its values, never with a generic plan.
    "SET LOCAL plan_cache_mode = force_custom_plan",
    # Where an index can answer, never a plan that reads the whole table.
    "SET LOCAL enable_seqscan = off",
    "SET LOCAL enable_bitmapscan = off",
    # Costs inflated by the settings above would otherwise make every one of
    # these small reads pay for a JIT compilation (~100 ms each).
    "SET LOCAL jit = off",
)


@dataclass(frozen=True, slots=True)
class Count:
    """A number of jobs: exact, or the planner's estimate (at least the rows counted)."""

    n: int
    exact: bool = True


@dataclass(frozen=True, slots=True)
class Counts:
    """Jobs by status, in total and per queue (every status present in `total`)."""

    total: dict[JobStatus, Count]
    by_queue: dict[str, dict[JobStatus, Count]]

    @property
    def all_jobs(self) -> Count:
        """Every job, exact only when every status is."""
        return Count(sum(c.n for c in self.total.values()),
                     all(c.exact for c in self.total.values()))


@dataclass(frozen=True, slots=True)
class Minute:
    """The jobs that finished in one minute (or the current minute so far)."""

    start: datetime
    completed: float
    failed: float
    cancelled: float
    #: seconds from due to started, over the jobs read (None: none started)
    latency_p50: float | None
    latency_p95: float | None
    #: False when the counts are scaled up from the jobs read (the minute held more)
    exact: bool


@dataclass(frozen=True, slots=True)
class JobsPage:
    """A page of the jobs list, newest first."""

    jobs: list[Job]
    #: where the next (older) page starts (an exclusive id), or None at the end
    next_before: int | None
    #: how many jobs were read to find these, and the oldest id read
    scanned: int
    scanned_to: int | None


@dataclass(frozen=True, slots=True)
class OldestWaiting:
    """The due job that has waited longest, and the database's time."""

    job: Job
    now: datetime

    @property
    def waited_seconds(self) -> float:
        """How long it has been due."""
        due = self.job.run_at or self.now
        return max(0.0, (self.now - due).total_seconds())


class DashboardStore:
    """The dashboard's reads, on a pool or a connection."""

    def __init__(self, db: Executor, *, exact_up_to: int = EXACT_UP_TO,
                 minute_sample: int = MINUTE_SAMPLE, minute_count: int = MINUTE_COUNT) -> None:
        self.db = db
        self.exact_up_to = exact_up_to
        self.minute_sample = minute_sample
        self.minute_count = minute_count

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection in a read-only transaction with the plan settings above."""
        async with connection_of(self.db) as conn, conn.transaction(readonly=True):
            for setting in _SETTINGS:
                await conn.execute(setting)
            yield conn

    async def counts(self) -> Counts:
        """Jobs by status and queue: exact up to `exact_up_to` a status, estimated above."""
        cap = self.exact_up_to
        total: dict[JobStatus, Count] = {}
        by_queue: dict[str, dict[JobStatus, Count]] = {}
        async with self._reading() as conn:
            estimated: list[JobStatus] = []
            for status in JobStatus:
                rows = await fetch_on(conn, "dashboard_count", cap, status.value)
                n = sum(int(r["n"]) for r in rows)
                if n < cap:
                    total[status] = Count(n)
                    for r in rows:
                        by_queue.setdefault(r["queue"], {})[status] = Count(int(r["n"]))
                    continue
                estimated.append(status)
                total[status] = Count(max(n, await _estimate(conn, "dashboard_estimate",
                                                             status.value)), exact=False)
                for r in rows:
                    by_queue.setdefault(r["queue"], {})
            if estimated:
                names = {r["name"] for r in await fetch_on(conn, "dashboard_queue_names")}
                queues = sorted(set(by_queue) | names)[:MAX_QUEUES]
                for queue in queues:
                    for status in estimated:
                        n = await _estimate(conn, "dashboard_estimate_queue", status.value, queue)
                        if n > 1:  # (the planner never estimates fewer than one row)
                            by_queue.setdefault(queue, {})[status] = Count(n, exact=False)
        return Counts(total, {q: by_queue[q] for q in sorted(by_queue)})

    async def minutes(self, minutes: int = 60) -> list[Minute]:
        """The last `minutes` minutes, oldest first (the last one is the current minute)."""
        picks, cap = self.minute_sample, self.minute_count
        async with self._reading() as conn:
            rows = await fetch_on(conn, "dashboard_minutes", minutes, picks, cap, PICK_ROWS)
        out = []
        for r in rows:
            counted = int(r["counted"])
            total = float(counted)
            if counted >= cap:
                # More than the index was read for: the first `cap` jobs cover
                # [start, counted_to]; the rest of the minute is assumed alike.
                total = cap * float(r["seconds"]) / max(float(r["counted_span"] or 0.0), 0.001)
            # Each status's share of the sample (each pick weighs one), times the total.
            per_pick = total / int(r["picks"]) if r["picks"] else 0.0
            out.append(Minute(
                start=r["minute"], completed=r["completed"] * per_pick,
                failed=r["failed"] * per_pick, cancelled=r["cancelled"] * per_pick,
                latency_p50=r["latency_p50"], latency_p95=r["latency_p95"],
                exact=counted < cap and counted <= picks))
        return out

    async def oldest_waiting(self, heads: int = 100) -> OldestWaiting | None:
        """The due job (pending or scheduled) that has waited longest, if any waits."""
        async with self._reading() as conn:
            rows = await fetch_on(conn, "dashboard_oldest_waiting", heads)
        if not rows:
            return None
        return OldestWaiting(job_from_row(rows[0]), rows[0]["now"])

    async def jobs(
        self,
        *,
        status: JobStatus | None = None,
        kind: str | None = None,
        queue: str | None = None,
        payload: dict[str, Any] | None = None,
        before: int | None = None,
        limit: int = 50,
        scan: int = PAGE_SCAN,
    ) -> JobsPage:
        """Jobs newest first before the id `before`, matching every filter given.

        At most `scan` jobs are read: a page with fewer than `limit` matches
        and a `next_before` has more jobs left to search.
        """
        if kind is None and queue is None and payload is None:
            scan = limit  # nothing to filter out: read just the page
        async with self._reading() as conn:
            if before is None:
                newest = await fetch_on(conn, "dashboard_newest_id")
                before = (newest[0][0] or 0) + 1
            rows = await fetch_on(
                conn, "dashboard_jobs", before, scan, status.value if status else None, kind,
                queue, payload, limit)
        jobs = [job_from_row(r) for r in rows if r["id"] is not None]
        scanned = int(rows[0]["scanned"]) if rows else 0
        scanned_to: int | None = rows[0]["scanned_to"] if rows else None
        if len(jobs) == limit:
            next_before: int | None = jobs[-1].id
        elif scanned == scan and scanned_to is not None and scanned_to > 1:
            next_before = scanned_to
        else:
            next_before = None
        return JobsPage(jobs, next_before, scanned, scanned_to)

    async def children(self, job_id: int, *, window: int = CHILDREN_WINDOW,
                       limit: int = 100) -> list[Job]:
        """Jobs that depend on `job_id`: those still waiting, and those among the next `window`."""
        async with self._reading() as conn:
            rows = await fetch_on(conn, "dashboard_children", job_id, window, limit)
        return [job_from_row(r) for r in rows]


async def _estimate(conn: asyncpg.Connection, query: str, *args: Any) -> int:
    """The planner's row estimate for a named `EXPLAIN (FORMAT JSON)` query."""
    rows = await fetch_on(conn, query, *args)
    plan = rows[0][0]
    document = json.loads(plan) if isinstance(plan, str) else plan
    return int(document[0]["Plan"]["Plan Rows"])


__all__ = [
    "CHILDREN_WINDOW",
    "EXACT_UP_TO",
    "MINUTE_COUNT",
    "MINUTE_SAMPLE",
    "PAGE_SCAN",
    "Count",
    "Counts",
    "DashboardStore",
    "JobsPage",
    "Minute",
    "OldestWaiting",
]
