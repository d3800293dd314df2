"""`GET /v1/events`: JSON pages and the server-sent event stream, over a real uvicorn server.

The stream must replay from a cursor, then follow live commits, and a client
that reconnects with `Last-Event-ID` must get exactly what it missed.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import asyncpg
import httpx
import pytest

from jobengine.api.app import create_app
from jobengine.api.config import HttpSettings
from jobengine.api.server import serve
from jobengine.domain import JobSpec
from jobengine.store import JobStore
from tests.apiutil import app_client, live_server
from tests.dbutil import wait_for

pytestmark = pytest.mark.anyio

SSE = {"accept": "text/event-stream"}


class SseReader:
    """Reads one server-sent event (or comment) at a time from a streaming response."""

    def __init__(self, response: httpx.Response) -> None:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        self._lines = response.aiter_lines()

    async def next(self, within: float = 20.0) -> dict[str, Any]:
        """The next block: {"id", "data"} for an event, {"comment"} or {"retry"} otherwise."""
        block: dict[str, Any] = {}
        with anyio.fail_after(within):
            async for line in self._lines:
                if line == "":
                    if block:
                        return block
                    continue
                if line.startswith(":"):
                    block["comment"] = line[1:].strip()
                else:
                    field, _, value = line.partition(": ")
                    block[field] = json.loads(value) if field == "data" else value
        raise AssertionError("the stream ended")

    async def until_end(self) -> None:
        """Read until the server ends the stream."""
        async for _ in self._lines:
            pass

    async def events(self, n: int) -> list[dict[str, Any]]:
        """The next `n` events, skipping comments and retry hints."""
        got: list[dict[str, Any]] = []
        while len(got) < n:
            block = await self.next()
            if "data" in block:
                assert block["id"] == block["data"]["cursor"]
                got.append(block)
        return got


@pytest.fixture
def store(pool: asyncpg.Pool) -> JobStore:
    return JobStore(pool)


async def new_jobs(store: JobStore, n: int, kind: str = "email") -> list[int]:
    return [(await store.insert(JobSpec(kind=kind)))[0].id for _ in range(n)]


async def all_event_ids(pool: asyncpg.Pool) -> list[int]:
    return [r["id"] for r in await pool.fetch(
        "SELECT id FROM jobengine.timeline_events ORDER BY tx_id, id")]


async def test_json_pages_follow_the_cursor_to_the_end(
    pool: asyncpg.Pool, store: JobStore
) -> None:
    ids = await new_jobs(store, 5)
    await store.cancel(ids[0])
    await store.cancel(ids[3])
    seen: list[dict[str, Any]] = []
    async with app_client(pool) as client:

        async def all_visible() -> bool:
            # Events show once every older transaction in the cluster has ended.
            page = (await client.get("/v1/events", params={"limit": 1000})).json()
            return len(page["events"]) == 7

        await wait_for(all_visible, message="the events to become visible")
        cursor = "0-0"
        while True:
            page = (await client.get("/v1/events", params={"after": cursor, "limit": 3})).json()
            seen += page["events"]
            if not page["events"]:
                assert page["next"] == cursor  # an empty page keeps the cursor
                break
            assert page["next"] == page["events"][-1]["cursor"]
            cursor = page["next"]
    assert [e["id"] for e in seen] == await all_event_ids(pool)
    assert [e["event_type"] for e in seen] == ["job.created"] * 5 + ["job.cancelled"] * 2
    assert seen[5]["envelope"]["job_id"] == ids[0]
    assert seen[5]["envelope"]["to_status"] == "cancelled"


async def test_stream_replays_then_follows_and_a_reconnect_misses_nothing(
    pool: asyncpg.Pool, store: JobStore
) -> None:
    await new_jobs(store, 3)
    received: list[dict[str, Any]] = []
    async with live_server(pool) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        async with client.stream("GET", "/v1/events", headers=SSE) as response:
            reader = SseReader(response)
            received += await reader.events(3)  # the replay
            live = await new_jobs(store, 2)
            received += await reader.events(2)  # live, as they commit
            assert [e["data"]["job_id"] for e in received[3:]] == live
        last_id = received[-1]["id"]

        # While nobody listens: more jobs, and a cancellation.
        missed = await new_jobs(store, 2)
        await store.cancel(missed[0])

        headers = {**SSE, "Last-Event-ID": last_id}
        async with client.stream("GET", "/v1/events", headers=headers) as response:
            reader = SseReader(response)
            received += await reader.events(3)  # exactly what was missed
            received += [await _one_live(reader, store)]

    ids = [e["data"]["id"] for e in received]
    assert len(ids) == len(set(ids)), "an event was delivered twice"
    assert ids == await all_event_ids(pool), "an event was missed or out of order"


async def _one_live(reader: SseReader, store: JobStore) -> dict[str, Any]:
    await new_jobs(store, 1)
    [event] = await reader.events(1)
    return event


async def test_stream_waits_for_an_older_open_transaction(
    pool: asyncpg.Pool, store: JobStore
) -> None:
    # A transaction that began earlier but commits later must not be skipped:
    # the stream holds back the younger event until the older one commits.
    async with live_server(pool, poll_interval=0.2) as base, \
            httpx.AsyncClient(base_url=base, timeout=10) as client, \
            client.stream("GET", "/v1/events", headers=SSE) as response:
        reader = SseReader(response)
        async with pool.acquire() as slow:
            tx = slow.transaction()
            await tx.start()
            await slow.execute("INSERT INTO jobengine.jobs (kind) VALUES ('slow')")
            await new_jobs(store, 1, kind="fast")  # commits (and notifies) first
            with anyio.move_on_after(0.6):  # a few polls: nothing may come out yet
                block = await reader.next()
                assert "data" not in block, f"event sent past an open transaction: {block}"
            await tx.commit()
        events = await reader.events(2)
    assert [e["data"]["envelope"]["kind"] for e in events] == ["slow", "fast"]


async def test_after_parameter_starts_the_stream_and_last_event_id_wins(
    pool: asyncpg.Pool, store: JobStore
) -> None:
    await new_jobs(store, 4)
    async with app_client(pool) as client:

        async def four_events() -> list[str]:
            page = (await client.get("/v1/events", params={"limit": 4})).json()
            return [e["cursor"] for e in page["events"]] if len(page["events"]) == 4 else []

        cursors = await wait_for(four_events, message="the events to become visible")
    async with live_server(pool) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        async with client.stream("GET", "/v1/events", params={"after": cursors[1]},
                                 headers=SSE) as response:
            assert [e["id"] for e in await SseReader(response).events(2)] == cursors[2:]
        headers = {**SSE, "Last-Event-ID": cursors[2]}
        async with client.stream("GET", "/v1/events", params={"after": cursors[0]},
                                 headers=headers) as response:
            assert [e["id"] for e in await SseReader(response).events(1)] == cursors[3:]


async def test_idle_stream_sends_keepalives(pool: asyncpg.Pool) -> None:
    async with live_server(pool, keepalive=0.2) as base, \
            httpx.AsyncClient(base_url=base, timeout=10) as client, \
            client.stream("GET", "/v1/events", headers=SSE) as response:
        reader = SseReader(response)
        assert await reader.next() == {"retry": "1000"}
        assert await reader.next(within=5) == {"comment": "keepalive"}


async def test_server_stops_promptly_with_a_stream_open(pool: asyncpg.Pool) -> None:
    app = create_app(pool, HttpSettings())
    server_scope = anyio.CancelScope()
    stopped = anyio.Event()

    async def run_server(*, task_status: Any) -> None:
        with server_scope:
            await serve(app, "127.0.0.1", 0, task_status=task_status)
        stopped.set()

    async with anyio.create_task_group() as tg:
        _host, port = await tg.start(run_server)
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as client, \
                client.stream("GET", "/v1/events", headers=SSE) as response:
            reader = SseReader(response)
            await reader.next()
            server_scope.cancel()
            with anyio.fail_after(5):
                # The stream ends cleanly instead of holding the shutdown up.
                await reader.until_end()
                await stopped.wait()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(f"{base}/healthz")


async def test_serve_reports_an_address_it_cannot_bind(pool: asyncpg.Pool) -> None:
    from jobengine.domain import ConfigError

    app = create_app(pool, HttpSettings())
    async with anyio.create_task_group() as tg:
        _host, port = await tg.start(serve, app, "127.0.0.1", 0)
        with pytest.raises(ConfigError, match="cannot listen"):
            await serve(app, "127.0.0.1", port)
        tg.cancel_scope.cancel()
