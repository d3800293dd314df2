"""Scheduling for operators: `queues`, `pause`, `resume`, `schedule ...`, `limit ...`.

Like the job verbs they work on the database directly (actor `cli`), and
`--json` prints the REST API's shapes. Every argument is checked before
anything is written; bad input (an invalid schedule or limit, or a name
that does not exist) is one line on stderr naming the schedule or key and
the field, with exit status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial
from typing import Any

from rich.table import Table

from jobengine.api.scheduling import save_schedule, schedule_out, set_queue_paused
from jobengine.api.scheduling_wire import (
    LimitOut,
    QueueOut,
    QueueOverview,
    ScheduleIn,
    ScheduleList,
    ScheduleOut,
)
from jobengine.api.wire import INT32_MAX, INT32_MIN, NAME_PATTERN
from jobengine.cli.context import add_common_options, fail
from jobengine.cli.jobs_cmd import run_with_store
from jobengine.cli.output import (
    UsageError,
    console,
    limits_table,
    parse_payload,
    print_json,
    queues_table,
    rate_text,
    schedules_table,
    utc_text,
)
from jobengine.domain.errors import InvalidLimit, InvalidSchedule
from jobengine.store import JobStore, SchedulingStore
from jobengine.store.executor import connection_of

Action = Callable[[SchedulingStore], Awaitable[int]]

EXAMPLES = """\
examples:
  jobengine queues
  jobengine pause nightly                 # no new claims from queue nightly; running jobs finish
  jobengine resume nightly
  jobengine schedule add nightly-report --kind report --cron '0 3 * * *' \\
      --timezone Europe/Berlin --payload '{"scope": "all"}'
  jobengine schedule add heartbeat --kind ping --every 30s
  jobengine schedule ls                   # with the next three ticks of each
  jobengine schedule pause nightly-report
  jobengine schedule rm heartbeat
  jobengine limit set api --max-running 5 --rate 10/1s
  jobengine limit ls
  jobengine limit rm api --rate
"""

_RATE = re.compile(r"^\s*([0-9]{1,9})\s*/\s*([0-9]{1,9}(?:\.[0-9]{1,9})?)?\s*(ms|s|m|h|d|w)?\s*$")
_RATE_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_NAME = re.compile(NAME_PATTERN)
#: the bounds the database checks (rate_limits_max_starts_valid, rate_limits_per_valid)
MAX_STARTS = 1_000_000
MIN_PER, MAX_PER = timedelta(milliseconds=1), timedelta(days=31)


def _sub(parent: argparse._SubParsersAction[argparse.ArgumentParser], verb: str, summary: str,
         *, json: bool = False) -> argparse.ArgumentParser:
    p = parent.add_parser(verb, help=summary, description=summary[0].upper() + summary[1:] + ".",
                          epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(p)
    if json:
        p.add_argument("--json", action="store_true", help="print the REST API's JSON")
    return p


def _group(sub: argparse._SubParsersAction[argparse.ArgumentParser], noun: str,
           summary: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    p = sub.add_parser(noun, help=summary, description=summary[0].upper() + summary[1:] + ".",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    return verbs


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `queues`, `pause`, `resume`, `schedule` and `limit`."""
    _sub(sub, "queues", "list queues: jobs by status, paused, the oldest waiting job",
         json=True).set_defaults(func=_queues)
    for verb, summary, paused in (
            ("pause", "pause a queue: no new claims (running jobs finish)", True),
            ("resume", "resume a paused queue", False)):
        p = _sub(sub, verb, summary, json=True)
        p.add_argument("queue", help="the queue's name")
        p.set_defaults(func=_command(partial(_set_paused, paused=paused)))

    verbs = _group(sub, "schedule", "periodic jobs: list, add, remove, pause, resume")
    _sub(verbs, "ls", "list schedules with their next three ticks",
         json=True).set_defaults(func=_schedule_ls)
    p = _sub(verbs, "add", "create or redefine a schedule", json=True)
    p.add_argument("name", help="the schedule's name")
    p.add_argument("--kind", required=True, help="which handler runs its jobs")
    p.add_argument("--cron", help="5-field cron expression (or @daily, @hourly, ...)")
    p.add_argument("--every", metavar="DURATION", help="an interval: 30s, 5m, 2h, 1d (>= 1s)")
    p.add_argument("--queue", default="default")
    p.add_argument("--payload", default="{}", help="each job's payload: JSON, @FILE or @-")
    p.add_argument("--priority", default="0", help="higher runs first (default 0)")
    p.add_argument("--limit-key", help="each job's limit_key")
    p.add_argument("--timezone", default="UTC", help="IANA time zone of --cron (default UTC)")
    p.add_argument("--paused", action="store_true",
                   help="add it paused (without: a new schedule is enabled, an existing one "
                        "keeps its state)")
    p.set_defaults(func=_schedule_add)
    for verb, summary, build in (
            ("rm", "remove a schedule (the jobs it created stay)", _schedule_rm),
            ("pause", "pause a schedule: no ticks until resumed",
             partial(_set_enabled, enabled=False)),
            ("resume", "resume a schedule: ticks from now (those missed are skipped)",
             partial(_set_enabled, enabled=True))):
        p = _sub(verbs, verb, summary, json=verb != "rm")
        p.add_argument("name", help="the schedule's name")
        p.set_defaults(func=_command(build))

    verbs = _group(sub, "limit", "concurrency and rate limits by limit key")
    _sub(verbs, "ls", "list limits: what each allows and holds back now",
         json=True).set_defaults(func=_limit_ls)
    p = _sub(verbs, "set", "set a key's concurrency and/or rate limit")
    p.add_argument("key", help="the limit key (jobs' limit_key)")
    p.add_argument("--max-running", metavar="N", help="at most N of the key's jobs running")
    p.add_argument("--rate", metavar="N/DURATION",
                   help="at most N starts in any window of DURATION: 10/1s, 100/1m, 5/500ms")
    p.set_defaults(func=_limit_set)
    p = _sub(verbs, "rm", "remove a key's limits (both, or the one named)")
    p.add_argument("key", help="the limit key")
    p.add_argument("--concurrency", action="store_true", help="only its concurrency limit")
    p.add_argument("--rate", action="store_true", help="only its rate limit")
    p.set_defaults(func=_limit_rm)


def _command(build: Callable[[argparse.Namespace], Action]) -> Callable[[argparse.Namespace], int]:
    """Check the arguments (exit 2, nothing opened), then run the action on the store.

    An invalid schedule or limit found by the database is exit 2 as well.
    """

    def run(args: argparse.Namespace) -> int:
        try:
            action = build(args)
        except (UsageError, InvalidSchedule, InvalidLimit) as exc:
            return fail(str(exc), 2)

        async def on_store(store: JobStore) -> int:
            try:
                return await action(SchedulingStore(store.db))
            except (InvalidSchedule, InvalidLimit) as exc:
                return fail(str(exc), 2)

        return run_with_store(args, on_store)

    return run


def _listing(args: argparse.Namespace, as_json: Any, rows: list[Any],
             table: Callable[[], Table], nothing: str) -> int:
    """A listing verb's output: JSON with --json, else the table (or `nothing` on stderr)."""
    if args.json:
        print_json(as_json)
    elif not rows:
        print(nothing, file=sys.stderr)
    else:
        console().print(table())
    return 0


def _queue_name(text: str) -> str:
    if not _NAME.fullmatch(text):
        raise UsageError(f"queue {text[:100]!r}: name: must be 1-100 characters from "
                         "A-Z a-z 0-9 _ . : -, starting with a letter or digit")
    return text


@_command
def _queues(args: argparse.Namespace) -> Action:
    async def action(store: SchedulingStore) -> int:
        queues = [QueueOut.from_info(q) for q in await store.queues()]
        limits = [LimitOut.from_info(limit) for limit in await store.limits()] if args.json else []
        return _listing(args, QueueOverview(queues=queues, limits=limits), queues,
                        lambda: queues_table(queues), "no queues")

    return action


def _set_paused(args: argparse.Namespace, paused: bool) -> Action:
    name = _queue_name(args.queue)

    async def action(store: SchedulingStore) -> int:
        queue = await set_queue_paused(store, name, paused)
        if args.json:
            print_json(queue)
        elif paused:
            print(f"queue {name}: paused (no new claims; running jobs finish)")
        else:
            print(f"queue {name}: resumed")
        return 0

    return action


@_command
def _schedule_ls(args: argparse.Namespace) -> Action:
    async def action(store: SchedulingStore) -> int:
        schedules, now = await store.schedules()
        listing = ScheduleList(schedules=[ScheduleOut.from_schedule(s, now) for s in schedules])
        return _listing(args, listing, listing.schedules, lambda: schedules_table(listing),
                        "no schedules")

    return action


def _schedule_state(out: ScheduleOut) -> str:
    if not out.enabled:
        return "paused"
    if out.next_ticks:
        return f"next tick {utc_text(out.next_ticks[0])} UTC"
    return "enabled"


@_command
def _schedule_add(args: argparse.Namespace) -> Action:
    name = args.name
    try:
        payload = parse_payload(args.payload)
    except UsageError as exc:
        raise InvalidSchedule(name, "payload", str(exc)) from None
    if not re.fullmatch(r"-?[0-9]{1,10}", args.priority.strip()):
        raise InvalidSchedule(name, "priority",
                              f"must be an integer from {INT32_MIN} to {INT32_MAX}")
    body = ScheduleIn(kind=args.kind, cron=args.cron, every=args.every, queue=args.queue,
                      payload=payload, priority=int(args.priority), limit_key=args.limit_key,
                      timezone=args.timezone, enabled=False if args.paused else None)
    spec = body.to_spec(name)

    async def action(store: SchedulingStore) -> int:
        out, created = await save_schedule(store, spec, keep_enabled=body.enabled is None)
        if args.json:
            print_json(out)
        else:
            what = {True: "created", False: "updated", None: "unchanged"}[created]
            print(f"schedule {name}: {what}; {_schedule_state(out)}")
        return 0

    return action


def _unknown_schedule(name: str) -> int:
    return fail(f"schedule {name}: name: no such schedule (see jobengine schedule ls)", 2)


def _schedule_rm(args: argparse.Namespace) -> Action:
    async def action(store: SchedulingStore) -> int:
        if not await store.remove_schedule(args.name):
            return _unknown_schedule(args.name)
        print(f"schedule {args.name}: removed (the jobs it created stay)")
        return 0

    return action


def _set_enabled(args: argparse.Namespace, enabled: bool) -> Action:
    async def action(store: SchedulingStore) -> int:
        out = await schedule_out(store, args.name) if await store.set_schedule_enabled(
            args.name, enabled) else None
        if out is None:
            return _unknown_schedule(args.name)
        if args.json:
            print_json(out)
        else:
            print(f"schedule {args.name}: resumed; {_schedule_state(out)}" if enabled
                  else f"schedule {args.name}: paused")
        return 0

    return action


def parse_rate(key: str, text: str) -> tuple[int, timedelta]:
    """`N/DURATION` (`10/1s`, `100/1m`, `5/500ms`, `60/h`) as (max_starts, per)."""
    match = _RATE.match(text)
    if match is None or (match.group(2) is None and match.group(3) is None):
        raise InvalidLimit(key, "rate", f"{text[:40]!r} is not N/DURATION "
                                        "(e.g. 10/1s, 100/1m, 5/500ms)")
    max_starts = int(match.group(1))
    per = timedelta(seconds=float(match.group(2) or 1) * _RATE_UNITS[match.group(3) or "s"])
    if not 1 <= max_starts <= MAX_STARTS:
        raise InvalidLimit(key, "rate", f"the number of starts must be 1 to {MAX_STARTS}, "
                                        f"not {max_starts}")
    if not MIN_PER <= per <= MAX_PER:
        raise InvalidLimit(key, "rate", f"the window must be 1ms to 31d, not {text[:40]!r}")
    return max_starts, per


def _limit_key(text: str) -> str:
    if not 1 <= len(text) <= 200:
        raise InvalidLimit(text[:100] or "''", "key", "must be 1 to 200 characters")
    return text


@_command
def _limit_ls(args: argparse.Namespace) -> Action:
    async def action(store: SchedulingStore) -> int:
        limits = [LimitOut.from_info(limit) for limit in await store.limits()]
        return _listing(args, {"limits": limits}, limits, lambda: limits_table(limits),
                        "no limits")

    return action


@_command
def _limit_set(args: argparse.Namespace) -> Action:
    key = _limit_key(args.key)
    if args.max_running is None and args.rate is None:
        raise UsageError(f"limit {key}: give --max-running N and/or --rate N/DURATION")
    max_running: int | None = None
    if args.max_running is not None:
        if not re.fullmatch(r"[0-9]{1,10}", args.max_running.strip()) or not (
                1 <= int(args.max_running) <= INT32_MAX):
            raise InvalidLimit(key, "max_running",
                               f"must be a whole number from 1 to {INT32_MAX}, "
                               f"not {args.max_running[:40]!r}")
        max_running = int(args.max_running)
    rate = parse_rate(key, args.rate) if args.rate is not None else None

    async def action(store: SchedulingStore) -> int:
        async with connection_of(store.db) as conn, conn.transaction():  # both or neither
            inside = SchedulingStore(conn)
            if max_running is not None:
                await inside.set_concurrency_limit(key, max_running)
            if rate is not None:
                await inside.set_rate_limit(key, *rate)
        for limit in [LimitOut.from_info(x) for x in await store.limits() if x.key == key]:
            running = "-" if limit.max_running is None else limit.max_running
            print(f"limit {key}: max_running {running}, "
                  f"rate {rate_text(limit.max_starts, limit.per)}")
        return 0

    return action


@_command
def _limit_rm(args: argparse.Namespace) -> Action:
    key = _limit_key(args.key)
    both = args.concurrency == args.rate  # neither flag: both limits

    async def action(store: SchedulingStore) -> int:
        removed = await store.remove_limits(key, concurrency=both or args.concurrency,
                                            rate=both or args.rate)
        which = "key" if both else ("concurrency" if args.concurrency else "rate")
        if not removed:
            what = "limit" if both else f"{which} limit"
            return fail(f"limit {key}: {which}: no such {what} (see jobengine limit ls)", 2)
        print(f"limit {key}: {removed} limit{'s' if removed > 1 else ''} removed")
        return 0

    return action
