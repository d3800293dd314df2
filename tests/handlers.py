"""Handlers for daemon processes started by the tests (`tests.handlers:...`).

They record every execution in `test_executions` (job id, attempt, pid), in
the daemon's own database (JOBENGINE_DSN), so tests can count runs exactly.
The `connect_*` handlers try to reach payload["host"]:payload["port"] in
different ways (tests aim them only at a sink in a network namespace they
made); `sleep_with_child` records its processes in `test_processes`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
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
);
CREATE TABLE IF NOT EXISTS test_processes (
    job_id bigint NOT NULL,
    role text NOT NULL,
    pid integer NOT NULL
);
CREATE TABLE IF NOT EXISTS test_spans (
    job_id bigint NOT NULL,
    attempt integer NOT NULL,
    limit_key text,
    pid integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended_at timestamptz,
    PRIMARY KEY (job_id, attempt)
)
"""

#: A child process that connects: it has no audit hook, whatever its parent has.
CONNECT_SCRIPT = ("import socket, sys; "
                  "socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()")


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


async def span(job: Job) -> None:
    """Log the handler's own start and end (`test_spans`), sleeping payload["sleep"] between."""
    db = await _db()
    await db.execute("INSERT INTO test_spans (job_id, attempt, limit_key, pid) VALUES ($1, $2, $3, $4)",
                     job.id, job.attempt, job.limit_key, os.getpid())
    await anyio.sleep(float(job.payload.get("sleep", 0)))
    await db.execute("UPDATE test_spans SET ended_at = clock_timestamp() WHERE job_id = $1 AND attempt = $2",
                     job.id, job.attempt)


def _log_span(line: str) -> None:
    # One write of one short line with O_APPEND: lines from every daemon never interleave.
    fd = os.open(os.environ["JOBENGINE_TEST_SPANS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


async def nap(job: Job) -> None:
    """Sleep payload["sleep"] seconds (payload["then"] on later attempts, if given), logging
    start and end (or stop) with `time.time()` to the file JOBENGINE_TEST_SPANS:
    `start|end|stopped job attempt pid time` (one host, one clock; a file because a handler
    cut off from the database must still log when it stops)."""
    _log_span(f"start {job.id} {job.attempt} {os.getpid()} {time.time():.6f}\n")
    ended = "stopped"
    sleep = job.payload.get("sleep", 0) if job.attempt == 1 else job.payload.get(
        "then", job.payload.get("sleep", 0))
    try:
        await anyio.sleep(float(sleep))
        ended = "end"
    finally:
        _log_span(f"{ended} {job.id} {job.attempt} {os.getpid()} {time.time():.6f}\n")


async def egress(job: Job) -> str:
    """Try to reach the address in the payload (tests run this only where it cannot leave)."""
    import socket

    host, port = job.payload["host"], int(job.payload["port"])
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:  # a swallowed network error must still fail the attempt
        return f"connect failed: {exc}"
    return "connected"


async def connect_anyio(job: Job) -> str:
    """Connect with `anyio.connect_tcp` (under uvloop, libuv fires no audit event)."""
    stream = await anyio.connect_tcp(job.payload["host"], int(job.payload["port"]))
    await stream.aclose()
    return "connected"


def connect_in_child(job: Job) -> str:
    """A sync handler whose child process connects."""
    subprocess.run([sys.executable, "-c", CONNECT_SCRIPT, job.payload["host"],
                    str(job.payload["port"])], check=True, timeout=30, capture_output=True)
    return "connected"


async def connect_in_child_async(job: Job) -> str:
    """An async handler whose child process connects."""
    await anyio.run_process([sys.executable, "-c", CONNECT_SCRIPT, job.payload["host"],
                             str(job.payload["port"])], check=True)
    return "connected"


async def sleep_with_child(job: Job) -> None:
    """Start `sleep` as a child, record its pid, ours and our parent's, then sleep."""
    child = await anyio.open_process(["sleep", "600"])
    db = await _db()
    await db.executemany(
        "INSERT INTO test_processes (job_id, role, pid) VALUES ($1, $2, $3)",
        [(job.id, "handler", os.getpid()), (job.id, "child", child.pid),
         (job.id, "parent", os.getppid())])
    await anyio.sleep(float(job.payload.get("sleep", 600)))


def fail(job: Job) -> None:
    """Raise ValueError with payload["message"]."""
    raise ValueError(job.payload.get("message", "boom"))


def unserialisable(job: Job) -> object:
    """Return something JSON cannot hold."""
    return object()


async def connect_swallowed(job: Job) -> str:
    """Connect, and swallow whatever that raises (sealed mode fails the attempt anyway)."""
    try:
        return await connect_anyio(job)
    except Exception as exc:
        return f"swallowed {type(exc).__name__}"


def connect_via_setns(job: Job) -> str:
    """A sync handler whose child re-enters payload["netns"] (setns, needs root) and connects."""
    subprocess.run(["nsenter", f"--net={job.payload['netns']}", sys.executable, "-c",
                    CONNECT_SCRIPT, job.payload["host"], str(job.payload["port"])],
                   check=True, timeout=30, capture_output=True)
    return "connected"
