"""Rebuild sql/schema.sql: the schema as all of sql/migrations/ leave it (run from the repo root).

schema.sql is the canonical, current state of the schema, read as one would
read a table definition: a normalised `pg_dump --schema-only` of a database
that `jobengine migrate` built, plus the rows that make `jobengine migrate`
a no-op on a database installed from it. tests/test_migrations.py checks that
both routes give the same catalog, so a stale schema.sql fails CI.

    python sql/build_schema.py [DSN of a server's maintenance database]

(default: JOBENGINE_TEST_DSN, else postgresql://postgres@127.0.0.1:5432/postgres;
`pg_dump` of the same major version or newer must be on PATH.)
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from jobengine.store.migrate import migrate
from jobengine.store.sqlfiles import load_migrations

HEADER = """\
-- jobengine: the canonical schema, the current state of all of sql/migrations/ applied
-- in order (a normalised pg_dump; rebuilt by `python sql/build_schema.py`). A test
-- (tests/test_migrations.py) keeps the two identical. Install with:
--   psql -v ON_ERROR_STOP=1 -f sql/schema.sql
-- (jobengine migrate is the usual way: it also upgrades.)
"""

# pg_dump lines that say when and with what it ran, or are psql-only commands.
_NOISE = re.compile(r"^(-- Dumped (from|by) .*|\\(un)?restrict .*)$")


def _with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


def normalise(dump: str) -> str:
    """pg_dump's text without the lines that change from run to run, blank runs squeezed."""
    lines = [line.rstrip() for line in dump.splitlines() if not _NOISE.match(line)]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def _dump(dsn: str, *args: str) -> str:
    return subprocess.run(["pg_dump", "--no-owner", *args, dsn], capture_output=True,
                          text=True, check=True).stdout


async def build(server_dsn: str) -> str:
    """The text of schema.sql, from a scratch database migrated on `server_dsn`."""
    name = f"jobengine_schema_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        dsn = _with_database(server_dsn, name)
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        # The ledger's daily partitions depend on the day: a daemon makes them.
        schema = _dump(dsn, "--schema-only", "--schema=jobengine",
                       "--exclude-table=jobengine.ledger_2*")
        settings = _dump(dsn, "--data-only", "--inserts", "--table=jobengine.settings")
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    rows = ",\n".join(f"    ({m.version}, '{m.name}', '{m.checksum}')" for m in load_migrations())
    return "\n".join([
        HEADER,
        normalise(schema),
        "-- ===== data: the owner's settings =====\n",
        normalise(settings),
        "-- ===== data: where the ledger's chaining and relaying begin =====\n",
        "INSERT INTO jobengine.ledger_epoch (chained_from) VALUES (1);\n"
        "INSERT INTO jobengine.relay_cursor (tx_id, id) "
        "VALUES (pg_current_xact_id(), 9223372036854775807);\n",
        "-- ===== bookkeeping: the migrations this schema equals, so `jobengine migrate` "
        "finds nothing to do =====\n",
        "INSERT INTO jobengine.schema_migrations (version, name, checksum) VALUES\n"
        f"{rows};\n",
    ])


if __name__ == "__main__":
    server = (sys.argv[1] if len(sys.argv) > 1 else None) or os.environ.get(
        "JOBENGINE_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
    target = Path(__file__).resolve().parent / "schema.sql"
    target.write_text(asyncio.run(build(server)))
    print(f"wrote {target}")
