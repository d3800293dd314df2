"""The reaper: running jobs whose lease expired fail (`lease_expired`), and are retried.

Safe to run in every daemon at once (SKIP LOCKED). It also schedules retries
for jobs failed by hand that still have attempts left. A rescued job's next
attempt is due at once: its worker died, the job did not fail.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import structlog
from anyio.abc import TaskStatus

from jobengine import metrics
from jobengine.daemon.testsignals import DaemonSignals
from jobengine.domain.retry import RetryPolicy
from jobengine.store import TRANSIENT, JobStore

log = structlog.get_logger("jobengine.reaper")


@dataclass
class ReapPass:
    """One reaper pass: expired leases failed, retries scheduled, terminal failures."""

    expired: int = 0
    retried: int = 0
    terminal: int = 0


class Reaper:
    """Reaps expired leases and retries what may be retried, every `interval` seconds."""

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
