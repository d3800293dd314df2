"""Workload: many producers — 32 connections enqueuing single jobs, one transaction each.

Each connection enqueues one job per transaction, back to back, for 15 s, the
way a user of the system would (jobengine: a plain autocommitted
`INSERT INTO jobengine.jobs (kind, payload) VALUES (...)` on asyncpg; the
peers: their own single-enqueue call). PostgreSQL takes a global lock at the
commit of every transaction that sent a NOTIFY, so notifying commits
serialise; the same run therefore also measures the floor: the same inserts
into a plain table with no triggers, and into that table with one
statement-level trigger sending one `pg_notify` (`bench/peers/floor_peer.py`).
Every variant reports jobs/s, CPU per job, and its rate over the plain
table's in the same repetition.

jobengine also runs once per extra notification mode in `JOBENGINE_MODES`: a
setup hook that runs after the schema is installed, before the inserts.
Adding a mode is one line there; a mode the installed schema does not know is
skipped with the reason under the table.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from bench import db
from bench.procs import StepFailed, StepTimeout, step
from bench.stats import Value
from bench.systems import FLOOR_NOTIFY, FLOOR_PLAIN, JOBENGINE, System
from bench.workloads.common import Context, add_step_cpu, database_name, fresh

#: after the schema is installed: None when the database is ready, else why the variant is skipped
Setup = Callable[[str], Awaitable[str | None]]

RATE = "producers.rate"
FLOOR = "producers.floor"


def jobengine_setting(name: str, value: str) -> Setup:
    """A setup hook: `jobengine.settings` row `name = value` (as the schema owner)."""

    async def setup(dsn: str) -> str | None:
        try:
            await db.execute(
                dsn, "INSERT INTO jobengine.settings (name, value) VALUES ($1, $2)"
                " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value", name, value)
        except asyncpg.PostgresError as exc:
            return (f"jobengine.settings does not take {name} = '{value}' in this schema "
                    f"({exc.sqlstate}: {str(exc).splitlines()[0]})")
        return None

    return setup


#: jobengine's notification modes run besides the default one: mode -> setup hook
JOBENGINE_MODES: dict[str, Setup] = {
    "relayed": jobengine_setting("notify_mode", "relayed"),
}


@dataclass(frozen=True)
class Variant:
    """One column of the workload: whose script enqueues, into what."""

    key: str
    label: str
    system: System
    setup: Setup | None = None


def variants(ctx: Context) -> list[Variant]:
    """The systems under test, jobengine's extra modes, then the two floors."""
    out = [Variant(s.name, s.label, s) for s in ctx.systems]
    if ctx.has_jobengine():
        out += [Variant(f"jobengine_{mode}", f"jobengine (notify_mode {mode})", JOBENGINE, hook)
                for mode, hook in JOBENGINE_MODES.items()]
    return [*out, *(Variant(f.name, f.label, f) for f in (FLOOR_PLAIN, FLOOR_NOTIFY))]


async def _one(ctx: Context, v: Variant, rep: int, skipped: set[str]) -> float | None:
    """One run of one variant in a fresh database: jobs/s (None: skipped or failed).

    A variant whose setup hook says no is added to `skipped` (not tried again).
    """
    s = ctx.sizes
    dsn = await fresh(ctx, v.system)
    if v.setup is not None:
        reason = await v.setup(dsn)
        if reason is not None:
            ctx.results.skip(f"many producers, {v.label}: {reason}")
            skipped.add(v.key)
            return None
    await db.checkpoint(ctx.admin_dsn)
    try:
        result = await step(v.system, "enqueue-many", dsn,
                            "--connections", str(s.producers_connections),
                            "--seconds", str(s.producers_seconds),
                            limit=s.producers_seconds + ctx.limit)
    except StepTimeout:
        ctx.results.note(f"many producers, {v.label} rep {rep + 1}: not done within "
                         f"{s.producers_seconds + ctx.limit:g}s")
        return None
    except StepFailed as exc:
        ctx.results.note(f"many producers, {v.label} rep {rep + 1}: {exc}")
        return None
    inserted, seconds = int(result["inserted"]), float(result["seconds"])
    queued = int(await db.fetchval(dsn, v.system.backlog_sql))
    if queued != inserted:
        ctx.results.note(f"many producers, {v.label} rep {rep + 1}: {queued} jobs queued, "
                         f"{inserted} enqueued")
    rate = inserted / seconds
    ctx.results.add(RATE, v.key, Value(rate))
    add_step_cpu(ctx, RATE, v.key, inserted, result)
    ctx.log(f"{RATE} rep {rep + 1} {v.key}: {rate:,.0f} jobs/s ({inserted:,} in {seconds:.1f}s)")
    return rate


async def run(ctx: Context) -> None:
    """Every variant once per repetition, in a rotated order; then each one's share of the floor."""
    every = variants(ctx)
    systems = {s.name for s in ctx.systems}
    for v in every:
        if v.key not in systems:
            ctx.results.column(v.key, v.label)
    skipped: set[str] = set()
    try:
        for rep in range(ctx.options.reps):
            k = rep % len(every)
            rates: dict[str, float] = {}
            for v in every[k:] + every[:k]:
                if v.key in skipped:
                    continue
                rate = await _one(ctx, v, rep, skipped)
                if rate is not None:
                    rates[v.key] = rate
            floor = rates.get(FLOOR_PLAIN.name)
            if floor:
                for key, rate in rates.items():
                    ctx.results.add(FLOOR, key, Value(rate / floor))
    finally:
        for floor_system in (FLOOR_PLAIN, FLOOR_NOTIFY):
            await db.drop(ctx.admin_dsn, database_name(ctx, floor_system))
