"""The daemon: scheduler, claimer, one actor per job, leases, the reaper.

Run one in-process with `run_daemon`:

    from jobengine.daemon import DaemonConfig, from_callables, run_daemon

    async with run_daemon(DaemonConfig(), dsn, handlers=from_callables({"email": send})):
        ...
"""

from jobengine.daemon.config import CommandHandler, DaemonConfig, DaemonSettings
from jobengine.daemon.handlers import from_callables, resolve_handlers
from jobengine.daemon.supervisor import Daemon, new_daemon_id, run_daemon
from jobengine.daemon.systemd import Notifier

__all__ = [
    "CommandHandler",
    "Daemon",
    "DaemonConfig",
    "DaemonSettings",
    "Notifier",
    "from_callables",
    "new_daemon_id",
    "resolve_handlers",
    "run_daemon",
]
