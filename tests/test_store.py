"""The store: reads, the versioned write path, claims, leases, retries, the DAG.

Times come from the database's clock: jobs are inserted due now, and lease
expiry is reached with a short lease and a polled condition, never a wait.
"""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from jobengine.domain import (
    DuplicateJob,
    IllegalTransition,
    InvalidJob,
    Job,
    JobNotFound,
    JobSpec,
    JobStatus,
    RetryPolicy,
    RetryStrategy,
    retry_delay,
)
from jobengine.store import Completion, Failure, JobStore, Written
from tests.dbutil import wait_for

pytestmark = pytest.mark.anyio

NO_JITTER = RetryPolicy(strategy=RetryStrategy.FIXED, base_delay=5, max_delay=60, jitter=False)
TTL = timedelta(seconds=30)


@pytest.fixture
def store(tx: asyncpg.Connection) -> JobStore:
    return JobStore(tx)


async def claim_one(store: JobStore, owner: str = "d1", kinds: tuple[str, ...] = ("email",),
                    ttl: timedelta = TTL) -> Job:
    jobs = await store.claim(owner=owner, queues=["default"], kinds=list(kinds), limit=1,
                             lease_ttl=ttl)
    assert len(jobs) == 1
    return jobs[0]


async def expire(store: JobStore, job: Job) -> None:
    """Until the job's (short) lease has run out by the database's clock."""

    async def probe() -> bool:
        rows = await store.db.fetch(
            "SELECT 1 FROM jobengine.jobs WHERE id = $1 AND lease_expires_at < statement_timestamp()",
            job.id)
        return bool(rows)

    await wait_for(probe, message=f"job {job.id}'s lease to expire")


def fail(job: Job, error: str = "E: x", policy: RetryPolicy = NO_JITTER) -> Failure:
    """A failed attempt of `job`, with the domain's retry decision."""
    delay = retry_delay(attempt=job.attempt, releases=job.releases, max_retries=job.max_retries,
                        policy=policy)
    return Failure(job.id, job.attempt, error, retry_delay=delay)


# -- insert and read -------------------------------------------------------------


async def test_insert_and_get(store: JobStore) -> None:
    job, created = await store.insert(JobSpec(kind="email", payload={"to": "a@b"}, priority=3))
    assert created
    assert job.status is JobStatus.PENDING
    assert job.payload == {"to": "a@b"}
    got = await store.get(job.id)
    assert got.id == job.id
    assert got.priority == 3
    assert got.attempt == 0
    history = await store.history(job.id)
    assert [(h.from_status, h.to_status, h.actor) for h in history] == [
        (None, JobStatus.PENDING, "tests")
    ]
    timeline = await store.timeline(job.id)
    assert [e.event_type for e in timeline] == ["job.created"]
    assert timeline[0].envelope.job_id == job.id


async def test_unknown_job_is_not_found(store: JobStore) -> None:
    with pytest.raises(JobNotFound, match="job 424242 not found"):
        await store.get(424242)
    with pytest.raises(JobNotFound):
        await store.history(424242)
    with pytest.raises(JobNotFound):
        await store.cancel(424242)


async def test_idempotency_key_returns_the_first_job(store: JobStore) -> None:
    first, created = await store.insert(JobSpec(kind="email", idempotency_key="k1"))
    again, created_again = await store.insert(
        JobSpec(kind="email", idempotency_key="k1", payload={"other": True})
    )
    assert created
    assert not created_again
    assert again.id == first.id
    assert again.payload == {}
    assert len(await store.list_jobs()) == 1


async def test_raw_duplicate_key_maps_to_duplicate_job(tx: asyncpg.Connection) -> None:
    from jobengine.store.records import translate_error

    await JobStore(tx).insert(JobSpec(kind="email", idempotency_key="dup"))
    with pytest.raises(asyncpg.UniqueViolationError) as err:
        async with tx.transaction():
            await tx.execute("INSERT INTO jobengine.jobs (kind, idempotency_key) VALUES ('x', 'dup')")
    mapped = translate_error(err.value)
    assert isinstance(mapped, DuplicateJob)
    assert mapped.key == "dup"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (JobSpec(kind="bad kind"), "kind"),
        (JobSpec(kind="email", queue=""), "queue"),
        (JobSpec(kind="email", max_retries=-2), "max_retries"),
        (JobSpec(kind="email", depends_on=[99999]), "depends_on"),
        (JobSpec(kind="email", retry_policy={"strategy": "sometimes"}), "retry_policy"),
        (JobSpec(kind="email", timeout=timedelta(seconds=-1)), "timeout"),
    ],
)
async def test_invalid_jobs_are_refused_naming_the_field(
    tx: asyncpg.Connection, spec: JobSpec, field: str
) -> None:
    store = JobStore(tx)
    with pytest.raises(InvalidJob) as err:
        async with tx.transaction():
            await store.insert(spec)
    assert err.value.field == field
    assert await store.list_jobs() == []


async def test_list_pages_and_filters(store: JobStore) -> None:
    ids = [(await store.insert(JobSpec(kind="a" if i % 2 else "b", queue="q")))[0].id
           for i in range(7)]
    page1 = await store.list_jobs(limit=3)
    page2 = await store.list_jobs(limit=3, after=page1[-1].id)
    page3 = await store.list_jobs(limit=3, after=page2[-1].id)
    assert [j.id for j in page1 + page2 + page3] == ids
    assert [j.id for j in await store.list_jobs(kind="a")] == ids[1::2]
    await store.cancel(ids[0])
    assert [j.id for j in await store.list_jobs(status=JobStatus.CANCELLED)] == [ids[0]]
    assert await store.list_jobs(queue="other") == []
    counts = await store.count_by_status()
    assert counts[JobStatus.CANCELLED] == 1
    assert counts[JobStatus.PENDING] == 6


# -- the write path ----------------------------------------------------------------


async def test_writes_say_per_attempt_what_they_did(store: JobStore) -> None:
    a = (await store.insert(JobSpec(kind="email")))[0]
    b = (await store.insert(JobSpec(kind="email")))[0]
    await store.claim(owner="d1", queues=["default"], kinds=["email"], limit=2, lease_ttl=TTL)
    await store.cancel(b.id)
    done = await store.finish("d1", [Completion(a.id, 1, {"ok": 1}), Completion(b.id, 1)])
    assert done == {(a.id, 1): Written.DONE, (b.id, 1): Written.MOVED}
    assert (await store.get(a.id)).result == {"ok": 1}
    assert (await store.get(b.id)).status is JobStatus.CANCELLED


async def test_stale_worker_cannot_overwrite_a_newer_attempt(store: JobStore) -> None:
    await store.insert(JobSpec(kind="email", max_retries=3))
    first = await claim_one(store, owner="d1", ttl=timedelta(milliseconds=1))
    # d1's lease runs out; the reaper fails it and schedules a retry
    await expire(store, first)
    reaped = await store.reap(NO_JITTER)
    assert list(reaped.retried) == [first.id]
    second = await claim_one(store, owner="d2")
    assert second.attempt == 2
    # d1 comes back and tries to record its outcome: refused, d2's attempt untouched
    late = await store.finish("d1", [Completion(first.id, 1, {"late": True})])
    assert late == {(first.id, 1): Written.MOVED}
    now_job = await store.get(first.id)
    assert (now_job.status, now_job.lease_owner, now_job.attempt, now_job.result) == (
        JobStatus.RUNNING, "d2", 2, None
    )
    # the same owner with an old attempt is refused too
    assert await store.finish("d2", [Completion(first.id, 1)]) == {(first.id, 1): Written.MOVED}
    done = await store.finish("d2", [Completion(first.id, 2, {"ok": 1})])
    assert done == {(first.id, 2): Written.DONE}
    assert (await store.get(first.id)).result == {"ok": 1}


async def test_a_row_locked_elsewhere_is_busy_not_waited_for(db_dsn: str, pool: asyncpg.Pool) -> None:
    store = JobStore(pool)
    a = (await store.insert(JobSpec(kind="email")))[0]
    b = (await store.insert(JobSpec(kind="email")))[0]
    await store.claim(owner="d1", queues=["default"], kinds=["email"], limit=2, lease_ttl=TTL)
    holder = await asyncpg.connect(db_dsn)
    try:
        # an app's open transaction holds one job's row
        await holder.execute("BEGIN")
        await holder.execute("UPDATE jobengine.jobs SET status = 'cancelled' WHERE id = $1", a.id)
        renewed = await store.renew("d1", [(a.id, 1), (b.id, 1)], TTL)
        assert renewed == {(a.id, 1): Written.BUSY, (b.id, 1): Written.DONE}
        done = await store.finish("d1", [Completion(a.id, 1), Completion(b.id, 1)])
        assert done == {(a.id, 1): Written.BUSY, (b.id, 1): Written.DONE}
        await holder.execute("ROLLBACK")
    finally:
        await holder.close()
    assert await store.finish("d1", [Completion(a.id, 1)]) == {(a.id, 1): Written.DONE}


async def test_cancel_and_retry(store: JobStore) -> None:
    job = (await store.insert(JobSpec(kind="email", max_retries=0)))[0]
    cancelled = await store.cancel(job.id)
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.status_reason == "cancelled_by_user"
    with pytest.raises(IllegalTransition, match="cancelled -> cancelled"):
        await store.cancel(job.id)
    with pytest.raises(IllegalTransition, match="cancelled -> scheduled"):
        await store.retry(job.id)

    other = (await store.insert(JobSpec(kind="email", max_retries=0)))[0]
    claimed = await claim_one(store)
    assert claimed.id == other.id
    outcome = await store.fail("d1", [fail(claimed, "ValueError: boom")])
    assert outcome[(other.id, 1)].written is Written.DONE
    assert outcome[(other.id, 1)].retry_at is None
    retried = await store.retry(other.id)
    assert retried.job.status is JobStatus.SCHEDULED
    assert retried.job.status_reason == "operator_retry"
    assert retried.stays_cancelled == []


async def test_an_operator_cancel_of_a_running_job_needs_no_fencing(store: JobStore) -> None:
    job = (await store.insert(JobSpec(kind="email")))[0]
    await claim_one(store)
    cancelled = await store.cancel(job.id, reason="customer asked")
    assert (cancelled.status, cancelled.status_reason) == (JobStatus.CANCELLED, "customer asked")
    assert cancelled.lease_owner is None


# -- claiming ------------------------------------------------------------------------


async def test_claim_takes_a_lease_counts_the_attempt_and_records_both_steps(
    store: JobStore,
) -> None:
    job = (await store.insert(JobSpec(kind="email")))[0]
    claimed = await claim_one(store, owner="d1")
    assert claimed.id == job.id
    assert claimed.status is JobStatus.RUNNING
    assert claimed.attempt == 1
    assert claimed.lease_owner == "d1"
    assert claimed.updated_at is not None
    assert claimed.lease_expires_at == claimed.updated_at + TTL
    history = await store.history(job.id)
    assert [(h.from_status, h.to_status) for h in history] == [
        (None, JobStatus.PENDING),
        (JobStatus.PENDING, JobStatus.SCHEDULED),
        (JobStatus.SCHEDULED, JobStatus.RUNNING),
    ]


async def test_claim_respects_limit_priority_queue_kind_and_time(store: JobStore) -> None:
    low = (await store.insert(JobSpec(kind="email", priority=0)))[0]
    high = (await store.insert(JobSpec(kind="email", priority=5)))[0]
    await store.insert(JobSpec(kind="email", queue="other"))
    await store.insert(JobSpec(kind="sms"))
    later = (await store.get(low.id)).created_at
    assert later is not None
    await store.insert(JobSpec(kind="email", run_at=later + timedelta(hours=1)))
    first = await store.claim(owner="d", queues=["default"], kinds=["email"], limit=1,
                              lease_ttl=TTL)
    assert [j.id for j in first] == [high.id]
    rest = await store.claim(owner="d", queues=["default"], kinds=["email"], limit=10,
                             lease_ttl=TTL)
    assert [j.id for j in rest] == [low.id]
    assert await store.claim(owner="d", queues=["default"], kinds=[], limit=10,
                             lease_ttl=TTL) == []


async def test_sealed_claim_holds_jobs_that_need_the_network(store: JobStore) -> None:
    job = (await store.insert(JobSpec(kind="email", requires_network=True)))[0]
    assert await store.claim(owner="d", queues=["default"], kinds=["email"], limit=5,
                             lease_ttl=TTL, sealed=True) == []
    assert (await store.get(job.id)).status is JobStatus.PENDING
    got = await store.claim(owner="d", queues=["default"], kinds=["email"], limit=5,
                            lease_ttl=TTL)
    assert [j.id for j in got] == [job.id]


# -- leases, the reaper, retries ------------------------------------------------------


async def test_renew_keeps_only_what_is_still_held(store: JobStore) -> None:
    a = (await store.insert(JobSpec(kind="email")))[0]
    b = (await store.insert(JobSpec(kind="email")))[0]
    await store.claim(owner="d1", queues=["default"], kinds=["email"], limit=2, lease_ttl=TTL)
    await store.cancel(b.id)
    before = (await store.get(a.id)).lease_expires_at
    renewed = await store.renew("d1", [(a.id, 1), (b.id, 1)], TTL)
    assert renewed == {(a.id, 1): Written.DONE, (b.id, 1): Written.MOVED}
    after = (await store.get(a.id)).lease_expires_at
    assert before is not None
    assert after is not None
    assert after > before
    assert await store.renew("someone-else", [(a.id, 1)], TTL) == {(a.id, 1): Written.MOVED}
    assert await store.renew("d1", [(a.id, 7)], TTL) == {(a.id, 7): Written.MOVED}


async def test_reaper_fails_expired_leases_and_retries_at_once(store: JobStore) -> None:
    job = (await store.insert(JobSpec(kind="email", max_retries=1)))[0]
    held = await claim_one(store)
    assert (await store.reap(NO_JITTER)).retried == {}  # still held
    assert held.lease_expires_at is not None
    rescued = await claim_one_after_expiry(store, job)
    # a rescue is due at once: the worker died, not the job
    assert "LeaseExpired" in (rescued.last_error or "")
    reasons = [h.reason for h in await store.history(job.id)]
    assert reasons[-3:] == ["lease_expired", "retry", "claimed"]
    # second attempt expires too: no retries left, failed stays terminal
    await expire(store, rescued)
    final = await store.reap(NO_JITTER)
    assert final.terminal == [job.id]
    assert (await store.get(job.id)).status is JobStatus.FAILED


async def claim_one_after_expiry(store: JobStore, job: Job) -> Job:
    """Let the job's short lease lapse, reap it, and claim its next attempt (due at once)."""
    # The first claim held a 30 s lease: take it over with a 1 ms one, as a daemon would
    # after a crash and a restart with a short lease_ttl.
    await store.db.execute(
        "UPDATE jobengine.jobs SET lease_expires_at = statement_timestamp() + interval '1 ms'"
        " WHERE id = $1", job.id)
    await expire(store, job)
    outcome = await store.reap(NO_JITTER)
    retry_at = outcome.retried[job.id]
    after = await store.get(job.id)
    assert after.status is JobStatus.SCHEDULED
    assert after.run_at == retry_at == after.updated_at
    return await claim_one(store, ttl=timedelta(milliseconds=1))


async def test_max_retries_three_runs_at_most_four_times(store: JobStore) -> None:
    job = (await store.insert(JobSpec(kind="email", max_retries=3, retry_policy={
        "strategy": "fixed", "base_delay": 0, "max_delay": 0, "jitter": False})))[0]
    attempts = 0
    while True:
        claimed = await store.claim(owner="d", queues=["default"], kinds=["email"], limit=1,
                                    lease_ttl=TTL)
        if not claimed:
            break
        attempts += 1
        (j,) = claimed
        await store.fail("d", [fail(j, "RuntimeError: no", policy=RetryPolicy(
            strategy=RetryStrategy.FIXED, base_delay=0, jitter=False))])
    assert attempts == 4
    final = await store.get(job.id)
    assert final.status is JobStatus.FAILED
    assert final.attempt == 4
    history = await store.history(job.id)
    assert sum(1 for h in history if h.to_status is JobStatus.SCHEDULED
               and h.from_status is JobStatus.FAILED) == 3


async def test_backoff_follows_the_jobs_policy(store: JobStore) -> None:
    from jobengine.domain import policy_for

    policy = {"strategy": "exponential", "base_delay": 2, "max_delay": 100, "jitter": False}
    job = (await store.insert(JobSpec(kind="email", retry_policy=policy)))[0]
    for delay in [2, 4, 8]:
        (j,) = await store.claim(owner="d", queues=["default"], kinds=["email"], limit=1,
                                 lease_ttl=TTL)
        out = await store.fail("d", [fail(j, policy=policy_for(j.retry_policy, NO_JITTER))])
        failed_at = (await store.get(job.id)).updated_at
        assert failed_at is not None
        assert out[(j.id, j.attempt)].retry_at == failed_at + timedelta(seconds=delay)
        # (make it due now, to claim the next attempt)
        await store.db.execute("UPDATE jobengine.jobs SET run_at = now() WHERE id = $1", job.id)


async def test_shutdown_release_does_not_use_up_retries(store: JobStore) -> None:
    job = (await store.insert(JobSpec(kind="email", max_retries=0)))[0]
    j = await claim_one(store)
    assert await store.release("d1", [(j.id, 1)]) == {(j.id, 1): Written.DONE}
    j2 = await claim_one(store, owner="d2")
    assert j2.attempt == 2
    assert j2.releases == 1
    out = await store.fail("d2", [fail(j2)])
    # one counted attempt with max_retries = 0: terminal, never retried
    assert out[(job.id, 2)].retry_at is None


async def test_hand_failed_job_with_retries_left_is_retried(
    tx: asyncpg.Connection, store: JobStore
) -> None:
    job = (await store.insert(JobSpec(kind="email", max_retries=2)))[0]
    await claim_one(store)
    await tx.execute("UPDATE jobengine.jobs SET status = 'failed' WHERE id = $1", job.id)
    out = await store.retry_failed(NO_JITTER)
    failed_at = (await store.get(job.id)).updated_at
    assert failed_at is not None
    assert out == {job.id: failed_at + timedelta(seconds=5)}
    assert (await store.get(job.id)).status is JobStatus.SCHEDULED


# -- the DAG ---------------------------------------------------------------------------


async def test_promote_waits_for_every_dependency(store: JobStore) -> None:
    a = (await store.insert(JobSpec(kind="email")))[0]
    b = (await store.insert(JobSpec(kind="email")))[0]
    c = (await store.insert(JobSpec(kind="email", depends_on=[a.id, b.id])))[0]
    assert c.id not in await store.promote(["default"])
    for _ in range(2):
        j = await claim_one(store)
        await store.finish("d1", [Completion(j.id, 1)])
    assert await store.promote(["default"]) == [c.id]


async def test_failure_cascades_down_the_dag(store: JobStore) -> None:
    a = (await store.insert(JobSpec(kind="email", max_retries=0)))[0]
    b = (await store.insert(JobSpec(kind="email", depends_on=[a.id])))[0]
    c = (await store.insert(JobSpec(kind="email", depends_on=[b.id])))[0]
    created = (await store.get(a.id)).created_at
    assert created is not None
    unrelated = (await store.insert(JobSpec(kind="email", run_at=created + timedelta(days=1))))[0]
    j = await claim_one(store)
    assert j.id == a.id
    await store.fail("d1", [fail(j)])
    assert await store.cascade() == [b.id, c.id]
    for dependent in (b, c):
        got = await store.get(dependent.id)
        assert got.status is JobStatus.CANCELLED
        assert got.status_reason == "dependency_failed"
    assert "ended failed or cancelled" in ((await store.get(c.id)).last_error or "")
    assert (await store.get(unrelated.id)).status is JobStatus.PENDING
    # retrying the failed job does not bring its dependents back: it says so
    retried = await store.retry(a.id)
    assert retried.stays_cancelled == [b.id, c.id]


async def waiting_behind_a_job_that_never_runs(db: asyncpg.Pool | asyncpg.Connection, n: int) -> int:
    """`n` jobs waiting on one job of a kind nobody claims here; that job's id."""
    never: int = await db.fetchval("INSERT INTO jobengine.jobs (kind) VALUES ('never') RETURNING id")
    await db.execute("INSERT INTO jobengine.jobs (kind, depends_on)"
                     " SELECT 'email', ARRAY[$1::bigint] FROM generate_series(1, $2)", never, n)
    return never


async def rows_read(conn: asyncpg.Connection) -> int:
    """Rows of jobengine.jobs this backend has read (by any scan) since its counts were
    last flushed to the shared statistics: compare two readings in one transaction."""
    n: int = await conn.fetchval(
        "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables"
        " WHERE relid = 'jobengine.jobs'::regclass")
    return n


async def test_a_claim_reads_past_no_job_waiting_on_dependencies(pool: asyncpg.Pool) -> None:
    await waiting_behind_a_job_that_never_runs(pool, 500)  # (in claim order before the rest)
    ready = [(await JobStore(pool).insert(JobSpec(kind="email")))[0].id for _ in range(10)]
    async with pool.acquire() as conn, conn.transaction():
        before = await rows_read(conn)
        jobs = await JobStore(conn).claim(owner="d1", queues=["default"], kinds=["email"],
                                          limit=10, lease_ttl=TTL)
        assert sorted(j.id for j in jobs) == ready
        assert await rows_read(conn) - before <= 50, "the 500 waiting jobs were read"


async def test_a_promoted_job_takes_its_place_by_run_at(pool: asyncpg.Pool) -> None:
    store = JobStore(pool)
    parent = (await store.insert(JobSpec(kind="email")))[0]
    child = (await store.insert(JobSpec(kind="email", depends_on=[parent.id])))[0]
    await store.finish("d1", [Completion((await claim_one(store)).id, 1)])
    later = [(await store.insert(JobSpec(kind="email")))[0].id for _ in range(3)]
    assert await store.promote(["default"]) == [child.id]
    # it waited since it was created, before the later jobs: it comes first
    assert [(await claim_one(store)).id for _ in range(4)] == [child.id, *later]


async def test_a_pass_over_what_changed_moves_only_the_dependents_of_what_ended(
    pool: asyncpg.Pool,
) -> None:
    store = JobStore(pool)
    await waiting_behind_a_job_that_never_runs(pool, 300)
    doomed = (await store.insert(JobSpec(kind="email", max_retries=0)))[0]
    cancelled = (await store.insert(JobSpec(kind="email", depends_on=[doomed.id])))[0]
    done = (await store.insert(JobSpec(kind="email")))[0]
    ready = (await store.insert(JobSpec(kind="email", depends_on=[done.id])))[0]
    cursor = await store.dag_cursor()
    first, second = await claim_one(store), await claim_one(store)
    assert {first.id, second.id} == {doomed.id, done.id}
    await store.finish("d1", [Completion(done.id, 1)])
    await store.fail("d1", [fail(first if first.id == doomed.id else second)])
    changes = await store.dag_changes(cursor)
    assert sorted(changes.ended) == sorted([doomed.id, done.id])
    assert changes.created == []
    assert not changes.more
    async with pool.acquire() as conn, conn.transaction():
        here = JobStore(conn)
        before = await rows_read(conn)
        assert await here.dag_moves(["default"], changes.ended, changes.created) == (
            [cancelled.id], [ready.id])
        after = await rows_read(conn)
        assert after - before <= 30, "the 300 waiting jobs were read"
        # (the whole pass does read them)
        assert await here.promote(["default"]) == []
        assert await rows_read(conn) - after >= 300
    assert (await store.get(cancelled.id)).status_reason == "dependency_failed"
    assert (await store.get(ready.id)).status is JobStatus.SCHEDULED
    # next time: what the pass itself ended (the cancelled job's dependents are next)
    again = await store.dag_changes(changes.cursor)
    assert (again.ended, again.created) == ([cancelled.id], [])


async def test_a_pass_over_what_changed_finds_a_job_created_after_its_dependency_completed(
    pool: asyncpg.Pool,
) -> None:
    store = JobStore(pool)
    parent = (await store.insert(JobSpec(kind="email")))[0]
    await store.finish("d1", [Completion((await claim_one(store)).id, 1)])
    cursor = await store.dag_cursor()
    child = (await store.insert(JobSpec(kind="email", depends_on=[parent.id])))[0]
    changes = await store.dag_changes(cursor)
    assert changes.created == [child.id]
    assert await store.dag_moves(["default"], changes.ended, changes.created) == ([], [child.id])


async def test_what_commits_while_an_older_transaction_runs_is_read_once_it_ends(
    pool: asyncpg.Pool,
) -> None:
    # The cursor never passes a row still to come: rows of a transaction that
    # committed after an older, still open one are left for the next look.
    store = JobStore(pool)
    parent = (await store.insert(JobSpec(kind="email")))[0]
    cursor = await store.dag_cursor()
    async with pool.acquire() as older:
        opened = older.transaction()
        await opened.start()
        await older.execute("SELECT pg_current_xact_id()")  # (it has a transaction id now)
        await store.finish("d1", [Completion((await claim_one(store)).id, 1)])
        early = await store.dag_changes(cursor)
        assert parent.id not in early.ended
        assert early.behind
        await opened.rollback()
    late = await store.dag_changes(early.cursor)
    assert late.ended == [parent.id]
    assert not late.behind


async def test_a_look_at_what_changed_reads_no_ledger_partition_whole(pool: asyncpg.Pool) -> None:
    # (a day's partition not analyzed yet: the planner once read it whole, every pass)
    store = JobStore(pool)
    await pool.execute("INSERT INTO jobengine.jobs (kind) SELECT 'email' FROM generate_series(1, 2000)")
    cursor = await store.dag_cursor()
    await store.insert(JobSpec(kind="email"))
    seq_scans = ("SELECT coalesce(sum(seq_scan), 0) FROM pg_stat_xact_user_tables"
                 " WHERE schemaname = 'jobengine' AND relname LIKE 'ledger%'")
    async with pool.acquire() as conn, conn.transaction():
        before = await conn.fetchval(seq_scans)
        changes = await JobStore(conn).dag_changes(cursor)
        assert len(changes.created) == 1
        assert await conn.fetchval(seq_scans) == before


async def test_more_changes_than_asked_for_say_so(pool: asyncpg.Pool) -> None:
    store = JobStore(pool)
    cursor = await store.dag_cursor()
    for _ in range(3):
        await store.insert(JobSpec(kind="email"))
    assert (await store.dag_changes(cursor, limit=2)).more
    assert not (await store.dag_changes(cursor, limit=4)).more


async def test_next_due(store: JobStore) -> None:
    from datetime import UTC, datetime

    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    assert await store.next_due(["default"], now=t0) is None
    assert await store.next_due_in(["default"]) is None
    await store.insert(JobSpec(kind="email", run_at=t0 + timedelta(seconds=3)))
    await store.insert(JobSpec(kind="email", run_at=t0 + timedelta(seconds=9)))
    assert await store.next_due(["default"], now=t0) == t0 + timedelta(seconds=3)
    due_in = await store.next_due_in(["default"])
    assert due_in is not None
    assert due_in > 0


async def test_next_due_counts_a_job_that_came_due_after_the_last_claim(store: JobStore) -> None:
    # A claim that ran just before a job came due did not take it; asked for
    # jobs due after that claim, the answer is "now" (zero or less), not
    # "none" (which left the job waiting for the polling interval).
    from datetime import UTC, datetime

    claimed_at = datetime.now(UTC) - timedelta(seconds=20)
    await store.insert(JobSpec(kind="email", run_at=claimed_at + timedelta(seconds=10)))
    due_in = await store.next_due_in(["default"], since=claimed_at)
    assert due_in is not None
    assert due_in <= 0
    # (asked since now, it is due already: nothing comes due later)
    assert await store.next_due_in(["default"]) is None


async def test_timeline_note(store: JobStore) -> None:
    job = (await store.insert(JobSpec(kind="email")))[0]
    assert await store.timeline_note([job.id], "job.held", "sealed mode") == 1
    events = await store.timeline(job.id)
    assert [e.event_type for e in events] == ["job.created", "job.held"]
    assert events[-1].envelope.reason == "sealed mode"
    assert len(await store.history(job.id)) == 1  # a note is not a transition
