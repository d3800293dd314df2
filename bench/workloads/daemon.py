"""Workloads 6 and 7, jobengine's only: memory with 10,000 running jobs, and rescue time."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from bench import db
from bench.procs import Worker
from bench.stats import Value
from bench.systems import JOBENGINE
from bench.workloads.common import Context, enqueue_bulk, fresh


async def run_memory(ctx: Context) -> None:
    """Peak RSS (VmHWM) of one daemon holding N running jobs whose handlers sleep."""
    if not ctx.has_jobengine():
        return
    n = ctx.sizes.memory_jobs
    for rep in range(ctx.options.reps):
        dsn = await fresh(ctx, JOBENGINE)
        await enqueue_bulk(ctx, JOBENGINE, dsn, n)
        worker = Worker(JOBENGINE, dsn, concurrency=n, handler="sleep",
                        log_path=ctx.path(f"memory-{rep + 1}.log"))
        conn = await asyncpg.connect(dsn)
        try:
            await worker.ready()
            worker.go()
            seconds, timed_out = await db.wait_until_count(
                conn, JOBENGINE.running_sql, n, 1, limit=ctx.limit, interval=0.05)
            await asyncio.sleep(1.0)  # let the daemon settle with everything running
            status = worker.status()
            await worker.stop()
        finally:
            await conn.close()
            worker.close()
        bound = ">" if timed_out else ""
        if timed_out:
            ctx.results.note(f"jobengine memory rep {rep + 1}: not all {n} jobs running "
                             f"within {ctx.limit:g}s")
        ctx.results.add("memory.rss", JOBENGINE.name, Value(status["VmHWM"] / 1024.0))
        ctx.results.add("memory.claim", JOBENGINE.name, Value(seconds, bound))
        ctx.log(f"memory rep {rep + 1}: VmHWM {status['VmHWM'] / 1024:.0f} MB, "
                f"all running after {seconds:.1f}s")


async def run_rescue(ctx: Context) -> None:
    """SIGKILL a daemon holding N running jobs; time until another runs them all (attempt 2)."""
    if not ctx.has_jobengine():
        return
    n, ttl = ctx.sizes.rescue_jobs, ctx.sizes.rescue_lease_ttl
    for rep in range(ctx.options.reps):
        dsn = await fresh(ctx, JOBENGINE)
        await enqueue_bulk(ctx, JOBENGINE, dsn, n)
        first = Worker(JOBENGINE, dsn, concurrency=n, handler="sleep", lease_ttl=ttl,
                       log_path=ctx.path(f"rescue-{rep + 1}-killed.log"))
        second: Worker | None = None
        conn = await asyncpg.connect(dsn)
        try:
            await first.ready()
            first.go()
            await db.wait_until_count(conn, JOBENGINE.running_sql, n, 1, limit=ctx.limit,
                                      interval=0.05)
            second = Worker(JOBENGINE, dsn, concurrency=n, handler="sleep", lease_ttl=ttl,
                            log_path=ctx.path(f"rescue-{rep + 1}-rescuer.log"))
            await second.ready()
            second.go()
            await asyncio.sleep(0.5)  # the rescuer is up and idle
            started = time.perf_counter()
            first.kill()
            seconds, timed_out = await db.wait_until_count(
                conn, JOBENGINE.running_sql, n, 2, limit=ctx.limit, interval=0.02,
                started=started)
            await second.stop()
        finally:
            await conn.close()
            first.close()
            if second is not None:
                second.close()
        ctx.results.add("rescue.seconds", JOBENGINE.name,
                        Value(seconds, ">" if timed_out else ""))
        ctx.log(f"rescue rep {rep + 1}: {seconds:.2f}s (lease_ttl {ttl:g}s)")
