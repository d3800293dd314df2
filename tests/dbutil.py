"""Small helpers the tests share: DSNs, waiting on conditions, raw SQL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio

T = TypeVar("T")


def dsn_with_database(dsn: str, database: str) -> str:
    """The same server DSN, naming another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def wait_for(
    probe: Callable[[], Awaitable[T]], *, within: float = 10.0, interval: float = 0.02,
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
