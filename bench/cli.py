"""`python -m bench run`: the whole comparison in one command (see bench/README.md)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import db, machine, peers_env, report
from bench.config import BENCH_DIR, FULL, QUICK, Options
from bench.peers._cpu import POSTMASTER_ENV
from bench.procs import StepFailed
from bench.results import Results, catalogue
from bench.systems import ALL, System, select
from bench.workloads import WORKLOADS, Context
from bench.workloads.common import database_name
from bench.workloads.scale import template_name


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the workloads and print the table")
    run.add_argument("--dsn", help="admin DSN of the PostgreSQL to use (may CREATE DATABASE); "
                     "default: start the embedded PostgreSQL in --embedded-dir")
    run.add_argument("--embedded-dir", type=Path, default=BENCH_DIR / "out" / "pgdata")
    run.add_argument("--quick", action="store_true", help="tiny sizes, 1 repetition (CI smoke)")
    run.add_argument("--only", default=",".join(WORKLOADS),
                     help=f"comma-separated workloads (default: all: {', '.join(WORKLOADS)})")
    run.add_argument("--systems", default=",".join(ALL),
                     help="comma-separated systems (default: all)")
    run.add_argument("--reps", type=int, help="repetitions (default 3; --quick: 1)")
    run.add_argument("--limit", type=float, default=120.0,
                     help="seconds one run may take before it is reported as a bound")
    run.add_argument("--out", type=Path, default=BENCH_DIR / "out" / "results.json")
    run.add_argument("--format", choices=["auto", "rich", "markdown"], default="auto")
    run.add_argument("--db-prefix", default="bench",
                     help="databases are named PREFIX_<system> (default: bench)")
    run.add_argument("--scale-rows", type=int,
                     help="finished jobs in the scale workload (default 10,000,000; --quick: "
                     "5,000)")
    return p


def _workloads(only: str) -> list[str]:
    names = [w.strip() for w in only.split(",") if w.strip()]
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workload(s): {', '.join(unknown)}; "
                         f"choose from {', '.join(WORKLOADS)}")
    return [w for w in WORKLOADS if w in names]


def _print_header(info: dict[str, Any], warnings: list[str]) -> None:
    m, s = info["machine"], info["server"]
    print(f"machine: {m['cores']} cores, {m['cpu_model']}, {m['memory_gb']} GB, "
          f"Python {m['python']}")
    print(f"server: {s['version']}")
    print("settings: " + ", ".join(f"{k}={v}" for k, v in s["settings"].items()))
    peers = ", ".join(f"{k} {v}" for k, v in info["peers"].items())
    print(f"jobengine {info['jobengine']['version']} at {info['jobengine']['commit']}"
          + (f"; {peers}" if peers else ""))
    for w in warnings:
        print(f"WARNING: {w}")
    print(flush=True)


def _peer_envs(systems: list[System], results: Results) -> tuple[list[System], dict[str, str]]:
    """Build the venvs the chosen peers need; (the systems that can run, their versions).

    A peer whose venv cannot be built here (oban without a Python 3.12+, a
    failed pip install) is left out with the reason under the table.
    """
    versions: dict[str, str] = {}
    usable = []
    for name in dict.fromkeys(s.env for s in systems if s.env):
        env = peers_env.ENVS[name]
        try:
            env.ensure()
        except peers_env.Unavailable as exc:
            for s in systems:
                if s.env == name:
                    results.skip(f"{s.label}: not run, its virtualenv could not be built: {exc}")
            continue
        versions.update(env.versions())
        usable.append(name)
    return [s for s in systems if not s.env or s.env in usable], versions


async def _run(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    if args.scale_rows is not None:
        sizes = dataclasses.replace(sizes, scale_rows=args.scale_rows)
    options = Options(sizes=sizes, reps=sizes.reps, limit=args.limit,
                      out_dir=args.out.parent, db_prefix=args.db_prefix).with_reps(args.reps)
    results = Results()
    systems, versions = _peer_envs(select(args.systems), results)
    workloads = _workloads(args.only)
    admin = args.dsn or machine.start_embedded(args.embedded_dir.resolve())
    server = await machine.server(admin)
    postmaster = await machine.postmaster(admin)
    if postmaster is None:
        results.skip("PostgreSQL CPU: the server's processes are not visible from here "
                     "(not a local server): CPU per job counts the client only")
    else:
        os.environ[POSTMASTER_ENV] = str(postmaster)  # the steps measure it too
    info: dict[str, Any] = {
        "machine": machine.machine(), "server": {**server, "postmaster_pid": postmaster},
        "jobengine": machine.jobengine_version(), "peers": versions,
        "sizes": sizes.__dict__, "reps": options.reps, "limit": options.limit,
        "workloads": workloads, "systems": [s.name for s in systems],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    warnings = machine.warnings(server)
    _print_header(info, warnings)
    ctx = Context(admin, systems, options, results, postmaster)
    failed = await _workloads_run(ctx, workloads)
    info["warnings"] = warnings
    info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for system in systems:
        await db.drop(admin, database_name(ctx, system))
    await db.drop(admin, template_name(ctx))
    _print_results(args, ctx, info)
    return 1 if failed else 0


async def _workloads_run(ctx: Context, workloads: list[str]) -> list[str]:
    failed = []
    for name in workloads:
        ctx.log(f"== {name}")
        try:
            await WORKLOADS[name](ctx)
        except (StepFailed, OSError) as exc:
            failed.append(name)
            ctx.results.note(f"workload {name} failed: {exc}")
            ctx.log(f"workload {name} failed: {exc}")
    return failed


def _print_results(args: argparse.Namespace, ctx: Context, info: dict[str, Any]) -> None:
    s = ctx.sizes
    metrics = catalogue(s)
    table = report.rows(ctx.results, metrics, ctx.systems)
    title = (f"jobengine vs peers: median [min-max] of {ctx.options.reps} run(s); "
             f"{info['machine']['cores']} cores, PostgreSQL "
             f"{info['server']['settings'].get('shared_buffers', '?')} shared_buffers")
    fmt = args.format
    if fmt == "auto":
        fmt = "rich" if sys.stdout.isatty() else "markdown"
    if fmt == "rich":
        from rich.console import Console

        Console().print(report.rich_table(table, title))
    else:
        print(f"### {title}\n")
        print(report.markdown(table))
    for note in ctx.results.notes:
        print(f"note: {note}")
    for skipped in ctx.results.skipped:
        print(f"skipped: {skipped}")
    report.write_json(args.out, ctx.results, {**info, "table": table})
    args.out.with_suffix(".md").write_text(f"### {title}\n\n{report.markdown(table)}\n")
    print(f"\nresults: {args.out} (and {args.out.with_suffix('.md').name})", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m bench`."""
    args = parser().parse_args(argv)
    return asyncio.run(_run(args))
