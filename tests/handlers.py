"""Handlers for daemon processes started by the tests (`tests.handlers:...`).

They record every execution in `test_executions` (job id, attempt, pid), in
the daemon's own database (JOBENGINE_DSN), so tests can count runs exactly.
"""

from __future__ import annotations

import os
from typing import Any

import anyio
import asyncpg

from jobengine.domain import Job

_pool: asyncpg.Pool | None = None
_pool_lock: anyio.Lock | None = None

SCHEMA = """
CREATE TABLE IF NOT EXISTS test_executions (
    job_id bigint NOT NULL,
    attempt integer NOT NULL,
    pid integer NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (job_id, attempt)
)
"""


async def _db() -> asyncpg.Pool:
    global _pool, _pool_lock
    if _pool_lock is None:
        _pool_lock = anyio.Lock()
    async with _pool_lock:  # many actors start at once: one pool, not one each
        if _pool is None:
            _pool = await asyncpg.create_pool(os.environ["JOBENGINE_DSN"], min_size=1,
                                              max_size=4)
    return _pool


async def record(job: Job) -> dict[str, Any]:
    """Record the execution, then finish after payload["sleep"] seconds (default 0)."""
    db = await _db()
    await db.execute("INSERT INTO test_executions (job_id, attempt, pid) VALUES ($1, $2, $3)",
                     job.id, job.attempt, os.getpid())
    await anyio.sleep(float(job.payload.get("sleep", 0)))
    return {"pid": os.getpid()}


async def egress(job: Job) -> str:
    """Try to reach the address in the payload (tests run this only where it cannot leave)."""
    import socket

    host, port = job.payload["host"], int(job.payload["port"])
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:  # a swallowed network error must still fail the attempt
        return f"connect failed: {exc}"
    return "connected"
