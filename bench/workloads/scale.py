"""Workload 5: scale — jobengine's burn-down (c10) with 10,000,000 finished jobs present.

The finished jobs (`--scale-rows`, default 10M), each with the four history
rows and four timeline events a real run leaves, are loaded once per bench
run into a template database, which every repetition copies (`CREATE
DATABASE ... TEMPLATE`, a file copy). Each repetition also runs the same
burn-down on empty tables, alternating, so the ratio compares neighbouring
runs. The load's time and the database's size are reported too; the load is
skipped with a note when the server's disk cannot hold the template and a copy.

How the template is loaded depends on what the schema allows:
- `direct`, where `job_history` and `timeline_events` are plain tables (up to
  migration 0003): by SQL alone with the owner's triggers off (jobengine's
  triggers fire even under `session_replication_role = replica`): one
  `INSERT ... SELECT FROM generate_series` for the jobs, then the history and
  the timeline in id-range parts on two connections, with the tables'
  secondary indexes dropped first and rebuilt after (in parallel, from their
  own definitions, checked identical);
- `ledger`, where they are views over `jobengine.ledger` (0004: daily
  partitions, rows hash-chained per job): one job is run through the engine
  (insert, `claim_v1`, `finish_v1`) as a sample, and every generated job is a
  copy of it shifted in time, with its ledger rows' hashes recomputed by the
  schema's own `ledger_hash` (checked first against the sample's stored ones)
  and `ledger_head` set to match, so `jobengine audit verify` passes. The
  jobs' triggers are off (the ledger's own refuse only UPDATE, DELETE and
  TRUNCATE); the day partitions are made first (`ledger_prepare_v1`); jobs and
  ledger rows go in by one statement per id range, on two connections;
- `engine`, for any other schema (or a ledger whose chain cannot be redone):
  through the jobs table with every trigger on, in big statements: chunks of
  pending jobs inserted by one statement, then claimed and finished in
  batches by the engine's own write functions (`claim_v1`, `finish_v1`) on two
  connections, as a daemon with no-op handlers would, VACUUMing the queue's
  indexes between chunks. The times are the load's own (the database's
  clock), so every job finished today; it is also much slower.
`direct` and `ledger` spread the jobs' lives over the 30 days before the load.

After the full burn-down of the first repetition (`RETENTION_REPS`) comes the
hook for a retention pass (`RETENTION`): timed when this jobengine has
`jobengine retention run`, skipped with a note when it does not.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from bench import db
from bench.procs import step
from bench.stats import Value
from bench.systems import JOBENGINE
from bench.workloads.common import Context, burn, database_name, enqueue_bulk, fresh


def template_name(ctx: Context) -> str:
    """The template database holding the finished jobs."""
    return f"{ctx.options.db_prefix}_jobengine_scale_tpl"


# --- the `direct` loader ------------------------------------------------------------------

_STEPS = """(VALUES
    (NULL::jobengine.job_status, 'pending'::jobengine.job_status, 0, 'created', 'job.created'),
    ('pending', 'scheduled', 0, 'ready', 'job.scheduled'),
    ('scheduled', 'running', 1, 'claimed', 'job.started'),
    ('running', 'completed', 1, 'completed', 'job.completed')
) AS s(from_status, to_status, attempt, reason, event_type)"""

#: The tables whose triggers the generator turns off, then back on as they were.
TABLES = ("jobengine.jobs", "jobengine.job_history", "jobengine.timeline_events")

#: $1 = rows: the jobs finished one after the other over the 30 days before the load
JOBS_SQL = """INSERT INTO jobengine.jobs
        (kind, payload, status, attempt, status_reason, run_at, created_at, scheduled_at,
         started_at, finished_at, updated_at)
    SELECT 'noop', jsonb_build_object('i', g), 'completed', 1, 'completed', t, t, t, t, t, t
    FROM generate_series(1, $1::integer) AS g,
         LATERAL (SELECT now() - interval '30 days'
                         + interval '30 days' * (g::float8 / $1::integer) AS t) AS x"""

#: $1, $2: the range of job ids this statement covers (the load is split into such parts)
HISTORY_SQL = f"""INSERT INTO jobengine.job_history
        (job_id, from_status, to_status, attempt, occurred_at, reason, actor)
    SELECT j.id, s.from_status, s.to_status, s.attempt, j.created_at, s.reason, 'bench'
    FROM jobengine.jobs AS j CROSS JOIN {_STEPS}
    WHERE j.id BETWEEN $1 AND $2"""

TIMELINE_SQL = f"""INSERT INTO jobengine.timeline_events
        (event_id, job_id, event_type, occurred_at, envelope)
    SELECT e.event_id, e.id, e.event_type, e.created_at,
           jsonb_build_object(
               'event_id', e.event_id, 'event_type', e.event_type, 'schema_version', 1,
               'occurred_at', e.created_at, 'job_id', e.id, 'kind', e.kind, 'queue', e.queue,
               'from_status', e.from_status, 'to_status', e.to_status, 'attempt', e.attempt,
               'actor', 'bench', 'reason', e.reason)
    FROM (SELECT gen_random_uuid() AS event_id, j.id, j.kind, j.queue, j.created_at, s.*
          FROM jobengine.jobs AS j CROSS JOIN {_STEPS}
          WHERE j.id BETWEEN $1 AND $2) AS e"""

#: the timeline costs ~2.5x the history per row: split so two connections end together
HISTORY_PARTS = 2
TIMELINE_PARTS = 5

#: a loading session: setup, not a measurement (the server's settings stay as they are)
_LOADER_SETTINGS = ("SET synchronous_commit = off", "SET maintenance_work_mem = '1GB'",
                    "SET work_mem = '256MB'",
                    "SET max_parallel_maintenance_workers = 2")


async def loader_connection(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn, command_timeout=None)
    for sql in _LOADER_SETTINGS:
        await conn.execute(sql)
    return conn


async def _in_parallel(conns: list[asyncpg.Connection], work: list[tuple[str, tuple[object, ...]]],
                       ) -> None:
    """Run the statements, each connection taking the next one as it gets free."""
    todo = list(work)

    async def worker(conn: asyncpg.Connection) -> None:
        while todo:
            sql, args = todo.pop(0)
            await conn.execute(sql, *args)

    await asyncio.gather(*(worker(c) for c in conns))


def _ranges(low: int, high: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous id ranges covering low..high."""
    size = max(1, -(-(high - low + 1) // parts))
    return [(a, min(high, a + size - 1)) for a in range(low, high + 1, size)]


async def _index_definitions(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    """(name, CREATE INDEX ...) of the three tables' indexes that back no constraint."""
    rows = await conn.fetch(
        "SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS def"
        " FROM pg_index i WHERE i.indrelid = ANY ($1::regclass[])"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)"
        " ORDER BY 1", list(TABLES))
    return [(r["name"], r["def"]) for r in rows]


async def load_direct(ctx: Context, dsn: str, rows: int) -> None:
    """The `direct` loader (see the module docstring)."""
    conns = [await loader_connection(dsn), await loader_connection(dsn)]
    first = conns[0]
    try:
        triggers = await first.fetch(
            "SELECT tgrelid::regclass::text AS rel, tgname, tgenabled::text FROM pg_trigger"
            " WHERE tgrelid = ANY ($1::regclass[]) AND NOT tgisinternal", list(TABLES))
        indexes = await _index_definitions(first)
        for table in TABLES:
            await first.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        for name, _ in indexes:
            await first.execute(f"DROP INDEX {name}")
        started = time.perf_counter()
        await first.execute(JOBS_SQL, rows)
        ctx.log(f"scale load: {rows:,} jobs in {time.perf_counter() - started:.0f}s")
        started = time.perf_counter()
        low, high = await first.fetchrow("SELECT min(id), max(id) FROM jobengine.jobs")
        await _in_parallel(conns, [
            *((TIMELINE_SQL, r) for r in _ranges(low, high, TIMELINE_PARTS)),
            *((HISTORY_SQL, r) for r in _ranges(low, high, HISTORY_PARTS)),
        ])
        ctx.log(f"scale load: {4 * rows:,} history rows and as many timeline events in "
                f"{time.perf_counter() - started:.0f}s")
        started = time.perf_counter()
        await _in_parallel(conns, [(definition, ()) for _, definition in indexes])
        ctx.log(f"scale load: {len(indexes)} indexes rebuilt in "
                f"{time.perf_counter() - started:.0f}s")
        if await _index_definitions(first) != indexes:
            raise RuntimeError("scale load: the rebuilt indexes differ from the schema's")
        for t in triggers:
            mode = {"A": "ENABLE ALWAYS", "R": "ENABLE REPLICA", "O": "ENABLE"}.get(
                t["tgenabled"], "DISABLE")
            await first.execute(f'ALTER TABLE {t["rel"]} {mode} TRIGGER "{t["tgname"]}"')
    finally:
        for conn in conns:
            await conn.close()


# --- the `ledger` loader ------------------------------------------------------------------

#: the sample lifecycle every generated job copies, shifted in time (one temp table a session)
SAMPLE_SQL = """
CREATE TEMP TABLE bench_job AS SELECT * FROM jobengine.jobs WHERE id = $1;
CREATE TEMP TABLE bench_rows AS
    SELECT row_number() OVER (ORDER BY l.id) AS k, l.*, l.occurred_at - j.created_at AS d_at,
           l.prev_at - j.created_at AS d_prev
    FROM jobengine.ledger l JOIN jobengine.jobs j ON j.id = l.job_id WHERE l.job_id = $1;
"""

#: a ledger row's hash, as the schema computes it ({p}: the previous hash; r: the sample row)
_HASH = ("jobengine.ledger_hash({p}, c.id, r.event_type, r.from_status, r.to_status, r.attempt,"
         " c.t + r.d_at, r.reason, r.actor, r.role, r.kind, r.queue, c.t + r.d_prev)")


#: a generated job's creation time: one after the other over the 30 days before the load
_SPREAD = "now() - interval '30 days' + interval '30 days' * (g::float8 / $4::integer)"


def _chain_sql(k: int, created: str = _SPREAD) -> str:
    """CTE `chain`: each generated job's g, id, creation time t, and its k rows' hashes h1..hk.

    $1: the first id minus one, $2 $3: the range of g, and $4 in `created`.
    """
    def link(i: int) -> str:
        previous = f"h{i - 1}.h" if i > 1 else "r.prev_hash"
        return (f"\n    CROSS JOIN LATERAL (SELECT {_HASH.format(p=previous)} AS h"
                f" FROM pg_temp.bench_rows r WHERE r.k = {i}) AS h{i}")

    return f"""WITH c AS (
    SELECT g, $1::bigint + g AS id, {created} AS t
    FROM generate_series($2::integer, $3::integer) AS g
), chain AS (
    SELECT c.*, {', '.join(f'h{i}.h AS h{i}' for i in range(1, k + 1))}
    FROM c{''.join(link(i) for i in range(1, k + 1))}
)"""


async def ledger_insert_sql(conn: asyncpg.Connection, k: int, created: str = _SPREAD) -> str:
    """One statement: the jobs (copies of the sample job) and their k ledger rows each.

    `created`: each generated job's creation time, an SQL expression of g and $4
    (default: spread over the 30 days before the load)."""
    columns = await conn.fetch(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type FROM pg_attribute a"
        " WHERE a.attrelid = 'jobengine.jobs'::regclass AND a.attnum > 0"
        " AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum")
    values = []
    for col in columns:
        name, kind = col["attname"], col["type"]
        if name == "id":
            values.append("ch.id")
        elif name == "payload":
            values.append("jsonb_build_object('i', ch.g)")
        elif name == "ledger_head":
            values.append(f"ch.h{k}")
        elif kind == "timestamp with time zone":
            values.append(f'ch.t + (sj."{name}" - sj.created_at)')
        else:
            values.append(f'sj."{name}"')
    names = ", ".join(f'"{c["attname"]}"' for c in columns)
    rows = ", ".join(f"({i}, ch.h{i}, {f'ch.h{i - 1}' if i > 1 else 'NULL::bytea'})"
                     for i in range(1, k + 1))
    return f"""{_chain_sql(k, created)}, jobs AS (
    INSERT INTO jobengine.jobs ({names}) OVERRIDING SYSTEM VALUE
    SELECT {', '.join(values)} FROM chain AS ch, pg_temp.bench_job AS sj
)
INSERT INTO jobengine.ledger (job_id, occurred_at, prev_at, attempt, from_status, to_status, note,
                              event_type, kind, queue, reason, actor, role, hash, prev_hash,
                              legacy_event_id)
SELECT ch.id, ch.t + r.d_at, ch.t + r.d_prev, r.attempt, r.from_status, r.to_status, r.note,
       r.event_type, r.kind, r.queue, r.reason, r.actor, r.role, x.hash,
       coalesce(x.prev_hash, r.prev_hash), NULL
FROM chain AS ch
CROSS JOIN LATERAL (VALUES {rows}) AS x(k, hash, prev_hash)
JOIN pg_temp.bench_rows AS r ON r.k = x.k"""


async def ledger_sample(dsn: str) -> tuple[int, int] | None:
    """Run one job through the engine; (its id, its ledger rows) if its chain can be redone here.

    The check: the schema's own `ledger_hash` over the sample's rows gives back
    the hashes the engine stored, and the job's head is the last of them.
    """
    conn = await loader_connection(dsn)
    try:
        job = await conn.fetchval("INSERT INTO jobengine.jobs (kind, payload)"
                                  " VALUES ('noop', '{\"i\": 0}') RETURNING id")
        ids, attempts = await conn.fetchrow(ENGINE_CLAIM_SQL, 1)
        await conn.fetchval(ENGINE_FINISH_SQL, ids, attempts)
        await conn.execute(SAMPLE_SQL.replace("$1", str(int(job))))
        k = int(await conn.fetchval("SELECT count(*) FROM pg_temp.bench_rows"))
        same = await conn.fetchval(
            _chain_sql(k, "(SELECT created_at FROM pg_temp.bench_job)")
            + f""" SELECT ch.h{k} = (SELECT ledger_head FROM pg_temp.bench_job)
                   AND ARRAY[{', '.join(f'ch.h{i}' for i in range(1, k + 1))}]
                       = (SELECT array_agg(hash ORDER BY k) FROM pg_temp.bench_rows)
               FROM chain AS ch""", int(job) - 1, 1, 1)
    except asyncpg.PostgresError:
        return None
    finally:
        await conn.close()
    return (int(job), k) if same else None


LEDGER_PARTS = 8


@asynccontextmanager
async def jobs_triggers_off(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """`jobs`' own triggers off for a load by SQL (the owner's set-up, not a path jobengine
    offers), then back as they were; and the id sequence moved past the loaded ids."""
    triggers = await conn.fetch(
        "SELECT tgname, tgenabled::text FROM pg_trigger"
        " WHERE tgrelid = 'jobengine.jobs'::regclass AND NOT tgisinternal")
    await conn.execute("ALTER TABLE jobengine.jobs DISABLE TRIGGER USER")
    try:
        yield
    finally:
        for t in triggers:
            mode = {"A": "ENABLE ALWAYS", "R": "ENABLE REPLICA", "O": "ENABLE"}.get(
                t["tgenabled"], "DISABLE")
            await conn.execute(f'ALTER TABLE jobengine.jobs {mode} TRIGGER "{t["tgname"]}"')
        await conn.execute("SELECT setval(pg_get_serial_sequence('jobengine.jobs', 'id'),"
                           " (SELECT max(id) FROM jobengine.jobs))")


async def load_ledger(ctx: Context, dsn: str, rows: int, sample: tuple[int, int]) -> None:
    """The `ledger` loader (see the module docstring)."""
    job, k = sample
    conns = [await loader_connection(dsn), await loader_connection(dsn)]
    first = conns[0]
    try:
        await first.execute("SELECT jobengine.ledger_prepare_v1(1, (now() AT TIME ZONE 'UTC')::date"
                            " - 32)")
        for conn in conns:
            await conn.execute(SAMPLE_SQL.replace("$1", str(job)))
        sql = await ledger_insert_sql(first, k)
        started = time.perf_counter()
        async with jobs_triggers_off(first):
            await _in_parallel(conns, [(sql, (job, low, high, rows - 1))
                                       for low, high in _ranges(1, rows - 1, LEDGER_PARTS)])
        ctx.log(f"scale load: {rows - 1:,} jobs and {k * (rows - 1):,} ledger rows in "
                f"{time.perf_counter() - started:.0f}s")
    finally:
        for conn in conns:
            await conn.close()


# --- the `engine` loader ------------------------------------------------------------------

ENGINE_CHUNK = 200_000
ENGINE_BATCH = 5_000
ENGINE_VACUUM_EVERY = 1_000_000
ENGINE_INSERT_SQL = """INSERT INTO jobengine.jobs (kind, payload)
    SELECT 'noop', jsonb_build_object('i', g) FROM generate_series($1::integer, $2::integer) AS g"""
ENGINE_CLAIM_SQL = """SELECT coalesce(array_agg(c.id), '{}'), coalesce(array_agg(c.attempt), '{}')
    FROM jobengine.claim_v1('bench-loader', ARRAY['default'], ARRAY['noop'], $1, '1 hour') AS c"""
ENGINE_FINISH_SQL = """SELECT count(*) FILTER (WHERE f.outcome = 'done')
    FROM jobengine.finish_v1('bench-loader', $1::bigint[], $2::integer[],
                             array_fill(NULL::text, ARRAY[cardinality($1::bigint[])])) AS f"""


async def load_engine(ctx: Context, dsn: str, rows: int) -> None:
    """The `engine` loader (see the module docstring)."""
    conns = [await loader_connection(dsn), await loader_connection(dsn)]
    done = 0

    async def drain(conn: asyncpg.Connection) -> int:
        finished = 0
        while True:
            ids, attempts = await conn.fetchrow(ENGINE_CLAIM_SQL, ENGINE_BATCH)
            if not ids:
                return finished
            finished += int(await conn.fetchval(ENGINE_FINISH_SQL, ids, attempts))

    try:
        started = time.perf_counter()
        since_vacuum = 0
        # (a sample job left by `ledger_sample` counts)
        done = int(await conns[0].fetchval("SELECT count(*) FROM jobengine.jobs"))
        for low in range(done + 1, rows + 1, ENGINE_CHUNK):
            high = min(rows, low + ENGINE_CHUNK - 1)
            await conns[0].execute(ENGINE_INSERT_SQL, low, high)
            done += sum(await asyncio.gather(*(drain(c) for c in conns)))
            since_vacuum += high - low + 1
            if since_vacuum >= ENGINE_VACUUM_EVERY:
                await conns[0].execute("VACUUM jobengine.jobs")
                since_vacuum = 0
                ctx.log(f"scale load: {done:,} jobs through the engine in "
                        f"{time.perf_counter() - started:.0f}s")
    finally:
        for conn in conns:
            await conn.close()
    if done != rows:
        raise RuntimeError(f"scale load: {done} of {rows} jobs finished through the engine")


async def loader_for(dsn: str) -> tuple[str, tuple[int, int] | None]:
    """`direct` where the history and the timeline are plain tables; `ledger` where they are
    views over `jobengine.ledger` and a sample job's chain can be redone; else `engine`.
    For `ledger`, the sample job (id, ledger rows) too."""
    kinds = await db.fetchval(
        dsn, "SELECT array_agg(c.relkind::text) FROM pg_class c WHERE c.oid = ANY"
        " (ARRAY[to_regclass('jobengine.job_history'), to_regclass('jobengine.timeline_events')])")
    if kinds == ["r", "r"]:
        return "direct", None
    if await db.fetchval(dsn, "SELECT to_regclass('jobengine.ledger') IS NOT NULL"):
        sample = await ledger_sample(dsn)
        if sample is not None:
            return "ledger", sample
    return "engine", None


#: what one finished job with its ledger takes on disk, by loader (measured per million:
#: 3.0 GB with 0003's tables, 1.3-1.4 GB with 0004's ledger)
BYTES_PER_JOB = {"direct": 3_100, "ledger": 1_450, "engine": 1_450}


async def disk_short(ctx: Context, rows: int, how: str) -> str | None:
    """Why the server's disk cannot hold the template and one copy of it, or None.

    Only checked where the server's data directory is visible from here.
    """
    try:
        data_dir = await db.fetchval(ctx.admin_dsn, "SHOW data_directory")
        stat = os.statvfs(data_dir)
    except (asyncpg.PostgresError, OSError):
        return None
    free, need = stat.f_bavail * stat.f_frsize, 2.2 * BYTES_PER_JOB[how] * rows
    if free >= need:
        return None
    return (f"{rows:,} finished jobs need ~{need / 1e9:.0f} GB (the template and one copy), "
            f"{data_dir} has {free / 1e9:.0f} GB free: run it with a smaller --scale-rows")


async def load_finished(ctx: Context, dsn: str, rows: int, workload: str) -> str | None:
    """Install jobengine in the empty database `dsn` and load `rows` finished jobs into it.

    Returns the loader used (see the module docstring), or None (and a
    `skipped:` line naming `workload`) when the server's disk is too small.
    """
    await step(JOBENGINE, "install", dsn, limit=ctx.limit)
    how, sample = await loader_for(dsn)
    short = await disk_short(ctx, rows, how)
    if short:
        ctx.results.skip(f"{workload}: not run: {short}")
        return None
    ctx.log(f"{workload}: loading {rows:,} finished jobs ({how})")
    if how == "direct":
        await load_direct(ctx, dsn, rows)
    elif how == "ledger" and sample is not None:
        await load_ledger(ctx, dsn, rows, sample)
    else:
        await load_engine(ctx, dsn, rows)
    return how


async def build_template(ctx: Context, rows: int) -> bool:
    """A migrated database holding `rows` completed jobs with their audit rows, vacuumed.

    False (and a `skipped:` line) when the server's disk is too small for it.
    """
    started = time.perf_counter()
    dsn = await db.recreate(ctx.admin_dsn, template_name(ctx))
    how = await load_finished(ctx, dsn, rows, "scale")
    if how is None:
        return False
    tables = await db.fetchval(
        dsn, "SELECT array_agg(c.oid::regclass::text ORDER BY c.relname DESC) FROM pg_class c"
        " WHERE c.oid = ANY (ARRAY[to_regclass('jobengine.timeline_events'),"
        " to_regclass('jobengine.job_history'), to_regclass('jobengine.ledger'),"
        " to_regclass('jobengine.jobs')]) AND c.relkind IN ('r', 'p')")
    conns = [await loader_connection(dsn), await loader_connection(dsn)]
    try:
        vacuumed = time.perf_counter()
        await _in_parallel(conns, [(f"VACUUM (ANALYZE) {t}", ()) for t in tables])
        ctx.log(f"scale template: vacuumed in {time.perf_counter() - vacuumed:.0f}s")
        size = int(await conns[0].fetchval("SELECT pg_database_size(current_database())"))
    finally:
        for conn in conns:
            await conn.close()
    seconds = time.perf_counter() - started
    ctx.results.add("scale.load", JOBENGINE.name, Value(seconds))
    ctx.results.add("scale.size", JOBENGINE.name, Value(size / 1e9))
    ctx.log(f"scale template: {rows:,} finished jobs ({how}), {size / 1e9:.1f} GB, "
            f"built in {seconds:.0f}s")
    return True


# --- the retention pass (hook) ------------------------------------------------------------

#: HOOK: the retention pass timed after the full burn-down (of the first RETENTION_REPS):
#: `jobengine retention run --config F --dsn D`, F holding RETENTION_POLICY as `[retention]`.
#: The `direct` and `ledger` loaders' jobs finished over the 30 days before the load, so 15
#: days removes about half of them (and their ledger); the `engine` loader's all finished today.
RETENTION = ("retention", "run")
RETENTION_POLICY = {"finished_jobs": "15d", "audit": "15d"}
#: a pass over 10M jobs takes long (1M: ~2 minutes with 0004): time it in this many repetitions
RETENTION_REPS = 1
RETENTION_LIMIT = 3600.0


def _jobengine_cli() -> list[str]:
    """`jobengine` on the harness's own interpreter (the project's venv)."""
    return [sys.executable, "-m", "jobengine.cli.main"]


def retention_available() -> str | None:
    """None when `jobengine retention --help` works here, else why the pass is skipped."""
    argv = [*_jobengine_cli(), RETENTION[0], "--help"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode == 0:
        return None
    last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    return (f"`jobengine {RETENTION[0]} --help` exited {done.returncode} ({last[0]}): "
            "no retention pass to time yet")


async def retention_pass(ctx: Context, dsn: str, rep: int) -> None:
    """HOOK: time one retention pass over the full database (after its burn-down)."""
    config = ctx.path(f"scale-retention-{rep + 1}.toml")
    config.write_text("[retention]\n" + "".join(f'{k} = "{v}"\n'
                                                for k, v in RETENTION_POLICY.items()))
    argv = [*_jobengine_cli(), *RETENTION, "--config", str(config), "--dsn", dsn]
    started = time.perf_counter()
    try:
        done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True,
                                       timeout=RETENTION_LIMIT, check=False)
    except subprocess.TimeoutExpired:
        ctx.results.note(f"jobengine scale rep {rep + 1}: the retention pass took more than "
                         f"{RETENTION_LIMIT:g}s")
        ctx.results.add("scale.retention", JOBENGINE.name, Value(RETENTION_LIMIT, ">"))
        return
    seconds = time.perf_counter() - started
    ctx.path(f"scale-retention-{rep + 1}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        ctx.results.note(f"jobengine scale rep {rep + 1}: `jobengine {' '.join(RETENTION)}` "
                         f"exited {done.returncode}: {done.stderr.strip()[-500:]}")
        return
    ctx.results.add("scale.retention", JOBENGINE.name, Value(seconds))
    ctx.log(f"scale rep {rep + 1}: retention pass {seconds:.1f}s")


async def run(ctx: Context) -> None:
    """Empty-table and full burn-downs, alternating, per repetition; their ratio; retention."""
    if not ctx.has_jobengine():
        return
    s = ctx.sizes
    name = database_name(ctx, JOBENGINE)
    try:
        if not await build_template(ctx, s.scale_rows):
            return
        no_retention = retention_available()
        if no_retention:
            ctx.results.skip(f"scale retention pass: {no_retention}")
        for rep in range(ctx.options.reps):
            figures: dict[str, Value] = {}
            order = ["empty", "full"] if rep % 2 == 0 else ["full", "empty"]
            for which in order:
                if which == "empty":
                    dsn = await fresh(ctx, JOBENGINE)
                    expected = s.burndown
                else:
                    copy_started = time.perf_counter()
                    dsn = await db.recreate(ctx.admin_dsn, name, template=template_name(ctx))
                    ctx.log(f"scale rep {rep + 1}: template copied in "
                            f"{time.perf_counter() - copy_started:.0f}s")
                    expected = s.scale_rows + s.burndown
                await enqueue_bulk(ctx, JOBENGINE, dsn, s.burndown)
                value = await burn(ctx, JOBENGINE, dsn, n=s.burndown, concurrency=10,
                                   tag=f"scale-{which}-{rep + 1}", expected=expected,
                                   metric=f"scale.{which}")
                figures[which] = value
                ctx.results.add(f"scale.{which}", JOBENGINE.name, value)
                ctx.log(f"scale rep {rep + 1} {which}: {value.bound}{value.value:,.0f} jobs/s")
                if which == "full" and no_retention is None and rep < RETENTION_REPS:
                    await retention_pass(ctx, dsn, rep)
            ratio = figures["full"].value / figures["empty"].value
            ctx.results.add("scale.ratio", JOBENGINE.name, Value(ratio))
    finally:
        await db.drop(ctx.admin_dsn, template_name(ctx))
