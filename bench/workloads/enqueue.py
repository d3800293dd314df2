"""Workload 1: enqueue — bulk (one call, N jobs) and single (N calls, one transaction each).

Each run also yields the CPU per job of the enqueuing process and of PostgreSQL
over the timed part, measured inside the enqueuing process (`_common.Clock`).
"""

from __future__ import annotations

from bench import db
from bench.procs import StepTimeout, step
from bench.stats import Value
from bench.workloads.common import Context, add_step_cpu, fresh


async def _timed(ctx: Context, command: str, metric: str, n: int) -> None:
    for rep in range(ctx.options.reps):
        for system in ctx.rotated(rep):
            dsn = await fresh(ctx, system)
            await db.checkpoint(ctx.admin_dsn)
            try:
                result = await step(system, command, dsn, "--n", str(n), limit=ctx.limit)
            except StepTimeout:
                ctx.results.note(f"{system.label} {command}: not done within {ctx.limit:g}s")
                ctx.results.add(metric, system.name, Value(n / ctx.limit, "<"))
                continue
            rate = n / float(result["seconds"])
            queued = int(await db.fetchval(dsn, system.backlog_sql))
            if queued != n:
                ctx.results.note(f"{system.label} {command}: {queued} jobs queued, expected {n}")
            ctx.results.add(metric, system.name, Value(rate))
            add_step_cpu(ctx, metric, system.name, n, result)
            ctx.log(f"{metric} rep {rep + 1} {system.name}: {rate:,.0f} jobs/s")


async def run(ctx: Context) -> None:
    """Bulk, then single enqueue, each run in a fresh database."""
    await _timed(ctx, "enqueue-bulk", "enqueue.bulk", ctx.sizes.bulk)
    await _timed(ctx, "enqueue-single", "enqueue.single", ctx.sizes.single)
