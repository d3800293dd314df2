"""The job store: every read and write of jobs, through named queries.

One write path for status changes: `transition_many`, a batched, guarded
compare-and-set. Whatever the daemon, the API or the CLI does to a job's
status goes through it (or through the claim and reaper queries, which are
guarded the same way in SQL), and the database records each change.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeAlias

import asyncpg
import msgspec

from jobengine.domain.errors import IllegalTransition, InvalidJob, JobNotFound
from jobengine.domain.models import HistoryEntry, Job, JobSpec, TimelineEvent
from jobengine.domain.retry import RetryPolicy, parse_retry_policy, retries_remain
from jobengine.domain.status import JobStatus, check
from jobengine.store.records import (
    history_from_row,
    job_from_row,
    timeline_from_row,
    translate_error,
)
from jobengine.store.sqlfiles import QUERIES

#: A pool or a single connection (tests pass a connection inside a transaction).
Executor: TypeAlias = "asyncpg.Pool | asyncpg.Connection"


@dataclass(frozen=True, slots=True)
class Transition:
    """One requested status change, applied only if the job is still as expected.

    For a job leaving `running`, `attempt` and `lease_owner` are required: a
    worker that lost its lease (reaped, re-claimed by another daemon) must not
    overwrite the newer attempt's outcome.
    """

    job_id: int
    from_status: JobStatus
    to_status: JobStatus
    attempt: int | None = None
    lease_owner: str | None = None
    reason: str | None = None
    result: Any = None
    error: str | None = None
    run_at: datetime | None = None

    def __post_init__(self) -> None:
        check(self.from_status, self.to_status, self.job_id)
        if self.from_status is JobStatus.RUNNING and (
            self.attempt is None or self.lease_owner is None
        ):
            raise ValueError(
                f"job {self.job_id}: a transition out of running must name the attempt and "
                "lease owner it expects"
            )


@dataclass(frozen=True, slots=True)
class TransitionOutcome:
    """Which requested transitions took effect and which found the job changed."""

    changed: frozenset[int]
    refused: frozenset[int]


@dataclass(slots=True)
class FailureOutcome:
    """What happened to a batch of failed attempts."""

    retried: dict[int, datetime] = field(default_factory=dict)  # job id -> next run_at
    terminal: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed attempt to record: `running -> failed`, then a retry if one remains."""

    job_id: int
    attempt: int
    lease_owner: str
    error: str
    reason: str = "error"


@dataclass(frozen=True, slots=True)
class EventPage:
    """Timeline events after a cursor, and the cursor to continue from."""

    events: list[dict[str, Any]]
    cursor: tuple[int, int]


def _policy_for(job_retry_policy: Any, default: RetryPolicy) -> RetryPolicy:
    try:
        return parse_retry_policy(job_retry_policy) or default
    except InvalidJob:
        # The database refuses invalid policies; if one slipped in (an older
        # schema), the daemon's default is the sensible fallback.
        return default


class JobStore:
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

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        if isinstance(self._db, asyncpg.Pool):
            async with self._db.acquire() as conn:
                yield conn
        else:
            yield self._db

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return await _fetch_on(self._db, query, *args)

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
            spec.requires_network, spec.idempotency_key,
        )
        if rows:
            return job_from_row(rows[0]), True
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

    # -- the guarded write path ------------------------------------------------

    async def transition_many(
        self, transitions: Sequence[Transition], *, now: datetime | None = None
    ) -> TransitionOutcome:
        """Apply a batch of guarded status changes in one statement.

        Returns which jobs changed and which were refused because they were no
        longer in the expected status, attempt or lease (someone else moved
        them first). An illegal pair never reaches the database (`Transition`
        checks it), and the database would refuse it anyway.
        """
        if not transitions:
            return TransitionOutcome(frozenset(), frozenset())
        rows = await self._fetch("job_transition_many", *_transition_args(transitions), now)
        changed = frozenset(r["id"] for r in rows)
        wanted = {t.job_id for t in transitions}
        return TransitionOutcome(changed, frozenset(wanted - changed))

    async def cancel(self, job_id: int, *, reason: str = "cancelled_by_user") -> Job:
        """Cancel a job in any non-final status; `IllegalTransition` if it already ended."""
        for _ in range(5):
            job = await self.get(job_id)
            check(job.status, JobStatus.CANCELLED, job_id)
            transition = Transition(
                job_id, job.status, JobStatus.CANCELLED, reason=reason,
                attempt=job.attempt if job.status is JobStatus.RUNNING else None,
                lease_owner=job.lease_owner if job.status is JobStatus.RUNNING else None,
                error=None,
            )
            if (await self.transition_many([transition])).changed:
                return await self.get(job_id)
        # It kept moving under us (a busy daemon); report where it is now.
        job = await self.get(job_id)
        raise IllegalTransition(job.status, JobStatus.CANCELLED, job_id)

    async def retry(self, job_id: int, *, reason: str = "operator_retry") -> Job:
        """Schedule a failed job to run again now (`IllegalTransition` otherwise)."""
        job = await self.get(job_id)
        # failed -> scheduled is the only way back to scheduled an operator may take
        if job.status is not JobStatus.FAILED:
            raise IllegalTransition(job.status, JobStatus.SCHEDULED, job_id)
        outcome = await self.transition_many(
            [Transition(job_id, JobStatus.FAILED, JobStatus.SCHEDULED, reason=reason)],
        )
        job = await self.get(job_id)
        if not outcome.changed:
            raise IllegalTransition(job.status, JobStatus.SCHEDULED, job_id)
        return job

    async def timeline_note(self, job_ids: Sequence[int], event_type: str, reason: str) -> int:
        """Add a non-transition event (e.g. `job.held`) to these jobs' timelines."""
        rows = await self._fetch("job_timeline_note", list(job_ids), event_type, reason)
        return int(rows[0][0])

    async def hold_for_network(
        self, queues: Sequence[str], reason: str, *, limit: int = 1000
    ) -> list[int]:
        """Note (`job.held`) pending jobs that need the network, once each; returns their ids."""
        async with self._connection() as conn, conn.transaction():
            rows = await _fetch_on(conn, "job_network_holds_lock", list(queues), limit)
            ids = [r["id"] for r in rows]
            if ids:
                await _fetch_on(conn, "job_timeline_note", ids, "job.held", reason)
        return ids

    # -- the daemon's batch operations ------------------------------------------

    async def claim(
        self,
        *,
        owner: str,
        queues: Sequence[str],
        kinds: Sequence[str],
        limit: int,
        lease_ttl: timedelta,
        now: datetime | None = None,
        sealed: bool = False,
    ) -> list[Job]:
        """Claim up to `limit` runnable jobs (`-> running`) with a lease."""
        if limit <= 0 or not kinds:
            return []
        rows = await self._fetch(
            "job_claim_batch", owner, list(queues), list(kinds), limit, lease_ttl, now, sealed
        )
        return [job_from_row(r) for r in rows]

    async def renew_leases(
        self, owner: str, held: Mapping[int, int], lease_ttl: timedelta,
        *, now: datetime | None = None,
    ) -> set[int]:
        """Extend the leases of `held` ({job id: attempt}); returns the ids still held."""
        if not held:
            return set()
        ids = list(held)
        rows = await self._fetch(
            "lease_renew_many", owner, ids, [held[i] for i in ids], now, lease_ttl
        )
        return {r["id"] for r in rows}

    async def fail_many(
        self,
        failures: Sequence[Failure],
        default_policy: RetryPolicy,
        *,
        now: datetime | None = None,
        rng: random.Random | None = None,
    ) -> FailureOutcome:
        """Record failed attempts and schedule the retries that remain, atomically.

        `running -> failed` and, for jobs with attempts left, `failed ->
        scheduled` at the policy's next run time happen in one transaction,
        so a crash can never leave a retryable job looking terminally failed.
        """
        outcome = FailureOutcome()
        if not failures:
            return outcome
        transitions = [
            Transition(f.job_id, JobStatus.RUNNING, JobStatus.FAILED, attempt=f.attempt,
                       lease_owner=f.lease_owner, reason=f.reason, error=f.error)
            for f in failures
        ]
        async with self._connection() as conn, conn.transaction():
            rows = await _fetch_on(
                conn, "job_transition_many", *_transition_args(transitions), now
            )
            await self._schedule_retries(conn, rows, default_policy, now, rng, outcome)
        changed = {r["id"] for r in rows}
        outcome.refused = [f.job_id for f in failures if f.job_id not in changed]
        return outcome

    async def reap_expired(
        self,
        default_policy: RetryPolicy,
        *,
        now: datetime | None = None,
        limit: int = 1000,
        rng: random.Random | None = None,
    ) -> FailureOutcome:
        """Fail running jobs whose lease expired (`lease_expired`), then apply retries.

        The retry policy decides whether an attempt remains; a rescued job is
        due at once, though: its worker died, the job did not fail, and
        waiting out a backoff would only delay the rescue.
        """
        return await self._fail_and_retry("lease_reap_expired", (now, limit), default_policy,
                                          now=now, rng=rng, backoff=False)

    async def retry_failed_with_budget(
        self,
        default_policy: RetryPolicy,
        *,
        now: datetime | None = None,
        limit: int = 1000,
        rng: random.Random | None = None,
    ) -> FailureOutcome:
        """Schedule retries for failed jobs that still have attempts left.

        The daemon records failures and retries together, so this only finds
        jobs failed by hand (`UPDATE ... SET status = 'failed'`).
        """
        return await self._fail_and_retry("job_retryable_lock", (limit,), default_policy,
                                          now=now, rng=rng)

    async def _fail_and_retry(
        self,
        query: str,
        args: tuple[Any, ...],
        default_policy: RetryPolicy,
        *,
        now: datetime | None,
        rng: random.Random | None,
        backoff: bool = True,
    ) -> FailureOutcome:
        """Run a query returning failed rows, and schedule their retries, in one transaction."""
        outcome = FailureOutcome()
        async with self._connection() as conn, conn.transaction():
            rows = await _fetch_on(conn, query, *args)
            await self._schedule_retries(conn, rows, default_policy, now, rng, outcome,
                                         backoff=backoff)
        return outcome

    async def _schedule_retries(
        self,
        conn: asyncpg.Connection,
        failed_rows: Sequence[Mapping[str, Any]],
        default_policy: RetryPolicy,
        now: datetime | None,
        rng: random.Random | None,
        outcome: FailureOutcome,
        *,
        backoff: bool = True,
    ) -> None:
        if not failed_rows:
            return
        base = now or await conn.fetchval("SELECT now()")
        retries: list[Transition] = []
        for row in failed_rows:
            counted = row["attempt"] - row["released"]
            if retries_remain(counted, row["max_retries"]):
                policy = _policy_for(row["retry_policy"], default_policy)
                run_at = policy.next_run_at(counted, base, rng) if backoff else base
                retries.append(Transition(row["id"], JobStatus.FAILED, JobStatus.SCHEDULED,
                                          reason="retry", run_at=run_at))
                outcome.retried[row["id"]] = run_at
            else:
                outcome.terminal.append(row["id"])
        if retries:
            await _fetch_on(conn, "job_transition_many", *_transition_args(retries), now)

    async def promote_ready(
        self, queues: Sequence[str], *, now: datetime | None = None, sealed: bool = False,
        limit: int = 1000,
    ) -> list[int]:
        """`pending -> scheduled` for due jobs whose dependencies all completed."""
        rows = await self._fetch("job_promote_ready", list(queues), now, sealed, limit)
        return [r["id"] for r in rows]

    async def any_waiting(self) -> bool:
        """Whether any pending job waits on dependencies (cheap: a partial index)."""
        rows = await self._fetch("job_waiting_exists")
        return bool(rows[0][0])

    async def cancel_orphans(self, *, now: datetime | None = None, limit: int = 1000) -> list[int]:
        """Cancel pending jobs whose dependency failed for good or was cancelled, down the DAG."""
        cancelled: list[int] = []
        while True:
            rows = await self._fetch("job_cancel_orphans", now, limit)
            if not rows:
                return cancelled
            cancelled.extend(r["id"] for r in rows)

    async def next_due(
        self, queues: Sequence[str], *, now: datetime | None = None
    ) -> datetime | None:
        """When the next waiting job of these queues becomes due, if any."""
        rows = await self._fetch("job_next_due", list(queues), now)
        value: datetime | None = rows[0][0] if rows else None
        return value


async def _fetch_on(db: Executor, query: str, *args: Any) -> list[asyncpg.Record]:
    """Run a named query on a pool or connection, translating our database errors."""
    try:
        rows: list[asyncpg.Record] = await db.fetch(QUERIES[query], *args)
    except asyncpg.PostgresError as exc:
        mapped = translate_error(exc)
        if mapped is not None:
            raise mapped from exc
        raise
    return rows


def _encode_json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _transition_args(transitions: Sequence[Transition]) -> tuple[list[Any], ...]:
    return (
        [t.job_id for t in transitions],
        [t.from_status.value for t in transitions],
        [t.to_status.value for t in transitions],
        [t.attempt for t in transitions],
        [t.lease_owner for t in transitions],
        [t.reason for t in transitions],
        # Results go as JSON text: a list result inside a jsonb[] parameter
        # would be read as another array dimension.
        [None if t.result is None else _encode_json(t.result) for t in transitions],
        [t.error for t in transitions],
        [t.run_at for t in transitions],
    )
