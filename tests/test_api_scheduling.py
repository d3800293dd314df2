"""The REST API's scheduling endpoints: queues, limits, schedules, and their metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import asyncpg
import httpx
import pytest

from jobengine.api.config import HttpSettings
from jobengine.api.tokens import TokenAuthorizer
from jobengine.domain import JobSpec
from jobengine.domain.schedules import ScheduleSpec
from jobengine.store import JobStore, SchedulingStore
from tests.apiutil import (
    READER,
    TOKENS,
    WRITER,
    app_client,
    assert_error,
    berlin_spring_schedule,
)

pytestmark = pytest.mark.anyio

STATUSES = {"pending": 0, "scheduled": 0, "running": 0, "completed": 0, "failed": 0,
            "cancelled": 0}


@pytest.fixture
async def client(pool: asyncpg.Pool) -> Any:
    async with app_client(pool) as c:
        yield c


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def schedule_rows(pool: asyncpg.Pool) -> int:
    n: int = await pool.fetchval("SELECT count(*) FROM jobengine.schedules")
    return n


async def test_pause_and_resume_a_queue(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    store = JobStore(pool)
    for _ in range(2):
        await store.insert(JobSpec(kind="report", queue="nightly"))
    before = (await client.get("/v1/queues")).json()
    assert before == {"queues": [{
        "name": "nightly", "paused": False, "counts": {**STATUSES, "pending": 2},
        "counts_estimated": False, "oldest_waiting_seconds": before["queues"][0]["oldest_waiting_seconds"],
        "changed_by": None, "changed_at": None}], "limits": []}
    assert before["queues"][0]["oldest_waiting_seconds"] >= 0
    assert (await client.get("/readyz")).json()["paused_queues"] == []

    paused = await client.post("/v1/queues/nightly/pause")
    assert paused.status_code == 200, paused.text
    assert (paused.json()["name"], paused.json()["paused"], paused.json()["changed_by"]) == (
        "nightly", True, "tests")  # the pool's actor
    assert paused.json()["counts"]["pending"] == 2
    listed = (await client.get("/v1/queues")).json()["queues"]
    assert [(q["name"], q["paused"]) for q in listed] == [("nightly", True)]
    ready = await client.get("/readyz")
    assert (ready.status_code, ready.json()["paused_queues"]) == (200, ["nightly"])
    assert await pool.fetchval("SELECT paused FROM jobengine.queues WHERE name = 'nightly'")

    resumed = await client.post("/v1/queues/nightly/resume")
    assert (resumed.status_code, resumed.json()["paused"]) == (200, False)
    assert (await client.get("/readyz")).json()["paused_queues"] == []


async def test_a_queue_without_jobs_can_be_paused_and_bad_names_are_422(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    paused = await client.post("/v1/queues/later/pause")
    assert paused.json() == {"name": "later", "paused": True, "counts": STATUSES,
                             "counts_estimated": False, "oldest_waiting_seconds": None, "changed_by": "tests",
                             "changed_at": paused.json()["changed_at"]}
    message = assert_error(await client.post("/v1/queues/-x/pause"), 422, "validation_failed")
    assert message.startswith("name: ")
    assert await pool.fetchval("SELECT count(*) FROM jobengine.queues") == 1


async def test_limits_are_listed_with_what_they_hold(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    store, scheduling = JobStore(pool), SchedulingStore(pool)
    await scheduling.set_concurrency_limit("api", 1)
    await scheduling.set_rate_limit("mail", 100, timedelta(minutes=1))
    first, _ = await store.insert(JobSpec(kind="fetch", limit_key="api"))
    await store.insert(JobSpec(kind="fetch", limit_key="api"))
    claimed = await store.claim(owner="d1", queues=["default"], kinds=["fetch"], limit=5,
                                lease_ttl=timedelta(seconds=30))
    assert [j.id for j in claimed] == [first.id]  # the second is held by max_running = 1
    limits = (await client.get("/v1/queues")).json()["limits"]
    assert limits == [
        {"key": "api", "max_running": 1, "max_starts": None, "per": None, "running": 1,
         "recent_starts": 0, "waiting": 1, "held": 1},
        {"key": "mail", "max_running": None, "max_starts": 100, "per": 60.0, "running": 0,
         "recent_starts": 0, "waiting": 0, "held": 0},
    ]


async def test_metrics_show_paused_queues_and_held_jobs(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    store, scheduling = JobStore(pool), SchedulingStore(pool)
    await scheduling.set_concurrency_limit("api", 1)
    for _ in range(3):
        await store.insert(JobSpec(kind="fetch", limit_key="api"))
    await store.insert(JobSpec(kind="report", queue="nightly"))
    await store.claim(owner="d1", queues=["default"], kinds=["fetch"], limit=5,
                      lease_ttl=timedelta(seconds=30))
    await client.post("/v1/queues/nightly/pause")
    text = (await client.get("/metrics")).text
    assert 'jobengine_queue_paused{queue="nightly"} 1.0' in text
    assert 'jobengine_queue_paused{queue="default"} 0.0' in text
    assert 'jobengine_limit_held_jobs{key="api"} 2.0' in text
    assert 'jobengine_limit_running{key="api"} 1.0' in text
    assert 'jobengine_jobs{status="pending"} 3.0' in text  # counted from the same read
    assert 'jobengine_jobs{status="running"} 1.0' in text

    await client.post("/v1/queues/nightly/resume")
    await scheduling.remove_limits("api")
    text = (await client.get("/metrics")).text
    assert 'jobengine_queue_paused{queue="nightly"} 0.0' in text
    assert 'key="api"' not in text  # a limit removed leaves no stale series


async def test_put_a_schedule_shows_its_next_ticks_across_dst(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    cron, expected = berlin_spring_schedule(datetime.now(UTC))
    body = {"kind": "report", "cron": cron, "timezone": "Europe/Berlin",
            "payload": {"scope": "all"}, "priority": 2, "limit_key": "reports"}
    created = await client.put("/v1/schedules/nightly-report", json=body)
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/v1/schedules/nightly-report"
    schedule = created.json()
    assert schedule["next_ticks"] == [rfc3339(t) for t in expected]
    assert [t.hour for t in expected] == [2, 2, 1]  # the third is summer time
    assert {k: schedule[k] for k in (*body, "name", "every", "enabled", "last_tick")} == {
        **body, "name": "nightly-report", "every": None, "enabled": True, "last_tick": None}
    again = await client.put("/v1/schedules/nightly-report", json=body)
    assert again.status_code == 200
    shown = await client.get("/v1/schedules/nightly-report")
    assert shown.json()["next_ticks"] == [rfc3339(t) for t in expected]

    every = await client.put("/v1/schedules/beat", json={"kind": "ping", "every": "90s"})
    assert (every.status_code, every.json()["every"]) == (201, 90.0)
    ticks = [datetime.fromisoformat(t) for t in every.json()["next_ticks"]]
    assert [t.timestamp() % 90 for t in ticks] == [0, 0, 0]
    assert [b - a for a, b in pairwise(ticks)] == [timedelta(seconds=90)] * 2
    listed = (await client.get("/v1/schedules")).json()["schedules"]
    assert [s["name"] for s in listed] == ["beat", "nightly-report"]
    assert await schedule_rows(pool) == 2


@pytest.mark.parametrize(("body", "field"), [
    ({"kind": "r", "cron": "61 * * * *"}, "cron"),
    ({"kind": "r", "cron": "0 3 * * *", "timezone": "Mars/Olympus"}, "timezone"),
    ({"kind": "r", "cron": "0 3 * * *", "timezone": "America"}, "timezone"),
    ({"kind": "r", "cron": "0 3 * * *", "every": 60}, "every"),
    ({"kind": "r"}, "cron"),
    ({"kind": "r", "every": 0.5}, "every"),
    ({"kind": "r", "every": "0.5s"}, "every"),
    ({"kind": "r", "every": "soon"}, "every"),
    ({"kind": "r", "every": "1e400d"}, "every"),
    ({"kind": "r", "every": "9" * 400 + "d"}, "every"),
    ({"kind": "r", "every": 1e300}, "every"),
    ({"kind": "_r", "every": 60}, "kind"),
    ({"kind": "r", "every": 60, "priority": "high"}, "priority"),
    ({"kind": "r", "every": 60, "priority": 2**40}, "priority"),
    ({"every": 60}, "kind"),
    ({"kind": "r", "cron": "0 0 31 2 *"}, "cron"),
])
async def test_a_bad_schedule_is_422_naming_the_field_and_writes_nothing(
    client: httpx.AsyncClient, pool: asyncpg.Pool, body: dict[str, Any], field: str
) -> None:
    response = await client.put("/v1/schedules/x", json=body)
    message = assert_error(response, 422, "invalid_schedule")
    assert message.startswith(f"schedule x: {field}: "), message
    assert await schedule_rows(pool) == 0


async def test_pause_resume_and_delete_a_schedule(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await client.put("/v1/schedules/beat", json={"kind": "ping", "every": 60})
    paused = await client.post("/v1/schedules/beat/pause")
    assert (paused.status_code, paused.json()["enabled"], paused.json()["next_ticks"]) == (
        200, False, [])
    # redefined without "enabled": it stays paused
    kept = await client.put("/v1/schedules/beat", json={"kind": "ping", "every": 120})
    assert (kept.json()["every"], kept.json()["enabled"]) == (120.0, False)
    resumed = await client.post("/v1/schedules/beat/resume")
    assert resumed.json()["enabled"] is True
    assert len(resumed.json()["next_ticks"]) == 3
    assert (await client.delete("/v1/schedules/beat")).status_code == 204
    assert await schedule_rows(pool) == 0
    for method, path in (("GET", "/v1/schedules/beat"), ("DELETE", "/v1/schedules/beat"),
                         ("POST", "/v1/schedules/beat/pause"),
                         ("POST", "/v1/schedules/beat/resume"),
                         ("GET", "/v1/schedules/-no-such-name")):
        message = assert_error(await client.request(method, path), 404, "schedule_not_found")
        assert "not found" in message


async def test_a_job_carries_its_limit_key(client: httpx.AsyncClient) -> None:
    created = await client.post("/v1/jobs", json={"kind": "fetch", "limit_key": "api"})
    assert created.json()["limit_key"] == "api"
    assert_error(await client.post("/v1/jobs", json={"kind": "fetch", "limit_key": ""}), 422)


# With tokens configured: reads need read, changes need write.
OPERATIONS: list[tuple[str, str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/queues", "read", None),
    ("POST", "/v1/queues/nightly/pause", "write", None),
    ("POST", "/v1/queues/nightly/resume", "write", None),
    ("GET", "/v1/schedules", "read", None),
    ("GET", "/v1/schedules/beat", "read", None),
    ("PUT", "/v1/schedules/beat", "write", {"kind": "ping", "every": 30}),
    ("POST", "/v1/schedules/beat/pause", "write", None),
    ("POST", "/v1/schedules/beat/resume", "write", None),
    ("DELETE", "/v1/schedules/beat", "write", None),
]


@pytest.mark.parametrize(("method", "path", "needs", "body"), OPERATIONS)
async def test_scheduling_endpoints_check_their_scope(
    pool: asyncpg.Pool, method: str, path: str, needs: str, body: dict[str, Any] | None
) -> None:
    await SchedulingStore(pool).upsert_schedule(
        ScheduleSpec(name="beat", kind="ping", every=timedelta(seconds=60)))
    state = "SELECT (SELECT count(*) FROM jobengine.queues), (SELECT array_agg((s.every, s.enabled)) FROM jobengine.schedules s)"
    before = await pool.fetchrow(state)
    async with app_client(pool, http=HttpSettings(tokens=TOKENS),
                          authorizer=TokenAuthorizer(TOKENS)) as client:
        def call(token: str | None) -> Any:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return client.request(method, path, json=body, headers=headers)

        assert_error(await call(None), 401, "unauthorized")
        reader = await call(READER)
        if needs == "write":
            assert "does not have the 'write' scope" in assert_error(reader, 403, "forbidden")
            assert await pool.fetchrow(state) == before  # refused: nothing written
        else:
            assert reader.status_code == 200, reader.text
        writer = await call(WRITER)
        assert writer.status_code in (200, 204), writer.text
