"""The ledger's upkeep: daily partitions, relayed notifications, retention, verification.

Each is a versioned SQL function of the schema (`ledger_prepare_v1`,
`relay_v1`, `purge_jobs_v1`, `ledger_drop_v1`, `retention_record_v1`,
`verify_ledger_v1`, `ledger_seal_v1`, `ledger_day_digest`); this module calls
them and shapes what they return.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from jobengine.domain.retention import BATCH, RetentionPolicy
from jobengine.domain.seals import SealRecord
from jobengine.store.executor import Executor, connection_of, fetch_on

#: Job ids per verification statement: a few hundred thousand rows at most.
VERIFY_BATCH = 20_000


@dataclass(frozen=True, slots=True)
class DroppedPartition:
    """One day of the ledger a pass removed (or, dry, would remove)."""

    name: str
    range_from: datetime | None
    range_to: datetime
    rows: int
    max_id: int | None


@dataclass(frozen=True, slots=True)
class Seal:
    """A sealed day of the ledger (a row of `jobengine.ledger_seals`)."""

    record: SealRecord
    sealed_at: datetime
    actor: str


@dataclass(frozen=True, slots=True)
class SealCheck:
    """One exported seal checked against the ledger as it is now."""

    record: SealRecord
    #: "intact", "changed" (rows or digest differ now) or "removed" (retention dropped the day)
    outcome: str
    rows_now: int | None = None


@dataclass(slots=True)
class RetentionReport:
    """What one retention pass did (or, with `dry_run`, would do)."""

    dry_run: bool
    policy: RetentionPolicy
    started_at: datetime
    jobs_before: datetime | None = None
    jobs_removed: int = 0
    jobs_oldest: datetime | None = None
    jobs_newest: datetime | None = None
    ledger_before: datetime | None = None
    partitions: list[DroppedPartition] = field(default_factory=list)
    partitions_created: int = 0
    duration: timedelta = timedelta()
    log_id: int | None = None
    #: the days this pass sealed
    sealed: list[Seal] = field(default_factory=list)

    @property
    def ledger_rows_removed(self) -> int:
        """Ledger rows in the partitions removed."""
        return sum(p.rows for p in self.partitions)


@dataclass(frozen=True, slots=True)
class LedgerProblem:
    """A job whose ledger is not as the database wrote it."""

    job_id: int
    ledger_id: int | None
    problem: str


@dataclass(slots=True)
class VerifyReport:
    """The outcome of `verify`: rows checked, and every problem found."""

    rows_checked: int = 0
    problems: list[LedgerProblem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def intact(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    @property
    def jobs(self) -> list[int]:
        """The jobs with problems, each once, in order."""
        return sorted({p.job_id for p in self.problems})

    def merge(self, other: VerifyReport) -> None:
        """Add another span's findings to this report."""
        self.rows_checked += other.rows_checked
        self.problems.extend(other.problems)


def _ranges(lo: int, hi: int, step: int) -> Iterator[tuple[int, int]]:
    start = lo
    while start <= hi:
        yield start, start + step
        start += step


class LedgerStore:
    """The ledger's upkeep through a pool (or one connection)."""

    def __init__(self, db: Executor) -> None:
        self._db = db

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        return await fetch_on(self._db, query, *args)

    async def prepare_partitions(self, days_ahead: int = 7) -> int:
        """Create the daily partitions up to `days_ahead` days from today; how many were new."""
        rows = await self._fetch("ledger_prepare", days_ahead)
        return int(rows[0][0])

    async def partitions(self) -> list[tuple[str, datetime, datetime]]:
        """The ledger's daily partitions, oldest first."""
        return [
            (r["name"], r["range_from"], r["range_to"])
            for r in await self._fetch("ledger_partitions")
        ]

    async def notify_mode(self) -> str:
        """`direct` (the writer's transaction notifies) or `relayed` (`relay` does)."""
        rows = await self._fetch("ledger_notify_mode")
        return str(rows[0][0])

    async def relay(self, limit: int = 1000) -> int:
        """Send the notifications of up to `limit` new ledger rows; -1 if another session relays."""
        rows = await self._fetch("ledger_relay", limit)
        return int(rows[0][0])

    # -- retention -------------------------------------------------------------

    async def retention_pass(
        self,
        policy: RetentionPolicy,
        *,
        dry_run: bool = False,
        batch: int = BATCH,
        partitions_ahead: int = 7,
        seal_grace: timedelta = timedelta(hours=1),
    ) -> RetentionReport | None:
        """Apply `policy` now, one session at a time (None: another one is running a pass).

        Makes the partitions ahead, removes finished jobs `batch` at a time
        (each batch its own transaction), drops the ledger's whole days
        older than `policy.audit`, analyzes the ledger's parent when it
        changed, seals the days that ended `seal_grace` ago (not on a dry
        run), and writes the pass's `retention_log` row.
        """
        # The lock is held by a transaction on one connection that stays open
        # for the pass; the pass itself runs on the pool, a batch per transaction.
        async with connection_of(self._db) as holder, holder.transaction():
            if not (await fetch_on(holder, "retention_try_lock"))[0][0]:
                return None
            # The lock query's portal (extended protocol) stays open until the
            # connection's next statement, and with it its snapshot: left so,
            # this idle transaction would hold back the xmin horizon, for the
            # whole cluster, as long as the pass runs (minutes on millions of
            # jobs): nothing the pass removes could be cleaned up meanwhile. A
            # simple-protocol statement closes it.
            await holder.execute("SELECT 1")
            report = await self._pass(
                self._db, policy, dry_run=dry_run, batch=batch, partitions_ahead=partitions_ahead
            )
            if not dry_run:
                report.sealed = await self.seal_days(seal_grace)
            return report

    async def _pass(
        self,
        conn: Any,
        policy: RetentionPolicy,
        *,
        dry_run: bool,
        batch: int,
        partitions_ahead: int,
    ) -> RetentionReport:
        started = time.monotonic()
        now: datetime = (await fetch_on(conn, "ledger_now"))[0][0]
        report = RetentionReport(
            dry_run=dry_run,
            policy=policy,
            started_at=now,
            jobs_before=policy.jobs_before(now),
            ledger_before=policy.ledger_before(now),
        )
        if not dry_run:
            report.partitions_created = int(
                (await fetch_on(conn, "ledger_prepare", partitions_ahead))[0][0]
            )
        if report.jobs_before is not None:
            while True:  # (a dry run counts them all at once)
                rows = await fetch_on(conn, "retention_purge", report.jobs_before, batch, dry_run)
                row = rows[0]
                self._count_jobs(report, row)
                if dry_run or row["removed"] < batch:
                    break
        if report.ledger_before is not None:
            rows = await fetch_on(conn, "retention_drop", report.ledger_before, dry_run)
            report.partitions = [
                DroppedPartition(
                    r["name"], r["range_from"], r["range_to"], int(r["rows"]), r["max_id"]
                )
                for r in rows
            ]
            if report.partitions and not dry_run:
                await fetch_on(conn, "retention_analyze")
        report.duration = timedelta(seconds=time.monotonic() - started)
        dropped = [
            {
                "name": p.name,
                "from": p.range_from,
                "to": p.range_to,
                "rows": p.rows,
                "max_id": p.max_id,
            }
            for p in report.partitions
        ]
        # Where the ledger may now begin: the newest day boundary dropped (a
        # pass that dropped nothing moves nothing).
        removed_before = max((p.range_to for p in report.partitions), default=None)
        rows = await fetch_on(
            conn,
            "retention_record",
            dry_run,
            policy.finished_jobs,
            policy.audit,
            report.jobs_removed,
            report.jobs_before,
            report.jobs_oldest,
            report.jobs_newest,
            report.ledger_rows_removed,
            dropped,
            removed_before,
            report.partitions_created,
            report.duration,
        )
        report.log_id = int(rows[0][0])
        return report

    @staticmethod
    def _count_jobs(report: RetentionReport, row: Any) -> None:
        report.jobs_removed += int(row["removed"])
        for name, pick in (("oldest", min), ("newest", max)):
            value = row[name]
            current = getattr(report, f"jobs_{name}")
            if value is not None:
                setattr(report, f"jobs_{name}", value if current is None else pick(current, value))

    async def retention_log(self, limit: int = 10) -> list[dict[str, Any]]:
        """The newest retention passes, newest first."""
        return [dict(r) for r in await self._fetch("retention_log_recent", limit)]

    # -- seals -------------------------------------------------------------------

    async def seal_days(self, grace: timedelta = timedelta(hours=1),
                        first: date | None = None) -> list[Seal]:
        """Seal every day that ended `grace` ago and is not sealed (the first time:
        from `first`, else yesterday); the seals made, oldest first.

        Call it as retention does, holding retention's lock (one session at a time).
        """
        return [_seal(r) for r in await self._fetch("ledger_seal", grace, first)]

    async def seals(self, since: date | None = None) -> list[Seal]:
        """The sealed days (from `since` on), oldest first."""
        return [_seal(r) for r in await self._fetch("ledger_seals", since)]

    async def check_seals(self, records: Iterable[SealRecord]) -> list[SealCheck]:
        """Each exported seal against its day as the ledger has it now.

        A day that retention has dropped since cannot be checked ("removed");
        one whose rows or digest differ was changed after it was sealed.
        """
        checks = []
        for record in records:
            row = (await self._fetch("ledger_day_check", record.day))[0]
            if row["removed"]:
                checks.append(SealCheck(record, "removed"))
                continue
            same = int(row["rows"]) == record.rows and bytes(row["digest"]) == record.digest
            checks.append(SealCheck(record, "intact" if same else "changed", int(row["rows"])))
        return checks

    # -- verification ----------------------------------------------------------

    async def verify_spans(self, job_id: int | None = None, *,
                           batch: int = VERIFY_BATCH) -> list[tuple[int, int]]:
        """The job-id ranges [lo, hi) that `verify_span` checks, together the whole ledger."""
        if job_id is not None:
            return [(job_id, job_id + 1)]
        bounds = (await self._fetch("verify_job_range"))[0]
        if bounds["lo"] is None:
            return []
        return list(_ranges(int(bounds["lo"]), int(bounds["hi"]), batch))

    async def verify_span(self, lo: int, hi: int) -> VerifyReport:
        """Check the hash chains of the jobs with ids in [lo, hi) (one statement, server side)."""
        report = VerifyReport()
        for row in await self._fetch("verify_range", lo, hi):
            if row["problem"] is None:
                report.rows_checked += int(row["ledger_id"])
            else:
                report.problems.append(
                    LedgerProblem(int(row["job_id"]), row["ledger_id"], row["problem"]))
        return report

    async def verify(self, job_id: int | None = None, *, batch: int = VERIFY_BATCH) -> VerifyReport:
        """Check every job's chain (or one job's), span after span, on this executor."""
        started = time.monotonic()
        total = VerifyReport()
        for lo, hi in await self.verify_spans(job_id, batch=batch):
            total.merge(await self.verify_span(lo, hi))
        total.seconds = time.monotonic() - started
        return total


def _seal(row: Any) -> Seal:
    return Seal(SealRecord(row["day"], int(row["rows"]), bytes(row["digest"])),
                row["sealed_at"], row["actor"])
