"""The store: PostgreSQL access through asyncpg and named SQL queries.

No tasks and no logging here: callers decide when to run a query and what to
say about it.
"""

from jobengine.store.executor import TRANSIENT
from jobengine.store.jobs import EventPage, JobStore, RetryResult
from jobengine.store.ledger import (
    DroppedPartition,
    LedgerProblem,
    LedgerStore,
    RetentionReport,
    Seal,
    SealCheck,
    VerifyReport,
)
from jobengine.store.lifecycle import (
    AttemptEnd,
    AttemptKey,
    ClaimBatch,
    Completion,
    DagChanges,
    DagCursor,
    FailResult,
    Failure,
    ReapOutcome,
    Written,
)
from jobengine.store.migrate import AppliedMigration, current_version, migrate
from jobengine.store.pool import connect, connection, create_pool, setup_connection
from jobengine.store.scheduling import Held, LimitInfo, QueueInfo, SchedulingStore

__all__ = [
    "TRANSIENT",
    "AppliedMigration",
    "AttemptEnd",
    "AttemptKey",
    "ClaimBatch",
    "Completion",
    "DagChanges",
    "DagCursor",
    "DroppedPartition",
    "EventPage",
    "FailResult",
    "Failure",
    "Held",
    "JobStore",
    "LedgerProblem",
    "LedgerStore",
    "LimitInfo",
    "QueueInfo",
    "ReapOutcome",
    "RetentionReport",
    "RetryResult",
    "SchedulingStore",
    "Seal",
    "SealCheck",
    "VerifyReport",
    "Written",
    "connect",
    "connection",
    "create_pool",
    "current_version",
    "migrate",
    "setup_connection",
]
