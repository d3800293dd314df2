"""PostgreSQL backend CPU per job for each lifecycle operation, on one connection.

    python -m bench.opcost [N] [BATCH] [UPTO] [NOTIFY_MODE]

Makes a scratch database on 127.0.0.1:5432, applies migrations up to UPTO
(default: all), then inserts N jobs BATCH at a time, claims and finishes them
BATCH at a time, and reads the backend's utime + stime from /proc around each
statement. Compare schema versions (or notify modes) in one session: the
machine's speed varies from day to day.
"""

from __future__ import annotations

import asyncio
import os
import sys

import asyncpg

from jobengine.store.sqlfiles import load_migrations

SERVER = "postgresql://postgres@127.0.0.1:5432"


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(n: int, batch: int, upto: int, mode: str | None) -> dict[str, float]:
    """µs of backend CPU per job for insert, claim and finish."""
    db = "bench_opcost"
    admin = await asyncpg.connect(f"{SERVER}/postgres")
    await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{db}"')
    conn = await asyncpg.connect(f"{SERVER}/{db}")
    try:
        for migration in load_migrations():
            if migration.version <= upto:
                async with conn.transaction():
                    await conn.execute(migration.sql)
        if mode:
            await conn.execute(
                "UPDATE jobengine.settings SET value = $1 WHERE name = 'notify_mode'", mode
            )
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        await conn.execute("SET jobengine.actor = 'd1'")
        spent = {"insert": 0.0, "claim": 0.0, "finish": 0.0}
        for _ in range(0, n, batch):
            t = _cpu(pid)
            await conn.execute(
                "INSERT INTO jobengine.jobs (kind) SELECT 'k' FROM generate_series(1, $1)", batch
            )
            spent["insert"] += _cpu(pid) - t
        while True:
            t = _cpu(pid)
            rows = await conn.fetch(
                "SELECT id, attempt FROM jobengine.claim_v1('d1', ARRAY['default'],"
                " ARRAY['k'], $1, '10 min')",
                batch,
            )
            spent["claim"] += _cpu(pid) - t
            if not rows:
                break
            t = _cpu(pid)
            await conn.fetch(
                "SELECT * FROM jobengine.finish_v1('d1', $1::bigint[], $2::int[], $3::text[])",
                [r[0] for r in rows],
                [r[1] for r in rows],
                ["{}"] * len(rows),
            )
            spent["finish"] += _cpu(pid) - t
        return {op: seconds / n * 1e6 for op, seconds in spent.items()}
    finally:
        await conn.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    """Print the figures for the arguments on the command line."""
    args = sys.argv[1:]
    n = int(args[0]) if args else 20_000
    batch = int(args[1]) if len(args) > 1 else 50
    upto = int(args[2]) if len(args) > 2 else 10_000
    mode = args[3] if len(args) > 3 else None
    for op, us in asyncio.run(measure(n, batch, upto, mode)).items():
        print(f"{op}: {us:.1f} µs/job backend CPU")


if __name__ == "__main__":
    main()
