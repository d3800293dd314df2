"""The DAG scheduler: jobs whose dependencies completed become `scheduled`; failures cascade.

`pending -> scheduled` once every dependency completed (and `run_at` came),
and `pending -> cancelled` (`dependency_failed`) for dependents of jobs that
failed for good or were cancelled, down the whole DAG; in sealed mode, a
`job.held` note on jobs that need the network. (Jobs without dependencies
are promoted by the claim itself.)

A pass woken by a notification reads what changed since the last pass from
the ledger (`dag_changes`: the jobs that ended, the jobs created) and
promotes and cascades among their dependents alone, so its cost follows the
changes, not the number of jobs waiting; rows it must leave for later (their
transactions committed while an older one was still open) it reads by a look
of its own, 10 ms later at first and less often while that transaction stays
open (at most every polling interval). A whole pass (every waiting job)
comes first, at least once every polling interval however many notifications
come, when the claimer saw a job come due (a waiting job's `run_at` is in no
ledger row), after a reconnect, and whenever a pass could not finish its work
in one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio
import structlog
from anyio.abc import TaskStatus

from jobengine.notifications import Signal
from jobengine.store import TRANSIENT, DagCursor, JobStore

log = structlog.get_logger("jobengine.scheduler")

HELD_REASON = "held by sealed mode: requires_network jobs wait until a daemon runs unsealed"


@dataclass
class SchedulePass:
    """One scheduler pass."""

    promoted: int = 0
    cancelled: int = 0
    held: int = 0
    #: it read every waiting job (not only the dependents of what changed)
    whole: bool = False


class Scheduler:
    """Runs a pass when woken (coalesced: at most one per `min_gap`) and every `poll_interval`.

    It is woken by notifications (jobs inserted, jobs finished), when the
    claimer sees a job come due, and by the polling fallback.
    """

    #: jobs promoted at most in one statement
    batch = 1000

    def __init__(
        self,
        store: JobStore,
        queues: Sequence[str],
        *,
        poll_interval: float,
        on_ready: Callable[[], None],
        sealed: bool = False,
        min_gap: float = 0.01,
    ) -> None:
        self._store = store
        self._queues = list(queues)
        self._poll = poll_interval
        self._on_ready = on_ready
        self._sealed = sealed
        self._min_gap = min_gap
        self._kick = Signal()
        # False once a pass saw no job waiting on dependencies: finished jobs
        # then free nothing, until new jobs arrive (or the polling pass).
        self._maybe_waiting = True
        # Where the last pass read the ledger to (None: the next pass is whole).
        self._cursor: DagCursor | None = None
        self._whole = True
        # When the last whole pass ran (anyio's clock): one is due every
        # polling interval however often notifications wake the scheduler.
        self._whole_at = float("-inf")
        # Seconds until the scheduler looks at the ledger again by itself
        # (None: on the next wake-up, or the polling pass).
        self._look_again: float | None = None

    @property
    def looking_again(self) -> bool:
        """Whether the last pass left ledger rows for a look of its own (they were
        behind a transaction still open)."""
        return self._look_again is not None

    def wake(self, *, new_jobs: bool = True, whole: bool = True) -> None:
        """Ask for a pass soon: jobs were inserted (`new_jobs`) or finished.

        `whole=False` (a notification): the ledger says what changed, so the
        pass looks at those jobs' dependents alone."""
        if new_jobs:
            self._maybe_waiting = True
        if whole:
            self._whole = True
        if self._maybe_waiting:
            self._kick.set()

    async def run_once(self) -> SchedulePass:
        """Cascade failures down the DAG, promote what is ready, hold what needs the network."""
        cancelled: list[int] = []
        promoted: list[int] = []
        # One cheap look first: without waiting jobs there is nothing to
        # cascade or promote, and no statement (with its audit trigger) to run.
        self._maybe_waiting = await self._store.any_waiting()
        whole = False
        if not self._maybe_waiting:
            self._cursor = None  # (the first job to wait again gets a whole pass)
            self._look_again = None
        else:
            changes = None
            if anyio.current_time() - self._whole_at >= self._poll:
                # (under a steady stream of notifications the polling timeout
                # never fires: a waiting job whose run_at came, or one that was
                # locked when its dependency ended, would wait for a quiet spell)
                self._whole = True
            if not self._whole and self._cursor is not None:
                changes = await self._store.dag_changes(self._cursor)
            if changes is None or changes.more:
                whole = True
                self._whole = False
                self._whole_at = anyio.current_time()
                self._look_again = None  # (it sees every transaction ended before it)
                # (the cursor first: whatever lands after it, the next pass reads)
                cursor = await self._store.dag_cursor()
                cancelled = await self._store.cascade()
                promoted = await self._store.promote(self._queues, sealed=self._sealed,
                                                     limit=self.batch)
                self._cursor = cursor
            else:
                if changes.ended or changes.created:
                    cancelled, promoted = await self._store.dag_moves(
                        self._queues, changes.ended, changes.created, sealed=self._sealed,
                        limit=self.batch)
                # (moved on only once they are done: a pass that failed before
                # leaves them to the next one)
                self._cursor = changes.cursor
                # Rows of transactions that committed while an older one still
                # ran are read once it ends: look again by then, without a
                # notification, sooner at first (an older transaction is most
                # often a claim or an outcome, done in milliseconds), then less
                # often while one stays open (an app's long transaction).
                if changes.behind:
                    self._look_again = min(2 * (self._look_again or self._min_gap / 2),
                                           self._poll)
                else:
                    self._look_again = None
            if len(promoted) >= self.batch:
                # Ready jobs may be left over, announced by no new ledger row.
                self._whole = True
                self._kick.set()
        if cancelled:
            log.info("job.dependency_failed", job_ids=cancelled)
        if promoted:
            self._on_ready()
        held: list[int] = []
        if self._sealed:
            held = await self._store.hold_for_network(self._queues, HELD_REASON)
            if held:
                log.info("job.held", job_ids=held, reason=HELD_REASON)
        return SchedulePass(len(promoted), len(cancelled), len(held), whole)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Pass, sleep until woken (or the polling interval), repeat, until cancelled."""
        task_status.started()
        while True:
            try:
                await self.run_once()
            except TRANSIENT as exc:
                log.warning("scheduler.pass_failed", error=repr(exc))
                self._whole = True  # (whatever it left half done, the next pass sees)
            looking_again = self._look_again is not None
            if await self._kick.wait(self._look_again if looking_again else self._poll):
                await anyio.sleep(self._min_gap)  # let a burst of notifications coalesce
            elif not looking_again:
                # The polling pass looks for itself (and is whole: no pass for a
                # polling interval means no whole one either, see run_once).
                self._maybe_waiting = True
