"""The REST API's job endpoints, health, readiness and metrics, through the real app and database."""

from __future__ import annotations

from typing import Any

import anyio
import asyncpg
import httpx
import pytest

from jobengine.api.app import create_app
from jobengine.api.config import HttpSettings
from jobengine.domain import JobSpec, JobStatus
from jobengine.store import JobStore
from tests.apiutil import (
    app_client,
    assert_error,
    failed_job,
    row_count,
    sample,
)
from tests.dbutil import wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(pool: asyncpg.Pool) -> Any:
    async with app_client(pool) as c:
        yield c


async def create(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/jobs", json={"kind": "email", **body})
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


async def test_create_returns_the_pending_job_with_every_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/jobs", json={
        "kind": "report", "queue": "nightly", "payload": {"to": "a@b"}, "priority": 5,
        "run_at": "2030-01-01T09:00:00+01:00", "max_retries": 1,
        "retry_policy": {"strategy": "fixed", "base_delay": 2},
        "timeout": 90, "requires_network": True,
    })
    assert response.status_code == 201
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "pending"
    assert (job["kind"], job["queue"], job["payload"], job["priority"]) == (
        "report", "nightly", {"to": "a@b"}, 5)
    assert job["run_at"] == "2030-01-01T08:00:00Z"
    assert job["retry_policy"] == {"strategy": "fixed", "base_delay": 2.0, "max_delay": 300.0,
                                   "jitter": True}
    assert job["timeout"] == 90.0
    assert job["requires_network"] is True
    assert job["attempt"] == 0
    assert job["max_retries"] == 1
    shown = await client.get(f"/v1/jobs/{job['id']}")
    assert shown.status_code == 200
    assert shown.json() == job


async def test_json_media_type_variants_are_accepted(client: httpx.AsyncClient) -> None:
    for content_type in ("application/json; charset=utf-8", "application/merge+json"):
        response = await client.post(
            "/v1/jobs", content=b'{"kind": "a"}', headers={"content-type": content_type}
        )
        assert response.status_code == 201


async def test_create_with_dependencies(client: httpx.AsyncClient) -> None:
    first = await create(client)
    second = await create(client, depends_on=[first["id"]])
    assert second["depends_on"] == [first["id"]]


async def test_same_idempotency_key_returns_the_first_job_with_200(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    first = await client.post("/v1/jobs", json={"kind": "email", "idempotency_key": "k-1"})
    again = await client.post("/v1/jobs", json={"kind": "other", "idempotency_key": "k-1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert await row_count(pool) == 1


async def test_concurrent_posts_with_one_key_make_one_row(pool: asyncpg.Pool) -> None:
    # Two apps on separate connections, as the daemon's API and `jobengine api` would be:
    # the requests really race in the database, which must keep one row per key.
    results: list[httpx.Response] = []

    async def post(c: httpx.AsyncClient, key: str) -> None:
        results.append(await c.post("/v1/jobs", json={"kind": "email", "idempotency_key": key}))

    async with app_client(pool) as a, app_client(pool) as b:
        for round_ in range(5):  # several rounds, so that winning the race is not luck
            results.clear()
            async with anyio.create_task_group() as tg:
                for c in (a, b, a, b):
                    tg.start_soon(post, c, f"race-{round_}")
            assert sorted(r.status_code for r in results) == [200, 200, 200, 201]
            assert len({r.json()["id"] for r in results}) == 1
    assert await row_count(pool) == 5


async def test_list_pages_across_pages_and_filters(client: httpx.AsyncClient) -> None:
    ids = [(await create(client, kind="a" if i % 2 else "b", queue="q1" if i < 4 else "q2"))["id"]
           for i in range(7)]
    seen: list[int] = []
    after = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if after is not None:
            params["after"] = after
        page = (await client.get("/v1/jobs", params=params)).json()
        pages += 1
        seen += [j["id"] for j in page["jobs"]]
        after = page["next"]
        if after is None:
            break
        assert after == seen[-1]
    assert seen == ids
    assert pages == 3  # 3 + 3 + 1, and the last page says next = null

    kinds = (await client.get("/v1/jobs", params={"kind": "a"})).json()
    assert [j["id"] for j in kinds["jobs"]] == ids[1::2]
    q2 = (await client.get("/v1/jobs", params={"queue": "q2", "kind": "b"})).json()
    assert [j["id"] for j in q2["jobs"]] == [ids[4], ids[6]]
    await client.post(f"/v1/jobs/{ids[0]}/cancel")
    cancelled = (await client.get("/v1/jobs", params={"status": "cancelled"})).json()
    assert [j["id"] for j in cancelled["jobs"]] == [ids[0]]
    exact = (await client.get("/v1/jobs", params={"limit": 7})).json()
    assert len(exact["jobs"]) == 7
    assert exact["next"] is None


async def test_history_and_timeline_follow_the_job(client: httpx.AsyncClient) -> None:
    job = await create(client)
    await client.post(f"/v1/jobs/{job['id']}/cancel")
    history = (await client.get(f"/v1/jobs/{job['id']}/history")).json()["history"]
    assert [(h["from_status"], h["to_status"]) for h in history] == [
        (None, "pending"), ("pending", "cancelled")]
    assert history[1]["actor"] == "tests"  # the pool's actor; `jobengine api` uses "api"
    assert history[1]["reason"] == "cancelled_by_user"
    timeline = (await client.get(f"/v1/jobs/{job['id']}/timeline")).json()["timeline"]
    assert [e["event_type"] for e in timeline] == ["job.created", "job.cancelled"]
    envelope = timeline[1]["envelope"]
    assert envelope["job_id"] == job["id"]
    assert envelope["schema_version"] == 1
    assert (envelope["from_status"], envelope["to_status"]) == ("pending", "cancelled")


async def test_cancel_then_cancel_again_is_409_and_changes_nothing(
    client: httpx.AsyncClient
) -> None:
    job = await create(client)
    first = await client.post(f"/v1/jobs/{job['id']}/cancel")
    assert first.status_code == 200
    assert first.json()["status"] == "cancelled"
    again = await client.post(f"/v1/jobs/{job['id']}/cancel")
    message = assert_error(again, 409, "illegal_transition")
    assert "from cancelled to cancelled" in message
    history = (await client.get(f"/v1/jobs/{job['id']}/history")).json()["history"]
    assert len(history) == 2


async def test_retry_moves_a_failed_job_to_scheduled(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    job = await failed_job(pool, kind="api-retry")
    before = sample("jobengine_transitions_total", kind="api-retry", to_status="scheduled")
    response = await client.post(f"/v1/jobs/{job.id}/retry")
    assert response.status_code == 200
    assert response.json()["status"] == "scheduled"
    assert sample("jobengine_transitions_total", kind="api-retry",
                  to_status="scheduled") == before + 1
    again = await client.post(f"/v1/jobs/{job.id}/retry")
    assert "from scheduled to scheduled" in assert_error(again, 409, "illegal_transition")


async def test_retry_lists_the_dependents_that_stay_cancelled(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    store = JobStore(pool)
    job = await failed_job(pool, kind="api-dag")
    child, _ = await store.insert(JobSpec(kind="api-dag", depends_on=[job.id]))
    grandchild, _ = await store.insert(JobSpec(kind="api-dag", depends_on=[child.id]))
    assert await store.cascade() == [child.id, grandchild.id]
    response = await client.post(f"/v1/jobs/{job.id}/retry")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["stays_cancelled"]) == ("scheduled", [child.id, grandchild.id])
    assert (await store.get(child.id)).status is JobStatus.CANCELLED


@pytest.mark.parametrize("status", ["pending", "cancelled"])
async def test_retry_of_a_job_that_did_not_fail_is_409(
    client: httpx.AsyncClient, status: str
) -> None:
    job = await create(client)
    if status == "cancelled":
        await client.post(f"/v1/jobs/{job['id']}/cancel")
    response = await client.post(f"/v1/jobs/{job['id']}/retry")
    assert f"from {status} to scheduled" in assert_error(response, 409, "illegal_transition")
    assert (await client.get(f"/v1/jobs/{job['id']}")).json()["status"] == status


async def test_health_and_readiness(pool: asyncpg.Pool) -> None:
    async def daemon_ready() -> dict[str, bool]:
        return {"listener": state["daemon"]}

    state = {"daemon": True}
    async with app_client(pool, readiness=daemon_ready) as client:
        health = await client.get("/healthz")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"ready": True, "checks": {
            "database": True, "listener": True, "daemon_listener": True}, "paused_queues": []}
        state["daemon"] = False
        not_ready = await client.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["ready"] is False
        assert not_ready.json()["checks"]["daemon_listener"] is False


async def test_readiness_is_503_without_the_listener(pool: asyncpg.Pool) -> None:
    # Without its lifespan the app has no LISTEN connection: not ready, and it says why.
    app = create_app(pool, HttpSettings())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"ready": False, "checks": {"database": True, "listener": False},
                               "paused_queues": []}


async def test_the_listener_comes_back_after_its_connection_is_killed(pool: asyncpg.Pool) -> None:
    listeners = (
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND query LIKE 'LISTEN%'"
    )
    async with app_client(pool) as client:
        [old] = [r["pid"] for r in await pool.fetch(listeners)]
        await pool.execute("SELECT pg_terminate_backend($1)", old)

        async def listening_again() -> bool:
            pids = [r["pid"] for r in await pool.fetch(listeners)]
            return bool(pids) and old not in pids

        await wait_for(listening_again, within=10, message="the listener to reconnect")
        assert (await client.get("/readyz")).status_code == 200


async def test_metrics_move_when_jobs_move(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    def jobs_gauge(text: str, status: str) -> float:
        line = next(x for x in text.splitlines() if x.startswith(f'jobengine_jobs{{status="{status}"}}'))
        return float(line.split()[-1])

    before = sample("jobengine_transitions_total", kind="metered", to_status="pending")
    job = await create(client, kind="metered")
    await create(client, kind="metered")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert jobs_gauge(response.text, "pending") == 2
    assert sample("jobengine_transitions_total", kind="metered", to_status="pending") == before + 2
    await client.post(f"/v1/jobs/{job['id']}/cancel")
    after = (await client.get("/metrics")).text
    assert jobs_gauge(after, "pending") == 1
    assert jobs_gauge(after, "cancelled") == 1
    for name in ("jobengine_handler_duration_seconds", "jobengine_pickup_latency_seconds",
                 "jobengine_claim_batch_size", "jobengine_lease_renewals_total",
                 "jobengine_lease_expiries_total", "jobengine_listener_reconnects_total",
                 "jobengine_fenced_writes_total"):
        assert name in after
    # what `jobengine doctor` judges, as gauges read at scrape time
    assert 'jobengine_table_bytes{table="ledger"}' in after
    assert 'jobengine_dead_rows{table="jobs"}' in after
    assert "jobengine_oldest_transaction_seconds" in after
    assert 'jobengine_xmin_horizon_age{holder="slot"}' in after
    assert "jobengine_ledger_default_partition_rows 0.0" in after


async def test_a_job_made_outside_the_api_is_served(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await pool.execute("INSERT INTO jobengine.jobs (kind, payload) VALUES ('sql', '{\"a\": 1}')")
    job, _ = await JobStore(pool).insert(JobSpec(kind="store"))
    listed = (await client.get("/v1/jobs")).json()["jobs"]
    assert [(j["kind"], j["status"]) for j in listed] == [
        ("sql", JobStatus.PENDING.value), ("store", "pending")]
    assert (await client.get(f"/v1/jobs/{job.id}")).json()["kind"] == "store"
