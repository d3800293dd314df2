"""The workloads (issue 6's seven, many producers, limits, DAG waiting, the Python API,
dashboard) by name,
in run order."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bench.workloads import (
    burndown,
    daemon,
    dag,
    dashboard,
    enqueue,
    limits,
    pickup,
    producers,
    pyapi,
    scale,
)
from bench.workloads.common import Context

WORKLOADS: dict[str, Callable[[Context], Awaitable[None]]] = {
    "enqueue": enqueue.run,
    "burndown": burndown.run,
    "pickup": pickup.run_idle,
    "steady": pickup.run_steady,
    "many_producers": producers.run,
    "limits": limits.run,
    "dag": dag.run,
    "pyapi": pyapi.run,
    "scale": scale.run,
    "dashboard": dashboard.run,
    "memory": daemon.run_memory,
    "rescue": daemon.run_rescue,
}

__all__ = ["WORKLOADS", "Context"]
