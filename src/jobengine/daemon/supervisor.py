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
from dataclasses import dataclass
from datetime import datetime, timedelta

import anyio
import msgspec
import structlog
from anyio.abc import TaskGroup, TaskStatus

from jobengine import metrics
from jobengine.daemon.actor import Actor, run_actor
from jobengine.daemon.attempts import Attempts
from jobengine.daemon.config import DaemonConfig
from jobengine.daemon.handlers import Handler, HandlerSource, merge_handlers, resolve_handlers
from jobengine.daemon.isolation import sealed_handlers
from jobengine.daemon.leases import LeaseKeeper
from jobengine.daemon.outcomes import FlushReport, OutcomeWriter
from jobengine.daemon.reaper import Reaper
from jobengine.daemon.relay import Relay
from jobengine.daemon.retention import Retention
from jobengine.daemon.scheduler import Scheduler
from jobengine.daemon.systemd import Notifier
from jobengine.daemon.testsignals import DaemonSignals
from jobengine.daemon.ticker import Ticker
from jobengine.domain.clock import Clock, SystemClock
from jobengine.domain.models import Job
from jobengine.notifications import (
    CANCEL_CHANNEL,
    WAKE_CHANNEL,
    Listener,
    Signal,
    listen_source,
    parse_cancel,
    parse_wake,
)
from jobengine.store import (
    TRANSIENT,
    AttemptKey,
    JobStore,
    LedgerStore,
    SchedulingStore,
    create_pool,
)
from jobengine.store.pool import Database, as_database

log = structlog.get_logger("jobengine.daemon")


def new_daemon_id() -> str:
    """host-pid-random: unique per process, readable in history and leases."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{random.getrandbits(24):06x}"


@dataclass(frozen=True)
class Services:
    """What a running daemon is made of (exists only while `run` runs)."""

    store: JobStore
    writer: OutcomeWriter
    #: None: behind a transaction pooler with no listen_dsn, the daemon polls
    listener: Listener | None
    leases: LeaseKeeper
    reaper: Reaper
    scheduler: Scheduler
    relay: Relay
    retention: Retention
    scheduling: SchedulingStore
    ticker: Ticker


class Daemon:
    """A jobengine daemon: claims jobs of its queues and kinds and runs them.

    Use `run_daemon(...)` to run one in-process (`async with`), or call
    `run()` inside your own task group.
    """

    def __init__(
        self,
        config: DaemonConfig,
        dsn: str | Database,
        *,
        handlers: dict[str, Handler] | None = None,
        app: HandlerSource | None = None,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        flush_delay: float = 0.002,
        api_address: tuple[str, int] | None = None,
        signals: DaemonSignals | None = None,
    ) -> None:
        self.config = config
        self.settings = config.daemon.validate()
        #: where connections go (several hosts, a pooler, a direct listen_dsn)
        self.database = as_database(dsn)
        self.dsn = self.database.dsn
        self.id = self.settings.id or new_daemon_id()
        self.clock: Clock = clock or SystemClock()
        self.notifier = notifier or Notifier({})
        self.signals = signals or DaemonSignals()
        self._given_handlers = handlers
        self._app = app
        self._flush_delay = flush_delay
        self._api_address = api_address
        #: every attempt this daemon runs: one stays here (and counts against
        #: concurrency) until its handler ended
        self.attempts = Attempts(unwritten=self._unwritten)
        self.handlers: dict[str, Handler] = {}
        self.claimed_total = 0
        self.ready = False
        self._services: Services | None = None
        self._maybe_more = True
        #: due jobs wait on a full concurrency limit: a job ending anywhere may free them
        self._held_on_done = False
        #: when the first claim whose answer was lost was sent (None: no such claim)
        self._claim_unanswered: float | None = None
        #: False once the database said no limit is set (until one is: '*:ready')
        self._limits_may_exist = True
        self._stopping = False
        self._immediate = False
        self._kick = Signal()      # the claimer: look again
        self._changed = Signal()   # an attempt ended (the drain waits on it)
        self._stop = Signal()

    @property
    def services(self) -> Services:
        """The running daemon's parts (`RuntimeError` before `run()` started them)."""
        if self._services is None:
            raise RuntimeError("the daemon is not running")
        return self._services

    @property
    def writer(self) -> OutcomeWriter:
        """The outcome writer (while running)."""
        return self.services.writer

    @property
    def listener(self) -> Listener:
        """The LISTEN connection's keeper (while running; `RuntimeError` when polling only)."""
        if self.services.listener is None:
            raise RuntimeError("this daemon polls: no LISTEN behind a pooler without listen_dsn")
        return self.services.listener

    @property
    def actors(self) -> Attempts:
        """The attempts running here, by (job id, attempt)."""
        return self.attempts

    # -- control ------------------------------------------------------------------

    def request_stop(self, *, immediate: bool = False) -> None:
        """Start a graceful stop; with `immediate` (or a second call), skip the grace period."""
        if self._stopping or immediate:
            self._immediate = True
        self._stopping = True
        for signal in (self._kick, self._stop, self._changed):
            signal.set()

    def running(self, job_id: int) -> bool:
        """Whether an attempt of this job is running in this daemon (its handler not ended)."""
        return self.attempts.running(job_id)

    def status_line(self) -> str:
        """The STATUS= text for systemd."""
        return f"running {len(self.attempts)} jobs, claimed {self.claimed_total} since start"

    def readiness(self) -> dict[str, bool]:
        """What /readyz reports for this daemon."""
        listening = self._services is not None and (
            self._services.listener is None or self._services.listener.connected)
        return {"claiming": self.ready and not self._stopping, "listener": listening}

    # -- running --------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until `request_stop()`; signals readiness once claiming."""
        self.handlers = self._prepare_handlers()
        pool = await create_pool(self.database, self.id, min_size=2, max_size=8)
        try:
            self._services = self._assemble(JobStore(pool))
            await self._run_services(self._services, task_status)
        finally:
            with anyio.CancelScope(shield=True):
                await pool.close()
            self._services = None
            log.info("daemon.stopped", daemon_id=self.id)

    def _prepare_handlers(self) -> dict[str, Handler]:
        """Resolve handlers (given ones, else `[handlers]`; an app's tasks beside them);
        sealed, isolate every one (see `daemon.isolation`)."""
        limit = self.settings.concurrency
        given = self._given_handlers
        if self._app is not None:
            # One thread limiter for [handlers] and the app's tasks: together
            # they never hold more than `concurrency` threads (abandoned ones too).
            limiter = anyio.CapacityLimiter(max(limit, 1))
            base = given if given is not None else resolve_handlers(
                self.config.handlers, thread_limit=limit, limiter=limiter)
            given = merge_handlers(base, self._app, thread_limit=limit, limiter=limiter)
        if self.config.sealed:  # ConfigError if some handler cannot be isolated here
            listen = self.database.listen
            return sealed_handlers(self.config, given, self.dsn,
                                   api=self._api_address, thread_limit=limit,
                                   also=[listen.dsn] if listen is not None else [])
        if given is not None:
            return given
        return resolve_handlers(self.config.handlers, thread_limit=limit)

    def _assemble(self, store: JobStore) -> Services:
        s = self.settings
        ledger = LedgerStore(store.db)
        scheduling = SchedulingStore(store.db)
        leases = LeaseKeeper(store, self.id, self.attempts, lease_ttl=s.lease_ttl,
                             interval=s.renew_interval, margin=s.fence_margin,
                             clock=self.clock, signals=self.signals)
        return Services(
            store=store,
            writer=OutcomeWriter(store, self.id, self.config.retry,
                                 flush_delay=self._flush_delay, on_flush=self._flushed),
            listener=self._listener(),
            leases=leases,
            reaper=Reaper(store, self.config.retry, s.reaper_interval,
                          on_retry=self._wake_claimer, signals=self.signals),
            scheduler=Scheduler(store, s.queues, poll_interval=s.poll_interval,
                                on_ready=self._wake_claimer, sealed=self.config.sealed),
            relay=Relay(ledger, interval=s.relay_interval),
            retention=Retention(ledger, self.config.retention),
            scheduling=scheduling,
            ticker=Ticker(scheduling, self.config.schedules, signals=self.signals),
        )

    def _listener(self) -> Listener | None:
        source = listen_source(self.database, self.id)
        if source is None:
            log.warning("daemon.polling", pooler=self.database.pooler,
                        poll_interval=self.settings.poll_interval,
                        note="behind a transaction pooler without listen_dsn there is no LISTEN: "
                             "new jobs are found by polling every poll_interval; set listen_dsn "
                             "to a direct connection for immediate pickup")
            return None
        return Listener(source, {WAKE_CHANNEL: self._on_wake, CANCEL_CHANNEL: self._on_cancel},
                        name="daemon", on_up=self._on_listening)

    async def _run_services(self, sv: Services, task_status: TaskStatus[None]) -> None:
        s = self.settings
        async with anyio.create_task_group() as services:
            await services.start(sv.writer.run)
            if sv.listener is not None:
                await services.start(sv.listener.run)
            await services.start(sv.leases.run)
            await services.start(sv.reaper.run)
            await services.start(sv.scheduler.run)
            await services.start(sv.relay.run)
            await services.start(sv.retention.run)
            await services.start(sv.ticker.run)
            await services.start(self.notifier.watchdog, self.status_line)
            async with anyio.create_task_group() as actors:
                await services.start(self._claim_loop, sv, actors)
                self.ready = True
                self.notifier.notify("READY=1", f"STATUS={self.status_line()}")
                log.info("daemon.ready", daemon_id=self.id, queues=s.queues,
                         kinds=sorted(self.handlers), concurrency=s.concurrency,
                         sealed=self.config.sealed)
                task_status.started()
                while not self._stopping:
                    await self._stop.wait()
                self.notifier.notify("STOPPING=1")
                log.info("daemon.stopping", running=len(self.attempts))
                await self._drain()
            # Every actor has handed in its outcome; write them all before leaving.
            with anyio.move_on_after(max(s.shutdown_grace, 5.0)) as flush:
                await sv.writer.wait_idle()
            if flush.cancelled_caught:
                log.warning("daemon.outcomes_unwritten", unwritten=sorted(sv.writer.unwritten),
                            note="their leases will expire and the reaper retries them")
            services.cancel_scope.cancel()

    async def _drain(self) -> None:
        """Let running jobs finish within the grace period, then give the rest back."""
        if not self._immediate and len(self.attempts):
            with anyio.move_on_after(self.settings.shutdown_grace):
                while len(self.attempts) and not self._immediate:
                    await self._changed.wait()
        self.attempts.interrupt_all("shutdown")

    # -- claiming ---------------------------------------------------------------------

    async def _claim_loop(
        self, sv: Services, actors: TaskGroup, *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
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
            if self._claim_unanswered is not None:
                try:
                    await self._adopt(sv, actors)
                except TRANSIENT as exc:
                    log.warning("claim.resolve_failed", error=repr(exc), retry_in=backoff)
                    await anyio.sleep(backoff)
                    backoff = min(backoff * 2, s.poll_interval)
                    continue
            free = s.concurrency - len(self.attempts)
            if free > 0 and self._maybe_more:
                self._maybe_more = False
                sent_at = clock.monotonic()
                try:
                    batch = await sv.store.claim_batch(owner=self.id, queues=s.queues,
                                                       kinds=kinds, limit=free, lease_ttl=ttl,
                                                       sealed=self.config.sealed)
                    backoff = 0.05
                except TRANSIENT as exc:
                    log.warning("claim.failed", error=repr(exc), retry_in=backoff)
                    # It may have committed all the same: read back before claiming again.
                    if self._claim_unanswered is None:
                        self._claim_unanswered = sent_at
                    self._maybe_more = True
                    await anyio.sleep(backoff)
                    backoff = min(backoff * 2, s.poll_interval)
                    continue
                jobs = batch.jobs
                metrics.CLAIM_BATCH.observe(len(jobs))
                self._start(actors, jobs, sv.leases.deadline_after(sent_at))
                if len(jobs) == free:
                    self._maybe_more = True  # there may be more waiting
                    continue
                if self._maybe_more:
                    # Woken while the claim ran (a new job, a retry due): claim
                    # again at once. How long to sleep (two more round trips)
                    # is worked out after the claim that precedes a sleep, so
                    # `held` is asked since that claim's time, never an older one.
                    continue
                # Drained: sleep until the next job comes due (exactly), a
                # limit lets a held job start, a notification, a free slot,
                # or the polling interval.
                # (the clock is read after the answers: read before, the wait
                # would start early by the round trips and wake before the
                # job is due)
                wait = min(await self._until_next_due(sv, s.poll_interval, batch.at),
                           await self._until_released(sv, s.poll_interval, batch.at))
                deadline = clock.monotonic() + wait
            if not await self._kick.wait(max(deadline - clock.monotonic(), 0.0)):
                self._maybe_more = True  # something came due, or the polling fallback
                sv.scheduler.wake()
                deadline = clock.monotonic() + s.poll_interval

    async def _adopt(self, sv: Services, actors: TaskGroup) -> None:
        """Run the jobs a claim whose answer was lost took after all.

        Their leases were granted no earlier than that claim was sent, so the
        local deadline counts from then; renewals extend it as for any other.
        """
        assert self._claim_unanswered is not None
        jobs = await sv.store.adoptable(self.id, self.attempts.held())
        if jobs:
            log.info("claim.resolved", adopted=[[j.id, j.attempt] for j in jobs],
                     note="a claim whose COMMIT went unanswered had landed")
            self._start(actors, jobs, sv.leases.deadline_after(self._claim_unanswered))
        self._claim_unanswered = None

    async def _until_next_due(self, sv: Services, ceiling: float, since: datetime) -> float:
        """Seconds until the next waiting job of our queues is due (at most `ceiling`).

        Jobs that came due after the claim at `since` count (the answer is then
        at once): that claim could not take them, and no one else will say so.
        """
        try:
            due_in = await sv.store.next_due_in(self.settings.queues, since=since)
        except TRANSIENT:
            return ceiling
        if due_in is None:
            return ceiling
        return min(ceiling, max(due_in, 0.0) + 0.001)

    async def _until_released(self, sv: Services, ceiling: float, since: datetime) -> float:
        """Seconds until a rate limit lets a held job start (at most `ceiling`); notes
        whether jobs wait on a full concurrency limit (a job ending anywhere frees them).

        `since` is the time of the claim that left jobs behind: a window that
        opened after it (the claim may have seen it full) means "now"."""
        if not self._limits_may_exist:
            return ceiling
        try:
            held = await sv.scheduling.held(self.settings.queues, since=since)
        except TRANSIENT:
            return ceiling
        self._held_on_done = held.concurrency
        self._limits_may_exist = held.limits_exist
        if held.rate_next_at is None:
            return ceiling
        due_in = (held.rate_next_at - self.clock.now()).total_seconds()
        return min(ceiling, max(due_in, 0.0) + 0.001)

    def _start(self, actors: TaskGroup, jobs: Iterable[Job], lease_deadline: float) -> None:
        now = self.clock.now().timestamp()
        claimed: list[AttemptKey] = []
        for job in jobs:
            actor = Actor(job, lease_deadline=lease_deadline)
            # An older attempt of the same job still running here is stopped
            # first; this one's handler starts once that one ended.
            older = self.attempts.add(actor)
            if self._stopping:
                actor.interrupt("shutdown")  # claimed as the stop came in: give it back
            claimed.append(actor.key)
            self.claimed_total += 1
            if job.run_at is not None:
                metrics.PICKUP_LATENCY.observe(max(0.0, now - job.run_at.timestamp()))
            actors.start_soon(self._actor_task, actor, older,
                              name=f"job-{job.id}-{job.attempt}")
        if claimed:
            log.debug("job.claimed", attempts=claimed)
            self.signals.claimed.signal(claimed)

    async def _actor_task(self, actor: Actor, older: list[Actor]) -> None:
        try:
            for other in older:
                await other.wait_ended()
            handler = self.handlers[actor.job.kind]
            prepare = None
            if actor.job.depends_on and getattr(handler, "wants_results", False):
                prepare = self._with_results
            await run_actor(actor, handler, self.writer.submit, prepare)
        finally:
            actor.end()
            self.attempts.remove(actor)
            self._kick.set()
            self._changed.set()

    async def _with_results(self, job: Job) -> Job:
        """The job with its completed dependencies' results (read just before it runs)."""
        results = await self.services.store.results_of(job.depends_on)
        return msgspec.structs.replace(job, dependency_results=results)

    # -- events from the services ---------------------------------------------------------

    def _wake_claimer(self) -> None:
        self._maybe_more = True
        self._kick.set()

    def _on_wake(self, payload: str) -> None:
        wake = parse_wake(payload)
        if wake is None:
            return
        if wake.queue == "*":  # a limit or a schedule changed
            if wake.what == "schedules" and self._services is not None:
                self._services.ticker.wake()
            elif wake.what == "ready":
                self._limits_may_exist = True
                self._wake_claimer()
            return
        if wake.what == "done" and self._held_on_done:
            self._wake_claimer()  # a job of a full key may have ended, in any queue
        if wake.queue not in self.settings.queues:
            return
        if wake.what in ("new", "ready"):
            self._wake_claimer()
        if wake.what in ("new", "done") and self._services is not None:
            self._services.scheduler.wake(new_jobs=wake.what == "new", whole=False)

    def _on_cancel(self, payload: str) -> None:
        self.attempts.interrupt_jobs(parse_cancel(payload), "cancelled")

    def _on_listening(self, first: bool) -> None:
        if first:
            return
        # Whatever was sent while the listener was away is lost: look for it.
        metrics.LISTENER_RECONNECTS.inc()
        self._limits_may_exist = True
        self._wake_claimer()
        if self._services is not None:
            self._services.scheduler.wake(new_jobs=True)
            self._services.ticker.wake()

    def _unwritten(self) -> list[AttemptKey]:
        return list(self._services.writer.unwritten.items()) if self._services else []

    def _flushed(self, report: FlushReport) -> None:
        # A retry due now can be claimed at once (its 'ready' notification
        # would say the same, a round trip later); later ones are found by the
        # claimer's next-due timer.
        if report.retried and min(report.retried.values()) <= self.clock.now():
            self._wake_claimer()
        self.signals.flushed.signal(report)


@asynccontextmanager
async def run_daemon(
    config: DaemonConfig,
    dsn: str | Database,
    *,
    handlers: dict[str, Handler] | None = None,
    app: HandlerSource | None = None,
    clock: Clock | None = None,
    notifier: Notifier | None = None,
    flush_delay: float = 0.002,
    signals: DaemonSignals | None = None,
) -> AsyncIterator[Daemon]:
    """Run a daemon in-process for the duration of the block, then stop it gracefully.

        async with run_daemon(config, dsn, handlers=from_callables({...})) as daemon:
            ...  # the daemon is claiming here

    `app` (a `jobengine.App`) adds its tasks to the handlers.
    """
    daemon = Daemon(config, dsn, handlers=handlers, app=app, clock=clock, notifier=notifier,
                    flush_delay=flush_delay, signals=signals)
    async with anyio.create_task_group() as tg:
        await tg.start(daemon.run)
        try:
            yield daemon
        finally:
            daemon.request_stop()
