"""The REST API's wire format: what goes over HTTP, kept apart from the domain structs.

The domain says what a job *is*; these structs say what a client sends and
receives. They differ on purpose (a timeout is a number of seconds here, a
`timedelta` there; the event cursor is a string here, a tuple in the store),
and the OpenAPI document is generated from them, so the schema a client sees
is exactly what the server checks.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec

from jobengine.domain.models import HistoryEntry, Job, JobSpec, TimelineEvent
from jobengine.domain.status import JobStatus

#: Largest id (PostgreSQL bigint) and the integer column bounds.
MAX_BIGINT = 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
#: Largest transaction id a cursor can carry (xid8 is unsigned 64-bit).
MAX_XID8 = 2**64 - 1
#: What `kind` and `queue` may look like (the database enforces the same).
NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$"
#: Seconds: the largest delay or timeout the API accepts (about 31 years).
MAX_SECONDS = 1e9

Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN, min_length=1, max_length=100)]
JobId = Annotated[int, msgspec.Meta(ge=1, le=MAX_BIGINT)]
Int32 = Annotated[int, msgspec.Meta(ge=INT32_MIN, le=INT32_MAX)]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=MAX_SECONDS)]
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]


class RetryPolicyIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How long a failed job waits before its retry; omitted fields take these defaults."""

    strategy: Literal["fixed", "linear", "exponential"] = "exponential"
    base_delay: Seconds = 1.0
    max_delay: Seconds = 300.0
    jitter: bool = True


class JobCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of `POST /v1/jobs`: only `kind` is required."""

    kind: Annotated[Name, msgspec.Meta(description="which handler runs the job")]
    queue: Name = "default"
    payload: Annotated[
        dict[str, Any], msgspec.Meta(description="the handler's input: a JSON object")
    ] = msgspec.field(default_factory=dict)
    priority: Annotated[Int32, msgspec.Meta(description="higher runs first")] = 0
    run_at: Annotated[
        AwareDatetime | None, msgspec.Meta(description="not scheduled before this (default: now)")
    ] = None
    depends_on: Annotated[
        list[JobId], msgspec.Meta(max_length=1000, description="jobs that must complete first")
    ] = msgspec.field(default_factory=list)
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=INT32_MAX)] = 3
    retry_policy: RetryPolicyIn | None = None
    timeout: Annotated[
        Annotated[float, msgspec.Meta(ge=1e-6, le=MAX_SECONDS)] | None,
        msgspec.Meta(description="seconds a running attempt may take before it fails"),
    ] = None
    requires_network: bool = False
    limit_key: Annotated[
        Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None,
        msgspec.Meta(description="groups the job under the concurrency and rate limits of "
                                 "this key"),
    ] = None
    idempotency_key: Annotated[
        Annotated[str, msgspec.Meta(min_length=1, max_length=255)] | None,
        msgspec.Meta(description="a second POST with the same key returns the first job (200)"),
    ] = None

    def to_spec(self) -> JobSpec:
        """The domain's `JobSpec` for this request."""
        return JobSpec(
            kind=self.kind,
            queue=self.queue,
            payload=self.payload,
            priority=self.priority,
            run_at=self.run_at,
            depends_on=list(self.depends_on),
            max_retries=self.max_retries,
            retry_policy=msgspec.to_builtins(self.retry_policy) if self.retry_policy else None,
            timeout=timedelta(seconds=self.timeout) if self.timeout is not None else None,
            requires_network=self.requires_network,
            limit_key=self.limit_key,
            idempotency_key=self.idempotency_key,
        )


class JobOut(msgspec.Struct, kw_only=True):
    """A job as the API shows it (`timeout` in seconds)."""

    id: int
    kind: str
    queue: str
    payload: dict[str, Any]
    status: JobStatus
    priority: int
    run_at: datetime | None
    depends_on: list[int]
    attempt: int
    max_retries: int
    retry_policy: dict[str, Any] | None
    timeout: float | None
    requires_network: bool
    limit_key: str | None
    idempotency_key: str | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    result: Any
    last_error: str | None
    status_reason: str | None
    created_at: datetime | None
    scheduled_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime | None

    @classmethod
    def from_job(cls, job: Job) -> JobOut:
        """The wire form of a domain `Job`."""
        return cls(
            id=job.id, kind=job.kind, queue=job.queue, payload=job.payload, status=job.status,
            priority=job.priority, run_at=job.run_at, depends_on=list(job.depends_on),
            attempt=job.attempt, max_retries=job.max_retries, retry_policy=job.retry_policy,
            timeout=job.timeout.total_seconds() if job.timeout is not None else None,
            requires_network=job.requires_network, limit_key=job.limit_key,
            idempotency_key=job.idempotency_key,
            lease_owner=job.lease_owner, lease_expires_at=job.lease_expires_at,
            result=job.result, last_error=job.last_error, status_reason=job.status_reason,
            created_at=job.created_at, scheduled_at=job.scheduled_at,
            started_at=job.started_at, finished_at=job.finished_at, updated_at=job.updated_at,
        )


class RetryOut(JobOut, kw_only=True):
    """`POST /v1/jobs/{id}/retry`: the job, and its dependents that stay cancelled.

    `cancelled` is final: dependents a failure cancelled (down the whole DAG)
    do not come back with the retry; submit them again to run them.
    """

    stays_cancelled: list[int] = msgspec.field(default_factory=list)


class JobPage(msgspec.Struct, kw_only=True):
    """One page of `GET /v1/jobs`; pass `next` as `after` for the following page."""

    jobs: list[JobOut]
    next: int | None


class HistoryOut(msgspec.Struct, kw_only=True):
    """One status change of a job (`from_status` is null for the creation)."""

    id: int
    job_id: int
    from_status: JobStatus | None
    to_status: JobStatus
    attempt: int
    occurred_at: datetime
    reason: str | None
    actor: str | None
    role: str | None = None

    @classmethod
    def from_entry(cls, entry: HistoryEntry) -> HistoryOut:
        """The wire form of a domain `HistoryEntry`."""
        return cls(**msgspec.structs.asdict(entry))


class HistoryList(msgspec.Struct, kw_only=True):
    """`GET /v1/jobs/{id}/history`: the job's status changes, oldest first."""

    history: list[HistoryOut]


class EnvelopeOut(msgspec.Struct, kw_only=True):
    """The EventEnvelope: one transition (or note) as sent on `jobengine_events`."""

    event_id: str
    event_type: str
    schema_version: int
    occurred_at: datetime
    job_id: int
    kind: str
    queue: str
    from_status: JobStatus | None
    to_status: JobStatus | None
    attempt: int
    actor: str | None
    reason: str | None


class TimelineOut(msgspec.Struct, kw_only=True):
    """One timeline event of a job."""

    id: int
    event_id: str
    job_id: int
    event_type: str
    occurred_at: datetime
    envelope: EnvelopeOut

    @classmethod
    def from_event(cls, event: TimelineEvent) -> TimelineOut:
        """The wire form of a domain `TimelineEvent`."""
        envelope = msgspec.convert(msgspec.to_builtins(event.envelope), EnvelopeOut)
        return cls(
            id=event.id, event_id=event.event_id, job_id=event.job_id,
            event_type=event.event_type, occurred_at=event.occurred_at, envelope=envelope,
        )


class TimelineList(msgspec.Struct, kw_only=True):
    """`GET /v1/jobs/{id}/timeline`: the job's timeline events, oldest first."""

    timeline: list[TimelineOut]


class EventOut(msgspec.Struct, kw_only=True):
    """One event of the global timeline, with the cursor that resumes right after it."""

    cursor: str
    id: int
    event_id: str
    job_id: int
    event_type: str
    occurred_at: datetime
    envelope: EnvelopeOut

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> EventOut:
        """The wire form of a row from `JobStore.events_after`."""
        return cls(
            cursor=format_cursor((int(row["tx_id"]), row["id"])), id=row["id"],
            event_id=row["event_id"], job_id=row["job_id"], event_type=row["event_type"],
            occurred_at=row["occurred_at"],
            envelope=msgspec.convert(row["envelope"], EnvelopeOut),
        )


class EventPageOut(msgspec.Struct, kw_only=True):
    """`GET /v1/events`: events after the cursor, in commit order, and where to resume."""

    events: list[EventOut]
    next: str


class ErrorDetail(msgspec.Struct, kw_only=True):
    """What went wrong: a stable machine `code` and a message for people."""

    code: str
    message: str


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every error response: `{"error": {"code", "message"}}`."""

    error: ErrorDetail


class Health(msgspec.Struct, kw_only=True):
    """`GET /healthz`: the process is alive."""

    status: Literal["ok"] = "ok"


class Readiness(msgspec.Struct, kw_only=True):
    """`GET /readyz`: each check by name; ready when all pass (else 503).

    `paused_queues` lists the queues an operator paused (not a failed check;
    empty when the database cannot be asked).
    """

    ready: bool
    checks: dict[str, bool]
    paused_queues: list[str] = msgspec.field(default_factory=list)


_CURSOR = re.compile(r"^([0-9]{1,20})-([0-9]{1,19})\Z")

#: The cursor before every event.
CURSOR_START: tuple[int, int] = (0, 0)


def format_cursor(cursor: tuple[int, int]) -> str:
    """The event cursor `(tx_id, id)` as it appears on the wire: `"TXID-ID"`."""
    return f"{cursor[0]}-{cursor[1]}"


def parse_cursor(text: str) -> tuple[int, int]:
    """Parse a wire cursor (`"TXID-ID"`, or `"0"` for the start); `ValueError` if bad.

    A cursor past anything that can exist is clamped: nothing comes after it.
    """
    if text == "0":
        return CURSOR_START
    match = _CURSOR.match(text)
    if match is None:
        raise ValueError(f"{text[:40]!r} is not an event cursor (expected TXID-ID, e.g. 1234-56)")
    return min(int(match.group(1)), MAX_XID8), min(int(match.group(2)), MAX_BIGINT)


#: Every struct the OpenAPI document describes.
SCHEMA_TYPES: tuple[type[msgspec.Struct], ...] = (
    JobCreate, JobOut, RetryOut, JobPage, HistoryList, TimelineList, EventOut, EventPageOut,
    ErrorBody, Health, Readiness,
)
