"""The operator verbs: `submit`, `show`, `ls`, `cancel`, `retry`, `history`, `timeline`.

They work on the database directly through the store (actor `cli` in the
history), with the daemon's configuration: `--config`, `--dsn`,
`JOBENGINE_*`, or the embedded PostgreSQL. Exit status: 0 done, 1 the
operation failed (unknown job, illegal transition, no database), 2 a
malformed argument; either way one line on stderr and nothing changed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import anyio
import msgspec

from jobengine.api.wire import (
    INT32_MAX,
    INT32_MIN,
    MAX_SECONDS,
    HistoryList,
    HistoryOut,
    JobOut,
    JobPage,
    RetryOut,
    TimelineList,
    TimelineOut,
)
from jobengine.cli.context import add_common_options, fail, open_store, settings_from_args
from jobengine.cli.output import (
    UsageError,
    console,
    history_table,
    job_details,
    jobs_table,
    parse_ids,
    parse_job_id,
    parse_payload,
    parse_run_at,
    print_json,
    timeline_table,
)
from jobengine.domain.models import JobSpec
from jobengine.domain.status import JobStatus
from jobengine.store import JobStore

Action = Callable[[JobStore], Awaitable[int]]

_VERBS: dict[str, tuple[str, str]] = {
    "submit": ("create a job and print its id", """\
examples:
  jobengine submit email --payload '{"to": "a@example.com"}'
  jobengine submit report --payload @params.json --depends-on 12,13 --run-at +5m
  jobengine submit backup --queue nightly --max-retries 5 --timeout 600 \
      --idempotency-key backup-2030-01-01
  jobengine submit fetch --limit-key api.example.com
"""),
    "show": ("show one job",
             "examples:\n  jobengine show 42\n  jobengine show 42 --json | jq .status\n"),
    "ls": ("list jobs, oldest first", """\
examples:
  jobengine ls --status failed
  jobengine ls --kind email --limit 20 --after 120
  jobengine ls --json | jq '.jobs[].id'
"""),
    "cancel": ("cancel a job that has not ended", "example:\n  jobengine cancel 42\n"),
    "retry": ("run a failed job again (failed -> scheduled)", "example:\n  jobengine retry 42\n"),
    "history": ("show a job's status changes", "example:\n  jobengine history 42\n"),
    "timeline": ("show a job's timeline events", "example:\n  jobengine timeline 42 --json\n"),
}


def _parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], verb: str,
            description: str | None = None) -> argparse.ArgumentParser:
    summary, epilog = _VERBS[verb]
    p = sub.add_parser(
        verb, help=summary, description=description or summary[0].upper() + summary[1:] + ".",
        epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_options(p)
    return p


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the operator verbs."""
    p = _parser(sub, "submit", "Create a job (pending) and print its id; with an "
                "idempotency key already taken, print the existing job's id.")
    p.add_argument("kind", help="which handler runs the job")
    p.add_argument("--payload", default="{}", help="a JSON object, @FILE, or @- for stdin")
    p.add_argument("--queue", default="default")
    p.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    p.add_argument("--run-at", help="ISO 8601 time, or +30s / +5m / +2h / +1d from now")
    p.add_argument("--depends-on", action="append", default=[], metavar="ID[,ID...]",
                   help="jobs that must complete first (repeatable)")
    p.add_argument("--max-retries", type=int, default=3, help="retries after the first attempt")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="a running attempt longer than this fails")
    p.add_argument("--requires-network", action="store_true",
                   help="needs egress (never scheduled in sealed mode)")
    p.add_argument("--idempotency-key", help="a second submit with this key creates nothing")
    p.add_argument("--limit-key", help="group the job under this key's concurrency and rate "
                   "limits (jobengine limit set)")
    p.set_defaults(func=_submit)

    p = _parser(sub, "show")
    p.add_argument("id", help="the job's id")
    p.add_argument("--json", action="store_true", help="print the job as JSON")
    p.set_defaults(func=_show)

    p = _parser(sub, "ls")
    p.add_argument("--status", choices=[s.value for s in JobStatus])
    p.add_argument("--kind")
    p.add_argument("--queue")
    p.add_argument("--limit", type=int, default=50, help="at most this many (1-1000, default 50)")
    p.add_argument("--after", type=int, metavar="ID", help="only jobs with a greater id")
    p.add_argument("--json", action="store_true", help="print JSON ({jobs, next})")
    p.set_defaults(func=_ls)

    for verb, func in (("cancel", _cancel), ("retry", _retry), ("history", _history),
                       ("timeline", _timeline)):
        p = _parser(sub, verb)
        p.add_argument("id", help="the job's id")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        p.set_defaults(func=func)


def run_with_store(args: argparse.Namespace, action: Action) -> int:
    """Open the store on the configured database (actor `cli`) and run `action` on it."""
    settings = settings_from_args(args)

    async def go() -> int:
        async with open_store(settings, "cli", max_size=2) as store:
            return await action(store)

    return anyio.run(go)


def _guarded(build: Callable[[argparse.Namespace], Action]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            action = build(args)  # every argument is checked before the database is opened
        except UsageError as exc:
            return fail(str(exc), 2)
        return run_with_store(args, action)

    return run


@_guarded
def _submit(args: argparse.Namespace) -> Action:
    if args.timeout is not None and not 0 < args.timeout <= MAX_SECONDS:
        raise UsageError("--timeout must be a number of seconds > 0")
    if not INT32_MIN <= args.priority <= INT32_MAX:
        raise UsageError(f"--priority must be between {INT32_MIN} and {INT32_MAX}")
    if not 0 <= args.max_retries <= INT32_MAX:
        raise UsageError(f"--max-retries must be between 0 and {INT32_MAX}")
    spec = JobSpec(
        kind=args.kind, queue=args.queue, payload=parse_payload(args.payload),
        priority=args.priority,
        run_at=parse_run_at(args.run_at) if args.run_at else None,
        depends_on=parse_ids(args.depends_on), max_retries=args.max_retries,
        timeout=timedelta(seconds=args.timeout) if args.timeout is not None else None,
        requires_network=args.requires_network, limit_key=args.limit_key,
        idempotency_key=args.idempotency_key,
    )

    async def action(store: JobStore) -> int:
        job, created = await store.insert(spec)
        if not created:
            print(f"jobengine: job {job.id} already has idempotency key "
                  f"{spec.idempotency_key!r}; nothing created", file=sys.stderr)
        print(job.id)
        return 0

    return action


@_guarded
def _ls(args: argparse.Namespace) -> Action:
    if not 1 <= args.limit <= 1000:
        raise UsageError("--limit must be between 1 and 1000")

    async def action(store: JobStore) -> int:
        jobs = await store.list_jobs(
            status=JobStatus(args.status) if args.status else None, kind=args.kind,
            queue=args.queue, after=args.after, limit=args.limit + 1,
        )
        more = len(jobs) > args.limit
        page = JobPage(jobs=[JobOut.from_job(j) for j in jobs[: args.limit]],
                       next=jobs[args.limit - 1].id if more else None)
        if args.json:
            print_json(page)
        elif not page.jobs:
            print("no jobs", file=sys.stderr)
        else:
            console().print(jobs_table(page.jobs))
            if page.next is not None:
                print(f"more: jobengine ls --after {page.next}", file=sys.stderr)
        return 0

    return action


def _show_one(
    args: argparse.Namespace,
    fetch: Callable[[JobStore, int], Awaitable[Any]],
    table: Callable[[Any], Any],
) -> Action:
    """A read verb on one job: JSON with --json, else a rich table."""
    job_id = parse_job_id(args.id)

    async def action(store: JobStore) -> int:
        found = await fetch(store, job_id)
        if args.json:
            print_json(found)
        else:
            console().print(table(found))
        return 0

    return action


@_guarded
def _show(args: argparse.Namespace) -> Action:
    async def fetch(store: JobStore, job_id: int) -> JobOut:
        return JobOut.from_job(await store.get(job_id))

    return _show_one(args, fetch, job_details)


@_guarded
def _history(args: argparse.Namespace) -> Action:
    async def fetch(store: JobStore, job_id: int) -> HistoryList:
        return HistoryList(history=[HistoryOut.from_entry(e) for e in await store.history(job_id)])

    return _show_one(args, fetch, lambda found: history_table(found.history))


@_guarded
def _timeline(args: argparse.Namespace) -> Action:
    async def fetch(store: JobStore, job_id: int) -> TimelineList:
        events = [TimelineOut.from_event(e) for e in await store.timeline(job_id)]
        return TimelineList(timeline=events)

    return _show_one(args, fetch, lambda found: timeline_table(found.timeline))


def _transition(verb: str, args: argparse.Namespace) -> Action:
    job_id = parse_job_id(args.id)

    async def action(store: JobStore) -> int:
        before = await store.get(job_id)
        if verb == "cancel":
            job = await store.cancel(job_id)
            if args.json:
                print_json(JobOut.from_job(job))
            else:
                print(f"job {job.id}: {before.status} -> {job.status}")
            return 0
        retried = await store.retry(job_id)
        job, stays = retried.job, retried.stays_cancelled
        if args.json:
            print_json(RetryOut(**msgspec.structs.asdict(JobOut.from_job(job)),
                                stays_cancelled=stays))
        else:
            print(f"job {job.id}: {before.status} -> {job.status}")
            if stays:
                listed = ", ".join(str(i) for i in stays)
                print(f"dependents that stay cancelled (cancelled is final; submit them again "
                      f"to run them): {listed}")
        return 0

    return action


@_guarded
def _cancel(args: argparse.Namespace) -> Action:
    return _transition("cancel", args)


@_guarded
def _retry(args: argparse.Namespace) -> Action:
    return _transition("retry", args)
