"""The daemon in-process: the lifecycle end to end, retries, the DAG, timeouts,
cancellation, leases, shutdown, and NOTIFY-driven wake-ups."""

from __future__ import annotations

import os
import sys
import threading
import time
from datetime import timedelta
from functools import partial
from typing import Any

import anyio
import asyncpg
import pytest

from jobengine import metrics
from jobengine.daemon import CommandHandler, Daemon, from_callables, resolve_handlers, run_daemon
from jobengine.daemon.scheduler import Scheduler
from jobengine.daemon.testsignals import DaemonSignals
from jobengine.domain import Job, JobSpec
from jobengine.store import Completion, JobStore
from tests.daemon_helpers import (
    assert_every_history_is_a_valid_path,
    config,
    history,
    insert,
    status_of,
    wait_settled,
    wait_status,
)
from tests.dbutil import wait_for

pytestmark = pytest.mark.anyio


class Recorder:
    """Handlers that record what they saw, and gates to hold a job running."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self.started: dict[int, float] = {}
        self.release = anyio.Event()

    async def ok(self, job: Job) -> dict[str, Any]:
        self.calls.append((job.id, job.attempt))
        self.started.setdefault(job.id, time.monotonic())
        return {"echo": job.payload}

    async def fail(self, job: Job) -> None:
        self.calls.append((job.id, job.attempt))
        raise RuntimeError(f"attempt {job.attempt} broke")

    async def flaky(self, job: Job) -> str:
        self.calls.append((job.id, job.attempt))
        if job.attempt == 1:
            raise ConnectionError("first try fails")
        return "second try works"

    async def hold(self, job: Job) -> str:
        self.calls.append((job.id, job.attempt))
        self.started.setdefault(job.id, time.monotonic())
        await self.release.wait()
        return "released"


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


def handlers(rec: Recorder, **extra: Any) -> Any:
    return from_callables({"ok": rec.ok, "fail": rec.fail, "flaky": rec.flaky,
                           "hold": rec.hold, **extra})


# -- the lifecycle, end to end ------------------------------------------------------


async def test_job_inserted_with_sql_runs_through_the_whole_lifecycle(
    db_dsn: str, pool: asyncpg.Pool, rec: Recorder
) -> None:
    async with run_daemon(config(), db_dsn, handlers=handlers(rec)):
        job_id = await insert(pool, "ok", payload={"n": 1})
        await wait_status(pool, job_id, "completed")
    row = await pool.fetchrow("SELECT * FROM jobengine.jobs WHERE id = $1", job_id)
    assert row["result"] == {"echo": {"n": 1}}
    assert row["attempt"] == 1
    assert row["finished_at"] >= row["started_at"] >= row["scheduled_at"] >= row["created_at"]
    assert [(f, t) for f, t, _r, _a in await history(pool, job_id)] == [
        (None, "pending"), ("pending", "scheduled"), ("scheduled", "running"),
        ("running", "completed"),
    ]
    completed_at = await pool.fetchval(
        "SELECT occurred_at FROM jobengine.job_history WHERE job_id = $1 AND to_status = 'completed'",
        job_id,
    )
    assert completed_at == row["finished_at"]
    events = await pool.fetch(
        "SELECT event_type FROM jobengine.timeline_events WHERE job_id = $1 ORDER BY id", job_id
    )
    assert [e["event_type"] for e in events] == [
        "job.created", "job.scheduled", "job.started", "job.completed",
    ]


async def test_notify_starts_a_job_long_before_the_next_poll(
    db_dsn: str, pool: asyncpg.Pool, rec: Recorder
) -> None:
    async with run_daemon(config(poll_interval=30.0), db_dsn, handlers=handlers(rec)):
        for _ in range(5):
            job_id = await insert(pool, "ok")
            # (polling every 30 s: starting within 5 s is the notification's doing)
            await wait_for(partial(_started, rec, job_id), within=5,
                           interval=0.001, message="the job to start")


async def _started(rec: Recorder, job_id: int) -> bool:
    return job_id in rec.started


async def test_a_job_due_later_starts_when_due(
    db_dsn: str, pool: asyncpg.Pool, rec: Recorder
) -> None:
    async with run_daemon(config(poll_interval=30.0), db_dsn, handlers=handlers(rec)):
        t0 = time.monotonic()
        job_id = await pool.fetchval(
            "INSERT INTO jobengine.jobs (kind, run_at) VALUES ('ok', now() + interval '1.5 s')"
            " RETURNING id"
        )
        await wait_status(pool, job_id, "completed", within=10)
        assert 1.3 <= rec.started[job_id] - t0 < 3.0


async def test_failure_retries_then_succeeds(db_dsn: str, pool: asyncpg.Pool, rec: Recorder) -> None:
    async with run_daemon(config(), db_dsn, handlers=handlers(rec)):
        job_id = await insert(pool, "flaky")
        await wait_status(pool, job_id, "completed")
    steps = await history(pool, job_id)
    assert [(f, t, r) for f, t, r, _a in steps][3:6] == [
        ("running", "failed", "error"), ("failed", "scheduled", "retry"),
        ("scheduled", "running", "claimed"),
    ]
    row = await pool.fetchrow("SELECT attempt, last_error, result FROM jobengine.jobs WHERE id = $1",
                              job_id)
    assert row["attempt"] == 2
    assert row["last_error"] == "ConnectionError: first try fails"
    assert row["result"] == "second try works"


async def test_max_retries_three_reenters_scheduled_exactly_three_times(
    db_dsn: str, pool: asyncpg.Pool, rec: Recorder
) -> None:
    async with run_daemon(config(), db_dsn, handlers=handlers(rec)):
        job_id = await insert(pool, "fail", max_retries=3)
        await wait_status(pool, job_id, "failed")
        # Terminal: give a daemon time to (wrongly) retry once more.
        await wait_settled(pool)
    assert [a for j, a in rec.calls if j == job_id] == [1, 2, 3, 4]
    steps = await history(pool, job_id)
    assert sum(1 for f, t, _r, _a in steps if (f, t) == ("failed", "scheduled")) == 3
    assert steps[-1][:2] == ("running", "failed")
    assert [a for f, t, _r, a in steps if t == "failed"] == [1, 2, 3, 4]


async def test_result_that_is_not_json_fails_the_attempt(db_dsn: str, pool: asyncpg.Pool) -> None:
    async def weird(job: Job) -> object:
        return object()

    async with run_daemon(config(), db_dsn, handlers=from_callables({"weird": weird})):
        job_id = await insert(pool, "weird", max_retries=0)
        await wait_status(pool, job_id, "failed")
    assert "not JSON-serialisable" in await pool.fetchval(
        "SELECT last_error FROM jobengine.jobs WHERE id = $1", job_id)


# -- the DAG ----------------------------------------------------------------------------


async def test_dag_chain_and_diamond_run_in_dependency_order(
    db_dsn: str, pool: asyncpg.Pool, rec: Recorder
) -> None:
    async with run_daemon(config(), db_dsn, handlers=handlers(rec)):
        a = await insert(pool, "ok")
        b = await insert(pool, "ok", depends_on=[a])
        c = await insert(pool, "ok", depends_on=[a])
        d = await insert(pool, "ok", depends_on=[b, c])
        chain = [await insert(pool, "ok")]
        for _ in range(3):
            chain.append(await insert(pool, "ok", depends_on=[chain[-1]]))
        await wait_settled(pool)
    order = [job_id for job_id, _ in rec.calls]
    assert order.index(a) < order.index(b) < order.index(d)
    assert order.index(c) < order.index(d)
    assert [order.index(j) for j in chain] == sorted(order.index(j) for j in chain)
    statuses = await pool.fetch("SELECT DISTINCT status::text FROM jobengine.jobs")
    assert [r[0] for r in statuses] == ["completed"]
    await assert_every_history_is_a_valid_path(pool)


async def test_terminal_failure_cancels_dependents_down_the_dag(
    db_dsn: str, pool: asyncpg.Pool, rec: Recorder
) -> None:
    async with run_daemon(config(), db_dsn, handlers=handlers(rec)):
        root = await insert(pool, "fail", max_retries=1)
        child = await insert(pool, "ok", depends_on=[root])
        grandchild = await insert(pool, "ok", depends_on=[child])
        bystander = await insert(pool, "ok")
        await wait_settled(pool)
    assert await pool.fetchval("SELECT status::text FROM jobengine.jobs WHERE id = $1", root) == "failed"
    for dependent in (child, grandchild):
        row = await pool.fetchrow("SELECT status::text AS s, status_reason FROM jobengine.jobs WHERE id = $1",
                                  dependent)
        assert (row["s"], row["status_reason"]) == ("cancelled", "dependency_failed")
    assert {j for j, _ in rec.calls} == {root, bystander}
    await assert_every_history_is_a_valid_path(pool)


async def test_a_pass_woken_by_a_notification_looks_only_at_what_changed(pool: asyncpg.Pool) -> None:
    # A thousand jobs wait on one that never runs; a notification's pass
    # promotes the dependent of the job that completed, without a whole pass.
    store = JobStore(pool)
    never = await insert(pool, "never")
    await pool.execute("INSERT INTO jobengine.jobs (kind, depends_on)"
                       " SELECT 'ok', ARRAY[$1::bigint] FROM generate_series(1, 1000)", never)
    parent = await insert(pool, "ok")
    child = await insert(pool, "ok", depends_on=[parent])
    ready: list[int] = []
    scheduler = Scheduler(store, ["default"], poll_interval=60, on_ready=lambda: ready.append(1))
    assert (await scheduler.run_once()).whole  # (the first pass: no cursor yet)
    [claimed] = await store.claim(owner="d", queues=["default"], kinds=["ok"], limit=1,
                                  lease_ttl=timedelta(seconds=30))
    assert claimed.id == parent
    await store.finish("d", [Completion(parent, 1)])
    scheduler.wake(new_jobs=False, whole=False)  # (as a `done` notification does)
    after = await scheduler.run_once()
    assert (after.whole, after.promoted) == (False, 1)
    assert ready
    assert (await store.get(child)).status.value == "scheduled"
    scheduler.wake()  # (the polling fallback, a job come due: every waiting job)
    assert (await scheduler.run_once()).whole


async def test_a_waiting_job_whose_run_at_comes_is_promoted_under_a_stream_of_notifications(
    pool: asyncpg.Pool,
) -> None:
    # No ledger row announces a run_at coming: a whole pass does, at least once
    # per polling interval even while notifications keep waking the scheduler.
    store = JobStore(pool)
    parent = await insert(pool, "ok")
    now = await pool.fetchval("SELECT statement_timestamp()")
    child = (await store.insert(JobSpec(kind="ok", depends_on=[parent],
                                        run_at=now + timedelta(seconds=0.3))))[0].id
    scheduler = Scheduler(store, ["default"], poll_interval=0.5, on_ready=lambda: None)
    await scheduler.run_once()
    await store.claim(owner="d", queues=["default"], kinds=["ok"], limit=1,
                      lease_ttl=timedelta(seconds=30))
    await store.finish("d", [Completion(parent, 1)])

    async def notified_pass_promoted() -> bool:
        scheduler.wake(new_jobs=False, whole=False)  # (a `done` notification, again and again)
        await scheduler.run_once()
        return (await store.get(child)).status.value == "scheduled"

    await wait_for(notified_pass_promoted, message="the child's promotion once its run_at came")


async def test_a_completion_committed_behind_an_open_transaction_is_promoted_when_it_ends(
    pool: asyncpg.Pool,
) -> None:
    # The ledger is read in commit-safe order: a parent that completed while an
    # older transaction was open is read once that one ends, by the scheduler's
    # own look again (no notification, no polling pass: poll_interval is 60 s).
    store = JobStore(pool)
    parent = await insert(pool, "ok")
    child = await insert(pool, "ok", depends_on=[parent])
    scheduler = Scheduler(store, ["default"], poll_interval=60, on_ready=lambda: None)
    await scheduler.run_once()
    async with pool.acquire() as older, anyio.create_task_group() as tg:
        opened = older.transaction()
        await opened.start()
        await older.execute("SELECT pg_current_xact_id()")
        await store.claim(owner="d", queues=["default"], kinds=["ok"], limit=1,
                          lease_ttl=timedelta(seconds=30))
        await store.finish("d", [Completion(parent, 1)])
        scheduler.wake(new_jobs=False, whole=False)  # (its `done` notification)
        tg.start_soon(scheduler.run)

        async def behind() -> bool:
            return scheduler.looking_again

        await wait_for(behind, message="the pass to see it is behind")
        assert (await store.get(child)).status.value == "pending"
        await opened.rollback()

        async def promoted() -> bool:
            return (await store.get(child)).status.value == "scheduled"

        await wait_for(promoted, message="the child's promotion")
        tg.cancel_scope.cancel()


# -- timeouts and cancellation ------------------------------------------------------------


def sync_sleeper(job: Job) -> str:
    time.sleep(float(job.payload.get("seconds", 5)))
    return "woke"


SLEEP_CMD = [sys.executable, "-c", "import time, sys; sys.stdin.read(); time.sleep(30)"]


@pytest.mark.parametrize("kind", ["async", "sync", "command"])
async def test_timeout_interrupts_the_handler_and_fails_the_attempt(
    db_dsn: str, pool: asyncpg.Pool, rec: Recorder, kind: str
) -> None:
    hs = {"async": handlers(rec)["hold"],
          "sync": from_callables({"x": sync_sleeper})["x"],
          "command": resolve_handlers({"x": CommandHandler(command=SLEEP_CMD)})["x"]}
    async with run_daemon(config(), db_dsn, handlers={"slow": hs[kind]}):
        job_id = await pool.fetchval(
            "INSERT INTO jobengine.jobs (kind, timeout, max_retries) VALUES ('slow', '0.5 s', 0)"
            " RETURNING id"
        )
        # (the handler would take 30 s: failing within 10 means it was interrupted)
        await wait_status(pool, job_id, "failed", within=10)
    row = await pool.fetchrow("SELECT last_error, status_reason FROM jobengine.jobs WHERE id = $1",
                              job_id)
    assert row["status_reason"] == "timeout"
    assert "timeout of 0.5s" in row["last_error"]


async def test_cancel_by_hand_written_update_interrupts_the_async_handler_by_notification(
    db_dsn: str, pool: asyncpg.Pool, rec: Recorder
) -> None:
    after_cancel: list[str] = []

    async def stubborn(job: Job) -> str:
        try:
            await anyio.sleep(60)
        finally:
            after_cancel.append("cleanup ran")
        return "never"

    async with run_daemon(config(), db_dsn, handlers=from_callables({"s": stubborn})) as daemon:
        job_id = await insert(pool, "s")
        await wait_status(pool, job_id, "running")
        await wait_for(lambda: _has_actor(daemon, job_id), message="actor")
        await pool.execute("UPDATE jobengine.jobs SET status = 'cancelled' WHERE id = $1", job_id)
        # Leases renew every 10 s and polling is every 30 s here: stopping within 5 s
        # can only be the jobengine_cancel notification.
        await wait_for(lambda: _no_actor(daemon, job_id), within=5, message="actor to stop")
    assert after_cancel == ["cleanup ran"]
    row = await pool.fetchrow("SELECT status::text AS s, result FROM jobengine.jobs WHERE id = $1",
                              job_id)
    assert (row["s"], row["result"]) == ("cancelled", None)


async def _has_actor(daemon: Daemon, job_id: int) -> bool:
    return daemon.running(job_id)


async def _no_actor(daemon: Any, job_id: int) -> bool:
    return not daemon.running(job_id)


async def test_cancelled_sync_handler_is_abandoned_and_cannot_change_the_job(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    finished = threading.Event()

    def slow(job: Job) -> str:
        time.sleep(1.5)
        finished.set()
        return "too late"

    async with run_daemon(config(), db_dsn, handlers=from_callables({"s": slow})) as daemon:
        job_id = await insert(pool, "s")
        await wait_for(lambda: _has_actor(daemon, job_id), message="actor")
        await pool.execute("UPDATE jobengine.jobs SET status = 'cancelled' WHERE id = $1", job_id)
        await wait_for(lambda: _no_actor(daemon, job_id), within=1.0, message="actor to stop")
        await wait_for(lambda: _is_set(finished), within=5, message="the thread to finish")
        await daemon.writer.wait_idle()
    row = await pool.fetchrow("SELECT status::text AS s, result FROM jobengine.jobs WHERE id = $1",
                              job_id)
    assert (row["s"], row["result"]) == ("cancelled", None)


async def _is_set(event: threading.Event) -> bool:
    return event.is_set()


async def test_cancel_kills_a_command_handlers_whole_process_group(
    db_dsn: str, pool: asyncpg.Pool, tmp_path: Any
) -> None:
    pidfile = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time; sys.stdin.read();"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(60)"
    )
    hs = resolve_handlers({"cmd": CommandHandler(command=[sys.executable, "-c", script])})
    async with run_daemon(config(), db_dsn, handlers=hs) as daemon:
        job_id = await insert(pool, "cmd")
        await wait_for(lambda: _exists(pidfile), within=10, message="the command to start")
        grandchild = int(pidfile.read_text())
        await pool.execute("UPDATE jobengine.jobs SET status = 'cancelled' WHERE id = $1", job_id)
        await wait_for(lambda: _no_actor(daemon, job_id), within=2, message="actor to stop")
        await wait_for(lambda: _gone(grandchild), within=2, message="the grandchild to die")


async def _exists(path: Any) -> bool:
    return bool(path.exists() and path.read_text())


async def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie waiting for its (killed) parent's reaper counts as gone
    try:
        stat = await anyio.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.split()[2] == "Z"


async def test_command_handler_gets_the_job_on_stdin_and_its_json_stdout_is_the_result(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    echo = [sys.executable, "-c",
            "import json, sys; job = json.load(sys.stdin);"
            "print(json.dumps({'id': job['id'], 'got': job['payload']}))"]
    failing = [sys.executable, "-c", "import sys; sys.stdin.read(); sys.stderr.write('bad input'); sys.exit(3)"]
    hs = resolve_handlers({"echo": CommandHandler(command=echo),
                           "bad": CommandHandler(command=failing)})
    async with run_daemon(config(), db_dsn, handlers=hs):
        ok = await insert(pool, "echo", payload={"x": [1, 2]})
        bad = await insert(pool, "bad", max_retries=0)
        await wait_settled(pool)
    assert await pool.fetchval("SELECT result FROM jobengine.jobs WHERE id = $1", ok) == {
        "id": ok, "got": {"x": [1, 2]}}
    err = await pool.fetchval("SELECT last_error FROM jobengine.jobs WHERE id = $1", bad)
    assert "status 3" in err
    assert "bad input" in err


# -- leases and fencing ----------------------------------------------------------------------


async def test_a_job_whose_lease_is_lost_is_interrupted_and_writes_nothing(
    db_dsn: str, pool: asyncpg.Pool, rec: Recorder
) -> None:
    fenced_before = metrics.FENCED_WRITES._value.get()
    signals = DaemonSignals.enabled()
    cfg = config(lease_ttl=3.0, lease_renew_interval=0.3)
    async with run_daemon(cfg, db_dsn, handlers=handlers(rec), signals=signals) as daemon:
        job_id = await insert(pool, "hold", max_retries=0)
        await wait_for(lambda: _has_actor(daemon, job_id), message="actor")
        # Failed behind the daemon's back: its next renewal finds the job gone.
        await pool.execute("UPDATE jobengine.jobs SET status = 'failed' WHERE id = $1", job_id)
        while not (await signals.renewed.wait()).lost:
            pass
        await wait_for(lambda: _no_actor(daemon, job_id), within=3, message="interruption")
    assert await status_of(pool, job_id) == "failed"
    assert metrics.FENCED_WRITES._value.get() == fenced_before  # nothing was even attempted


async def test_stale_outcome_is_refused_when_the_job_moved_on(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    gate = anyio.Event()

    async def slow(job: Job) -> str:
        await gate.wait()
        return "stale"

    fenced_before = metrics.FENCED_WRITES._value.get()
    cfg = config(lease_ttl=60.0)
    async with run_daemon(cfg, db_dsn, handlers=from_callables({"s": slow})) as daemon:
        job_id = await insert(pool, "s", max_retries=5)
        await wait_for(lambda: _has_actor(daemon, job_id), message="actor")
        # Reaped behind the daemon's back (its lease "expired"), then re-claimed elsewhere.
        await pool.execute(
            "UPDATE jobengine.jobs SET status = 'failed', status_reason = 'lease_expired' WHERE id = $1",
            job_id)
        await pool.execute("UPDATE jobengine.jobs SET status = 'scheduled', run_at = now() + interval '1 hour' WHERE id = $1", job_id)
        await pool.execute("UPDATE jobengine.jobs SET status = 'running', lease_owner = 'elsewhere', lease_expires_at = now() + interval '1 hour' WHERE id = $1", job_id)
        gate.set()
        await wait_for(lambda: _no_actor(daemon, job_id), message="actor to finish")
        await daemon.writer.wait_idle()
    row = await pool.fetchrow("SELECT status::text AS s, attempt, result, lease_owner FROM jobengine.jobs WHERE id = $1", job_id)
    assert (row["s"], row["attempt"], row["result"], row["lease_owner"]) == ("running", 2, None, "elsewhere")
    assert metrics.FENCED_WRITES._value.get() == fenced_before + 1


async def test_reaper_rescues_a_job_whose_daemon_vanished(
    db_dsn: str, pool: asyncpg.Pool, rec: Recorder
) -> None:
    # A job left running by a daemon that died: its lease runs out in a moment.
    job_id = await insert(pool, "ok")
    await pool.execute("UPDATE jobengine.jobs SET status = 'scheduled' WHERE id = $1", job_id)
    await pool.execute(
        "UPDATE jobengine.jobs SET status = 'running', lease_owner = 'dead-daemon',"
        " lease_expires_at = clock_timestamp() + interval '200 ms' WHERE id = $1", job_id)
    signals = DaemonSignals.enabled()
    async with run_daemon(config(lease_ttl=2.0), db_dsn, handlers=handlers(rec), signals=signals):
        reaped = await signals.reaped.wait()
        assert (reaped.expired, reaped.retried) == (1, 1)
        await wait_status(pool, job_id, "completed", within=10)
    reasons = [r for _f, _t, r, _a in await history(pool, job_id)]
    assert "lease_expired" in reasons
    assert reasons[-1] == "completed"


# -- shutdown ----------------------------------------------------------------------------------


async def test_graceful_stop_lets_short_jobs_finish_and_gives_the_rest_back(
    db_dsn: str, pool: asyncpg.Pool, rec: Recorder
) -> None:
    quick_done = anyio.Event()

    async def quick(job: Job) -> str:
        await anyio.sleep(0.2)
        quick_done.set()
        return "done"

    hs = from_callables({"quick": quick, "hold": rec.hold})
    async with run_daemon(config(shutdown_grace=1.0), db_dsn, handlers=hs) as daemon:
        q = await insert(pool, "quick")
        h = await insert(pool, "hold", max_retries=0)
        await wait_for(lambda: _has_actor(daemon, h), message="hold to start")
        await wait_for(lambda: _has_actor(daemon, q) or _is_event(quick_done), message="quick")
    assert await pool.fetchval("SELECT status::text FROM jobengine.jobs WHERE id = $1", q) == "completed"
    row = await pool.fetchrow(
        "SELECT status::text AS s, status_reason, attempt, released FROM jobengine.jobs WHERE id = $1", h)
    assert (row["s"], row["status_reason"], row["attempt"], row["released"]) == (
        "scheduled", "shutdown", 1, 1)


async def _is_event(event: anyio.Event) -> bool:
    return event.is_set()


async def test_released_job_runs_again_without_using_its_retry(
    db_dsn: str, pool: asyncpg.Pool, rec: Recorder
) -> None:
    async with run_daemon(config(shutdown_grace=0.0), db_dsn, handlers=handlers(rec)) as daemon:
        job_id = await insert(pool, "hold", max_retries=0)
        await wait_for(lambda: _has_actor(daemon, job_id), message="start")
    assert await pool.fetchval("SELECT status::text FROM jobengine.jobs WHERE id = $1", job_id) == "scheduled"
    rec.release.set()
    async with run_daemon(config(), db_dsn, handlers=handlers(rec)):
        await wait_status(pool, job_id, "completed")
    assert [a for j, a in rec.calls if j == job_id] == [1, 2]


# -- the listener -------------------------------------------------------------------------------


async def test_work_continues_when_the_listener_connection_is_killed(
    db_dsn: str, pool: asyncpg.Pool, rec: Recorder
) -> None:
    reconnects = metrics.LISTENER_RECONNECTS._value.get()
    async with run_daemon(config(poll_interval=0.5), db_dsn, handlers=handlers(rec)) as daemon:
        first = await insert(pool, "ok")
        await wait_status(pool, first, "completed")
        pid = daemon.listener.backend_pid
        assert await pool.fetchval("SELECT pg_terminate_backend($1)", pid)
        second = await insert(pool, "ok")
        await wait_status(pool, second, "completed", within=5)
        await wait_for(lambda: _reconnected(daemon, pid), within=10, message="reconnect")
        third = await insert(pool, "ok")
        await wait_status(pool, third, "completed", within=5)
    assert metrics.LISTENER_RECONNECTS._value.get() >= reconnects + 1


async def _reconnected(daemon: Any, old_pid: int | None) -> bool:
    return bool(daemon.listener.connected and daemon.listener.backend_pid != old_pid)


async def test_concurrency_is_never_exceeded(db_dsn: str, pool: asyncpg.Pool) -> None:
    running = 0
    peak = 0
    full = anyio.Event()

    async def busy(job: Job) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 4:
            full.set()
        # The first jobs wait (bounded) until four run at once: the daemon does
        # use its whole capacity, and the peak shows it never goes past it.
        with anyio.move_on_after(5):
            await full.wait()
        await anyio.sleep(0.005)
        running -= 1

    async with run_daemon(config(concurrency=4), db_dsn, handlers=from_callables({"b": busy})):
        await pool.execute("INSERT INTO jobengine.jobs (kind) SELECT 'b' FROM generate_series(1, 60)")
        await wait_settled(pool)
    assert full.is_set()
    assert peak == 4
    await assert_every_history_is_a_valid_path(pool)


async def test_only_configured_queues_and_kinds_are_claimed(
    db_dsn: str, pool: asyncpg.Pool, rec: Recorder
) -> None:
    async with run_daemon(config(queues=["mine"]), db_dsn, handlers=handlers(rec)):
        mine = await insert(pool, "ok", queue="mine")
        other_queue = await insert(pool, "ok")
        unknown_kind = await insert(pool, "nobody-handles-this", queue="mine")
        await wait_status(pool, mine, "completed")
        # claim passes ran after the other inserts too: the others must still wait
        probe = await insert(pool, "ok", queue="mine")
        await wait_status(pool, probe, "completed")
    for job_id in (other_queue, unknown_kind):
        assert await pool.fetchval("SELECT status::text FROM jobengine.jobs WHERE id = $1",
                                   job_id) in ("pending", "scheduled")


async def test_timedelta_timeout_round_trips(pool: asyncpg.Pool) -> None:
    job_id = await pool.fetchval(
        "INSERT INTO jobengine.jobs (kind, timeout) VALUES ('x', '90 s') RETURNING id")
    assert await pool.fetchval("SELECT timeout FROM jobengine.jobs WHERE id = $1", job_id) == timedelta(seconds=90)


async def test_every_line_an_actor_writes_carries_the_job_id(
    db_dsn: str, pool: asyncpg.Pool, rec: Recorder
) -> None:
    from structlog.contextvars import merge_contextvars
    from structlog.testing import capture_logs

    # merge_contextvars is what the CLI's logging set-up runs first, too.
    with capture_logs(processors=[merge_contextvars]) as logs:
        async with run_daemon(config(), db_dsn, handlers=handlers(rec)):
            job_id = await insert(pool, "fail", max_retries=0)
            await wait_status(pool, job_id, "failed")
    actor_lines = [e for e in logs if e["event"] in ("job.started", "job.failed")]
    assert {e["event"] for e in actor_lines} == {"job.started", "job.failed"}
    for line in actor_lines:
        assert line["job_id"] == job_id
        assert line["kind"] == "fail"
        assert line["attempt"] == 1
    failed = next(e for e in actor_lines if e["event"] == "job.failed")
    assert failed["error"] == "RuntimeError: attempt 1 broke"


async def test_lease_keeper_fences_on_its_own_clock(pool: asyncpg.Pool) -> None:
    """A renewal that never succeeds: the attempt is stopped at claim + ttl - margin."""
    from jobengine.daemon.actor import Actor
    from jobengine.daemon.attempts import Attempts
    from jobengine.daemon.leases import LeaseKeeper
    from jobengine.domain import ManualClock
    from jobengine.store import JobStore

    clock = ManualClock()
    attempts = Attempts(unwritten=list)
    keeper = LeaseKeeper(JobStore(pool), "d1", attempts, lease_ttl=30.0, interval=10.0,
                         margin=5.0, clock=clock)
    actor = Actor(Job(id=1, kind="x", attempt=1),
                  lease_deadline=keeper.deadline_after(clock.monotonic()))  # claimed now
    attempts.add(actor)
    clock.advance(24.9)
    assert keeper.fence_once() == []
    clock.advance(0.1)  # 25 s = ttl - margin after the claim was sent
    assert keeper.fence_once() == [(1, 1)]
    assert actor.interrupted_for == "lease_lost"
    assert keeper.fence_once() == []  # stopped once
