"""The relay: with `notify_mode = 'relayed'`, sends the ledger's notifications.

Producers then commit without NOTIFY (which serialises every notifying
commit in the cluster); the relay sends the same notifications, in commit
order, many per transaction, a few milliseconds later. Every daemon runs a
relay; one at a time relays (the others find the lock taken and look again
each second, so one takes over within a second of the relaying daemon's
end). In `direct` mode the relay only checks, every few seconds, whether the
mode changed.
"""

from __future__ import annotations

import anyio
import structlog
from anyio.abc import TaskStatus

from jobengine.store import TRANSIENT, LedgerStore

log = structlog.get_logger("jobengine.relay")

#: Rows per relay transaction.
RELAY_BATCH = 1000
#: How often a daemon that does not relay looks again (another one relays).
STANDBY_INTERVAL = 1.0
#: How often the mode is checked while notifications are direct.
MODE_INTERVAL = 5.0


class Relay:
    """Relays notifications while the database says so; idle otherwise."""

    def __init__(self, ledger: LedgerStore, *, interval: float) -> None:
        self._ledger = ledger
        self._interval = interval
        self.relaying = False
        self.relayed_total = 0

    async def run_once(self) -> int:
        """One relay transaction: rows relayed, -1 (another relays) or -2 (direct mode)."""
        n = await self._ledger.relay(RELAY_BATCH)
        if (n >= 0) != self.relaying:
            self.relaying = n >= 0
            log.info(
                "relay.started" if self.relaying else "relay.stopped",
                reason=None
                if self.relaying
                else ("direct" if n == -2 else "another daemon relays"),
            )
        if n > 0:
            self.relayed_total += n
        return n

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Relay until cancelled."""
        task_status.started()
        while True:
            try:
                n = await self.run_once()
            except TRANSIENT as exc:
                log.warning("relay.failed", error=repr(exc))
                n = -1
            if n == RELAY_BATCH:
                continue  # more are waiting
            await anyio.sleep({-2: MODE_INTERVAL, -1: STANDBY_INTERVAL}.get(n, self._interval))
