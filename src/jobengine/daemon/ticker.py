"""Periodic jobs in the daemon: each due tick of each schedule becomes one job.

Every daemon runs a ticker; the database makes sure a tick creates one job
however many ask (`schedule_tick_v1`: the schedule's row moves its
`last_tick` once, and the job's idempotency key is the tick's). The ticker
sleeps until the next tick of any schedule, by the database's clock, and is
woken when a schedule changes (`*:schedules` on `jobengine_wake`). While no
daemon runs, ticks are missed; the first daemon back creates one job, for
the latest of them, and its timeline says how many were missed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import anyio
import structlog
from anyio.abc import TaskStatus
from cronsim import CronSimError

from jobengine.daemon.testsignals import DaemonSignals
from jobengine.domain.errors import InvalidSchedule
from jobengine.domain.schedules import Schedule, ScheduleSpec, due_tick, ticks_after
from jobengine.notifications import Signal
from jobengine.store import TRANSIENT, SchedulingStore

log = structlog.get_logger("jobengine.ticker")


class Ticker:
    """Creates the job of each due tick, and sleeps until the next one."""

    def __init__(
        self,
        store: SchedulingStore,
        configured: Sequence[ScheduleSpec] = (),
        *,
        max_sleep: float = 60.0,
        signals: DaemonSignals | None = None,
    ) -> None:
        self._store = store
        self._configured = list(configured)
        self._max_sleep = max_sleep
        self._signals = signals or DaemonSignals()
        self._kick = Signal()
        self._broken: set[tuple[str, str]] = set()

    def wake(self) -> None:
        """A schedule changed: look again now."""
        self._kick.set()

    async def upsert_configured(self) -> None:
        """Write the config's schedules (a paused one stays paused)."""
        for spec in self._configured:
            if await self._store.upsert_schedule(spec, keep_enabled="enabled" not in _given(spec)):
                log.info("schedule.upserted", schedule=spec.name)

    async def run_once(self) -> float:
        """Create the jobs of every due tick; seconds until the next tick (at most `max_sleep`)."""
        schedules, now = await self._store.schedules()
        next_at: datetime | None = None
        for schedule in schedules:
            if not schedule.enabled:
                continue
            try:
                due = due_tick(schedule, now)
                if due is not None:
                    await self._tick(schedule, *due)
                upcoming = next(ticks_after(schedule, max(now, due[0]) if due else now))
            except (CronSimError, InvalidSchedule, ValueError, OverflowError) as exc:
                self._report_broken(schedule, exc)
                continue
            next_at = upcoming if next_at is None else min(next_at, upcoming)
        if next_at is None:
            return self._max_sleep
        return min(self._max_sleep, max(0.0, (next_at - now).total_seconds()))

    async def _tick(self, schedule: Schedule, tick: datetime, missed: int) -> None:
        job_id = await self._store.tick(schedule.name, tick, missed)
        if job_id is None:
            return  # another daemon was first
        log.info("schedule.ticked", schedule=schedule.name, tick=tick.isoformat(), job_id=job_id,
                 missed=missed)
        self._signals.ticked.signal((schedule.name, job_id))

    def _report_broken(self, schedule: Schedule, exc: Exception) -> None:
        # Once per schedule and problem: the database accepted something the
        # cron library cannot run (it checks the same rules, so this is rare).
        key = (schedule.name, str(exc))
        if key not in self._broken:
            self._broken.add(key)
            log.error("schedule.broken", schedule=schedule.name, timing=schedule.timing,
                      error=str(exc))

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Upsert the config's schedules, then tick until cancelled."""
        try:
            await self.upsert_configured()
        except TRANSIENT as exc:
            log.warning("schedule.upsert_failed", error=repr(exc))
        task_status.started()
        while True:
            try:
                delay = await self.run_once()
            except TRANSIENT as exc:
                log.warning("ticker.pass_failed", error=repr(exc))
                delay = 1.0
            # A few ms past the tick, so the database's clock has reached it too.
            await self._kick.wait(delay + 0.005 if delay else 0.0)


def _given(spec: ScheduleSpec) -> set[str]:
    """The fields a spec sets to something else than the default."""
    defaults = ScheduleSpec(name=spec.name, kind=spec.kind)
    return {f for f in ScheduleSpec.__struct_fields__ if getattr(spec, f) != getattr(defaults, f)}


__all__ = ["Ticker"]
