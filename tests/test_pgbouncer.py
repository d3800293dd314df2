"""Through a real PgBouncer in transaction mode: the daemon, the CLI, the API and `watch`.

The PgBouncer (Debian's `pgbouncer`) is started by the test on a free
loopback port, with fewer server connections (3) than jobengine opens, so
consecutive transactions of one client really do land on different server
connections: anything that outlived a transaction (a named prepared
statement, a session setting, a session lock) would break here.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import asyncpg
import httpx
import pytest

from tests.daemon_helpers import assert_every_history_is_a_valid_path, daemon_ready, wait_settled
from tests.dbutil import wait_for
from tests.netns import daemon_env, spawn, stop
from tests.servers import PgBouncer, free_port
from tests.test_cli import JOBENGINE
from tests.test_cli_live import Lines

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("pgbouncer") is None and not Path("/usr/sbin/pgbouncer").exists(),
                       reason="needs Debian's pgbouncer (.ci/run installs it)"),
]


@pytest.fixture
def bouncer(server_dsn: str) -> Iterator[PgBouncer]:
    b = PgBouncer(server_dsn, pool_size=3).start()
    try:
        yield b
    finally:
        b.close()


def pooled(bouncer: PgBouncer, db_dsn: str) -> str:
    return bouncer.dsn(urlsplit(db_dsn).path.lstrip("/"))


def env_for(bouncer: PgBouncer, db_dsn: str, tmp: Path, *, listen: bool, **extra: str) -> dict[str, str]:
    env = daemon_env(pooled(bouncer, db_dsn), JOBENGINE_POOLER="pgbouncer",
                     JOBENGINE_HANDLERS_NAP="tests.handlers:nap",
                     JOBENGINE_TEST_SPANS=str(tmp / "spans.log"), NO_COLOR="1", **extra)
    if listen:
        env["JOBENGINE_LISTEN_DSN"] = db_dsn
    return env


async def insert_naps(pool: asyncpg.Pool, n: int) -> None:
    await pool.execute(
        "INSERT INTO jobengine.jobs (kind, payload) SELECT 'nap', jsonb_build_object('i', i)"
        " FROM generate_series(1, $1) i", n)


async def actors(pool: asyncpg.Pool) -> set[tuple[str, str, str]]:
    rows = await pool.fetch(
        "SELECT DISTINCT coalesce(from_status::text, '') AS f, to_status::text AS t, actor"
        " FROM jobengine.job_history")
    return {(r["f"], r["t"], r["actor"]) for r in rows}


async def burn_down(env: dict[str, str], pool: asyncpg.Pool, tmp: Path, n: int) -> str:
    """A `jobengine run` with `env` until n new jobs settled; its log."""
    proc = spawn([*JOBENGINE, "run"], env, tmp / "daemon.log")
    try:
        await daemon_ready(tmp / "daemon.log")
        await insert_naps(pool, n)
        await wait_settled(pool, within=90)
    finally:
        assert stop(proc) == 0
    assert await pool.fetchval(
        "SELECT count(*) FROM jobengine.jobs WHERE status = 'completed'") == n
    return (tmp / "daemon.log").read_text()


async def test_a_daemon_through_pgbouncer_burns_down_jobs_and_is_named_in_the_ledger(
    bouncer: PgBouncer, db_dsn: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    env = env_for(bouncer, db_dsn, tmp_path, listen=True, JOBENGINE_DAEMON_ID="bounced",
                  JOBENGINE_DAEMON_CONCURRENCY="20")
    log = await burn_down(env, pool, tmp_path, 600)
    assert "listener.connected" in log
    assert "daemon.polling" not in log
    # Nothing the pooler broke: no claim or write had to be retried.
    for trouble in ("claim.failed", "outcome.write_failed", "prepared statement", "Traceback"):
        assert trouble not in log, log[-3000:]
    # The daemon's id travelled in application_name: every engine step is its own.
    assert await actors(pool) == {("", "pending", "tests"), ("pending", "scheduled", "bounced"),
                                  ("scheduled", "running", "bounced"),
                                  ("running", "completed", "bounced")}
    await assert_every_history_is_a_valid_path(pool)


async def test_without_listen_dsn_the_daemon_polls_and_says_so(
    bouncer: PgBouncer, db_dsn: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    log = await burn_down(env_for(bouncer, db_dsn, tmp_path, listen=False), pool, tmp_path, 50)
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    polling = [line for line in lines if line.get("event") == "daemon.polling"]
    assert polling
    assert polling[0]["pooler"] == "pgbouncer"
    assert not any(line.get("event") == "listener.connected" for line in lines)


async def run_cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    done = await anyio.run_process([*JOBENGINE, *args], env=env, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_the_cli_api_and_watch_work_through_pgbouncer(
    bouncer: PgBouncer, db_dsn: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    env = env_for(bouncer, db_dsn, tmp_path, listen=False)
    code, out, err = await run_cli(env, "submit", "nap")
    assert code == 0, err
    job_id = int(out.strip())
    code, out, err = await run_cli(env, "show", str(job_id))
    assert code == 0, err
    assert "pending" in out
    code, out, err = await run_cli(env, "cancel", str(job_id))
    assert code == 0, err
    code, out, err = await run_cli(env, "history", str(job_id))
    assert code == 0, err
    assert "cancelled" in out
    assert ("pending", "cancelled", "cli") in await actors(pool)
    # Retention's lock is a transaction's, so it means the same through the pooler.
    code, out, err = await run_cli(env, "retention", "run")
    assert code == 0, err
    assert await pool.fetchval("SELECT actor FROM jobengine.retention_log") == "cli"
    # Migrations hold a session lock: they need the direct connection.
    code, out, err = await run_cli(env, "migrate")
    assert code != 0
    assert "listen_dsn" in err
    code, out, err = await run_cli({**env, "JOBENGINE_LISTEN_DSN": db_dsn}, "migrate")
    assert code == 0, err
    assert "up to date" in out

    port = free_port()
    api_env = {**env, "JOBENGINE_HTTP_LISTEN": f"127.0.0.1:{port}"}
    async with await anyio.open_process([*JOBENGINE, "api"], env=api_env) as api, \
            await anyio.open_process([*JOBENGINE, "watch", "--json"], env=env) as watch:
        try:
            assert watch.stdout is not None
            assert watch.stderr is not None
            assert "polling" in await Lines(watch.stderr).next()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

                async def up() -> bool:
                    try:
                        return (await http.get("/readyz")).status_code == 200
                    except httpx.TransportError:
                        return False

                await wait_for(up, within=30, message="the API to be ready")
                made = await http.post("/v1/jobs", json={"kind": "nap", "payload": {"x": 1}})
                assert made.status_code == 201, made.text
                new_id = made.json()["id"]
                got = await http.get(f"/v1/jobs/{new_id}")
                assert got.status_code == 200
                assert got.json()["status"] == "pending"

                async def in_events() -> bool:
                    # (an event shows once every older transaction in the cluster ended)
                    page: dict[str, Any] = (await http.get("/v1/events")).json()
                    return any(e["job_id"] == new_id for e in page["events"])

                await wait_for(in_events, within=60, message="the job in /v1/events")
            out_lines = Lines(watch.stdout)
            seen = json.loads(await out_lines.next(within=60))
            assert (seen["job_id"], seen["to_status"]) == (new_id, "pending")
            assert await pool.fetchval(
                "SELECT actor FROM jobengine.job_history WHERE job_id = $1", new_id) == "api"
        finally:
            for proc in (api, watch):
                if proc.returncode is None:
                    proc.terminate()
            with anyio.fail_after(20):
                await api.wait()
                await watch.wait()


def test_pgbouncer_settings_are_read_from_toml_and_environment(tmp_path: Path) -> None:
    from jobengine.cli.config import load_settings
    from jobengine.domain.errors import ConfigError

    config = tmp_path / "jobengine.toml"
    config.write_text('dsn = "postgresql://a@b:6432/c"\npooler = "pgbouncer"\n'
                      'listen_dsn = "postgresql://a@b:5432/c"\n')
    settings = load_settings(config, env={})
    db = settings.database(settings.dsn or "")
    assert (db.pooled, db.listen_dsn) == (True, "postgresql://a@b:5432/c")
    from_env = load_settings(env={"JOBENGINE_DSN": "postgresql://x/y", "JOBENGINE_POOLER": "pgbouncer",
                                  "JOBENGINE_LISTEN_DSN": "postgresql://z/y"})
    assert (from_env.pooler, from_env.listen_dsn) == ("pgbouncer", "postgresql://z/y")
    with pytest.raises(ConfigError, match="pooler must be one of pgbouncer"):
        load_settings(env={"JOBENGINE_DSN": "postgresql://x/y", "JOBENGINE_POOLER": "odyssey"})
    with pytest.raises(ConfigError, match="pooler is set but dsn is not"):
        load_settings(env={"JOBENGINE_POOLER": "pgbouncer"})


async def test_pooled_connections_name_no_statement_and_share_one_server_connection(
    server_dsn: str,
) -> None:
    from jobengine.store.pool import Database, connect

    one = PgBouncer(server_dsn, pool_size=1).start()  # every client on one server connection
    try:
        target = Database(one.dsn("postgres"), pooler="pgbouncer")
        a, b = await connect(target, "a"), await connect(target, "b")
        try:
            for i in range(50):  # interleaved, each query twice (the second from its kept description)
                assert await a.fetchval("SELECT $1::int + 1", i) == i + 1
                assert await b.fetchval("SELECT $1::text || 'x'", str(i)) == f"{i}x"
                assert await a.fetchrow("SELECT $1::int AS n, current_setting('application_name') AS w",
                                        i) == (i, "jobengine:a")
            assert await b.fetchval("SELECT count(*) FROM pg_prepared_statements") == 0
        finally:
            await a.close()
            await b.close()
    finally:
        one.close()


async def test_polling_behind_pgbouncer_a_cancelled_running_job_stops_at_its_next_renewal(
    bouncer: PgBouncer, db_dsn: str, pool: asyncpg.Pool
) -> None:
    from jobengine.daemon import from_callables, run_daemon
    from jobengine.store import JobStore
    from jobengine.store.pool import Database
    from tests.daemon_helpers import config, insert

    started, stopped = anyio.Event(), anyio.Event()

    async def long(_job: Any) -> None:
        started.set()
        try:
            await anyio.sleep(60)
        finally:
            stopped.set()

    target = Database(pooled(bouncer, db_dsn), pooler="pgbouncer")  # no listen_dsn: no LISTEN
    async with run_daemon(config(lease_ttl=3.0, poll_interval=0.5), target,
                          handlers=from_callables({"long": long})):
        job_id = await insert(pool, "long")
        with anyio.fail_after(20):
            await started.wait()
        await JobStore(pool).cancel(job_id)
        with anyio.fail_after(10):  # a renewal every second finds the job gone
            await stopped.wait()
    assert await pool.fetchval("SELECT status::text FROM jobengine.jobs WHERE id = $1",
                               job_id) == "cancelled"
