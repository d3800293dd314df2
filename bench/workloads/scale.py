"""Workload 5: scale — jobengine's burn-down (c10) with 1,000,000 finished jobs present.

The finished jobs, with the four history rows and four timeline events each
that a real run leaves, are generated once per bench run by SQL with triggers
off (disabled by the owner: jobengine's triggers fire even under
`session_replication_role = replica`) into a template database, which
every repetition copies (`CREATE DATABASE ... TEMPLATE`). Each repetition
also runs the same burn-down on empty tables, alternating, so the ratio
compares neighbouring runs.
"""

from __future__ import annotations

import time

import asyncpg

from bench import db
from bench.procs import step
from bench.stats import Value
from bench.systems import JOBENGINE
from bench.workloads.common import Context, burn, database_name, enqueue_bulk, fresh


def template_name(ctx: Context) -> str:
    """The template database holding the finished jobs."""
    return f"{ctx.options.db_prefix}_jobengine_scale_tpl"


_STEPS = """(VALUES
    (NULL::jobengine.job_status, 'pending'::jobengine.job_status, 0, 'created', 'job.created'),
    ('pending', 'scheduled', 0, 'ready', 'job.scheduled'),
    ('scheduled', 'running', 1, 'claimed', 'job.started'),
    ('running', 'completed', 1, 'completed', 'job.completed')
) AS s(from_status, to_status, attempt, reason, event_type)"""

#: The tables whose triggers the generator turns off, then back on as they were.
TABLES = ("jobengine.jobs", "jobengine.job_history", "jobengine.timeline_events")

GENERATE = [
    """INSERT INTO jobengine.jobs
        (kind, payload, status, attempt, status_reason, run_at, created_at, scheduled_at,
         started_at, finished_at, updated_at)
    SELECT 'noop', jsonb_build_object('i', g), 'completed', 1, 'completed', t, t, t, t, t, t
    FROM generate_series(1, $1::integer) AS g,
         LATERAL (SELECT now() - interval '30 days' + g * interval '1 second' AS t) AS x""",
    f"""INSERT INTO jobengine.job_history
        (job_id, from_status, to_status, attempt, occurred_at, reason, actor)
    SELECT j.id, s.from_status, s.to_status, s.attempt, j.created_at, s.reason, 'bench'
    FROM jobengine.jobs AS j CROSS JOIN {_STEPS}""",
    f"""INSERT INTO jobengine.timeline_events (event_id, job_id, event_type, occurred_at, envelope)
    SELECT e.event_id, e.id, e.event_type, e.created_at,
           jsonb_build_object(
               'event_id', e.event_id, 'event_type', e.event_type, 'schema_version', 1,
               'occurred_at', e.created_at, 'job_id', e.id, 'kind', e.kind, 'queue', e.queue,
               'from_status', e.from_status, 'to_status', e.to_status, 'attempt', e.attempt,
               'actor', 'bench', 'reason', e.reason)
    FROM (SELECT gen_random_uuid() AS event_id, j.id, j.kind, j.queue, j.created_at, s.*
          FROM jobengine.jobs AS j CROSS JOIN {_STEPS}) AS e""",
]


async def build_template(ctx: Context, rows: int) -> None:
    """A migrated database holding `rows` completed jobs with their audit rows, vacuumed."""
    started = time.perf_counter()
    dsn = await db.recreate(ctx.admin_dsn, template_name(ctx))
    await step(JOBENGINE, "install", dsn, limit=ctx.limit)
    conn = await asyncpg.connect(dsn)
    try:
        triggers = await conn.fetch(
            "SELECT tgrelid::regclass::text AS rel, tgname, tgenabled::text FROM pg_trigger"
            " WHERE tgrelid = ANY ($1::regclass[]) AND NOT tgisinternal", list(TABLES))
        for table in TABLES:
            await conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        for sql in GENERATE:
            await conn.execute(sql, rows) if "$1" in sql else await conn.execute(sql)
        for t in triggers:
            mode = {"A": "ENABLE ALWAYS", "R": "ENABLE REPLICA", "O": "ENABLE"}.get(
                t["tgenabled"], "DISABLE")
            await conn.execute(f'ALTER TABLE {t["rel"]} {mode} TRIGGER "{t["tgname"]}"')
        await conn.execute("VACUUM (ANALYZE) jobengine.jobs, jobengine.job_history,"
                           " jobengine.timeline_events")
        size = await conn.fetchval("SELECT pg_size_pretty(pg_database_size(current_database()))")
    finally:
        await conn.close()
    ctx.log(f"scale template: {rows:,} finished jobs, {size}, "
            f"built in {time.perf_counter() - started:.0f}s")


async def run(ctx: Context) -> None:
    """Empty-table and 1M-row burn-downs, alternating, per repetition; and their ratio."""
    if not ctx.has_jobengine():
        return
    s = ctx.sizes
    await build_template(ctx, s.scale_rows)
    name = database_name(ctx, JOBENGINE)
    try:
        for rep in range(ctx.options.reps):
            figures: dict[str, Value] = {}
            order = ["empty", "full"] if rep % 2 == 0 else ["full", "empty"]
            for which in order:
                if which == "empty":
                    dsn = await fresh(ctx, JOBENGINE)
                    expected = s.burndown
                else:
                    dsn = await db.recreate(ctx.admin_dsn, name, template=template_name(ctx))
                    expected = s.scale_rows + s.burndown
                await enqueue_bulk(ctx, JOBENGINE, dsn, s.burndown)
                value = await burn(ctx, JOBENGINE, dsn, n=s.burndown, concurrency=10,
                                   tag=f"scale-{which}-{rep + 1}", expected=expected)
                figures[which] = value
                ctx.results.add(f"scale.{which}", JOBENGINE.name, value)
                ctx.log(f"scale rep {rep + 1} {which}: {value.bound}{value.value:,.0f} jobs/s")
            ratio = figures["full"].value / figures["empty"].value
            ctx.results.add("scale.ratio", JOBENGINE.name, Value(ratio))
    finally:
        await db.drop(ctx.admin_dsn, template_name(ctx))
