"""Notifications: the channels, what their payloads say, and one LISTEN loop for everyone.

The database's triggers send, in the transaction that makes a change:
- `jobengine_events`: one EventEnvelope (JSON) per transition or note;
- `jobengine_wake`: `<queue>:<what>` per statement: `new` (jobs inserted),
  `ready` (jobs became scheduled), `done` (jobs finished, which may free
  their dependents);
- `jobengine_cancel`: comma-separated ids of running jobs just cancelled.

`Listener` keeps one connection LISTENing on any of them, whoever needs it
(the daemon, the API's event hub, `jobengine watch`): it reconnects with
backoff, notices a connection whose server session died without a word (a
health probe on the connection itself, not only the socket's fate:
pg-boss#850), and tells its owner each time it is up again, since whatever
was sent while it was away is lost: owners catch up by reading, never by
waiting for a notification.

`Signal` is the one "wake me when something happened" primitive: set from
anywhere in the event loop, waited on by one consumer, never losing a set
that came between two waits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import anyio
import asyncpg
import structlog
from anyio.abc import TaskStatus

from jobengine.store import TRANSIENT
from jobengine.store.pool import Database, connection

#: Every transition (and note), as an EventEnvelope.
EVENTS_CHANNEL = "jobengine_events"
#: Per statement: a queue that may have work (`<queue>:new|ready|done`).
WAKE_CHANNEL = "jobengine_wake"
#: Per statement: ids of running jobs just cancelled (`1,2,3`).
CANCEL_CHANNEL = "jobengine_cancel"

#: Where a listener's connection comes from: an async context manager that
#: yields a connection and takes it back (a pool's `acquire`, or one connection
#: opened and closed).
ConnectionSource = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]



def listen_source(db: Database, actor: str) -> ConnectionSource | None:
    """Where a listener's connections to `db` come from: one direct connection each
    time (`listen_dsn` if set); None behind a transaction pooler without a
    `listen_dsn`, where a LISTEN would hear nothing: the caller polls instead."""
    target = db.listen
    if target is None:
        return None
    return lambda: connection(target, actor)


#: Reports what a listener went through: `report(event, **fields)`.
Reporter = Callable[..., None]

_log = structlog.get_logger("jobengine.notifications")


@dataclass(frozen=True, slots=True)
class Wake:
    """A `jobengine_wake` payload: this queue may have work, for this reason."""

    queue: str
    what: str  # new | ready | done


def parse_wake(payload: str) -> Wake | None:
    """`<queue>:<what>` as a `Wake` (queues may contain ':'; the reason is the last part)."""
    queue, sep, what = payload.rpartition(":")
    return Wake(queue, what) if sep and queue and what else None


def parse_cancel(payload: str) -> list[int]:
    """The job ids of a `jobengine_cancel` payload (anything else in it is ignored)."""
    return [int(part) for part in payload.split(",") if part.strip().isdigit()]


class Signal:
    """A resettable wake-up for one waiter: `set()` any time, `wait()` returns once it was set.

    A `set()` that comes while nobody waits is kept for the next `wait()`;
    each `wait()` consumes what was set before it. (Replacing an
    `anyio.Event` by hand after waiting loses a set that lands between the
    wait and the replacement; this never does.)
    """

    def __init__(self) -> None:
        self._pending = False
        # Made by the waiter (an anyio.Event needs a running event loop, and
        # a Signal may be made before one runs).
        self._event: anyio.Event | None = None

    def set(self) -> None:
        """Wake the waiter (or the next one to wait)."""
        self._pending = True
        if self._event is not None:
            self._event.set()

    def is_set(self) -> bool:
        """Whether a set is waiting to be consumed."""
        return self._pending

    async def wait(self, within: float | None = None) -> bool:
        """Wait until set (at most `within` seconds); True if it was set. Consumes the set."""
        if not self._pending:
            self._event = event = anyio.Event()
            with anyio.move_on_after(math.inf if within is None else within):
                await event.wait()
        woken, self._pending = self._pending, False
        return woken


def structlog_reporter(name: str) -> Reporter:
    """A reporter that logs each event (`listener.connected`, ...) with the listener's name."""

    def report(event: str, **fields: Any) -> None:
        level = "warning" if event in ("listener.lost", "listener.connect_failed") else "info"
        getattr(_log, level)(event, listener=name, **fields)

    return report


class Listener:
    """One connection LISTENing on some channels, kept up for as long as `run` runs.

    `handlers` maps a channel to a callback taking the payload. `on_up(first)`
    is called each time the LISTEN is in place (`first` only the first time):
    the moment to catch up on whatever was sent while it was not.
    """

    def __init__(
        self,
        source: ConnectionSource,
        handlers: Mapping[str, Callable[[str], None]],
        *,
        name: str,
        on_up: Callable[[bool], None] | None = None,
        on_down: Callable[[], None] | None = None,
        report: Reporter | None = None,
        backoff_max: float = 5.0,
        probe_interval: float = 5.0,
        probe_timeout: float = 5.0,
    ) -> None:
        self._source = source
        self._handlers = dict(handlers)
        self._name = name
        self._on_up = on_up
        self._on_down = on_down
        self._report = report or structlog_reporter(name)
        self._backoff_max = backoff_max
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._conn: asyncpg.Connection | None = None
        self._callbacks: dict[str, Callable[[Any, int, str, str], None]] = {}
        self.connected = False
        self.reconnects = 0

    @property
    def backend_pid(self) -> int | None:
        """The server process of the LISTEN connection (for tests and diagnostics)."""
        return self._conn.get_server_pid() if self._conn is not None else None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled, reconnecting whenever the connection is lost.

        Signals readiness once the first LISTEN is in place, or after the
        first failed attempt (the owner then polls until it is up).
        """
        started = False
        failures = 0
        while True:
            try:
                async with self._source() as conn:
                    await self._listen_on(conn, first=not started)
                    if not started:
                        task_status.started()
                        started = True
                    failures = 0
                    await self._watch(conn)
            except TRANSIENT as exc:
                failures += 1
                self._report("listener.connect_failed" if not self.connected else "listener.lost",
                             error=str(exc) or type(exc).__name__, failures=failures)
            finally:
                if self.connected and self._on_down is not None:
                    self._on_down()
                self.connected = False
                self._conn = None
            if not started:
                task_status.started()
                started = True
            await anyio.sleep(min(self._backoff_max, 0.1 * 2 ** min(failures, 10)))

    async def _listen_on(self, conn: asyncpg.Connection, *, first: bool) -> None:
        for channel, handler in self._handlers.items():
            callback = self._callbacks.setdefault(channel, _callback(handler))
            await conn.add_listener(channel, callback)
        self._conn = conn
        self.connected = True
        if first:
            self._report("listener.connected", channels=sorted(self._handlers))
        else:
            self.reconnects += 1
            self._report("listener.reconnected", reconnects=self.reconnects)
        if self._on_up is not None:
            self._on_up(first)

    async def _watch(self, conn: asyncpg.Connection) -> None:
        """Return when the connection is gone; raise when its probe fails."""
        lost = anyio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        healthy = False
        try:
            while not lost.is_set():
                with anyio.move_on_after(self._probe_interval):
                    await lost.wait()
                if not lost.is_set():
                    # A server session that died without closing the socket (a
                    # failover, a firewall) answers no query: that is the probe.
                    with anyio.fail_after(self._probe_timeout):
                        await conn.execute("SELECT 1")
            self._report("listener.lost", error="the connection was closed")
            healthy = True
        finally:
            with anyio.CancelScope(shield=True):
                await self._let_go(conn, healthy=healthy or not lost.is_set())

    async def _let_go(self, conn: asyncpg.Connection, *, healthy: bool) -> None:
        """Stop listening on `conn` before its source takes it back (a pool may reuse it)."""
        if conn.is_closed():
            return
        try:
            with anyio.fail_after(2):
                for channel, callback in self._callbacks.items():
                    await conn.remove_listener(channel, callback)
        except Exception:
            # Broken, or too slow to answer: not fit for reuse.
            conn.terminate()


def _callback(handler: Callable[[str], None]) -> Callable[[Any, int, str, str], None]:
    def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        handler(payload)

    return on_notify
