"""The daemon: scheduler, claimer, one actor per job, leases, the reaper.

Run one in-process with `run_daemon`:

    from jobengine.daemon import DaemonConfig, from_callables, run_daemon

    async with run_daemon(DaemonConfig(), dsn, handlers=from_callables({"email": send})):
        ...

The names below are imported on first use, so that the sandbox process
(`python -m jobengine.daemon.sandbox`, which every sealed attempt is forked
from) loads only what it needs: a smaller process forks faster.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobengine.daemon.config import CommandHandler, DaemonConfig, DaemonSettings
    from jobengine.daemon.handlers import HandlerSource, from_callables, resolve_handlers
    from jobengine.daemon.supervisor import Daemon, new_daemon_id, run_daemon
    from jobengine.daemon.systemd import Notifier

#: Where each public name lives.
_EXPORTS = {
    "CommandHandler": "config",
    "DaemonConfig": "config",
    "DaemonSettings": "config",
    "from_callables": "handlers",
    "HandlerSource": "handlers",
    "resolve_handlers": "handlers",
    "Daemon": "supervisor",
    "new_daemon_id": "supervisor",
    "run_daemon": "supervisor",
    "Notifier": "systemd",
}

__all__ = [
    "CommandHandler",
    "Daemon",
    "DaemonConfig",
    "DaemonSettings",
    "HandlerSource",
    "Notifier",
    "from_callables",
    "new_daemon_id",
    "resolve_handlers",
    "run_daemon",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"jobengine.daemon.{module}"), name)
    globals()[name] = value
    return value
