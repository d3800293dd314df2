"""The wire format of queues, limits and schedules (`/v1/queues`, `/v1/schedules`).

As in `jobengine.api.wire`, intervals are seconds and times RFC 3339. A
schedule sent by a client (`ScheduleIn`, also what `jobengine schedule add`
builds) is checked by `ScheduleIn.to_spec`, which raises `InvalidSchedule`
naming the schedule and the field, the same words the database uses.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any

import msgspec

from jobengine.api.wire import INT32_MAX, INT32_MIN, MAX_SECONDS, NAME_PATTERN, Int32, Name
from jobengine.domain.errors import InvalidSchedule, JobEngineError
from jobengine.domain.retention import parse_duration
from jobengine.domain.schedules import Schedule, ScheduleSpec, next_ticks, validate
from jobengine.domain.status import JobStatus
from jobengine.store.scheduling import LimitInfo, QueueInfo

#: How many upcoming ticks a schedule shows.
UPCOMING = 3

_NAME = re.compile(NAME_PATTERN)
_NAME_RULE = "must be 1-100 characters from A-Z a-z 0-9 _ . : -, starting with a letter or digit"


class QueueOut(msgspec.Struct, kw_only=True):
    """A queue: its jobs by status (every status, zeros included), paused or not."""

    name: str
    paused: bool
    counts: dict[str, int]
    #: true when the completed, failed and cancelled counts are estimates (a big table's
    #: sample); pending, scheduled and running are always exact
    counts_estimated: bool = False
    #: how long the oldest due job still waiting has waited (null: none waits)
    oldest_waiting_seconds: float | None
    #: who paused or resumed it last, and when (null: never)
    changed_by: str | None
    changed_at: datetime | None

    @classmethod
    def from_info(cls, info: QueueInfo) -> QueueOut:
        """The wire form of the store's `QueueInfo`."""
        counts = {status.value: int(info.counts.get(status.value, 0)) for status in JobStatus}
        return cls(name=info.name, paused=info.paused, counts=counts,
                   counts_estimated=info.estimated,
                   oldest_waiting_seconds=info.oldest_waiting_seconds,
                   changed_by=info.changed_by, changed_at=info.changed_at)


class LimitOut(msgspec.Struct, kw_only=True):
    """A limit key: its concurrency and/or rate limit (null: none), and what it holds now."""

    key: str
    max_running: int | None
    max_starts: int | None
    #: the rate limit's window, in seconds
    per: float | None
    running: int
    #: starts within the current window
    recent_starts: int
    #: due jobs of the key still waiting
    waiting: int
    #: of those, held back because the limit is full
    held: int

    @classmethod
    def from_info(cls, info: LimitInfo) -> LimitOut:
        """The wire form of the store's `LimitInfo`."""
        return cls(key=info.key, max_running=info.max_running, max_starts=info.max_starts,
                   per=info.per.total_seconds() if info.per is not None else None,
                   running=info.running, recent_starts=info.recent_starts,
                   waiting=info.waiting, held=info.held)


class QueueOverview(msgspec.Struct, kw_only=True):
    """`GET /v1/queues`: every queue with jobs or a pause record, and every limit."""

    queues: list[QueueOut]
    limits: list[LimitOut]


class ScheduleIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of `PUT /v1/schedules/{name}`: `kind` and one of `cron` and `every`."""

    kind: Annotated[Name, msgspec.Meta(description="which handler runs the jobs")]
    cron: Annotated[
        Annotated[str, msgspec.Meta(max_length=200)] | None,
        msgspec.Meta(description="5-field cron (or @daily, @hourly, ...) in `timezone`"),
    ] = None
    every: Annotated[
        Annotated[float, msgspec.Meta(ge=1, le=MAX_SECONDS)]
        | Annotated[str, msgspec.Meta(max_length=100)] | None,
        msgspec.Meta(description='an interval: seconds, or a duration such as "30s", "5m", '
                                 '"2h", "1d"; at least 1 second'),
    ] = None
    queue: Name = "default"
    payload: Annotated[dict[str, Any], msgspec.Meta(
        description="each job's payload: a JSON object")] = msgspec.field(default_factory=dict)
    priority: Int32 = 0
    limit_key: Annotated[
        Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None,
        msgspec.Meta(description="each job's limit_key"),
    ] = None
    timezone: Annotated[str, msgspec.Meta(
        max_length=100, description="an IANA time zone for `cron`, such as Europe/Berlin")] = "UTC"
    enabled: Annotated[bool | None, msgspec.Meta(
        description="false: paused; omitted: a new schedule is enabled, an existing one "
                    "keeps its state")] = None

    def to_spec(self, name: str) -> ScheduleSpec:
        """The checked `ScheduleSpec` named `name` (`InvalidSchedule` naming the field)."""
        if not _NAME.fullmatch(name):
            raise InvalidSchedule(name[:100] or "(no name)", "name", _NAME_RULE)
        for field, value in (("kind", self.kind), ("queue", self.queue)):
            if not _NAME.fullmatch(value):
                raise InvalidSchedule(name, field, f"{value[:100]!r} {_NAME_RULE}")
        if not INT32_MIN <= self.priority <= INT32_MAX:
            raise InvalidSchedule(name, "priority",
                                  f"must be from {INT32_MIN} to {INT32_MAX}, not {self.priority}")
        if self.limit_key is not None and not 1 <= len(self.limit_key) <= 200:
            raise InvalidSchedule(name, "limit_key", "must be 1 to 200 characters")
        spec = ScheduleSpec(
            name=name, kind=self.kind, cron=self.cron, every=_interval(name, self.every),
            queue=self.queue, payload=self.payload, priority=self.priority,
            limit_key=self.limit_key, timezone=self.timezone,
            enabled=self.enabled if self.enabled is not None else True)
        validate(spec)
        return spec


def _interval(name: str, every: float | str | None) -> timedelta | None:
    """`every` as a timedelta: seconds or a duration text, from 1 s to `MAX_SECONDS`."""
    if every is None:
        return None
    try:
        interval = parse_duration(every, name="every") if isinstance(every, str) else (
            timedelta(seconds=every) if every > 0 else timedelta(0))
    except JobEngineError as exc:
        raise InvalidSchedule(name, "every", str(exc).removeprefix("every: ")) from None
    except OverflowError:
        interval = timedelta.max
    if interval is None:
        raise InvalidSchedule(name, "every", '"forever" is not an interval')
    if interval < timedelta(seconds=1):
        raise InvalidSchedule(name, "every", f"must be at least 1 second, not {every!r}")
    if interval.total_seconds() > MAX_SECONDS:
        raise InvalidSchedule(name, "every", f"must be at most {MAX_SECONDS:.0f} seconds")
    return interval


def upcoming(schedule: Schedule, now: datetime) -> list[datetime]:
    """The schedule's next ticks after `now` (none while it is paused).

    Empty, too, for a row this process cannot compute ticks for (a time zone
    the database knows and Python's tzdata does not, an interval past year
    9999): a listing never fails because of one schedule.
    """
    if not schedule.enabled:
        return []
    try:
        return next_ticks(schedule, now, UPCOMING)
    except (InvalidSchedule, OverflowError, ValueError, StopIteration):
        return []


class ScheduleOut(msgspec.Struct, kw_only=True):
    """A schedule as stored (`every` in seconds), and its next ticks."""

    name: str
    cron: str | None
    every: float | None
    kind: str
    queue: str
    payload: dict[str, Any]
    priority: int
    limit_key: str | None
    timezone: str
    enabled: bool
    #: the latest tick that created a job, and that job
    last_tick: datetime | None
    last_job_id: int | None
    created_at: datetime | None
    changed_by: str | None
    changed_at: datetime | None
    #: the next three ticks after now, by the database's clock (empty while paused)
    next_ticks: list[datetime]

    @classmethod
    def from_schedule(cls, schedule: Schedule, now: datetime) -> ScheduleOut:
        """The wire form of a stored `Schedule`, its ticks counted from `now`."""
        return cls(
            name=schedule.name, cron=schedule.cron,
            every=schedule.every.total_seconds() if schedule.every is not None else None,
            kind=schedule.kind, queue=schedule.queue, payload=schedule.payload,
            priority=schedule.priority, limit_key=schedule.limit_key,
            timezone=schedule.timezone, enabled=schedule.enabled,
            last_tick=schedule.last_tick, last_job_id=schedule.last_job_id,
            created_at=schedule.created_at, changed_by=schedule.changed_by,
            changed_at=schedule.changed_at, next_ticks=upcoming(schedule, now))


class ScheduleList(msgspec.Struct, kw_only=True):
    """`GET /v1/schedules`: every schedule, by name."""

    schedules: list[ScheduleOut]


#: The structs the OpenAPI document describes, besides `wire.SCHEMA_TYPES`.
SCHEDULING_TYPES: tuple[type[msgspec.Struct], ...] = (
    QueueOut, QueueOverview, ScheduleIn, ScheduleOut, ScheduleList,
)
