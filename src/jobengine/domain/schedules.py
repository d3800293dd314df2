"""Periodic jobs: what a schedule is, and when it ticks.

Pure: a schedule's ticks (cron in its time zone, or a fixed interval), the
latest due tick and how many were missed before it, and parsing
`[schedules.NAME]`. The database checks every schedule written to
`jobengine.schedules` itself (`schedules_check`); the checks here give the
same answers earlier, with the same words, for the config file and the CLI.

Cron follows what cron users expect across daylight-saving changes
(cronsim's rules, those of Debian's cron): a time that does not exist on a
spring-forward day (02:30 in Europe/Berlin on the last Sunday of March) runs
once, at the first minute that exists after it; a time that happens twice
on a fall-back day runs once, the first time. `every` ticks are fixed
lengths of time counted from the Unix epoch in UTC, so that every daemon
computes the same ticks and they do not move with DST.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from cronsim import CronSim, CronSimError

from jobengine.domain.errors import InvalidSchedule, JobEngineError
from jobengine.domain.retention import parse_duration

#: cron's nicknames, as the 5-field expressions they stand for
NICKNAMES: Mapping[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

#: missed ticks counted one by one up to here (a cron schedule down for years)
MAX_COUNTED = 10_000

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ScheduleSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a schedule says: when (`cron` in `timezone`, or `every`) and which job."""

    name: str
    kind: str
    cron: str | None = None
    every: timedelta | None = None
    queue: str = "default"
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    priority: int = 0
    limit_key: str | None = None
    timezone: str = "UTC"
    enabled: bool = True


class Schedule(ScheduleSpec, kw_only=True):
    """One row of `jobengine.schedules`."""

    last_tick: datetime | None = None
    last_job_id: int | None = None
    created_at: datetime | None = None
    changed_by: str | None = None
    changed_at: datetime | None = None

    @property
    def timing(self) -> str:
        """`cron "<expr>" (<tz>)` or `every <interval>`, for people."""
        if self.cron is not None:
            return f"cron {self.cron!r} ({self.timezone})"
        return f"every {self.every}"


def validate(spec: ScheduleSpec) -> None:
    """Raise `InvalidSchedule` naming the field if the schedule could not run."""
    name = spec.name
    if not _NAME.match(name):
        raise InvalidSchedule(
            name or "(no name)", "name",
            "must be 1 to 100 letters, digits or _.:- (starting with a letter or digit)")
    if (spec.cron is None) == (spec.every is None):
        raise InvalidSchedule(name, "cron" if spec.cron is None else "every",
                              "give exactly one of cron and every")
    if spec.every is not None and spec.every < timedelta(seconds=1):
        raise InvalidSchedule(name, "every", f"must be at least 1 second, not {spec.every}")
    zone = _zone(spec)
    if spec.cron is not None:
        try:
            CronSim(_expression(spec.cron), datetime.now(zone))
        except (CronSimError, ValueError) as exc:
            raise InvalidSchedule(name, "cron", f"{spec.cron!r}: {exc}") from None


def _zone(spec: ScheduleSpec) -> ZoneInfo:
    try:
        return ZoneInfo(spec.timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory, a name too long
        raise InvalidSchedule(
            spec.name, "timezone",
            f"unknown time zone {spec.timezone!r} (use an IANA name such as Europe/Berlin)",
        ) from None


def _expression(cron: str) -> str:
    return NICKNAMES.get(cron.strip().lower(), cron.strip())


def ticks_after(spec: ScheduleSpec, after: datetime) -> Iterator[datetime]:
    """The schedule's ticks strictly after `after`, in order, as UTC datetimes."""
    if spec.every is not None:
        step = spec.every.total_seconds()
        n = int((after - _EPOCH).total_seconds() // step) + 1
        while True:
            tick = _EPOCH + timedelta(seconds=n * step)
            if tick > after:
                yield tick
            n += 1
    else:
        assert spec.cron is not None
        zone = _zone(spec)
        for tick in CronSim(_expression(spec.cron), after.astimezone(zone)):
            yield tick.astimezone(UTC)


def next_ticks(spec: ScheduleSpec, after: datetime, count: int = 3) -> list[datetime]:
    """The next `count` ticks after `after` (what `schedule ls` shows)."""
    ticks = ticks_after(spec, after)
    return [next(ticks) for _ in range(count)]


def due_tick(schedule: Schedule, now: datetime) -> tuple[datetime, int] | None:
    """The latest tick due by `now` that has no job yet, and how many earlier ones were missed.

    Ticks are counted from the schedule's last tick, or for a schedule that
    never ticked from when it was created (or last re-timed or resumed): a
    new schedule does not run for the past. None when nothing is due.
    """
    since = schedule.last_tick or (schedule.created_at or now).replace(microsecond=0) - timedelta(
        microseconds=1)
    latest: datetime | None = None
    missed = -1
    if schedule.every is not None:
        step = schedule.every.total_seconds()
        first = int((since - _EPOCH).total_seconds() // step) + 1
        last = int((now - _EPOCH).total_seconds() // step)
        if last >= first:
            latest = _EPOCH + timedelta(seconds=last * step)
            missed = last - first
    else:
        for tick in ticks_after(schedule, since):
            if tick > now:
                break
            latest = tick
            missed += 1
            if missed >= MAX_COUNTED:
                # down for a very long time: jump to the latest tick
                latest = _latest_cron_tick(schedule, now)
                break
    return (latest, missed) if latest is not None else None


def _latest_cron_tick(spec: ScheduleSpec, now: datetime) -> datetime:
    assert spec.cron is not None
    zone = _zone(spec)
    start = (now + timedelta(microseconds=1)).astimezone(zone)
    back = CronSim(_expression(spec.cron), start, reverse=True)
    return next(back).astimezone(UTC)


def from_config(name: str, table: Mapping[str, Any]) -> ScheduleSpec:
    """`[schedules.NAME]` as a checked `ScheduleSpec` (`InvalidSchedule` naming the field)."""
    known = set(ScheduleSpec.__struct_fields__) - {"name"}
    for key in table:
        if key not in known:
            raise InvalidSchedule(name, key, f"unknown setting (known: {', '.join(sorted(known))})")
    values = dict(table)
    if "every" in values:
        try:
            values["every"] = parse_duration(values["every"], name="every")
        except JobEngineError as exc:
            raise InvalidSchedule(name, "every", str(exc).removeprefix("every: ")) from None
        if values["every"] is None:
            raise InvalidSchedule(name, "every", '"forever" is not an interval')
    try:
        spec = msgspec.convert({"name": name, **values}, ScheduleSpec)
    except msgspec.ValidationError as exc:
        field = _field_of(exc)
        raise InvalidSchedule(name, field, str(exc)) from None
    validate(spec)
    return spec


def _field_of(exc: msgspec.ValidationError) -> str:
    match = re.search(r"at `\$\.(\w+)`", str(exc))
    return match.group(1) if match else "?"


__all__ = [
    "NICKNAMES",
    "InvalidSchedule",
    "Schedule",
    "ScheduleSpec",
    "due_tick",
    "from_config",
    "next_ticks",
    "ticks_after",
    "validate",
]
