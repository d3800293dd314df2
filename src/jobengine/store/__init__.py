"""The store: PostgreSQL access through asyncpg and named SQL queries.

No tasks and no logging here: callers decide when to run a query and what to
say about it.
"""

from jobengine.store.jobs import (
    EventPage,
    Failure,
    FailureOutcome,
    JobStore,
    Transition,
    TransitionOutcome,
)
from jobengine.store.migrate import AppliedMigration, current_version, migrate
from jobengine.store.pool import connect, create_pool, setup_connection

__all__ = [
    "AppliedMigration",
    "EventPage",
    "Failure",
    "FailureOutcome",
    "JobStore",
    "Transition",
    "TransitionOutcome",
    "connect",
    "create_pool",
    "current_version",
    "migrate",
    "setup_connection",
]
