"""What the operator verbs share: parsing their arguments and printing tables or JSON.

Tables go to stdout through rich (colour only on a terminal, and never with
`NO_COLOR`); `--json` output is the REST API's wire format, so a script gets
the same shapes from `jobengine show --json` as from `curl`.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table
from rich.text import Text

from jobengine.api.inputs import MAX_JSON_DEPTH, nests_deeper_than, too_deep_message
from jobengine.api.scheduling_wire import LimitOut, QueueOut, ScheduleList
from jobengine.api.wire import MAX_BIGINT, HistoryOut, JobOut, TimelineOut
from jobengine.domain.models import EventEnvelope
from jobengine.domain.retention import format_duration
from jobengine.domain.status import SETTLED, JobStatus


class UsageError(ValueError):
    """Raised when a command-line argument is malformed (exit status 2)."""


#: How each status looks in tables and in `watch`.
STATUS_STYLES: dict[str, str] = {
    JobStatus.PENDING: "yellow",
    JobStatus.SCHEDULED: "cyan",
    JobStatus.RUNNING: "bold blue",
    JobStatus.COMPLETED: "green",
    JobStatus.FAILED: "bold red",
    JobStatus.CANCELLED: "magenta",
}

_RELATIVE = re.compile(r"^\+(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def console() -> Console:
    """A console on stdout; wide enough not to wrap ids and timestamps when piped."""
    return Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 160)


def parse_job_id(text: str) -> int:
    """A job id from the command line, or `UsageError`."""
    if not re.fullmatch(r"[0-9]{1,19}", text.strip()) or not 1 <= int(text) <= MAX_BIGINT:
        raise UsageError(f"{text!r} is not a job id (a positive integer)")
    return int(text)


def parse_ids(values: Iterable[str]) -> list[int]:
    """Job ids from repeated and/or comma-separated options (`--depends-on 1,2 --depends-on 3`)."""
    ids: list[int] = []
    for value in values:
        ids.extend(parse_job_id(part) for part in value.split(",") if part.strip())
    return ids


def parse_run_at(text: str, now: datetime | None = None) -> datetime:
    """`+30s`, `+5m`, `+2h`, `+1d` from now, or an ISO 8601 time (no offset: local time)."""
    match = _RELATIVE.match(text.strip())
    if match:
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
        try:
            return (now or datetime.now(UTC)) + timedelta(seconds=seconds)
        except OverflowError:
            raise UsageError(f"--run-at {text!r} is too far in the future") from None
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--run-at {text!r} is neither ISO 8601 (2030-01-01T09:00:00+00:00) "
            "nor relative (+30s, +5m, +2h, +1d)"
        ) from None
    return when if when.tzinfo is not None else when.astimezone()


def parse_payload(text: str) -> dict[str, Any]:
    """The `--payload` value: JSON text, `@FILE` or `@-` (stdin); it must be a JSON object."""
    source = "--payload"
    if text.startswith("@"):
        name = text[1:]
        source = "stdin" if name == "-" else name
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text()
        except OSError as exc:
            reason = exc.strerror or exc
            raise UsageError(f"cannot read the payload from {name}: {reason}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"the payload in {source} is not valid JSON: {exc}") from None
    except RecursionError:  # the parser stops where the stack would run out
        value = None
        deep = True
    else:
        # As the API takes it: one level below the body it is sent in.
        deep = nests_deeper_than(value, MAX_JSON_DEPTH - 1)
    if deep:
        raise UsageError(f"the payload in {source} is {too_deep_message(MAX_JSON_DEPTH - 1)}")
    if not isinstance(value, dict):
        raise UsageError(f"the payload must be a JSON object, not {type(value).__name__}")
    return value


def print_json(value: Any) -> None:
    """Print a wire struct (or any msgspec-encodable value) as indented JSON on stdout."""
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n")


def utc_text(value: datetime | None) -> str:
    """A time for tables: UTC, to the second ("-" for none)."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def status_text(status: str | None) -> Text:
    """A status, coloured."""
    return Text(status or "-", style=STATUS_STYLES.get(status or "", ""))


def jobs_table(jobs: Sequence[JobOut]) -> Table:
    """The `ls` table."""
    table = Table(box=None, header_style="bold")
    for column in ("ID", "KIND", "QUEUE", "STATUS", "ATTEMPT", "PRIORITY", "RUN AT (UTC)",
                   "UPDATED (UTC)"):
        table.add_column(column, no_wrap=True, justify="right" if column == "ID" else "left")
    for j in jobs:
        table.add_row(str(j.id), j.kind, j.queue, status_text(j.status),
                      f"{j.attempt}/{j.max_retries + 1}", str(j.priority), utc_text(j.run_at),
                      utc_text(j.updated_at))
    return table


def job_details(job: JobOut) -> Table:
    """The `show` view: one field per line."""
    table = Table(box=None, show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for name in JobOut.__struct_fields__:
        value = getattr(job, name)
        if name == "status":
            table.add_row(name, status_text(value))
        elif isinstance(value, datetime):
            table.add_row(name, utc_text(value))
        elif isinstance(value, dict | list) or name == "result":
            table.add_row(name, Text(json.dumps(value, default=str)))
        else:
            table.add_row(name, Text("-" if value is None else str(value)))
    return table


def history_table(entries: Sequence[HistoryOut]) -> Table:
    """The `history` table."""
    table = Table(box=None, header_style="bold")
    for column in ("WHEN (UTC)", "FROM", "TO", "ATTEMPT", "REASON", "ACTOR"):
        table.add_column(column, no_wrap=True)
    for e in entries:
        table.add_row(utc_text(e.occurred_at), status_text(e.from_status), status_text(e.to_status),
                      str(e.attempt), e.reason or "-", e.actor or "-")
    return table


def timeline_table(events: Sequence[TimelineOut]) -> Table:
    """The `timeline` table."""
    table = Table(box=None, header_style="bold")
    for column in ("WHEN (UTC)", "EVENT", "FROM", "TO", "ATTEMPT", "REASON", "ACTOR"):
        table.add_column(column, no_wrap=True)
    for e in events:
        env = e.envelope
        table.add_row(utc_text(e.occurred_at), e.event_type, status_text(env.from_status),
                      status_text(env.to_status), str(env.attempt), env.reason or "-",
                      env.actor or "-")
    return table


def event_line(env: EventEnvelope) -> Text:
    """One coloured line per transition, for `watch`."""
    line = Text()
    line.append(env.occurred_at.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3], style="dim")
    line.append(f"  job {env.job_id}", style="bold")
    line.append(f"  {env.kind}@{env.queue}  ")
    line.append(env.event_type, style=STATUS_STYLES.get(env.to_status or "", ""))
    line.append("  ")
    line.append_text(status_text(env.from_status))
    line.append(" -> ")
    line.append_text(status_text(env.to_status))
    line.append(f"  attempt {env.attempt}")
    if env.reason:
        line.append(f"  ({env.reason})", style="dim")
    if env.actor:
        line.append(f"  by {env.actor}", style="dim")
    return line


def age_text(seconds: float | None) -> str:
    """`42s`, `3m05s`, `2h10m`, `4d03h` ("-" for none)."""
    if seconds is None:
        return "-"
    s = int(seconds)
    for size, unit, small, small_unit in ((86400, "d", 3600, "h"), (3600, "h", 60, "m"),
                                          (60, "m", 1, "s")):
        if s >= size:
            return f"{s // size}{unit}{(s % size) // small:02d}{small_unit}"
    return f"{s}s"


def _yes(flag: bool) -> Text:
    return Text("yes", style="bold yellow") if flag else Text("no")


def queues_table(queues: list[QueueOut]) -> Table:
    """The `queues` table."""
    table = Table(box=None, header_style="bold")
    statuses = [s.value for s in JobStatus]
    for column in ("QUEUE", "PAUSED", *(s.upper() for s in statuses), "OLDEST WAITING"):
        table.add_column(column, no_wrap=True,
                         justify="right" if column.lower() in statuses else "left")
    settled = {s.value for s in SETTLED}
    for q in queues:
        # (~: an estimate, from a sample of a big table)
        mark = "~" if q.counts_estimated else ""
        table.add_row(q.name, _yes(q.paused),
                      *(f"{mark if s in settled else ''}{q.counts.get(s, 0)}" for s in statuses),
                      age_text(q.oldest_waiting_seconds))
    return table


def timing_text(cron: str | None, every: float | None, timezone: str) -> str:
    """`cron 0 3 * * * (Europe/Berlin)` or `every 30s`."""
    if cron is not None:
        return f"cron {cron} ({timezone})"
    return f"every {format_duration(timedelta(seconds=every or 0))}"


def schedules_table(schedules: ScheduleList) -> Table:
    """The `schedule ls` table."""
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "TIMING", "KIND", "QUEUE", "ENABLED", "LAST TICK (UTC)",
                   "NEXT TICKS (UTC)"):
        table.add_column(column, no_wrap=True)
    for s in schedules.schedules:
        ticks = ", ".join(utc_text(t) for t in s.next_ticks) if s.enabled else "(paused)"
        table.add_row(s.name, timing_text(s.cron, s.every, s.timezone), s.kind, s.queue,
                      Text("yes", "green") if s.enabled else Text("no", "bold yellow"),
                      utc_text(s.last_tick), ticks)
    return table


def rate_text(max_starts: int | None, per: float | None) -> str:
    """A rate limit as `jobengine limit set --rate` takes it: `10/1s` ("-" for none)."""
    if max_starts is None or per is None:
        return "-"
    if per < 1 and round(per * 1000, 6).is_integer():
        return f"{max_starts}/{round(per * 1000)}ms"
    return f"{max_starts}/{format_duration(timedelta(seconds=per))}"


def limits_table(limits: list[LimitOut]) -> Table:
    """The `limit ls` table."""
    table = Table(box=None, header_style="bold")
    for column in ("KEY", "MAX RUNNING", "RATE", "RUNNING", "RECENT STARTS", "WAITING", "HELD"):
        table.add_column(column, no_wrap=True, justify="left" if column == "KEY" else "right")
    for limit in limits:
        table.add_row(
            limit.key, "-" if limit.max_running is None else str(limit.max_running),
            rate_text(limit.max_starts, limit.per), str(limit.running), str(limit.recent_starts),
            str(limit.waiting), Text(str(limit.held), style="bold yellow" if limit.held else ""))
    return table
