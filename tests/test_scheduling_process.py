"""Scheduling across several real `jobengine run` processes: limits never exceeded, one job
per tick, a paused queue takes nothing."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import anyio
import asyncpg
import pytest

from tests.daemon_helpers import assert_every_history_is_a_valid_path, daemon_ready, wait_settled
from tests.dbutil import wait_for
from tests.test_daemon_process import Daemons

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SPAN = {"JOBENGINE_HANDLERS_SPAN": "tests.handlers:span"}


@pytest.fixture
def daemons(db_dsn: str, tmp_path: Path) -> Iterator[Daemons]:
    d = Daemons(db_dsn, tmp_path)
    yield d
    d.stop_all()


async def start_three(daemons: Daemons, *args: str, **settings: object) -> None:
    logs = [daemons.start(*args, env=SPAN, **settings)[1] for _ in range(3)]
    for log in logs:
        await daemon_ready(log)


async def test_three_daemons_never_exceed_concurrency_limits(
    daemons: Daemons, recording_db: asyncpg.Connection
) -> None:
    await recording_db.execute(
        "INSERT INTO jobengine.concurrency_limits (key, max_running) VALUES ('a', 2), ('b', 1)")
    await start_three(daemons, concurrency=10)
    await recording_db.execute(
        "INSERT INTO jobengine.jobs (kind, limit_key, payload)"
        " SELECT 'span', (ARRAY['a', 'b', 'free'])[1 + g % 3], '{\"sleep\": 0.02}'"
        " FROM generate_series(1, 150) g")
    peaks: dict[str, int] = {}
    with anyio.move_on_after(120):
        while await recording_db.fetchval(
                "SELECT count(*) FROM jobengine.jobs WHERE status <> 'completed'"):
            for row in await recording_db.fetch(
                    "SELECT limit_key, count(*) AS n FROM jobengine.jobs WHERE status = 'running'"
                    " GROUP BY 1"):
                key = row["limit_key"] or "-"
                peaks[key] = max(peaks.get(key, 0), row["n"])
    await wait_settled(recording_db, within=5)
    assert peaks.get("a", 0) <= 2, peaks
    assert peaks.get("b", 0) <= 1, peaks
    # The handlers' own log: at no instant more than the limit ran.
    for key, limit in (("a", 2), ("b", 1)):
        spans = await recording_db.fetch(
            "SELECT started_at, ended_at FROM test_spans WHERE limit_key = $1", key)
        assert len(spans) == 50
        events = sorted([(s["started_at"], 1) for s in spans] + [(s["ended_at"], -1) for s in spans],
                        key=lambda e: (e[0], e[1]))
        running = most = 0
        for _, step in events:
            running += step
            most = max(most, running)
        assert most <= limit, f"{key}: {most} handlers ran at once (limit {limit})"
    pids = {r[0] for r in await recording_db.fetch("SELECT DISTINCT pid FROM test_spans")}
    assert len(pids) >= 2, "the work should be shared"
    await assert_every_history_is_a_valid_path(recording_db)


async def test_three_daemons_make_exactly_one_job_per_tick(
    daemons: Daemons, recording_db: asyncpg.Connection, tmp_path: Path
) -> None:
    config = tmp_path / "jobengine.toml"
    config.write_text('[schedules.beat]\nevery = "1s"\nkind = "span"\n')
    await start_three(daemons, "--config", str(config))

    async def ticks() -> int | None:
        n: int = await recording_db.fetchval("SELECT count(*) FROM jobengine.jobs WHERE status = 'completed'")
        return n if n >= 5 else None

    await wait_for(ticks, within=60, message="five ticks")
    rows = await recording_db.fetch(
        "SELECT idempotency_key, run_at, created_at FROM jobengine.jobs ORDER BY run_at")
    keys = [r["idempotency_key"] for r in rows]
    assert len(keys) == len(set(keys))
    runs = [r["run_at"] for r in rows]
    gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(runs)}
    assert gaps == {1.0}, f"one job per tick, none skipped, none twice: {gaps}"
    assert all((r["created_at"] - r["run_at"]).total_seconds() < 1.0 for r in rows), \
        "each tick's job is created within a second of the tick"
    assert await recording_db.fetchval("SELECT count(*) FROM jobengine.schedules") == 1


async def test_a_paused_queue_takes_no_new_job_on_any_daemon(
    daemons: Daemons, recording_db: asyncpg.Connection
) -> None:
    await start_three(daemons, queues='["default","other"]')
    await recording_db.execute("INSERT INTO jobengine.queues (name, paused) VALUES ('default', true)")
    held = await recording_db.fetchval(
        "INSERT INTO jobengine.jobs (kind) SELECT 'span' FROM generate_series(1, 20) RETURNING id")
    # Jobs of another queue, inserted after, run on every daemon: they looked and left 'default'.
    await recording_db.execute(
        "INSERT INTO jobengine.jobs (kind, queue, payload) SELECT 'span', 'other', '{\"sleep\": 0.05}'"
        " FROM generate_series(1, 60)")

    async def others_done() -> bool:
        return not await recording_db.fetchval(
            "SELECT count(*) FROM jobengine.jobs WHERE queue = 'other' AND status <> 'completed'")

    await wait_for(others_done, within=60, message="the other queue's jobs")
    assert await recording_db.fetchval(
        "SELECT count(*) FROM jobengine.jobs WHERE queue = 'default' AND status <> 'pending'") == 0
    assert held
    await recording_db.execute("UPDATE jobengine.queues SET paused = false WHERE name = 'default'")
    await wait_settled(recording_db, within=30)
