"""systemd's notify protocol (sd_notify), spoken directly over NOTIFY_SOCKET.

`Type=notify` units learn `READY=1` once the daemon is claiming, get
`WATCHDOG=1` from a task on the event loop (so a blocked loop stops the
pings and systemd restarts the service), `STATUS=` with running and claimed
counts, and `STOPPING=1` when the daemon starts draining. Outside systemd
(no NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping

import anyio
import structlog
from anyio.abc import TaskStatus

log = structlog.get_logger("jobengine.systemd")


class Notifier:
    """Sends sd_notify datagrams to the socket systemd named, if any."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        environ = os.environ if env is None else env
        path = environ.get("NOTIFY_SOCKET", "")
        # An abstract socket is written "@name"; on the wire it starts with NUL.
        self.address = "\0" + path[1:] if path.startswith("@") else path
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        watchdog_for_us = usec.isdigit() and (not pid or pid == str(os.getpid()))
        #: seconds between WATCHDOG=1 pings (half systemd's timeout), or None
        self.watchdog_interval = int(usec) / 2_000_000 if watchdog_for_us else None

    @property
    def enabled(self) -> bool:
        """Whether the process runs under a notify-type unit."""
        return bool(self.address)

    def notify(self, *fields: str) -> bool:
        """Send "KEY=value" lines; returns whether a datagram was sent."""
        if not self.address:
            return False
        message = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message, self.address)
        except OSError as exc:
            log.warning("sd_notify failed", error=str(exc))
            return False
        return True

    async def watchdog(
        self, status: Callable[[], str] | None = None, *, status_every: float = 5.0,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Ping WATCHDOG=1 (and refresh STATUS=) from the event loop until cancelled."""
        task_status.started()
        if not self.enabled:
            return
        interval = min(self.watchdog_interval or status_every, status_every)
        since_status = status_every
        while True:
            fields = []
            if self.watchdog_interval is not None:
                fields.append("WATCHDOG=1")
            since_status += interval
            if status is not None and since_status >= status_every:
                fields.append(f"STATUS={status()}")
                since_status = 0.0
            if fields:
                self.notify(*fields)
            await anyio.sleep(interval)
