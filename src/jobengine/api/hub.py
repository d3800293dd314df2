"""One LISTEN connection for the API, fanned out to every event-stream client.

A notification on `jobengine_events` only *wakes* the streams: they read
what to send through the store's gap-free `events_after`, so a notification
that is lost (a reconnect, a late commit behind an older transaction) costs
at most one poll interval, never an event. The LISTEN itself is
`jobengine.notifications.Listener` on a connection taken from the API's pool
(reconnect, backoff and health probe included); `connected` is for `/readyz`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import asyncpg
from anyio.abc import TaskStatus

from jobengine.notifications import EVENTS_CHANNEL, Listener, Signal, listen_source
from jobengine.store.pool import Database


class EventHub:
    """Holds the API's LISTEN connection and wakes every subscriber on each notification."""

    def __init__(
        self, pool: asyncpg.Pool, *, health_interval: float = 10.0, max_backoff: float = 5.0,
        database: Database | None = None,
    ) -> None:
        """LISTEN on a connection of `pool`; when `database` says the pool goes through a
        transaction pooler, on its `listen_dsn` instead (none: no LISTEN, streams poll)."""
        self._signals: set[Signal] = set()
        source = listen_source(database, "api") if database and database.pooled else pool.acquire
        self._listener = None if source is None else Listener(
            source, {EVENTS_CHANNEL: self._on_event}, name="api",
            # Whatever committed while the hub was away: let every stream read.
            on_up=lambda _first: self.wake_all(), on_down=self.wake_all,
            backoff_max=max_backoff, probe_interval=health_interval,
            probe_timeout=health_interval,
        )

    @property
    def connected(self) -> bool:
        """True while the LISTEN connection is up (always, when polling by design)."""
        return self._listener is None or self._listener.connected

    @contextmanager
    def subscribe(self) -> Iterator[Signal]:
        """A `Signal` that is set on every notification while the block runs."""
        signal = Signal()
        self._signals.add(signal)
        try:
            yield signal
        finally:
            self._signals.discard(signal)

    def wake_all(self) -> None:
        """Wake every subscriber (also used when the connection changes)."""
        for signal in list(self._signals):
            signal.set()

    def _on_event(self, _payload: str) -> None:
        self.wake_all()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled (started after the first attempt, connected or not)."""
        if self._listener is None:
            task_status.started()
            await anyio.sleep_forever()
        else:
            await self._listener.run(task_status=task_status)
