"""oban (Python, the `oban` package on PyPI) under the bench protocol, as its docs run it.

oban needs Python 3.12+, so it has a virtualenv of its own (`bench/.venv-oban`,
`requirements-oban.txt`), built from a Python 3.12+ found on the machine.

- schema: `oban.schema.install(pool)` on a one-connection pool, which is what
  `oban install --dsn D` runs;
- jobs: a worker class `@worker(queue="default")` whose `process` records the
  call; enqueued with `Oban.enqueue_many(Worker.new(...) for ...)` (bulk: one
  transaction, one INSERT per job in open-source oban; bulk inserts are an
  Oban Pro feature) and `Oban.enqueue(Worker.new(...))` (single: one
  transaction each), on an `Oban(pool=...)` in client mode. Enqueuing needs no
  started instance (`Worker.enqueue` only looks the instance up), so the
  client is not started: starting one would add its notifier connection and
  the stager's once-a-second poll, which are not part of the enqueue path;
- worker: what `oban start --dsn D --queues default:C` does: uvloop, orjson as
  psycopg's JSON codec, `Config.load(...)` and its pool (1-10 connections),
  `Config.create_oban(pool)`, the telemetry logger attached (one INFO line per
  job, on stderr), `async with oban:` until stopped.

Run by `bench/.venv-oban`'s Python.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import _common
import orjson
import uvloop
from oban import Job, Oban, worker
from oban._config import Config
from oban.schema import install as install_schema
from oban.telemetry import logger as telemetry_logger
from psycopg.types.json import set_json_dumps, set_json_loads

QUEUE = "default"

#: set in the worker process: the handler sleeps until interrupted
SLEEPING = False


@worker(queue=QUEUE)
class Noop:
    """Record the call and return (or sleep until interrupted)."""

    async def process(self, job: Job) -> None:
        """The job's handler."""
        t = time.time()
        _common.RECORDS.append((job.args["i"], t))
        if SLEEPING:
            await asyncio.sleep(86400)


class Inserter:
    """One client-mode `Oban` on its own one-connection pool, enqueuing single jobs."""

    def __init__(self, oban: Oban, pool: Any) -> None:
        self._oban = oban
        self._pool = pool

    async def insert(self, key: int) -> None:
        """`Oban.enqueue`: one INSERT in its own transaction, committed on return."""
        await self._oban.enqueue(Noop.new({"i": key}))

    async def close(self) -> None:
        """Close the pool."""
        await self._pool.close()


class ObanPeer:
    """The `Peer` for oban."""

    def __init__(self) -> None:
        self._clients = 0

    async def install(self, dsn: str) -> None:
        """`oban.schema.install` (what `oban install` runs), on a pool of one connection."""
        pool = await Config(dsn=dsn, pool_min_size=1, pool_max_size=1).create_pool()
        try:
            await install_schema(pool)
        finally:
            await pool.close()

    async def enqueue_bulk(self, dsn: str, n: int, clock: _common.Clock) -> None:
        """`Oban.enqueue_many`: one transaction of n inserts."""
        pool = await Oban.create_pool(dsn)
        try:
            oban = Oban(pool=pool)
            with clock:
                await oban.enqueue_many(Noop.new({"i": i}) for i in range(n))
        finally:
            await pool.close()

    async def open_inserter(self, dsn: str) -> Inserter:
        """A client `Oban` (named apart, so several live in one process) on one connection."""
        pool = await Oban.create_pool(dsn, min_size=1, max_size=1)
        self._clients += 1
        return Inserter(Oban(pool=pool, name=f"bench-client-{self._clients}"), pool)

    async def work(self, options: _common.WorkerOptions, ready: Callable[[], Awaitable[None]],
                   stop: asyncio.Event) -> None:
        """As `oban start --queues default:C` runs it, until `stop`; then a graceful stop."""
        global SLEEPING
        SLEEPING = options.handler == _common.SLEEP
        set_json_dumps(orjson.dumps)
        set_json_loads(orjson.loads)
        conf = Config.load(dsn=options.dsn, queues={QUEUE: options.concurrency},
                           shutdown_grace_period=0.0 if SLEEPING else None)
        pool = await conf.create_pool()
        try:
            oban = await conf.create_oban(pool)
            telemetry_logger.attach()
            await ready()
            async with oban:
                await stop.wait()
        finally:
            telemetry_logger.detach()
            await pool.close()


if __name__ == "__main__":
    import logging

    # as `oban start` configures logging (its module does this on import)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s [%(levelname)s] %(name)s: %(message)s")
    _common.main(ObanPeer(), runner=uvloop.run)
