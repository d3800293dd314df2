"""What the workloads share: the run context, fresh databases, and one burn-down."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench import db
from bench.config import Options, Sizes
from bench.procs import StepFailed, Worker, step
from bench.results import Results
from bench.stats import Value
from bench.systems import JOBENGINE, System

#: history rows (and timeline events) a no-op job that ran once leaves:
#: created, scheduled, started, completed
AUDIT_ROWS_PER_JOB = 4


@dataclass
class Context:
    """One bench run: the server, the systems, sizes and limits, and the results so far."""

    admin_dsn: str
    systems: list[System]
    options: Options
    results: Results

    @property
    def sizes(self) -> Sizes:
        """The workload sizes."""
        return self.options.sizes

    @property
    def limit(self) -> float:
        """Seconds a run may take before it is reported as a bound."""
        return self.options.limit

    def rotated(self, rep: int) -> list[System]:
        """The systems in this repetition's order (rotated, so none always goes first)."""
        k = rep % len(self.systems)
        return self.systems[k:] + self.systems[:k]

    def log(self, text: str) -> None:
        """Progress, on stderr."""
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def path(self, name: str) -> Path:
        """A file under the run's output folder (logs, records)."""
        p = self.options.out_dir / "runs" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def has_jobengine(self) -> bool:
        """Whether jobengine is among the systems (workloads 5-7 are jobengine's only)."""
        return JOBENGINE in self.systems


def database_name(ctx: Context, system: System) -> str:
    """The one database a system's runs use (dropped and created for every run)."""
    return f"{ctx.options.db_prefix}_{system.name}"


async def fresh(ctx: Context, system: System) -> str:
    """Drop and create the system's database, install its schema; return its DSN."""
    dsn = await db.recreate(ctx.admin_dsn, database_name(ctx, system))
    await step(system, "install", dsn, limit=ctx.limit)
    return dsn


async def enqueue_bulk(ctx: Context, system: System, dsn: str, n: int) -> float:
    """Queue n no-op jobs through the bulk path (untimed set-up for other workloads)."""
    result = await step(system, "enqueue-bulk", dsn, "--n", str(n), limit=ctx.limit)
    return float(result["seconds"])


async def verify(ctx: Context, system: System, dsn: str, expected: int, what: str) -> None:
    """Check that exactly `expected` jobs succeeded (and, for jobengine, their audit rows)."""
    conn = await asyncpg.connect(dsn)
    try:
        succeeded = int(await conn.fetchval(system.succeeded_sql))
        if succeeded != expected:
            ctx.results.note(f"{system.label} {what}: {succeeded} jobs succeeded, "
                             f"expected {expected}")
        if system is JOBENGINE:
            history = await conn.fetchval("SELECT count(*) FROM jobengine.job_history")
            events = await conn.fetchval("SELECT count(*) FROM jobengine.timeline_events")
            want = AUDIT_ROWS_PER_JOB * expected
            if history != want or events != want:
                ctx.results.note(f"jobengine {what}: {history} history rows and {events} "
                                 f"timeline events, expected {want} of each")
    finally:
        await conn.close()


async def burn(ctx: Context, system: System, dsn: str, *, n: int, concurrency: int,
               tag: str, expected: int | None = None) -> Value:
    """Time one worker at `concurrency` through n queued jobs; jobs/s (a bound on timeout).

    The worker is started and set up first; CHECKPOINT; then "go" starts the
    clock, which stops when a poll finds no job in a non-final state.
    """
    worker = Worker(system, dsn, concurrency=concurrency, log_path=ctx.path(f"{tag}.log"))
    try:
        await worker.ready()
        await db.checkpoint(ctx.admin_dsn)
        conn = await asyncpg.connect(dsn)
        try:
            worker.go()
            started = time.perf_counter()
            seconds, timed_out = await db.wait_until_false(
                conn, system.unfinished_sql, limit=ctx.limit,
                interval=ctx.options.poll_interval, started=started)
        finally:
            await conn.close()
        await worker.stop()
    except StepFailed as exc:
        ctx.results.note(f"{system.label} {tag}: {exc}")
        raise
    finally:
        worker.close()
    if timed_out:
        ctx.results.note(f"{system.label} {tag}: not finished within {ctx.limit:g}s")
        return Value(n / seconds, "<")
    await verify(ctx, system, dsn, n if expected is None else expected, tag)
    return Value(n / seconds)
