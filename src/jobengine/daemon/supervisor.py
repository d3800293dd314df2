"""The supervisor: one task group that runs the daemon's services and its actors.

Start order matters and is enforced with `task_status.started()`: the
outcome writer, the listener (LISTEN in place), leases, reaper and scheduler,
and only then the claimer. Stopping is soft then hard: stop claiming, let
running jobs finish within `shutdown_grace`, interrupt the rest and give them
back (`running -> scheduled`, reason `shutdown`), write every outcome, exit.
A second stop request skips the grace period but still gives jobs back.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import timedelta

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus

from jobengine import metrics
from jobengine.daemon.actor import Actor, run_actor
from jobengine.daemon.config import CommandHandler, DaemonConfig
from jobengine.daemon.handlers import Handler, resolve_handlers
from jobengine.daemon.listener import Listener
from jobengine.daemon.maintenance import LeaseKeeper, Reaper, Scheduler
from jobengine.daemon.outcomes import FlushReport, OutcomeWriter
from jobengine.daemon.sealed import netns_wrapper, seal, wrap_command
from jobengine.daemon.systemd import Notifier
from jobengine.daemon.testsignals import DaemonSignals
from jobengine.domain.clock import Clock, SystemClock
from jobengine.domain.models import Job
from jobengine.store import TRANSIENT, AttemptKey, JobStore, create_pool

log = structlog.get_logger("jobengine.daemon")


def new_daemon_id() -> str:
    """host-pid-random: unique per process, readable in history and leases."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{random.getrandbits(24):06x}"


class Daemon:
    """A jobengine daemon: claims jobs of its queues and kinds and runs them.

    Use `run_daemon(...)` to run one in-process (`async with`), or call
    `run()` inside your own task group.
    """

    def __init__(
        self,
        config: DaemonConfig,
        dsn: str,
        *,
        handlers: dict[str, Handler] | None = None,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        flush_delay: float = 0.002,
        api_address: tuple[str, int] | None = None,
        signals: DaemonSignals | None = None,
    ) -> None:
        self.config = config
        self.settings = config.daemon.validate()
        self.dsn = dsn
        self.id = self.settings.id or new_daemon_id()
        self.clock: Clock = clock or SystemClock()
        self.notifier = notifier or Notifier({})
        self.signals = signals or DaemonSignals()
        self._handlers = handlers
        self._flush_delay = flush_delay
        self._api_address = api_address
        #: every attempt this daemon runs, by (job id, attempt): an attempt
        #: stays here (and counts against concurrency) until its handler ended
        self.actors: dict[AttemptKey, Actor] = {}
        self.claimed_total = 0
        self._maybe_more = True
        self._stopping = False
        self._immediate = False
        self.ready = False
        self.store: JobStore
        self.listener: Listener
        self.writer: OutcomeWriter
        self.scheduler: Scheduler
        self.leases: LeaseKeeper

    # -- control ------------------------------------------------------------------

    def request_stop(self, *, immediate: bool = False) -> None:
        """Start a graceful stop; with `immediate` (or a second call), skip the grace period."""
        if self._stopping or immediate:
            self._immediate = True
        self._stopping = True
        # (before run() the events do not exist yet; run() then stops at once)
        for name in ("_kick", "_stop", "_changed"):
            event = getattr(self, name, None)
            if event is not None:
                event.set()

    def running(self, job_id: int) -> bool:
        """Whether an attempt of this job is running in this daemon (its handler not ended)."""
        return any(key[0] == job_id for key in self.actors)

    def status_line(self) -> str:
        """The STATUS= text for systemd."""
        return f"running {len(self.actors)} jobs, claimed {self.claimed_total} since start"

    def readiness(self) -> dict[str, bool]:
        """What /readyz reports for this daemon."""
        listener = getattr(self, "listener", None)
        return {"claiming": self.ready and not self._stopping,
                "listener": bool(listener and listener.connected)}

    # -- running --------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until `request_stop()`; signals readiness once claiming."""
        self._kick = anyio.Event()
        self._stop = anyio.Event()
        self._changed = anyio.Event()
        if self._stopping:  # asked to stop before it ran
            self._stop.set()
        self.handlers = self._prepare_handlers()
        pool = await create_pool(self.dsn, self.id, min_size=2, max_size=8)
        try:
            self.store = JobStore(pool)
            await self._run_services(task_status)
        finally:
            with anyio.CancelScope(shield=True):
                await pool.close()
            log.info("daemon stopped", daemon_id=self.id)

    def _prepare_handlers(self) -> dict[str, Handler]:
        """Resolve handlers; in sealed mode, isolate commands and install the egress guard."""
        wrap = None
        if self.config.sealed and any(
            isinstance(spec, CommandHandler) for spec in self.config.handlers.values()
        ):
            wrap = wrap_command(netns_wrapper())  # ConfigError if this system cannot
        handlers = self._handlers
        if handlers is None:
            handlers = resolve_handlers(self.config.handlers, wrap_command=wrap,
                                        thread_limit=self.settings.concurrency)
        if self.config.sealed:
            seal(self.dsn, api=self._api_address)
        return handlers

    async def _run_services(self, task_status: TaskStatus[None]) -> None:
        s = self.settings
        self.writer = OutcomeWriter(self.store, self.id, self.config.retry,
                                    flush_delay=self._flush_delay, on_flush=self._flushed)
        self.listener = Listener(self.dsn, self.id, s.queues, on_wake=self._on_wake,
                                 on_cancel=self._on_cancel)
        self.scheduler = Scheduler(self.store, s.queues, poll_interval=s.poll_interval,
                                   on_ready=self._on_ready, sealed=self.config.sealed)
        self.leases = LeaseKeeper(
            self.store, self.id, s.lease_ttl, s.renew_interval, s.fence_margin,
            held=self._held, on_renewed=self._on_renewed, on_lost=self._on_lease_lost,
            deadlines=self._deadlines, on_fenced=self._on_lease_lost, clock=self.clock,
            signals=self.signals,
        )
        reaper = Reaper(self.store, self.config.retry, s.reaper_interval,
                        on_retry=self._on_ready, signals=self.signals)
        async with anyio.create_task_group() as services:
            await services.start(self.writer.run)
            await services.start(self.listener.run)
            await services.start(self.leases.run)
            await services.start(reaper.run)
            await services.start(self.scheduler.run)
            await services.start(self.notifier.watchdog, self.status_line)
            async with anyio.create_task_group() as actors:
                await services.start(self._claim_loop, actors)
                self.ready = True
                self.notifier.notify("READY=1", f"STATUS={self.status_line()}")
                log.info("daemon ready", daemon_id=self.id, queues=s.queues,
                         kinds=sorted(self.handlers), concurrency=s.concurrency,
                         sealed=self.config.sealed)
                task_status.started()
                await self._stop.wait()
                self.notifier.notify("STOPPING=1")
                log.info("daemon stopping", running=len(self.actors))
                await self._drain()
            # Every actor has handed in its outcome; write them all before leaving.
            with anyio.move_on_after(max(s.shutdown_grace, 5.0)) as flush:
                await self.writer.wait_idle()
            if flush.cancelled_caught:
                log.warning("could not write every outcome before exit; leases will expire",
                            unwritten=sorted(self.writer.unwritten))
            services.cancel_scope.cancel()

    async def _drain(self) -> None:
        """Let running jobs finish within the grace period, then give the rest back."""
        if not self._immediate and self.actors:
            with anyio.move_on_after(self.settings.shutdown_grace):
                while self.actors and not self._immediate:
                    await self._changed.wait()
                    self._changed = anyio.Event()
        for actor in list(self.actors.values()):
            actor.interrupt("shutdown")

    # -- claiming ---------------------------------------------------------------------

    async def _claim_loop(
        self, actors: TaskGroup, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        s = self.settings
        kinds = sorted(self.handlers)
        ttl = timedelta(seconds=s.lease_ttl)
        task_status.started()
        backoff = 0.05
        clock = self.clock
        # When to look again without being told: the next due time or the poll.
        deadline = clock.monotonic() + s.poll_interval
        while not self._stopping:
            free = s.concurrency - len(self.actors)
            if free > 0 and self._maybe_more:
                self._maybe_more = False
                sent_at = clock.monotonic()
                try:
                    jobs = await self.store.claim(
                        owner=self.id, queues=s.queues, kinds=kinds, limit=free,
                        lease_ttl=ttl, sealed=self.config.sealed,
                    )
                    backoff = 0.05
                except TRANSIENT as exc:
                    log.warning("claim.failed", error=repr(exc), retry_in=backoff)
                    self._maybe_more = True
                    await anyio.sleep(backoff)
                    backoff = min(backoff * 2, s.poll_interval)
                    continue
                metrics.CLAIM_BATCH.observe(len(jobs))
                self._start(actors, jobs, self.leases.deadline_after(sent_at))
                if len(jobs) == free:
                    self._maybe_more = True  # there may be more waiting
                    continue
                # Drained: sleep until the next job comes due (exactly), a
                # notification, a free slot, or the polling interval.
                deadline = clock.monotonic() + await self._until_next_due(s.poll_interval)
            with anyio.move_on_after(max(deadline - clock.monotonic(), 0.0)) as waited:
                await self._kick.wait()
            self._kick = anyio.Event()
            if waited.cancelled_caught:
                self._maybe_more = True  # something came due, or the polling fallback
                self.scheduler.wake()
                deadline = clock.monotonic() + s.poll_interval

    async def _until_next_due(self, ceiling: float) -> float:
        """Seconds until the next waiting job of our queues is due (at most `ceiling`)."""
        try:
            due_in = await self.store.next_due_in(self.settings.queues)
        except TRANSIENT:
            return ceiling
        if due_in is None:
            return ceiling
        return min(ceiling, max(due_in, 0.0) + 0.001)

    def _start(self, actors: TaskGroup, jobs: Iterable[Job], lease_deadline: float) -> None:
        now = self.clock.now().timestamp()
        claimed: list[AttemptKey] = []
        for job in jobs:
            actor = Actor(job, lease_deadline=lease_deadline)
            # An older attempt of the same job still running here lost its
            # lease when the job moved on: stop it (it writes nothing), and
            # start the new attempt's handler only once the old one ended.
            older = [a for a in self.actors.values()
                     if a.job.id == job.id and a.job.attempt < job.attempt]
            for other in older:
                log.warning("job.superseded", job_id=job.id, attempt=other.job.attempt,
                            newer_attempt=job.attempt)
                other.interrupt("superseded")
            if self._stopping:
                actor.interrupt("shutdown")  # claimed as the stop came in: give it back
            self.actors[actor.key] = actor
            claimed.append(actor.key)
            self.claimed_total += 1
            if job.run_at is not None:
                metrics.PICKUP_LATENCY.observe(max(0.0, now - job.run_at.timestamp()))
            actors.start_soon(self._actor_task, actor, older,
                              name=f"job-{job.id}-{job.attempt}")
        metrics.RUNNING.set(len(self.actors))
        if claimed:
            self.signals.claimed.signal(claimed)

    async def _actor_task(self, actor: Actor, older: list[Actor]) -> None:
        try:
            for other in older:
                await other.ended.wait()
            await run_actor(actor, self.handlers[actor.job.kind], self.writer.submit)
        finally:
            actor.ended.set()
            if self.actors.get(actor.key) is actor:
                del self.actors[actor.key]
            metrics.RUNNING.set(len(self.actors))
            self._kick.set()
            self._changed.set()

    # -- events from the services ---------------------------------------------------------

    def _on_wake(self, what: str) -> None:
        if what in ("new", "ready"):
            self._maybe_more = True
            self._kick.set()
        if what in ("new", "done"):
            self.scheduler.wake(new_jobs=what == "new")

    def _on_ready(self) -> None:
        self._maybe_more = True
        self._kick.set()

    def _on_cancel(self, job_ids: list[int]) -> None:
        wanted = set(job_ids)
        for actor in list(self.actors.values()):
            if actor.job.id in wanted:
                log.info("job.interrupted", job_id=actor.job.id, attempt=actor.job.attempt,
                         reason="cancelled")
                actor.interrupt("cancelled")

    def _on_lease_lost(self, keys: list[AttemptKey]) -> None:
        for key in keys:
            actor = self.actors.get(key)
            if actor is not None:
                # Cancelled jobs also stop renewing: say which it was.
                actor.interrupt("lease_lost")

    def _on_renewed(self, keys: list[AttemptKey], deadline: float) -> None:
        for key in keys:
            actor = self.actors.get(key)
            if actor is not None and deadline > actor.lease_deadline:
                actor.lease_deadline = deadline

    def _deadlines(self) -> dict[AttemptKey, float]:
        """The local lease deadlines of attempts whose handlers still run."""
        return {k: a.lease_deadline for k, a in self.actors.items() if a.interrupted_for is None}

    def _held(self) -> list[AttemptKey]:
        """Every attempt whose lease matters: running here, or its outcome not yet written."""
        held = set(self.actors)
        held.update(self.writer.unwritten.items())
        return sorted(held)

    def _flushed(self, report: FlushReport) -> None:
        # A retry due now can be claimed at once (its 'ready' notification
        # would say the same, a round trip later); later ones are found by the
        # claimer's next-due timer.
        if report.retried and min(report.retried.values()) <= self.clock.now():
            self._on_ready()
        self.signals.flushed.signal(report)


@asynccontextmanager
async def run_daemon(
    config: DaemonConfig,
    dsn: str,
    *,
    handlers: dict[str, Handler] | None = None,
    clock: Clock | None = None,
    notifier: Notifier | None = None,
    flush_delay: float = 0.002,
    signals: DaemonSignals | None = None,
) -> AsyncIterator[Daemon]:
    """Run a daemon in-process for the duration of the block, then stop it gracefully.

        async with run_daemon(config, dsn, handlers=from_callables({...})) as daemon:
            ...  # the daemon is claiming here
    """
    daemon = Daemon(config, dsn, handlers=handlers, clock=clock, notifier=notifier,
                    flush_delay=flush_delay, signals=signals)
    async with anyio.create_task_group() as tg:
        await tg.start(daemon.run)
        try:
            yield daemon
        finally:
            daemon.request_stop()
