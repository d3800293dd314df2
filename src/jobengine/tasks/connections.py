"""Inserting jobs through the caller's own connection, whatever its driver.

A job deferred with `connection=` is inserted by that connection, in its
current transaction: it exists (and its notification goes out) when, and
only when, that transaction commits. Supported, each imported only when one
is given (jobengine depends on none but asyncpg):
- asyncpg: `Connection`, a pool's connection, or a `Pool` (a connection of
  its own, autocommitted);
- psycopg 3: `Connection` (`defer_sync`) and `AsyncConnection` (`defer`);
- SQLAlchemy 2: `Connection` and `Session` (`defer_sync`), `AsyncConnection`
  and `AsyncSession` (`defer`), on any PostgreSQL driver.

One statement inserts one job or many: an `INSERT ... SELECT` over the
payloads as one JSON array, so `defer_many` costs one round trip. Every
parameter is cast in the SQL (`CAST($n AS type)`), so it means the same on
every driver, whatever codecs the caller's connection has, and the SQL
works under any `search_path`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

_INSERT = """\
INSERT INTO jobengine.jobs
    (kind, queue, payload, priority, run_at, depends_on, max_retries, retry_policy,
     timeout, requires_network, idempotency_key, limit_key)
SELECT CAST($1 AS text), CAST($2 AS text), p.payload, CAST($4 AS integer),
       coalesce(CAST($5 AS timestamptz), now()), CAST($6 AS bigint[]), CAST($7 AS integer),
       CAST(CAST($8 AS text) AS jsonb), make_interval(secs => CAST($9 AS double precision)),
       CAST($10 AS boolean), CAST($11 AS text), CAST($12 AS text)
FROM jsonb_array_elements(CAST(CAST($3 AS text) AS jsonb)) WITH ORDINALITY AS p(payload, n)
ORDER BY p.n
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id"""

_BY_KEY = "SELECT id FROM jobengine.jobs WHERE idempotency_key = CAST($1 AS text)"

_PARAM = re.compile(r"\$(\d+)")


@dataclass(frozen=True, slots=True)
class Insert:
    """One insert statement's parameters: the jobs' shared columns and their payloads."""

    kind: str
    queue: str
    #: the payloads, as one JSON array
    payloads: bytes
    priority: int
    run_at: datetime | None
    depends_on: Sequence[int]
    max_retries: int
    retry_policy: str | None  # JSON text
    timeout: float | None
    requires_network: bool
    idempotency_key: str | None
    limit_key: str | None

    def params(self) -> list[Any]:
        """The statement's parameters, $1 to $12."""
        return [self.kind, self.queue, self.payloads.decode(), self.priority, self.run_at,
                list(self.depends_on), self.max_retries, self.retry_policy, self.timeout,
                self.requires_network, self.idempotency_key, self.limit_key]


def _named(sql: str, style: str) -> str:
    """`$n` as psycopg's `%(pn)s` or SQLAlchemy's `:pn`."""
    return _PARAM.sub(lambda m: style.format(m.group(1)), sql)


def _as_dict(params: list[Any]) -> dict[str, Any]:
    return {f"p{i}": v for i, v in enumerate(params, 1)}


def family(connection: Any) -> str:
    """Which driver and flavour a connection is: `asyncpg`, `asyncpg-pool`,
    `psycopg`, `psycopg-async`, `sqlalchemy`, `sqlalchemy-async`; else `TypeError`."""
    if isinstance(connection, asyncpg.Pool):
        return "asyncpg-pool"
    if isinstance(connection, (asyncpg.Connection, asyncpg.pool.PoolConnectionProxy)):
        return "asyncpg"
    modules = {c.__module__.partition(".")[0] for c in type(connection).__mro__}
    if "psycopg" in modules:
        import psycopg

        if isinstance(connection, psycopg.AsyncConnection):
            return "psycopg-async"
        if isinstance(connection, psycopg.Connection):
            return "psycopg"
    if "sqlalchemy" in modules:
        from sqlalchemy.engine import Connection
        from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
        from sqlalchemy.orm import Session

        if isinstance(connection, (AsyncConnection, AsyncSession)):
            return "sqlalchemy-async"
        if isinstance(connection, (Connection, Session)):
            return "sqlalchemy"
    raise TypeError(
        f"connection= got a {type(connection).__module__}.{type(connection).__qualname__}: "
        "give an asyncpg Connection or Pool, a psycopg 3 Connection or AsyncConnection, or a "
        "SQLAlchemy Connection, Session, AsyncConnection or AsyncSession"
    )


#: Families `defer` (async) can use; the others are `defer_sync`'s.
ASYNC_FAMILIES = frozenset({"asyncpg", "asyncpg-pool", "psycopg-async", "sqlalchemy-async"})


async def insert(connection: Any, job: Insert) -> list[int]:
    """Insert through an async connection; the new jobs' ids in payload order.

    With an idempotency key already taken, the existing job's id.
    """
    kind = family(connection)
    if kind not in ASYNC_FAMILIES:
        raise TypeError(f"a {kind} connection is synchronous: use defer_sync (or "
                        "defer_many_sync) with it, or give defer an async one")
    if kind == "asyncpg-pool":
        async with connection.acquire() as conn:
            return await insert(conn, job)
    ids = await _ids(connection, kind, _INSERT, job.params())
    if not ids and job.idempotency_key is not None:
        ids = await _ids(connection, kind, _BY_KEY, [job.idempotency_key])
    return sorted(ids)


def insert_sync(connection: Any, job: Insert) -> list[int]:
    """Insert through a synchronous connection (psycopg 3, SQLAlchemy); as `insert`."""
    kind = family(connection)
    if kind in ASYNC_FAMILIES:
        raise TypeError(f"a {kind} connection is asynchronous: use `await defer(...)` with it")
    ids = _ids_sync(connection, kind, _INSERT, job.params())
    if not ids and job.idempotency_key is not None:
        ids = _ids_sync(connection, kind, _BY_KEY, [job.idempotency_key])
    return sorted(ids)


async def _ids(connection: Any, kind: str, sql: str, params: list[Any]) -> list[int]:
    """Run `sql` on an async connection; the first column of every row."""
    if kind == "asyncpg":
        return [r[0] for r in await connection.fetch(sql, *params)]
    if kind == "psycopg-async":
        cur = await connection.execute(_named(sql, "%(p{})s"), _as_dict(params))
        return [r[0] for r in await cur.fetchall()]
    from sqlalchemy import text

    result = await connection.execute(text(_named(sql, ":p{}")), _as_dict(params))
    return [r[0] for r in result.fetchall()]


def _ids_sync(connection: Any, kind: str, sql: str, params: list[Any]) -> list[int]:
    """Run `sql` on a synchronous connection; the first column of every row."""
    if kind == "psycopg":
        return [r[0] for r in connection.execute(_named(sql, "%(p{})s"),
                                                 _as_dict(params)).fetchall()]
    from sqlalchemy import text

    return [r[0] for r in connection.execute(text(_named(sql, ":p{}")),
                                             _as_dict(params)).fetchall()]
