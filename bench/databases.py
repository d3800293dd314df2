"""Databases (issue 15): `python -m bench.databases [--jobs N] [--reps R] [--failover-jobs N]`.

1. Burn-down through PgBouncer vs direct, per concurrency (10, 50): a fresh
   database on 127.0.0.1:5432, N no-op jobs bulk-inserted (untimed), one
   worker (the bench's jobengine peer: the in-process daemon) ready, CHECKPOINT,
   "go"; the clock stops when a poll (on a direct connection) finds no job left
   unfinished. Through PgBouncer the worker runs with `pooler = "pgbouncer"`
   and LISTEN on a direct `listen_dsn`; PgBouncer (Debian's, started here on a
   free loopback port) is in transaction mode with default_pool_size = 20.
   The order alternates per repetition; the ratio is taken within a repetition.
   WAL bytes per job, on a private cluster of the embedded binaries (fsync
   on; the shared server's WAL has other writers): `pg_current_wal_lsn()`
   before "go" and after the last job finished (the burn-down alone: claim,
   finish, ledger, notifications), and around the bulk insert (enqueue).
2. A failover: a primary and a synchronous hot standby of the embedded
   binaries on loopback (as `tests/test_failover.py`), 3 `jobengine run`
   processes on a multi-host DSN burning down no-op jobs; after a third are
   done the primary is stopped (immediate) and the standby promoted. Reported:
   the seconds without any claim (last claim the new primary knows of before
   the kill, to the first after), each daemon's first claim after the
   promotion, jobs lost (never completed), completed twice, and attempts that
   ran again (re-runs after a lost lease are allowed, not duplicates).
Prints one line per figure; the figures go into bench/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
from tests.netns import daemon_env, spawn, stop
from tests.servers import Clusters, PgBouncer

from bench import db, machine
from bench.peers._cpu import Meter, database_from_dsn, tree_seconds
from bench.procs import Worker, step
from bench.systems import JOBENGINE

SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
DATABASE = "bench_databases"
LIMIT = 180.0


async def until(conn: asyncpg.Connection, sql: str, *args: object, limit: float = LIMIT) -> None:
    """Poll `sql` until it is true (at most `limit` seconds)."""
    deadline = time.monotonic() + limit
    while not await conn.fetchval(sql, *args) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)


#: CPU µs per job of the last `burn`: the worker, PostgreSQL's backends, PgBouncer
CPU: dict[str, float] = {}


async def burn(dsn: str, worker_dsn: str, n: int, concurrency: int, log: Path,
               env: dict[str, str], server: str = SERVER,
               bouncer_pid: int | None = None) -> tuple[float, int, int]:
    """One burn-down; (jobs/s, WAL bytes per job of the burn-down, of the enqueue)."""
    await step(JOBENGINE, "install", dsn, limit=LIMIT)
    before_insert = await db.fetchval(dsn, "SELECT pg_current_wal_lsn()")
    await step(JOBENGINE, "enqueue-bulk", dsn, "--n", str(n), limit=LIMIT)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        worker = Worker(JOBENGINE, worker_dsn, concurrency=concurrency, log_path=log)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    conn = await asyncpg.connect(dsn)
    meter = Meter(worker.pid, await machine.postmaster(server), database_from_dsn(dsn))
    try:
        await worker.ready()
        await db.checkpoint(server)
        lsn0 = await conn.fetchval("SELECT pg_current_wal_lsn()")
        bouncer0 = tree_seconds(bouncer_pid) or 0.0 if bouncer_pid else 0.0
        meter.start()
        worker.go()
        seconds, timed_out = await db.wait_until_false(
            conn, JOBENGINE.unfinished_sql, limit=LIMIT, interval=0.005)
        meter.stop()
        bouncer = (tree_seconds(bouncer_pid) or 0.0) - bouncer0 if bouncer_pid else 0.0
        CPU.update(worker=meter.process * 1e6 / n, database=(meter.database or 0.0) * 1e6 / n,
                   pgbouncer=bouncer * 1e6 / n)
        lsn1 = await conn.fetchval("SELECT pg_current_wal_lsn()")
        done = int(await conn.fetchval(JOBENGINE.succeeded_sql))
        wal = int(await conn.fetchval("SELECT pg_wal_lsn_diff($1, $2)", lsn1, lsn0))
        wal_insert = int(await conn.fetchval("SELECT pg_wal_lsn_diff($1, $2)", lsn0,
                                             before_insert))
        await worker.stop()
    finally:
        await conn.close()
        worker.close()
    if timed_out or done != n:
        print(f"  note: {done} of {n} done{' (timed out)' if timed_out else ''}", file=sys.stderr)
    return n / seconds, wal // n, wal_insert // n


async def pooler_vs_direct(n: int, reps: int, out: Path,
                           concurrencies: tuple[int, ...] = (10, 50)) -> None:
    """Section 1 of the module doc."""
    bouncer = PgBouncer(SERVER, pool_size=20).start()
    try:
        for concurrency in concurrencies:
            ratios: list[float] = []
            rates: dict[str, list[float]] = {"direct": [], "pgbouncer": []}
            cpus: dict[str, list[float]] = {"direct": [], "pgbouncer": []}
            for rep in range(reps):
                order = ["direct", "pgbouncer"] if rep % 2 == 0 else ["pgbouncer", "direct"]
                got: dict[str, float] = {}
                for mode in order:
                    dsn = await db.recreate(SERVER, DATABASE)
                    log = out / f"c{concurrency}-{rep}-{mode}.log"
                    if mode == "direct":
                        rate, _w, _i = await burn(dsn, dsn, n, concurrency, log, {})
                    else:
                        env = {"BENCH_POOLER": "pgbouncer", "BENCH_LISTEN_DSN": dsn}
                        assert bouncer.proc is not None
                        rate, _w, _i = await burn(dsn, bouncer.dsn(DATABASE), n, concurrency,
                                                  log, env, bouncer_pid=bouncer.proc.pid)
                    got[mode] = rate
                    rates[mode].append(rate)
                    cpus[mode].append(sum(CPU.values()))
                    print(f"burn-down c{concurrency} rep {rep + 1} {mode}: {rate:,.0f} jobs/s; "
                          f"CPU per job: worker {CPU['worker']:.0f} + PostgreSQL "
                          f"{CPU['database']:.0f} + PgBouncer {CPU['pgbouncer']:.0f} µs",
                          flush=True)
                ratios.append(got["pgbouncer"] / got["direct"])
            med = {m: statistics.median(v) for m, v in rates.items()}
            print(f"== c{concurrency}: direct {med['direct']:,.0f} [{min(rates['direct']):,.0f}-"
                  f"{max(rates['direct']):,.0f}] pgbouncer {med['pgbouncer']:,.0f} "
                  f"[{min(rates['pgbouncer']):,.0f}-{max(rates['pgbouncer']):,.0f}] jobs/s; "
                  f"ratio {statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}] "
                  f"(target >= 0.8x); CPU per job (worker + PostgreSQL + PgBouncer) direct "
                  f"{statistics.median(cpus['direct']):.0f} µs, pgbouncer "
                  f"{statistics.median(cpus['pgbouncer']):.0f} µs")
    finally:
        bouncer.close()
        await db.drop(SERVER, DATABASE)


async def wal_per_job(n: int, out: Path) -> None:
    """WAL bytes per job, on a private cluster (the shared server's WAL has other writers)."""
    clusters = Clusters()
    try:
        server = clusters.new("wal").initdb().start(fsync="on", shared_buffers="256MB")
        await db.execute(server.dsn(), f"CREATE DATABASE {DATABASE}")
        dsn = server.dsn(DATABASE)
        for concurrency in (10, 50):
            await db.recreate(server.dsn(), DATABASE)
            rate, wal, wal_insert = await burn(dsn, dsn, n, concurrency,
                                               out / f"wal-c{concurrency}.log", {}, server.dsn())
            print(f"== WAL per job (private cluster, {n:,} jobs, c{concurrency}, "
                  f"{rate:,.0f} jobs/s): burn-down {wal:,} B, bulk enqueue {wal_insert:,} B",
                  flush=True)
    finally:
        clusters.close()


async def failover(n: int, out: Path) -> None:
    """Section 2 of the module doc."""
    clusters = Clusters()
    procs = []
    try:
        primary, standby = await clusters.synchronous_pair()
        both = (f"postgresql://postgres@{primary.host}:{primary.port},{standby.host}:"
                f"{standby.port}/jobs?target_session_attrs=read-write")
        spans = out / "failover-spans.log"
        for i in range(3):
            env = daemon_env(both, JOBENGINE_DAEMON_ID=f"d{i}",
                             JOBENGINE_HANDLERS_NAP="tests.handlers:nap",
                             JOBENGINE_TEST_SPANS=str(spans), JOBENGINE_DAEMON_CONCURRENCY="10",
                             JOBENGINE_DAEMON_LEASE_TTL="10")
            procs.append(spawn([sys.executable, "-m", "jobengine.cli.main", "run"], env,
                               out / f"failover-d{i}.log"))
        conn = await asyncpg.connect(primary.dsn("jobs"))
        await asyncio.sleep(3)  # the daemons start
        await conn.execute("INSERT INTO jobengine.jobs (kind, max_retries) SELECT 'nap', 10"
                           " FROM generate_series(1, $1)", n)
        await until(conn, "SELECT count(*) >= $1 FROM jobengine.jobs WHERE status = 'completed'",
                    n // 3)
        conn.terminate()
        killed = time.time()
        primary.stop()
        standby.promote()
        promoted = time.time()
        conn = await asyncpg.connect(standby.dsn("jobs"))
        await until(conn, "SELECT count(*) >= $1 FROM jobengine.jobs WHERE status = 'completed'", n)
        # The longest stretch with no claim at all, around the failover.
        gap = await conn.fetchval(
            "SELECT extract(epoch FROM max(at - before)) FROM ("
            " SELECT occurred_at AS at, lag(occurred_at) OVER (ORDER BY occurred_at) AS before"
            " FROM jobengine.job_history WHERE to_status = 'running'"
            " AND occurred_at BETWEEN to_timestamp($1) - interval '2 s'"
            " AND to_timestamp($2) + interval '10 s') g", killed, promoted)
        firsts = await conn.fetch(
            "SELECT actor, extract(epoch FROM min(occurred_at)) AS at FROM jobengine.job_history"
            " WHERE to_status = 'running' AND occurred_at > to_timestamp($1) GROUP BY actor"
            " ORDER BY actor", promoted)
        completed = await conn.fetchval(
            "SELECT count(DISTINCT job_id) FROM jobengine.job_history"
            " WHERE to_status = 'completed'")
        twice = await conn.fetchval(
            "SELECT count(*) - count(DISTINCT job_id) FROM jobengine.job_history"
            " WHERE to_status = 'completed'")
        reruns = await conn.fetchval("SELECT count(*) FROM jobengine.jobs WHERE attempt > 1")
        await conn.close()
        logs = [(out / f"failover-d{i}.log").read_text() for i in range(3)]
        resolved = sum(log.count('"outcome.resolved"') for log in logs)
        adopted = sum(log.count('"claim.resolved"') for log in logs)
        print(f"== failover ({n} jobs, 3 daemons): kill to promoted {promoted - killed:.2f} s; "
              f"longest stretch without any claim {float(gap or 0):.2f} s; first claim after "
              f"the promotion per daemon: "
              + ", ".join(f"{r['actor']} +{float(r['at']) - promoted:.2f} s" for r in firsts))
        print(f"== failover: lost {n - completed}, completed twice {twice}, attempts run again "
              f"{reruns}; read back after an unanswered COMMIT: {resolved} outcomes, "
              f"{adopted} claims")
    finally:
        for proc in procs:
            stop(proc)
        clusters.close()


def main() -> None:
    """Run both sections and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--failover-jobs", type=int, default=5_000)
    parser.add_argument("--only", choices=["pooler", "wal", "failover"])
    parser.add_argument("--concurrency", type=int, action="append",
                        help="the pooler section's concurrencies (default 10 and 50)")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bench-databases-"))
    print(f"logs in {out}", file=sys.stderr)
    if args.only in (None, "pooler"):
        asyncio.run(pooler_vs_direct(args.jobs, args.reps, out,
                                     tuple(args.concurrency or (10, 50))))
    if args.only in (None, "wal"):
        asyncio.run(wal_per_job(args.jobs, out))
    if args.only in (None, "failover"):
        asyncio.run(failover(args.failover_jobs, out))


if __name__ == "__main__":
    main()
