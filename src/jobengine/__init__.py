"""jobengine: a Postgres-backed job lifecycle engine.

The database keeps the lifecycle honest: it refuses illegal transitions and
writes the history, the timeline and a NOTIFY for every change, whoever makes
it. The daemon (`jobengine run`) schedules, claims and runs the jobs.

The Python API (`jobengine.App`, `@app.task`, `jobengine.current_job()`) is
imported on first use, so that processes that need none of it (the sealed
sandbox, every attempt of which is forked from it) stay small.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobengine.domain.models import Job
    from jobengine.domain.status import JobStatus
    from jobengine.tasks import App, Configured, CurrentJob, Task, TaskOptions, current_job

__version__ = "0.5.0"

#: Where each public name lives.
_EXPORTS = {
    "App": "jobengine.tasks",
    "Configured": "jobengine.tasks",
    "CurrentJob": "jobengine.tasks",
    "Task": "jobengine.tasks",
    "TaskOptions": "jobengine.tasks",
    "current_job": "jobengine.tasks",
    "Job": "jobengine.domain.models",
    "JobStatus": "jobengine.domain.status",
}

__all__ = ["App", "Configured", "CurrentJob", "Job", "JobStatus", "Task", "TaskOptions",
           "__version__", "current_job"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
