"""The job a task is running: `jobengine.current_job()`."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

from jobengine.domain.models import Job


@dataclass(frozen=True, slots=True)
class CurrentJob:
    """What a running task knows of its job."""

    #: the job's id
    id: int
    #: this attempt's number (1 for the first)
    attempt: int
    #: the `result` of each completed dependency, by job id: how a DAG passes data down
    results: dict[int, Any]
    #: the whole job row as the daemon claimed it
    job: Job

    @property
    def kind(self) -> str:
        """The job's kind (the task's name)."""
        return self.job.kind

    @property
    def queue(self) -> str:
        """The queue the job was claimed from."""
        return self.job.queue


_current: contextvars.ContextVar[CurrentJob] = contextvars.ContextVar("jobengine_current_job")


def current_job() -> CurrentJob:
    """The job the calling task is running; `LookupError` outside a running task."""
    try:
        return _current.get()
    except LookupError:
        raise LookupError("jobengine.current_job() is only available inside a running task "
                          "(called from the task function, or code it calls)") from None


def enter(job: Job) -> contextvars.Token[CurrentJob]:
    """Make `job` the current job of this context (until `leave`)."""
    return _current.set(CurrentJob(job.id, job.attempt, dict(job.dependency_results or {}), job))


def leave(token: contextvars.Token[CurrentJob]) -> None:
    """Undo `enter`."""
    _current.reset(token)
