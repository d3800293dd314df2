"""Helpers the API and CLI tests share (this module holds no tests).

- `app_client`: the app with its lifespan running, behind an in-process
  httpx client (no sockets);
- `live_server`: the app served by uvicorn on 127.0.0.1 and a free port,
  for what needs a real connection (event streams);
- `failed_job`: a job that ran and failed for good, the only status `retry` accepts;
- `READER`/`WRITER`/`TOKENS`: API tokens with the read and the write scope.

(`tests.dbutil.scratch_database` gives a module-wide database to tests that
only read or check that nothing changed: a fresh one per test costs half a
second.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import anyio
import asyncpg
import httpx

from jobengine.api.app import create_app
from jobengine.api.config import HttpSettings, TokenSettings
from jobengine.api.server import serve
from jobengine.api.tokens import hash_token
from jobengine.domain import Job, JobSpec
from jobengine.metrics import REGISTRY
from jobengine.store import Failure, JobStore

ERROR_KEYS = {"error"}
ERROR_DETAIL_KEYS = {"code", "message"}


#: API tokens for tests: one with the read scope, one with write.
READER = "je_reader-token-for-tests"
WRITER = "je_writer-token-for-tests"
TOKENS = {
    "dashboard": TokenSettings(sha256=hash_token(READER), scopes=["read"]),
    "ops": TokenSettings(sha256=hash_token(WRITER), scopes=["write"]),
}


@asynccontextmanager
async def app_client(
    pool: asyncpg.Pool, *, http: HttpSettings | None = None, **options: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to a fresh app on `pool`, lifespan (and its listener) running."""
    app = create_app(pool, http or HttpSettings(), **options)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


@asynccontextmanager
async def live_server(pool: asyncpg.Pool, **options: Any) -> AsyncIterator[str]:
    """Serve a fresh app with uvicorn on 127.0.0.1 (a free port); yields its base URL."""
    app = create_app(pool, HttpSettings(), **options)
    async with anyio.create_task_group() as tg:
        _host, port = await tg.start(serve, app, "127.0.0.1", 0)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            tg.cancel_scope.cancel()


async def failed_job(pool: asyncpg.Pool, kind: str = "flaky") -> Job:
    """A job of `kind` that was claimed, ran once and failed with no retry left."""
    store = JobStore(pool)
    job, _ = await store.insert(JobSpec(kind=kind, max_retries=0))
    claimed = await store.claim(
        owner="d1", queues=["default"], kinds=[kind], limit=1, lease_ttl=timedelta(seconds=30)
    )
    assert [j.id for j in claimed] == [job.id]
    outcome = await store.fail("d1", [Failure(job.id, 1, "ValueError: boom")])  # no retry
    assert outcome[(job.id, 1)].retry_at is None
    return await store.get(job.id)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> str:
    """Check the status and the exact error body shape; returns the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == ERROR_KEYS
    assert set(body["error"]) == ERROR_DETAIL_KEYS
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    message: str = body["error"]["message"]
    return message


def sample(name: str, **labels: str) -> float:
    """A metric's current value in jobengine's registry (0 when it has no sample yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def row_count(pool: asyncpg.Pool) -> int:
    """How many jobs the database holds."""
    n: int = await pool.fetchval("SELECT count(*) FROM jobengine.jobs")
    return n


def last_sunday_of_march(year: int) -> date:
    """The day the EU moves its clocks forward (at 01:00 UTC)."""
    end = date(year, 3, 31)
    return end - timedelta(days=(end.weekday() + 1) % 7)


def berlin_spring_schedule(now: datetime) -> tuple[str, list[datetime]]:
    """A cron for 03:00 in Europe/Berlin on the last three days of March up to the DST change,
    and its next three ticks after `now`, worked out by the EU rule alone: 03:00 is 02:00 UTC
    (CET) before the last Sunday of March and 01:00 UTC (CEST) on it."""
    year = now.year
    while datetime(year, 3, last_sunday_of_march(year).day - 2, tzinfo=UTC) < now + timedelta(days=2):
        year += 1
    sunday = last_sunday_of_march(year).day
    ticks = [datetime(year, 3, sunday - 2, 2, tzinfo=UTC), datetime(year, 3, sunday - 1, 2, tzinfo=UTC),
             datetime(year, 3, sunday, 1, tzinfo=UTC)]
    return f"0 3 {sunday - 2}-{sunday} 3 *", ticks
