"""The floor of the many-producers workload: the same single INSERTs into a plain table.

`floor_peer.py VARIANT COMMAND ...`, VARIANT being
- `plain`: a table shaped like a job table (bigserial id, text kind, jsonb
  payload, timestamptz default now()) with no triggers: what one autocommitted
  INSERT costs on this server;
- `notify`: the same table plus a statement-level AFTER INSERT trigger that
  sends one `pg_notify`: PostgreSQL takes a global lock at the commit of every
  transaction that sent a notification, so these commits serialise.

Jobs are inserted exactly as jobengine's are (a plain asyncpg connection, one
autocommitted INSERT per job). No worker: the floor only enqueues. Run by the
project's Python.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable

import _common
import asyncpg

VARIANTS = ("plain", "notify")

SCHEMA = """
CREATE SCHEMA bench_floor;
CREATE TABLE bench_floor.jobs (
    id bigserial PRIMARY KEY,
    kind text NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""

NOTIFY_TRIGGER = """
CREATE FUNCTION bench_floor.notify_new() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bench_floor', 'new');
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_notify AFTER INSERT ON bench_floor.jobs
    FOR EACH STATEMENT EXECUTE FUNCTION bench_floor.notify_new();
"""

BULK_SQL = "INSERT INTO bench_floor.jobs (kind, payload) SELECT $1, p FROM unnest($2::jsonb[]) AS p"
SINGLE_SQL = "INSERT INTO bench_floor.jobs (kind, payload) VALUES ($1, $2::jsonb)"


class SqlInserter:
    """One plain asyncpg connection: one INSERT per job, autocommitted."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def insert(self, key: int) -> None:
        """INSERT one row; asyncpg returns once it committed."""
        await self._conn.execute(SINGLE_SQL, _common.KIND, json.dumps({"i": key}))

    async def close(self) -> None:
        """Close the connection."""
        await self._conn.close()


class Floor:
    """The `Peer` for a plain table (`plain`) or one with a NOTIFY trigger (`notify`)."""

    def __init__(self, variant: str) -> None:
        self.variant = variant

    async def install(self, dsn: str) -> None:
        """The table, and for `notify` its trigger."""
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(SCHEMA + (NOTIFY_TRIGGER if self.variant == "notify" else ""))
        finally:
            await conn.close()

    async def enqueue_bulk(self, dsn: str, n: int, clock: _common.Clock) -> None:
        """One INSERT ... SELECT FROM unnest(jsonb[])."""
        conn = await asyncpg.connect(dsn)
        try:
            with clock:
                payloads = [json.dumps({"i": i}) for i in range(n)]
                await conn.execute(BULK_SQL, _common.KIND, payloads)
        finally:
            await conn.close()

    async def open_inserter(self, dsn: str) -> SqlInserter:
        """A plain connection."""
        return SqlInserter(await asyncpg.connect(dsn))

    async def work(self, options: _common.WorkerOptions, ready: Callable[[], Awaitable[None]],
                   stop: asyncio.Event) -> None:
        """No worker: the floor measures inserts only."""
        raise SystemExit("the floor has no worker")


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in VARIANTS:
        raise SystemExit(f"usage: floor_peer.py {{{'|'.join(VARIANTS)}}} COMMAND ...")
    _common.main(Floor(sys.argv.pop(1)))
