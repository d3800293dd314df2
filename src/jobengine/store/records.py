"""Rows to domain records, and database errors to domain errors."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import asyncpg
import msgspec

from jobengine.domain.errors import (
    DuplicateJob,
    IllegalTransition,
    InvalidJob,
    InvalidLimit,
    InvalidSchedule,
    JobBusy,
    JobEngineError,
)
from jobengine.domain.models import EventEnvelope, HistoryEntry, Job, TimelineEvent
from jobengine.domain.status import JobStatus

_JOB_FIELDS = frozenset(Job.__struct_fields__)

#: Which field a constraint guards, so errors can name it.
CONSTRAINT_FIELDS: Mapping[str, str] = {
    "jobs_payload_must_be_a_json_object": "payload",
    "jobs_payload_size": "payload",
    "jobs_max_retries_must_not_be_negative": "max_retries",
    "jobs_timeout_must_be_positive": "timeout",
    "jobs_retry_policy_must_be_an_object_or_null": "retry_policy",
    "jobs_retry_policy_valid": "retry_policy",
    "jobs_kind_format": "kind",
    "jobs_queue_format": "queue",
    "jobs_depends_on_exists": "depends_on",
    "jobs_depends_on_acyclic": "depends_on",
    "jobs_status_reason_at_most_200_chars": "status_reason",
    "jobs_depends_on_frozen": "depends_on",
    "jobs_lease_bounded": "lease_expires_at",
    "jobs_lifecycle_columns": "status",
    "jobs_limit_key_valid": "limit_key",
    "jobs_limit_key_fixed": "limit_key",
}

#: The limits' checks, by the field they guard.
LIMIT_FIELDS: Mapping[str, str] = {
    "concurrency_limits_key_valid": "key",
    "concurrency_limits_max_running_positive": "max_running",
    "rate_limits_key_valid": "key",
    "rate_limits_max_starts_valid": "max_starts",
    "rate_limits_per_valid": "per",
    "queues_name_valid": "name",
}

_SCHEDULE = re.compile(r"^schedule (.+?): (\w+): (.*)$", re.S)
_ILLEGAL = re.compile(r"illegal transition for job (\d+): (\w+) -> (\w+)")
_NOT_PENDING = re.compile(r"job (\d+) must be inserted as pending, not (\w+)")


def job_from_row(row: Mapping[str, Any]) -> Job:
    """A `Job` from a `jobengine.jobs` row (columns it does not know are ignored)."""
    values = {k: v for k, v in row.items() if k in _JOB_FIELDS}
    values["releases"] = row.get("released", 0)  # the column's name; a count, not a flag
    values["status"] = JobStatus(values["status"])
    values["depends_on"] = list(values.get("depends_on") or ())
    return Job(**values)


def history_from_row(row: Mapping[str, Any]) -> HistoryEntry:
    """A `HistoryEntry` from a `jobengine.job_history` row."""
    src = row["from_status"]
    return HistoryEntry(
        id=row["id"],
        job_id=row["job_id"],
        from_status=JobStatus(src) if src is not None else None,
        to_status=JobStatus(row["to_status"]),
        attempt=row["attempt"],
        occurred_at=row["occurred_at"],
        reason=row["reason"],
        actor=row["actor"],
        role=row.get("role"),
    )


def timeline_from_row(row: Mapping[str, Any]) -> TimelineEvent:
    """A `TimelineEvent` from a `jobengine.timeline_events` row."""
    return TimelineEvent(
        id=row["id"],
        event_id=str(row["event_id"]),
        job_id=row["job_id"],
        event_type=row["event_type"],
        occurred_at=row["occurred_at"],
        envelope=msgspec.convert(row["envelope"], EventEnvelope),
    )


def _key_of(detail: str) -> str:
    """The first value of a check violation's "Failing row contains (...)" detail."""
    inner = detail.partition("(")[2]
    return inner.split(",", 1)[0].strip() or "?"


def translate_error(exc: asyncpg.PostgresError) -> JobEngineError | None:
    """The domain error a database error stands for, or None when it is not one of ours."""
    constraint = getattr(exc, "constraint_name", None) or ""
    message = getattr(exc, "message", None) or str(exc)
    message = message.removeprefix("jobengine: ")
    if constraint == "jobs_status_transition":
        m = _ILLEGAL.search(message)
        if m:
            return IllegalTransition(m.group(2), m.group(3), int(m.group(1)))
        m = _NOT_PENDING.search(message)
        if m:
            return IllegalTransition(None, m.group(2), int(m.group(1)))
        return IllegalTransition(None, "?")
    if isinstance(exc, asyncpg.LockNotAvailableError):
        return JobBusy()
    unique = isinstance(exc, asyncpg.UniqueViolationError)
    if unique and constraint == "jobs_idempotency_key_unique":
        detail = getattr(exc, "detail", "") or ""
        key = detail.split("=(", 1)[-1].rsplit(")", 1)[0] if "=(" in detail else "?"
        return DuplicateJob(key)
    if constraint.startswith("schedules_") and (m := _SCHEDULE.match(message)):
        return InvalidSchedule(m.group(1).strip('"'), m.group(2), m.group(3))
    if constraint in LIMIT_FIELDS:
        detail = getattr(exc, "detail", "") or ""
        return InvalidLimit(_key_of(detail), LIMIT_FIELDS[constraint], message)
    if constraint in CONSTRAINT_FIELDS:
        field = CONSTRAINT_FIELDS[constraint]
        if not message.startswith("job "):
            message = f"{field}: {message}"
        return InvalidJob(message, field)
    if isinstance(exc, asyncpg.NotNullViolationError):
        column = getattr(exc, "column_name", None)
        return InvalidJob(f"{column} must not be null", column)
    if isinstance(exc, asyncpg.DataError):
        return InvalidJob(message)
    return None
