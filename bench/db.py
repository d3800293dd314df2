"""Admin helpers on the server under test: fresh databases, CHECKPOINT, polling."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg


def with_database(dsn: str, database: str) -> str:
    """The same server DSN, naming another database (query parameters kept)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def execute(dsn: str, sql: str, *args: Any) -> None:
    """Run one statement on its own connection."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def fetchval(dsn: str, sql: str, *args: Any) -> Any:
    """One value, on its own connection."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def recreate(admin_dsn: str, name: str, *, template: str | None = None) -> str:
    """Drop `name` (whoever is connected) and create it again; return its DSN.

    With a template, the copy is made with `STRATEGY = FILE_COPY` where the
    server has it (15+): a checkpoint and a file copy, fast for big templates.
    """
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if template is None:
            await conn.execute(f'CREATE DATABASE "{name}"')
        else:
            strategy = " STRATEGY = FILE_COPY" if conn.get_server_version().major >= 15 else ""
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"{strategy}')
    finally:
        await conn.close()
    return with_database(admin_dsn, name)


async def drop(admin_dsn: str, name: str) -> None:
    """Drop a database if it exists."""
    await execute(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def checkpoint(admin_dsn: str) -> None:
    """CHECKPOINT, so a timed phase does not pay for the previous phase's dirty pages."""
    await execute(admin_dsn, "CHECKPOINT")


async def wait_until_false(
    conn: asyncpg.Connection, sql: str, *, limit: float, interval: float,
    started: float | None = None,
) -> tuple[float, bool]:
    """Poll `sql` until it returns false; (seconds since `started`, timed out?)."""
    t0 = time.perf_counter() if started is None else started
    while await conn.fetchval(sql):
        if time.perf_counter() - t0 >= limit:
            return time.perf_counter() - t0, True
        await asyncio.sleep(interval)
    return time.perf_counter() - t0, False


async def wait_until_count(
    conn: asyncpg.Connection, sql: str, target: int, *args: Any, limit: float, interval: float,
    started: float | None = None,
) -> tuple[float, bool]:
    """Poll the count `sql` until it reaches `target`; (seconds, timed out?)."""
    t0 = time.perf_counter() if started is None else started
    while int(await conn.fetchval(sql, *args)) < target:
        if time.perf_counter() - t0 >= limit:
            return time.perf_counter() - t0, True
        await asyncio.sleep(interval)
    return time.perf_counter() - t0, False
