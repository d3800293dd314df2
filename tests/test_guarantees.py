"""The guarantees hold for every writer: attacks by an unfriendly app, operator or daemon role.

Each test here is one way a review broke release 0.1.0 (issue 9), written as
the attacker would write it, in plain SQL. Role tests create their roles
inside a rolled-back transaction and act with SET ROLE, so nothing outlives
them; tests that need commits or several connections use their own database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import anyio
import asyncpg
import pytest

from jobengine.store.sqlfiles import sql_dir
from tests.dbutil import wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture
async def roles(tx: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """The least-privilege roles, a login-less app member `je_app_x` and daemon member `je_daemon_x`."""
    await tx.execute((sql_dir() / "roles.sql").read_text())
    await tx.execute("CREATE ROLE je_app_x NOLOGIN IN ROLE jobengine_app")
    await tx.execute("CREATE ROLE je_daemon_x NOLOGIN IN ROLE jobengine_daemon")
    await tx.execute("SET jobengine.actor = 'tests'")
    yield tx
    await tx.execute("RESET ROLE")


async def as_role(conn: asyncpg.Connection, role: str, *statements: str) -> list[asyncpg.Record]:
    """Run statements as `role` in a savepoint; the last one's rows."""
    rows: list[asyncpg.Record] = []
    async with conn.transaction():
        await conn.execute(f"SET LOCAL ROLE {role}")
        for sql in statements:
            rows = await conn.fetch(sql)
    return rows


async def refused(conn: asyncpg.Connection, role: str, *statements: str) -> str:
    """The error that stops the statements as `role` (nothing they did remains)."""
    with pytest.raises(asyncpg.PostgresError) as err:
        await as_role(conn, role, *statements)
    return str(err.value)


async def new_job(conn: asyncpg.Connection, *, depends_on: tuple[int, ...] = ()) -> int:
    job_id: int = await conn.fetchval(
        "INSERT INTO jobengine.jobs (kind, depends_on) VALUES ('x', $1) RETURNING id",
        list(depends_on))
    return job_id


async def running_job(conn: asyncpg.Connection, owner: str = "d1") -> int:
    job_id = await new_job(conn)
    claimed = await conn.fetch(
        "SELECT id FROM jobengine.claim_v1($1, '{default}', '{x}', 100, '30 s')", owner)
    assert job_id in [r["id"] for r in claimed]
    return job_id


async def status(conn: asyncpg.Connection, job_id: int) -> str:
    value: str = await conn.fetchval("SELECT status::text FROM jobengine.jobs WHERE id = $1", job_id)
    return value


# -- 3. the app role cannot complete or fail a job --------------------------------------


@pytest.mark.parametrize("target", ["completed", "failed"])
async def test_an_app_role_cannot_shadow_an_operator_to_pass_the_role_check(
    roles: asyncpg.Connection, target: str
) -> None:
    job_id = await running_job(roles)
    # A member of jobengine_app who owns a schema puts a `<>` on job_status in
    # front of pg_catalog's that never finds two statuses different.
    await roles.execute("CREATE SCHEMA je_evil AUTHORIZATION je_app_x")
    message = await refused(
        roles, "je_app_x",
        "CREATE FUNCTION je_evil.same(jobengine.job_status, jobengine.job_status) RETURNS boolean"
        " LANGUAGE sql AS 'SELECT false'",
        "CREATE OPERATOR je_evil.<> (LEFTARG = jobengine.job_status,"
        " RIGHTARG = jobengine.job_status, FUNCTION = je_evil.same)",
        "SET LOCAL search_path = je_evil, pg_catalog, public",
        f"UPDATE jobengine.jobs SET status = '{target}' WHERE id = {job_id}",
    )
    assert "may only cancel jobs" in message
    assert await status(roles, job_id) == "running"


async def test_every_function_resolves_its_names_where_no_caller_can_reach(
    tx: asyncpg.Connection,
) -> None:
    # Either its search_path is pinned (bodies that run at call time: plpgsql, SQL as a
    # string), or it has an SQL-standard body (BEGIN ATOMIC), whose names were bound
    # once, when the migration created it with only pg_catalog on the path.
    unpinned = await tx.fetch(
        "SELECT p.oid::regprocedure::text AS f FROM pg_proc p"
        " JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'jobengine' AND p.prosqlbody IS NULL"
        "   AND NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false)")
    assert [r["f"] for r in unpinned] == []
    bound = await tx.fetchval(
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'jobengine' AND p.prosqlbody IS NOT NULL")
    assert bound >= 10  # the helpers every row's checks call


# -- 5. the database enforces the DAG ----------------------------------------------------


async def test_a_job_cannot_be_scheduled_by_hand_while_a_dependency_is_pending(
    tx: asyncpg.Connection,
) -> None:
    dep = await new_job(tx)
    job = await new_job(tx, depends_on=(dep,))
    with pytest.raises(asyncpg.CheckViolationError, match=f"its dependency {dep} is pending"):
        async with tx.transaction():
            await tx.execute("UPDATE jobengine.jobs SET status = 'scheduled' WHERE id = $1", job)
    assert await status(tx, job) == "pending"


async def test_the_claim_setting_lets_no_one_skip_the_dag(roles: asyncpg.Connection) -> None:
    dep = await new_job(roles)
    job = await new_job(roles, depends_on=(dep,))
    # Anyone can set the setting the claim uses...
    for role in ("je_daemon_x", "postgres"):
        message = await refused(
            roles, role, "SET LOCAL jobengine.claiming = 'on'",
            f"UPDATE jobengine.jobs SET status = 'running' WHERE id = {job}")
        assert f"its dependency {dep} is pending" in message
    # ...and for a role that is not a daemon it opens nothing at all.
    free = await new_job(roles)
    message = await refused(
        roles, "je_app_x", "SET LOCAL jobengine.claiming = 'on'",
        f"UPDATE jobengine.jobs SET status = 'running' WHERE id = {free}")
    assert "illegal transition" in message
    assert (await status(roles, job), await status(roles, free)) == ("pending", "pending")


async def test_depends_on_is_frozen_once_a_job_left_pending(tx: asyncpg.Connection) -> None:
    dep = await new_job(tx)
    job = await new_job(tx)
    await tx.execute("UPDATE jobengine.jobs SET status = 'scheduled' WHERE id = $1", job)
    with pytest.raises(asyncpg.CheckViolationError, match="cannot change once the job left pending"):
        async with tx.transaction():
            await tx.execute("UPDATE jobengine.jobs SET depends_on = $1 WHERE id = $2", [dep], job)
    claimed = await tx.fetch("SELECT id FROM jobengine.claim_v1('d', '{default}', '{x}', 10, '30 s')")
    assert {r["id"] for r in claimed} == {dep, job}  # claimed as it was: no dependency


# -- 6. two concurrent depends_on updates cannot commit a cycle --------------------------


async def _waiting_on_a_lock(observer: asyncpg.Connection, pid: int) -> bool:
    kind = await observer.fetchval(
        "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid)
    return bool(kind == "Lock")


async def test_concurrent_dependency_changes_cannot_close_a_cycle(db_dsn: str) -> None:
    first, second, observer = [await asyncpg.connect(db_dsn) for _ in range(3)]
    try:
        a, b = await new_job(observer), await new_job(observer)
        await first.execute("BEGIN")
        await first.execute("UPDATE jobengine.jobs SET depends_on = $1 WHERE id = $2", [b], a)
        failure: list[BaseException] = []

        async def close_the_cycle() -> None:
            try:
                await second.execute("UPDATE jobengine.jobs SET depends_on = $1 WHERE id = $2",
                                     [a], b)
            except asyncpg.PostgresError as exc:
                failure.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(close_the_cycle)
            # The second change waits for the first to end before it checks.
            await wait_for(lambda: _waiting_on_a_lock(observer, second.get_server_pid()),
                           message="the second change to wait")
            await first.execute("COMMIT")
        assert len(failure) == 1
        assert "dependency cycle" in str(failure[0])
        assert await observer.fetchval("SELECT depends_on FROM jobengine.jobs WHERE id = $1", b) == []
    finally:
        for conn in (first, second, observer):
            await conn.close()


async def test_a_repeatable_read_change_cannot_close_a_cycle_from_a_stale_snapshot(
    db_dsn: str,
) -> None:
    first, second = await asyncpg.connect(db_dsn), await asyncpg.connect(db_dsn)
    try:
        a, b = await new_job(first), await new_job(first)
        await second.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        await second.fetchval("SELECT count(*) FROM jobengine.jobs")  # its snapshot: no edges
        await first.execute("UPDATE jobengine.jobs SET depends_on = $1 WHERE id = $2", [b], a)
        with pytest.raises(asyncpg.SerializationError):
            await second.execute("UPDATE jobengine.jobs SET depends_on = $1 WHERE id = $2", [a], b)
        await second.execute("ROLLBACK")
        assert await first.fetchval("SELECT depends_on FROM jobengine.jobs WHERE id = $1", b) == []
    finally:
        await first.close()
        await second.close()


# -- 9. the history cannot be forged ------------------------------------------------------


async def test_an_app_cannot_pass_its_cancel_off_as_the_engines(roles: asyncpg.Connection) -> None:
    job = await new_job(roles)
    message = await refused(
        roles, "je_app_x", "SET LOCAL jobengine.actor = 'vm-1-1234-abcdef'",
        f"UPDATE jobengine.jobs SET status = 'cancelled', status_reason = 'dependency_failed'"
        f" WHERE id = {job}")
    assert "reason 'dependency_failed' is the engine's own" in message
    # Its own words are fine, and recorded as what they are: SQL by that role.
    await as_role(roles, "je_app_x", "SET LOCAL jobengine.actor = 'vm-1-1234-abcdef'",
                  f"UPDATE jobengine.jobs SET status = 'cancelled', status_reason = 'customer asked'"
                  f" WHERE id = {job}")
    row = await roles.fetchrow(
        "SELECT reason, actor, role FROM jobengine.job_history WHERE job_id = $1 ORDER BY id DESC"
        " LIMIT 1", job)
    assert tuple(row) == ("customer asked", "sql", "je_app_x")
    envelope_actor = await roles.fetchval(
        "SELECT envelope->>'actor' FROM jobengine.timeline_events WHERE job_id = $1"
        " ORDER BY id DESC LIMIT 1", job)
    assert envelope_actor == "sql"


async def test_a_daemon_role_names_itself(roles: asyncpg.Connection) -> None:
    job = await new_job(roles)
    await as_role(roles, "je_daemon_x", "SET LOCAL jobengine.actor = 'vm-1-1234-abcdef'",
                  "SELECT * FROM jobengine.claim_v1('vm-1-1234-abcdef', '{default}', '{x}', 1, '30 s')")
    rows = await roles.fetch(
        "SELECT to_status::text, actor, role FROM jobengine.job_history WHERE job_id = $1 ORDER BY id",
        job)
    assert [tuple(r) for r in rows][1:] == [
        ("scheduled", "vm-1-1234-abcdef", "je_daemon_x"), ("running", "vm-1-1234-abcdef", "je_daemon_x")]


@pytest.mark.parametrize(
    ("column", "value"),
    [("status_reason", "'dependency_failed'"), ("attempt", "0"), ("released", "5"),
     ("result", "'{\"forged\": 1}'"), ("updated_at", "'2001-01-01'"), ("status_actor", "'api'")],
)
async def test_lifecycle_columns_change_only_with_a_transition(
    roles: asyncpg.Connection, column: str, value: str
) -> None:
    job = await running_job(roles)
    message = await refused(roles, "je_daemon_x",
                            f"UPDATE jobengine.jobs SET {column} = {value} WHERE id = {job}")
    assert f"{column} changes only with a status transition" in message


async def test_a_daemon_role_cannot_backdate_or_forge_the_attempt(roles: asyncpg.Connection) -> None:
    job = await running_job(roles)
    await as_role(roles, "je_daemon_x",
                  f"UPDATE jobengine.jobs SET status = 'completed', updated_at = '2001-01-01',"
                  f" attempt = 42, released = 7, finished_at = '2001-01-01' WHERE id = {job}")
    row = await roles.fetchrow(
        "SELECT attempt, occurred_at FROM jobengine.job_history WHERE job_id = $1"
        " ORDER BY id DESC LIMIT 1", job)
    assert row["attempt"] == 1
    assert row["occurred_at"] > datetime(2020, 1, 1, tzinfo=UTC)
    job_row = await roles.fetchrow(
        "SELECT attempt, released, finished_at FROM jobengine.jobs WHERE id = $1", job)
    assert (job_row["attempt"], job_row["released"]) == (1, 0)
    assert job_row["finished_at"] == row["occurred_at"]


async def test_an_insert_cannot_start_a_job_part_way_through_its_life(
    tx: asyncpg.Connection,
) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match="must be inserted new"):
        async with tx.transaction():
            await tx.execute("INSERT INTO jobengine.jobs (kind, attempt, result) VALUES ('x', 3, '{}')")


# -- 10. superuser-level bypass -------------------------------------------------------------


async def test_replica_mode_skips_none_of_the_lifecycle_triggers(tx: asyncpg.Connection) -> None:
    job = await new_job(tx)
    await tx.execute("SET LOCAL session_replication_role = replica")
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        async with tx.transaction():
            await tx.execute("DELETE FROM jobengine.job_history WHERE job_id = $1", job)
    with pytest.raises(asyncpg.CheckViolationError, match="illegal transition"):
        async with tx.transaction():
            await tx.execute("UPDATE jobengine.jobs SET status = 'completed' WHERE id = $1", job)
    await tx.execute("UPDATE jobengine.jobs SET status = 'cancelled' WHERE id = $1", job)
    assert await tx.fetchval("SELECT count(*) FROM jobengine.job_history WHERE job_id = $1", job) == 2


# -- 11. leases are bounded by the database --------------------------------------------------


@pytest.mark.parametrize("expiry", ["'infinity'", "now() + interval '2 hours'",
                                    "now() - interval '1 s'"])
async def test_a_hand_claim_cannot_take_an_unbounded_lease(tx: asyncpg.Connection, expiry: str) -> None:
    job = await new_job(tx)
    await tx.execute("UPDATE jobengine.jobs SET status = 'scheduled' WHERE id = $1", job)
    with pytest.raises(asyncpg.CheckViolationError, match="lease"):
        async with tx.transaction():
            await tx.execute(
                f"UPDATE jobengine.jobs SET status = 'running', lease_owner = 'me',"
                f" lease_expires_at = {expiry} WHERE id = $1", job)


async def test_a_lease_is_renewed_within_bounds_and_only_by_its_owner(tx: asyncpg.Connection) -> None:
    job = await running_job(tx)
    with pytest.raises(asyncpg.CheckViolationError, match="at most 01:00:00"):
        async with tx.transaction():
            await tx.execute("UPDATE jobengine.jobs SET lease_expires_at = 'infinity' WHERE id = $1", job)
    with pytest.raises(asyncpg.CheckViolationError, match="lease_owner changes only with"):
        async with tx.transaction():
            await tx.execute("UPDATE jobengine.jobs SET lease_owner = 'thief' WHERE id = $1", job)
    with pytest.raises(asyncpg.PostgresError, match="at most 01:00:00"):
        async with tx.transaction():
            await tx.fetch("SELECT * FROM jobengine.renew_v1('d1', $1, '{1}', '1 day')", [job])
    # The owner may raise the bound (jobengine.settings, which only it can change).
    await tx.execute("UPDATE jobengine.settings SET value = '2 days' WHERE name = 'max_lease_ttl'")
    renewed = await tx.fetch("SELECT outcome FROM jobengine.renew_v1('d1', $1, '{1}', '1 day')", [job])
    assert [r["outcome"] for r in renewed] == ["done"]


async def test_only_the_owner_changes_the_settings(roles: asyncpg.Connection) -> None:
    for role in ("je_app_x", "je_daemon_x"):
        message = await refused(
            roles, role, "UPDATE jobengine.settings SET value = '999999999' WHERE name = 'max_payload_bytes'")
        assert "permission denied" in message




# -- 12. an operator's retry does not revive cancelled dependents ------------------------


async def test_the_readmes_resubmission_of_a_sub_dag_keeps_its_edges(tx: asyncpg.Connection) -> None:
    import re

    root = await running_job(tx)
    child = await new_job(tx, depends_on=(root,))
    grandchild = await new_job(tx, depends_on=(child, root))
    await tx.fetch("SELECT * FROM jobengine.fail_v1('d1', $1, '{1}', '{error}', '{E: x}', '{null}')",
                   [root])
    await tx.execute("UPDATE jobengine.jobs SET max_retries = 0 WHERE id = $1", root)
    assert sorted(await tx.fetchval("SELECT array_agg(x.id) FROM jobengine.cascade_v1(10) x")) == [
        child, grandchild]
    retried = await tx.fetchrow("SELECT * FROM jobengine.retry_v1($1)", [root])
    assert retried["stays_cancelled"] == [child, grandchild]
    readme = await anyio.Path(__file__).parent.parent.joinpath("README.md").read_text()
    block = re.search(r"```sql\n(DO \$\$\n.*?cancelled_dependents\(41\).*?\n\$\$;)\n```", readme, re.S)
    assert block is not None, "the README's resubmission example is missing"
    await tx.execute(block.group(1).replace("(41)", f"({root})"))
    copies = await tx.fetch(
        "SELECT id, depends_on FROM jobengine.jobs WHERE id > $1 ORDER BY id", grandchild)
    assert len(copies) == 2
    assert copies[0]["depends_on"] == [root]
    assert copies[1]["depends_on"] == [copies[0]["id"], root]
