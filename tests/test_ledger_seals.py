"""Sealed ledger days: what a consistent rewrite of whole chains (which chain
verification cannot see) looks like against an exported copy of the seals."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import anyio
import asyncpg
import pytest
from structlog.testing import capture_logs

from jobengine.daemon.config import RetentionSettings
from jobengine.daemon.retention import Retention
from jobengine.domain.seals import SealRecord, parse_seals
from jobengine.store import LedgerStore
from tests.ledgerutil import backdate, rechain, superuser_edit
from tests.test_cli import JOBENGINE

pytestmark = pytest.mark.anyio


@dataclass
class Ran:
    """A finished `jobengine` command: exit code, stdout, stderr."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
async def conn(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(db_dsn)
    yield c
    await c.close()


def today() -> date:
    return datetime.now(UTC).date()


async def lived_days_ago(conn: asyncpg.Connection, n: int, days: int) -> list[int]:
    """n jobs created and cancelled (two ledger rows each), moved `days` into the past."""
    ids: list[int] = [r[0] for r in await conn.fetch(
        "INSERT INTO jobengine.jobs (kind) SELECT 'x' FROM generate_series(1, $1) RETURNING id", n)]
    await conn.execute("UPDATE jobengine.jobs SET status = 'cancelled' WHERE id = ANY ($1)", ids)
    await backdate(conn, ids, timedelta(days=days))
    return ids


async def test_days_are_sealed_once_oldest_first_and_match_until_rewritten(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    ids = await lived_days_ago(conn, 3, days=3)
    ledger = LedgerStore(pool)
    sealed = await ledger.seal_days(timedelta(0), first=today() - timedelta(days=3))
    assert [(s.record.day, s.record.rows) for s in sealed] == [
        (today() - timedelta(days=3), 6), (today() - timedelta(days=2), 0),
        (today() - timedelta(days=1), 0)]
    assert await ledger.seal_days(timedelta(0)) == []  # each day once
    assert [s.record for s in await ledger.seals()] == [s.record for s in sealed]
    records = [s.record for s in sealed]
    assert {c.outcome for c in await ledger.check_seals(records)} == {"intact"}

    # A superuser rewrites one job's chain consistently: chain verification cannot tell...
    async with superuser_edit(conn):
        await conn.execute("UPDATE jobengine.ledger SET reason = 'forged'"
                           " WHERE job_id = $1 AND to_status = 'cancelled'", ids[0])
        await rechain(conn, [ids[0]])
    assert (await ledger.verify()).intact
    # ...the seals can: that day is named, the others still match.
    checks = await ledger.check_seals(records)
    assert [(c.record.day, c.outcome) for c in checks] == [
        (today() - timedelta(days=3), "changed"), (today() - timedelta(days=2), "intact"),
        (today() - timedelta(days=1), "intact")]


async def test_a_jobs_rows_removed_change_their_days_count(conn: asyncpg.Connection,
                                                   pool: asyncpg.Pool) -> None:
    ids = await lived_days_ago(conn, 2, days=2)
    ledger = LedgerStore(pool)
    sealed = await ledger.seal_days(timedelta(0), first=today() - timedelta(days=2))
    async with superuser_edit(conn):
        await conn.execute("DELETE FROM jobengine.ledger WHERE job_id = $1", ids[1])
    check = (await ledger.check_seals([sealed[0].record]))[0]
    assert (check.outcome, check.record.rows, check.rows_now) == ("changed", 4, 2)


async def test_a_day_retention_dropped_is_not_checked(conn: asyncpg.Connection,
                                                     pool: asyncpg.Pool) -> None:
    await conn.execute(
        "SELECT jobengine.retention_record_v1(false, NULL, interval '1 day', 0, NULL, NULL, NULL,"
        " 0, '[]', date_trunc('day', now()), 0, interval '0')")
    old = SealRecord(today() - timedelta(days=5), 10, bytes(32))
    assert [c.outcome for c in await LedgerStore(pool).check_seals([old])] == ["removed"]


async def test_the_seal_tables_rows_cannot_be_changed_and_bad_grace_is_refused(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await LedgerStore(pool).seal_days(timedelta(0))
    with pytest.raises(asyncpg.PostgresError, match=r"append-only|refuse|cannot"):
        await conn.execute("UPDATE jobengine.ledger_seals SET rows = 0")
    with pytest.raises(asyncpg.InvalidParameterValueError, match="grace period must be 0 or more"):
        await conn.execute("SELECT jobengine.ledger_seal_v1(interval '-1 hour')")


async def test_the_daemons_retention_pass_seals_yesterday_and_logs_it(pool: asyncpg.Pool) -> None:
    retention = Retention(LedgerStore(pool), RetentionSettings(seal_grace=0))
    with capture_logs() as logs:
        report = await retention.run_once()
    assert report is not None
    assert [s.record.day for s in report.sealed] == [today() - timedelta(days=1)]
    sealed = [e for e in logs if e["event"] == "ledger.day_sealed"]
    assert sealed == [{"event": "ledger.day_sealed", "log_level": "info",
                       **report.sealed[0].record.as_json()}]
    # The log line is an export `audit verify --seals` reads back.
    assert parse_seals(json.dumps(sealed[0])) == [report.sealed[0].record]


def test_parse_seals_takes_exports_and_journal_lines_and_names_a_bad_line() -> None:
    day = "2026-11-30"
    digest = "ab" * 32
    text = "\n".join([
        "Dec 01 01:00:00 host jobengine[1]: not json",
        json.dumps({"event": "retention.pass", "digest": "x"}),
        "Dec 01 01:00:01 host jobengine[1]: " + json.dumps(
            {"event": "ledger.day_sealed", "day": day, "rows": 7, "digest": digest}),
        json.dumps({"day": day, "rows": 7, "digest": digest, "sealed_at": "..."}),
    ])
    assert parse_seals(text) == [SealRecord(date(2026, 11, 30), 7, bytes.fromhex(digest))]
    with pytest.raises(ValueError, match="line 1: digest must be 64 hex digits"):
        parse_seals(json.dumps({"day": day, "rows": 1, "digest": "abcd"}))
    with pytest.raises(ValueError, match="line 2: day 2026-11-30 is given twice, differently"):
        parse_seals(json.dumps({"day": day, "rows": 1, "digest": digest}) + "\n"
                    + json.dumps({"day": day, "rows": 2, "digest": digest}))


async def test_the_cli_exports_seals_and_verify_names_a_rewritten_day(
    conn: asyncpg.Connection, db_dsn: str, tmp_path: Path
) -> None:
    ids = await lived_days_ago(conn, 2, days=1)

    async def cli(*args: str, grace: str = "3600") -> Ran:
        env = {**os.environ, "JOBENGINE_RETENTION_SEAL_GRACE": grace}
        done = await anyio.run_process([*JOBENGINE, *args, "--dsn", db_dsn], check=False, env=env)
        return Ran(done.returncode, done.stdout.decode(), done.stderr.decode())

    ran = await cli("retention", "run", grace="0")
    assert ran.returncode == 0, ran.stderr
    yesterday = today() - timedelta(days=1)
    assert f"ledger: sealed {yesterday}: 4 rows" in ran.stdout
    exported = await cli("audit", "seals")
    assert exported.returncode == 0, exported.stderr
    seals = tmp_path / "seals.jsonl"
    seals.write_text(exported.stdout)
    assert [r.day for r in parse_seals(exported.stdout)] == [yesterday]

    ok = await cli("audit", "verify", "--seals", str(seals))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "seals matched: 1 sealed day(s) as they were sealed" in ok.stdout
    async with superuser_edit(conn):
        await conn.execute("UPDATE jobengine.ledger SET actor = 'someone else' WHERE job_id = $1",
                           ids[0])
        await rechain(conn, [ids[0]])
    bad = await cli("audit", "verify", "--seals", str(seals))
    assert bad.returncode == 1
    assert "ledger intact" in bad.stdout  # the chains agree with themselves...
    assert f"day {yesterday}: CHANGED since it was sealed" in bad.stdout  # ...not with the seal
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"day": "2026-13-01", "rows": 1, "digest": "00"}\n')
    refused = await cli("audit", "verify", "--seals", str(broken))
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0
    assert "line 1: not a seal" in refused.stderr
