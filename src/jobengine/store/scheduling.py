"""Scheduling's tables: paused queues, concurrency and rate limits, periodic jobs.

The claim (`claim_v1`) enforces all of it inside the database; this module
reads and writes the tables for operators (CLI, REST) and runs a schedule's
due tick (`schedule_tick_v1`) for the daemon's ticker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from jobengine.domain.schedules import Schedule, ScheduleSpec
from jobengine.store.executor import Executor, fetch_on


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """One queue as operators see it."""

    name: str
    paused: bool
    counts: dict[str, int] = field(default_factory=dict)
    #: when the oldest due job still waiting became due (None: none waiting)
    oldest_waiting: datetime | None = None
    now: datetime | None = None
    changed_by: str | None = None
    changed_at: datetime | None = None
    #: completed, failed and cancelled counts are estimates (a sample of a big table)
    estimated: bool = False

    @property
    def oldest_waiting_seconds(self) -> float | None:
        """How long the oldest due job has waited, by the database's clock."""
        if self.oldest_waiting is None or self.now is None:
            return None
        return max(0.0, (self.now - self.oldest_waiting).total_seconds())


@dataclass(frozen=True, slots=True)
class LimitInfo:
    """A limit key: its concurrency and/or rate limit, and what it holds now."""

    key: str
    max_running: int | None
    max_starts: int | None
    per: timedelta | None
    running: int
    recent_starts: int
    #: due jobs of the key still waiting
    waiting: int

    @property
    def held(self) -> int:
        """Due jobs waiting because the key's limit is full (0 while it has room)."""
        full = (self.max_running is not None and self.running >= self.max_running) or (
            self.max_starts is not None and self.recent_starts >= self.max_starts)
        return self.waiting if full else 0


@dataclass(frozen=True, slots=True)
class Held:
    """What holds a daemon's waiting jobs back (see `held_v2`)."""

    #: due jobs wait on a full concurrency limit: they start when a job of the key ends
    concurrency: bool = False
    #: the earliest time a rate-limited key with due jobs lets a start through (in
    #: the past: a window opened after the claim that left them looked: claim again)
    rate_next_at: datetime | None = None
    #: whether any limit is set at all
    limits_exist: bool = False


def schedule_from_row(row: asyncpg.Record) -> Schedule:
    """A `Schedule` from a `jobengine.schedules` row."""
    values = {k: v for k, v in row.items() if k in Schedule.__struct_fields__}
    return msgspec.convert(values, Schedule, from_attributes=False, strict=False)


class SchedulingStore:
    """Queues, limits and schedules on one pool or connection."""

    def __init__(self, db: Executor) -> None:
        self.db = db

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return await fetch_on(self.db, query, *args)

    # -- queues ---------------------------------------------------------------

    async def queues(self) -> list[QueueInfo]:
        """Every queue with jobs or a pause record: counts by status, paused, oldest waiting.

        On a big table the settled statuses' counts are estimates (`estimated`).
        """
        return [
            QueueInfo(name=r["name"], paused=r["paused"], counts=dict(r["counts"]),
                      oldest_waiting=r["oldest_waiting"], now=r["now"],
                      changed_by=r["changed_by"], changed_at=r["changed_at"],
                      estimated=r["estimated"])
            for r in await self._fetch("queue_overview")
        ]

    async def paused(self) -> list[str]:
        """The names of the paused queues."""
        return [r["name"] for r in await self._fetch("queue_paused_names")]

    async def set_paused(self, name: str, paused: bool) -> None:
        """Pause (no new claims; running jobs finish) or resume a queue."""
        await self._fetch("queue_set_paused", name, paused)

    # -- limits ---------------------------------------------------------------

    async def limits(self) -> list[LimitInfo]:
        """Every limit key with its limits and what it holds now."""
        return [
            LimitInfo(key=r["key"], max_running=r["max_running"], max_starts=r["max_starts"],
                      per=r["per"], running=r["running"], recent_starts=r["recent_starts"],
                      waiting=r["waiting"])
            for r in await self._fetch("limit_list")
        ]

    async def set_concurrency_limit(self, key: str, max_running: int) -> None:
        """At most `max_running` jobs with this `limit_key` running at once."""
        await self._fetch("limit_set_concurrency", key, max_running)

    async def set_rate_limit(self, key: str, max_starts: int, per: timedelta) -> None:
        """At most `max_starts` starts of this key's jobs in any window of length `per`."""
        await self._fetch("limit_set_rate", key, max_starts, per)

    async def remove_limits(self, key: str, *, concurrency: bool = True, rate: bool = True) -> int:
        """Remove the key's limits (both, or the one asked for); how many were removed."""
        removed = 0
        if concurrency:
            removed += len(await self._fetch("limit_remove_concurrency", key))
        if rate:
            removed += len(await self._fetch("limit_remove_rate", key))
        return removed

    async def held(self, queues: Sequence[str], *, since: datetime | None = None) -> Held:
        """What holds the due jobs of these queues back.

        `since` is the database's time of the claim that left them waiting: a
        rate-limit window that opened after it is reported even when it is
        already open (the claim may have seen it full). Without it, only
        windows still full are."""
        rows = await self._fetch("limit_held", list(queues), since)
        if not rows:
            return Held()
        row = rows[0]
        return Held(concurrency=bool(row["concurrency_held"]), rate_next_at=row["rate_next_at"],
                    limits_exist=bool(row["limits_exist"]))

    # -- schedules -------------------------------------------------------------

    async def schedules(self) -> tuple[list[Schedule], datetime]:
        """Every schedule, and the database's time now."""
        rows = await self._fetch("schedule_list")
        now: datetime = rows[0]["now"] if rows else await self._now()
        return [schedule_from_row(r) for r in rows], now

    async def schedule(self, name: str) -> Schedule | None:
        """One schedule by name."""
        rows = await self._fetch("schedule_get", name)
        return schedule_from_row(rows[0]) if rows else None

    async def upsert_schedule(self, spec: ScheduleSpec, *, keep_enabled: bool = False) -> bool:
        """Create or redefine a schedule; whether anything changed.

        With `keep_enabled`, an existing schedule keeps its paused/enabled
        state (a daemon upserting its config must not resume what an
        operator paused).
        """
        rows = await self._fetch(
            "schedule_upsert", spec.name, spec.cron, spec.every, spec.kind, spec.queue,
            spec.payload, spec.priority, spec.limit_key, spec.timezone,
            None if keep_enabled else spec.enabled)
        return bool(rows)

    async def remove_schedule(self, name: str) -> bool:
        """Remove a schedule (its jobs stay); whether it existed."""
        return bool(await self._fetch("schedule_remove", name))

    async def set_schedule_enabled(self, name: str, enabled: bool) -> bool:
        """Pause or resume a schedule; whether it exists."""
        return bool(await self._fetch("schedule_set_enabled", name, enabled))

    async def tick(self, name: str, tick: datetime, missed: int) -> int | None:
        """Create the job of a due tick, once however many daemons ask: its id, or None."""
        rows = await self._fetch("schedule_tick", name, tick, missed)
        value: int | None = rows[0][0] if rows else None
        return value

    async def _now(self) -> datetime:
        value: datetime = await self.db.fetchval("SELECT statement_timestamp()")
        return value


__all__ = ["Held", "LimitInfo", "QueueInfo", "SchedulingStore", "schedule_from_row"]
