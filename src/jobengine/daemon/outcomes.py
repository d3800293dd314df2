"""The outcome writer: actors hand in results, the writer records them in batches.

An actor does not wait for its own write: it hands the outcome over and frees
its slot, and the writer flushes everything that arrived within a few
milliseconds in one call of the database's write path per kind of outcome
(`finish_v1`, `fail_v1` with the retry decided here, `release_v1`).

Until an outcome is written the job is still `running` with this daemon's
lease, which keeps being renewed; if the daemon dies first, the lease
expires and the reaper gives the job another attempt. So batching costs no
guarantee, and a refused write (the job moved on: cancelled, reaped and
re-claimed) is reported, never forced. A row that another transaction holds
locked is not waited for: its outcome goes back in the queue.

A write whose connection was lost before the COMMIT's answer came back (a
failover, a network cut) may or may not have landed. Such outcomes are
marked `uncertain` and, before anything is written again, read back
(`attempt_ends`: the attempt's first transition out of `running`, and the
lease): written by us, moved on, or still ours and so written again. Never a
blind retry.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus

from jobengine import metrics
from jobengine.domain.models import Job
from jobengine.domain.retry import RetryPolicy, policy_for, retry_delay
from jobengine.domain.status import JobStatus
from jobengine.store import AttemptEnd, Completion, Failure, JobStore, Written

log = structlog.get_logger("jobengine.outcomes")


@dataclass(slots=True)
class Outcome:
    """How one attempt ended, to be recorded."""

    job: Job
    to_status: JobStatus  # completed, failed, or scheduled (given back at shutdown)
    reason: str
    result: Any = None
    error: str | None = None
    #: a write of it was sent and its COMMIT went unanswered: read back first
    uncertain: bool = False


@dataclass(slots=True)
class FlushReport:
    """What one flush wrote."""

    written: list[Outcome] = field(default_factory=list)
    refused: list[Outcome] = field(default_factory=list)  # the job moved on: dropped
    busy: list[Outcome] = field(default_factory=list)  # row locked elsewhere: queued again
    retried: dict[int, datetime] = field(default_factory=dict)  # job id -> next run_at


class OutcomeWriter:
    """Buffers outcomes and writes them in batches (`run` is the flushing loop)."""

    def __init__(
        self,
        store: JobStore,
        owner: str,
        retry_default: RetryPolicy,
        *,
        flush_delay: float = 0.002,
        max_batch: int = 1000,
        on_flush: Callable[[FlushReport], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._owner = owner
        self._retry_default = retry_default
        self._flush_delay = flush_delay
        self._max_batch = max_batch
        self._on_flush = on_flush
        self._rng = rng
        self._busy_wait = 0.05
        self._pending: list[Outcome] = []
        # being written right now (by a flush, or by the claimer with its claim)
        self._in_flight: list[Outcome] = []
        self._arrived = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()

    def submit(self, outcome: Outcome) -> None:
        """Queue an outcome for the next flush (never blocks)."""
        self._pending.append(outcome)
        self._idle = anyio.Event() if self._idle.is_set() else self._idle
        self._arrived.set()

    @property
    def unwritten(self) -> dict[int, int]:
        """Jobs whose outcome is not written yet: {id: attempt} (their leases still matter)."""
        return {o.job.id: o.job.attempt for o in (*self._pending, *self._in_flight)}

    def _requeue(self, outcomes: Sequence[Outcome]) -> None:
        """Put outcomes whose write failed back at the front of the queue."""
        self._forget(outcomes)
        self._pending[:0] = outcomes
        self._arrived.set()

    def _forget(self, outcomes: Sequence[Outcome]) -> None:
        gone = {id(o) for o in outcomes}
        self._in_flight = [o for o in self._in_flight if id(o) not in gone]

    async def wait_idle(self) -> None:
        """Return once everything submitted so far has been written (or refused)."""
        await self._idle.wait()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Flush batches until cancelled; a failed write is retried with backoff."""
        task_status.started()
        backoff = 0.05
        while True:
            if not self._pending:
                # Only this loop replaces the event (whoever queues sets the
                # current one), so a wake-up can never land on a stale event.
                await self._arrived.wait()
                self._arrived = anyio.Event()
                continue
            # Let the outcomes of jobs finishing together join one statement.
            if len(self._pending) < self._max_batch:
                await anyio.sleep(self._flush_delay)
            try:
                report = await self.flush()
                backoff = 0.05
                if report.busy and not (report.written or report.refused):
                    # Only rows another transaction holds locked are left:
                    # give it a moment rather than ask again at once.
                    await anyio.sleep(self._busy_wait)
            except (OSError, TimeoutError) as exc:
                log.warning("outcome.write_failed", error=str(exc), retry_in=backoff)
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception as exc:
                # asyncpg's connection errors are not all OSErrors; keep the
                # outcomes and try again rather than lose them.
                log.warning("outcome.write_failed", error=repr(exc), retry_in=backoff)
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def flush(self) -> FlushReport:
        """Write what is pending now; outcomes stay queued if the write fails."""
        batch = self._take_batch()
        report = FlushReport()
        if not batch:
            self._settle()
            return report
        self._in_flight.extend(batch)
        try:
            # Shielded: a flush that started is finished even during shutdown,
            # so an outcome is either written or still queued, never half-known.
            with anyio.CancelScope(shield=True):
                await self._write(batch, report)
        except BaseException:
            for o in batch:
                o.uncertain = True
            self._requeue(batch)
            raise
        self._forget(batch)
        if report.busy:
            # Rows another transaction holds locked: not refused, not written.
            # They go back in the queue for the next flush.
            self._requeue(report.busy)
        self._settle()
        if self._on_flush is not None:
            self._on_flush(report)
        return report

    def _take_batch(self) -> list[Outcome]:
        """The next batch: at most one outcome per job (the database keys writes by job)."""
        batch: list[Outcome] = []
        later: list[Outcome] = []
        seen: set[int] = set()
        for o in self._pending:
            if len(batch) < self._max_batch and o.job.id not in seen:
                seen.add(o.job.id)
                batch.append(o)
            else:
                later.append(o)
        self._pending = later
        return batch

    def _settle(self) -> None:
        if not self._pending and not self._in_flight:
            self._idle.set()

    async def _resolve(self, batch: Sequence[Outcome], results: dict[tuple[int, int], Written]
                       ) -> list[Outcome]:
        """Read back the uncertain outcomes; the ones still to write (the rest go in `results`)."""
        uncertain = [o for o in batch if o.uncertain]
        if not uncertain:
            return list(batch)
        ends = await self._store.attempt_ends(
            self._owner, [(o.job.id, o.job.attempt) for o in uncertain])
        to_write = [o for o in batch if not o.uncertain]
        for o in uncertain:
            key = (o.job.id, o.job.attempt)
            end = ends.get(key)
            if end is not None and end.still_ours:
                o.uncertain = False
                to_write.append(o)  # the lost write did not land
                continue
            landed = end is not None and _ours(o, end)
            results[key] = Written.DONE if landed else Written.MOVED
            log.info("outcome.resolved", job_id=o.job.id, attempt=o.job.attempt,
                     outcome=o.to_status.value, landed=landed,
                     ended_as=end.ended_as if end else None)
        return to_write

    async def _write(self, batch: Sequence[Outcome], report: FlushReport) -> None:
        results: dict[tuple[int, int], Written] = {}
        by_status: dict[JobStatus, list[Outcome]] = {}
        for o in await self._resolve(batch, results):
            by_status.setdefault(o.to_status, []).append(o)
        if done := by_status.get(JobStatus.COMPLETED):
            results.update(await self._store.finish(
                self._owner, [Completion(o.job.id, o.job.attempt, o.result) for o in done]))
        if given_back := by_status.get(JobStatus.SCHEDULED):
            results.update(await self._store.release(
                self._owner, [(o.job.id, o.job.attempt) for o in given_back]))
        if failed := by_status.get(JobStatus.FAILED):
            written = await self._store.fail(self._owner, [self._failure(o) for o in failed])
            for key, result in written.items():
                results[key] = result.written
                if result.retry_at is not None:
                    report.retried[key[0]] = result.retry_at
        for o in batch:
            outcome = results.get((o.job.id, o.job.attempt), Written.MOVED)
            if outcome is Written.DONE:
                report.written.append(o)
            elif outcome is Written.BUSY:
                report.busy.append(o)
            else:
                report.refused.append(o)
        self._report(report)

    def _failure(self, o: Outcome) -> Failure:
        """The failure to record, with the retry decision the domain makes for it."""
        job = o.job
        delay = retry_delay(
            attempt=job.attempt, releases=job.releases, max_retries=job.max_retries,
            policy=policy_for(job.retry_policy, self._retry_default), rng=self._rng,
        )
        return Failure(job.id, job.attempt, o.error or "failed", o.reason, delay)

    def _report(self, report: FlushReport) -> None:
        if report.refused:
            metrics.FENCED_WRITES.inc(len(report.refused))
            for o in report.refused:
                log.warning(
                    "outcome.refused", job_id=o.job.id, attempt=o.job.attempt,
                    outcome=o.to_status.value,
                    reason="the job moved on (cancelled, or reaped and re-claimed)",
                )



def _ours(o: Outcome, end: AttemptEnd) -> bool:
    """Whether the attempt's recorded end is this outcome (rather than a reaper's or a cancel).

    Only the lease holder completes a job or gives it back; a failure is ours
    when its reason is ours too (the reaper's is `lease_expired`). A retried
    failure's first transition is `running -> failed`, as the outcome's.
    """
    if end.ended_as != o.to_status.value:
        return False
    return o.to_status is not JobStatus.FAILED or end.ended_why == o.reason
