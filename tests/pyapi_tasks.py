"""An app with tasks, as a user writes one: the Python API's tests run it in-process
(`run_daemon(app=app)`) and as `jobengine run --app tests.pyapi_tasks:app`.

The app finds its database as the CLI does (JOBENGINE_DSN in a daemon
process); in-process tests point it at their scratch database with
`app.use_database(dsn)`.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

import jobengine

app = jobengine.App()


class Color(enum.Enum):
    """An enum argument (stored by value)."""

    RED = "red"
    BLUE = "blue"


class Address(msgspec.Struct):
    """A struct argument (stored as an object)."""

    city: str
    zip: str


@dataclass
class Point:
    """A dataclass argument (stored as an object)."""

    x: int
    y: int


@app.task(max_retries=0)
async def echo(name: str, count: int = 1) -> dict[str, Any]:
    """Say what it was given, and which job and process ran it."""
    job = jobengine.current_job()
    return {"name": name, "count": count, "job_id": job.id, "attempt": job.attempt,
            "pid": os.getpid()}


@app.task(max_retries=0)
async def typed(when: datetime, color: Color, address: Address, point: Point,
                tags: list[str] | None = None) -> dict[str, Any]:
    """Return the types its arguments arrived as, and the arguments."""
    return {
        "types": [type(when).__name__, type(color).__name__, type(address).__name__,
                  type(point).__name__],
        "aware": when.utcoffset() is not None,
        "args": {"when": when, "color": color, "address": address, "point": point,
                 "tags": tags},
    }


@app.task(max_retries=0)
def add(a: int, b: int) -> dict[str, int]:
    """A plain function (run in a worker thread) that knows its job too."""
    return {"sum": a + b, "job_id": jobengine.current_job().id}


@app.task(max_retries=0)
def boom(reason: str) -> None:
    """Fail with `reason`."""
    raise RuntimeError(reason)


@app.task(kind="dag.part", max_retries=0)
async def part(n: int) -> dict[str, int]:
    """A DAG's parent: its result goes down to its children."""
    return {"n": n}


@app.task(kind="dag.total", max_retries=0)
async def total() -> int:
    """A DAG's child: the sum of its parents' results."""
    results = jobengine.current_job().results
    return sum(int(r["n"]) for r in results.values())
