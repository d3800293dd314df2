"""The records jobengine reads and writes: jobs, history, timeline, envelopes.

These are domain structs (what a job *is*); the REST API keeps its own wire
structs so that the two can evolve apart.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import msgspec

from jobengine.domain.status import JobStatus

#: The envelope's schema version; bumped only for incompatible changes.
SCHEMA_VERSION = 1


class JobSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What it takes to create a job; everything but `kind` has the table's default."""

    kind: str
    queue: str = "default"
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    priority: int = 0
    run_at: datetime | None = None
    depends_on: list[int] = msgspec.field(default_factory=list)
    max_retries: int = 3
    retry_policy: dict[str, Any] | None = None
    timeout: timedelta | None = None
    requires_network: bool = False
    #: groups jobs under concurrency and rate limits (and for fair claiming)
    limit_key: str | None = None
    idempotency_key: str | None = None


class Job(msgspec.Struct, kw_only=True):
    """One row of `jobengine.jobs`."""

    id: int
    kind: str
    queue: str = "default"
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    status: JobStatus = JobStatus.PENDING
    priority: int = 0
    run_at: datetime | None = None
    depends_on: list[int] = msgspec.field(default_factory=list)
    attempt: int = 0
    #: how many attempts were given back at shutdown (column `released`): counted
    #: in `attempt`, not against `max_retries`
    releases: int = 0
    max_retries: int = 3
    retry_policy: dict[str, Any] | None = None
    timeout: timedelta | None = None
    requires_network: bool = False
    limit_key: str | None = None
    idempotency_key: str | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    result: Any = None
    last_error: str | None = None
    status_reason: str | None = None
    #: who made the last status change, as the ledger records it, and as which database role
    status_actor: str | None = None
    status_role: str | None = None
    created_at: datetime | None = None
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    #: not a column: the `result`s of this job's completed dependencies, by id,
    #: filled in before the attempt for handlers that ask for them (the Python
    #: API's tasks: `jobengine.current_job().results`); None otherwise
    dependency_results: dict[int, Any] | None = None

    @property
    def attempts_counted(self) -> int:
        """Attempts that count against `max_retries` (shutdown give-backs do not)."""
        return self.attempt - self.releases


class HistoryEntry(msgspec.Struct, kw_only=True):
    """One row of `jobengine.job_history`: a status change of one job."""

    id: int
    job_id: int
    from_status: JobStatus | None
    to_status: JobStatus
    attempt: int
    occurred_at: datetime
    reason: str | None = None
    actor: str | None = None
    #: the database role that made the change ('' for rows from before release 0.2)
    role: str | None = None


class EventEnvelope(msgspec.Struct, kw_only=True):
    """What a transition looks like on `jobengine_events` and in `timeline_events.envelope`.

    Never carries the job's payload or result, so it stays far below
    PostgreSQL's 8000-byte NOTIFY limit.
    """

    event_id: str
    event_type: str
    schema_version: int = SCHEMA_VERSION
    occurred_at: datetime
    job_id: int
    kind: str
    queue: str
    from_status: JobStatus | None = None
    to_status: JobStatus | None = None
    attempt: int = 0
    actor: str | None = None
    reason: str | None = None


class TimelineEvent(msgspec.Struct, kw_only=True):
    """One row of `jobengine.timeline_events`."""

    id: int
    event_id: str
    job_id: int
    event_type: str
    occurred_at: datetime
    envelope: EventEnvelope


def decode_envelope(raw: bytes | str) -> EventEnvelope:
    """Parse a NOTIFY payload or stored envelope into an `EventEnvelope`."""
    return msgspec.json.decode(raw, type=EventEnvelope)
