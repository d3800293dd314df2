"""The daemon's write path: every status change, through the database's versioned functions.

Each method is one call of a `*_v1` SQL function (`sql/migrations/0003_guarantees.sql`),
batched. Writers name what they expect (the attempt and the lease owner); the
database answers per attempt:

- `Written.DONE`: the change was made;
- `Written.BUSY`: someone else holds the row locked (an app's open
  transaction, say); nothing was waited for, nothing changed: try again;
- `Written.MOVED`: the job is no longer this owner's attempt (cancelled,
  reaped, re-claimed): the outcome must be dropped, never forced.

Every status change is counted here, where it is written
(`jobengine_transitions_total`), from what the database says it did.
Decisions are made in `jobengine.domain` (whether and when a failed attempt
is retried: `retry_delay`) and written by the database in the same call as the
failure. Times come from the database's clock.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import msgspec

from jobengine.domain.models import Job
from jobengine.domain.retry import RetryPolicy, policy_for, retry_delay
from jobengine.metrics import count_status_change
from jobengine.store.executor import Executor, connection_of, fetch_on
from jobengine.store.records import job_from_row

#: (job id, attempt): one attempt of one job, as daemons hold them.
AttemptKey = tuple[int, int]

_encode = msgspec.json.Encoder().encode


class Written(StrEnum):
    """What the database did with one requested change (see the module doc)."""

    DONE = "done"
    BUSY = "busy"
    MOVED = "moved"


@dataclass(frozen=True, slots=True)
class AttemptEnd:
    """How one attempt ended, as the database has it (see `Lifecycle.attempt_ends`)."""

    #: still running under the asking owner's lease: no outcome of it landed
    still_ours: bool
    #: the status its first transition out of `running` went to, and that one's reason
    ended_as: str | None = None
    ended_why: str | None = None


#: A place in the ledger's gap-free order (transaction id as text, row id):
#: where a DAG pass last read what changed.
DagCursor = tuple[str, int]


@dataclass(frozen=True, slots=True)
class DagChanges:
    """What changed in the DAG's terms since a cursor (see `Lifecycle.dag_changes`)."""

    cursor: DagCursor
    #: jobs that completed, failed or were cancelled: their dependents may move
    ended: list[int]
    #: jobs created: they may be ready already, or their dependency failed
    created: list[int]
    #: more rows than asked for: the caller makes a whole pass instead
    more: bool
    #: rows remain that the next look will read (their transactions committed
    #: while an older one still ran)
    behind: bool


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished attempt to record as `running -> completed`."""

    job_id: int
    attempt: int
    result: Any = None


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed attempt to record as `running -> failed` (then `-> scheduled` to retry).

    `retry_delay` is the decision (`jobengine.domain.retry_delay`): seconds
    until the next attempt, or None for failed for good.
    """

    job_id: int
    attempt: int
    error: str
    reason: str = "error"
    retry_delay: float | None = None


@dataclass(frozen=True, slots=True)
class FailResult:
    """What became of one failure: written or not, and when its retry is due."""

    written: Written
    retry_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ClaimBatch:
    """What one claim took, and when it looked (by the database's clock)."""

    jobs: list[Job]
    #: the claim statement's time: limits and due times were judged from here on
    at: datetime


@dataclass(slots=True)
class ReapOutcome:
    """Expired leases failed by one reaper pass, and what their retry policy decided."""

    retried: dict[int, datetime] = field(default_factory=dict)  # job id -> next run_at
    terminal: list[int] = field(default_factory=list)


class Lifecycle:
    """The status changes a daemon makes; mixed into `JobStore`."""

    _db: Executor

    async def claim(
        self,
        *,
        owner: str,
        queues: Sequence[str],
        kinds: Sequence[str],
        limit: int,
        lease_ttl: timedelta,
        sealed: bool = False,
    ) -> list[Job]:
        """Claim up to `limit` runnable jobs (`-> running`) with a lease held by `owner`."""
        if limit <= 0 or not kinds:
            return []
        batch = await self.claim_batch(owner=owner, queues=queues, kinds=kinds, limit=limit,
                                       lease_ttl=lease_ttl, sealed=sealed)
        return batch.jobs

    async def claim_batch(
        self,
        *,
        owner: str,
        queues: Sequence[str],
        kinds: Sequence[str],
        limit: int,
        lease_ttl: timedelta,
        sealed: bool = False,
    ) -> ClaimBatch:
        """`claim`, with the database's time of it: what a daemon asks `held` since."""
        rows = await fetch_on(self._db, "lifecycle_claim", owner, list(queues), list(kinds),
                              limit, lease_ttl, sealed)
        # (one row with no job when nothing was taken: it still carries the time)
        jobs = [job_from_row(r) for r in rows if r["id"] is not None]
        changes: Counter[tuple[str, str]] = Counter()
        for job in jobs:
            if job.scheduled_at == job.started_at:  # claimed straight from pending: two steps
                changes[(job.kind, "scheduled")] += 1
            changes[(job.kind, "running")] += 1
        for (kind, to_status), n in changes.items():
            count_status_change(kind, to_status, n)
        return ClaimBatch(jobs=jobs, at=rows[0]["claim_at"])

    async def adoptable(self, owner: str, known: Sequence[AttemptKey]) -> list[Job]:
        """Jobs running under `owner`'s lease at attempts other than `known`: what a claim
        whose COMMIT went unanswered took after all (read back, not claimed again)."""
        rows = await fetch_on(self._db, "lifecycle_adoptable", owner,
                              [k[0] for k in known], [k[1] for k in known])
        return [job_from_row(r) for r in rows]

    async def finish(
        self, owner: str, completions: Sequence[Completion]
    ) -> dict[AttemptKey, Written]:
        """`running -> completed` for each attempt, with its result."""
        if not completions:
            return {}
        rows = await fetch_on(
            self._db, "lifecycle_finish", owner,
            [c.job_id for c in completions], [c.attempt for c in completions],
            # Results go as JSON text: a list result inside a jsonb[] parameter
            # would be read as another array dimension.
            [None if c.result is None else _encode(c.result).decode() for c in completions],
        )
        return _written(rows, "completed")

    async def fail(self, owner: str, failures: Sequence[Failure]) -> dict[AttemptKey, FailResult]:
        """`running -> failed`, and `-> scheduled` where a retry delay is given, in one call."""
        if not failures:
            return {}
        rows = await fetch_on(
            self._db, "lifecycle_fail", owner,
            [f.job_id for f in failures], [f.attempt for f in failures],
            [f.reason for f in failures], [f.error for f in failures],
            [f.retry_delay for f in failures],
        )
        for r in rows:
            if r["outcome"] == Written.DONE:
                count_status_change(r["kind"], "failed")
                if r["retry_at"] is not None:
                    count_status_change(r["kind"], "scheduled")
        return {(r["id"], r["attempt"]): FailResult(Written(r["outcome"]), r["retry_at"])
                for r in rows}

    async def release(
        self, owner: str, attempts: Sequence[AttemptKey]
    ) -> dict[AttemptKey, Written]:
        """`running -> scheduled` (given back at shutdown; not counted against max_retries)."""
        if not attempts:
            return {}
        rows = await fetch_on(self._db, "lifecycle_release", owner,
                              [a[0] for a in attempts], [a[1] for a in attempts])
        return _written(rows, "scheduled")

    async def attempt_ends(
        self, owner: str, attempts: Sequence[AttemptKey]
    ) -> dict[AttemptKey, AttemptEnd]:
        """Read back how these attempts ended: for outcomes whose commit is unknown."""
        if not attempts:
            return {}
        rows = await fetch_on(self._db, "lifecycle_attempt_ends", owner,
                              [a[0] for a in attempts], [a[1] for a in attempts])
        return {(r["id"], r["attempt"]): AttemptEnd(r["still_ours"], r["ended_as"], r["ended_why"])
                for r in rows}

    async def renew(
        self, owner: str, held: Iterable[AttemptKey], lease_ttl: timedelta
    ) -> dict[AttemptKey, Written]:
        """Extend the leases `owner` still holds (rows locked by others: `BUSY`, not waited for)."""
        attempts = list(held)
        if not attempts:
            return {}
        rows = await fetch_on(self._db, "lifecycle_renew", owner,
                              [a[0] for a in attempts], [a[1] for a in attempts], lease_ttl)
        return {(r["id"], r["attempt"]): Written(r["outcome"]) for r in rows}  # (not a transition)

    async def reap(
        self, default_policy: RetryPolicy, *, limit: int = 1000, rng: random.Random | None = None
    ) -> ReapOutcome:
        """Fail running jobs whose lease expired (`lease_expired`) and retry what may be.

        A rescued job's next attempt is due at once: its worker died, the job
        did not fail, and waiting out a backoff would only delay the rescue.
        """
        outcome = ReapOutcome()
        async with connection_of(self._db) as conn, conn.transaction():
            rows = await fetch_on(conn, "lifecycle_reap_candidates", limit)
            if not rows:
                return outcome
            delays = [_decide(r, default_policy, rng, backoff=False) for r in rows]
            done = await fetch_on(conn, "lifecycle_reap", [r["id"] for r in rows],
                                  [r["attempt"] for r in rows], [r["lease_owner"] for r in rows],
                                  delays)
        for r in done:
            if r["outcome"] != Written.DONE:
                continue
            count_status_change(r["kind"], "failed")
            if r["retry_at"] is not None:
                count_status_change(r["kind"], "scheduled")
                outcome.retried[r["id"]] = r["retry_at"]
            else:
                outcome.terminal.append(r["id"])
        return outcome

    async def retry_failed(
        self, default_policy: RetryPolicy, *, limit: int = 1000, rng: random.Random | None = None
    ) -> dict[int, datetime]:
        """Schedule retries for failed jobs with attempts left (failed by hand); {id: run_at}.

        The daemon records its own failures and their retries together, so
        this only finds jobs failed by an `UPDATE ... SET status = 'failed'`.
        """
        async with connection_of(self._db) as conn, conn.transaction():
            rows = await fetch_on(conn, "lifecycle_retry_candidates", limit)
            if not rows:
                return {}
            delays = [_decide(r, default_policy, rng) for r in rows]
            done = await fetch_on(conn, "lifecycle_retry", [r["id"] for r in rows], delays, "retry")
        retried = [r for r in done if r["retried"]]
        for r in retried:
            count_status_change(r["kind"], "scheduled")
        return {r["id"]: r["run_at"] for r in retried}

    async def promote(
        self, queues: Sequence[str], *, sealed: bool = False, limit: int = 1000
    ) -> list[int]:
        """`pending -> scheduled` for due jobs whose dependencies all completed."""
        rows = await fetch_on(self._db, "lifecycle_promote", list(queues), limit, sealed)
        for r in rows:
            count_status_change(r["kind"], "scheduled")
        return [r["id"] for r in rows]

    async def dag_cursor(self) -> DagCursor:
        """The ledger's cursor of now: a whole pass made after it sees everything before it."""
        return (await self.dag_changes(None)).cursor

    async def dag_changes(self, cursor: DagCursor | None, *, limit: int = 5000) -> DagChanges:
        """The jobs that ended and the jobs created since `cursor`, from the ledger.

        Only rows of transactions that have ended are read, in (transaction,
        row) order, so a cursor never passes a row that is still to come."""
        tx, row = cursor if cursor is not None else (None, None)
        r = (await fetch_on(self._db, "lifecycle_dag_changes", tx, row, limit))[0]
        return DagChanges((r["tx_id"], r["id"]), list(r["ended"]), list(r["created"]),
                          r["more"], r["behind"])

    async def dag_moves(
        self, queues: Sequence[str], ended: Sequence[int], created: Sequence[int], *,
        sealed: bool = False, limit: int = 1000,
    ) -> tuple[list[int], list[int]]:
        """`cascade` and `promote` among the dependents of `ended` and the jobs `created`
        alone, and the cascade on down from the jobs it cancels: (cancelled, promoted)."""
        cancelled: list[int] = []
        promoted: list[int] = []
        ended, created = list(ended), list(created)
        while ended or created:
            rows = await fetch_on(self._db, "lifecycle_dag_moves", list(queues), ended, created,
                                  limit, sealed)
            now_cancelled: list[int] = []
            for r in rows:
                count_status_change(r["kind"], r["to_status"])
                (now_cancelled if r["to_status"] == "cancelled" else promoted).append(r["id"])
            cancelled.extend(now_cancelled)
            # (a full batch may have left some behind: ask again among the same)
            full = len(now_cancelled) >= limit
            ended, created = (now_cancelled + ended, created) if full else (now_cancelled, [])
        return cancelled, promoted

    async def cascade(self, *, limit: int = 1000) -> list[int]:
        """Cancel pending jobs whose dependency failed for good or was cancelled, down the DAG."""
        cancelled: list[int] = []
        while True:
            rows = await fetch_on(self._db, "lifecycle_cascade", limit)
            if not rows:
                return cancelled
            for r in rows:
                count_status_change(r["kind"], "cancelled")
            cancelled.extend(r["id"] for r in rows)


def _decide(
    row: Any, default: RetryPolicy, rng: random.Random | None, *, backoff: bool = True
) -> float | None:
    return retry_delay(
        attempt=row["attempt"], releases=row["released"], max_retries=row["max_retries"],
        policy=policy_for(row["retry_policy"], default), backoff=backoff, rng=rng,
    )


def _written(rows: Sequence[Any], to_status: str) -> dict[AttemptKey, Written]:
    """Each attempt's answer; the changes made are counted (jobengine_transitions_total)."""
    written = {}
    changed: Counter[str] = Counter()
    for r in rows:
        outcome = written[(r["id"], r["attempt"])] = Written(r["outcome"])
        if outcome is Written.DONE:
            changed[r["kind"]] += 1
    for kind, n in changed.items():
        count_status_change(kind, to_status, n)
    return written
