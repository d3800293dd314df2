"""`jobengine demo`: the whole lifecycle on the embedded default, with no set-up."""

from __future__ import annotations

import argparse
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from rich.console import Console
from rich.table import Table

from jobengine.cli.context import (
    add_common_options,
    ensure_schema,
    resolve_dsn,
    settings_from_args,
)
from jobengine.cli.logs import configure_logging
from jobengine.daemon import DaemonConfig, DaemonSettings, from_callables, run_daemon
from jobengine.domain import Job, JobSpec, JobStatus, RetryPolicy, RetryStrategy
from jobengine.domain.errors import JobEngineError
from jobengine.store import JobStore, create_pool

EXAMPLE = """\
example:
  jobengine demo            # embedded PostgreSQL under ~/.local/share/jobengine
  jobengine demo --dsn postgresql://postgres@localhost/scratch

It creates a small DAG (fan-out, fan-in, a job that fails once and succeeds on
retry, a cancelled job and a dependent cancelled with it), runs a daemon until
every job settles, and prints each job's timeline.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `demo` command."""
    p = sub.add_parser(
        "demo", help="show the whole lifecycle on a small DAG (no set-up needed)",
        description="Run a small DAG of jobs through a daemon and print their timelines.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_options(p)
    p.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds")
    p.set_defaults(func=run)


async def extract(job: Job) -> dict[str, Any]:
    """Demo handler: pretend to fetch rows."""
    await anyio.sleep(0.05)
    return {"rows": 3}


async def transform(job: Job) -> dict[str, Any]:
    """Demo handler: pretend to transform one shard."""
    await anyio.sleep(0.05)
    return {"shard": job.payload.get("shard"), "ok": True}


async def flaky(job: Job) -> str:
    """Demo handler: fails on its first attempt, succeeds on the retry."""
    if job.attempt == 1:
        raise ConnectionError("upstream timed out (this demo job always fails once)")
    return "succeeded on retry"


async def load(job: Job) -> str:
    """Demo handler: the fan-in step."""
    return "loaded"


HANDLERS = {"demo.extract": extract, "demo.transform": transform, "demo.flaky": flaky,
            "demo.load": load, "demo.report": load}


def run(args: argparse.Namespace) -> int:
    """Create the DAG, run it to the end, print the timelines."""
    settings = settings_from_args(args)
    configure_logging("warning")
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # piped: room for the whole timeline row
    queue = f"demo-{random.getrandbits(32):08x}"

    async def main() -> int:
        dsn, _embedded = resolve_dsn(settings)
        # The demo always brings the schema up to date: it is meant to just work.
        await ensure_schema(dsn, embedded=True, actor="cli")
        pool = await create_pool(dsn, "cli", min_size=1, max_size=4)
        try:
            store = JobStore(pool)
            ids = await _create_dag(store, queue)
            console.print(f"[bold]jobengine demo[/]: {len(ids)} jobs in queue {queue}")
            config = DaemonConfig(
                daemon=DaemonSettings(queues=[queue], concurrency=4, poll_interval=0.5),
                retry=RetryPolicy(strategy=RetryStrategy.FIXED, base_delay=0.3, jitter=False),
            )
            with anyio.fail_after(args.timeout):
                async with run_daemon(config, dsn, handlers=from_callables(HANDLERS)):
                    await _cancel_the_doomed(store, ids)
                    await _wait_settled(store, list(ids.values()))
            await _print_timelines(console, store, ids)
        finally:
            await pool.close()
        return 0

    try:
        return anyio.run(main)
    except TimeoutError as exc:
        raise JobEngineError(f"the demo did not settle within {args.timeout:g}s") from exc


async def _create_dag(store: JobStore, queue: str) -> dict[str, int]:
    ids: dict[str, int] = {}

    async def add(name: str, kind: str, **kw: Any) -> None:
        job, _ = await store.insert(JobSpec(kind=kind, queue=queue, payload={"step": name}, **kw))
        ids[name] = job.id

    await add("extract", "demo.extract")
    for shard in ("a", "b"):
        await add(f"transform-{shard}", "demo.transform", depends_on=[ids["extract"]])
    await add("flaky", "demo.flaky", depends_on=[ids["extract"]], max_retries=2)
    await add("load", "demo.load",
              depends_on=[ids["transform-a"], ids["transform-b"], ids["flaky"]])
    # Due in an hour, so it is still waiting when the demo cancels it...
    await add("cleanup", "demo.load", run_at=datetime.now(UTC) + timedelta(hours=1))
    # ...and this one waits on it, so the cancel cascades.
    await add("report", "demo.report", depends_on=[ids["cleanup"]])
    return ids


async def _cancel_the_doomed(store: JobStore, ids: dict[str, int]) -> None:
    await store.cancel(ids["cleanup"])


async def _wait_settled(store: JobStore, job_ids: list[int]) -> None:
    while True:
        jobs = await store.get_many(job_ids)
        if all(j.status in (JobStatus.COMPLETED, JobStatus.CANCELLED)
               or (j.status is JobStatus.FAILED and j.attempts_counted > j.max_retries)
               for j in jobs):
            return
        await anyio.sleep(0.1)


async def _print_timelines(console: Console, store: JobStore, ids: dict[str, int]) -> None:
    names = {v: k for k, v in ids.items()}
    table = Table(title="timeline (every row is also in job_history and was NOTIFYed)")
    for column in ("+ms", "job", "event", "transition", "attempt", "reason"):
        table.add_column(column)
    events = []
    for job_id in ids.values():
        events.extend(await store.timeline(job_id))
    events.sort(key=lambda e: e.id)
    t0 = events[0].occurred_at if events else None
    for e in events:
        env = e.envelope
        offset = int((e.occurred_at - t0).total_seconds() * 1000) if t0 else 0
        src = env.from_status.value if env.from_status else "(insert)"
        dst = env.to_status.value if env.to_status else ""
        table.add_row(str(offset), f"{names[e.job_id]} #{e.job_id}", e.event_type,
                      f"{src} → {dst}", str(env.attempt), env.reason or "")
    console.print(table)
    final = await store.get_many(ids.values())
    summary = ", ".join(f"{names[j.id]}={j.status.value}" for j in final)
    console.print(f"[bold]settled:[/] {summary}")
