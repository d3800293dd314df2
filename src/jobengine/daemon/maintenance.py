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
from datetime import timedelta

import anyio
import structlog
from anyio.abc import TaskStatus

from jobengine import metrics
from jobengine.daemon.testsignals import DaemonSignals
from jobengine.domain.clock import Clock, SystemClock
from jobengine.domain.retry import RetryPolicy
from jobengine.store import TRANSIENT, AttemptKey, JobStore, Written

log = structlog.get_logger("jobengine.maintenance")


@dataclass
class LeasePass:
    """One lease renewal: how many were renewed, which were lost, which were busy."""

    renewed: int = 0
    lost: list[AttemptKey] = field(default_factory=list)
    busy: list[AttemptKey] = field(default_factory=list)


class LeaseKeeper:
    """Renews all of this daemon's leases in one statement per tick, and fences the rest.

    Renewal never waits on a row lock (the database skips rows another
    transaction holds and says so) and never waits longer than one renewal
    interval. Every attempt this daemon runs has a local deadline, `lease_ttl
    - margin` after the claim or renewal *that was sent* last succeeded: the
    database set the lease's end at least `lease_ttl` after that moment, so
    stopping the handler by the deadline means it has stopped before any
    other daemon could reap the job and start it again (self-fencing). A
    renewal that does not come back in time counts as lost.
    """

    def __init__(
        self,
        store: JobStore,
        owner: str,
        lease_ttl: float,
        interval: float,
        margin: float,
        *,
        held: Callable[[], list[AttemptKey]],
        on_renewed: Callable[[list[AttemptKey], float], None],
        on_lost: Callable[[list[AttemptKey]], None],
        deadlines: Callable[[], dict[AttemptKey, float]],
        on_fenced: Callable[[list[AttemptKey]], None],
        clock: Clock | None = None,
        signals: DaemonSignals | None = None,
    ) -> None:
        self._store = store
        self._owner = owner
        self._ttl = lease_ttl
        self._interval = interval
        self._margin = margin
        self._held = held
        self._on_renewed = on_renewed
        self._on_lost = on_lost
        self._deadlines = deadlines
        self._on_fenced = on_fenced
        self._clock = clock or SystemClock()
        self._signals = signals or DaemonSignals()

    def deadline_after(self, sent_at: float) -> float:
        """The local deadline of a lease granted by a statement sent at `sent_at` (monotonic)."""
        return sent_at + self._ttl - self._margin

    async def run_once(self) -> LeasePass:
        """Renew every held lease; hand on the ones lost; extend the renewed ones' deadlines."""
        held = self._held()
        if not held:
            return LeasePass()
        sent_at = self._clock.monotonic()
        result = LeasePass()
        with anyio.move_on_after(self._interval) as timer:
            written = await self._store.renew(self._owner, held,
                                              timedelta(seconds=self._ttl))
        if timer.cancelled_caught:
            log.warning("lease.renew_timed_out", jobs=len(held), after=self._interval)
            self._signals.renewed.signal(result)
            return result
        renewed = [k for k, w in written.items() if w is Written.DONE]
        result.renewed = len(renewed)
        result.lost = sorted(k for k, w in written.items() if w is Written.MOVED)
        result.busy = sorted(k for k, w in written.items() if w is Written.BUSY)
        metrics.LEASE_RENEWALS.inc(len(renewed))
        self._on_renewed(renewed, self.deadline_after(sent_at))
        if result.busy:
            log.info("lease.busy", attempts=result.busy)
        if result.lost:
            log.info("lease.lost", attempts=result.lost)
            self._on_lost(result.lost)
        self._signals.renewed.signal(result)
        return result

    def fence_once(self) -> list[AttemptKey]:
        """Stop every attempt whose local deadline passed; returns them."""
        now = self._clock.monotonic()
        late = sorted(k for k, d in self._deadlines().items() if d <= now)
        if late:
            log.warning("lease.fenced", attempts=late,
                        reason="no renewal came back before the lease's local deadline")
            self._on_fenced(late)
            self._signals.fenced.signal(late)
        return late

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Renew every `interval` seconds and fence on time, until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._fence_loop)
            task_status.started()
            while True:
                await anyio.sleep(self._interval)
                try:
                    await self.run_once()
                except TRANSIENT as exc:
                    log.warning("lease.renew_failed", error=repr(exc))

    async def _fence_loop(self) -> None:
        # Wake at the earliest deadline, and at least every margin/2: a new
        # attempt's deadline is never sooner than that from now.
        while True:
            self.fence_once()
            deadlines = self._deadlines().values()
            now = self._clock.monotonic()
            wait = min([d - now for d in deadlines], default=self._margin)
            await anyio.sleep(min(max(wait, 0.0), self._margin / 2) + 0.001)


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
        rng: random.Random | None = None,
        signals: DaemonSignals | None = None,
    ) -> None:
        self._store = store
        self._retry_default = retry_default
        self._interval = interval
        self._on_retry = on_retry
        self._rng = rng or random.Random()
        self._signals = signals or DaemonSignals()

    async def run_once(self) -> ReapPass:
        """Reap every expired lease and retry what may be retried."""
        reaped = await self._store.reap(self._retry_default, rng=self._rng)
        by_hand = await self._store.retry_failed(self._retry_default, rng=self._rng)
        expired = len(reaped.retried) + len(reaped.terminal)
        result = ReapPass(expired, len(reaped.retried) + len(by_hand), len(reaped.terminal))
        if expired:
            metrics.LEASE_EXPIRIES.inc(expired)
            log.info("lease.reaped", expired=expired, retried=sorted(reaped.retried),
                     terminal=reaped.terminal)
        if by_hand:
            log.info("job.retry_scheduled", job_ids=sorted(by_hand))
        if result.retried and self._on_retry is not None:
            self._on_retry()
        if expired or by_hand:
            self._signals.reaped.signal(result)
        return result

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Reap every `interval` seconds (jittered, so daemons spread out) until cancelled."""
        task_status.started()
        while True:
            try:
                await self.run_once()
            except TRANSIENT as exc:
                log.warning("reaper.pass_failed", error=repr(exc))
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
        min_gap: float = 0.01,
    ) -> None:
        self._store = store
        self._queues = list(queues)
        self._poll = poll_interval
        self._on_ready = on_ready
        self._sealed = sealed
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
        cancelled: list[int] = []
        promoted: list[int] = []
        # One cheap look first: without waiting jobs there is nothing to
        # cascade or promote, and no statement (with its audit trigger) to run.
        self._maybe_waiting = await self._store.any_waiting()
        if self._maybe_waiting:
            cancelled = await self._store.cascade()
            promoted = await self._store.promote(self._queues, sealed=self._sealed)
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
                log.warning("scheduler.pass_failed", error=repr(exc))
            with anyio.move_on_after(self._poll) as waited:
                await self._kick.wait()
            self._kick = anyio.Event()
            if waited.cancelled_caught:
                self._maybe_waiting = True  # the polling pass looks for itself
            else:
                await anyio.sleep(self._min_gap)  # let a burst of notifications coalesce
