"""The store: reads, the guarded batched write path, claims, leases, retries, the DAG."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from jobengine.domain import (
    DuplicateJob,
    IllegalTransition,
    InvalidJob,
    JobNotFound,
    JobSpec,
    JobStatus,
    RetryPolicy,
    RetryStrategy,
)
from jobengine.store import Failure, JobStore, Transition

pytestmark = pytest.mark.anyio

T0 = datetime(2030, 1, 1, tzinfo=UTC)
NO_JITTER = RetryPolicy(strategy=RetryStrategy.FIXED, base_delay=5, max_delay=60, jitter=False)
TTL = timedelta(seconds=30)


@pytest.fixture
def store(tx: asyncpg.Connection) -> JobStore:
    return JobStore(tx)


async def claim_one(store: JobStore, owner: str = "d1", now: datetime = T0, kinds: tuple[str, ...] = ("email",)):  # type: ignore[no-untyped-def]
    jobs = await store.claim(owner=owner, queues=["default"], kinds=list(kinds), limit=1,
                             lease_ttl=TTL, now=now)
    assert len(jobs) == 1
    return jobs[0]


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


# -- the guarded write path -------------------------------------------------------


async def test_transition_many_reports_what_it_did_not_change(store: JobStore) -> None:
    a = (await store.insert(JobSpec(kind="email")))[0]
    b = (await store.insert(JobSpec(kind="email")))[0]
    await store.cancel(b.id)
    outcome = await store.transition_many([
        Transition(a.id, JobStatus.PENDING, JobStatus.SCHEDULED),
        Transition(b.id, JobStatus.PENDING, JobStatus.SCHEDULED),
    ])
    assert outcome.changed == {a.id}
    assert outcome.refused == {b.id}
    assert (await store.get(a.id)).status is JobStatus.SCHEDULED
    assert (await store.get(b.id)).status is JobStatus.CANCELLED


async def test_stale_worker_cannot_overwrite_a_newer_attempt(store: JobStore) -> None:
    await store.insert(JobSpec(kind="email", max_retries=3))
    first = await claim_one(store, owner="d1")
    # d1's lease runs out; the reaper fails it and schedules a retry
    reaped = await store.reap_expired(NO_JITTER, now=T0 + timedelta(seconds=31))
    assert list(reaped.retried) == [first.id]
    second = await claim_one(store, owner="d2", now=T0 + timedelta(seconds=60))
    assert second.attempt == 2
    # d1 comes back and tries to record its outcome: refused, d2's attempt untouched
    late = await store.transition_many([
        Transition(first.id, JobStatus.RUNNING, JobStatus.COMPLETED, attempt=1,
                   lease_owner="d1", result={"late": True}),
    ])
    assert late.refused == {first.id}
    now_job = await store.get(first.id)
    assert (now_job.status, now_job.lease_owner, now_job.attempt, now_job.result) == (
        JobStatus.RUNNING, "d2", 2, None
    )
    done = await store.transition_many([
        Transition(first.id, JobStatus.RUNNING, JobStatus.COMPLETED, attempt=2,
                   lease_owner="d2", result={"ok": 1}),
    ])
    assert done.changed == {first.id}
    assert (await store.get(first.id)).result == {"ok": 1}


def test_transition_out_of_running_must_be_fenced() -> None:
    with pytest.raises(ValueError, match="attempt and lease owner"):
        Transition(1, JobStatus.RUNNING, JobStatus.COMPLETED)
    with pytest.raises(IllegalTransition):
        Transition(1, JobStatus.COMPLETED, JobStatus.RUNNING)


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
    outcome = await store.fail_many(
        [Failure(other.id, 1, "d1", "ValueError: boom")], NO_JITTER, now=T0
    )
    assert outcome.terminal == [other.id]
    retried = await store.retry(other.id)
    assert retried.status is JobStatus.SCHEDULED
    assert retried.status_reason == "operator_retry"


# -- claiming ------------------------------------------------------------------------


async def test_claim_takes_a_lease_counts_the_attempt_and_records_both_steps(
    store: JobStore,
) -> None:
    job = (await store.insert(JobSpec(kind="email", run_at=T0)))[0]
    claimed = await claim_one(store, owner="d1", now=T0)
    assert claimed.id == job.id
    assert claimed.status is JobStatus.RUNNING
    assert claimed.attempt == 1
    assert claimed.lease_owner == "d1"
    assert claimed.lease_expires_at == T0 + TTL
    history = await store.history(job.id)
    assert [(h.from_status, h.to_status) for h in history] == [
        (None, JobStatus.PENDING),
        (JobStatus.PENDING, JobStatus.SCHEDULED),
        (JobStatus.SCHEDULED, JobStatus.RUNNING),
    ]


async def test_claim_respects_limit_priority_queue_kind_and_time(store: JobStore) -> None:
    low = (await store.insert(JobSpec(kind="email", priority=0, run_at=T0)))[0]
    high = (await store.insert(JobSpec(kind="email", priority=5, run_at=T0)))[0]
    await store.insert(JobSpec(kind="email", queue="other", run_at=T0))
    await store.insert(JobSpec(kind="sms", run_at=T0))
    await store.insert(JobSpec(kind="email", run_at=T0 + timedelta(hours=1)))
    first = await store.claim(owner="d", queues=["default"], kinds=["email"], limit=1,
                              lease_ttl=TTL, now=T0)
    assert [j.id for j in first] == [high.id]
    rest = await store.claim(owner="d", queues=["default"], kinds=["email"], limit=10,
                             lease_ttl=TTL, now=T0)
    assert [j.id for j in rest] == [low.id]
    assert await store.claim(owner="d", queues=["default"], kinds=[], limit=10,
                             lease_ttl=TTL, now=T0) == []


async def test_sealed_claim_holds_jobs_that_need_the_network(store: JobStore) -> None:
    job = (await store.insert(JobSpec(kind="email", requires_network=True, run_at=T0)))[0]
    assert await store.claim(owner="d", queues=["default"], kinds=["email"], limit=5,
                             lease_ttl=TTL, now=T0, sealed=True) == []
    assert (await store.get(job.id)).status is JobStatus.PENDING
    got = await store.claim(owner="d", queues=["default"], kinds=["email"], limit=5,
                            lease_ttl=TTL, now=T0)
    assert [j.id for j in got] == [job.id]


# -- leases, the reaper, retries ------------------------------------------------------


async def test_renew_leases_keeps_only_what_is_still_held(store: JobStore) -> None:
    a = (await store.insert(JobSpec(kind="email", run_at=T0)))[0]
    b = (await store.insert(JobSpec(kind="email", run_at=T0)))[0]
    await store.claim(owner="d1", queues=["default"], kinds=["email"], limit=2,
                      lease_ttl=TTL, now=T0)
    await store.cancel(b.id)
    later = T0 + timedelta(seconds=20)
    renewed = await store.renew_leases("d1", {a.id: 1, b.id: 1}, TTL, now=later)
    assert renewed == {a.id}
    assert (await store.get(a.id)).lease_expires_at == later + TTL
    assert await store.renew_leases("someone-else", {a.id: 1}, TTL, now=later) == set()
    assert await store.renew_leases("d1", {a.id: 7}, TTL, now=later) == set()


async def test_reaper_fails_expired_leases_and_retries_at_once(store: JobStore) -> None:
    job = (await store.insert(JobSpec(kind="email", run_at=T0, max_retries=1)))[0]
    await claim_one(store, now=T0)
    assert (await store.reap_expired(NO_JITTER, now=T0 + timedelta(seconds=29))).retried == {}
    outcome = await store.reap_expired(NO_JITTER, now=T0 + timedelta(seconds=31))
    # a rescue is due at once: the worker died, not the job
    assert outcome.retried == {job.id: T0 + timedelta(seconds=31)}
    after = await store.get(job.id)
    assert after.status is JobStatus.SCHEDULED
    assert after.run_at == T0 + timedelta(seconds=31)
    assert "LeaseExpired" in (after.last_error or "")
    reasons = [h.reason for h in await store.history(job.id)]
    assert reasons[-2:] == ["lease_expired", "retry"]
    # second attempt expires too: no retries left, failed stays terminal
    await claim_one(store, now=T0 + timedelta(seconds=40))
    final = await store.reap_expired(NO_JITTER, now=T0 + timedelta(seconds=80))
    assert final.terminal == [job.id]
    assert (await store.get(job.id)).status is JobStatus.FAILED


async def test_max_retries_three_runs_at_most_four_times(store: JobStore) -> None:
    job = (await store.insert(JobSpec(kind="email", run_at=T0, max_retries=3)))[0]
    now = T0
    attempts = 0
    while True:
        now += timedelta(minutes=10)
        claimed = await store.claim(owner="d", queues=["default"], kinds=["email"], limit=1,
                                    lease_ttl=TTL, now=now)
        if not claimed:
            break
        attempts += 1
        (j,) = claimed
        await store.fail_many([Failure(j.id, j.attempt, "d", "RuntimeError: no")], NO_JITTER,
                              now=now)
    assert attempts == 4
    final = await store.get(job.id)
    assert final.status is JobStatus.FAILED
    assert final.attempt == 4
    history = await store.history(job.id)
    assert sum(1 for h in history if h.to_status is JobStatus.SCHEDULED
               and h.from_status is JobStatus.FAILED) == 3


async def test_backoff_follows_the_jobs_policy(store: JobStore) -> None:
    policy = {"strategy": "exponential", "base_delay": 2, "max_delay": 100, "jitter": False}
    job = (await store.insert(JobSpec(kind="email", run_at=T0, retry_policy=policy)))[0]
    now = T0
    expected = [2, 4, 8]
    for delay in expected:
        (j,) = await store.claim(owner="d", queues=["default"], kinds=["email"], limit=1,
                                 lease_ttl=TTL, now=now)
        out = await store.fail_many([Failure(j.id, j.attempt, "d", "E: x")], NO_JITTER, now=now,
                                    rng=random.Random(1))
        assert out.retried[job.id] == now + timedelta(seconds=delay)
        now = out.retried[job.id]


async def test_shutdown_release_does_not_use_up_retries(store: JobStore) -> None:
    job = (await store.insert(JobSpec(kind="email", run_at=T0, max_retries=0)))[0]
    j = await claim_one(store)
    await store.transition_many([Transition(j.id, JobStatus.RUNNING, JobStatus.SCHEDULED,
                                            attempt=1, lease_owner="d1", reason="shutdown")])
    j2 = await claim_one(store, owner="d2")
    assert j2.attempt == 2
    assert j2.released == 1
    out = await store.fail_many([Failure(job.id, 2, "d2", "E: x")], NO_JITTER, now=T0)
    # one counted attempt with max_retries = 0: terminal, never retried
    assert out.terminal == [job.id]


async def test_hand_failed_job_with_retries_left_is_retried(
    tx: asyncpg.Connection, store: JobStore
) -> None:
    job = (await store.insert(JobSpec(kind="email", run_at=T0, max_retries=2)))[0]
    await claim_one(store)
    await tx.execute("UPDATE jobengine.jobs SET status = 'failed' WHERE id = $1", job.id)
    out = await store.retry_failed_with_budget(NO_JITTER, now=T0)
    assert out.retried == {job.id: T0 + timedelta(seconds=5)}
    assert (await store.get(job.id)).status is JobStatus.SCHEDULED


# -- the DAG ---------------------------------------------------------------------------


async def test_promote_waits_for_every_dependency(store: JobStore) -> None:
    a = (await store.insert(JobSpec(kind="email", run_at=T0)))[0]
    b = (await store.insert(JobSpec(kind="email", run_at=T0)))[0]
    c = (await store.insert(JobSpec(kind="email", run_at=T0, depends_on=[a.id, b.id])))[0]
    assert c.id not in await store.promote_ready(["default"], now=T0)
    for _ in range(2):
        j = await claim_one(store)
        await store.transition_many([Transition(j.id, JobStatus.RUNNING, JobStatus.COMPLETED,
                                                attempt=1, lease_owner="d1")])
    assert await store.promote_ready(["default"], now=T0) == [c.id]


async def test_failure_cascades_down_the_dag(store: JobStore) -> None:
    a = (await store.insert(JobSpec(kind="email", run_at=T0, max_retries=0)))[0]
    b = (await store.insert(JobSpec(kind="email", run_at=T0, depends_on=[a.id])))[0]
    c = (await store.insert(JobSpec(kind="email", run_at=T0, depends_on=[b.id])))[0]
    unrelated = (await store.insert(JobSpec(kind="email", run_at=T0 + timedelta(days=1))))[0]
    j = await claim_one(store)
    assert j.id == a.id
    await store.fail_many([Failure(a.id, 1, "d1", "E: x")], NO_JITTER, now=T0)
    assert await store.cancel_orphans(now=T0) == [b.id, c.id]
    for dependent in (b, c):
        got = await store.get(dependent.id)
        assert got.status is JobStatus.CANCELLED
        assert got.status_reason == "dependency_failed"
    assert "ended failed or cancelled" in ((await store.get(c.id)).last_error or "")
    assert (await store.get(unrelated.id)).status is JobStatus.PENDING


async def test_next_due(store: JobStore) -> None:
    assert await store.next_due(["default"], now=T0) is None
    await store.insert(JobSpec(kind="email", run_at=T0 + timedelta(seconds=3)))
    await store.insert(JobSpec(kind="email", run_at=T0 + timedelta(seconds=9)))
    assert await store.next_due(["default"], now=T0) == T0 + timedelta(seconds=3)


async def test_timeline_note(store: JobStore) -> None:
    job = (await store.insert(JobSpec(kind="email")))[0]
    assert await store.timeline_note([job.id], "job.held", "sealed mode") == 1
    events = await store.timeline(job.id)
    assert [e.event_type for e in events] == ["job.created", "job.held"]
    assert events[-1].envelope.reason == "sealed mode"
    assert len(await store.history(job.id)) == 1  # a note is not a transition
