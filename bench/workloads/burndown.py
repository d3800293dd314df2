"""Workload 2: burn-down — N queued no-op jobs, one worker at concurrency C, until all done.

Each run also yields the CPU per job of the worker and of PostgreSQL (`burn`).
"""

from __future__ import annotations

from bench.workloads.common import Context, burn, enqueue_bulk, fresh


async def run(ctx: Context) -> None:
    """For each concurrency, each repetition, each system (rotated): a fresh database."""
    n = ctx.sizes.burndown
    for concurrency in ctx.sizes.concurrencies:
        metric = f"burndown.c{concurrency}"
        for rep in range(ctx.options.reps):
            for system in ctx.rotated(rep):
                dsn = await fresh(ctx, system)
                await enqueue_bulk(ctx, system, dsn, n)
                value = await burn(ctx, system, dsn, n=n, concurrency=concurrency,
                                   tag=f"{metric}-{system.name}-{rep + 1}", metric=metric)
                ctx.results.add(metric, system.name, value)
                ctx.log(f"{metric} rep {rep + 1} {system.name}: {value.bound}"
                        f"{value.value:,.0f} jobs/s")
