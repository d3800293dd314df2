"""The job store: every read and write of jobs, through named queries.

Status changes go through the database's versioned functions only: the
daemon's in `Lifecycle` (claim, finish, fail, release, renew, reap, promote,
cascade), the operator's here (`cancel`, `retry`): plain guarded changes, no
worker fencing. The database records each change in the ledger.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from jobengine.domain.errors import IllegalTransition, JobNotFound
from jobengine.domain.models import HistoryEntry, Job, JobSpec, TimelineEvent
from jobengine.domain.status import JobStatus
from jobengine.metrics import count_status_change
from jobengine.store.executor import Executor, connection_of, fetch_on
from jobengine.store.lifecycle import Lifecycle
from jobengine.store.records import history_from_row, job_from_row, timeline_from_row


@dataclass(frozen=True, slots=True)
class EventPage:
    """Timeline events after a cursor, and the cursor to continue from."""

    events: list[dict[str, Any]]
    cursor: tuple[int, int]


@dataclass(frozen=True, slots=True)
class RetryResult:
    """An operator's retry: the job as it is now, and the dependents that stay cancelled.

    `cancelled` is final: jobs the failure cancelled (reason
    `dependency_failed`, down the whole DAG) do not come back with the retry;
    submit them again to run them.
    """

    job: Job
    stays_cancelled: list[int]


class JobStore(Lifecycle):
    """Reads and writes jobs through a pool (or one connection).

    Database errors that stand for a domain condition come out as domain
    errors (`IllegalTransition`, `InvalidJob`, `DuplicateJob`, `JobNotFound`).
    """

    def __init__(self, db: Executor) -> None:
        self._db = db

    @property
    def db(self) -> Executor:
        """The pool or connection this store uses."""
        return self._db

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return await fetch_on(self._db, query, *args)

    # -- creating and reading --------------------------------------------------

    async def insert(self, spec: JobSpec) -> tuple[Job, bool]:
        """Create a job; returns it and whether it is new.

        With an `idempotency_key` already taken, the existing job comes back
        with `False` and nothing is written.
        """
        rows = await self._fetch(
            "job_insert",
            spec.kind, spec.queue, spec.payload, spec.priority, spec.run_at,
            list(spec.depends_on), spec.max_retries, spec.retry_policy, spec.timeout,
            spec.requires_network, spec.idempotency_key, spec.limit_key,
        )
        if rows:
            job = job_from_row(rows[0])
            count_status_change(job.kind, "pending")
            return job, True
        existing = await self._fetch("job_get_by_idempotency_key", spec.idempotency_key)
        if not existing:  # the first job's transaction rolled back meanwhile: try again
            return await self.insert(spec)
        return job_from_row(existing[0]), False

    async def get(self, job_id: int) -> Job:
        """The job with this id, or `JobNotFound`."""
        rows = await self._fetch("job_get", job_id)
        if not rows:
            raise JobNotFound(job_id)
        return job_from_row(rows[0])

    async def get_many(self, job_ids: Iterable[int]) -> list[Job]:
        """The jobs with these ids that exist, in id order."""
        rows = await self._fetch("job_get_many", list(job_ids))
        return [job_from_row(r) for r in rows]

    async def results_of(self, job_ids: Iterable[int]) -> dict[int, Any]:
        """The `result` of each of these jobs that completed, by id."""
        rows = await self._fetch("job_results", list(job_ids))
        return {r["id"]: r["result"] for r in rows}

    async def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        kind: str | None = None,
        queue: str | None = None,
        after: int | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """One page of jobs in id order after the id `after`."""
        rows = await self._fetch(
            "job_list", status.value if status else None, kind, queue, after, limit
        )
        return [job_from_row(r) for r in rows]

    async def count_by_status(self) -> dict[JobStatus, int]:
        """How many jobs are in each status (every status present, zeros included)."""
        rows = await self._fetch("job_count_by_status")
        counts = dict.fromkeys(JobStatus, 0)
        for r in rows:
            counts[JobStatus(r["status"])] = r["n"]
        return counts

    async def history(self, job_id: int) -> list[HistoryEntry]:
        """The job's status changes, oldest first (`JobNotFound` if no such job)."""
        rows = await self._fetch("history_for_job", job_id)
        if not rows:
            await self.get(job_id)
        return [history_from_row(r) for r in rows]

    async def timeline(self, job_id: int) -> list[TimelineEvent]:
        """The job's timeline events, oldest first (`JobNotFound` if no such job)."""
        rows = await self._fetch("timeline_for_job", job_id)
        if not rows:
            await self.get(job_id)
        return [timeline_from_row(r) for r in rows]

    async def events_after(self, cursor: tuple[int, int], limit: int = 100) -> EventPage:
        """Timeline events after `cursor` = (tx_id, id), gap-free, with the next cursor."""
        rows = await self._fetch("timeline_after", cursor[0], cursor[1], limit)
        events = [dict(r) for r in rows]
        last = (int(rows[-1]["tx_id"]), rows[-1]["id"]) if rows else cursor
        return EventPage(events, last)

    async def events_head(self) -> tuple[tuple[int, int], list[str]]:
        """Where "from now on" starts: a cursor, and the ids of the events after it that
        had committed already (`events_after` the cursor, less those, is what comes next)."""
        rows = await self._fetch("timeline_head")
        return (int(rows[0]["tx_id"]), 2**63 - 1), list(rows[0]["committed"])

    # -- operators' actions ----------------------------------------------------

    async def cancel(self, job_id: int, *, reason: str | None = None) -> Job:
        """Cancel a job that has not ended; `IllegalTransition` if it already ended.

        A plain guarded change (no worker fencing): a running handler is
        interrupted through the `jobengine_cancel` notification.
        """
        rows = await self._fetch("lifecycle_cancel", [job_id], reason)
        row = rows[0]
        if row["status"] is None:
            raise JobNotFound(job_id)
        if row["from_status"] is None:
            raise IllegalTransition(JobStatus(row["status"]), JobStatus.CANCELLED, job_id)
        count_status_change(row["kind"], "cancelled")
        return await self.get(job_id)

    async def retry(self, job_id: int, *, reason: str = "operator_retry") -> RetryResult:
        """Schedule a failed job to run again now (`IllegalTransition` otherwise)."""
        rows = await self._fetch("lifecycle_retry", [job_id], [0.0], reason)
        job = await self.get(job_id)
        if not rows[0]["retried"]:
            # failed -> scheduled is the only way back an operator may take
            raise IllegalTransition(job.status, JobStatus.SCHEDULED, job_id)
        count_status_change(job.kind, "scheduled")
        return RetryResult(job, list(rows[0]["stays_cancelled"]))

    async def timeline_note(self, job_ids: Sequence[int], event_type: str, reason: str) -> int:
        """Add a non-transition event (e.g. `job.held`) to these jobs' timelines."""
        rows = await self._fetch("job_timeline_note", list(job_ids), event_type, reason)
        return int(rows[0][0])

    async def hold_for_network(
        self, queues: Sequence[str], reason: str, *, limit: int = 1000
    ) -> list[int]:
        """Note (`job.held`) pending jobs that need the network, once each; returns their ids."""
        async with connection_of(self._db) as conn, conn.transaction():
            rows = await fetch_on(conn, "job_network_holds_lock", list(queues), limit)
            ids = [r["id"] for r in rows]
            if ids:
                await fetch_on(conn, "job_timeline_note", ids, "job.held", reason)
        return ids

    # -- what the scheduler asks -----------------------------------------------

    async def any_waiting(self) -> bool:
        """Whether any pending job waits on dependencies (cheap: a partial index)."""
        rows = await self._fetch("job_waiting_exists")
        return bool(rows[0][0])

    async def next_due_in(
        self, queues: Sequence[str], *, since: datetime | None = None
    ) -> float | None:
        """Seconds (by the database's clock) until the next waiting job of `queues` that
        comes due after `since` (default: now) is due; zero or less if one already is."""
        rows = await self._fetch("job_next_due", list(queues), since)
        value: float | None = rows[0]["due_in"] if rows else None
        return value

    async def next_due(
        self, queues: Sequence[str], *, now: datetime | None = None
    ) -> datetime | None:
        """When the next waiting job of these queues becomes due (after `now`), if any."""
        rows = await self._fetch("job_next_due", list(queues), now)
        value: datetime | None = rows[0]["at"] if rows else None
        return value


__all__ = ["EventPage", "Executor", "JobStore", "RetryResult"]
