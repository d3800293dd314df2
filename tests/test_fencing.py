"""A job never runs twice at once: re-claims by the same daemon, and row locks that stall renewal.

Handlers record when each attempt started and ended (one process, one
monotonic clock); the check is that no two attempts of one job overlap.
Waits are on test signals and polled conditions, never on fixed sleeps.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import anyio
import asyncpg
import pytest

from jobengine.daemon import from_callables, run_daemon
from jobengine.daemon.testsignals import DaemonSignals
from jobengine.domain import Job
from tests.daemon_helpers import assert_every_history_is_a_valid_path, config, insert, wait_status
from tests.dbutil import wait_for

pytestmark = pytest.mark.anyio


@dataclass
class Runs:
    """Every handler run: (job id, attempt) -> [start, end]; a gate to hold them."""

    spans: dict[tuple[int, int], list[float]] = field(default_factory=dict)
    gate: anyio.Event = field(default_factory=anyio.Event)

    async def hold(self, job: Job) -> str:
        span = self.spans.setdefault((job.id, job.attempt), [time.monotonic(), float("inf")])
        try:
            await self.gate.wait()
            return "done"
        finally:
            span[1] = time.monotonic()

    def started(self, job_id: int, attempt: int) -> bool:
        return (job_id, attempt) in self.spans

    def ended(self, job_id: int, attempt: int) -> bool:
        span = self.spans.get((job_id, attempt))
        return span is not None and span[1] != float("inf")

    def assert_no_overlap(self) -> None:
        by_job: dict[int, list[list[float]]] = {}
        for (job_id, _attempt), span in sorted(self.spans.items()):
            by_job.setdefault(job_id, []).append(span)
        for job_id, spans in by_job.items():
            for earlier, later in itertools.pairwise(spans):
                assert earlier[1] <= later[0], f"job {job_id}: two attempts ran at once"


async def _true(value: bool) -> bool:
    return value


async def test_a_job_moved_back_and_reclaimed_by_the_same_daemon_runs_once_at_a_time(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    runs = Runs()
    signals = DaemonSignals.enabled()
    cfg = config(concurrency=2, lease_ttl=30.0, poll_interval=0.2)
    async with run_daemon(cfg, db_dsn, handlers=from_callables({"hold": runs.hold}),
                          signals=signals) as daemon:
        job_id = await insert(pool, "hold")
        await wait_for(lambda: _true(runs.started(job_id, 1)), message="attempt 1")
        # Moved back by hand while it runs; the same daemon claims it again.
        await pool.execute("UPDATE jobengine.jobs SET status = 'scheduled' WHERE id = $1", job_id)
        await wait_for(lambda: _true(runs.started(job_id, 2)), message="attempt 2")
        assert runs.ended(job_id, 1), "attempt 1 still ran when attempt 2 started"
        # The old attempt's end did not drop the new one: it keeps its lease and its slot.
        assert daemon.running(job_id)
        assert [key for key in daemon.actors] == [(job_id, 2)]
        runs.gate.set()
        await wait_status(pool, job_id, "completed")
    runs.assert_no_overlap()
    assert sorted(runs.spans) == [(job_id, 1), (job_id, 2)]
    row = await pool.fetchrow("SELECT attempt, status_reason FROM jobengine.jobs WHERE id = $1",
                              job_id)
    assert (row["attempt"], row["status_reason"]) == (2, "completed")
    await assert_every_history_is_a_valid_path(pool)


async def test_an_apps_open_transaction_cannot_make_a_daemons_jobs_run_twice(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    """One job's row lock held past the lease: that job is fenced in time, the others renew."""
    runs = Runs()
    first_signals, second_signals = DaemonSignals.enabled(), DaemonSignals.enabled()
    cfg = config(concurrency=3, lease_ttl=2.0, lease_renew_interval=0.3, poll_interval=0.2)
    handlers = from_callables({"hold": runs.hold})
    app = await asyncpg.connect(db_dsn)
    try:
        async with run_daemon(cfg, db_dsn, handlers=handlers, signals=first_signals) as first:
            ids = [await insert(pool, "hold") for _ in range(3)]
            await wait_for(lambda: _true(all(runs.started(i, 1) for i in ids)),
                           message="all three running in the first daemon")
            async with run_daemon(cfg, db_dsn, handlers=handlers, signals=second_signals):
                # An app holds one job's row, as `BEGIN; UPDATE ...; SELECT pg_sleep(9)` would.
                await app.execute("BEGIN")
                await app.execute("UPDATE jobengine.jobs SET status = 'cancelled' WHERE id = $1",
                                  ids[0])
                fenced = await first_signals.fenced.wait()
                assert fenced == [(ids[0], 1)]
                # Fenced before the lease could expire: nobody else may have it yet.
                still_leased = await pool.fetchval(
                    "SELECT lease_expires_at > clock_timestamp() FROM jobengine.jobs"
                    " WHERE id = $1", ids[0])
                assert still_leased
                await wait_for(lambda: _true(runs.ended(ids[0], 1)), message="fenced attempt")
                # The other two kept their leases all along, in the first daemon.
                assert first.running(ids[1])
                assert first.running(ids[2])
                await app.execute("ROLLBACK")
                # The fenced job's lease runs out; it is reaped and runs again.
                await wait_for(lambda: _true(runs.started(ids[0], 2)), within=15,
                               message="the fenced job's second attempt")
                runs.gate.set()
                for job_id in ids:
                    await wait_status(pool, job_id, "completed", within=15)
    finally:
        await app.close()
    runs.assert_no_overlap()
    assert sorted(runs.spans) == [(ids[0], 1), (ids[0], 2), (ids[1], 1), (ids[2], 1)]
    await assert_every_history_is_a_valid_path(pool)
