"""Forward-only schema migrations, applied under an advisory lock."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from jobengine.domain.errors import ConfigError
from jobengine.store.sqlfiles import Migration, load_migrations, sql_dir

#: pg_advisory_lock key: two `jobengine migrate` runs at once apply each migration once.
MIGRATION_LOCK_KEY = 0x6A6F62656E67  # "jobeng"

#: Creates the schema and the table that records applied migrations.
BOOKKEEPING_SQL = """
CREATE SCHEMA IF NOT EXISTS jobengine;
CREATE TABLE IF NOT EXISTS jobengine.schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


@dataclass(frozen=True)
class AppliedMigration:
    """A migration that `migrate` applied in this run."""

    version: int
    name: str

    def __str__(self) -> str:
        return f"{self.version:04d}_{self.name}"


async def migrate(
    conn: asyncpg.Connection, migrations: list[Migration] | None = None
) -> list[AppliedMigration]:
    """Apply every pending migration, each in its own transaction; return what was applied.

    Running it again applies nothing. A migration whose file changed after it
    was applied is refused (`ConfigError`): migrations are forward-only, so a
    change must be a new migration.
    """
    wanted = migrations if migrations is not None else load_migrations()
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(BOOKKEEPING_SQL)
        rows = await conn.fetch("SELECT version, name, checksum FROM jobengine.schema_migrations")
        done = {r["version"]: r for r in rows}
        applied: list[AppliedMigration] = []
        for migration in wanted:
            record = done.get(migration.version)
            if record is not None:
                if record["checksum"] != migration.checksum:
                    raise ConfigError(
                        f"migration {migration.version:04d}_{migration.name} was changed after "
                        "it was applied; add a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO jobengine.schema_migrations (version, name, checksum)"
                    " VALUES ($1, $2, $3)",
                    migration.version, migration.name, migration.checksum,
                )
            applied.append(AppliedMigration(migration.version, migration.name))
        if applied and await _roles_installed(conn):
            # New tables and functions get the roles' grants (roles.sql is idempotent).
            async with conn.transaction():
                await conn.execute((sql_dir() / "roles.sql").read_text())
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


async def _roles_installed(conn: asyncpg.Connection) -> bool:
    found: bool = await conn.fetchval(
        "SELECT to_regrole('jobengine_daemon') IS NOT NULL"
        " AND to_regrole('jobengine_app') IS NOT NULL"
    )
    return found


async def current_version(conn: asyncpg.Connection) -> int:
    """The highest applied migration (0 when the schema is not installed)."""
    exists = await conn.fetchval("SELECT to_regclass('jobengine.schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    version = await conn.fetchval("SELECT max(version) FROM jobengine.schema_migrations")
    return int(version or 0)


async def apply_roles(conn: asyncpg.Connection) -> None:
    """Create (if missing) and grant the least-privilege roles of sql/roles.sql.

    `jobengine_daemon` and `jobengine_app` are NOLOGIN groups; grant them to
    login roles. Idempotent. Needs CREATEROLE (or a superuser) the first time.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        async with conn.transaction():
            await conn.execute((sql_dir() / "roles.sql").read_text())
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
