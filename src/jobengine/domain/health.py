"""What `jobengine doctor` judges: the figures, the thresholds, the findings.

Pure: the store reads the figures; this module says which are past their
threshold and why that endangers the installation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from jobengine.domain.retention import RetentionPolicy, format_duration


@dataclass(frozen=True, slots=True)
class TableHealth:
    """One of jobengine's tables (the ledger: all its partitions)."""

    name: str
    table_bytes: int
    index_bytes: int
    live_rows: int
    dead_rows: int


@dataclass(frozen=True, slots=True)
class Horizon:
    """What holds back vacuum (ages in seconds, or in transaction ids)."""

    oldest_transaction_seconds: float
    session_xmin_age: int
    slot_xmin_age: int
    inactive_slots: int
    prepared_xact_age: int
    database_xid_age: int


@dataclass(frozen=True, slots=True)
class RetentionState:
    """Where retention stands."""

    now: datetime
    last_pass: datetime | None
    oldest_finished: datetime | None
    oldest_partition: datetime | None
    newest_partition_end: datetime | None
    default_rows: int


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Past these, doctor reports a problem (and exits 1)."""

    oldest_transaction: timedelta = timedelta(hours=1)
    #: transaction ids a session, slot or prepared transaction may hold the horizon back
    xmin_age: int = 20_000_000
    #: transaction ids before wraparound protection becomes an emergency
    database_xid_age: int = 1_000_000_000
    #: dead rows, as a share of live ones (and at least `dead_rows_floor`)
    dead_share: float = 0.5
    dead_rows_floor: int = 100_000
    #: slack on top of the policy before retention counts as behind
    retention_slack: timedelta = timedelta(hours=2)
    #: partitions that must exist ahead of now
    partitions_ahead: timedelta = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Finding:
    """One check: its figure, and a problem (None when within bounds)."""

    check: str
    value: str
    problem: str | None = None


@dataclass(slots=True)
class Diagnosis:
    """Every check doctor ran."""

    findings: list[Finding] = field(default_factory=list)

    @property
    def problems(self) -> list[Finding]:
        """The checks past their threshold."""
        return [f for f in self.findings if f.problem is not None]

    @property
    def healthy(self) -> bool:
        """No check past its threshold."""
        return not self.problems


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # unreachable


def _age(delta: timedelta) -> str:
    seconds = max(delta.total_seconds(), 0.0)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def diagnose(
    tables: list[TableHealth],
    horizon: Horizon,
    retention: RetentionState,
    policy: RetentionPolicy,
    interval: timedelta,
    limits: Thresholds | None = None,
) -> Diagnosis:
    """Judge the figures against the thresholds and the retention policy."""
    t = limits or Thresholds()
    d = Diagnosis()
    add = d.findings.append
    for table in tables:
        add(
            Finding(
                f"size.{table.name}",
                f"{_bytes(table.table_bytes)} + {_bytes(table.index_bytes)} indexes, "
                f"{table.live_rows} rows",
            )
        )
        limit = max(t.dead_rows_floor, int(table.live_rows * t.dead_share))
        add(
            Finding(
                f"dead_rows.{table.name}",
                str(table.dead_rows),
                None
                if table.dead_rows <= limit
                else f"{table.dead_rows} dead rows (more than {limit}): vacuum is not keeping up",
            )
        )
    oldest = timedelta(seconds=horizon.oldest_transaction_seconds)
    add(
        Finding(
            "oldest_transaction",
            _age(oldest),
            None
            if oldest <= t.oldest_transaction
            else f"a transaction open for {_age(oldest)} holds back vacuum and relaying",
        )
    )
    for name, age in (
        ("session_xmin_age", horizon.session_xmin_age),
        ("replication_slot_xmin_age", horizon.slot_xmin_age),
        ("prepared_transaction_age", horizon.prepared_xact_age),
    ):
        add(
            Finding(
                name,
                f"{age} xids",
                None
                if age <= t.xmin_age
                else f"{name.replace('_', ' ')} is {age} xids: the xmin horizon is held back",
            )
        )
    add(
        Finding(
            "inactive_replication_slots",
            str(horizon.inactive_slots),
            None
            if horizon.inactive_slots == 0
            else f"{horizon.inactive_slots} inactive replication slot(s) hold WAL and xmin",
        )
    )
    add(
        Finding(
            "database_xid_age",
            f"{horizon.database_xid_age} xids",
            None
            if horizon.database_xid_age <= t.database_xid_age
            else "transaction id wraparound is near: vacuum (freeze) the database",
        )
    )
    _retention(d, retention, policy, interval, t)
    return d


def _retention(
    d: Diagnosis, r: RetentionState, policy: RetentionPolicy, interval: timedelta, t: Thresholds
) -> None:
    add = d.findings.append
    late = 2 * interval + t.retention_slack
    if r.last_pass is None:
        add(Finding("retention.last_pass", "never"))
    else:
        since = r.now - r.last_pass
        add(
            Finding(
                "retention.last_pass",
                f"{_age(since)} ago",
                None
                if since <= late
                else f"no retention pass for {_age(since)}: is a daemon running?",
            )
        )
    keep_jobs = policy.finished_jobs
    if r.oldest_finished is not None:
        age = r.now - r.oldest_finished
        behind = keep_jobs is not None and age > keep_jobs + late
        add(
            Finding(
                "retention.oldest_finished_job",
                f"{_age(age)} old",
                f"finished jobs kept {format_duration(keep_jobs)}; the oldest is {_age(age)} old"
                if behind
                else None,
            )
        )
    keep_audit = policy.audit
    if r.oldest_partition is not None:
        age = r.now - r.oldest_partition
        behind = keep_audit is not None and age > keep_audit + timedelta(days=1) + late
        add(
            Finding(
                "retention.oldest_ledger_day",
                f"{_age(age)} old",
                f"the ledger kept {format_duration(keep_audit)}; its oldest day is {_age(age)} old"
                if behind
                else None,
            )
        )
    ahead = None if r.newest_partition_end is None else r.newest_partition_end - r.now
    add(
        Finding(
            "ledger.partitions_ahead",
            "none" if ahead is None else _age(ahead),
            None
            if ahead is not None and ahead >= t.partitions_ahead
            else "the ledger has no daily partitions ahead: rows go to its default partition",
        )
    )
    add(
        Finding(
            "ledger.default_partition_rows",
            str(r.default_rows),
            None
            if r.default_rows == 0
            else f"{r.default_rows} ledger rows wait in the default partition (no day for them)",
        )
    )
