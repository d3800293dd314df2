"""The daemon's maintenance services: lease renewal, the reaper, the scheduler.

Each has one shape (River's maintenance services): a `run_once()` that does
one pass and returns counts (tests call it directly, with an explicit `now`
where time matters), and a `run()` loop around it that logs at info only
when a pass changed something.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import anyio
import structlog
from anyio.abc import TaskStatus

from jobengine import metrics
from jobengine.domain.clock import Clock
from jobengine.domain.retry import RetryPolicy
from jobengine.store import JobStore

log = structlog.get_logger("jobengine.maintenance")

#: Errors a pass survives (a lost connection, a restart, a statement timeout):
#: the loop logs them and tries again on its next tick.
TRANSIENT = (Exception,)


def _now(clock: Clock | None) -> datetime | None:
    # None means "the database's now()": one clock for every daemon.
    return clock.now() if clock is not None else None


@dataclass
class LeasePass:
    """One lease renewal: how many were renewed, which were lost."""

    renewed: int = 0
    lost: list[int] = field(default_factory=list)


class LeaseKeeper:
    """Renews all of this daemon's leases in one statement per tick."""

    def __init__(
        self,
        store: JobStore,
        owner: str,
        lease_ttl: float,
        interval: float,
        held: Callable[[], dict[int, int]],
        on_lost: Callable[[list[int]], None],
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._owner = owner
        self._ttl = timedelta(seconds=lease_ttl)
        self._interval = interval
        self._held = held
        self._on_lost = on_lost
        self._clock = clock

    async def run_once(self) -> LeasePass:
        """Renew every held lease; report (and hand on) the ones no longer ours."""
        held = self._held()
        if not held:
            return LeasePass()
        renewed = await self._store.renew_leases(self._owner, held, self._ttl,
                                                 now=_now(self._clock))
        lost = sorted(set(held) - renewed)
        metrics.LEASE_RENEWALS.inc(len(renewed))
        if lost:
            log.info("leases lost", job_ids=lost)
            self._on_lost(lost)
        return LeasePass(len(renewed), lost)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Renew every `interval` seconds until cancelled."""
        task_status.started()
        while True:
            await anyio.sleep(self._interval)
            try:
                await self.run_once()
            except TRANSIENT as exc:
                log.warning("lease renewal failed", error=repr(exc))


@dataclass
class ReapPass:
    """One reaper pass: expired leases failed, retries scheduled, terminal failures."""

    expired: int = 0
    retried: int = 0
    terminal: int = 0


class Reaper:
    """Fails running jobs whose lease expired, then applies the retry policy.

    Safe to run in every daemon at once (SKIP LOCKED). It also schedules
    retries for jobs failed by hand that still have attempts left.
    """

    def __init__(
        self,
        store: JobStore,
        retry_default: RetryPolicy,
        interval: float,
        *,
        on_retry: Callable[[], None] | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._retry_default = retry_default
        self._interval = interval
        self._on_retry = on_retry
        self._clock = clock
        self._rng = rng or random.Random()

    async def run_once(self) -> ReapPass:
        """Reap every expired lease and retry what may be retried."""
        now = _now(self._clock)
        reaped = await self._store.reap_expired(self._retry_default, now=now, rng=self._rng)
        by_hand = await self._store.retry_failed_with_budget(self._retry_default, now=now,
                                                             rng=self._rng)
        expired = len(reaped.retried) + len(reaped.terminal)
        result = ReapPass(expired, len(reaped.retried) + len(by_hand.retried),
                          len(reaped.terminal))
        if expired:
            metrics.LEASE_EXPIRIES.inc(expired)
            log.info("reaped expired leases", expired=expired, retried=len(reaped.retried),
                     terminal=reaped.terminal)
        if by_hand.retried:
            log.info("scheduled retries for failed jobs", job_ids=sorted(by_hand.retried))
        if result.retried and self._on_retry is not None:
            self._on_retry()
        return result

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Reap every `interval` seconds (jittered, so daemons spread out) until cancelled."""
        task_status.started()
        while True:
            try:
                await self.run_once()
            except TRANSIENT as exc:
                log.warning("reaper pass failed", error=repr(exc))
            await anyio.sleep(self._interval * self._rng.uniform(0.8, 1.2))


HELD_REASON = "held by sealed mode: requires_network jobs wait until a daemon runs unsealed"


@dataclass
class SchedulePass:
    """One scheduler pass."""

    promoted: int = 0
    cancelled: int = 0
    held: int = 0


class Scheduler:
    """The DAG: pending -> scheduled once every dependency completed (and run_at came),
    and cancellation of dependents of failed jobs; in sealed mode, holds.

    (Jobs without dependencies are promoted by the claim itself.) Wakes on
    notifications (coalesced: at most one pass per `min_gap`), when the
    claimer sees a job come due, and at least every `poll_interval`.
    """

    def __init__(
        self,
        store: JobStore,
        queues: Sequence[str],
        *,
        poll_interval: float,
        on_ready: Callable[[], None],
        sealed: bool = False,
        clock: Clock | None = None,
        min_gap: float = 0.01,
    ) -> None:
        self._store = store
        self._queues = list(queues)
        self._poll = poll_interval
        self._on_ready = on_ready
        self._sealed = sealed
        self._clock = clock
        self._min_gap = min_gap
        self._kick = anyio.Event()
        # False once a pass saw no job waiting on dependencies: finished jobs
        # then free nothing, until new jobs arrive (or the polling pass).
        self._maybe_waiting = True

    def wake(self, *, new_jobs: bool = True) -> None:
        """Ask for a pass soon: jobs were inserted (`new_jobs`) or finished."""
        if new_jobs:
            self._maybe_waiting = True
        if self._maybe_waiting:
            self._kick.set()

    async def run_once(self) -> SchedulePass:
        """Cascade failures down the DAG, promote what is ready, find the next due time."""
        now = _now(self._clock)
        cancelled: list[int] = []
        promoted: list[int] = []
        # One cheap look first: without waiting jobs there is nothing to
        # cascade or promote, and no statement (with its audit trigger) to run.
        self._maybe_waiting = await self._store.any_waiting()
        if self._maybe_waiting:
            cancelled = await self._store.cancel_orphans(now=now)
            promoted = await self._store.promote_ready(self._queues, now=now,
                                                       sealed=self._sealed)
        if cancelled:
            log.info("cancelled dependents of failed jobs", job_ids=cancelled)
        if promoted:
            self._on_ready()
        held: list[int] = []
        if self._sealed:
            held = await self._store.hold_for_network(self._queues, HELD_REASON)
            if held:
                log.info("jobs that need the network are held while sealed", job_ids=held)
        return SchedulePass(len(promoted), len(cancelled), len(held))

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Pass, sleep until woken (or the polling interval), repeat, until cancelled."""
        task_status.started()
        while True:
            try:
                await self.run_once()
            except TRANSIENT as exc:
                log.warning("scheduler pass failed", error=repr(exc))
            with anyio.move_on_after(self._poll) as waited:
                await self._kick.wait()
            self._kick = anyio.Event()
            if waited.cancelled_caught:
                self._maybe_waiting = True  # the polling pass looks for itself
            else:
                await anyio.sleep(self._min_gap)  # let a burst of notifications coalesce
