"""Test fixtures: a real PostgreSQL, always.

Which server: `JOBENGINE_TEST_DSN` if set; else 127.0.0.1:5432 (user
postgres) if something answers there; else the embedded PostgreSQL that
jobengine itself uses by default (`JOBENGINE_TEST_EMBEDDED=1` forces it).

Two tiers, as in River's riverdbtest:
- `db_dsn` / `pool`: a fresh database per test, cloned from a migrated
  template (fast), for anything that commits, NOTIFYs or uses several
  connections;
- `tx`: one connection inside a transaction that is rolled back, on a shared
  migrated database, for pure SQL behaviour.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from jobengine.store import create_pool, migrate
from jobengine.store.pool import connect
from tests.dbutil import admin, dsn_with_database, scratch_database
from tests.servers import Clusters

LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
EMBEDDED_DIR = Path(os.environ.get("JOBENGINE_TEST_PGDATA", f"/tmp/jobengine-test-{os.getuid()}/pgdata"))


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def server_dsn() -> str:
    """The DSN of the PostgreSQL server the suite runs against (its maintenance db)."""
    explicit = os.environ.get("JOBENGINE_TEST_DSN")
    if explicit:
        return explicit
    if os.environ.get("JOBENGINE_TEST_EMBEDDED") != "1" and _answers("127.0.0.1", 5432):
        return LOCAL_DSN
    from jobengine.embedded import ensure_embedded

    EMBEDDED_DIR.parent.mkdir(parents=True, exist_ok=True)
    return ensure_embedded(EMBEDDED_DIR)


async def _build_template(server: str, name: str) -> None:
    await admin(server, f'DROP DATABASE IF EXISTS "{name}"')
    await admin(server, f'CREATE DATABASE "{name}"')
    conn = await connect(dsn_with_database(server, name), actor="tests")
    try:
        await migrate(conn)
    finally:
        await conn.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _drop_leftovers(server: str) -> None:
    """Drop test databases left by runs that were killed (their pid is gone)."""
    conn = await asyncpg.connect(server)
    try:
        names = await conn.fetch(
            "SELECT datname FROM pg_database WHERE datname ~ '^jobengine_(tpl|shared|t)_[0-9]+(_|$)'"
        )
        for (name,) in names:
            pid = int(name.split("_")[2])
            if pid != os.getpid() and not _alive(pid):
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_db(server_dsn: str) -> Iterator[str]:
    """A migrated database that every per-test database is cloned from."""
    asyncio.run(_drop_leftovers(server_dsn))
    name = f"jobengine_tpl_{os.getpid()}"
    asyncio.run(_build_template(server_dsn, name))
    yield name
    asyncio.run(admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}"'))


@pytest.fixture(scope="session")
def shared_dsn(server_dsn: str, template_db: str) -> Iterator[str]:
    """A migrated database for rolled-back tests (never committed to)."""
    name = f"jobengine_shared_{os.getpid()}"
    asyncio.run(admin(server_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"'))
    yield dsn_with_database(server_dsn, name)
    asyncio.run(admin(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def db_dsn(server_dsn: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database for this test only."""
    with scratch_database(server_dsn, template_db) as dsn:
        yield dsn


async def _pool(dsn: str, actor: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(dsn, actor=actor, min_size=1, max_size=8)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
async def pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A connection pool on this test's own database (actor `tests`)."""
    async for p in _pool(db_dsn, "tests"):
        yield p


@pytest.fixture
async def api_pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on this test's database whose connections carry actor `api`, as the API's do."""
    async for p in _pool(db_dsn, "api"):
        yield p


@pytest.fixture
async def tx(shared_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection in a transaction that is rolled back after the test."""
    conn = await connect(shared_dsn, actor="tests")
    transaction = conn.transaction()
    await transaction.start()
    try:
        yield conn
    finally:
        await transaction.rollback()
        await conn.close()


@pytest.fixture
async def recording_db(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to this test's database, with `test_executions` (see tests/handlers.py)."""
    from tests.handlers import SCHEMA

    conn = await asyncpg.connect(db_dsn)
    await conn.execute(SCHEMA)
    yield conn
    await conn.close()


@pytest.fixture
def clusters() -> Iterator[Clusters]:
    """PostgreSQL clusters of the embedded binaries a test starts itself (`tests.servers`)."""
    made = Clusters()
    try:
        yield made
    finally:
        made.close()
