"""Workloads 3 and 4: pickup latency, on an idle worker and under a steady load.

Latency = the handler's first statement's time.time() minus the inserting
process's time.time() right after its insert committed (one host, one clock).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Container
from dataclasses import dataclass
from typing import Any

import asyncpg

from bench import db
from bench.procs import StepFailed, Worker, step
from bench.stats import Value, latencies_ms, percentile
from bench.systems import System
from bench.workloads.common import Context, fresh

#: the warm-up job's key (not counted)
WARM_UP = -1


async def _drain(ctx: Context, dsn: str, unfinished_sql: str, limit: float) -> bool:
    """Wait until no job is left unfinished; False on timeout."""
    conn = await asyncpg.connect(dsn)
    try:
        _, timed_out = await db.wait_until_false(conn, unfinished_sql, limit=limit,
                                                 interval=ctx.options.poll_interval)
        return not timed_out
    finally:
        await conn.close()


async def _paced(ctx: Context, dsn: str, worker: Worker, *, n: int, rate: float,
                 connections: int, tag: str, first: int = 0) -> list[list[float]]:
    out = ctx.path(f"{tag}-inserted.json")
    await step(worker.system, "enqueue-paced", dsn, "--n", str(n), "--rate", str(rate),
               "--connections", str(connections), f"--first={first}", "--out", str(out),
               limit=n / rate + ctx.limit)
    inserted: list[list[float]] = json.loads(out.read_text())
    return inserted


@dataclass
class Session:
    """What one worker saw in one session: the inserts, the handler's starts, the backlog."""

    #: [key, time.time() right after its insert committed]
    inserted: list[list[float]]
    #: [key, time.time() at the handler's first statement]
    handled: list[list[Any]]
    #: jobs in a non-final state the moment the last insert committed
    backlog: int

    def latencies(self, keys: Container[Any] | None = None) -> tuple[list[float], int]:
        """Latencies in ms (sorted) of these keys (default: all), and how many never started."""
        inserted = [r for r in self.inserted if keys is None or r[0] in keys]
        return latencies_ms(inserted, self.handled, skip={WARM_UP})

    def achieved(self) -> float:
        """The insert rate achieved, per second."""
        times = sorted(t for _, t in self.inserted)
        return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0


async def session(ctx: Context, system: System, rep: int, *, kind: str, n: int, rate: float,
                  connections: int,
                  setup: Callable[[str], Awaitable[None]] | None = None) -> Session:
    """One worker in a fresh database, warmed up, then n paced inserts.

    `setup` runs on the fresh database before the worker starts.
    """
    tag = f"{kind}-{system.name}-{rep + 1}"
    dsn = await fresh(ctx, system)
    if setup is not None:
        await setup(dsn)
    worker = Worker(system, dsn, concurrency=ctx.sizes.pickup_concurrency,
                    log_path=ctx.path(f"{tag}.log"), record_path=ctx.path(f"{tag}-handled.json"))
    try:
        await worker.ready()
        worker.go()
        await _paced(ctx, dsn, worker, n=1, rate=1.0, connections=1, tag=f"{tag}-warm",
                     first=WARM_UP)
        if not await _drain(ctx, dsn, system.unfinished_sql, 30.0):
            raise StepFailed(f"{system.label} {kind}: the warm-up job did not finish in 30 s")
        await db.checkpoint(ctx.admin_dsn)
        inserted = await _paced(ctx, dsn, worker, n=n, rate=rate, connections=connections,
                                tag=tag)
        backlog = int(await db.fetchval(dsn, system.backlog_sql))
        drained = await _drain(ctx, dsn, system.unfinished_sql, ctx.limit)
        handled = await worker.stop()
    finally:
        worker.close()
    if not drained:
        ctx.results.note(f"{system.label} {tag}: jobs still unfinished {ctx.limit:g}s "
                         "after the last insert")
    return Session(inserted, handled, backlog)


def add_percentiles(ctx: Context, prefix: str, system: str, latencies: list[float],
                    missing: int, which: dict[str, float]) -> None:
    """Record percentiles `which` of latencies as `<prefix>.<name>` (bounds if jobs were lost)."""
    bound = ">" if missing else ""
    for name, p in which.items():
        ctx.results.add(f"{prefix}.{name}", system, Value(percentile(latencies, p), bound))


async def run_idle(ctx: Context) -> None:
    """Workload 3: 200 single inserts ~20 ms apart to an idle worker (concurrency 10)."""
    s = ctx.sizes
    for rep in range(ctx.options.reps):
        for system in ctx.rotated(rep):
            result = await session(ctx, system, rep, kind="pickup", n=s.pickups,
                                   rate=1.0 / s.pickup_interval, connections=1)
            latencies, missing = result.latencies()
            if missing:
                ctx.results.note(f"{system.label} pickup rep {rep + 1}: {missing} jobs "
                                 "never started")
            add_percentiles(ctx, "pickup", system.name, latencies, missing,
                            {"p50": 50, "p95": 95, "p99": 99, "max": 100})
            ctx.log(f"pickup rep {rep + 1} {system.name}: p50 {percentile(latencies, 50):.1f} "
                    f"p99 {percentile(latencies, 99):.1f} ms")


async def run_steady(ctx: Context) -> None:
    """Workload 4: single inserts at a steady rate (300/s for 30 s) to one worker."""
    s = ctx.sizes
    n = int(s.steady_rate * s.steady_seconds)
    for rep in range(ctx.options.reps):
        for system in ctx.rotated(rep):
            started = time.perf_counter()
            result = await session(ctx, system, rep, kind="steady", n=n, rate=s.steady_rate,
                                   connections=s.steady_connections)
            latencies, missing = result.latencies()
            achieved = result.achieved()
            if missing:
                ctx.results.note(f"{system.label} steady rep {rep + 1}: {missing} jobs "
                                 "never started")
            add_percentiles(ctx, "steady", system.name, latencies, missing,
                            {"p50": 50, "p99": 99})
            ctx.results.add("steady.backlog", system.name, Value(float(result.backlog)))
            ctx.results.add("steady.rate", system.name, Value(achieved))
            ctx.log(f"steady rep {rep + 1} {system.name}: p99 {percentile(latencies, 99):.1f} ms, "
                    f"backlog {result.backlog}, {achieved:,.0f}/s enqueued "
                    f"({time.perf_counter() - started:.0f}s)")
