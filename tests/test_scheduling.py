"""Scheduling: limits, paused queues and fairness in the claim; periodic jobs; all from SQL
and in-process daemons. (Several real daemon processes: tests/test_scheduling_process.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import asyncpg
import pytest

from jobengine.daemon import from_callables, run_daemon
from jobengine.daemon.config import DaemonConfig
from jobengine.daemon.testsignals import DaemonSignals
from jobengine.domain import Job
from jobengine.domain.errors import InvalidSchedule
from jobengine.domain.schedules import Schedule, ScheduleSpec, due_tick, from_config, next_ticks
from jobengine.store import SchedulingStore
from tests.daemon_helpers import config, insert, wait_status
from tests.dbutil import wait_for

pytestmark = pytest.mark.anyio

CLAIM = "SELECT id, limit_key FROM jobengine.claim_v1('t', '{default}', $1::text[], $2, '30s')"


async def claim(db: asyncpg.Pool | asyncpg.Connection, limit: int, kinds: tuple[str, ...] = ("k",)
                ) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch(CLAIM, list(kinds), limit)
    return rows


async def finish(db: asyncpg.Pool | asyncpg.Connection, ids: list[int]) -> None:
    await db.execute(
        "SELECT * FROM jobengine.finish_v1('t', $1::bigint[],"
        " (SELECT array_agg(attempt ORDER BY array_position($1::bigint[], id)) FROM jobengine.jobs"
        "  WHERE id = ANY ($1::bigint[])), array_fill('null'::text, ARRAY[cardinality($1::bigint[])]))",
        ids)


async def keyed_jobs(db: asyncpg.Pool | asyncpg.Connection, key: str | None, n: int,
                     **cols: Any) -> list[int]:
    return [await insert(db, "k", limit_key=key, **cols) for _ in range(n)]


# -- concurrency limits ------------------------------------------------------------------


async def test_a_concurrency_limit_caps_running_jobs_of_its_key_and_frees_a_slot_per_finish(
    pool: asyncpg.Pool,
) -> None:
    await pool.execute("INSERT INTO jobengine.concurrency_limits (key, max_running) VALUES ('pdf', 2)")
    await keyed_jobs(pool, "pdf", 6)
    other = await keyed_jobs(pool, "mail", 3)
    first = await claim(pool, 10)
    assert sorted(r["limit_key"] for r in first) == ["mail", "mail", "mail", "pdf", "pdf"]
    assert await claim(pool, 10) == [], "the key is full: nothing more of it starts"
    await finish(pool, [next(r["id"] for r in first if r["limit_key"] == "pdf")])
    again = await claim(pool, 10)
    assert [r["limit_key"] for r in again] == ["pdf"]
    assert not set(other) & {r["id"] for r in again}


async def test_running_jobs_with_expired_leases_still_count_until_they_leave_running(
    pool: asyncpg.Pool,
) -> None:
    await pool.execute("INSERT INTO jobengine.concurrency_limits (key, max_running) VALUES ('x', 1)")
    await keyed_jobs(pool, "x", 2)
    await pool.fetch("SELECT * FROM jobengine.claim_v1('t', '{default}', '{k}', 5, '1 millisecond')")
    await wait_for(lambda: pool.fetchval(
        "SELECT lease_expires_at < clock_timestamp() FROM jobengine.jobs WHERE status = 'running'"),
        message="the lease to expire")
    assert await claim(pool, 5) == [], "an expired lease is not a free slot until the job is reaped"


async def test_a_running_jobs_limit_key_cannot_change(pool: asyncpg.Pool) -> None:
    [job] = await keyed_jobs(pool, "a", 1)
    await claim(pool, 1)
    with pytest.raises(asyncpg.CheckViolationError, match="limit_key cannot change while the job runs"):
        await pool.execute("UPDATE jobengine.jobs SET limit_key = 'b' WHERE id = $1", job)


async def test_concurrent_claims_from_many_connections_never_exceed_a_limit(pool: asyncpg.Pool) -> None:
    await pool.execute("INSERT INTO jobengine.concurrency_limits (key, max_running) VALUES ('hot', 3)")
    await keyed_jobs(pool, "hot", 40)
    claimed: list[int] = []

    async def claimer() -> None:
        for _ in range(5):
            claimed.extend(r["id"] for r in await claim(pool, 4))

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(claimer)
    assert len(claimed) == 3
    assert await pool.fetchval(
        "SELECT count(*) FROM jobengine.jobs WHERE status = 'running' AND limit_key = 'hot'") == 3


# -- rate limits -----------------------------------------------------------------------------


async def test_a_rate_limit_allows_max_starts_per_window_and_counts_every_start(pool: asyncpg.Pool) -> None:
    await pool.execute("INSERT INTO jobengine.rate_limits (key, max_starts, per) VALUES ('api', 3, '1 hour')")
    await keyed_jobs(pool, "api", 5)
    assert len(await claim(pool, 2)) == 2
    started = await claim(pool, 5)
    assert len(started) == 1
    await finish(pool, [r["id"] for r in started])
    assert await claim(pool, 5) == [], "finishing does not give a start back within the window"
    held = await pool.fetchrow("SELECT * FROM jobengine.held_v1('{default}')")
    first_start = await pool.fetchval("SELECT min(started_at) FROM jobengine.rate_limit_starts")
    assert held["rate_next_at"] == first_start + timedelta(hours=1)
    assert held["limits_exist"]


async def test_a_window_that_opened_after_a_claim_looked_is_reported_to_that_claim(
    pool: asyncpg.Pool,
) -> None:
    # A daemon asks held_v2 just after a claim left jobs behind; if the window
    # opened between the two, "it opens later" is wrong and "no opening" would
    # leave the job to the polling interval: the opening is reported, in the past.
    await pool.execute("INSERT INTO jobengine.rate_limits (key, max_starts, per) VALUES ('w', 1, '1 hour')")
    await keyed_jobs(pool, "w", 2)
    assert len(await claim(pool, 5)) == 1
    claimed_at = await pool.fetchval("SELECT statement_timestamp()")
    assert await claim(pool, 5) == []
    # the window's one start leaves it: as if the hour passed since the claim looked
    await pool.execute("UPDATE jobengine.rate_limit_starts SET started_at = $1::timestamptz - interval '1 hour'",
                       claimed_at)
    held = await pool.fetchrow("SELECT * FROM jobengine.held_v2('{default}', $1)",
                               claimed_at - timedelta(seconds=1))
    assert held["rate_next_at"] == claimed_at
    # asked since a later claim (that one saw the window open), or with no claim: nothing holds
    later = await pool.fetchrow("SELECT * FROM jobengine.held_v2('{default}', $1)", claimed_at)
    assert later["rate_next_at"] is None
    assert (await pool.fetchrow("SELECT * FROM jobengine.held_v1('{default}')"))["rate_next_at"] is None
    assert len(await claim(pool, 5)) == 1


async def test_held_says_when_due_jobs_wait_on_a_full_concurrency_limit(pool: asyncpg.Pool) -> None:
    async def concurrency_held() -> bool:
        row = await pool.fetchrow("SELECT * FROM jobengine.held_v2('{default}')")
        assert row["limits_exist"]
        return bool(row["concurrency_held"])

    await pool.execute("INSERT INTO jobengine.concurrency_limits (key, max_running) VALUES ('c', 1)")
    await keyed_jobs(pool, "c", 2)
    assert not await concurrency_held()  # room for one: nothing holds
    started = await claim(pool, 5)
    assert len(started) == 1
    assert await concurrency_held()  # the second waits for the first to end
    await finish(pool, [r["id"] for r in started])
    assert not await concurrency_held()


async def test_a_rate_limit_window_slides(pool: asyncpg.Pool) -> None:
    await pool.execute("INSERT INTO jobengine.rate_limits (key, max_starts, per) VALUES ('s', 1, '200 ms')")
    await keyed_jobs(pool, "s", 2)
    assert len(await claim(pool, 5)) == 1
    assert await claim(pool, 5) == []
    got = await wait_for(lambda: claim(pool, 5), message="the window to slide past the first start")
    assert len(got) == 1
    starts = [r[0] for r in await pool.fetch(
        "SELECT occurred_at FROM jobengine.job_history WHERE to_status = 'running' ORDER BY id")]
    assert starts[1] - starts[0] >= timedelta(milliseconds=200)


async def test_limits_refuse_nonsense_naming_the_field(pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match="max_running_positive"):
        await pool.execute("INSERT INTO jobengine.concurrency_limits (key, max_running) VALUES ('a', 0)")
    with pytest.raises(asyncpg.CheckViolationError, match="rate_limits_per_valid"):
        await pool.execute("INSERT INTO jobengine.rate_limits (key, max_starts, per) VALUES ('a', 1, '0 s')")
    assert await pool.fetchval("SELECT count(*) FROM jobengine.rate_limits") == 0


# -- paused queues --------------------------------------------------------------------------


async def test_a_paused_queue_gets_no_claims_and_running_jobs_finish(pool: asyncpg.Pool) -> None:
    await keyed_jobs(pool, None, 2)
    [running] = await claim(pool, 1)
    await pool.execute("INSERT INTO jobengine.queues (name, paused) VALUES ('default', true)")
    assert await claim(pool, 5) == []
    await finish(pool, [running["id"]])
    assert await pool.fetchval("SELECT status::text FROM jobengine.jobs WHERE id = $1", running["id"]) == "completed"
    await pool.execute("UPDATE jobengine.queues SET paused = false WHERE name = 'default'")
    assert len(await claim(pool, 5)) == 1


async def test_pausing_records_who_and_resuming_wakes_the_daemons(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    listener = await asyncpg.connect(db_dsn)
    try:
        woken: list[str] = []
        await listener.add_listener("jobengine_wake", lambda *a: woken.append(a[3]))
        await pool.execute("INSERT INTO jobengine.queues (name, paused) VALUES ('q1', true)")
        await pool.execute("UPDATE jobengine.queues SET paused = false WHERE name = 'q1'")

        async def resumed() -> bool:
            return woken == ["q1:ready"]

        await wait_for(resumed, message="one wake-up, for the resumed queue")
        assert await pool.fetchval("SELECT changed_by FROM jobengine.queues WHERE name = 'q1'") == "tests"
    finally:
        await listener.close()


# -- fairness and aging ------------------------------------------------------------------


async def test_a_burst_of_one_key_does_not_starve_the_others(pool: asyncpg.Pool) -> None:
    await pool.execute("INSERT INTO jobengine.jobs (kind, limit_key) SELECT 'k', 'bulk' FROM generate_series(1, 5000)")
    late = {f"tenant-{i}": (await keyed_jobs(pool, f"tenant-{i}", 2))[0] for i in range(8)}
    first = await claim(pool, 10)
    keys = [r["limit_key"] for r in first]
    assert set(late) <= set(keys), "each key's first job comes in the first claim"
    assert keys.count("bulk") == 2, "the burst gets its turn too, not the whole claim"


async def test_jobs_without_a_key_are_one_group_among_the_keys(pool: asyncpg.Pool) -> None:
    await pool.execute("INSERT INTO jobengine.jobs (kind) SELECT 'k' FROM generate_series(1, 3000)")
    keyed = [(await keyed_jobs(pool, f"c{i}", 1))[0] for i in range(4)]
    got = await claim(pool, 5)
    assert {r["id"] for r in got} >= set(keyed)


async def test_claims_rotate_through_more_keys_than_one_claim_looks_at(pool: asyncpg.Pool) -> None:
    # 100 keys of 3 jobs, claims of 1 (each looks at 32 keys): every key is served
    # before any key gets its second job.
    await pool.execute(
        "INSERT INTO jobengine.jobs (kind, limit_key)"
        " SELECT 'k', 'key-' || lpad(g::text, 3, '0') FROM generate_series(1, 100) g, generate_series(1, 3)")
    conn = await pool.acquire()
    try:
        served = [(await claim(conn, 1))[0]["limit_key"] for _ in range(100)]
    finally:
        await pool.release(conn)
    assert len(set(served)) == 100


async def test_keys_behind_a_long_run_of_full_limits_are_not_starved(pool: asyncpg.Pool) -> None:
    # 40 keys first in the rotation, each at its concurrency limit with more
    # waiting, then one free key: more full keys in a row than a claim of 1
    # walks (17). A claim that comes back short moves the rotation past
    # everything it walked, so the free key's job starts within a few claims.
    full = [f"a-{i:02d}" for i in range(40)]
    await pool.execute("INSERT INTO jobengine.concurrency_limits (key, max_running)"
                       " SELECT unnest($1::text[]), 1", full)
    await pool.execute("INSERT INTO jobengine.jobs (kind, limit_key)"
                       " SELECT 'k', k FROM unnest($1::text[]) k, generate_series(1, 2)", full)
    [free] = await keyed_jobs(pool, "z-free", 1)
    # (the claims of 1 on their own connection: its rotation starts at the first key)
    async with pool.acquire() as other, pool.acquire() as conn:
        assert len(await claim(other, 40)) == 40, "one running job per full key"
        took = [r["id"] for _ in range(4) for r in await claim(conn, 1)]
    assert took == [free]


async def test_priority_wins_within_the_aging_window_and_a_long_wait_beats_it(pool: asyncpg.Pool) -> None:
    await pool.execute("UPDATE jobengine.settings SET value = '1 second' WHERE name = 'priority_aging'")
    now = await pool.fetchval("SELECT now()")
    old_low = await insert(pool, "k", priority=0, run_at=now - timedelta(seconds=30))
    fresh_low = await insert(pool, "k", priority=0)
    high = [await insert(pool, "k", priority=10) for _ in range(3)]
    order = [r["id"] for r in await claim(pool, 5)]
    # waited 30 s = 30 levels > priority 10; then the priority-10 jobs; the fresh low one last
    assert order == [old_low, *high, fresh_low]


async def test_with_aging_off_priority_always_wins(pool: asyncpg.Pool) -> None:
    await pool.execute("UPDATE jobengine.settings SET value = 'off' WHERE name = 'priority_aging'")
    now = await pool.fetchval("SELECT now()")
    old_low = await insert(pool, "k", priority=0, run_at=now - timedelta(days=300))
    high = await insert(pool, "k", priority=1)
    assert [r["id"] for r in await claim(pool, 2)] == [high, old_low]


async def test_priority_aging_refuses_nonsense(pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match="priority_aging must be"):
        await pool.execute("UPDATE jobengine.settings SET value = '2 days' WHERE name = 'priority_aging'")


# -- schedules in SQL --------------------------------------------------------------------------


@pytest.mark.parametrize(("values", "field", "words"), [
    ("('r', '61 * * * *', NULL, 'k', 'UTC')", "cron", "values must be from 0 to 59"),
    ("('r', '0 3 * *', NULL, 'k', 'UTC')", "cron", "expected 5 fields"),
    ("('r', '0 3 31 2 *', NULL, 'k', 'UTC')", "cron", "no month"),
    ("('r', '*/0 * * * *', NULL, 'k', 'UTC')", "cron", "step must be at least 1"),
    ("('r', '0 3 * * *', NULL, 'k', 'Mars/Olympus')", "timezone", "unknown time zone"),
    ("('r', '0 3 * * *', '1 hour', 'k', 'UTC')", "every", "exactly one of cron and every"),
    ("('r', NULL, NULL, 'k', 'UTC')", "cron", "exactly one of cron and every"),
    ("('r', NULL, '500 ms', 'k', 'UTC')", "every", "at least 1 second"),
])
async def test_sql_refuses_a_schedule_that_could_not_run_naming_it_and_the_field(
    pool: asyncpg.Pool, values: str, field: str, words: str
) -> None:
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await pool.execute(
            f"INSERT INTO jobengine.schedules (name, cron, every, kind, timezone) VALUES {values}")
    assert f"schedule r: {field}: " in caught.value.args[0]
    assert words in caught.value.args[0]
    assert await pool.fetchval("SELECT count(*) FROM jobengine.schedules") == 0


async def test_sql_accepts_what_cron_users_write(pool: asyncpg.Pool) -> None:
    for i, expr in enumerate(["0 9 * * mon-fri", "*/15 * * * *", "0 0 1 jan,jul *", "5 4 * * 7",
                              "@daily", "0-30/10 8-18 * * 1-5"]):
        await pool.execute("INSERT INTO jobengine.schedules (name, cron, kind) VALUES ($1, $2, 'k')",
                           f"s{i}", expr)
        spec = ScheduleSpec(name=f"s{i}", kind="k", cron=expr)
        assert next_ticks(spec, datetime(2026, 1, 1, tzinfo=UTC), 1)


async def test_a_tick_creates_its_job_once_with_the_contracts_key(pool: asyncpg.Pool) -> None:
    await pool.execute("INSERT INTO jobengine.schedules (name, every, kind, payload, limit_key)"
                       " VALUES ('beat', '1 minute', 'k', '{\"a\": 1}', 'lk')")
    await pool.execute("UPDATE jobengine.schedules SET created_at = now() - interval '1 hour'")
    tick = await pool.fetchval("SELECT date_trunc('minute', now())")
    job = await pool.fetchval("SELECT jobengine.schedule_tick_v1('beat', $1, 0)", tick)
    assert job is not None
    assert await pool.fetchval("SELECT jobengine.schedule_tick_v1('beat', $1, 0)", tick) is None
    row = await pool.fetchrow("SELECT * FROM jobengine.jobs WHERE id = $1", job)
    assert row["idempotency_key"] == "schedule:beat:" + tick.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert (row["kind"], row["limit_key"], row["run_at"]) == ("k", "lk", tick)
    assert await pool.fetchval("SELECT last_job_id FROM jobengine.schedules") == job


# -- schedules: the pure side -------------------------------------------------------------------


BERLIN = ZoneInfo("Europe/Berlin")


def test_a_0230_job_on_the_spring_forward_day_runs_once() -> None:
    spec = ScheduleSpec(name="n", kind="k", cron="30 2 * * *", timezone="Europe/Berlin")
    ticks = next_ticks(spec, datetime(2026, 3, 28, 12, tzinfo=BERLIN), 3)
    local = [t.astimezone(BERLIN) for t in ticks]
    # 29 March 2026: 02:00 -> 03:00; the 02:30 that does not exist runs once, at 03:00
    assert [(t.day, t.hour, t.minute) for t in local] == [(29, 3, 0), (30, 2, 30), (31, 2, 30)]


def test_a_0230_job_on_the_fall_back_day_runs_once() -> None:
    spec = ScheduleSpec(name="n", kind="k", cron="30 2 * * *", timezone="Europe/Berlin")
    ticks = next_ticks(spec, datetime(2026, 10, 24, 12, tzinfo=BERLIN), 3)
    assert [t.astimezone(BERLIN).day for t in ticks] == [25, 26, 27]
    assert ticks[0] == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # the first 02:30 (CEST)


def test_every_ticks_are_fixed_lengths_from_the_epoch() -> None:
    spec = ScheduleSpec(name="n", kind="k", every=timedelta(seconds=90))
    assert next_ticks(spec, datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC), 2) == [
        datetime(2026, 1, 1, 0, 1, 30, tzinfo=UTC), datetime(2026, 1, 1, 0, 3, tzinfo=UTC)]


def test_missed_ticks_become_one_job_for_the_latest() -> None:
    schedule = Schedule(name="n", kind="k", cron="*/5 * * * *",
                        last_tick=datetime(2026, 1, 1, 10, 0, tzinfo=UTC))
    assert due_tick(schedule, datetime(2026, 1, 1, 11, 2, tzinfo=UTC)) == (
        datetime(2026, 1, 1, 11, 0, tzinfo=UTC), 11)
    assert due_tick(schedule, datetime(2026, 1, 1, 10, 4, tzinfo=UTC)) is None
    every = Schedule(name="n", kind="k", every=timedelta(minutes=1),
                     created_at=datetime(2026, 1, 1, 10, 0, 30, tzinfo=UTC))
    assert due_tick(every, datetime(2026, 1, 1, 10, 3, 10, tzinfo=UTC)) == (
        datetime(2026, 1, 1, 10, 3, tzinfo=UTC), 2)


def test_a_cron_schedule_down_for_years_jumps_to_the_latest_tick() -> None:
    schedule = Schedule(name="n", kind="k", cron="* * * * *",
                        last_tick=datetime(2020, 1, 1, tzinfo=UTC))
    tick, missed = due_tick(schedule, datetime(2026, 6, 1, 12, 0, 30, tzinfo=UTC)) or (None, 0)
    assert tick == datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    assert missed >= 10_000


@pytest.mark.parametrize(("table", "field"), [
    ({"kind": "k", "cron": "0 3 * * *", "every": "1h"}, "every"),
    ({"kind": "k"}, "cron"),
    ({"kind": "k", "every": "0.5s"}, "every"),
    ({"kind": "k", "every": "soon"}, "every"),
    ({"kind": "k", "cron": "0 25 * * *"}, "cron"),
    ({"kind": "k", "cron": "0 3 * * *", "timezone": "Nowhere/Land"}, "timezone"),
    ({"kind": "k", "cron": "0 3 * * *", "colour": "red"}, "colour"),
    ({"kind": 5, "cron": "0 3 * * *"}, "kind"),
])
def test_config_schedules_are_checked_naming_the_schedule_and_field(
    table: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        from_config("nightly", table)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"schedule nightly: {field}: ")


# -- in-process daemons --------------------------------------------------------------------


class Gate:
    """A handler that holds each job until released, recording starts."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.release = anyio.Event()

    async def hold(self, job: Job) -> None:
        self.started.append(job.id)
        await self.release.wait()

    async def quick(self, job: Job) -> None:
        self.started.append(job.id)


def quiet(**daemon: Any) -> DaemonConfig:
    """A daemon that never polls: whatever it does, a notification or a timer made it do."""
    return config(poll_interval=600.0, **daemon)


async def test_a_held_job_starts_when_the_running_one_of_its_key_ends(db_dsn: str, pool: asyncpg.Pool) -> None:
    gate = Gate()
    await pool.execute("INSERT INTO jobengine.concurrency_limits (key, max_running) VALUES ('one', 1)")
    first = await insert(pool, "hold", limit_key="one")
    second = await insert(pool, "hold", limit_key="one")
    async with run_daemon(quiet(), db_dsn, handlers=from_callables({"hold": gate.hold})):
        await wait_status(pool, first, "running")
        assert await pool.fetchval("SELECT status::text FROM jobengine.jobs WHERE id = $1", second) == "pending"
        gate.release.set()
        await wait_status(pool, second, "completed")
    assert gate.started == [first, second]


async def test_a_rate_held_job_starts_when_the_window_lets_it(db_dsn: str, pool: asyncpg.Pool) -> None:
    gate = Gate()
    await pool.execute("INSERT INTO jobengine.rate_limits (key, max_starts, per) VALUES ('r', 1, '1 second')")
    jobs = [await insert(pool, "quick", limit_key="r") for _ in range(2)]
    async with run_daemon(quiet(), db_dsn, handlers=from_callables({"quick": gate.quick})):
        for job in jobs:
            await wait_status(pool, job, "completed")
    starts = [r[0] for r in await pool.fetch(
        "SELECT occurred_at FROM jobengine.job_history WHERE to_status = 'running' ORDER BY occurred_at")]
    assert starts[1] - starts[0] >= timedelta(seconds=1)


async def test_a_queue_paused_from_sql_is_obeyed_and_resuming_runs_its_jobs(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    gate = Gate()
    signals = DaemonSignals.enabled()
    async with run_daemon(quiet(queues=["default", "other"]), db_dsn, signals=signals,
                          handlers=from_callables({"quick": gate.quick})):
        await pool.execute("INSERT INTO jobengine.queues (name, paused) VALUES ('default', true)")
        held = await insert(pool, "quick")
        # A job of another queue, inserted after, runs: the daemon looked and left the paused one.
        probe = await insert(pool, "quick", queue="other")
        await wait_status(pool, probe, "completed")
        assert await pool.fetchval("SELECT status::text FROM jobengine.jobs WHERE id = $1", held) == "pending"
        await pool.execute("UPDATE jobengine.queues SET paused = false WHERE name = 'default'")
        await wait_status(pool, held, "completed")


async def test_the_daemon_ticks_an_every_schedule_and_upserts_its_config(db_dsn: str, pool: asyncpg.Pool) -> None:
    gate = Gate()
    signals = DaemonSignals.enabled()
    cfg = quiet()
    cfg.schedules = [ScheduleSpec(name="beat", kind="quick", every=timedelta(seconds=1),
                                  payload={"from": "config"})]
    async with run_daemon(cfg, db_dsn, signals=signals, handlers=from_callables({"quick": gate.quick})):
        name, first = await signals.ticked.wait(within=10)
        _, second = await signals.ticked.wait(within=10)
    assert name == "beat"
    rows = await pool.fetch("SELECT id, payload, run_at, idempotency_key FROM jobengine.jobs ORDER BY id")
    assert [r["id"] for r in rows][:2] == [first, second]
    assert rows[1]["run_at"] - rows[0]["run_at"] == timedelta(seconds=1)
    assert all(r["idempotency_key"].startswith("schedule:beat:") for r in rows)


async def test_missed_ticks_make_one_job_that_says_so(db_dsn: str, pool: asyncpg.Pool) -> None:
    await pool.execute("INSERT INTO jobengine.schedules (name, every, kind) VALUES ('m', '1 minute', 'quick')")
    await pool.execute("UPDATE jobengine.schedules SET last_tick = date_trunc('minute', now()) - interval '10 minutes'")
    signals = DaemonSignals.enabled()
    gate = Gate()
    async with run_daemon(quiet(), db_dsn, signals=signals, handlers=from_callables({"quick": gate.quick})):
        _, job = await signals.ticked.wait(within=10)
    notes = await pool.fetch(
        "SELECT envelope->>'reason' AS reason FROM jobengine.timeline_events"
        " WHERE job_id = $1 AND event_type = 'job.schedule_missed'", job)
    assert len(notes) == 1
    assert "9 earlier ticks were missed while no daemon ran" in notes[0]["reason"]
    assert await pool.fetchval("SELECT count(*) FROM jobengine.jobs") == 1


async def test_resuming_a_paused_schedule_does_not_run_the_ticks_of_its_pause(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    store = SchedulingStore(pool)
    await store.upsert_schedule(ScheduleSpec(name="p", kind="quick", every=timedelta(minutes=1)))
    await store.set_schedule_enabled("p", False)
    await pool.execute("UPDATE jobengine.schedules SET created_at = now() - interval '1 hour'")
    await store.set_schedule_enabled("p", True)
    [schedule], now = await store.schedules()
    due = due_tick(schedule, now)
    assert due is None or due == (now.replace(second=0, microsecond=0), 0)
