"""PgQueuer (asyncpg) under the bench protocol, as its README runs it.

One asyncpg connection per PgQueuer (`AsyncpgDriver`), the list form of
`Queries.enqueue` for bulk (one statement), the scalar form for single jobs,
and a worker on uvloop as `pgq run` starts it. Concurrency C is
`max_concurrent_tasks=C` with `batch_size=C // 2` (PgQueuer requires the cap to
be at least twice the batch). Run by `bench/.venv-peers`' Python.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import _common
import asyncpg
import uvloop
from pgqueuer import PgQueuer, Queries
from pgqueuer.models import Job


class Inserter:
    """One connection's `Queries.enqueue` (autocommitted)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self._queries = Queries.from_asyncpg_connection(conn)

    async def insert(self, key: int) -> None:
        """Enqueue one job."""
        await self._queries.enqueue(_common.KIND, json.dumps({"i": key}).encode())

    async def close(self) -> None:
        """Close the connection."""
        await self._conn.close()


class PgQueuerPeer:
    """The `Peer` for PgQueuer."""

    async def install(self, dsn: str) -> None:
        """`Queries.install()` (what `pgq install` runs)."""
        conn = await asyncpg.connect(dsn)
        try:
            await Queries.from_asyncpg_connection(conn).install()
        finally:
            await conn.close()

    async def enqueue_bulk(self, dsn: str, n: int, clock: _common.Clock) -> None:
        """`Queries.enqueue` with lists: one INSERT of n jobs."""
        conn = await asyncpg.connect(dsn)
        try:
            queries = Queries.from_asyncpg_connection(conn)
            with clock:
                payloads: list[bytes | None] = [json.dumps({"i": i}).encode() for i in range(n)]
                await queries.enqueue([_common.KIND] * n, payloads, [0] * n)
        finally:
            await conn.close()

    async def open_inserter(self, dsn: str) -> Inserter:
        """A connection for single enqueues."""
        return Inserter(await asyncpg.connect(dsn))

    async def work(self, options: _common.WorkerOptions, ready: Callable[[], Awaitable[None]],
                   stop: asyncio.Event) -> None:
        """`PgQueuer.run` until `stop`, then its own shutdown event."""
        conn = await asyncpg.connect(options.dsn)
        pgq = PgQueuer.from_asyncpg_connection(conn)
        sleeping = options.handler == _common.SLEEP

        @pgq.entrypoint(_common.KIND)
        async def noop(job: Job) -> None:
            t = time.time()
            _common.RECORDS.append((job.payload, t))
            if sleeping:
                await asyncio.sleep(86400)

        batch = max(1, options.concurrency // 2)
        await ready()
        runner = asyncio.create_task(
            pgq.run(batch_size=batch, max_concurrent_tasks=max(options.concurrency, 2 * batch))
        )
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        pgq.shutdown.set()
        stopper.cancel()
        try:
            await runner
        finally:
            await conn.close()


if __name__ == "__main__":
    _common.main(PgQueuerPeer(), runner=uvloop.run)
