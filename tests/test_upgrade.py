"""A rolling upgrade from release 0.1.0: migrate under a running old daemon, then run both.

The old release's code comes from the repository's own history (the commit
tagged v0.1.0), extracted with `git archive`, so the test runs the very code
users have. The README's "Upgrading" section describes the procedure this
follows: `jobengine migrate`, then restart daemons one by one.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import anyio
import asyncpg
import pytest

from jobengine.store.sqlfiles import load_migrations
from tests.daemon_helpers import assert_every_history_is_a_valid_path, daemon_ready, wait_settled
from tests.handlers import SCHEMA

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
#: The commit released as 0.1.0 (tag v0.1.0): the last one before any schema change.
RELEASE_0_1_0 = "bbda3a11346349c4b72ed13192d050db8f484c4a"


def _old_release(into: Path) -> Path:
    """The 0.1.0 source tree, from git history."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the repository's git history (a git checkout)")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", RELEASE_0_1_0, "src", "sql"],
                             capture_output=True, check=False)
    if archive.returncode != 0:
        pytest.fail(f"cannot read release 0.1.0 from git: {archive.stderr.decode()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def _env(dsn: str, pythonpath: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBENGINE_")}
    env.pop("NOTIFY_SOCKET", None)
    env.update({"PYTHONPATH": pythonpath, "JOBENGINE_DSN": dsn,
                "JOBENGINE_HANDLERS_RECORD": "tests.handlers:record",
                "JOBENGINE_DAEMON_LEASE_TTL": "5", "JOBENGINE_DAEMON_POLL_INTERVAL": "0.5",
                "JOBENGINE_RETRY_BASE_DELAY": "0", "JOBENGINE_RETRY_JITTER": "false"})
    return env


def _jobengine(pythonpath: str, dsn: str, *args: str, log: Path | None = None,
               ) -> subprocess.Popen[bytes]:
    out = log.open("wb") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen([sys.executable, "-m", "jobengine.cli.main", *args],
                                env=_env(dsn, pythonpath), stdout=out,
                                stderr=subprocess.STDOUT, cwd=str(REPO))
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]


async def _cli(pythonpath: str, dsn: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    with anyio.fail_after(120):
        return await anyio.run_process([sys.executable, "-m", "jobengine.cli.main", *args],
                                       env=_env(dsn, pythonpath), check=False, cwd=str(REPO))


async def _migrate(pythonpath: str, dsn: str) -> str:
    done = await _cli(pythonpath, dsn, "migrate", "--dsn", dsn)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


async def test_old_and_new_daemons_burn_down_side_by_side_across_the_migration(
    server_dsn: str, tmp_path: Path
) -> None:
    from tests.dbutil import admin, dsn_with_database

    old = _old_release(tmp_path / "jobengine-0.1.0")
    old_path = f"{old / 'src'}{os.pathsep}{REPO}"   # the old jobengine; this repo's tests.handlers
    new_path = f"{REPO / 'src'}{os.pathsep}{REPO}"
    name = f"jobengine_t_{os.getpid()}_upgrade"
    await admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin(server_dsn, f'CREATE DATABASE "{name}"')
    dsn = dsn_with_database(server_dsn, name)
    procs: list[subprocess.Popen[bytes]] = []
    conn = await asyncpg.connect(dsn)
    try:
        assert "0001_lifecycle" in await _migrate(old_path, dsn)  # installed by 0.1.0
        assert await conn.fetchval("SELECT max(version) FROM jobengine.schema_migrations") == 2
        await conn.execute(SCHEMA)
        old_log = tmp_path / "old.log"
        procs.append(_jobengine(old_path, dsn, "run", log=old_log))
        await daemon_ready(old_log, marker="daemon ready")  # release 0.1.0's words
        await conn.execute("INSERT INTO jobengine.jobs (kind, payload) SELECT 'record',"
                           " jsonb_build_object('sleep', 0.01) FROM generate_series(1, 150)")
        # Step 1 of Upgrading: migrate while the old daemon works.
        assert "0003_guarantees" in await _migrate(new_path, dsn)
        await conn.execute("INSERT INTO jobengine.jobs (kind, payload) SELECT 'record',"
                           " jsonb_build_object('sleep', 0.01) FROM generate_series(1, 150)")
        # Step 2: restart daemons one by one; here a new one joins the old one.
        new_log = tmp_path / "new.log"
        procs.append(_jobengine(new_path, dsn, "run", log=new_log))
        await daemon_ready(new_log)
        await conn.execute("INSERT INTO jobengine.jobs (kind, payload) SELECT 'record',"
                           " jsonb_build_object('sleep', 0.01) FROM generate_series(1, 300)")
        await wait_settled(conn, within=90)
        # Both kinds of daemon claimed jobs after the migration, on the new schema.
        claimers = await conn.fetch(
            "SELECT DISTINCT h.actor FROM jobengine.job_history h"
            " WHERE h.to_status = 'running' AND h.role <> ''")
        assert len(claimers) == 2, [r[0] for r in claimers]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert proc.wait(30) == 0, (old_log.read_text()[-2000:], new_log.read_text()[-2000:])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        statuses = dict(await conn.fetch(
            "SELECT status::text, count(*) FROM jobengine.jobs GROUP BY 1"))
        runs = await conn.fetchval("SELECT count(*) FROM test_executions")
        await assert_every_history_is_a_valid_path(conn)
        await conn.close()
        await admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert statuses == {"completed": 600}
    assert runs == 600  # each job ran exactly once: no attempt was lost or repeated


async def test_a_schema_newer_than_the_code_is_refused(db_dsn: str) -> None:
    conn = await asyncpg.connect(db_dsn)
    try:
        await conn.execute("INSERT INTO jobengine.schema_migrations (version, name, checksum)"
                           " VALUES (999, 'from_the_future', 'x')")
    finally:
        await conn.close()
    out = await _cli(str(REPO), db_dsn, "ls", "--dsn", db_dsn)
    assert out.returncode == 1
    assert out.stderr.decode().strip().splitlines() == [
        "jobengine: error: the database schema is at version 999, newer than this jobengine "
        f"knows ({len(load_migrations())}): upgrade jobengine (daemons already running keep "
        "working; see Upgrading in the README)"]
