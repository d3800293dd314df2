"""Procrastinate (psycopg 3) under the bench protocol, as its docs run it.

An `App` on a `PsycopgConnector`; `Task.batch_defer_async` for bulk (one
statement), `Task.defer_async` for single jobs (each producer an app on a
one-connection pool: 32 default pools would exceed `max_connections`);
`App.run_worker_async` with `concurrency=C` and its defaults otherwise
(LISTEN/NOTIFY on), on asyncio as the `procrastinate worker` command runs it.
Run by `bench/.venv-peers`' Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import _common
import procrastinate


def make_app(dsn: str, *, sleeping: bool = False,
             **pool: Any) -> tuple[procrastinate.App, Any]:
    """An app with the one no-op task (or the sleeping one); `pool`: the pool's sizes."""
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=dsn, **pool)
    )

    @app.task(name=_common.KIND)
    async def noop(i: int) -> None:
        t = time.time()
        _common.RECORDS.append((i, t))
        if sleeping:
            await asyncio.sleep(86400)

    return app, noop


class Inserter:
    """One app (its own pool) deferring single jobs."""

    def __init__(self, app: procrastinate.App, task: Any) -> None:
        self._app = app
        self._task = task

    async def insert(self, key: int) -> None:
        """`Task.defer_async` (autocommitted)."""
        await self._task.defer_async(i=key)

    async def close(self) -> None:
        """Close the app's pool."""
        await self._app.close_async()


class ProcrastinatePeer:
    """The `Peer` for Procrastinate."""

    async def install(self, dsn: str) -> None:
        """`schema_manager.apply_schema_async()` (what `procrastinate schema --apply` runs)."""
        app, _ = make_app(dsn)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()

    async def enqueue_bulk(self, dsn: str, n: int, clock: _common.Clock) -> None:
        """`Task.batch_defer_async`: one INSERT of n jobs."""
        app, task = make_app(dsn)
        async with app.open_async():
            with clock:
                await task.batch_defer_async(*({"i": i} for i in range(n)))

    async def open_inserter(self, dsn: str) -> Inserter:
        """An open app for single defers, on a pool of one connection (one producer's)."""
        app, task = make_app(dsn, min_size=1, max_size=1)
        await app.open_async()
        return Inserter(app, task)

    async def work(self, options: _common.WorkerOptions, ready: Callable[[], Awaitable[None]],
                   stop: asyncio.Event) -> None:
        """`App.run_worker_async` until `stop`; cancelling it stops the worker gracefully."""
        app, _ = make_app(options.dsn, sleeping=options.handler == _common.SLEEP)
        async with app.open_async():
            await ready()
            runner = asyncio.create_task(app.run_worker_async(
                concurrency=options.concurrency, install_signal_handlers=False,
                shutdown_graceful_timeout=0.0 if options.handler == _common.SLEEP else None,
            ))
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner


if __name__ == "__main__":
    _common.main(ProcrastinatePeer())
