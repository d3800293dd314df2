"""Workload: the web dashboard's render times with 10,000,000 jobs in the database.

The database is the scale workload's (`--scale-rows` finished jobs with their
ledger, spread over 30 days, loaded by SQL: `scale.load_finished`), plus a
live hour on top of it, through the engine's own write functions: jobs in four
queues created now, most claimed (`claim_v1`) and finished (`finish_v1`), some
failed, some left pending; then `VACUUM (ANALYZE)`. The API (with the
dashboard) is served by uvicorn in this process on a pool of its own, and
each page is fetched `--dashboard-requests` times one after the other (after
a warm-up) over HTTP, timed from request to the last byte: p50 and p99 per
page, per repetition. The pages: the overview (`/ui/`), the first page of
jobs (`/ui/jobs`), the jobs filtered by payload containment (which reads its
full scan window of 50,000 jobs), and one job's page.
"""

from __future__ import annotations

import time

import anyio
import asyncpg
import httpx

from bench import db
from bench.stats import Value, percentile
from bench.systems import JOBENGINE
from bench.workloads.common import Context, database_name
from bench.workloads.scale import ENGINE_CLAIM_SQL, ENGINE_FINISH_SQL, load_finished

#: The pages timed: metric name -> path.
PAGES = {
    "overview": "/ui/",
    "jobs": "/ui/jobs",
    "jobs_payload": '/ui/jobs?payload={"customer": 42}',
    "job": "/ui/jobs/{job}",
}
#: The live hour added on top of the finished jobs (per queue).
LIVE_QUEUES = ("default", "email", "reports", "billing")
LIVE_DONE = 2_000
LIVE_FAILED = 100
LIVE_PENDING = 500
WARMUP = 5

_LIVE_SQL = """INSERT INTO jobengine.jobs (kind, queue, payload)
    SELECT 'noop', $1, jsonb_build_object('customer', g % 100, 'i', g)
    FROM generate_series(1, $2::integer) AS g"""
_CLAIM_QUEUE_SQL = ENGINE_CLAIM_SQL.replace("ARRAY['default']", "ARRAY[$2::text]")
_FAIL_SQL = """UPDATE jobengine.jobs SET status = 'failed', last_error = 'bench: boom'
    WHERE id = ANY ($1::bigint[])"""


async def add_live_hour(dsn: str) -> None:
    """Jobs of every status in `LIVE_QUEUES`, made now through the engine's functions."""
    conn = await asyncpg.connect(dsn)
    try:
        for queue in LIVE_QUEUES:
            await conn.execute(_LIVE_SQL, queue, LIVE_DONE + LIVE_FAILED + LIVE_PENDING)
            ids, attempts = await conn.fetchrow(_CLAIM_QUEUE_SQL, LIVE_DONE + LIVE_FAILED,
                                                queue)
            await conn.execute(_FAIL_SQL, ids[:LIVE_FAILED])
            await conn.fetchval(ENGINE_FINISH_SQL, ids[LIVE_FAILED:], attempts[LIVE_FAILED:])
        await conn.execute("VACUUM (ANALYZE) jobengine.jobs")
    finally:
        await conn.close()


async def time_pages(ctx: Context, dsn: str, requests: int) -> dict[str, list[float]]:
    """Serve the API on this database and time each page `requests` times (ms)."""
    from jobengine.api.app import create_app
    from jobengine.api.config import HttpSettings
    from jobengine.api.server import serve
    from jobengine.store import create_pool

    pool = await create_pool(dsn, actor="api", min_size=2, max_size=10)
    timings: dict[str, list[float]] = {name: [] for name in PAGES}
    try:
        job = await pool.fetchval("SELECT max(id) FROM jobengine.jobs WHERE status = 'failed'")
        app = create_app(pool, HttpSettings())
        async with anyio.create_task_group() as tg:
            _host, port = await tg.start(serve, app, "127.0.0.1", 0)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                for name, path in PAGES.items():
                    url = path.replace("{job}", str(job))
                    for i in range(WARMUP + requests):
                        started = time.perf_counter()
                        response = await client.get(url)
                        elapsed = (time.perf_counter() - started) * 1000
                        if response.status_code != 200:
                            raise RuntimeError(f"dashboard: GET {url}: {response.status_code}")
                        if i >= WARMUP:
                            timings[name].append(elapsed)
            tg.cancel_scope.cancel()
    finally:
        await pool.close()
    return timings


async def run(ctx: Context) -> None:
    """Load the database once, then time the pages in every repetition."""
    if not ctx.has_jobengine():
        return
    s = ctx.sizes
    name = f"{database_name(ctx, JOBENGINE)}_dashboard"
    try:
        dsn = await db.recreate(ctx.admin_dsn, name)
        started = time.perf_counter()
        if await load_finished(ctx, dsn, s.scale_rows, "dashboard") is None:
            return
        await add_live_hour(dsn)
        ctx.log(f"dashboard: database ready in {time.perf_counter() - started:.0f}s")
        for rep in range(ctx.options.reps):
            timings = await time_pages(ctx, dsn, s.dashboard_requests)
            for page, values in timings.items():
                values.sort()
                for q in (50, 99):
                    ctx.results.add(f"dashboard.{page}.p{q}", JOBENGINE.name,
                                    Value(percentile(values, q)))
            ctx.log(f"dashboard rep {rep + 1}: " + ", ".join(
                f"{p} p50 {percentile(v, 50):.0f} ms p99 {percentile(v, 99):.0f} ms"
                for p, v in timings.items()))
    finally:
        await db.drop(ctx.admin_dsn, name)
