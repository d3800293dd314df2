"""One actor per claimed job: runs its handler and decides how the attempt ended.

The actor never writes to the database itself; it hands its outcome to the
outcome writer, whose guarded write refuses it if the job has moved on.
An actor can be interrupted (its cancel scope cancelled) for a reason:
- `cancelled`: the job was cancelled (through any path) while running;
  the database already says so, nothing is written;
- `lease_lost`: this daemon no longer holds the job (its renewal found the
  job moved, or the lease's local deadline passed before a renewal came
  back: the daemon stops its handler before the lease can expire, so that
  no other daemon can start the job while this attempt still runs); nothing
  is written;
- `superseded`: this daemon claimed a newer attempt of the same job (the job
  was moved back by hand, or its lease was lost and it came back here); the
  old attempt stops and nothing is written for it;
- `shutdown`: the daemon is stopping; the job is given back
  (`running -> scheduled`, not counted against max_retries).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec
import structlog

from jobengine import metrics
from jobengine.daemon.handlers import Handler
from jobengine.daemon.outcomes import Outcome
from jobengine.daemon.sealed import blocked_attempts
from jobengine.domain.errors import EgressBlocked
from jobengine.domain.models import Job
from jobengine.domain.status import JobStatus

log = structlog.get_logger("jobengine.actor")
_encode = msgspec.json.Encoder().encode

#: How an interruption is recorded (None: not at all: someone else already did).
_INTERRUPTED: dict[str, tuple[JobStatus, str] | None] = {
    "shutdown": (JobStatus.SCHEDULED, "shutdown"),
    "cancelled": None,
    "lease_lost": None,
    "superseded": None,
}


@dataclass(eq=False)
class Actor:
    """A running job's handle: the job, and how to interrupt it."""

    job: Job
    #: monotonic time by which the handler must have stopped unless the lease is renewed
    lease_deadline: float = float("inf")
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    interrupted_for: str | None = None
    started_at: float = field(default_factory=time.monotonic)
    #: whether the attempt's task is over (its handler ended, or was abandoned)
    over: bool = False
    # Made only when someone waits for the end (a newer attempt of the same
    # job, which is rare): an anyio.Event per job is a measurable share of
    # the worker's time per job.
    _ended: anyio.Event | None = field(default=None, repr=False)

    @property
    def key(self) -> tuple[int, int]:
        """(job id, attempt): what this actor holds a lease on."""
        return (self.job.id, self.job.attempt)

    def end(self) -> None:
        """The attempt's task is over: wake whoever waits for it."""
        self.over = True
        if self._ended is not None:
            self._ended.set()

    async def wait_ended(self) -> None:
        """Return once the attempt's task is over."""
        if self.over:
            return
        if self._ended is None:
            self._ended = anyio.Event()
        await self._ended.wait()

    def interrupt(self, reason: str) -> None:
        """Stop the handler at its next checkpoint, for `reason` (see module doc)."""
        if self.interrupted_for is None:
            self.interrupted_for = reason
        self.scope.cancel()


def _debug_enabled() -> bool:
    """Whether structlog's configured logger lets debug events through.

    Asked per attempt, never remembered: a test or an app may configure
    structlog again. Asking costs ~0.3 µs; a debug call through the module's
    lazy logger builds a bound logger each time (~4 µs), twice per job.
    """
    check = getattr(structlog.get_config()["wrapper_class"], "is_enabled_for", None)
    if check is None:
        return True
    try:
        return bool(check(None, logging.DEBUG))
    except Exception:  # a wrapper class of the app's own whose check needs an instance
        return True


class _Swallowed(EgressBlocked):
    """Raised when a handler caught sealed mode's EgressBlocked: the attempt still fails."""

    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)
        self.address = message


def describe(exc: BaseException) -> str:
    """`Type: message`, as stored in `last_error` (bounded)."""
    name = "EgressBlocked" if isinstance(exc, EgressBlocked) else type(exc).__name__
    text = f"{name}: {exc}".strip()
    return text if len(text) <= 4000 else text[:3997] + "..."


async def run_actor(
    actor: Actor, handler: Handler, submit: Callable[[Outcome], None],
    prepare: Callable[[Job], Awaitable[Job]] | None = None,
) -> None:
    """Run one attempt of `actor.job` and submit how it ended.

    `prepare` gives the handler the job it receives (with its dependencies'
    results): it runs inside the attempt, so its failure fails the attempt
    and the job's timeout covers it.
    """
    job = actor.job
    timeout = job.timeout.total_seconds() if job.timeout is not None else None
    result: Any = None
    error: BaseException | None = None
    with structlog.contextvars.bound_contextvars(job_id=job.id, kind=job.kind,
                                                 attempt=job.attempt):
        debug = _debug_enabled()
        if debug:
            log.debug("job.started")
        started = time.monotonic()
        # Sealed mode's guard records here any egress this attempt tried, so
        # the attempt fails even if the handler swallowed the exception.
        blocked: list[str] = []
        token = blocked_attempts.set(blocked)
        # One cancel scope does both jobs: its deadline is the job's timeout,
        # and interrupt() cancels it; `interrupted_for` tells them apart.
        if timeout is not None:
            actor.scope.deadline = anyio.current_time() + timeout
        try:
            with actor.scope:
                try:
                    given = await prepare(job) if prepare is not None else job
                    result = await handler(given)
                except (Exception, SystemExit) as exc:
                    error = exc
        finally:
            blocked_attempts.reset(token)
        if blocked and not isinstance(error, EgressBlocked):
            error = _Swallowed(blocked[0])
        timed_out = actor.scope.cancelled_caught and actor.interrupted_for is None
        metrics.observe_handler_duration(job.kind, time.monotonic() - started)
        outcome = _decide(actor, timed_out, timeout, result, error)
        if outcome is None:
            log.info("job.interrupted", reason=actor.interrupted_for,
                     note="nothing written: the outcome is whoever moved the job's")
            return
        if outcome.to_status is JobStatus.FAILED:
            log.info("job.failed", reason=outcome.reason, error=outcome.error)
        elif outcome.to_status is JobStatus.SCHEDULED:
            log.info("job.given_back", reason=outcome.reason)
        elif debug:
            log.debug("job.completed")
        submit(outcome)


def _decide(
    actor: Actor, timed_out: bool, timeout: float | None, result: Any, error: BaseException | None
) -> Outcome | None:
    job = actor.job
    if actor.scope.cancelled_caught and actor.interrupted_for is not None:
        # (An attempt that finished before the interruption took effect keeps
        # its outcome: the guarded write decides whether it may stand.)
        target = _INTERRUPTED.get(actor.interrupted_for)
        if target is None:
            return None
        return Outcome(job, target[0], target[1])
    if timed_out:
        return Outcome(job, JobStatus.FAILED, "timeout",
                       error=f"TimeoutError: the attempt ran past its timeout of {timeout:g}s")
    if error is not None:
        reason = "egress_blocked" if isinstance(error, EgressBlocked) else "error"
        return Outcome(job, JobStatus.FAILED, reason, error=describe(error))
    try:
        _encode(result)
    except (TypeError, ValueError, OverflowError) as exc:
        return Outcome(job, JobStatus.FAILED, "error",
                       error=f"TypeError: the handler's result is not JSON-serialisable: {exc}")
    return Outcome(job, JobStatus.COMPLETED, "completed", result=result)
