"""Where the figures come from: the machine, the PostgreSQL server and its settings.

The server is the one given (`--dsn`, an admin DSN that may CREATE DATABASE)
or the embedded PostgreSQL 18 in a data directory of the bench's own. No
server is reconfigured: a setting that differs from the protocol is reported
as a warning.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import asyncpg

import jobengine

#: settings recorded with every run
SETTINGS = ("fsync", "synchronous_commit", "full_page_writes", "shared_buffers", "wal_level",
            "max_wal_size", "checkpoint_timeout", "max_connections", "work_mem")
PROTOCOL_SHARED_BUFFERS = "256MB"


def machine() -> dict[str, Any]:
    """Cores, CPU model, memory, OS and Python."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kb = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            mem_kb = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cores": os.cpu_count(), "cpu_model": model or platform.processor(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1), "os": platform.platform(),
        "python": platform.python_version(),
    }


def jobengine_version() -> dict[str, str]:
    """jobengine's version and the commit the figures were taken at."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    dirty = bool(git("status", "--porcelain", "--", "src", "sql"))
    return {"version": getattr(jobengine, "__version__", ""),
            "commit": commit + ("+dirty" if dirty else "")}


async def server(dsn: str) -> dict[str, Any]:
    """The server's version and the settings that matter for these figures."""
    conn = await asyncpg.connect(dsn)
    try:
        version = await conn.fetchval("SELECT version()")
        rows = await conn.fetch("SELECT name, current_setting(name) AS value FROM pg_settings"
                                " WHERE name = ANY($1::text[])", list(SETTINGS))
    finally:
        await conn.close()
    return {"version": version, "settings": {r["name"]: r["value"] for r in rows}}


def warnings(info: dict[str, Any]) -> list[str]:
    """What differs from the protocol (durability defaults, shared_buffers = 256MB)."""
    s = info["settings"]
    out = []
    for name in ("fsync", "synchronous_commit", "full_page_writes"):
        if s.get(name) != "on":
            out.append(f"{name} = {s.get(name)}: the protocol keeps durability defaults (on)")
    if s.get("shared_buffers") != PROTOCOL_SHARED_BUFFERS:
        out.append(f"shared_buffers = {s.get('shared_buffers')}, not the protocol's "
                   f"{PROTOCOL_SHARED_BUFFERS} (the harness reconfigures no server)")
    return out


def start_embedded(data_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL in `data_dir`; its DSN.

    It runs with the embedded defaults (jobengine passes `shared_buffers=128MB`
    on every start, so the protocol's 256MB cannot be set from here): the
    header then warns, as for any server that differs from the protocol.
    It is stopped when the harness exits.
    """
    from jobengine.embedded import ensure_embedded

    os.makedirs(data_dir, exist_ok=True)
    return ensure_embedded(data_dir)


async def postmaster(dsn: str) -> int | None:
    """The server's postmaster pid, if its processes are visible here (a local server)."""
    from bench.peers._cpu import postmaster_of

    conn = await asyncpg.connect(dsn)
    try:
        backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
        return postmaster_of(backend)
    finally:
        await conn.close()
