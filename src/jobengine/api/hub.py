"""One LISTEN connection for the API, fanned out to every event-stream client.

A notification on `jobengine_events` only *wakes* the streams: they read
what to send through the store's gap-free `events_after`, so a notification
that is lost (a reconnect, a full queue, a late commit behind an older
transaction) costs at most one poll interval, never an event. The hub
reconnects with backoff when its connection drops, and says whether it is
connected for `/readyz`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import anyio
import asyncpg
import structlog
from anyio.abc import TaskStatus

#: The channel every status change is announced on (see the contract).
EVENTS_CHANNEL = "jobengine_events"

_log = structlog.get_logger("jobengine.api")


class Waker:
    """What one stream waits on: set by the hub on every notification."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def wake(self) -> None:
        """Wake the stream (idempotent until it next waits)."""
        self._event.set()

    async def wait(self, seconds: float) -> bool:
        """Wait for a wake-up for at most `seconds`; True if woken."""
        woken = False
        with anyio.move_on_after(seconds):
            await self._event.wait()
            woken = True
        if self._event.is_set():
            self._event = anyio.Event()
            woken = True
        return woken


class EventHub:
    """Holds the API's LISTEN connection (taken from the pool) and wakes subscribers."""

    def __init__(
        self, pool: asyncpg.Pool, *, health_interval: float = 10.0, max_backoff: float = 5.0
    ) -> None:
        self._pool = pool
        self._wakers: set[Waker] = set()
        self._connected = False
        self._health_interval = health_interval
        self._max_backoff = max_backoff

    @property
    def connected(self) -> bool:
        """True while the LISTEN connection is up."""
        return self._connected

    @contextmanager
    def subscribe(self) -> Iterator[Waker]:
        """A `Waker` that is woken on every notification while the block runs."""
        waker = Waker()
        self._wakers.add(waker)
        try:
            yield waker
        finally:
            self._wakers.discard(waker)

    def wake_all(self) -> None:
        """Wake every subscriber (also used when the connection changes)."""
        for waker in list(self._wakers):
            waker.wake()

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self.wake_all()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled, reconnecting with backoff.

        Reports started after the first attempt to connect, whether it worked
        or not (`connected` tells which), so a down database never blocks start-up.
        """
        waiting = [task_status]

        def signal_started() -> None:
            if waiting:
                waiting.pop().started()

        failures = 0
        while True:
            try:
                await self._listen_once(signal_started)
                failures = 0
            except Exception as exc:  # whatever broke the connection, listen again
                failures += 1
                _log.warning("api.listener_lost", error=str(exc) or type(exc).__name__,
                             failures=failures)
            signal_started()
            self.wake_all()  # let the streams poll while the hub is away
            await anyio.sleep(min(self._max_backoff, 0.1 * math.pow(2, min(failures, 10))))

    async def _listen_once(self, signal_started: Callable[[], None]) -> None:
        lost = anyio.Event()
        with anyio.fail_after(10):
            conn: asyncpg.Connection = await self._pool.acquire()
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(EVENTS_CHANNEL, self._on_notify)
            self._connected = True
            self.wake_all()  # whatever committed while the hub was not listening
            signal_started()
            while not lost.is_set():
                with anyio.move_on_after(self._health_interval):
                    await lost.wait()
                if not lost.is_set():
                    with anyio.fail_after(self._health_interval):
                        await conn.execute("SELECT 1")
        finally:
            self._connected = False
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(5) as slow:
                    await self._give_back(conn)
                if slow.cancelled_caught:  # never keep the pool waiting on this one
                    conn.terminate()
                    with suppress(Exception):
                        await self._pool.release(conn)

    async def _give_back(self, conn: asyncpg.Connection) -> None:
        try:
            if not conn.is_closed():
                await conn.remove_listener(EVENTS_CHANNEL, self._on_notify)
        except Exception:
            # Broken, or interrupted mid-query: not fit for the pool any more.
            conn.terminate()
        with suppress(Exception):
            await self._pool.release(conn)
