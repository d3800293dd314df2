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


_P, _S, _R = JobStatus.PENDING, JobStatus.SCHEDULED, JobStatus.RUNNING
_C, _F, _X = JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED

#: (from, to) -> timeline event type. `None` as `from` is the insert.
TRANSITIONS: Final[MappingProxyType[tuple[JobStatus | None, JobStatus], str]] = MappingProxyType(
    {
        (None, _P): "job.created",
        (_P, _S): "job.scheduled",
        (_P, _X): "job.cancelled",
        (_S, _R): "job.started",
        (_S, _X): "job.cancelled",
        (_R, _C): "job.completed",
        (_R, _F): "job.failed",
        (_R, _X): "job.cancelled",
        (_R, _S): "job.released",
        (_F, _S): "job.retry_scheduled",
    }
)

#: States no transition leaves, whatever the retry budget.
FINAL: Final = frozenset({_C, _X})

#: States in which a job is done unless something (a retry) moves it again.
SETTLED: Final = frozenset({_C, _F, _X})


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
