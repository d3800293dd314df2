"""Acting on the ledger as a superuser would (this module holds no tests).

`superuser_edit` turns the lifecycle's protective triggers off for a block
and back on (`ENABLE ALWAYS`, as the schema leaves them): what an attacker
with superuser rights can do, and how the tests make old data.
`backdate` moves jobs' whole lives into the past and rewrites their hash
chains, as such an attacker (or a test needing last quarter's data) would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import asyncpg

_PROTECTIVE = ("jobs_guard_columns", "jobs_guard_transition", "ledger_append_only")


@asynccontextmanager
async def superuser_edit(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """Inside: UPDATE/DELETE of jobs and ledger rows go through (triggers off)."""
    rows = await conn.fetch(
        "SELECT t.tgrelid::regclass::text AS rel, t.tgname FROM pg_trigger t"
        " JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'jobengine' AND t.tgname = ANY ($1::text[])", list(_PROTECTIVE))
    for r in rows:
        await conn.execute(f"ALTER TABLE {r['rel']} DISABLE TRIGGER {r['tgname']}")
    try:
        yield
    finally:
        for r in rows:
            await conn.execute(f"ALTER TABLE {r['rel']} ENABLE ALWAYS TRIGGER {r['tgname']}")


async def backdate(conn: asyncpg.Connection, job_ids: list[int], by: timedelta) -> None:
    """Move these jobs' rows and times `by` into the past, chains rewritten to match."""
    days = by.days + 2
    await conn.execute("SELECT jobengine.ledger_prepare_v1(1, (now() AT TIME ZONE 'UTC')::date - $1::integer)",
                       days)
    async with superuser_edit(conn):
        await conn.execute(
            "UPDATE jobengine.ledger SET occurred_at = occurred_at - $2::interval,"
            " prev_at = prev_at - $2::interval"
            " WHERE job_id = ANY ($1::bigint[])", job_ids, by)
        await conn.execute(
            "UPDATE jobengine.jobs SET created_at = created_at - $2::interval,"
            " updated_at = updated_at - $2::interval, scheduled_at = scheduled_at - $2::interval,"
            " started_at = started_at - $2::interval, finished_at = finished_at - $2::interval,"
            " run_at = run_at - $2::interval WHERE id = ANY ($1::bigint[])",
            job_ids, by)
        await rechain(conn, job_ids)


async def rechain(conn: asyncpg.Connection, job_ids: list[int]) -> None:
    """Recompute these jobs' hash chains and heads from what their rows say now."""
    await conn.execute("""
        DO $$
        DECLARE r record; v_prev bytea; v_job bigint := NULL;
        BEGIN
            FOR r IN SELECT * FROM jobengine.ledger WHERE job_id = ANY (%s) ORDER BY job_id, id LOOP
                IF v_job IS DISTINCT FROM r.job_id THEN
                    v_prev := ''::bytea; v_job := r.job_id;
                END IF;
                UPDATE jobengine.ledger l SET prev_hash = v_prev,
                    hash = jobengine.ledger_hash(v_prev, r.job_id, r.event_type, r.from_status,
                        r.to_status, r.attempt, r.occurred_at, r.reason, r.actor, r.role, r.kind,
                        r.queue, r.prev_at)
                WHERE l.id = r.id AND l.job_id = r.job_id
                RETURNING l.hash INTO v_prev;
                UPDATE jobengine.jobs SET ledger_head = v_prev WHERE id = r.job_id;
            END LOOP;
        END $$""" % ("ARRAY[" + ",".join(str(int(j)) for j in job_ids) + "]::bigint[]"))
