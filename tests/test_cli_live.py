"""The long-running verbs as processes: `jobengine watch` and `jobengine api`, stopped by signals."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import asyncpg
import httpx
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from jobengine.domain import JobSpec
from jobengine.store import JobStore
from tests.test_cli import JOBENGINE, clean_env

pytestmark = pytest.mark.anyio


class Lines:
    """Reads a process's output line by line, with a deadline per line."""

    def __init__(self, stream: anyio.abc.ByteReceiveStream) -> None:
        self._buffer = BufferedByteReceiveStream(stream)

    async def next(self, within: float = 20.0) -> str:
        with anyio.fail_after(within):
            return (await self._buffer.receive_until(b"\n", 1 << 20)).decode()

    async def rest(self) -> str:
        """Everything left once the process has closed its end."""
        chunks = [self._buffer.buffer]
        with anyio.fail_after(10):
            try:
                while True:
                    chunks.append(await self._buffer.receive())
            except anyio.EndOfStream:
                pass
        return b"".join(chunks).decode()

    async def until(self, fragment: str, within: float = 20.0) -> list[str]:
        """Lines up to and including the first one holding `fragment`."""
        seen: list[str] = []
        with anyio.fail_after(within):
            while not seen or fragment not in seen[-1]:
                seen.append(await self.next(within))
        return seen


@asynccontextmanager
async def running(*args: str) -> AsyncIterator[Process]:
    async with await anyio.open_process([*JOBENGINE, *args], env=clean_env()) as process:
        try:
            yield process
        finally:
            if process.returncode is None:
                process.kill()


async def stop(process: Process, signum: signal.Signals) -> int:
    process.send_signal(signum)
    with anyio.fail_after(20):
        return await process.wait()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_watch_prints_one_line_per_transition_and_exits_0_on_signal(
    db_dsn: str, pool: asyncpg.Pool, signum: signal.Signals
) -> None:
    store = JobStore(pool)
    async with running("watch", "--kind", "email", "--dsn", db_dsn) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        stderr = Lines(process.stderr)
        assert "watching job transitions" in await stderr.next()
        out = Lines(process.stdout)
        other, _ = await store.insert(JobSpec(kind="report"))  # filtered out
        job, _ = await store.insert(JobSpec(kind="email"))
        await store.cancel(other.id)
        await store.cancel(job.id)
        created = await out.next()
        cancelled = await out.next()
        assert f"job {job.id}" in created
        assert "job.created" in created
        assert "-> pending" in created
        assert f"job {job.id}" in cancelled
        assert "pending -> cancelled" in cancelled
        assert "(cancelled_by_user)" in cancelled
        assert await stop(process, signum) == 0
        assert "report" not in await out.rest()


async def test_watch_json_lines_follow_a_queue(db_dsn: str, pool: asyncpg.Pool) -> None:
    store = JobStore(pool)
    async with running("watch", "--json", "--queue", "fast", "--dsn", db_dsn) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        await Lines(process.stderr).next()
        await store.insert(JobSpec(kind="email", queue="slow"))
        job, _ = await store.insert(JobSpec(kind="email", queue="fast"))
        envelope = json.loads(await Lines(process.stdout).next())
        assert (envelope["job_id"], envelope["queue"], envelope["to_status"]) == (
            job.id, "fast", "pending")
        assert envelope["event_type"] == "job.created"
        assert await stop(process, signal.SIGTERM) == 0


async def test_watch_survives_a_lost_connection(db_dsn: str, pool: asyncpg.Pool) -> None:
    store = JobStore(pool)
    async with running("watch", "--dsn", db_dsn) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        stderr = Lines(process.stderr)
        await stderr.next()
        await pool.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
        )
        assert "reconnecting" in await stderr.next()

        async def relisten() -> bool:
            return bool(await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'LISTEN%'"))

        from tests.dbutil import wait_for

        await wait_for(relisten, within=15, message="watch to listen again")
        job, _ = await store.insert(JobSpec(kind="email"))
        assert f"job {job.id}" in await Lines(process.stdout).next()
        assert await stop(process, signal.SIGINT) == 0


async def test_api_serves_until_sigterm_and_writes_as_actor_api(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    async with running("api", "--listen", "127.0.0.1:0", "--dsn", db_dsn) as process:
        assert process.stderr is not None
        stderr = Lines(process.stderr)
        [*_, listening] = await stderr.until("api.listening")
        url = json.loads(listening)["url"]
        assert url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            assert (await client.get("/readyz")).json()["ready"] is True
            created = await client.post("/v1/jobs", json={"kind": "email"})
            assert created.status_code == 201
            job_id = created.json()["id"]
            cancelled = await client.post(f"/v1/jobs/{job_id}/cancel")
            assert cancelled.json()["status"] == "cancelled"
        actors = [r["actor"] for r in await pool.fetch(
            "SELECT actor FROM jobengine.job_history WHERE job_id = $1 ORDER BY id", job_id)]
        assert actors == ["api", "api"]
        assert await stop(process, signal.SIGTERM) == 0
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(f"{url}/healthz")


async def test_api_refuses_a_bad_listen_address(db_dsn: str) -> None:
    result = await anyio.run_process(
        [*JOBENGINE, "api", "--listen", "nowhere", "--dsn", db_dsn], check=False, env=clean_env()
    )
    assert result.returncode == 1
    assert result.stderr.decode().startswith("jobengine: error: http.listen must be HOST:PORT")


async def test_watch_prints_nothing_that_committed_before_it_started(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    store = JobStore(pool)
    # A transaction open while watch starts holds the cluster's xmin back, so
    # watch's cursor starts before the job committed below: once that
    # transaction ends, the cursor reaches the job, and must not print it.
    async with pool.acquire() as holder:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT pg_current_xact_id()")
        before, _ = await store.insert(JobSpec(kind="email"))
        async with running("watch", "--json", "--dsn", db_dsn) as process:
            assert process.stdout is not None
            assert process.stderr is not None
            await Lines(process.stderr).next()
            await tx.commit()
            await anyio.sleep(2.5)  # two rounds of watch's cursor (every second) pass over it
            after, _ = await store.insert(JobSpec(kind="email"))
            first = json.loads(await Lines(process.stdout).next())
            assert first["job_id"] == after.id != before.id
            assert await stop(process, signal.SIGTERM) == 0
