"""Connections to PostgreSQL: jsonb through msgspec, and who is writing.

Every connection jobengine opens sets `jobengine.actor` (the daemon's id,
`api` or `cli`), which the database records in `job_history.actor`; a
connection that does not (psql, an app's driver) is recorded as `sql`.

`Database` says where those connections go: the DSN (one host or several,
the primary found by `target_session_attrs=read-write`), whether a
transaction pooler (PgBouncer in transaction mode) stands in between, and a
direct DSN for what a transaction pooler cannot carry (LISTEN, session locks).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

#: The transaction poolers jobengine knows how to be safe behind.
POOLERS = ("pgbouncer",)


@dataclass(frozen=True, slots=True)
class Database:
    """Where jobengine's connections go.

    `pooler = "pgbouncer"`: `dsn` goes through a transaction pooler, so no
    connection keeps anything between transactions: no prepared statement
    is named (asyncpg's statement cache is off), no setting is made for the
    session (the actor travels in `application_name`, which PgBouncer keeps
    per client), and LISTEN and session locks use `listen_dsn` instead.
    """

    dsn: str
    #: a direct connection (not through the pooler) for LISTEN and session locks
    listen_dsn: str | None = None
    #: None, or "pgbouncer" (transaction mode)
    pooler: str | None = None

    @property
    def pooled(self) -> bool:
        """True when `dsn` goes through a transaction pooler."""
        return self.pooler is not None

    @property
    def listen(self) -> Database | None:
        """Where to LISTEN: `listen_dsn`, else `dsn` unless pooled (None: poll only)."""
        if self.listen_dsn:
            return Database(self.listen_dsn)
        return None if self.pooled else Database(self.dsn)

    @property
    def direct(self) -> Database:
        """Where session state holds (migrations' locks): `listen_dsn` if given, else `dsn`."""
        return Database(self.listen_dsn) if self.listen_dsn else self


def as_database(target: str | Database) -> Database:
    """A `Database` for a DSN (direct, no pooler), or the one given."""
    return target if isinstance(target, Database) else Database(target)


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


def server_settings(
    actor: str, application: str = "jobengine", *, pooled: bool = False
) -> dict[str, str]:
    """Startup settings that name the writer for the audit trail.

    Through a transaction pooler a session setting would stay on whichever
    server connection it landed on (and PgBouncer refuses unknown startup
    parameters), so there the actor is `application_name` itself,
    `jobengine:<actor>`, which the pooler sets again on every server
    connection it lends this client, and `jobengine.session_actor()` reads.
    """
    if pooled:
        # client_encoding again, as the server spells it: asyncpg's own start-up
        # value ('utf-8', quoted) never equals the server's (UTF8), and PgBouncer
        # then sends `SET client_encoding` before every transaction it forwards.
        return {"application_name": f"jobengine:{actor}"[:63], "client_encoding": "UTF8"}
    return {"jobengine.actor": actor, "application_name": application[:63]}


class PooledConnection(asyncpg.Connection):  # type: ignore[misc]
    """A connection through a transaction pooler: no statement is ever named.

    With its statement cache off (`statement_cache_size=0`) asyncpg prepares
    each query as the unnamed statement and marks it unprepared, so that the
    execution parses it again in the same round trip as Bind/Execute: nothing
    outlives the transaction the pooler ran it in. But it describes every query
    first, one more round trip each time. This keeps those descriptions (the
    parameter and column types, all on the client) per query, so a query seen
    before is parsed and run in one round trip, still unnamed.
    """

    #: queries whose description is kept (the oldest is dropped beyond this)
    KEEP = 200

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unnamed: dict[tuple[Any, ...], Any] = {}

    async def _get_statement(  # type: ignore[no-untyped-def]
        self, query, timeout, *, named=False, use_cache=True, ignore_custom_codec=False,  # noqa: ASYNC109
        record_class=None,
    ):
        if named or not use_cache:
            return await super()._get_statement(
                query, timeout, named=named, use_cache=use_cache,
                ignore_custom_codec=ignore_custom_codec, record_class=record_class)
        key = (query, record_class, ignore_custom_codec)
        state = self._unnamed.get(key)
        if state is None or state.closed:
            # Prepared unnamed and marked unprepared (the cache is off): every
            # execution sends Parse with its Bind, and it stays that way.
            state = await super()._get_statement(
                query, timeout, named=False, use_cache=False,
                ignore_custom_codec=ignore_custom_codec, record_class=record_class)
            if len(self._unnamed) >= self.KEEP:
                del self._unnamed[next(iter(self._unnamed))]
            self._unnamed[key] = state
        return state

    def _drop_local_statement_cache(self) -> None:
        self._unnamed.clear()
        super()._drop_local_statement_cache()


def _pooler_options(db: Database) -> dict[str, Any]:
    # statement_cache_size=0: asyncpg then names no prepared statement and
    # re-parses its unnamed one in the same round trip as Bind/Execute, so no
    # statement outlives the transaction that the pooler ran it in.
    return {"statement_cache_size": 0, "connection_class": PooledConnection} if db.pooled else {}


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


async def connect(
    target: str | Database, actor: str, *, connect_timeout: float = 10.0
) -> asyncpg.Connection:
    """Open one connection with jobengine's codecs and `jobengine.actor` set."""
    db = as_database(target)
    conn: asyncpg.Connection = await asyncpg.connect(
        db.dsn, server_settings=server_settings(actor, pooled=db.pooled),
        timeout=connect_timeout, **_pooler_options(db),
    )
    await setup_connection(conn)
    return conn


@asynccontextmanager
async def connection(
    target: str | Database, actor: str, *, connect_timeout: float = 10.0
) -> AsyncIterator[asyncpg.Connection]:
    """One connection for the duration of the block (closed, or dropped if it will not close)."""
    conn = await connect(target, actor, connect_timeout=connect_timeout)
    try:
        yield conn
    finally:
        try:
            await conn.close(timeout=2)
        except BaseException:
            conn.terminate()
            raise


async def create_pool(
    target: str | Database, actor: str, *, min_size: int = 1, max_size: int = 10,
    connect_timeout: float = 10.0,
) -> asyncpg.Pool:
    """A connection pool whose connections all carry the codecs and the actor."""
    db = as_database(target)
    pool: asyncpg.Pool = await asyncpg.create_pool(
        db.dsn,
        min_size=min_size,
        max_size=max_size,
        init=setup_connection,
        reset=_release_reset,
        server_settings=server_settings(actor, pooled=db.pooled),
        timeout=connect_timeout,
        **_pooler_options(db),
    )
    return pool
