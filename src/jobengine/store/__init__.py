"""The store: PostgreSQL access through asyncpg and named SQL queries.

No tasks and no logging here: callers decide when to run a query and what to
say about it.
"""

from jobengine.store.executor import TRANSIENT
from jobengine.store.jobs import EventPage, JobStore, RetryResult
from jobengine.store.lifecycle import (
    AttemptKey,
    Completion,
    FailResult,
    Failure,
    ReapOutcome,
    Written,
)
from jobengine.store.migrate import AppliedMigration, current_version, migrate
from jobengine.store.pool import connect, connection, create_pool, setup_connection

__all__ = [
    "TRANSIENT",
    "AppliedMigration",
    "AttemptKey",
    "Completion",
    "EventPage",
    "FailResult",
    "Failure",
    "JobStore",
    "ReapOutcome",
    "RetryResult",
    "Written",
    "connect",
    "connection",
    "create_pool",
    "current_version",
    "migrate",
    "setup_connection",
]
