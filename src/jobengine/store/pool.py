"""Connections to PostgreSQL: jsonb through msgspec, and who is writing.

Every connection jobengine opens sets `jobengine.actor` (the daemon's id,
`api` or `cli`), which the database records in `job_history.actor`; a
connection that does not (psql, an app's driver) is recorded as `sql`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import msgspec

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def _jsonb_encode(value: Any) -> bytes:
    # jsonb's binary format is a version byte (1) followed by the JSON text.
    return b"\x01" + _encode(value)


def _jsonb_decode(data: bytes) -> Any:
    return _decode(data[1:])


def _json_decode(data: bytes) -> Any:
    return _decode(data)


async def setup_connection(conn: asyncpg.Connection) -> None:
    """Install jobengine's type codecs on a new connection."""
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=_jsonb_encode, decoder=_jsonb_decode,
        format="binary",
    )
    await conn.set_type_codec(
        "json", schema="pg_catalog", encoder=_encode, decoder=_json_decode, format="binary",
    )


def server_settings(actor: str, application: str = "jobengine") -> dict[str, str]:
    """Startup settings that name the writer for the audit trail."""
    return {"jobengine.actor": actor, "application_name": application[:63]}


async def _release_reset(conn: asyncpg.Connection) -> None:
    """What a pooled connection needs on release: only a transaction left open undone.

    asyncpg's default reset sends `RESET ALL; UNLISTEN *; CLOSE ALL; ...` on
    every release: a round trip per query on the hot path. jobengine's pooled
    connections never SET, LISTEN or hold session advisory locks (the
    listener and migrations use their own connections), so only an
    interrupted transaction can be left behind.
    """
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def connect(dsn: str, actor: str, *, connect_timeout: float = 10.0) -> asyncpg.Connection:
    """Open one connection with jobengine's codecs and `jobengine.actor` set."""
    conn: asyncpg.Connection = await asyncpg.connect(
        dsn, server_settings=server_settings(actor), timeout=connect_timeout
    )
    await setup_connection(conn)
    return conn


@asynccontextmanager
async def connection(
    dsn: str, actor: str, *, connect_timeout: float = 10.0
) -> AsyncIterator[asyncpg.Connection]:
    """One connection for the duration of the block (closed, or dropped if it will not close)."""
    conn = await connect(dsn, actor, connect_timeout=connect_timeout)
    try:
        yield conn
    finally:
        try:
            await conn.close(timeout=2)
        except BaseException:
            conn.terminate()
            raise


async def create_pool(
    dsn: str, actor: str, *, min_size: int = 1, max_size: int = 10, connect_timeout: float = 10.0
) -> asyncpg.Pool:
    """A connection pool whose connections all carry the codecs and the actor."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=setup_connection,
        reset=_release_reset,
        server_settings=server_settings(actor),
        timeout=connect_timeout,
    )
    return pool
