"""The attempts a daemon runs: one actor per (job id, attempt), and what the services ask of them.

A job can come back to the daemon that still runs an older attempt of it (put
back by hand, or its lease lost and re-claimed here): attempts are keyed by
(job id, attempt), so the older one is stopped rather than forgotten, and it
keeps its slot (it counts against concurrency) until its handler has ended.

The lease keeper, the listener's cancellations and the claimer all go through
this one registry instead of each holding a callback into the supervisor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import structlog

from jobengine import metrics
from jobengine.daemon.actor import Actor
from jobengine.store import AttemptKey

log = structlog.get_logger("jobengine.daemon")


class Attempts:
    """Every attempt this daemon runs, by (job id, attempt)."""

    def __init__(self, unwritten: Callable[[], Iterable[AttemptKey]]) -> None:
        #: attempts whose outcome is handed in but not written yet (their leases still matter)
        self._unwritten = unwritten
        self._actors: dict[AttemptKey, Actor] = {}
        #: job id -> its attempts running here (almost always one): add() looks up
        #: a job's older attempts once per claimed job, so not by a scan
        self._by_job: dict[int, list[Actor]] = {}

    def __len__(self) -> int:
        return len(self._actors)

    def __iter__(self) -> Iterator[AttemptKey]:
        return iter(list(self._actors))

    def __contains__(self, key: object) -> bool:
        return key in self._actors

    def get(self, key: AttemptKey) -> Actor | None:
        """The actor of this attempt, if it runs here."""
        return self._actors.get(key)

    def running(self, job_id: int) -> bool:
        """Whether an attempt of this job runs here (its handler not ended)."""
        return job_id in self._by_job

    def add(self, actor: Actor) -> list[Actor]:
        """Register a newly claimed attempt; returns the older attempts of the same job.

        Those lost their lease when the job moved on: they are interrupted
        (they write nothing), and the new attempt must start only once they
        have ended.
        """
        same_job = self._by_job.setdefault(actor.job.id, [])
        older = [a for a in same_job if a.job.attempt < actor.job.attempt]
        for other in older:
            log.warning("job.superseded", job_id=actor.job.id, attempt=other.job.attempt,
                        newer_attempt=actor.job.attempt)
            other.interrupt("superseded")
        self._actors[actor.key] = actor
        same_job.append(actor)
        metrics.RUNNING.set(len(self._actors))
        return older

    def remove(self, actor: Actor) -> None:
        """Forget an attempt whose handler has ended."""
        if self._actors.get(actor.key) is actor:
            del self._actors[actor.key]
            same_job = self._by_job[actor.job.id]
            same_job.remove(actor)
            if not same_job:
                del self._by_job[actor.job.id]
        metrics.RUNNING.set(len(self._actors))

    def interrupt_jobs(self, job_ids: Iterable[int], reason: str) -> None:
        """Interrupt every attempt of these jobs (e.g. they were cancelled)."""
        wanted = set(job_ids)
        for actor in list(self._actors.values()):
            if actor.job.id in wanted:
                log.info("job.interrupted", job_id=actor.job.id, attempt=actor.job.attempt,
                         reason=reason)
                actor.interrupt(reason)

    def interrupt(self, keys: Iterable[AttemptKey], reason: str) -> None:
        """Interrupt these attempts (their lease was lost, or its deadline passed)."""
        for key in keys:
            actor = self._actors.get(key)
            if actor is not None:
                actor.interrupt(reason)

    def interrupt_all(self, reason: str) -> None:
        """Interrupt every attempt (shutdown)."""
        for actor in list(self._actors.values()):
            actor.interrupt(reason)

    def held(self) -> list[AttemptKey]:
        """Every attempt whose lease matters: running here, or its outcome not yet written."""
        return sorted({*self._actors, *self._unwritten()})

    def deadlines(self) -> dict[AttemptKey, float]:
        """The local lease deadlines of attempts whose handlers still run."""
        return {k: a.lease_deadline for k, a in self._actors.items() if a.interrupted_for is None}

    def extend(self, keys: Iterable[AttemptKey], deadline: float) -> None:
        """A renewal came back: these attempts may run until `deadline` (monotonic)."""
        for key in keys:
            actor = self._actors.get(key)
            if actor is not None and deadline > actor.lease_deadline:
                actor.lease_deadline = deadline
