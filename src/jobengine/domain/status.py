"""The job lifecycle: statuses and the transition table.

This table is the readable source of truth; the database enforces the same
table (see `sql/`), and a test keeps the two identical.
"""

from __future__ import annotations

from enum import StrEnum
from types import MappingProxyType
from typing import Final

from jobengine.domain.errors import IllegalTransition


class JobStatus(StrEnum):
    """Where a job is in its lifecycle (Postgres enum `jobengine.job_status`)."""

    PENDING = "pending"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: (from, to) -> timeline event type. `None` as `from` is the insert.
TRANSITIONS: Final[MappingProxyType[tuple[JobStatus | None, JobStatus], str]] = MappingProxyType(
    {
        (None, JobStatus.PENDING): "job.created",
        (JobStatus.PENDING, JobStatus.SCHEDULED): "job.scheduled",
        (JobStatus.PENDING, JobStatus.CANCELLED): "job.cancelled",
        (JobStatus.SCHEDULED, JobStatus.RUNNING): "job.started",
        (JobStatus.SCHEDULED, JobStatus.CANCELLED): "job.cancelled",
        (JobStatus.RUNNING, JobStatus.COMPLETED): "job.completed",
        (JobStatus.RUNNING, JobStatus.FAILED): "job.failed",
        (JobStatus.RUNNING, JobStatus.CANCELLED): "job.cancelled",
        (JobStatus.RUNNING, JobStatus.SCHEDULED): "job.released",
        (JobStatus.FAILED, JobStatus.SCHEDULED): "job.retry_scheduled",
    }
)

#: States no transition leaves, whatever the retry budget.
FINAL: Final = frozenset({JobStatus.COMPLETED, JobStatus.CANCELLED})

#: States in which a job is done unless something (a retry) moves it again.
SETTLED: Final = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


def is_allowed(src: JobStatus | None, dst: JobStatus) -> bool:
    """Tell whether `src -> dst` is in the transition table."""
    return (src, dst) in TRANSITIONS


def check(src: JobStatus | str | None, dst: JobStatus | str, job_id: int | None = None) -> str:
    """Return the timeline event type of `src -> dst`, or raise `IllegalTransition`."""
    try:
        key = (JobStatus(src) if src is not None else None, JobStatus(dst))
    except ValueError as exc:
        raise IllegalTransition(
            None if src is None else str(src), str(dst), job_id
        ) from exc
    event_type = TRANSITIONS.get(key)
    if event_type is None:
        raise IllegalTransition(key[0], key[1], job_id)
    return event_type


def targets(src: JobStatus | None) -> frozenset[JobStatus]:
    """The statuses `src` may move to."""
    return frozenset(dst for (s, dst) in TRANSITIONS if s == src)
