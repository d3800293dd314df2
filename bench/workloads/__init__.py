"""The seven workloads of issue 6, by name, in the order a full run does them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bench.workloads import burndown, daemon, enqueue, pickup, scale
from bench.workloads.common import Context

WORKLOADS: dict[str, Callable[[Context], Awaitable[None]]] = {
    "enqueue": enqueue.run,
    "burndown": burndown.run,
    "pickup": pickup.run_idle,
    "steady": pickup.run_steady,
    "scale": scale.run,
    "memory": daemon.run_memory,
    "rescue": daemon.run_rescue,
}

__all__ = ["WORKLOADS", "Context"]
