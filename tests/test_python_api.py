"""The Python API (`jobengine.App`, `@app.task`, `defer`, `wait`, `current_job`) against a
real database, with real asyncpg, psycopg and SQLAlchemy connections and a real daemon."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import asyncpg
import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import jobengine
from jobengine.daemon import run_daemon
from jobengine.daemon.sealed import netns_wrapper, network_is_isolated
from jobengine.domain import JobStatus
from jobengine.domain.errors import ConfigError, JobNotFound
from tests import pyapi_tasks as t
from tests.daemon_helpers import config
from tests.dbutil import wait_for
from tests.servers import PgBouncer

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
async def app(db_dsn: str) -> AsyncIterator[jobengine.App]:
    """The tests' app, pointed at this test's database."""
    await t.app.use_database(db_dsn)
    yield t.app
    await t.app.aclose()


@pytest.fixture
async def conn(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection, as an application's (no jobengine codecs)."""
    c = await asyncpg.connect(db_dsn)
    yield c
    await c.close()


async def _count(conn: asyncpg.Connection) -> int:
    n: int = await conn.fetchval("SELECT count(*) FROM jobengine.jobs")
    return n


def _driver_url(dsn: str, driver: str) -> str:
    return dsn.replace("postgresql://", f"postgresql+{driver}://", 1)


# -- deferring in the caller's transaction ------------------------------------------------


async def test_asyncpg_rolled_back_defer_leaves_no_job_and_no_notification(
    app: jobengine.App, conn: asyncpg.Connection, db_dsn: str
) -> None:
    heard: list[dict[str, Any]] = []
    listener = await asyncpg.connect(db_dsn)
    await listener.add_listener(
        "jobengine_events", lambda *a: heard.append(json.loads(a[3])))
    try:
        tr = conn.transaction()
        await tr.start()
        # The contract's form; a type checker knows nothing of `connection` here.
        rolled = await t.echo.defer(name="never", connection=conn)  # type: ignore[call-arg]
        await tr.rollback()
        async with conn.transaction():
            kept = await t.echo.configure(connection=conn).defer(name="kept")
        await wait_for(lambda: _heard(heard), within=10, message="a notification")
    finally:
        await listener.close()
    assert [e["job_id"] for e in heard] == [kept]
    assert rolled != kept
    assert await conn.fetchval("SELECT count(*) FROM jobengine.jobs WHERE id = $1", rolled) == 0
    assert await _count(conn) == 1


async def _heard(heard: list[dict[str, Any]]) -> bool:
    return bool(heard)


async def test_a_committed_defer_runs_once_and_wait_returns_the_completed_job(
    app: jobengine.App, conn: asyncpg.Connection, db_dsn: str
) -> None:
    async with run_daemon(config(), db_dsn, app=app):
        async with conn.transaction():
            job_id = await t.echo.configure(connection=conn).defer(name="ada", count=2)
            # Nobody else sees it before the commit (the daemon neither).
            pool = await app.pool()
            assert await pool.fetchval(
                "SELECT count(*) FROM jobengine.jobs WHERE id = $1", job_id) == 0
        job = await app.wait(job_id, timeout=20)
    assert job.status is JobStatus.COMPLETED
    assert job.kind == "tests.pyapi_tasks.echo"
    assert job.payload == {"name": "ada", "count": 2}
    assert job.result == {"name": "ada", "count": 2, "job_id": job_id, "attempt": 1,
                          "pid": os.getpid()}
    runs = await conn.fetchval(
        "SELECT count(*) FROM jobengine.job_history WHERE job_id = $1 AND to_status = 'running'",
        job_id)
    assert runs == 1


async def test_psycopg_sync_and_async_connections_defer_in_their_transaction(
    app: jobengine.App, conn: asyncpg.Connection, db_dsn: str
) -> None:
    with psycopg.connect(db_dsn) as pg:
        t.echo.configure(connection=pg).defer_sync(name="rolled back")
        pg.rollback()
        kept = t.echo.configure(connection=pg).defer_sync(name="committed")
        pg.commit()
    async with await psycopg.AsyncConnection.connect(db_dsn) as apg:
        await t.echo.configure(connection=apg).defer(name="async rolled back")
        await apg.rollback()
        kept_async = await t.add.configure(connection=apg).defer(a=1, b=2)
        await apg.commit()
    rows = await conn.fetch("SELECT id, payload FROM jobengine.jobs ORDER BY id")
    assert [(r["id"], json.loads(r["payload"])) for r in rows] == [
        (kept, {"name": "committed"}), (kept_async, {"a": 1, "b": 2})]


async def test_sqlalchemy_session_connection_and_async_connection_defer_in_their_transaction(
    app: jobengine.App, conn: asyncpg.Connection, db_dsn: str
) -> None:
    engine = create_engine(_driver_url(db_dsn, "psycopg"))
    try:
        with Session(engine) as session:
            t.echo.configure(connection=session).defer_sync(name="session rolled back")
            session.rollback()
            with session.begin():
                in_session = t.echo.configure(connection=session).defer_sync(name="session")
        with engine.connect() as sa:
            t.echo.configure(connection=sa).defer_sync(name="connection rolled back")
            sa.rollback()
            in_connection = t.echo.configure(connection=sa).defer_sync(name="connection")
            sa.commit()
    finally:
        engine.dispose()
    aengine = create_async_engine(_driver_url(db_dsn, "asyncpg"))
    try:
        async with aengine.connect() as asa:
            await t.echo.configure(connection=asa).defer(name="async rolled back")
            await asa.rollback()
            in_async = await t.echo.configure(connection=asa).defer(name="async")
            await asa.commit()
            # the caller's own statements and the job, one transaction
            await asa.execute(text("SELECT 1"))
    finally:
        await aengine.dispose()
    rows = await conn.fetch("SELECT id, payload->>'name' AS name FROM jobengine.jobs ORDER BY id")
    assert [(r["id"], r["name"]) for r in rows] == [
        (in_session, "session"), (in_connection, "connection"), (in_async, "async")]


async def test_an_asyncpg_pool_and_a_sqlalchemy_async_session_take_jobs_too(
    app: jobengine.App, conn: asyncpg.Connection, db_dsn: str
) -> None:
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=2)
    try:
        from_pool = await t.echo.configure(connection=pool).defer(name="pool")
    finally:
        await pool.close()
    aengine = create_async_engine(_driver_url(db_dsn, "asyncpg"))
    try:
        async with AsyncSession(aengine) as session:
            await t.echo.configure(connection=session).defer(name="rolled back")
            await session.rollback()
            async with session.begin():
                in_session = await t.echo.configure(connection=session).defer(name="session")
    finally:
        await aengine.dispose()
    rows = await conn.fetch("SELECT id, payload->>'name' AS name FROM jobengine.jobs ORDER BY id")
    assert [(r["id"], r["name"]) for r in rows] == [(from_pool, "pool"), (in_session, "session")]


async def test_many_first_calls_at_once_share_the_apps_pool(
    app: jobengine.App, conn: asyncpg.Connection
) -> None:
    ids: list[int] = []

    async def one(i: int) -> None:
        ids.append(await t.echo.defer(name=f"n{i}"))

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(one, i)
    assert len(set(ids)) == 20
    pools = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name LIKE 'jobengine%'")
    assert 1 <= pools <= 4  # the app's pool_size, not one pool per first call
    assert await _count(conn) == 20


async def test_the_wrong_kind_of_connection_is_refused_naming_what_to_use(
    app: jobengine.App, conn: asyncpg.Connection, db_dsn: str
) -> None:
    with psycopg.connect(db_dsn) as pg, pytest.raises(TypeError,
                                                      match="synchronous: use defer_sync"):
        await t.echo.configure(connection=pg).defer(name="x")
    with pytest.raises(TypeError, match="asynchronous"):
        t.echo.configure(connection=conn).defer_sync(name="x")
    with pytest.raises(TypeError, match="give an asyncpg Connection or Pool"):
        await t.echo.configure(connection=object()).defer(name="x")
    assert await _count(conn) == 0


async def test_defer_without_a_connection_uses_the_apps_own_and_defer_sync_too(
    app: jobengine.App, conn: asyncpg.Connection
) -> None:
    first = await t.echo.defer(name="own")
    second = await anyio.to_thread.run_sync(lambda: t.echo.defer_sync(name="own sync"))
    with pytest.raises(RuntimeError, match="inside an event loop"):
        t.echo.defer_sync(name="in the loop")
    assert await conn.fetchval("SELECT array_agg(id ORDER BY id) FROM jobengine.jobs") == [
        first, second]


async def test_configure_sets_the_jobs_fields_and_an_idempotency_key_gives_the_same_job(
    app: jobengine.App, conn: asyncpg.Connection
) -> None:
    when = datetime.now(UTC) + timedelta(hours=1)
    parent = await t.echo.defer(name="parent")
    call = t.echo.configure(run_at=when, depends_on=[parent], idempotency_key="k-1",
                            priority=5, queue="mail", timeout=timedelta(seconds=30),
                            limit_key="tenant-7", max_retries=2,
                            retry_policy={"strategy": "fixed", "base_delay": 2})
    first = await call.defer(name="once")
    again = await call.defer(name="twice")
    assert again == first
    row = await conn.fetchrow("SELECT * FROM jobengine.jobs WHERE id = $1", first)
    assert row is not None
    assert (row["run_at"], row["depends_on"], row["priority"], row["queue"], row["timeout"],
            row["limit_key"], row["max_retries"], json.loads(row["retry_policy"])) == (
        when, [parent], 5, "mail", timedelta(seconds=30), "tenant-7", 2,
        {"strategy": "fixed", "base_delay": 2})
    assert json.loads(row["payload"]) == {"name": "once"}
    assert await _count(conn) == 2


# -- arguments and payloads ---------------------------------------------------------------


async def test_wrong_arguments_are_refused_naming_the_argument_and_nothing_is_written(
    app: jobengine.App, conn: asyncpg.Connection
) -> None:
    bad: list[tuple[dict[str, Any], str]] = [
        ({"name": "x", "count": "two"}, r"argument 'count': Expected `int`, got `str`"),
        ({"count": 1}, r"missing a required argument: 'name'"),
        ({"name": "x", "colour": 1}, r"unexpected keyword argument 'colour'"),
    ]
    for kwargs, message in bad:
        with pytest.raises(TypeError, match=message):
            await t.echo.defer(**kwargs)
    with pytest.raises(TypeError, match=r"argument 'when': Expected `datetime`, got `str`"):
        await t.typed.defer(when="2026-01-01", color=t.Color.RED,  # type: ignore[arg-type]
                            address=t.Address("a", "1"), point=t.Point(1, 2))
    with pytest.raises(ValueError, match="queue 'no spaces' must be"):
        t.echo.configure(queue="no spaces")
    with pytest.raises(ValueError, match="run_at must be a timezone-aware datetime"):
        t.echo.configure(run_at=datetime(2030, 1, 1))
    with pytest.raises(TypeError, match=r"item 1: tests.pyapi_tasks.echo: argument 'count'"):
        await t.echo.defer_many([{"name": "a"}, {"name": "b", "count": "x"}])
    assert await _count(conn) == 0


async def test_typed_arguments_round_trip_as_their_types(
    app: jobengine.App, db_dsn: str
) -> None:
    when = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
    async with run_daemon(config(), db_dsn, app=app):
        job_id = await t.typed.defer(when=when, color=t.Color.BLUE,
                                     address=t.Address(city="Oslo", zip="0150"),
                                     point=t.Point(x=1, y=2), tags=["a"])
        job = await app.wait(job_id, timeout=20)
    assert job.status is JobStatus.COMPLETED, job.last_error
    assert job.payload == {"when": "2026-12-02T09:30:00Z", "color": "blue",
                           "address": {"city": "Oslo", "zip": "0150"},
                           "point": {"x": 1, "y": 2}, "tags": ["a"]}
    assert job.result == {"types": ["datetime", "Color", "Address", "Point"], "aware": True,
                          "args": job.payload}


async def test_a_payload_that_does_not_fit_fails_the_attempt_naming_the_argument(
    app: jobengine.App, conn: asyncpg.Connection, db_dsn: str
) -> None:
    # Written by hand (another language, an older version of the task).
    job_id: int = await conn.fetchval(
        "INSERT INTO jobengine.jobs (kind, payload, max_retries) VALUES ($1, $2, 0) RETURNING id",
        "tests.pyapi_tasks.typed",
        json.dumps({"when": "not a date", "color": "red", "address": {"city": "x", "zip": "y"},
                    "point": {"x": 1, "y": 2}}))
    async with run_daemon(config(), db_dsn, app=app):
        job = await app.wait(job_id, timeout=20)
    assert job.status is JobStatus.FAILED
    assert job.last_error is not None
    assert job.last_error.startswith(
        "PayloadMismatch: the payload does not fit task tests.pyapi_tasks.typed: "
        "argument 'when': ")


# -- wait -----------------------------------------------------------------------------


async def test_wait_returns_a_failed_job_once_no_retry_is_left(
    app: jobengine.App, db_dsn: str
) -> None:
    async with run_daemon(config(), db_dsn, app=app):
        job_id = await t.boom.defer(reason="no luck")
        job = await app.wait(job_id, timeout=20)
        retried = await t.boom.configure(max_retries=1).defer(reason="twice")
        twice = await app.wait(retried, timeout=20)
    assert (job.status, job.last_error) == (JobStatus.FAILED, "RuntimeError: no luck")
    assert (twice.status, twice.attempt) == (JobStatus.FAILED, 2)


async def test_wait_is_woken_by_a_change_made_elsewhere_and_times_out_naming_the_job(
    app: jobengine.App, conn: asyncpg.Connection
) -> None:
    job_id = await t.echo.defer(name="nobody runs me")
    with pytest.raises(TimeoutError, match=rf"job {job_id} did not settle within 0.2s: "
                                           r"it is (pending|scheduled)"):
        await app.wait(job_id, timeout=0.2)
    got: list[jobengine.Job] = []
    async with anyio.create_task_group() as tg:

        async def waiter() -> None:
            got.append(await app.wait(job_id, timeout=30))

        tg.start_soon(waiter)
        await wait_for(lambda: _listening(conn), within=10, message="the app listening")
        await conn.execute("UPDATE jobengine.jobs SET status = 'cancelled' WHERE id = $1",
                           job_id)
    assert got[0].status is JobStatus.CANCELLED
    with pytest.raises(JobNotFound):
        await app.wait(job_id + 1000, timeout=1)


async def _listening(conn: asyncpg.Connection) -> bool:
    n: int = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%jobengine_events%'"
        " AND datname = current_database()")
    return n > 0


# -- many, DAGs, the daemon --------------------------------------------------------------


async def test_defer_many_inserts_20k_jobs_in_one_statement_in_the_callers_transaction(
    app: jobengine.App, conn: asyncpg.Connection
) -> None:
    items = [{"name": f"n{i}", "count": i} for i in range(20_000)]
    async with conn.transaction():
        ids = await t.echo.defer_many(items, connection=conn)
        assert len(ids) == 20_000
        assert ids == sorted(ids)
    rows = await conn.fetch("SELECT id, payload->>'name' AS name FROM jobengine.jobs ORDER BY id")
    assert [r["id"] for r in rows] == ids
    assert [r["name"] for r in rows[:3]] == ["n0", "n1", "n2"]
    tr = conn.transaction()
    await tr.start()
    await t.echo.defer_many(items[:100], connection=conn)
    await tr.rollback()
    assert await _count(conn) == 20_000
    assert await t.echo.defer_many([]) == []


async def test_a_dag_passes_its_parents_results_down_to_the_child(
    app: jobengine.App, db_dsn: str
) -> None:
    async with run_daemon(config(), db_dsn, app=app):
        a = await t.part.defer(n=2)
        b = await t.part.defer(n=3)
        child = await t.total.configure(depends_on=[a, b]).defer()
        plain = await t.add.defer(a=20, b=22)
        job = await app.wait(child, timeout=20)
        summed = await app.wait(plain, timeout=20)
    assert (job.status, job.result) == (JobStatus.COMPLETED, 5)
    assert summed.result == {"sum": 42, "job_id": plain}


async def test_current_job_outside_a_task_says_where_it_works() -> None:
    with pytest.raises(LookupError, match="only available inside a running task"):
        jobengine.current_job()


def test_a_task_cannot_take_positional_only_or_star_args_or_a_connection_parameter() -> None:
    other = jobengine.App("postgresql://unused")

    def star(*names: str) -> None: ...

    def connection(connection: str) -> None: ...

    def positional(a: int, /) -> None: ...

    for func, message in ((star, r"\*names cannot hold a payload"),
                          (connection, "cannot be named 'connection'"),
                          (positional, "positional-only")):
        with pytest.raises(TypeError, match=message):
            other.task(kind=func.__name__)(func)
    other.task(kind="one")(lambda: None)
    with pytest.raises(ValueError, match="already registered"):
        other.task(kind="one")(lambda: None)


class AppDaemons:
    """`jobengine run --app tests.pyapi_tasks:app ...` processes, as a user starts them."""

    def __init__(self, dsn: str, tmp: Path) -> None:
        self.dsn = dsn
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, by_env: bool = False) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp / f"daemon-{len(self.procs)}.log"
        env = {**os.environ, "PYTHONPATH": str(REPO), "JOBENGINE_DSN": self.dsn}
        env.pop("NOTIFY_SOCKET", None)
        app = ["--app", "tests.pyapi_tasks:app"]
        if by_env:
            env["JOBENGINE_APP"], app = "tests.pyapi_tasks:app", []
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "jobengine.cli.main", "run", *app, *args],
                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO),
            )
        self.procs.append(proc)
        return proc, log


@pytest.fixture
def app_daemons(db_dsn: str, tmp_path: Path) -> Iterator[AppDaemons]:
    d = AppDaemons(db_dsn, tmp_path)
    yield d
    for proc in d.procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(20)


@pytest.mark.parametrize("by_env", [False, True], ids=["--app", "JOBENGINE_APP"])
async def test_jobengine_run_app_runs_the_apps_tasks(
    app: jobengine.App, app_daemons: AppDaemons, by_env: bool
) -> None:
    proc, log = app_daemons.start(by_env=by_env)
    job_id = await t.echo.defer(name="from the daemon")
    job = await app.wait(job_id, timeout=30)
    assert job.status is JobStatus.COMPLETED, log.read_text()
    assert job.result["pid"] == proc.pid
    proc.terminate()
    assert await anyio.to_thread.run_sync(proc.wait, 20) == 0, log.read_text()


@pytest.mark.slow
async def test_a_sealed_daemon_runs_the_apps_tasks_in_its_sandbox(
    app: jobengine.App, app_daemons: AppDaemons
) -> None:
    try:
        netns_wrapper()
    except ConfigError as exc:
        pytest.skip(str(exc))
    proc, log = app_daemons.start("--sealed")
    a = await t.part.defer(n=4)
    child = await t.total.configure(depends_on=[a]).defer()
    echoed = await t.echo.defer(name="sealed")
    job = await app.wait(child, timeout=30)
    echo = await app.wait(echoed, timeout=30)
    assert (job.status, job.result) == (JobStatus.COMPLETED, 4), log.read_text()
    assert echo.status is JobStatus.COMPLETED, log.read_text()
    if not network_is_isolated():  # else the daemon runs handlers itself: nowhere to go
        assert echo.result["pid"] != proc.pid  # an attempt process of the sandbox


def test_jobengine_run_refuses_an_app_that_is_not_one(db_dsn: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JOBENGINE_DSN": db_dsn}
    for ref, message in (("tests.pyapi_tasks:Color", "is a EnumType, not a jobengine.App"),
                         ("tests.pyapi_tasks:nothing", "has no 'nothing'"),
                         ("tests.no_such_module:app", "cannot import 'tests.no_such_module'")):
        done = subprocess.run(
            [sys.executable, "-m", "jobengine.cli.main", "run", "--app", ref],
            env=env, capture_output=True, text=True, timeout=60, cwd=str(REPO))
        assert done.returncode != 0
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert message in lines[0]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pgbouncer") is None and not Path("/usr/sbin/pgbouncer").exists(),
                    reason="needs Debian's pgbouncer (.ci/run installs it)")
async def test_the_app_defers_and_waits_through_pgbouncer_with_and_without_listen_dsn(
    db_dsn: str, server_dsn: str
) -> None:
    bouncer = PgBouncer(server_dsn, pool_size=2).start()
    try:
        pooled = bouncer.dsn(urlsplit(db_dsn).path.lstrip("/"))
        async with run_daemon(config(poll_interval=0.2), db_dsn, app=t.app):
            for listen in (db_dsn, None):
                await t.app.use_database(pooled, pooler="pgbouncer", listen_dsn=listen)
                ids = [await t.echo.defer(name=f"bounced {i}") for i in range(5)]
                many = await t.echo.defer_many([{"name": "many"}] * 5)
                done = [await t.app.wait(i, timeout=30) for i in [*ids, *many]]
                assert {j.status for j in done} == {JobStatus.COMPLETED}
    finally:
        await t.app.aclose()
        bouncer.close()
