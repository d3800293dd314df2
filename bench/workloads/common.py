"""What the workloads share: the run context, fresh databases, and one burn-down."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from bench import db
from bench.config import Options, Sizes
from bench.peers._cpu import Meter, database_from_dsn
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
    #: the server's postmaster, when its processes are visible here (for their CPU time)
    postmaster: int | None = None

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


def jobengine_only(ctx: Context, workload: str, why: str) -> bool:
    """Note every other system as not run (`why`); whether jobengine is among the systems."""
    for system in ctx.systems:
        if system is not JOBENGINE:
            ctx.results.skip(f"{system.label} {workload}: not run: {why}")
    return ctx.has_jobengine()


def alternated(first: str, second: str, rep: int) -> list[str]:
    """Two variants in repetition `rep`'s order (swapped every other one: none always first)."""
    return [first, second] if rep % 2 == 0 else [second, first]


def database_name(ctx: Context, system: System) -> str:
    """The one database a system's runs use (dropped and created for every run)."""
    return f"{ctx.options.db_prefix}_{system.name}"


async def fresh(ctx: Context, system: System) -> str:
    """Drop and create the system's database, install its schema; return its DSN."""
    dsn = await db.recreate(ctx.admin_dsn, database_name(ctx, system))
    await step(system, "install", dsn, limit=ctx.limit)
    return dsn


def add_step_cpu(ctx: Context, metric: str, column: str, jobs: int,
                 result: dict[str, Any]) -> None:
    """Record the CPU a step measured over its timed part (`"cpu"` in its JSON) per job."""
    cpu = result.get("cpu") or {}
    if "process" in cpu:
        ctx.results.add_cpu(metric, column, jobs, float(cpu["process"]),
                            None if cpu.get("database") is None else float(cpu["database"]),
                            float(cpu.get("foreign") or 0.0))
        _log_foreign(ctx, f"{metric} {column}", float(cpu.get("foreign") or 0.0),
                     int(cpu.get("foreign_exited") or 0))


def _log_foreign(ctx: Context, what: str, foreign: float, exited: int) -> None:
    """Say when other databases' sessions used the server during a measurement.

    (A lone exited one is usually the harness's own CHECKPOINT connection, just closed.)
    """
    if foreign > 0.0:
        ctx.log(f"{what}: other databases' backends used {foreign * 1000:.0f} ms of CPU (left "
                f"out){f', {exited} of them exited meanwhile (left in)' if exited else ''}")


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
               tag: str, expected: int | None = None, metric: str = "") -> Value:
    """Time one worker at `concurrency` through n queued jobs; jobs/s (a bound on timeout).

    The worker is started and set up first; CHECKPOINT; then "go" starts the
    clock, which stops when a poll finds no job in a non-final state. With a
    `metric`, the CPU of the worker (and its children) and of every PostgreSQL
    process over the same interval, per job processed, goes to `<metric>.cpu*`.
    """
    worker = Worker(system, dsn, concurrency=concurrency, log_path=ctx.path(f"{tag}.log"))
    meter = Meter(worker.pid, ctx.postmaster, database_from_dsn(dsn))
    processed = n
    try:
        await worker.ready()
        await db.checkpoint(ctx.admin_dsn)
        conn = await asyncpg.connect(dsn)
        try:
            meter.start()
            worker.go()
            started = time.perf_counter()
            seconds, timed_out = await db.wait_until_false(
                conn, system.unfinished_sql, limit=ctx.limit,
                interval=ctx.options.poll_interval, started=started)
            meter.stop()
            if timed_out:
                before = 0 if expected is None else expected - n
                processed = int(await conn.fetchval(system.succeeded_sql)) - before
        finally:
            await conn.close()
        await worker.stop()
    except StepFailed as exc:
        ctx.results.note(f"{system.label} {tag}: {exc}")
        raise
    finally:
        worker.close()
    if metric:
        ctx.results.add_cpu(metric, system.name, processed, meter.process, meter.database,
                            meter.foreign)
        _log_foreign(ctx, tag, meter.foreign, meter.foreign_exited)
    if timed_out:
        ctx.results.note(f"{system.label} {tag}: not finished within {ctx.limit:g}s")
        return Value(n / seconds, "<")
    await verify(ctx, system, dsn, n if expected is None else expected, tag)
    return Value(n / seconds)
