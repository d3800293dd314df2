"""Small helpers the tests share: DSNs, waiting on conditions, raw SQL."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg

T = TypeVar("T")


def dsn_with_database(dsn: str, database: str) -> str:
    """The same server DSN, naming another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def wait_for(
    probe: Callable[[], Awaitable[T | None]], *, within: float = 10.0, interval: float = 0.02,
    message: str = "condition",
) -> T:
    """Poll `probe` until it returns a truthy value; fail after `within` seconds."""
    with anyio.move_on_after(within):
        while True:
            value = await probe()
            if value:
                return value
            await anyio.sleep(interval)
    raise AssertionError(f"timed out after {within}s waiting for {message}")


async def admin(server_dsn: str, sql: str) -> None:
    """Run one statement on the server's maintenance database (CREATE/DROP DATABASE)."""
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def scratch_database(server_dsn: str, template_db: str) -> Iterator[str]:
    """A database cloned from the migrated template, dropped afterwards; yields its DSN.

    Its name carries this process's pid, so a later run can drop it if this
    one is killed (see conftest's `_drop_leftovers`).
    """
    name = f"jobengine_t_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    asyncio.run(admin(server_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"'))
    try:
        yield dsn_with_database(server_dsn, name)
    finally:
        asyncio.run(admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
