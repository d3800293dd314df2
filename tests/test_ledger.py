"""The ledger: one partitioned table behind job_history and timeline_events,
hash-chained per job, retained by policy, verified, and its notifications relayed.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import anyio
import asyncpg
import pytest

from jobengine.daemon import run_daemon
from jobengine.daemon.handlers import from_callables
from jobengine.domain import ConfigError
from jobengine.domain.models import Job
from jobengine.domain.retention import RetentionPolicy, format_duration, parse_duration
from jobengine.store import LedgerStore
from tests.daemon_helpers import config, insert, wait_status
from tests.dbutil import wait_for
from tests.ledgerutil import backdate, superuser_edit
from tests.test_cli import cli, err, out

pytestmark = pytest.mark.anyio


async def life(conn: asyncpg.Connection | asyncpg.Pool, n: int = 1, *, kind: str = "k") -> list[int]:
    """n jobs taken through pending -> scheduled -> running -> completed by a daemon's role."""
    ids: list[int] = [r["id"] for r in await conn.fetch(
        "INSERT INTO jobengine.jobs (kind) SELECT $1 FROM generate_series(1, $2) RETURNING id",
        kind, n)]
    async with _daemon_conn(conn) as c:
        rows = await c.fetch("SELECT id, attempt FROM jobengine.claim_v1('d1', ARRAY['default'],"
                             " ARRAY[$1], $2, '5 min')", kind, n)
        await c.fetch("SELECT * FROM jobengine.finish_v1('d1', $1::bigint[], $2::int[], $3::text[])",
                      [r["id"] for r in rows], [r["attempt"] for r in rows], ['{"ok": 1}'] * len(rows))
    return ids


class _daemon_conn:
    def __init__(self, db: asyncpg.Connection | asyncpg.Pool) -> None:
        self._db = db
        self._held: Any = None

    async def __aenter__(self) -> asyncpg.Connection:
        if isinstance(self._db, asyncpg.Pool):
            self._held = await self._db.acquire()
            conn: asyncpg.Connection = self._held
        else:
            conn = self._db
        await conn.execute("SET jobengine.actor = 'd1'")
        return conn

    async def __aexit__(self, *exc: object) -> None:
        if self._held is not None:
            await self._held.execute("RESET jobengine.actor")
            await self._db.release(self._held)


# -- one physical ledger, two views -------------------------------------------


async def test_each_transition_is_one_ledger_row_read_as_history_and_timeline(
    tx: asyncpg.Connection,
) -> None:
    [job] = await life(tx)
    rows = await tx.fetch("SELECT event_type, from_status::text, to_status::text, hash, prev_hash"
                          " FROM jobengine.ledger WHERE job_id = $1 ORDER BY id", job)
    assert [r["event_type"] for r in rows] == [
        "job.created", "job.scheduled", "job.started", "job.completed"]
    # chained: each row's prev_hash is the row before's hash
    assert rows[0]["prev_hash"] == b""
    assert [r["prev_hash"] for r in rows[1:]] == [r["hash"] for r in rows[:-1]]
    assert all(len(r["hash"]) == 32 for r in rows)
    head = await tx.fetchval("SELECT ledger_head FROM jobengine.jobs WHERE id = $1", job)
    assert head == rows[-1]["hash"]
    history = await tx.fetch("SELECT id, to_status::text FROM jobengine.job_history"
                             " WHERE job_id = $1 ORDER BY id", job)
    timeline = await tx.fetch("SELECT id, event_id, envelope FROM jobengine.timeline_events"
                              " WHERE job_id = $1 ORDER BY id", job)
    assert [h["id"] for h in history] == [t["id"] for t in timeline]
    envelope = json.loads(timeline[-1]["envelope"]) if isinstance(timeline[-1]["envelope"], str) \
        else timeline[-1]["envelope"]
    assert envelope["event_type"] == "job.completed"
    assert envelope["actor"] == "d1"
    assert envelope["event_id"] == str(timeline[-1]["event_id"])
    # the event id is stable: read again, the same
    again = await tx.fetchval("SELECT event_id FROM jobengine.timeline_events WHERE id = $1",
                              timeline[-1]["id"])
    assert again == timeline[-1]["event_id"]


async def test_a_note_is_chained_like_a_transition(tx: asyncpg.Connection) -> None:
    job = (await tx.fetchrow("INSERT INTO jobengine.jobs (kind) VALUES ('k') RETURNING id"))["id"]
    await tx.execute("SELECT jobengine.add_timeline_note(ARRAY[$1]::bigint[], 'job.held', 'why')", job)
    store = LedgerStore(tx)
    assert (await store.verify(job)).intact
    assert await tx.fetchval("SELECT count(*) FROM jobengine.job_history WHERE job_id = $1", job) == 1
    assert await tx.fetchval("SELECT count(*) FROM jobengine.timeline_events WHERE job_id = $1",
                             job) == 2


# -- tamper evidence ------------------------------------------------------------


async def test_verify_names_every_job_a_superuser_tampered_with(db_dsn: str) -> None:
    conn = await asyncpg.connect(db_dsn)
    try:
        altered, middle, newest, forged, gone, intact = await life(conn, 6)
        ok = await cli("audit", "verify", dsn=db_dsn)
        assert ok.returncode == 0, err(ok)
        assert "ledger intact: 24 ledger rows checked" in out(ok)
        async with superuser_edit(conn):
            await conn.execute("UPDATE jobengine.ledger SET reason = 'all fine' WHERE job_id = $1"
                               " AND event_type = 'job.completed'", altered)
            await conn.execute("DELETE FROM jobengine.ledger WHERE job_id = $1"
                               " AND event_type = 'job.started'", middle)
            await conn.execute("DELETE FROM jobengine.ledger WHERE job_id = $1"
                               " AND event_type = 'job.completed'", newest)
            await conn.execute(
                "INSERT INTO jobengine.ledger (job_id, occurred_at, prev_at, attempt, from_status,"
                " to_status, event_type, kind, queue, reason, actor, role, hash, prev_hash)"
                " SELECT job_id, occurred_at, occurred_at, 2, 'running', 'completed',"
                " 'job.completed', kind, queue, 'completed', actor, role, hash, hash"
                " FROM jobengine.ledger WHERE job_id = $1 ORDER BY id DESC LIMIT 1", forged)
            await conn.execute("DELETE FROM jobengine.ledger WHERE job_id = $1", gone)
        bad = await cli("audit", "verify", dsn=db_dsn)
        assert bad.returncode == 1, out(bad) + err(bad)
        named = {int(line.split()[1].rstrip(":")) for line in out(bad).splitlines()
                 if line.startswith("job ")}
        assert named == {altered, middle, newest, forged, gone}
        assert intact not in named
        assert "ledger NOT intact: 5 job(s)" in out(bad)
        one = await cli("audit", "verify", "--job", str(intact), dsn=db_dsn)
        assert one.returncode == 0
        assert "4 ledger rows checked" in out(one)
        two = await cli("audit", "verify", "--job", str(altered), dsn=db_dsn)
        assert two.returncode == 1
        assert "a row was altered" in out(two)
        bad_arg = await cli("audit", "verify", "--job", "0", dsn=db_dsn)
        assert bad_arg.returncode == 2
        assert "--job must be a job id" in err(bad_arg)
    finally:
        await conn.close()


async def test_a_forged_ledger_head_is_refused(tx: asyncpg.Connection) -> None:
    [job] = await life(tx)
    # (even the owner, even with the setting a note uses, but for another transaction)
    await tx.execute("SELECT set_config('jobengine.noting', '1', false)")
    with pytest.raises(asyncpg.CheckViolationError, match="ledger_head changes only with"):
        await tx.execute("UPDATE jobengine.jobs SET ledger_head = '\\x00' WHERE id = $1", job)


# -- retention --------------------------------------------------------------------


async def test_retention_removes_old_jobs_and_days_and_the_ledger_still_verifies(
    db_dsn: str,
) -> None:
    conn = await asyncpg.connect(db_dsn)
    try:
        old_done, purged_recent, needed = await life(conn, 3)
        waiting = (await conn.fetchrow(
            "INSERT INTO jobengine.jobs (kind, depends_on) VALUES ('k', ARRAY[$1]::bigint[])"
            " RETURNING id", needed))["id"]
        old_pending = (await conn.fetchrow(
            "INSERT INTO jobengine.jobs (kind) VALUES ('other') RETURNING id"))["id"]
        old_then_cancelled = (await conn.fetchrow(
            "INSERT INTO jobengine.jobs (kind) VALUES ('other') RETURNING id"))["id"]
        [fresh] = await life(conn, 1)
        await backdate(conn, [old_done, old_pending], timedelta(days=100))
        await backdate(conn, [old_then_cancelled], timedelta(days=95))
        await backdate(conn, [purged_recent, needed, waiting], timedelta(days=40))
        await conn.execute("UPDATE jobengine.jobs SET status = 'cancelled' WHERE id = $1",
                           old_then_cancelled)
        before = await conn.fetchval("SELECT count(*) FROM jobengine.ledger")
        assert (await cli("audit", "verify", dsn=db_dsn)).returncode == 0

        dry = await cli("retention", "run", "--dry-run", dsn=db_dsn)
        assert dry.returncode == 0, err(dry)
        assert "finished jobs: would remove 2" in out(dry)  # old_done, purged_recent
        assert await conn.fetchval("SELECT count(*) FROM jobengine.ledger") == before

        run = await cli("retention", "run", dsn=db_dsn)
        assert run.returncode == 0, err(run)
        assert "finished jobs: removed 2" in out(run)
        left = {r["id"] for r in await conn.fetch("SELECT id FROM jobengine.jobs")}
        assert left == {needed, waiting, old_pending, old_then_cancelled, fresh}
        # the days 95 and 100 days ago are gone, whole; last month's rows stay
        days = {r["name"] for r in await conn.fetch("SELECT name FROM jobengine.ledger_partitions()")}
        for ago in (100, 95):
            name = await conn.fetchval(
                "SELECT jobengine.ledger_partition_name(((now() AT TIME ZONE 'UTC')"
                " - make_interval(days => $1))::date)", ago)
            assert name not in days
        assert await conn.fetchval(
            "SELECT count(*) FROM jobengine.ledger WHERE job_id = $1", purged_recent) == 4
        assert await conn.fetchval(
            "SELECT count(*) FROM jobengine.ledger WHERE job_id = ANY ($1::bigint[])",
            [old_done, old_pending]) == 0
        log = await conn.fetchrow("SELECT * FROM jobengine.retention_log WHERE NOT dry_run"
                                  " ORDER BY id DESC LIMIT 1")
        assert log["jobs_removed"] == 2
        assert log["ledger_rows_removed"] >= 6
        assert log["ledger_removed_before"] is not None
        assert log["actor"] == "cli"
        assert len(json.loads(log["partitions_dropped"]) if isinstance(log["partitions_dropped"], str)
                   else log["partitions_dropped"]) >= 2

        # what is left verifies: the cancelled job's first row follows a removed day
        ok = await cli("audit", "verify", dsn=db_dsn)
        assert ok.returncode == 0, out(ok)
        # a job pending since before the window still runs, and chains on
        async with _daemon_conn(conn) as c:
            claimed = await c.fetch("SELECT id FROM jobengine.claim_v1('d1', ARRAY['default'],"
                                    " ARRAY['other'], 5, '5 min')")
        assert [r["id"] for r in claimed] == [old_pending]
        assert (await cli("audit", "verify", dsn=db_dsn)).returncode == 0
        # removing rows by hand from inside the window is still caught
        async with superuser_edit(conn):
            await conn.execute("DELETE FROM jobengine.ledger WHERE job_id = $1"
                               " AND event_type = 'job.cancelled'", old_then_cancelled)
        caught = await cli("audit", "verify", dsn=db_dsn)
        assert caught.returncode == 1
        assert f"job {old_then_cancelled}:" in out(caught)
    finally:
        await conn.close()


async def test_a_pass_removes_due_jobs_oldest_first_past_needed_and_locked_ones(
    db_dsn: str, pool: asyncpg.Pool,
) -> None:
    conn = await asyncpg.connect(db_dsn)
    holder = await asyncpg.connect(db_dsn)
    try:
        jobs = await life(conn, 6)
        for i, job in enumerate(jobs):  # jobs[0] finished first
            await backdate(conn, [job], timedelta(days=40, minutes=10 - i))
        needed, locked = jobs[0], jobs[1]
        await conn.execute("INSERT INTO jobengine.jobs (kind, depends_on) VALUES ('k', ARRAY[$1]::bigint[])",
                           needed)
        ledger = LedgerStore(pool)
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM jobengine.jobs WHERE id = $1 FOR UPDATE", locked)
            # Batches of 2: the oldest two are one needed and one held by another
            # session; the pass goes past them and removes the other four in order.
            report = await ledger.retention_pass(RetentionPolicy(), batch=2)
            assert report is not None
            assert report.jobs_removed == 4
            left = {r["id"] for r in await conn.fetch("SELECT id FROM jobengine.jobs WHERE id = ANY ($1)",
                                                      jobs)}
            assert left == {needed, locked}
        # the held one goes with the next pass; the needed one stays while needed
        report = await ledger.retention_pass(RetentionPolicy(), batch=2)
        assert report is not None
        assert report.jobs_removed == 1
        assert await conn.fetchval("SELECT array_agg(id) FROM jobengine.jobs WHERE id = ANY ($1)",
                                   jobs) == [needed]
    finally:
        await holder.close()
        await conn.close()


async def test_jobs_leave_only_through_retention(tx: asyncpg.Connection) -> None:
    [job] = await life(tx)
    with pytest.raises(asyncpg.RestrictViolationError, match="removed only by the retention"):
        async with tx.transaction():
            await tx.execute("DELETE FROM jobengine.jobs WHERE id = $1", job)
    # purge_jobs_v1 keeps what finished recently, and refuses nonsense
    assert (await tx.fetchrow("SELECT * FROM jobengine.purge_jobs_v1(now() - interval '1 day', 10)"))[
        "removed"] == 0
    with pytest.raises(asyncpg.InvalidParameterValueError, match="limit between 1 and 100000"):
        async with tx.transaction():
            await tx.execute("SELECT * FROM jobengine.purge_jobs_v1(now(), 0)")
    with pytest.raises(asyncpg.InvalidParameterValueError, match="boundary must be a time in the past"):
        async with tx.transaction():
            await tx.execute("SELECT * FROM jobengine.ledger_drop_v1(now() + interval '1 day')")


async def test_a_pass_holds_back_no_xmin_horizon(db_dsn: str, pool: asyncpg.Pool) -> None:
    """The session holding the pass's lock keeps no snapshot: removed jobs' tuples can be
    cleaned up (and their index entries skipped) while the pass goes on."""
    jobs = await life(pool, 120)
    async with pool.acquire() as conn:
        await backdate(conn, jobs, timedelta(days=40))
    store = LedgerStore(pool)
    seen: list[Any] = []
    passed = anyio.Event()

    async def watch() -> None:
        async with pool.acquire() as conn:
            while not passed.is_set():
                seen.extend(await conn.fetch(
                    "SELECT pid, backend_xmin FROM pg_stat_activity WHERE datname = current_database()"
                    " AND state = 'idle in transaction' AND backend_xmin IS NOT NULL"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        # one job per batch: the pass's transaction stays open across 120 batches
        report = await store.retention_pass(RetentionPolicy(), batch=1)
        passed.set()
    assert report is not None
    assert report.jobs_removed == 120
    assert seen == []


async def test_a_pass_runs_in_one_session_at_a_time(db_dsn: str, pool: asyncpg.Pool) -> None:
    store = LedgerStore(pool)
    async with pool.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock(7666530082071394662)")
        assert await store.retention_pass(RetentionPolicy()) is None
        busy = await cli("retention", "run", dsn=db_dsn)
        assert busy.returncode == 1
        assert "another retention pass is running" in err(busy)
        await holder.execute("SELECT pg_advisory_unlock(7666530082071394662)")
    report = await store.retention_pass(RetentionPolicy())
    assert report is not None
    assert report.log_id is not None


def test_the_policy_is_checked() -> None:
    assert RetentionPolicy.parse("30d", "90d") == RetentionPolicy()
    assert RetentionPolicy.parse("forever", "forever").audit is None
    assert parse_duration("12h", name="x") == timedelta(hours=12)
    assert format_duration(timedelta(days=30)) == "30d"
    with pytest.raises(ConfigError, match=r"must not be shorter than retention\.finished_jobs"):
        RetentionPolicy.parse("30d", "7d")
    with pytest.raises(ConfigError, match="must not be shorter"):
        RetentionPolicy.parse("forever", "90d")
    with pytest.raises(ConfigError, match=r"retention\.audit: expected a duration"):
        RetentionPolicy.parse("30d", "ninety days")
    with pytest.raises(ConfigError, match="longer than zero"):
        parse_duration("0d", name="retention.audit")


async def test_bad_retention_settings_are_one_line_errors(db_dsn: str, tmp_path: Any) -> None:
    cfg = tmp_path / "jobengine.toml"
    cfg.write_text('[retention]\nfinished_jobs = "30d"\naudit = "1d"\n')
    result = await cli("retention", "run", "--config", str(cfg), dsn=db_dsn)
    assert result.returncode == 1
    assert err(result).count("\n") == 1
    assert "retention.audit (1d) must not be shorter" in err(result)


# -- doctor ----------------------------------------------------------------------------


async def test_doctor_is_healthy_then_names_what_endangers_the_installation(db_dsn: str) -> None:
    await life_on(db_dsn, 3)
    healthy = await cli("doctor", dsn=db_dsn)
    assert healthy.returncode == 0, out(healthy)
    assert "healthy" in out(healthy)
    assert "size.ledger" in out(healthy)
    conn = await asyncpg.connect(db_dsn)
    slot = f"jobengine_doctor_test_{abs(hash(db_dsn)) % 10**8}"
    try:
        await conn.execute("SELECT pg_create_physical_replication_slot($1, true)", slot)
        sick = await cli("doctor", dsn=db_dsn)
        assert sick.returncode == 1
        assert "FAIL inactive_replication_slots" in out(sick)
        assert "1 problem(s)" in out(sick)
    finally:
        await conn.execute("SELECT pg_drop_replication_slot($1)", slot)
        await conn.close()


async def life_on(dsn: str, n: int) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return await life(conn, n)
    finally:
        await conn.close()


# -- relayed notifications ------------------------------------------------------------


class _Heard(list[tuple[str, str]]):
    """Notifications as they arrive; `sentinel` is set when ours does."""

    __hash__ = object.__hash__  # type: ignore[assignment]  # (a listener must be hashable)

    def __init__(self) -> None:
        super().__init__()
        self.sentinel = anyio.Event()

    def __call__(self, _conn: object, _pid: object, channel: str, payload: str) -> None:
        self.append((channel, payload))
        if channel == "sentinel":
            self.sentinel.set()


async def _listen(dsn: str) -> tuple[asyncpg.Connection, _Heard]:
    got = _Heard()
    conn = await asyncpg.connect(dsn)
    for channel in ("jobengine_events", "jobengine_wake", "jobengine_cancel", "sentinel"):
        await conn.add_listener(channel, got)
    return conn, got


async def _until_sentinel(dsn: str, got: _Heard) -> list[tuple[str, str]]:
    """What arrived before a NOTIFY sent now (everything committed earlier arrives first)."""
    got.sentinel = anyio.Event()
    sender = await asyncpg.connect(dsn)
    await sender.execute("SELECT pg_notify('sentinel', 'x')")
    await sender.close()
    with anyio.fail_after(10):
        await got.sentinel.wait()
    before = got[:got.index(("sentinel", "x"))]
    del got[:]
    return before


async def test_relayed_commits_send_nothing_and_the_relay_sends_it_all_in_order(db_dsn: str) -> None:
    owner = await asyncpg.connect(db_dsn)
    listener, got = await _listen(db_dsn)
    try:
        await owner.execute("UPDATE jobengine.settings SET value = 'relayed' WHERE name = 'notify_mode'")
        ids = [r["id"] for r in await owner.fetch(
            "INSERT INTO jobengine.jobs (kind) SELECT 'k' FROM generate_series(1, 3) RETURNING id")]
        await owner.execute("UPDATE jobengine.jobs SET status = 'cancelled' WHERE id = $1", ids[0])
        assert await _until_sentinel(db_dsn, got) == []  # the producers' commits notified nothing
        ledger = LedgerStore(owner)
        sent: list[int] = []

        async def relayed_all() -> bool:
            # Rows are relayed once no transaction older than them is open, in
            # the whole cluster: another database's open transaction delays them.
            sent.append(await ledger.relay(1000))
            return sum(sent) >= 4

        await wait_for(relayed_all, within=30, message="the relay to send the four rows")
        assert sum(sent) == 4
        relayed = await _until_sentinel(db_dsn, got)
        events = [json.loads(p) for ch, p in relayed if ch == "jobengine_events"]
        assert [(e["job_id"], e["event_type"]) for e in events] == [
            (ids[0], "job.created"), (ids[1], "job.created"), (ids[2], "job.created"),
            (ids[0], "job.cancelled")]
        # what the relay sends (envelope_text) is what the timeline reads, byte for byte
        stored = await owner.fetch("SELECT envelope::text AS e FROM jobengine.timeline_events ORDER BY id")
        assert [r["e"] for r in stored] == [p for ch, p in relayed if ch == "jobengine_events"]
        assert ("jobengine_wake", "default:new") in relayed
        assert await ledger.relay(1000) == 0  # nothing new: nothing sent twice
        # one relay at a time
        async with owner.transaction():
            await owner.execute("SELECT pg_advisory_xact_lock(7666530082071394661)")
            other = LedgerStore(listener)
            assert await other.relay(10) == -1
        await owner.execute("UPDATE jobengine.settings SET value = 'direct' WHERE name = 'notify_mode'")
        assert await ledger.relay(10) == -2
    finally:
        await listener.close()
        await owner.close()


async def test_a_relayed_daemon_is_woken_by_the_relay(db_dsn: str, pool: asyncpg.Pool) -> None:
    await pool.execute("UPDATE jobengine.settings SET value = 'relayed' WHERE name = 'notify_mode'")
    done: list[int] = []

    async def handler(job: Job) -> None:
        done.append(job.id)

    # No polling to speak of: only the relay's wake-up can start these jobs soon.
    cfg = config(poll_interval=3600.0)
    async with run_daemon(cfg, db_dsn, handlers=from_callables({"k": handler})):
        ids = [await insert(pool, "k") for _ in range(5)]
        for job_id in ids:
            await wait_status(pool, job_id, "completed", within=30)
    assert sorted(done) == sorted(ids)


async def test_the_daemon_makes_partitions_ahead_and_applies_the_policy_itself(
    db_dsn: str, pool: asyncpg.Pool,
) -> None:
    from jobengine.daemon.config import RetentionSettings

    [old] = await life(pool, 1)
    async with pool.acquire() as conn:
        await backdate(conn, [old], timedelta(days=40))
    cfg = config()
    cfg.retention = RetentionSettings(interval=0.2, partitions_ahead=10)
    async with run_daemon(cfg, db_dsn, handlers=from_callables({"k": lambda job: None})):

        async def passed() -> bool:
            n = await pool.fetchval("SELECT count(*) FROM jobengine.retention_log"
                                    " WHERE NOT dry_run AND actor <> 'cli'")
            return bool(n)

        await wait_for(passed, within=30, message="a retention pass by the daemon")
    assert await pool.fetchval("SELECT count(*) FROM jobengine.jobs WHERE id = $1", old) == 0
    ahead = await pool.fetchval("SELECT max(range_to) - now() FROM jobengine.ledger_partitions()")
    assert ahead > timedelta(days=10)
