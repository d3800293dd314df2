"""Retention in the daemon: the ledger's partitions made ahead, the policy applied.

Every daemon runs this loop; one at a time runs a pass (an advisory lock in
the store), every `[retention] interval` seconds (jittered). A pass logs
what it removed as `retention.pass` (and writes its `retention_log` row),
and each ledger day it sealed as `ledger.day_sealed` (day, rows, digest).
"""

from __future__ import annotations

import random
from datetime import timedelta

import anyio
import structlog
from anyio.abc import TaskStatus

from jobengine.daemon.config import RetentionSettings
from jobengine.domain.retention import format_duration
from jobengine.domain.seals import SEALED_EVENT
from jobengine.store import TRANSIENT, LedgerStore, RetentionReport

log = structlog.get_logger("jobengine.retention")


class Retention:
    """Makes partitions ahead and applies the retention policy, one daemon at a time."""

    def __init__(
        self, ledger: LedgerStore, settings: RetentionSettings, *, rng: random.Random | None = None
    ) -> None:
        self._ledger = ledger
        self._settings = settings
        self._policy = settings.policy()
        self._rng = rng or random.Random()
        self.last: RetentionReport | None = None

    async def run_once(self) -> RetentionReport | None:
        """One pass now (None: another daemon is running one)."""
        s = self._settings
        report = await self._ledger.retention_pass(
            self._policy, batch=s.batch, partitions_ahead=s.partitions_ahead,
            seal_grace=timedelta(seconds=s.seal_grace),
        )
        if report is not None:
            self.last = report
            log.info(
                "retention.pass",
                log_id=report.log_id,
                jobs_removed=report.jobs_removed,
                ledger_rows_removed=report.ledger_rows_removed,
                partitions_dropped=[p.name for p in report.partitions],
                partitions_created=report.partitions_created,
                finished_jobs=format_duration(self._policy.finished_jobs),
                audit=format_duration(self._policy.audit),
                seconds=round(report.duration.total_seconds(), 3),
            )
            # The export that makes a consistent rewrite detectable: kept
            # wherever the logs go (the journal), out of the database's reach.
            for seal in report.sealed:
                log.info(SEALED_EVENT, **seal.record.as_json())
        return report

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Make the partitions ahead at once, then pass every interval, until cancelled."""
        try:
            created = await self._ledger.prepare_partitions(self._settings.partitions_ahead)
            if created:
                log.info("ledger.partitions_created", count=created)
        except TRANSIENT as exc:
            log.warning("ledger.prepare_failed", error=repr(exc))
        task_status.started()
        while True:
            await anyio.sleep(self._settings.interval * self._rng.uniform(0.8, 1.2))
            try:
                await self.run_once()
            except TRANSIENT as exc:
                log.warning("retention.pass_failed", error=repr(exc))
