"""Plan guards: the hot queries stay index scans with a million finished jobs in the table.

The claim runs inside a plpgsql function, so its real statements' plans are
captured with auto_explain (log_nested_statements) sent to the client as
NOTICEs: what is checked is the plan the claim really runs, not a copy.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from jobengine.store.pool import setup_connection
from jobengine.store.scheduling import SchedulingStore
from jobengine.store.sqlfiles import QUERIES

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

FINISHED = 1_000_000


@pytest.fixture
async def big(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_dsn)
    # Bulk-load finished jobs without the insert trigger (the owner only: the
    # lifecycle's triggers fire even under session_replication_role = replica):
    # this is test set-up, not a path jobengine offers.
    await conn.execute("ALTER TABLE jobengine.jobs DISABLE TRIGGER jobs_record_insert")
    await conn.execute(
        f"""INSERT INTO jobengine.jobs (kind, payload, status, attempt, finished_at, run_at)
        SELECT 'email', jsonb_build_object('i', i),
               (ARRAY['completed', 'completed', 'completed', 'failed', 'cancelled'])[1 + i % 5]
                   ::jobengine.job_status,
               1, now(), now() - interval '1 day'
        FROM generate_series(1, {FINISHED}) i"""
    )
    await conn.execute("ALTER TABLE jobengine.jobs ENABLE ALWAYS TRIGGER jobs_record_insert")
    await conn.execute(
        "INSERT INTO jobengine.jobs (kind, payload) SELECT 'email', '{}' FROM generate_series(1, 500)"
    )
    await conn.execute(
        "UPDATE jobengine.jobs SET status = 'scheduled' WHERE id IN"
        " (SELECT id FROM jobengine.jobs WHERE status = 'pending' LIMIT 250)"
    )
    await conn.execute("VACUUM ANALYZE jobengine.jobs")
    yield conn
    await conn.close()


@pytest.fixture
async def conn(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the test's own database (its session settings are its own)."""
    connection = await asyncpg.connect(db_dsn)
    yield connection
    await connection.close()


#: a claim as a daemon sends it, of $2 jobs for owner $1
CLAIM = ("SELECT id, attempt FROM jobengine.claim_v1($1, ARRAY['default'], ARRAY['email'], $2,"
         " interval '5 minutes')")


async def nested_plans(conn: asyncpg.Connection, sql: str, *args: object,
                       analyze: bool = False) -> list[str]:
    notices: list[str] = []
    conn.add_log_listener(lambda _c, msg: notices.append(str(msg.message)))
    await conn.execute("LOAD 'auto_explain'")
    for setting in (
        "SET auto_explain.log_min_duration = 0",
        "SET auto_explain.log_nested_statements = on",
        "SET auto_explain.log_level = notice",
        "SET client_min_messages = notice",
        f"SET auto_explain.log_analyze = {'on' if analyze else 'off'}",
    ):
        await conn.execute(setting)
    try:
        async with conn.transaction():
            await conn.fetch(sql, *args)
            raise _Rollback
    except _Rollback:
        pass
    await conn.execute("SET auto_explain.log_min_duration = -1")
    return notices


class _Rollback(Exception):
    pass


def plan_for(plans: list[str], statement_start: str) -> str:
    for plan in plans:
        text = re.sub(r"\s+", " ", plan)
        if statement_start in text:
            return plan
    raise AssertionError(f"no plan for {statement_start!r} among {len(plans)} plans")


async def test_claim_uses_the_partial_indexes(big: asyncpg.Connection) -> None:
    # 250 jobs are scheduled and 250 pending: asking for 300 takes from both.
    plans = await nested_plans(
        big, QUERIES["lifecycle_claim"], "d1", ["default"], ["email"], 300,
        timedelta(seconds=30), False,
    )
    claim = plan_for(plans, "WITH ready AS (")
    assert "jobs_claim_idx" in claim, claim
    assert "jobs_pending_idx" in claim, claim
    assert "Seq Scan on jobs" not in claim, claim
    assert "Bitmap" not in claim, claim
    # Each candidate list is read in claim order and cut at the batch size; only
    # the (at most 2 x batch) candidates are sorted, never the backlog.
    for scan in re.findall(r"LockRows.*?Index Scan using (\w+)", claim, re.S):
        assert scan in ("jobs_claim_idx", "jobs_pending_idx")
    assert len(re.findall(r"Limit", claim)) >= 3, claim
    claimed = await big.fetchval(
        "SELECT count(*) FROM jobengine.jobs WHERE status = 'scheduled'")
    assert claimed == 250  # the nested_plans run was rolled back


async def test_the_keyed_claim_walks_its_index_beside_a_million_jobs(big: asyncpg.Connection) -> None:
    # 40 keys of 5 waiting jobs; one key with a concurrency limit. The claim
    # runs on its generic plans from the first call: each must still read the
    # partial indexes, never the million finished jobs.
    tx = big.transaction()
    await tx.start()
    try:
        await big.execute("INSERT INTO jobengine.jobs (kind, limit_key)"
                          " SELECT 'email', 'key-' || (i % 40) FROM generate_series(1, 200) i")
        await big.execute("INSERT INTO jobengine.concurrency_limits (key, max_running) VALUES ('key-1', 2)")
        plans = await nested_plans(
            big, QUERIES["lifecycle_claim"], "d1", ["default"], ["email"], 30,
            timedelta(seconds=30), False,
        )
        claimed = await big.fetchval("SELECT count(*) FROM jobengine.jobs WHERE status = 'running'")
    finally:
        await tx.rollback()
    walk = plan_for(plans, "WITH RECURSIVE k(key, id, claim_order, n, wrapped) AS (")
    assert "jobs_waiting_keyed_idx" in walk, walk
    take = plan_for(plans, "WITH rnow AS MATERIALIZED (")
    for plan in (walk, take):
        assert "Seq Scan on jobs" not in plan, plan
        assert "Bitmap" not in plan, plan
    assert claimed == 0  # rolled back inside nested_plans


async def test_maintenance_queries_use_indexes(big: asyncpg.Connection) -> None:
    for name, args in [
        ("lifecycle_reap_candidates", (100,)),
        ("lifecycle_promote", (["default"], 100, False)),
        ("lifecycle_cascade", (100,)),
        ("lifecycle_retry_candidates", (100,)),
        ("lifecycle_renew", ("d1", [1, 2, 3], [1, 1, 1], timedelta(seconds=30))),
        ("lifecycle_finish", ("d1", [1, 2, 3], [1, 1, 1], [None, None, None])),
        # a status list matches no partial index: this asks one status at a time
        ("retention_purge", (datetime.now(UTC) - timedelta(days=30), 1000, False)),
        ("retention_purge", (datetime.now(UTC) - timedelta(days=30), 1000, True)),
        # asked by the claim loop each time it drains: reads of waiting jobs only
        ("job_next_due", (["default"], datetime.now(UTC))),
        ("limit_held", (["default"], datetime.now(UTC))),
    ]:
        if name == "limit_held":  # (with no limit set it answers before reading jobs)
            await big.execute("INSERT INTO jobengine.concurrency_limits (key, max_running)"
                              " VALUES ('c', 1)")
            await big.execute("INSERT INTO jobengine.rate_limits (key, max_starts, per)"
                              " VALUES ('r', 1, '1 hour')")
        plans = await nested_plans(big, QUERIES[name], *args)
        assert plans, name
        for plan in plans:
            assert "Seq Scan on jobs" not in plan, f"{name}:\n{plan}"


async def test_the_dashboards_reads_are_bounded_index_scans(big: asyncpg.Connection) -> None:
    """Every read behind /ui/ goes through an index and stops after its LIMIT, whatever
    the statistics (the store's settings: custom plans, no sequential or bitmap scan)."""
    from jobengine.store.dashboard import _SETTINGS

    await big.execute("UPDATE jobengine.jobs SET status = 'running', lease_owner = 'd1'"
                      " WHERE id IN (SELECT id FROM jobengine.jobs WHERE status = 'scheduled'"
                      " LIMIT 5)")
    reads: list[tuple[str, tuple[object, ...]]] = [("dashboard_count", (5000, s)) for s in
             ("pending", "scheduled", "running", "completed", "failed", "cancelled")]
    reads += [
        ("dashboard_minutes", (60, 100, 10_000, 10)),
        ("dashboard_oldest_waiting", (100,)),
        ("dashboard_jobs", (10**9, 50_000, None, "email", None, '{"i": 5}', 50)),
        ("dashboard_jobs", (10**9, 50_000, "failed", None, None, None, 50)),
        ("dashboard_children", (5, 20_000, 100)),
    ]
    async with big.transaction():
        for setting in _SETTINGS:
            await big.execute(setting)
        for name, args in reads:
            rows = await big.fetch("EXPLAIN " + QUERIES[name], *args)
            plan = "\n".join(r[0] for r in rows)
            assert "Seq Scan on jobs" not in plan, f"{name}:\n{plan}"
            assert "Bitmap" not in plan, f"{name}:\n{plan}"
            assert "Limit" in plan, f"{name}:\n{plan}"
        for status, indexes in (("pending", ("jobs_pending_idx", "jobs_pending_keyed_idx")),
                                ("scheduled", ("jobs_claim_idx", "jobs_claim_keyed_idx")),
                                ("running", ("jobs_lease_idx",))):
            plan = "\n".join(r[0] for r in await big.fetch(
                "EXPLAIN " + QUERIES["dashboard_count"], 5000, status))
            assert all(i in plan for i in indexes), plan
        minutes = "\n".join(r[0] for r in await big.fetch(
            "EXPLAIN " + QUERIES["dashboard_minutes"], 60, 100, 10_000, 10))
        assert "Index Only Scan using jobs_finished_idx" in minutes, minutes


async def test_the_queue_overview_reads_no_whole_table_of_a_million_jobs(
    big: asyncpg.Connection,
) -> None:
    # It feeds /metrics, `jobengine queues` and GET /v1/queues, scraped every few seconds.
    rows = await big.fetch("EXPLAIN (ANALYZE, TIMING OFF) " + QUERIES["queue_overview"])
    plan = "\n".join(r[0] for r in rows)
    # (the exact count of the settled statuses is planned, for small tables, and not run)
    ran = [line for line in plan.splitlines() if "never executed" not in line]
    assert not [line for line in ran if "Seq Scan on jobs" in line], plan
    assert [line for line in ran if "Sample Scan on jobs" in line], plan  # a 1% sample
    await setup_connection(big)  # (jobengine's codecs, as its pools have them)
    queue = (await SchedulingStore(big).queues())[0]
    assert queue.estimated
    # waiting and running exactly; the settled ones near their true 600k / 200k / 200k
    assert (queue.counts["pending"], queue.counts["scheduled"], queue.counts.get("running", 0)) == (
        250, 250, 0)
    assert 400_000 < queue.counts["completed"] < 800_000
    assert 100_000 < queue.counts["failed"] < 300_000


async def test_a_retention_batch_is_never_jit_compiled(big: asyncpg.Connection) -> None:
    # Without column statistics (after a big load or removal, before autovacuum's
    # ANALYZE) a batch's estimate passes jit_above_cost and PostgreSQL spent ~0.4 s
    # compiling each batch of 1,000; here JIT is made to look worth it for anything.
    await big.execute("DELETE FROM pg_statistic WHERE starelid = 'jobengine.jobs'::regclass")
    for setting in ("SET jit = on", "SET jit_above_cost = 0", "SET jit_optimize_above_cost = 0"):
        await big.execute(setting)
    if not await big.fetchval("SELECT pg_jit_available()"):
        pytest.skip("this PostgreSQL has no JIT")
    plain = await nested_plans(big, "SELECT count(*) FROM jobengine.jobs WHERE finished_at < now()")
    assert any("JIT:" in p for p in plain), plain  # (the probe: JIT would be used)
    plans = await nested_plans(big, QUERIES["retention_purge"],
                               datetime.now(UTC) + timedelta(days=1), 1000, False)
    purge = plan_for(plans, "DELETE FROM jobengine.jobs")
    assert "JIT:" not in purge, purge


async def test_sealing_a_day_walks_its_index_even_without_statistics(conn: asyncpg.Connection) -> None:
    # A day's partition is sealed an hour after the day ends, often before
    # autovacuum has analyzed it. Without statistics each 50,000-row step of the
    # digest was answered by a parallel scan and sort of the whole partition
    # (214 s for a day of 6.2M rows); here every shortcut is made to look cheap.
    await conn.execute("INSERT INTO jobengine.jobs (kind, payload)"
                       " SELECT 'email', '{}' FROM generate_series(1, 2000)")
    day = await conn.fetchval(
        "SELECT (max(occurred_at) AT TIME ZONE 'UTC')::date FROM jobengine.ledger")
    partition = f"jobengine.ledger_{day:%Y%m%d}"
    await conn.execute(f"DELETE FROM pg_statistic WHERE starelid = '{partition}'::regclass")
    for setting in ("SET jit = on", "SET jit_above_cost = 0", "SET parallel_setup_cost = 0",
                    "SET parallel_tuple_cost = 0", "SET min_parallel_table_scan_size = 0",
                    "SET min_parallel_index_scan_size = 0"):
        await conn.execute(setting)
    step = ("SELECT l.tx_id, l.id, l.hash FROM jobengine.ledger l"
            " WHERE l.occurred_at >= $1::date AND l.occurred_at < $1::date + 1"
            " AND (l.tx_id, l.id) > ('0'::xid8, -1) ORDER BY l.tx_id, l.id LIMIT 50000")
    probe = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {step}", day))
    assert "Index Scan" not in probe, probe  # (the probe: left alone, the planner scans)
    assert await conn.fetchval("SELECT rows FROM jobengine.ledger_day_digest($1)", day) == 2000
    plans = await nested_plans(conn, "SELECT * FROM jobengine.ledger_day_digest($1)", day)
    walk = plan_for(plans, "WITH c AS MATERIALIZED")
    assert f"Index Scan using ledger_{day:%Y%m%d}_tx_id_id_idx" in walk, walk
    for shortcut in ("Seq Scan", "Bitmap", "Gather", "JIT:"):
        assert shortcut not in walk, walk


async def test_outcomes_and_renewals_read_their_own_jobs_not_every_running_one(
    conn: asyncpg.Connection,
) -> None:
    # 2,000 jobs of another daemon started after the statistics were taken
    # (a burst of claims): writing three attempts' outcomes, or renewing
    # their leases, must look at those three rows, not at every running job.
    await conn.execute("INSERT INTO jobengine.jobs (kind) SELECT 'email' FROM generate_series(1, 2003)")
    await conn.execute("VACUUM ANALYZE jobengine.jobs")
    await conn.fetch(CLAIM, "other", 2000)
    mine = await conn.fetch(CLAIM, "d1", 3)
    ids, attempts = [r["id"] for r in mine], [r["attempt"] for r in mine]
    for name, args in [
        ("lifecycle_finish", ("d1", ids, attempts, [None, None, None])),
        ("lifecycle_release", ("d1", ids, attempts)),
        ("lifecycle_fail", ("d1", ids, attempts, ["error"] * 3, ["boom"] * 3, [None] * 3)),
        ("lifecycle_renew", ("d1", ids, attempts, timedelta(seconds=30))),
    ]:
        plans = await nested_plans(conn, QUERIES[name], *args, analyze=True)
        plans = [p for p in plans if "jobengine.jobs" in p]  # (not asyncpg's type queries)
        assert plans, name
        for plan in plans:
            removed = [int(n) for n in re.findall(r"Rows Removed by (?:Join )?Filter: (\d+)", plan)]
            assert max(removed, default=0) <= 10, f"{name}:\n{plan}"
            read = [int(n) for n in re.findall(r"on jobs \w+ .*?actual time=\S+ rows=(\d+)", plan)]
            assert max(read, default=0) <= 10, f"{name}:\n{plan}"
    # (each ran rolled back: the three are still running, their outcomes unwritten)
    running = await conn.fetchval(
        "SELECT count(*) FROM jobengine.jobs WHERE status = 'running' AND lease_owner = 'd1'")
    assert running == 3


async def test_a_big_claim_leaves_no_plan_that_is_jit_compiled_on_every_later_call(
    conn: asyncpg.Connection,
) -> None:
    # PL/pgSQL keeps the recorders' plans for the session, made with the size
    # of the statement that first needed them: after a claim and a finish of
    # 5,000 jobs, every later status change on that connection must still run without
    # JIT (where the server has it: compiling costs more than the statement).
    if not await conn.fetchval("SELECT pg_jit_available()"):
        pytest.skip("this PostgreSQL has no JIT")
    await conn.execute("SET jit = on")
    await conn.execute("INSERT INTO jobengine.jobs (kind) SELECT 'email' FROM generate_series(1, 5010)")
    big = await conn.fetch(CLAIM, "d1", 5000)
    await conn.fetch(QUERIES["lifecycle_finish"], "d1", [r["id"] for r in big],
                     [r["attempt"] for r in big], [None] * len(big))
    small = await conn.fetch(CLAIM, "d1", 3)
    ids, attempts = [r["id"] for r in small], [r["attempt"] for r in small]
    plans = [
        *await nested_plans(conn, CLAIM, "d1", 3),
        *await nested_plans(conn, QUERIES["lifecycle_finish"], "d1", ids, attempts,
                            [None, None, None]),
    ]
    assert plans
    for plan in plans:
        assert "JIT:" not in plan, plan


async def test_an_outcome_of_one_job_is_planned_once_a_session_not_on_every_call(
    conn: asyncpg.Connection,
) -> None:
    # A daemon fed a trickle finishes, fails, renews and releases jobs one at
    # a time: after a session's first calls, none of them may plan again
    # (with array arguments the plan cache would make a custom plan per call).
    await conn.execute("INSERT INTO jobengine.jobs (kind) SELECT 'email' FROM generate_series(1, 80)")
    plans: list[str] = []
    conn.add_log_listener(lambda _c, msg: plans.append(str(msg.message)))
    # (each call's arguments after the owner, the job and the attempt)
    calls: list[tuple[str, tuple[object, ...]]] = [
        ("lifecycle_finish", ([None],)),
        ("lifecycle_fail", (["error"], ["boom"], [None])),  # a final failure
        ("lifecycle_fail", (["error"], ["boom"], [3600.0])),  # one with a retry
        ("lifecycle_renew", (timedelta(seconds=30),)),
        ("lifecycle_release", ()),
    ]

    async def outcome_of_one_job(name: str, rest: tuple[object, ...]) -> list[str]:
        job = (await conn.fetch(CLAIM, "d1", 1))[0]
        outcome = await conn.fetch(QUERIES[name], "d1", [job["id"]], [job["attempt"]], *rest)
        if name == "lifecycle_renew":
            await conn.fetch(QUERIES["lifecycle_finish"], "d1", [job["id"]], [job["attempt"]], [None])
        return [r["outcome"] for r in outcome]

    for name, rest in calls:
        for _ in range(7):  # the session's first calls (custom plans are tried first)
            assert await outcome_of_one_job(name, rest) == ["done"], name
        await conn.execute("SET debug_print_plan = on")
        await conn.execute("SET client_min_messages = log")
        assert await outcome_of_one_job(name, rest) == ["done"], name
        await conn.execute("RESET client_min_messages")
        await conn.execute("RESET debug_print_plan")
        assert [p for p in plans if p.startswith("plan")] == [], name
