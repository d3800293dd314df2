"""Lease renewal and self-fencing: a daemon keeps its leases, or stops its handlers in time.

Renewal is one statement per tick for every attempt the daemon holds, and
never waits on a row lock (the database skips rows another transaction holds
and says so) or longer than one renewal interval. Every attempt has a local
deadline, `lease_ttl - margin` after the claim or renewal *that was sent*
last succeeded: the database set the lease's end at least `lease_ttl` after
that moment, so a handler stopped by its deadline has stopped before any other
daemon could reap the job and start it again. A renewal that does not come
back in time counts as lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import anyio
import structlog
from anyio.abc import TaskStatus

from jobengine import metrics
from jobengine.daemon.attempts import Attempts
from jobengine.daemon.testsignals import DaemonSignals
from jobengine.domain.clock import Clock, SystemClock
from jobengine.store import TRANSIENT, AttemptKey, JobStore, Written

log = structlog.get_logger("jobengine.leases")


@dataclass
class LeasePass:
    """One lease renewal: how many were renewed, which were lost, which were busy."""

    renewed: int = 0
    lost: list[AttemptKey] = field(default_factory=list)
    busy: list[AttemptKey] = field(default_factory=list)


class LeaseKeeper:
    """Renews the leases of every attempt in `attempts`, and fences the ones it cannot."""

    def __init__(
        self,
        store: JobStore,
        owner: str,
        attempts: Attempts,
        *,
        lease_ttl: float,
        interval: float,
        margin: float,
        clock: Clock | None = None,
        signals: DaemonSignals | None = None,
    ) -> None:
        self._store = store
        self._owner = owner
        self._attempts = attempts
        self._ttl = lease_ttl
        self._interval = interval
        self._margin = margin
        self._clock = clock or SystemClock()
        self._signals = signals or DaemonSignals()

    def deadline_after(self, sent_at: float) -> float:
        """The local deadline of a lease granted by a statement sent at `sent_at` (monotonic)."""
        return sent_at + self._ttl - self._margin

    async def run_once(self) -> LeasePass:
        """Renew every held lease; stop the attempts that lost theirs; extend the others."""
        held = self._attempts.held()
        if not held:
            return LeasePass()
        sent_at = self._clock.monotonic()
        result = LeasePass()
        with anyio.move_on_after(self._interval) as timer:
            written = await self._store.renew(self._owner, held, timedelta(seconds=self._ttl))
        if timer.cancelled_caught:
            log.warning("lease.renew_timed_out", attempts=len(held), after=self._interval)
            self._signals.renewed.signal(result)
            return result
        renewed = [k for k, w in written.items() if w is Written.DONE]
        result.renewed = len(renewed)
        result.lost = sorted(k for k, w in written.items() if w is Written.MOVED)
        result.busy = sorted(k for k, w in written.items() if w is Written.BUSY)
        metrics.LEASE_RENEWALS.inc(len(renewed))
        self._attempts.extend(renewed, self.deadline_after(sent_at))
        if result.busy:
            log.info("lease.busy", attempts=result.busy)
        if result.lost:
            log.info("lease.lost", attempts=result.lost)
            self._attempts.interrupt(result.lost, "lease_lost")
        self._signals.renewed.signal(result)
        return result

    def fence_once(self) -> list[AttemptKey]:
        """Stop every attempt whose local deadline passed; returns them."""
        now = self._clock.monotonic()
        late = sorted(k for k, d in self._attempts.deadlines().items() if d <= now)
        if late:
            log.warning("lease.fenced", attempts=late,
                        reason="no renewal came back before the lease's local deadline")
            self._attempts.interrupt(late, "lease_lost")
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
            now = self._clock.monotonic()
            wait = min([d - now for d in self._attempts.deadlines().values()],
                       default=self._margin)
            await anyio.sleep(min(max(wait, 0.0), self._margin / 2) + 0.001)
