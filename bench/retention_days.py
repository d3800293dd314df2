"""Steady load under retention, one simulated day at a time: do `jobs` and the ledger stop growing?

    python -m bench.retention_days [JOBS_PER_DAY] [DAYS] [WINDOW_DAYS]

(defaults 1,000,000 jobs a day, 6 days, a 2-day window.) Makes a scratch
database on 127.0.0.1:5432. Simulated day d (0 .. DAYS-1) is the real day that
began DAYS-d days ago: JOBS_PER_DAY finished jobs created over it, each with the
ledger rows and hash chain a real run leaves (the scale workload's `ledger`
loader, with its triggers off for the load, as there). Days are UTC days, so
each fills one ledger partition. After each day: `jobengine retention run`
with `finished_jobs` and `audit` set so that the window of WINDOW_DAYS ends
where that day ends (it ends about a second later: the CLI's start-up),
then `VACUUM jobengine.jobs` (autovacuum's part), then the sizes. From day
WINDOW_DAYS on, each pass removes a whole day of jobs and ledger rows, and
the sizes should stay flat. Each line gives the pass's wall time (the CLI's
process included) and its own duration as `retention_log` records it, and
the time `jobengine.ledger_day_digest` takes over the day just loaded: what
sealing that day costs (a real pass seals each day once, the hour after it
ends; the simulated days lie in the past, so the passes here seal none).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from bench.workloads import scale
from jobengine.store import migrate

SERVER = "postgresql://postgres@127.0.0.1:5432"
DB = "bench_retention_days"

#: the start of today (UTC)
MIDNIGHT = "(date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"

SIZES_SQL = """
SELECT pg_total_relation_size('jobengine.jobs')::float8,
       (SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), 0)::float8
        FROM pg_inherits i WHERE i.inhparent = 'jobengine.ledger'::regclass),
       (SELECT count(*) FROM jobengine.jobs),
       (SELECT count(*) FROM jobengine.ledger)
"""


async def _load_day(conn: asyncpg.Connection, k: int, n: int, began_days_ago: int) -> float:
    """n finished jobs created over the UTC day `began_days_ago` days before today's; seconds."""
    created = (f"{MIDNIGHT} - interval '{began_days_ago} days'"
               " + interval '1 day' * (g::float8 / $4::integer)")
    sql = await scale.ledger_insert_sql(conn, k, created)
    base = await conn.fetchval("SELECT max(id) FROM jobengine.jobs")
    started = time.perf_counter()
    async with scale.jobs_triggers_off(conn):
        await conn.execute(sql, base, 1, n, n)
    return time.perf_counter() - started


async def _seal_seconds(conn: asyncpg.Connection, began_days_ago: int) -> tuple[float, int]:
    """Seconds to digest (as sealing does) the UTC day just loaded, and its rows."""
    day = await conn.fetchval(
        f"SELECT (({MIDNIGHT} - interval '{began_days_ago} days') AT TIME ZONE 'UTC')::date")
    started = time.perf_counter()
    rows = await conn.fetchval("SELECT rows FROM jobengine.ledger_day_digest($1)", day)
    return time.perf_counter() - started, int(rows)


def _logged_seconds(report: str) -> str:
    """The pass's duration as its `retention_log` row has it (the report's last line)."""
    found = re.search(r"retention_log id \d+, ([0-9.]+)s", report)
    return found.group(1) if found else "?"


def _retention_pass(dsn: str, keep_seconds: float, config: Path) -> tuple[float, str]:
    """`jobengine retention run` keeping `keep_seconds`; (seconds, its report)."""
    config.write_text(f'[retention]\nfinished_jobs = "{keep_seconds:.3f}s"\n'
                      f'audit = "{keep_seconds:.3f}s"\n')
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "jobengine.cli.main", "retention", "run",
                           "--config", str(config), "--dsn", dsn],
                          capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"retention run exited {done.returncode}: {done.stderr.strip()[-400:]}")
    return seconds, done.stdout


async def run(per_day: int, days: int, window: int) -> None:
    """Print one line per simulated day: load and pass seconds, sizes and row counts."""
    admin = await asyncpg.connect(f"{SERVER}/postgres")
    await admin.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{DB}"')
    await admin.close()
    dsn = f"{SERVER}/{DB}"
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    sample = await scale.ledger_sample(dsn)
    if sample is None:
        raise SystemExit("this schema's ledger chain cannot be redone by the loader")
    job, k = sample
    conn = await scale.loader_connection(dsn)
    try:
        await conn.execute("SELECT jobengine.ledger_prepare_v1(1, (now() AT TIME ZONE 'UTC')::date"
                           f" - {days + 2})")
        await conn.execute(scale.SAMPLE_SQL.replace("$1", str(job)))
        print(f"{per_day:,} jobs a day ({k} ledger rows each), {days} days, window {window} days")
        print("| day | load s | pass s (wall) | pass s (logged) | seal s (rows) | jobs MB"
              " | ledger MB | jobs | ledger rows |")
        print("|---|---|---|---|---|---|---|---|---|")
        with tempfile.TemporaryDirectory() as tmp:
            for d in range(days):
                began = days - d
                load = await _load_day(conn, k, per_day, began)
                seal, sealed_rows = await _seal_seconds(conn, began)
                # the window of `window` days ends where simulated day d ends
                keep = await conn.fetchval(
                    f"SELECT extract(epoch FROM now() - ({MIDNIGHT}"
                    f" - interval '{window + began - 1} days'))::float8")
                seconds, report = _retention_pass(dsn, keep, Path(tmp) / "r.toml")
                await conn.execute("VACUUM jobengine.jobs")
                jobs_b, ledger_b, jobs, rows = await conn.fetchrow(SIZES_SQL)
                print(f"| {d} | {load:.0f} | {seconds:.1f} | {_logged_seconds(report)} | "
                      f"{seal:.1f} ({sealed_rows:,}) | {jobs_b / 1e6:,.0f} | "
                      f"{ledger_b / 1e6:,.0f} | {jobs:,} | {rows:,} |", flush=True)
                if d == days - 1:
                    print(f"\nthe last pass:\n{report}")
    finally:
        await conn.close()
        admin = await asyncpg.connect(f"{SERVER}/postgres")
        await admin.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    asyncio.run(run(*(args + [1_000_000, 6, 2][len(args):])))
