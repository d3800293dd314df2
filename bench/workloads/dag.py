"""Workload: DAG waiting (jobengine only) — a burn-down beside many jobs waiting on dependencies.

A pipeline that queued a big fan-out behind a job still running, and other
work arriving meanwhile: per repetition, two burn-downs at concurrency 50 of
the same N no-op jobs, each in a fresh database set up as the burn-down's
(bulk-inserted by SQL, untimed), in an order alternated per repetition:
- `plain`: nothing else in the database;
- `waiting`: before the N jobs, `Sizes.dag_waiting` jobs that each depend on
  one job of a kind no worker here runs (so they wait all through the run).
Their ratio in the same repetition is the figure: how much the waiting jobs
cost the rest (the scheduler's passes after each burst of finishes, and
every claim, looked at all of them before migration 0014).

The clock stops when no job of the burn-down is left unfinished (the waiting
ones and the job they wait on never finish: `BESIDE_WAITING`).
"""

from __future__ import annotations

from dataclasses import replace

import asyncpg

from bench.stats import Value
from bench.systems import JOBENGINE, System
from bench.workloads.common import Context, alternated, burn, enqueue_bulk, fresh, jobengine_only

PLAIN = "plain"
WAITING = "waiting"
CONCURRENCY = 50

#: the kind of the job the waiting ones depend on: the bench's worker has no handler for it
NEVER_KIND = "bench_never"

WAITING_SQL = """
WITH parent AS (INSERT INTO jobengine.jobs (kind) VALUES ($1) RETURNING id)
INSERT INTO jobengine.jobs (kind, depends_on)
SELECT $1, ARRAY[(SELECT id FROM parent)] FROM generate_series(1, $2)
"""

#: jobengine, its burn-down's clock blind to the jobs that wait on purpose: the
#: pending jobs' first two in claim order (the job the waiting ones wait on,
#: and the burn-down's next; the waiting ones sort last) through their partial
#: index. (A filter on `kind` or `depends_on` instead made PostgreSQL read the
#: 20k waiting jobs on every poll: 2.6 ms, every 20 ms, in the figures.)
BESIDE_WAITING: System = replace(
    JOBENGINE,
    unfinished_sql=(
        "SELECT EXISTS (SELECT 1 FROM (SELECT j.kind FROM jobengine.jobs j"
        " WHERE j.status = 'pending' AND j.limit_key IS NULL"
        " ORDER BY j.claim_order, j.id LIMIT 2) x"
        f" WHERE x.kind <> '{NEVER_KIND}')"
        " OR EXISTS (SELECT 1 FROM jobengine.jobs WHERE status = 'scheduled' AND limit_key IS NULL)"
        " OR EXISTS (SELECT 1 FROM jobengine.jobs WHERE status = 'running')"),
)


async def _burn(ctx: Context, variant: str, rep: int) -> Value:
    """One burn-down of the variant in a fresh database; its jobs/s (and CPU)."""
    metric = f"dag.{variant}"
    tag = f"{metric}-{rep + 1}"
    dsn = await fresh(ctx, JOBENGINE)
    if variant == WAITING:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(WAITING_SQL, NEVER_KIND, ctx.sizes.dag_waiting)
            await conn.execute("ANALYZE jobengine.jobs")
        finally:
            await conn.close()
    n = ctx.sizes.burndown
    await enqueue_bulk(ctx, JOBENGINE, dsn, n)
    value = await burn(ctx, BESIDE_WAITING, dsn, n=n, concurrency=CONCURRENCY, tag=tag,
                       metric=metric)
    ctx.results.add(metric, JOBENGINE.name, value)
    ctx.log(f"{metric} rep {rep + 1}: {value.bound}{value.value:,.0f} jobs/s")
    return value


async def run(ctx: Context) -> None:
    """Plain and waiting burn-downs per repetition, alternating; their ratio."""
    if not jobengine_only(ctx, "dag", "jobengine's own measure (its DAG passes and claim "
                          "beside waiting jobs)"):
        return
    for rep in range(ctx.options.reps):
        values = {v: await _burn(ctx, v, rep) for v in alternated(PLAIN, WAITING, rep)}
        plain, waiting = values[PLAIN], values[WAITING]
        if not (plain.bound and waiting.bound):
            ctx.results.add("dag.ratio", JOBENGINE.name,
                            Value(waiting.value / plain.value,
                                  waiting.bound or (">" if plain.bound else "")))
