"""`jobengine run` as real processes: crashes, several daemons, signals, systemd."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from tests.daemon_helpers import assert_every_history_is_a_valid_path, daemon_ready, wait_settled
from tests.dbutil import wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


class Daemons:
    """Starts `jobengine run` processes and cleans them up."""

    def __init__(self, dsn: str, tmp: Path) -> None:
        self.dsn = dsn
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, env: dict[str, str] | None = None,
              **settings: Any) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp / f"daemon-{len(self.procs)}.log"
        environ = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "JOBENGINE_DSN": self.dsn,
            "JOBENGINE_HANDLERS_RECORD": "tests.handlers:record",
            "JOBENGINE_RETRY_BASE_DELAY": "0.05",
            "JOBENGINE_RETRY_JITTER": "false",
            **{f"JOBENGINE_DAEMON_{k.upper()}": str(v) for k, v in settings.items()},
            **(env or {}),
        }
        if "NOTIFY_SOCKET" not in (env or {}):
            environ.pop("NOTIFY_SOCKET", None)  # never talk to a real systemd from tests
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "jobengine.cli.main", "run", *args],
                env=environ, stdout=out, stderr=subprocess.STDOUT, cwd=str(self.tmp),
            )
        self.procs.append(proc)
        return proc, log

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def daemons(db_dsn: str, tmp_path: Path) -> Iterator[Daemons]:
    d = Daemons(db_dsn, tmp_path)
    yield d
    d.stop_all()


async def test_sigkilled_daemon_job_runs_again_on_another_within_lease_ttl_plus_2s(
    daemons: Daemons, recording_db: asyncpg.Connection
) -> None:
    lease_ttl = 3.0
    first, log1 = daemons.start(lease_ttl=lease_ttl)
    await daemon_ready(log1)
    job_id = await recording_db.fetchval(
        "INSERT INTO jobengine.jobs (kind, payload) VALUES ('record', '{\"sleep\": 60}') RETURNING id")

    async def started(attempt: int) -> bool:
        return bool(await recording_db.fetchval(
            "SELECT count(*) FROM test_executions WHERE job_id = $1 AND attempt = $2",
            job_id, attempt))

    await wait_for(lambda: started(1), within=10, message="first attempt")
    second, log2 = daemons.start(lease_ttl=lease_ttl)
    await daemon_ready(log2)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    await wait_for(lambda: started(2), within=lease_ttl + 10, interval=0.05,
                   message="second attempt on the other daemon")
    # Never both at once: the second attempt started only after the first's lease ran out.
    expired, second_start = await recording_db.fetchrow(
        "SELECT (SELECT occurred_at FROM jobengine.job_history WHERE job_id = $1"
        "        AND reason = 'lease_expired'),"
        "       (SELECT at FROM test_executions WHERE job_id = $1 AND attempt = 2)", job_id)
    assert second_start > expired
    row = await recording_db.fetchrow("SELECT status::text AS s, attempt, lease_owner FROM jobengine.jobs WHERE id = $1", job_id)
    assert row["s"] == "running"
    assert row["attempt"] == 2
    pids = [r["pid"] for r in await recording_db.fetch("SELECT pid FROM test_executions ORDER BY attempt")]
    assert pids == [first.pid, second.pid]
    reasons = [r["reason"] for r in await recording_db.fetch(
        "SELECT reason FROM jobengine.job_history WHERE job_id = $1 ORDER BY id", job_id)]
    assert "lease_expired" in reasons


async def test_three_daemons_share_600_jobs_each_run_exactly_once(
    daemons: Daemons, recording_db: asyncpg.Connection
) -> None:
    logs = [daemons.start(concurrency=20)[1] for _ in range(3)]
    for log in logs:
        await daemon_ready(log)
    await recording_db.execute(
        "INSERT INTO jobengine.jobs (kind, payload)"
        " SELECT 'record', '{\"sleep\": 0.01}' FROM generate_series(1, 600)")
    await wait_settled(recording_db, within=120)
    odd = await recording_db.fetch("SELECT id, status::text, attempt, last_error FROM jobengine.jobs"
                         " WHERE status <> 'completed'")
    assert [dict(r) for r in odd] == []
    runs = await recording_db.fetch("SELECT job_id, attempt, pid FROM test_executions")
    assert len(runs) == 600
    assert {r["job_id"] for r in runs} == {r["id"] for r in await recording_db.fetch("SELECT id FROM jobengine.jobs")}
    assert {r["attempt"] for r in runs} == {1}
    assert len({r["pid"] for r in runs}) >= 2, "the work should be shared"
    await assert_every_history_is_a_valid_path(recording_db)


async def test_sigterm_drains_and_gives_jobs_back_and_exits_0(
    daemons: Daemons, recording_db: asyncpg.Connection
) -> None:
    proc, log = daemons.start(shutdown_grace=0.5)
    await daemon_ready(log)
    job_id = await recording_db.fetchval(
        "INSERT INTO jobengine.jobs (kind, payload, max_retries) VALUES ('record', '{\"sleep\": 60}', 0) RETURNING id")
    await wait_for(lambda: _ran(recording_db, job_id), within=10, message="job start")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    row = await recording_db.fetchrow("SELECT status::text AS s, status_reason, released FROM jobengine.jobs WHERE id = $1", job_id)
    assert (row["s"], row["status_reason"], row["released"]) == ("scheduled", "shutdown", 1)


async def test_a_second_signal_stops_at_once_still_giving_jobs_back(
    daemons: Daemons, recording_db: asyncpg.Connection
) -> None:
    proc, log = daemons.start(shutdown_grace=60)
    await daemon_ready(log)
    job_id = await recording_db.fetchval(
        "INSERT INTO jobengine.jobs (kind, payload) VALUES ('record', '{\"sleep\": 60}') RETURNING id")
    await wait_for(lambda: _ran(recording_db, job_id), within=10, message="job start")
    proc.send_signal(signal.SIGTERM)
    await wait_for(lambda: _logged(log, '"daemon.stopping"'), within=10, message="draining")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 0  # long before the 60 s grace
    assert await recording_db.fetchval("SELECT status::text FROM jobengine.jobs WHERE id = $1", job_id) == "scheduled"


async def _ran(recording_db: asyncpg.Connection, job_id: int) -> bool:
    return bool(await recording_db.fetchval("SELECT count(*) FROM test_executions WHERE job_id = $1", job_id))


async def _logged(log: Path, text: str) -> bool:
    return text in await anyio.Path(log).read_text(errors="replace")


async def test_systemd_notify_ready_watchdog_status_stopping(
    daemons: Daemons, recording_db: asyncpg.Connection, tmp_path: Path
) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    messages: list[str] = []

    async def received(what: str) -> bool:
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except BlockingIOError:
                break
        return any(what in m for m in messages)

    try:
        proc, _log = daemons.start(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
        await wait_for(lambda: received("READY=1"), within=30, message="READY=1")
        ready_at = next(i for i, m in enumerate(messages) if "READY=1" in m)
        await wait_for(lambda: received("WATCHDOG=1"), within=5, message="WATCHDOG=1")
        pings = sum(m.count("WATCHDOG=1") for m in messages)
        await wait_for(lambda: _more_pings(messages, sock, pings), within=5, message="more pings")
        assert any(m.startswith("STATUS=") or "\nSTATUS=" in m or "STATUS=running" in m
                   for m in messages)
        assert "running 0 jobs" in "".join(messages)
        proc.send_signal(signal.SIGTERM)
        await wait_for(lambda: received("STOPPING=1"), within=10, message="STOPPING=1")
        assert proc.wait(20) == 0
        assert ready_at < next(i for i, m in enumerate(messages) if "STOPPING=1" in m)
    finally:
        sock.close()


async def _more_pings(messages: list[str], sock: socket.socket, before: int) -> bool:
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            break
    return sum(m.count("WATCHDOG=1") for m in messages) >= before + 2


async def test_run_refuses_to_start_without_handlers(db_dsn: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBENGINE_")}
    result = await anyio.run_process(
        [sys.executable, "-m", "jobengine.cli.main", "run", "--dsn", db_dsn],
        env=env, cwd=str(tmp_path), check=False,
    )
    assert result.returncode == 1
    assert "no handlers configured" in result.stderr.decode()
    assert result.stderr.decode().count("\n") == 1


async def test_run_refuses_an_unmigrated_database(server_dsn: str, tmp_path: Path) -> None:
    from tests.dbutil import dsn_with_database

    admin = await asyncpg.connect(server_dsn)
    await admin.execute("DROP DATABASE IF EXISTS jobengine_unmigrated")
    await admin.execute("CREATE DATABASE jobengine_unmigrated")
    try:
        result = await anyio.run_process(
            [sys.executable, "-m", "jobengine.cli.main", "run",
             "--dsn", dsn_with_database(server_dsn, "jobengine_unmigrated")],
            env={**os.environ, "JOBENGINE_HANDLERS_X": "json:dumps"},
            cwd=str(tmp_path), check=False,
        )
    finally:
        await admin.execute("DROP DATABASE IF EXISTS jobengine_unmigrated WITH (FORCE)")
        await admin.close()
    assert result.returncode == 1
    assert "run `jobengine migrate` first" in result.stderr.decode()
