"""Running named queries on a pool or a single connection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import asyncpg

from jobengine.domain.errors import JobBusy
from jobengine.store.records import translate_error
from jobengine.store.sqlfiles import QUERIES

#: A pool or a single connection (tests pass a connection inside a transaction).
Executor: TypeAlias = "asyncpg.Pool | asyncpg.Connection"


async def fetch_on(db: Executor, query: str, *args: Any) -> list[asyncpg.Record]:
    """Run a named query on a pool or connection, translating our database errors."""
    try:
        rows: list[asyncpg.Record] = await db.fetch(QUERIES[query], *args)
    except asyncpg.PostgresError as exc:
        mapped = translate_error(exc)
        if mapped is not None:
            raise mapped from exc
        raise
    return rows


@asynccontextmanager
async def connection_of(db: Executor) -> AsyncIterator[asyncpg.Connection]:
    """A connection from the pool (or the connection itself) for a transaction."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            yield conn
    else:
        yield db


#: Errors that say "the database is away or busy right now, try again": a lost
#: or refused connection, a restart or failover in progress (including a
#: standby that is read-only until promoted, or, with a multi-host DSN and
#: `target_session_attrs=read-write`, no host that is a primary yet), a statement cancelled by a
#: timeout, a lock or serialization conflict, too many connections. Anything
#: else (a bug, a broken schema) is not transient and must not be retried forever.
TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    asyncpg.exceptions.TargetServerAttributeNotMatched,
    JobBusy,
)
