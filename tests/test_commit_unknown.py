"""An outcome whose COMMIT went unanswered is read back, never blindly written again.

The store below loses the connection at the worst moment on purpose: after
the database committed the write (or before it did), the caller sees only a
lost connection, as in a failover during COMMIT.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from jobengine.daemon import from_callables, run_daemon
from jobengine.daemon.outcomes import Outcome, OutcomeWriter
from jobengine.domain import JobSpec, JobStatus, RetryPolicy
from jobengine.store import AttemptKey, ClaimBatch, Completion, JobStore, Written
from tests.daemon_helpers import config, history, insert, wait_status

pytestmark = pytest.mark.anyio


class LosesTheAnswer(JobStore):
    """A store whose next `finish` loses the connection after (or before) it committed."""

    def __init__(self, pool: asyncpg.Pool, *, after_commit: bool) -> None:
        super().__init__(pool)
        self.after_commit = after_commit
        self.finish_calls = 0
        self.lose_next = True

    async def finish(self, owner: str, completions: Sequence[Completion]) -> dict[AttemptKey, Written]:
        self.finish_calls += 1
        if self.lose_next:
            self.lose_next = False
            if self.after_commit:
                await super().finish(owner, completions)
            raise asyncpg.exceptions.ConnectionDoesNotExistError(
                "connection was closed in the middle of operation")
        return await super().finish(owner, completions)


async def claimed(store: JobStore, owner: str) -> Any:
    await store.insert(JobSpec(kind="k"))
    await store.db.execute("UPDATE jobengine.jobs SET status = 'scheduled'")
    jobs = await store.claim(owner=owner, queues=["default"], kinds=["k"], limit=1,
                             lease_ttl=timedelta(seconds=30))
    assert len(jobs) == 1
    return jobs[0]


async def completions(pool: asyncpg.Pool, job_id: int) -> int:
    n: int = await pool.fetchval(
        "SELECT count(*) FROM jobengine.job_history WHERE job_id = $1 AND to_status = 'completed'",
        job_id)
    return n


@pytest.mark.parametrize("after_commit", [True, False], ids=["landed", "did-not-land"])
async def test_an_unanswered_commit_is_resolved_by_reading_the_job_back(
    pool: asyncpg.Pool, after_commit: bool
) -> None:
    store = LosesTheAnswer(pool, after_commit=after_commit)
    job = await claimed(store, "d1")
    writer = OutcomeWriter(store, "d1", RetryPolicy())
    writer.submit(Outcome(job, JobStatus.COMPLETED, "completed", result={"ok": 1}))
    with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError):
        await writer.flush()
    assert writer.unwritten == {job.id: job.attempt}  # kept, not lost
    report = await writer.flush()
    assert [o.job.id for o in report.written] == [job.id]
    assert report.refused == []
    # Landed: read back and not sent again. Not landed: still ours, so written now.
    assert store.finish_calls == (1 if after_commit else 2)
    assert await completions(pool, job.id) == 1
    assert await pool.fetchval("SELECT result FROM jobengine.jobs WHERE id = $1", job.id) == {"ok": 1}


async def test_an_unanswered_commit_of_a_job_that_moved_on_is_refused(pool: asyncpg.Pool) -> None:
    store = LosesTheAnswer(pool, after_commit=False)
    job = await claimed(store, "d1")
    writer = OutcomeWriter(store, "d1", RetryPolicy())
    writer.submit(Outcome(job, JobStatus.COMPLETED, "completed"))
    with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError):
        await writer.flush()
    await store.cancel(job.id)  # meanwhile an operator cancelled it
    report = await writer.flush()
    assert [o.job.id for o in report.refused] == [job.id]
    assert store.finish_calls == 1  # read back: not ours any more, nothing sent
    assert await pool.fetchval("SELECT status::text FROM jobengine.jobs WHERE id = $1",
                               job.id) == "cancelled"


async def test_a_claim_whose_commit_went_unanswered_is_read_back_and_its_jobs_run(
    db_dsn: str, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_claim = JobStore.claim_batch
    lost: list[int] = []

    async def claim_then_lose_the_answer(self: JobStore, **kw: Any) -> ClaimBatch:
        batch = await real_claim(self, **kw)
        if batch.jobs and not lost:
            lost.extend(j.id for j in batch.jobs)
            raise asyncpg.exceptions.ConnectionDoesNotExistError(
                "connection was closed in the middle of operation")
        return batch

    monkeypatch.setattr(JobStore, "claim_batch", claim_then_lose_the_answer)
    ran: list[tuple[int, int]] = []
    # A lease of 60 s: a job left to expire would not run again within this test.
    async with run_daemon(config(lease_ttl=60.0), db_dsn,
                          handlers=from_callables({"k": lambda job: ran.append((job.id, job.attempt))})):
        job_id = await insert(pool, "k")
        await wait_status(pool, job_id, "completed", within=20)
    assert lost == [job_id]
    assert ran == [(job_id, 1)]  # the claim had landed: run at that attempt, not claimed again
    assert [step[:2] for step in await history(pool, job_id)] == [
        (None, "pending"), ("pending", "scheduled"), ("scheduled", "running"),
        ("running", "completed")]
