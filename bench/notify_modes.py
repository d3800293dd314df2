"""Idle pickup in each notify mode: `python -m bench.notify_modes [N]`.

A daemon in this process (concurrency 10, poll_interval 1 s) on a scratch
database on 127.0.0.1:5432; N jobs inserted one at a time, 50 ms apart;
pickup = started_at - created_at, both the database's clock. Alternates
`direct` and `relayed`, twice.
"""

from __future__ import annotations

import asyncio
import sys

import asyncpg

from jobengine.daemon import run_daemon
from jobengine.daemon.config import DaemonConfig, DaemonSettings
from jobengine.daemon.handlers import from_callables
from jobengine.store.migrate import migrate

SERVER = "postgresql://postgres@127.0.0.1:5432"


async def pickup(mode: str, n: int) -> list[float]:
    """Pickup latencies (ms) of n jobs inserted one at a time in this mode."""
    admin = await asyncpg.connect(f"{SERVER}/postgres")
    await admin.execute("DROP DATABASE IF EXISTS bench_modes WITH (FORCE)")
    await admin.execute("CREATE DATABASE bench_modes")
    dsn = f"{SERVER}/bench_modes"
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        await conn.execute(
            "UPDATE jobengine.settings SET value = $1 WHERE name = 'notify_mode'", mode)
        cfg = DaemonConfig(daemon=DaemonSettings(concurrency=10, poll_interval=1.0))
        async with run_daemon(cfg, dsn, handlers=from_callables({"k": lambda job: None})):
            await asyncio.sleep(1.0)
            for _ in range(n):
                await conn.execute("INSERT INTO jobengine.jobs (kind) VALUES ('k')")
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.5)
        rows = await conn.fetch("SELECT extract(epoch FROM started_at - created_at) * 1000"
                                " FROM jobengine.jobs WHERE started_at IS NOT NULL")
        return sorted(float(r[0]) for r in rows)
    finally:
        await conn.close()
        await admin.execute("DROP DATABASE IF EXISTS bench_modes WITH (FORCE)")
        await admin.close()


def main() -> None:
    """Print p50/p95/p99/max per mode and round."""
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    for mode in ("direct", "relayed", "direct", "relayed"):
        lat = asyncio.run(pickup(mode, n))

        def q(p: float, lat: list[float] = lat) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))]

        print(f"{mode}: n={len(lat)} p50={q(0.5):.2f} p95={q(0.95):.2f} p99={q(0.99):.2f}"
              f" max={lat[-1]:.2f} ms")


if __name__ == "__main__":
    main()
