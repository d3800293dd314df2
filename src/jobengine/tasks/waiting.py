"""`App.wait`: one LISTEN connection per app, shared by every waiting call.

A waiter registers its job, makes sure the LISTEN is in place, and only then
reads the job: a transition committed after the read sends a notification
the waiter hears, so none is missed. Each notification of a job settling
(completed, failed, cancelled) wakes that job's waiters, which read the job
again (a failure with a retry left is followed, in the same transaction, by
`scheduled`: the read tells). When the connection is lost every waiter is
woken to read again, and the next one to wait opens a new connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import asyncpg
import msgspec

from jobengine.domain.status import SETTLED
from jobengine.notifications import EVENTS_CHANNEL, Signal


class _Transition(msgspec.Struct):
    """The part of an EventEnvelope a waiter needs."""

    job_id: int
    to_status: str | None = None


_decode = msgspec.json.Decoder(_Transition).decode
_SETTLED = frozenset(s.value for s in SETTLED)


class Waiters:
    """Signals per job id, set by `jobengine_events` notifications."""

    def __init__(self, connect: Callable[[], Awaitable[asyncpg.Connection]]) -> None:
        self._connect = connect
        self._conn: asyncpg.Connection | None = None
        self._lock = anyio.Lock()
        self._waiting: dict[int, set[Signal]] = {}

    @asynccontextmanager
    async def watching(self, job_id: int) -> AsyncIterator[Signal]:
        """A signal set whenever `job_id` may have settled, the LISTEN in place."""
        signal = Signal()
        self._waiting.setdefault(job_id, set()).add(signal)
        try:
            await self._ensure()
            yield signal
        finally:
            waiting = self._waiting.get(job_id)
            if waiting is not None:
                waiting.discard(signal)
                if not waiting:
                    del self._waiting[job_id]

    async def ensure(self) -> None:
        """Open the LISTEN connection again if it was lost."""
        await self._ensure()

    async def _ensure(self) -> None:
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return
            conn = await self._connect()
            conn.add_termination_listener(self._lost)
            await conn.add_listener(EVENTS_CHANNEL, self._on_event)
            self._conn = conn

    def _on_event(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            t = _decode(payload)
        except msgspec.DecodeError:
            return  # not an envelope: nothing to wake
        if t.to_status in _SETTLED:
            for signal in self._waiting.get(t.job_id, ()):
                signal.set()

    def _lost(self, _conn: Any) -> None:
        self._conn = None
        for signals in self._waiting.values():
            for signal in signals:
                signal.set()

    async def aclose(self) -> None:
        """Close the LISTEN connection."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with anyio.CancelScope(shield=True):
                await conn.close()
