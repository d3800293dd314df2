"""Migrations: forward-only, idempotent, locked, and equal to schema.sql."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import pytest

from jobengine.domain import ConfigError
from jobengine.store import migrate
from jobengine.store.migrate import current_version
from jobengine.store.sqlfiles import Migration, load_migrations, sql_dir
from tests.dbutil import dsn_with_database

pytestmark = pytest.mark.anyio

# A fingerprint of everything in schema jobengine: tables, columns, constraints,
# indexes, triggers (and whether they fire under replica), functions, types, grants, settings.
FINGERPRINT = {
    "columns": """
        SELECT table_name, column_name, ordinal_position, data_type, udt_name,
               is_nullable, column_default, is_identity
        FROM information_schema.columns WHERE table_schema = 'jobengine'
        ORDER BY table_name, ordinal_position""",
    "constraints": """
        -- (PostgreSQL 18 names the NOT NULL constraints a partition inherits after
        -- the parent, and those of a partition attached by pg_dump's script after
        -- the partition: the same constraint either way)
        SELECT conrelid::regclass::text AS rel,
               CASE WHEN c.contype = 'n' THEN '(not null)' ELSE conname END AS conname,
               pg_get_constraintdef(c.oid) AS def
        FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE n.nspname = 'jobengine' ORDER BY 1, 2, 3""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'jobengine' ORDER BY 1, 2""",
    "triggers": """
        SELECT tgrelid::regclass::text AS rel, tgname, pg_get_triggerdef(t.oid) AS def,
               t.tgenabled::text AS enabled
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'jobengine' AND NOT t.tgisinternal ORDER BY 1, 2""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args,
               pg_get_functiondef(p.oid) AS def
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'jobengine' ORDER BY 1, 2""",
    "types": """
        SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder)::text AS labels
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        LEFT JOIN pg_enum e ON e.enumtypid = t.oid
        WHERE n.nspname = 'jobengine' AND t.typtype = 'e' GROUP BY 1 ORDER BY 1""",
    "privileges": """
        SELECT c.relname AS name, c.relacl::text AS acl FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'jobengine'
        UNION ALL
        SELECT p.oid::regprocedure::text, p.proacl::text FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'jobengine'
        ORDER BY 1""",
    "settings": "SELECT name, value FROM jobengine.settings ORDER BY 1",
    "migrations": "SELECT version, name, checksum FROM jobengine.schema_migrations ORDER BY 1",
}


def _dated_partition(row: dict[str, Any]) -> bool:
    """The ledger's daily partitions (`ledger_YYYYMMDD`) depend on the day they were made."""
    return any(isinstance(v, str) and re.search(r"\bledger_2\d{7}(?!\d)", v) for v in row.values())


async def fingerprint(conn: asyncpg.Connection) -> dict[str, list[dict[str, Any]]]:
    return {k: [dict(r) for r in await conn.fetch(q) if not _dated_partition(dict(r))]
            for k, q in FINGERPRINT.items()}


@pytest.fixture
async def empty_db(server_dsn: str) -> AsyncIterator[str]:
    """A database with nothing in it."""
    name = f"jobengine_t_{os.getpid()}_{uuid.uuid4().hex[:10]}"  # pid: see conftest
    admin = await asyncpg.connect(server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield dsn_with_database(server_dsn, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_migrate_builds_the_schema_then_is_a_no_op(empty_db: str) -> None:
    conn = await asyncpg.connect(empty_db)
    try:
        assert await current_version(conn) == 0
        applied = await migrate(conn)
        assert [str(a) for a in applied] == [
            f"{m.version:04d}_{m.name}" for m in load_migrations()
        ]
        first = await fingerprint(conn)
        assert await migrate(conn) == []
        assert await fingerprint(conn) == first
        assert await current_version(conn) == len(load_migrations())
    finally:
        await conn.close()


async def test_all_migrations_equal_schema_sql(server_dsn: str, empty_db: str, db_dsn: str) -> None:
    # db_dsn was built by migrate (through the template); empty_db gets schema.sql.
    migrated = await asyncpg.connect(db_dsn)
    canonical = await asyncpg.connect(empty_db)
    try:
        await canonical.execute((sql_dir() / "schema.sql").read_text())
        assert await fingerprint(canonical) == await fingerprint(migrated)
        # and a database installed from schema.sql needs no migration
        assert await migrate(canonical) == []
    finally:
        await migrated.close()
        await canonical.close()


async def test_concurrent_migrations_apply_each_once(empty_db: str) -> None:
    results: list[list[str]] = []

    async def run() -> None:
        conn = await asyncpg.connect(empty_db)
        try:
            results.append([str(a) for a in await migrate(conn)])
        finally:
            await conn.close()

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(run)
    applied = sorted(results, key=len)
    assert applied[0] == []
    assert applied[1] == []
    assert len(applied[2]) == len(load_migrations())


async def test_a_changed_migration_is_refused(db_dsn: str) -> None:
    conn = await asyncpg.connect(db_dsn)
    try:
        edited = [Migration(m.version, m.name, m.sql + "\n-- edited") for m in load_migrations()]
        with pytest.raises(ConfigError, match="was changed after it was applied"):
            await migrate(conn, edited)
    finally:
        await conn.close()


async def test_a_failing_migration_leaves_no_trace(db_dsn: str) -> None:
    conn = await asyncpg.connect(db_dsn)
    try:
        existing = load_migrations()
        broken = Migration(
            len(existing) + 1, "broken",
            "CREATE TABLE jobengine.half_done (x int); SELECT 1/0;",
        )
        with pytest.raises(asyncpg.DivisionByZeroError):
            await migrate(conn, [*existing, broken])
        assert await conn.fetchval("SELECT to_regclass('jobengine.half_done')") is None
        assert await current_version(conn) == len(existing)
    finally:
        await conn.close()


async def test_the_ledger_migration_keeps_every_row_and_marks_it_before_chaining(
    empty_db: str,
) -> None:
    """0004 moves 0.2.0's history and timeline into the ledger; old rows are unchained, new ones chain."""
    from jobengine.store import LedgerStore

    conn = await asyncpg.connect(empty_db)
    try:
        await migrate(conn, [m for m in load_migrations() if m.version <= 3])
        await conn.execute("SET jobengine.actor = 'd1'")
        await conn.execute("INSERT INTO jobengine.jobs (kind) SELECT 'k' FROM generate_series(1, 3)")
        rows = await conn.fetch("SELECT id, attempt FROM jobengine.claim_v1('d1', ARRAY['default'],"
                                " ARRAY['k'], 2, '5 min')")
        await conn.fetch("SELECT * FROM jobengine.finish_v1('d1', $1::bigint[], $2::int[], $3::text[])",
                         [rows[0]["id"]], [rows[0]["attempt"]], ["{}"])
        await conn.execute("SELECT jobengine.add_timeline_note(ARRAY[3]::bigint[], 'job.held', 'x')")
        before = [dict(r) for r in await conn.fetch(
            "SELECT id, event_id, job_id, event_type, occurred_at, envelope, tx_id"
            " FROM jobengine.timeline_events ORDER BY id")]
        history = await conn.fetch("SELECT job_id, from_status::text, to_status::text, attempt, reason,"
                                   " actor, role FROM jobengine.job_history ORDER BY id")

        await migrate(conn)

        after = [dict(r) for r in await conn.fetch(
            "SELECT id, event_id, job_id, event_type, occurred_at, envelope, tx_id"
            " FROM jobengine.timeline_events ORDER BY id")]
        assert after == before  # same ids, event ids, envelopes and cursors
        assert await conn.fetch("SELECT job_id, from_status::text, to_status::text, attempt, reason,"
                                " actor, role FROM jobengine.job_history ORDER BY id") == history
        assert await conn.fetchval("SELECT count(*) FROM jobengine.ledger WHERE hash IS NOT NULL") == 0
        ledger = LedgerStore(conn)
        assert (await ledger.verify()).intact
        # the running job finishes and a new job lives: their new rows chain
        await conn.fetch("SELECT * FROM jobengine.finish_v1('d1', $1::bigint[], $2::int[], $3::text[])",
                         [rows[1]["id"]], [rows[1]["attempt"]], ["{}"])
        await conn.execute("INSERT INTO jobengine.jobs (kind) VALUES ('k')")
        report = await ledger.verify()
        assert report.intact, report.problems
        assert await conn.fetchval("SELECT count(*) FROM jobengine.ledger WHERE hash IS NOT NULL") == 2
        # a row without a hash written after the migration is reported
        await conn.execute("ALTER TABLE jobengine.ledger DISABLE TRIGGER ledger_append_only")
        await conn.execute("UPDATE jobengine.ledger SET hash = NULL WHERE id = (SELECT max(id)"
                           " FROM jobengine.ledger)")
        await conn.execute("ALTER TABLE jobengine.ledger ENABLE ALWAYS TRIGGER ledger_append_only")
        found = await ledger.verify()
        assert [p.problem for p in found.problems][:1] == [
            "a row without a hash (written outside the engine)"]
    finally:
        await conn.close()
