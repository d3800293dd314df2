"""jobengine under the bench protocol, as users run it.

Jobs are inserted with plain SQL (a plain asyncpg connection, no jobengine
code in the path); the worker is the in-process daemon (`run_daemon`) with a
no-op async handler, logging as `jobengine run` sets it up (JSON lines on
stderr, level info). Run by the project's Python.

`jobengine_peer.py [--limit-keys K1,K2,...] COMMAND ...`: with limit keys,
every job inserted gets one (`jobs.limit_key`): the job whose payload is
`{"i": i}` gets key number i modulo their count, in the bulk and the single
path alike (the limits workload, `bench/workloads/limits.py`).

`jobengine_peer.py --python-api COMMAND ...`: the bulk path is the Python
API's `defer_many` of a task taking `i: int`, on the same plain asyncpg
connection (the pyapi workload, `bench/workloads/pyapi.py`).
`BENCH_POOLER` / `BENCH_LISTEN_DSN` in the environment: the worker's DSN goes
through that pooler and LISTEN through that direct DSN (`bench/databases.py`).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import _common
import anyio
import asyncpg

import jobengine
from jobengine.cli.logs import configure_logging
from jobengine.daemon import DaemonConfig, DaemonSettings, from_callables, run_daemon
from jobengine.store import migrate
from jobengine.store.pool import Database, connect

BULK_SQL = "INSERT INTO jobengine.jobs (kind, payload) SELECT $1, p FROM unnest($2::jsonb[]) AS p"
SINGLE_SQL = "INSERT INTO jobengine.jobs (kind, payload) VALUES ($1, $2::jsonb)"
BULK_KEYED_SQL = ("INSERT INTO jobengine.jobs (kind, payload, limit_key)"
                  " SELECT $1, p, k FROM unnest($2::jsonb[], $3::text[]) AS u(p, k)")
SINGLE_KEYED_SQL = ("INSERT INTO jobengine.jobs (kind, payload, limit_key)"
                    " VALUES ($1, $2::jsonb, $3)")
LIMIT_KEYS = "--limit-keys"
PYTHON_API = "--python-api"

#: the Python API's app: one task, of the protocol's kind
APP = jobengine.App()


@APP.task(kind=_common.KIND)
async def bench_noop(i: int) -> None:
    """The Python API's no-op task (the bench's workers run the plain handlers)."""


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

    def __init__(self, conn: asyncpg.Connection, limit_keys: list[str]) -> None:
        self._conn = conn
        self._keys = limit_keys

    async def insert(self, key: int) -> None:
        """INSERT one job; asyncpg returns once it committed."""
        payload = json.dumps({"i": key})
        if self._keys:
            await self._conn.execute(SINGLE_KEYED_SQL, _common.KIND, payload,
                                     self._keys[key % len(self._keys)])
        else:
            await self._conn.execute(SINGLE_SQL, _common.KIND, payload)

    async def close(self) -> None:
        """Close the connection."""
        await self._conn.close()


class JobEngine:
    """The `Peer` for jobengine; jobs get `limit_keys` round-robin when there are some."""

    def __init__(self, limit_keys: list[str], python_api: bool = False) -> None:
        self.limit_keys = limit_keys
        self.python_api = python_api

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
            if self.python_api:
                with clock:
                    await bench_noop.defer_many([{"i": i} for i in range(n)], connection=conn)
                return
            with clock:
                payloads = [json.dumps({"i": i}) for i in range(n)]
                if self.limit_keys:
                    keys = [self.limit_keys[i % len(self.limit_keys)] for i in range(n)]
                    await conn.execute(BULK_KEYED_SQL, _common.KIND, payloads, keys)
                else:
                    await conn.execute(BULK_SQL, _common.KIND, payloads)
        finally:
            await conn.close()

    async def open_inserter(self, dsn: str) -> SqlInserter:
        """A plain connection, as an application's would be."""
        return SqlInserter(await asyncpg.connect(dsn), self.limit_keys)

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
        target = Database(options.dsn, listen_dsn=os.environ.get("BENCH_LISTEN_DSN") or None,
                          pooler=os.environ.get("BENCH_POOLER") or None)
        async with run_daemon(DaemonConfig(daemon=settings), target, handlers=handlers):
            await stop.wait()


def _limit_keys(argv: list[str]) -> list[str]:
    """Take a leading `--limit-keys K1,K2,...` off argv; the keys ([] without it)."""
    if len(argv) > 2 and argv[1] == LIMIT_KEYS:
        keys = argv[2]
        del argv[1:3]
        return [k for k in keys.split(",") if k]
    return []


def _python_api(argv: list[str]) -> bool:
    """Take a leading `--python-api` off argv; whether it was there."""
    if len(argv) > 1 and argv[1] == PYTHON_API:
        del argv[1]
        return True
    return False


if __name__ == "__main__":
    # the loop `jobengine run` uses (uvloop where installed)
    _common.main(JobEngine(_limit_keys(sys.argv), _python_api(sys.argv)), runner=_runner())
