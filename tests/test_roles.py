"""Least-privilege roles: what jobengine_app and jobengine_daemon may and may not do.

Each test creates the roles inside its rolled-back transaction and acts with
SET ROLE, so nothing outlives it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest

from jobengine.store.sqlfiles import sql_dir

pytestmark = pytest.mark.anyio


@pytest.fixture
async def roles(tx: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    await tx.execute((sql_dir() / "roles.sql").read_text())
    await tx.execute("SET jobengine.actor = 'tests'")
    yield tx
    await tx.execute("RESET ROLE")


async def as_role(conn: asyncpg.Connection, role: str, sql: str, *args: object) -> object:
    """Run one statement as `role` inside a savepoint; return its result."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL ROLE {role}")
        return await conn.fetch(sql, *args)


async def refused(conn: asyncpg.Connection, role: str, sql: str, *args: object) -> str:
    with pytest.raises(asyncpg.InsufficientPrivilegeError) as err:
        await as_role(conn, role, sql, *args)
    return str(err.value)


async def new_job(conn: asyncpg.Connection) -> int:
    rows = await as_role(conn, "jobengine_app",
                         "INSERT INTO jobengine.jobs (kind, payload) VALUES ('x', '{}') RETURNING id")
    return int(rows[0]["id"])  # type: ignore[index]


async def test_app_inserts_reads_and_cancels(roles: asyncpg.Connection) -> None:
    job_id = await new_job(roles)
    rows = await as_role(roles, "jobengine_app",
                         "SELECT count(*) AS n FROM jobengine.job_history WHERE job_id = $1", job_id)
    assert rows[0]["n"] == 1  # type: ignore[index]
    await as_role(roles, "jobengine_app",
                  "UPDATE jobengine.jobs SET status = 'cancelled' WHERE id = $1", job_id)
    assert await roles.fetchval("SELECT status::text FROM jobengine.jobs WHERE id = $1", job_id) == "cancelled"
    # the triggers wrote history and timeline for it, though the role cannot
    assert await roles.fetchval(
        "SELECT count(*) FROM jobengine.timeline_events WHERE job_id = $1", job_id) == 2


async def test_app_cannot_drive_any_other_transition(roles: asyncpg.Connection) -> None:
    job_id = await new_job(roles)
    message = await refused(roles, "jobengine_app",
                            "UPDATE jobengine.jobs SET status = 'scheduled' WHERE id = $1", job_id)
    assert "may only cancel jobs, not move them pending -> scheduled" in message
    assert await roles.fetchval("SELECT status::text FROM jobengine.jobs WHERE id = $1", job_id) == "pending"


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE jobengine.jobs SET lease_owner = 'me' WHERE id = $1",
        "UPDATE jobengine.jobs SET result = '{\"forged\": true}' WHERE id = $1",
        "UPDATE jobengine.jobs SET attempt = 0 WHERE id = $1",
        "DELETE FROM jobengine.jobs WHERE id = $1",
    ],
)
async def test_app_cannot_touch_leases_results_or_delete(roles: asyncpg.Connection, sql: str) -> None:
    job_id = await new_job(roles)
    assert "permission denied" in await refused(roles, "jobengine_app", sql, job_id)


@pytest.mark.parametrize("role", ["jobengine_app", "jobengine_daemon"])
@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO jobengine.job_history (job_id, to_status, attempt, occurred_at, actor)"
        " VALUES ($1, 'completed', 1, now(), 'forger')",
        "INSERT INTO jobengine.timeline_events (job_id, event_type, occurred_at)"
        " VALUES ($1, 'job.completed', now())",
        "UPDATE jobengine.job_history SET actor = 'forger' WHERE job_id = $1",
        "DELETE FROM jobengine.timeline_events WHERE job_id = $1",
        "INSERT INTO jobengine.ledger (job_id, occurred_at, attempt, to_status, event_type, kind, queue,"
        " actor, role) VALUES ($1, now(), 1, 'completed', 'job.completed', 'x', 'default', 'f', 'f')",
        "UPDATE jobengine.ledger SET reason = 'forged' WHERE job_id = $1",
        "DELETE FROM jobengine.ledger WHERE job_id = $1",
        "INSERT INTO jobengine.retention_log (actor, dry_run) SELECT 'forger', $1 < 0",
    ],
)
async def test_no_role_writes_the_audit_trail_directly(
    roles: asyncpg.Connection, role: str, sql: str
) -> None:
    job_id = await new_job(roles)
    assert "permission denied" in await refused(roles, role, sql, job_id)


async def test_app_cannot_purge_relay_or_forge_retention(roles: asyncpg.Connection) -> None:
    job_id = await new_job(roles)
    for sql in ("SELECT * FROM jobengine.purge_jobs_v1(now(), 10)",
                "SELECT jobengine.relay_v1(10)",
                "SELECT jobengine.ledger_prepare_v1(3)",
                "SELECT * FROM jobengine.ledger_drop_v1(now() - interval '1 day', false)",
                "SELECT * FROM jobengine.verify_ledger_v1(0, 10)"):
        assert "permission denied for function" in await refused(roles, "jobengine_app", sql)
    for role in ("jobengine_app", "jobengine_daemon"):
        assert "permission denied" in await refused(roles, role, "TRUNCATE jobengine.ledger")
    # the daemon's role may update jobs, but not the ledger's head
    with pytest.raises(asyncpg.CheckViolationError, match="ledger_head changes only with"):
        await as_role(roles, "jobengine_daemon",
                      "UPDATE jobengine.jobs SET ledger_head = '\\x00' WHERE id = $1", job_id)


async def test_app_cannot_claim_or_write_notes(roles: asyncpg.Connection) -> None:
    job_id = await new_job(roles)
    assert "permission denied for function claim_jobs" in await refused(
        roles, "jobengine_app",
        "SELECT * FROM jobengine.claim_jobs('me', '{default}', '{x}', 5, '30 s')")
    assert "permission denied for function add_timeline_note" in await refused(
        roles, "jobengine_app", "SELECT jobengine.add_timeline_note($1, 'job.fake', 'x')", [job_id])


async def test_daemon_runs_the_lifecycle(roles: asyncpg.Connection) -> None:
    job_id = await new_job(roles)
    claimed = await as_role(roles, "jobengine_daemon",
                            "SELECT id, attempt FROM jobengine.claim_jobs('d1', '{default}', '{x}', 5, '30 s')")
    assert isinstance(claimed, list)
    assert [(r["id"], r["attempt"]) for r in claimed] == [(job_id, 1)]
    await as_role(roles, "jobengine_daemon",
                  "UPDATE jobengine.jobs SET status = 'completed', result = '{\"ok\": 1}'"
                  " WHERE id = $1 AND lease_owner = 'd1'", job_id)
    await as_role(roles, "jobengine_daemon", "SELECT jobengine.add_timeline_note($1, 'job.note', 'x')", [job_id])
    statuses = await roles.fetch(
        "SELECT to_status::text FROM jobengine.job_history WHERE job_id = $1 ORDER BY id", job_id)
    assert [r[0] for r in statuses] == ["pending", "scheduled", "running", "completed"]
    assert "permission denied" in await refused(
        roles, "jobengine_daemon", "DELETE FROM jobengine.jobs WHERE id = $1", job_id)


async def test_roles_sql_is_idempotent(roles: asyncpg.Connection) -> None:
    await roles.execute((sql_dir() / "roles.sql").read_text())
    assert await roles.fetchval("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'jobengine\\_%'") == 2


def test_migrate_roles_from_the_cli(db_dsn: str) -> None:
    import asyncio
    import subprocess
    import sys

    try:
        result = subprocess.run(
            [sys.executable, "-m", "jobengine.cli.main", "migrate", "--roles", "--dsn", db_dsn],
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "schema is up to date" in result.stdout
        assert "roles jobengine_daemon and jobengine_app are in place" in result.stdout

        async def granted() -> list[str]:
            conn = await asyncpg.connect(db_dsn)
            try:
                rows = await conn.fetch(
                    "SELECT privilege_type FROM information_schema.column_privileges"
                    " WHERE grantee = 'jobengine_app' AND table_name = 'jobs'"
                    " AND column_name = 'status'")
                return sorted(r[0] for r in rows)
            finally:
                await conn.close()

        assert asyncio.run(granted()) == ["SELECT", "UPDATE"]
    finally:
        # Roles are cluster-wide: take them away again so the server stays clean.
        async def cleanup() -> None:
            conn = await asyncpg.connect(db_dsn)
            try:
                await conn.execute("DROP OWNED BY jobengine_app, jobengine_daemon")
                for role in ("jobengine_app", "jobengine_daemon"):
                    # granted in another database too: leave it there
                    with contextlib.suppress(asyncpg.exceptions.DependentObjectsStillExistError):
                        await conn.execute(f"DROP ROLE IF EXISTS {role}")
            finally:
                await conn.close()

        asyncio.run(cleanup())


async def test_app_reads_but_cannot_change_scheduling_rules(roles: asyncpg.Connection) -> None:
    for sql in ("INSERT INTO jobengine.concurrency_limits (key, max_running) VALUES ('k', 9)",
                "INSERT INTO jobengine.queues (name, paused) VALUES ('default', true)",
                "INSERT INTO jobengine.schedules (name, every, kind) VALUES ('s', '1 minute', 'k')",
                "DELETE FROM jobengine.rate_limit_starts"):
        assert "permission denied" in await refused(roles, "jobengine_app", sql)
    counted = await as_role(roles, "jobengine_app", "SELECT count(*) FROM jobengine.rate_limits")
    assert isinstance(counted, list)
    assert counted[0][0] == 0  # it reads them


async def test_daemon_claims_under_limits_and_ticks_schedules(roles: asyncpg.Connection) -> None:
    await as_role(roles, "jobengine_daemon",
                  "INSERT INTO jobengine.rate_limits (key, max_starts, per) VALUES ('r', 1, '1 hour')")
    await as_role(roles, "jobengine_app", "INSERT INTO jobengine.jobs (kind, limit_key) VALUES ('k', 'r'), ('k', 'r')")
    claimed = await as_role(roles, "jobengine_daemon",
                            "SELECT id FROM jobengine.claim_v1('d', '{default}', '{k}', 5, '30s')")
    assert isinstance(claimed, list)
    assert len(claimed) == 1
    await as_role(roles, "jobengine_daemon",
                  "INSERT INTO jobengine.schedules (name, every, kind) VALUES ('s', '1 minute', 'k')")
    await roles.execute("UPDATE jobengine.schedules SET created_at = now() - interval '1 hour'")
    job = await as_role(roles, "jobengine_daemon",
                        "SELECT jobengine.schedule_tick_v1('s', date_trunc('minute', now()), 0)")
    assert isinstance(job, list)
    assert job[0][0] is not None


async def test_the_python_apis_defer_works_as_the_app_role(roles: asyncpg.Connection) -> None:
    from tests import pyapi_tasks as t

    async with roles.transaction():
        await roles.execute("SET LOCAL ROLE jobengine_app")
        one = await t.echo.configure(connection=roles, idempotency_key="k").defer(name="a")
        again = await t.echo.configure(connection=roles, idempotency_key="k").defer(name="a")
        many = await t.echo.defer_many([{"name": "b"}, {"name": "c"}], connection=roles)
    assert again == one
    assert await roles.fetchval(
        "SELECT count(*) FROM jobengine.jobs WHERE id = ANY ($1::bigint[])", [one, *many]) == 3
