"""The listener: one dedicated connection LISTENing for work and cancellations.

Channels (both sent once per statement by the database's triggers):
- `jobengine_wake`: payload = "<queue>:<what>": `new` (jobs inserted),
  `ready` (jobs became scheduled), `done` (jobs finished, which may free
  their dependents);
- `jobengine_cancel`: payload = comma-separated ids of running jobs that were
  just cancelled.

NOTIFY is not trusted alone: if the connection drops (a PostgreSQL restart,
`pg_terminate_backend`), the listener reconnects with backoff and LISTENs
again, while the claimer and scheduler keep working on their polling
interval. After a reconnect everyone is woken once, since notifications sent
meanwhile are lost.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import anyio
import asyncpg
import structlog
from anyio.abc import TaskStatus

from jobengine import metrics
from jobengine.store.pool import connect

log = structlog.get_logger("jobengine.listener")

WAKE_CHANNEL = "jobengine_wake"
CANCEL_CHANNEL = "jobengine_cancel"


class Listener:
    """Keeps a LISTEN connection up and turns notifications into callbacks."""

    def __init__(
        self,
        dsn: str,
        actor: str,
        queues: Collection[str],
        *,
        on_wake: Callable[[str], None],
        on_cancel: Callable[[list[int]], None],
        backoff_max: float = 5.0,
        check_interval: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._actor = actor
        self._queues = frozenset(queues)
        self._on_wake = on_wake
        self._on_cancel = on_cancel
        self._backoff_max = backoff_max
        self._check_interval = check_interval
        self._conn: asyncpg.Connection | None = None
        self._lost = anyio.Event()
        self.connected = False
        self.reconnects = 0

    @property
    def backend_pid(self) -> int | None:
        """The server process of the LISTEN connection (for tests and diagnostics)."""
        return self._conn.get_server_pid() if self._conn is not None else None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled, reconnecting whenever the connection drops.

        Signals readiness once the first LISTEN is in place, so that the
        claimer starts only when no notification can be missed.
        """
        started = False
        backoff = 0.1
        try:
            while True:
                try:
                    await self._listen()
                except (OSError, asyncpg.PostgresError, TimeoutError,
                        asyncpg.InterfaceError) as exc:
                    log.warning("listener cannot connect; polling meanwhile",
                                error=str(exc) or type(exc).__name__, retry_in=backoff)
                    if not started:
                        # Start anyway: polling keeps the daemon working.
                        task_status.started()
                        started = True
                    await anyio.sleep(backoff)
                    backoff = min(backoff * 2, self._backoff_max)
                    continue
                if not started:
                    task_status.started()
                    started = True
                else:
                    self.reconnects += 1
                    metrics.LISTENER_RECONNECTS.inc()
                    log.info("listener reconnected")
                    for what in ("new", "ready", "done"):
                        self._on_wake(what)  # whatever was sent meanwhile is lost
                backoff = 0.1
                while not self._lost.is_set():
                    with anyio.move_on_after(self._check_interval):
                        await self._lost.wait()
                    if not self._lost.is_set():
                        await self.check()
                self.connected = False
                log.warning("listener connection lost; reconnecting, polling meanwhile")
                await self._close()
        finally:
            self.connected = False
            with anyio.CancelScope(shield=True):
                await self._close()

    async def _listen(self) -> None:
        self._lost = anyio.Event()
        conn = await connect(self._dsn, self._actor)
        conn.add_termination_listener(self._terminated)
        await conn.add_listener(WAKE_CHANNEL, self._wake)
        await conn.add_listener(CANCEL_CHANNEL, self._cancel)
        self._conn = conn
        self.connected = True

    def _terminated(self, _conn: Any) -> None:
        self._lost.set()

    def _wake(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        queue, _, what = payload.rpartition(":")
        if queue in self._queues:
            self._on_wake(what)

    def _cancel(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        ids = [int(part) for part in payload.split(",") if part.strip().isdigit()]
        if ids:
            self._on_cancel(ids)

    async def check(self) -> None:
        """Notice a dead connection that sent no termination (a half-open socket)."""
        conn = self._conn
        if conn is None or conn.is_closed():
            self._lost.set()
            return
        try:
            with anyio.fail_after(5):
                await conn.execute("SELECT 1")
        except Exception:  # any failure means: reconnect
            self._lost.set()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                with anyio.move_on_after(2):
                    await conn.close()
            except Exception:
                conn.terminate()
