"""jobengine under the bench protocol, as users run it.

Jobs are inserted with plain SQL (a plain asyncpg connection, no jobengine
code in the path); the worker is the in-process daemon (`run_daemon`) with a
no-op async handler, logging as `jobengine run` sets it up (JSON lines on
stderr, level info). Run by the project's Python.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import _common
import anyio
import asyncpg

from jobengine.cli.logs import configure_logging
from jobengine.daemon import DaemonConfig, DaemonSettings, from_callables, run_daemon
from jobengine.store import migrate
from jobengine.store.pool import connect

BULK_SQL = "INSERT INTO jobengine.jobs (kind, payload) SELECT $1, p FROM unnest($2::jsonb[]) AS p"
SINGLE_SQL = "INSERT INTO jobengine.jobs (kind, payload) VALUES ($1, $2::jsonb)"


def _runner() -> Callable[[Awaitable[None]], None]:
    from jobengine.cli.loop import use_uvloop

    if use_uvloop():
        import uvloop

        return uvloop.run  # type: ignore[no-any-return]
    return asyncio.run


async def noop(job: Any) -> None:
    """Record the call and return."""
    t = time.time()
    _common.RECORDS.append((job.payload.get("i"), t))


async def sleep(job: Any) -> None:
    """Record the call and sleep until interrupted."""
    t = time.time()
    _common.RECORDS.append((job.payload.get("i"), t))
    await anyio.sleep(86400)


class SqlInserter:
    """One plain asyncpg connection: one INSERT per job, autocommitted."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def insert(self, key: int) -> None:
        """INSERT one job; asyncpg returns once it committed."""
        await self._conn.execute(SINGLE_SQL, _common.KIND, json.dumps({"i": key}))

    async def close(self) -> None:
        """Close the connection."""
        await self._conn.close()


class JobEngine:
    """The `Peer` for jobengine."""

    async def install(self, dsn: str) -> None:
        """`jobengine.store.migrate` on a fresh database."""
        conn = await connect(dsn, actor="bench")
        try:
            await migrate(conn)
        finally:
            await conn.close()

    async def enqueue_bulk(self, dsn: str, n: int, clock: _common.Clock) -> None:
        """One INSERT ... SELECT FROM unnest(jsonb[]): one statement, audit rows per statement."""
        conn = await asyncpg.connect(dsn)
        try:
            with clock:
                payloads = [json.dumps({"i": i}) for i in range(n)]
                await conn.execute(BULK_SQL, _common.KIND, payloads)
        finally:
            await conn.close()

    async def open_inserter(self, dsn: str) -> SqlInserter:
        """A plain connection, as an application's would be."""
        return SqlInserter(await asyncpg.connect(dsn))

    async def work(self, options: _common.WorkerOptions, ready: Callable[[], Awaitable[None]],
                   stop: asyncio.Event) -> None:
        """`run_daemon` for the length of the run; a graceful stop on `stop`."""
        sleeping = options.handler == _common.SLEEP
        settings = DaemonSettings(
            concurrency=options.concurrency, lease_ttl=options.lease_ttl,
            shutdown_grace=0.0 if sleeping else 10.0,
        )
        handlers = from_callables({_common.KIND: sleep if sleeping else noop})
        # As `jobengine run` sets it up: JSON lines on stderr at level info.
        configure_logging("info", json=True)
        await ready()
        async with run_daemon(DaemonConfig(daemon=settings), options.dsn, handlers=handlers):
            await stop.wait()


if __name__ == "__main__":
    # the loop `jobengine run` uses (uvloop where installed)
    _common.main(JobEngine(), runner=_runner())
