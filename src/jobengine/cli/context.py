"""What every command shares: settings, the database, and how errors are shown."""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from jobengine.cli.config import Settings, load_settings
from jobengine.domain.errors import ConfigError, DatabaseUnavailable
from jobengine.store import JobStore, create_pool, current_version, migrate
from jobengine.store.pool import Database, as_database, connect
from jobengine.store.sqlfiles import load_migrations


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """--config and --dsn, accepted by every command."""
    parser.add_argument("--config", metavar="FILE", help="TOML config file (or JOBENGINE_CONFIG)")
    parser.add_argument(
        "--dsn", help="PostgreSQL DSN (or JOBENGINE_DSN); none: the embedded PostgreSQL"
    )


def settings_from_args(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Settings from the file and environment, with this command's flags on top."""
    merged: dict[str, Any] = {"dsn": getattr(args, "dsn", None), **overrides}
    return load_settings(getattr(args, "config", None), overrides=merged)


def redact(dsn: str) -> str:
    """A DSN fit for messages: the password replaced by ***."""
    parts = urlsplit(dsn)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return dsn


def resolve_dsn(settings: Settings) -> tuple[str, bool]:
    """The DSN to use, starting the embedded PostgreSQL when none is configured.

    Returns (dsn, embedded).
    """
    if settings.dsn:
        return settings.dsn, False
    from jobengine.embedded import DEFAULT_DATA_DIR, EmbeddedPostgresError, ensure_embedded

    data_dir = Path(settings.embedded.data_dir).expanduser() if settings.embedded.data_dir else (
        DEFAULT_DATA_DIR
    )
    try:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        return ensure_embedded(data_dir), True
    except EmbeddedPostgresError as exc:
        raise DatabaseUnavailable(f"cannot start the embedded PostgreSQL: {exc}") from exc


def resolve_database(settings: Settings) -> tuple[Database, bool]:
    """Where connections go (pooler and listen_dsn included), as `resolve_dsn`."""
    dsn, embedded = resolve_dsn(settings)
    return settings.database(dsn), embedded


def unavailable(dsn: str, exc: BaseException) -> DatabaseUnavailable:
    """The error to show when the database cannot be reached."""
    reason = str(exc) or type(exc).__name__
    return DatabaseUnavailable(f"cannot connect to the database at {redact(dsn)}: {reason}")


async def ensure_schema(target: str | Database, *, embedded: bool, actor: str) -> None:
    """Make sure the schema is current: migrate the embedded database, else insist."""
    dsn = as_database(target).dsn
    try:
        conn = await connect(target, actor)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise unavailable(dsn, exc) from exc
    try:
        have = await current_version(conn)
        want = len(load_migrations())
        if have > want:
            raise ConfigError(
                f"the database schema is at version {have}, newer than this jobengine knows "
                f"({want}): upgrade jobengine (daemons already running keep working; "
                "see Upgrading in the README)"
            )
        if embedded:
            await migrate(conn)
            return
        if have < want:
            raise ConfigError(
                f"the database schema is at version {have}, jobengine needs {want}: "
                "run `jobengine migrate` first"
            )
    finally:
        await conn.close()


@asynccontextmanager
async def open_store(
    settings: Settings, actor: str, *, max_size: int = 4
) -> AsyncIterator[JobStore]:
    """A `JobStore` on the configured database, schema checked."""
    db, embedded = resolve_database(settings)
    await ensure_schema(db, embedded=embedded, actor=actor)
    try:
        pool = await create_pool(db, actor, min_size=1, max_size=max_size)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise unavailable(db.dsn, exc) from exc
    try:
        yield JobStore(pool)
    finally:
        await pool.close()


def fail(message: str, code: int = 1) -> int:
    """Print one clear line to stderr and return the exit code."""
    print(f"jobengine: error: {message}", file=sys.stderr)
    return code
