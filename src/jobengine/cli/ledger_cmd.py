"""`jobengine retention run`, `audit verify|seals`, `doctor`: the ledger's upkeep."""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import anyio
import msgspec

from jobengine.cli.context import add_common_options, fail, open_store, settings_from_args
from jobengine.domain.health import diagnose
from jobengine.domain.retention import format_duration
from jobengine.domain.seals import SealRecord, parse_seals
from jobengine.store import LedgerStore, RetentionReport, SealCheck, VerifyReport
from jobengine.store.health import HealthStore

EXAMPLES = """\
examples:
  jobengine retention run --dry-run     # what the policy in [retention] would remove now
  jobengine retention run               # remove it now (the daemon does this every interval)
  jobengine audit verify                # exit 0: every ledger row is as the database wrote it
  jobengine audit verify --job 42
  jobengine audit seals > seals.jsonl   # export the sealed days' digests (keep them elsewhere)
  jobengine audit verify --seals seals.jsonl   # also: no sealed day rewritten since
  jobengine doctor                      # exit 1 when something endangers the installation
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `retention`, `audit` and `doctor`."""
    p = sub.add_parser("retention", help="apply the retention policy",
                       description="Remove finished jobs and old ledger days as [retention] says.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    run = verbs.add_parser("run", help="run a retention pass now and print what it removed")
    add_common_options(run)
    run.add_argument("--dry-run", action="store_true", help="remove nothing; print what would go")
    run.set_defaults(func=_retention_run)

    p = sub.add_parser("audit", help="check the audit ledger",
                       description="Check the ledger's hash chains.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    verify = verbs.add_parser(
        "verify", help="exit 0 when every ledger row is as the database wrote it, else 1 "
        "naming each job whose rows were altered, removed or inserted")
    add_common_options(verify)
    verify.add_argument("--job", type=int, metavar="ID", help="check this job only")
    verify.add_argument("--parallel", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                        metavar="N", help="statements at once (default: the CPUs, at most 4)")
    verify.add_argument("--seals", metavar="FILE",
                        help="also check the days sealed in FILE (`audit seals` output or the "
                        "daemon's JSON log lines; - for stdin) against the ledger as it is now")
    verify.set_defaults(func=_audit_verify)
    seals = verbs.add_parser(
        "seals", help="print the sealed days (day, rows, digest) as JSON lines, to keep "
        "outside the database")
    add_common_options(seals)
    seals.add_argument("--since", metavar="DAY", type=_day,
                       help="from this UTC day on (YYYY-MM-DD)")
    seals.set_defaults(func=_audit_seals)

    p = sub.add_parser("doctor", help="report what endangers a long-running installation",
                       description="Sizes, dead tuples, the oldest transaction and the xmin "
                       "horizon (replication slots included), retention falling behind; exit 1 "
                       "when any is past its threshold.")
    add_common_options(p)
    p.set_defaults(func=_doctor)


def _print_report(report: RetentionReport) -> None:
    would = "would remove" if report.dry_run else "removed"
    policy = report.policy
    print(f"policy: finished_jobs = {format_duration(policy.finished_jobs)}, "
          f"audit = {format_duration(policy.audit)}")
    if report.jobs_before is None:
        print("finished jobs: kept forever")
    else:
        span = ""
        if report.jobs_oldest and report.jobs_newest:
            span = (f" (finished {report.jobs_oldest:%Y-%m-%d %H:%M} .. "
                    f"{report.jobs_newest:%Y-%m-%d %H:%M})")
        print(f"finished jobs: {would} {report.jobs_removed}, finished before "
              f"{report.jobs_before:%Y-%m-%d %H:%M:%S %Z}{span}")
    if report.ledger_before is None:
        print("ledger: kept forever")
    else:
        print(f"ledger: {would} {report.ledger_rows_removed} rows in {len(report.partitions)} "
              f"day(s) ending before {report.ledger_before:%Y-%m-%d %H:%M:%S %Z}")
        for part in report.partitions:
            print(f"  {part.name}: {part.rows} rows")
    if not report.dry_run and report.partitions_created:
        print(f"ledger: made {report.partitions_created} daily partition(s) ahead")
    for seal in report.sealed:
        print(f"ledger: sealed {seal.record.day}: {seal.record.rows} rows, "
              f"digest {seal.record.digest.hex()}")
    print(f"retention_log id {report.log_id}, {report.duration.total_seconds():.2f}s")


def _retention_run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    policy = settings.retention.policy()

    async def go() -> int:
        async with open_store(settings, "cli") as store:
            ledger = LedgerStore(store.db)
            report = await ledger.retention_pass(
                policy, dry_run=args.dry_run, batch=settings.retention.batch,
                partitions_ahead=settings.retention.partitions_ahead,
                seal_grace=timedelta(seconds=settings.retention.seal_grace))
        if report is None:
            return fail("another retention pass is running (a daemon's, or another CLI's): "
                        "try again when it is done")
        _print_report(report)
        return 0

    return anyio.run(go)


def _audit_verify(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.job is not None and args.job < 1:
        return fail(f"--job must be a job id (a positive integer), not {args.job}", 2)
    if not 1 <= args.parallel <= 64:
        return fail(f"--parallel must be 1..64, not {args.parallel}", 2)
    records: list[SealRecord] | None = None
    if args.seals is not None:
        try:
            text = sys.stdin.read() if args.seals == "-" else Path(args.seals).read_text()
            records = parse_seals(text)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            return fail(f"--seals {args.seals}: {exc}", 2)

    async def go() -> int:
        async with open_store(settings, "cli", max_size=args.parallel) as store:
            ledger = LedgerStore(store.db)
            report = await _verify(ledger, args.job, args.parallel)
            checks = await ledger.check_seals(records) if records is not None else None
        rate = report.rows_checked / report.seconds if report.seconds > 0 else 0.0
        checked = (f"{report.rows_checked} ledger rows checked in {report.seconds:.2f}s "
                   f"({rate:,.0f}/s)")
        if report.intact:
            print(f"ledger intact: {checked}")
        else:
            for problem in report.problems:
                row = problem.ledger_id
                where = f" (ledger row {row})" if row is not None else ""
                print(f"job {problem.job_id}: {problem.problem}{where}")
            print(f"ledger NOT intact: {len(report.jobs)} job(s) with problems; {checked}")
        sealed_ok = checks is None or _print_seal_checks(checks)
        return 0 if report.intact and sealed_ok else 1

    return anyio.run(go)


def _print_seal_checks(checks: list[SealCheck]) -> bool:
    """Say how each exported seal compares; True when no sealed day changed."""
    changed = 0
    for c in checks:
        r = c.record
        if c.outcome == "changed":
            changed += 1
            print(f"day {r.day}: CHANGED since it was sealed ({r.rows} rows then, {c.rows_now} "
                  "now, or the same count with other rows: the digest differs)")
        elif c.outcome == "removed":
            print(f"day {r.day}: removed by retention since it was sealed: not checked")
    intact = sum(1 for c in checks if c.outcome == "intact")
    if changed:
        print(f"seals NOT matched: {changed} day(s) changed since sealed; {intact} intact")
        return False
    print(f"seals matched: {intact} sealed day(s) as they were sealed")
    return True


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a day (YYYY-MM-DD): {text!r}") from None


def _audit_seals(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)

    async def go() -> int:
        async with open_store(settings, "cli") as store:
            seals = await LedgerStore(store.db).seals(args.since)
        for seal in seals:
            print(msgspec.json.encode({**seal.record.as_json(),
                                       "sealed_at": seal.sealed_at.isoformat()}).decode())
        return 0

    return anyio.run(go)


async def _verify(ledger: LedgerStore, job_id: int | None, parallel: int) -> VerifyReport:
    """Every span checked, `parallel` at a time (each a statement on its own connection)."""
    started = time.monotonic()
    total = VerifyReport()
    spans = await ledger.verify_spans(job_id)
    limiter = anyio.CapacityLimiter(parallel)

    async def one(lo: int, hi: int) -> None:
        async with limiter:
            total.merge(await ledger.verify_span(lo, hi))

    async with anyio.create_task_group() as tg:
        for lo, hi in spans:
            tg.start_soon(one, lo, hi)
    total.problems.sort(key=lambda p: (p.job_id, p.ledger_id or 0))
    total.seconds = time.monotonic() - started
    return total


def _doctor(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    policy = settings.retention.policy()

    async def go() -> int:
        async with open_store(settings, "cli") as store:
            health = HealthStore(store.db)
            diagnosis = diagnose(await health.tables(), await health.horizon(),
                                 await health.retention(), policy,
                                 timedelta(seconds=settings.retention.interval))
        width = max(len(f.check) for f in diagnosis.findings)
        for finding in diagnosis.findings:
            mark = "ok  " if finding.problem is None else "FAIL"
            line = f"{mark} {finding.check.ljust(width)}  {finding.value}"
            print(line if finding.problem is None else f"{line}  <- {finding.problem}")
        if diagnosis.healthy:
            print("healthy")
            return 0
        print(f"{len(diagnosis.problems)} problem(s)")
        return 1

    return anyio.run(go)
