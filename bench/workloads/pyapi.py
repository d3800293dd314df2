"""Workload: the Python API's `defer_many` against hand-written bulk SQL (jobengine only).

The issue's target: `defer_many` of 20k jobs at least as fast as the bulk
SQL path. Per repetition, in an order alternated per repetition, each in a
fresh database, the same N jobs through:
- `sql`: the bulk path of the enqueue workload (`INSERT ... SELECT FROM
  unnest($2::jsonb[])`, payloads built with `json.dumps`);
- `defer_many`: `task.defer_many([{"i": i}, ...], connection=conn)` of a task
  taking `i: int`: every item checked against the signature, one JSON array,
  one `INSERT ... SELECT` with every job column the task sets.
Both on one plain asyncpg connection, timed from building the payloads to
the commit, with the CPU of the enqueuing process and of PostgreSQL.
"""

from __future__ import annotations

from bench import db
from bench.procs import StepTimeout, step
from bench.stats import Value
from bench.systems import JOBENGINE, System, jobengine_python_api
from bench.workloads.common import Context, add_step_cpu, alternated, fresh, jobengine_only

SQL = "sql"
DEFER_MANY = "defer_many"


async def _enqueue(ctx: Context, variant: str, rep: int) -> Value | None:
    system: System = JOBENGINE if variant == SQL else jobengine_python_api()
    metric = f"pyapi.{variant}"
    n = ctx.sizes.bulk
    dsn = await fresh(ctx, system)
    await db.checkpoint(ctx.admin_dsn)
    try:
        result = await step(system, "enqueue-bulk", dsn, "--n", str(n), limit=ctx.limit)
    except StepTimeout:
        ctx.results.note(f"jobengine {metric}: not done within {ctx.limit:g}s")
        return None
    queued = int(await db.fetchval(dsn, system.backlog_sql))
    if queued != n:
        ctx.results.note(f"jobengine {metric}: {queued} jobs queued, expected {n}")
    value = Value(n / float(result["seconds"]))
    ctx.results.add(metric, JOBENGINE.name, value)
    add_step_cpu(ctx, metric, JOBENGINE.name, n, result)
    ctx.log(f"{metric} rep {rep + 1}: {value.value:,.0f} jobs/s")
    return value


async def run(ctx: Context) -> None:
    """Bulk SQL and defer_many per repetition, alternating; their ratio."""
    if not jobengine_only(ctx, "pyapi", "jobengine's own Python API against its own SQL path"):
        return
    for rep in range(ctx.options.reps):
        values = {v: await _enqueue(ctx, v, rep) for v in alternated(SQL, DEFER_MANY, rep)}
        sql, many = values[SQL], values[DEFER_MANY]
        if sql is not None and many is not None:
            ctx.results.add("pyapi.ratio", JOBENGINE.name, Value(many.value / sql.value))
