"""Workload: limits (jobengine only) — the claim with limits and fairness against the plain one.

The issue's target: the claim with limits and fair rotation on stays within
10% of the burn-down without them, and idle pickup stays at p99 ≤ 5 ms. So,
per concurrency (10 and 50) and repetition, two burn-downs of the same N
no-op jobs, each in a fresh database set up exactly as the burn-down's
(bulk-inserted by SQL, untimed; one daemon; `burn`), in an order alternated
per repetition:
- `plain`: no job has a limit key (the burn-down workload itself);
- `limited`: job i has key i mod 100 (`bench.config.LIMITS`: 200 jobs per key
  at 20k); 20 keys have `max_running = 2`, 20 others `max_starts = 100 per 1
  s`, 60 none; every job has a key, so every claim goes through the keyed path.
Their ratio in the same repetition is the figure.

After each limited run the ledger is read back to check that the limits held
(a `note:` if not) and how close the run came to them:
- concurrency: per key, the ledger's transitions into and out of `running`
  in the ledger's id order, summed; the peak. The id order, not
  `occurred_at`: the claim's rows carry its statement's start time but it
  counts the running jobs later in that statement, so a finish that
  committed in between would look like an overlap. A ledger id is drawn when
  its row is written (after the claim counted; before a finish commits), so
  an overlap in id order is a real one;
- rate: per key, the most starts (transitions into `running`) whose
  `occurred_at` lie within `per` less `LIMITS.rate_slack` (the claim counts a window
  ending at a clock reading taken after its statement started; a claim
  statement shorter than the slack cannot make a false alarm).

Why these limits do not bound the throughput by themselves: with the claim's
round-robin every key gets about 1/100 of the jobs/s (T/100 starts/s at T
jobs/s), below 100/s up to 10,000 jobs/s (100 keys x 100/s: raise
`LIMITS.max_starts` on a machine that fast); 200 jobs need at least 1 s at
100/s, against burn-downs of 4 s or more. A key with 2 running holds 2/C of
the daemon's slots at concurrency C. `--quick` runs the limited burn-down at
concurrency 10 only (`Sizes.limits_variants`, `limits_pickups = 0`).

Then idle pickup with the limits configured, as workload 3 but with
`limits_pickups` inserts 20 ms apart whose keys cycle through an unlimited
key, a concurrency-limited one and a rate-limited one (a key recurs every 60
ms, so no limit holds a job back): p50 and p99 per kind of key.
"""

from __future__ import annotations

import asyncpg

from bench.config import LIMITS
from bench.stats import Value, percentile
from bench.systems import JOBENGINE, System, jobengine_keyed
from bench.workloads.common import Context, burn, enqueue_bulk, fresh
from bench.workloads.pickup import add_percentiles, session

PLAIN = "plain"
LIMITED = "limited"

#: the pickup's kinds of key, in the order the inserted jobs cycle through them
PICKUP_KEYS = {
    "free": LIMITS.free_keys()[0],
    "concurrency": LIMITS.concurrency_keys()[0],
    "rate": LIMITS.rate_keys()[0],
}

#: why each peer is not run
UNSUPPORTED = {
    "pgqueuer": "its limits (concurrency_limit, requests_per_second) are per entrypoint, set in "
                "the worker's code, not per key of a job",
    "procrastinate": "a job's lock lets one job per lock run at a time (no limit of 2); no rate "
                     "limits",
    "oban": "open-source oban limits concurrency per queue; per-key and rate limits are Oban "
            "Pro's",
}

LIMITS_SQL = """
INSERT INTO jobengine.concurrency_limits (key, max_running) SELECT unnest($1::text[]), $2;
"""
RATE_LIMITS_SQL = """
INSERT INTO jobengine.rate_limits (key, max_starts, per)
SELECT unnest($1::text[]), $2, make_interval(secs => $3)
"""

#: per key of $1: the most jobs running at once, from the ledger in id order
PEAK_RUNNING_SQL = """
SELECT e.key, max(e.running)::integer FROM (
    SELECT j.limit_key AS key,
           sum(CASE WHEN h.to_status = 'running' THEN 1 ELSE -1 END)
               OVER (PARTITION BY j.limit_key ORDER BY h.id) AS running
    FROM jobengine.job_history h JOIN jobengine.jobs j ON j.id = h.job_id
    WHERE j.limit_key = ANY ($1::text[])
      AND (h.to_status = 'running' OR h.from_status = 'running')) e
GROUP BY e.key
"""

#: per key of $1: the most starts within any $2 seconds, from the ledger's times
PEAK_STARTS_SQL = """
SELECT e.key, max(e.starts)::integer FROM (
    SELECT j.limit_key AS key,
           count(*) OVER (PARTITION BY j.limit_key ORDER BY h.occurred_at
                          RANGE BETWEEN make_interval(secs => $2) PRECEDING AND CURRENT ROW)
               AS starts
    FROM jobengine.job_history h JOIN jobengine.jobs j ON j.id = h.job_id
    WHERE j.limit_key = ANY ($1::text[]) AND h.to_status = 'running') e
GROUP BY e.key
"""


async def configure(dsn: str) -> None:
    """The concurrency and rate limits of `LIMITS`, as the schema's owner would set them."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute(LIMITS_SQL, LIMITS.concurrency_keys(), LIMITS.max_running)
            await conn.execute(RATE_LIMITS_SQL, LIMITS.rate_keys(), LIMITS.max_starts,
                               LIMITS.per)
    finally:
        await conn.close()


async def _peaks(dsn: str) -> tuple[dict[str, int], dict[str, int]]:
    """(most running at once per concurrency-limited key, most starts per rate window)."""
    conn = await asyncpg.connect(dsn)
    try:
        running = await conn.fetch(PEAK_RUNNING_SQL, LIMITS.concurrency_keys())
        starts = await conn.fetch(PEAK_STARTS_SQL, LIMITS.rate_keys(), LIMITS.checked_window)
    finally:
        await conn.close()
    return {r[0]: r[1] for r in running}, {r[0]: r[1] for r in starts}


def _over(peaks: dict[str, int], limit: int) -> str:
    """The keys whose peak is over the limit, with their peaks ("" if none)."""
    over = sorted(k for k, n in peaks.items() if n > limit)
    return f"{len(over)} key(s) ({', '.join(f'{k}: {peaks[k]}' for k in over)})" if over else ""


async def check(ctx: Context, dsn: str, metric: str, tag: str) -> None:
    """Read the limited run's ledger back: the peaks as figures, a note for any limit broken."""
    running, starts = await _peaks(dsn)
    peak_running = max(running.values(), default=0)
    peak_starts = max(starts.values(), default=0)
    ctx.results.add(f"{metric}.peak_running", JOBENGINE.name, Value(float(peak_running)))
    ctx.results.add(f"{metric}.peak_starts", JOBENGINE.name, Value(float(peak_starts)))
    over = _over(running, LIMITS.max_running)
    if over:
        ctx.results.note(f"jobengine {tag}: more than {LIMITS.max_running} jobs running at once "
                         f"for {over}")
    fast = _over(starts, LIMITS.max_starts)
    if fast:
        ctx.results.note(f"jobengine {tag}: more than {LIMITS.max_starts} starts within "
                         f"{LIMITS.checked_window:g}s for {fast}")
    ctx.log(f"{tag}: most running at once for one key {peak_running} (limit "
            f"{LIMITS.max_running}); most starts of one key in {LIMITS.checked_window:g}s "
            f"{peak_starts} (limit {LIMITS.max_starts} per {LIMITS.per:g}s)")


async def _burn(ctx: Context, variant: str, concurrency: int, rep: int) -> Value:
    """One burn-down of the variant in a fresh database; its jobs/s (and CPU, checks)."""
    metric = f"limits.c{concurrency}"
    system: System = JOBENGINE
    tag = f"{metric}.{variant}-{rep + 1}"
    dsn = await fresh(ctx, system)
    if variant == LIMITED:
        system = jobengine_keyed(LIMITS.names())
        await configure(dsn)
    n = ctx.sizes.burndown
    await enqueue_bulk(ctx, system, dsn, n)
    value = await burn(ctx, system, dsn, n=n, concurrency=concurrency, tag=tag,
                       metric=f"{metric}.{variant}")
    ctx.results.add(f"{metric}.{variant}", JOBENGINE.name, value)
    ctx.log(f"{metric} rep {rep + 1} {variant}: {value.bound}{value.value:,.0f} jobs/s")
    if variant == LIMITED:
        await check(ctx, dsn, metric, tag)
    return value


def ratio(limited: Value, plain: Value) -> Value | None:
    """limited / plain; a bound if one of them timed out (None if both did)."""
    if limited.bound and plain.bound:
        return None
    return Value(limited.value / plain.value, limited.bound or (">" if plain.bound else ""))


async def _pickups(ctx: Context) -> None:
    """Idle pickup with the limits configured, per kind of key."""
    s = ctx.sizes
    system = jobengine_keyed(list(PICKUP_KEYS.values()))
    for rep in range(ctx.options.reps):
        result = await session(ctx, system, rep, kind="limits-pickup", n=s.limits_pickups,
                               rate=1.0 / s.pickup_interval, connections=1, setup=configure)
        for index, kind in enumerate(PICKUP_KEYS):
            mine = set(range(index, s.limits_pickups, len(PICKUP_KEYS)))
            latencies, missing = result.latencies(mine)
            if missing:
                ctx.results.note(f"jobengine limits pickup rep {rep + 1}, {kind} key: "
                                 f"{missing} jobs never started")
            add_percentiles(ctx, f"limits.pickup.{kind}", JOBENGINE.name, latencies, missing,
                            {"p50": 50, "p99": 99})
            ctx.log(f"limits pickup rep {rep + 1} {kind} key: p50 "
                    f"{percentile(latencies, 50):.1f} p99 {percentile(latencies, 99):.1f} ms")


async def run(ctx: Context) -> None:
    """Plain and limited burn-downs per concurrency and repetition, alternating; then pickups."""
    for system in ctx.systems:
        if system is not JOBENGINE:
            ctx.results.skip(f"{system.label} limits: not run: {UNSUPPORTED[system.name]}")
    if not ctx.has_jobengine():
        return
    variants = [v for v in (PLAIN, LIMITED) if v in ctx.sizes.limits_variants]
    for concurrency in ctx.sizes.limits_concurrencies:
        for rep in range(ctx.options.reps):
            order = variants if rep % 2 == 0 else variants[::-1]
            values = {v: await _burn(ctx, v, concurrency, rep) for v in order}
            value = ratio(values[LIMITED], values[PLAIN]) if len(values) == 2 else None
            if value is not None:
                ctx.results.add(f"limits.c{concurrency}.ratio", JOBENGINE.name, value)
    if ctx.sizes.limits_pickups:
        await _pickups(ctx)
