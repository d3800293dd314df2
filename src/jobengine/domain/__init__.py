"""The pure core of jobengine: statuses, transitions, retry policies, records, errors.

Standard library, msgspec and cronsim (a pure cron parser) only: no I/O, no
event loop, no logging.
"""

from jobengine.domain.clock import Clock, ManualClock, SystemClock
from jobengine.domain.errors import (
    ConfigError,
    DatabaseUnavailable,
    DuplicateJob,
    EgressBlocked,
    HandlerNotFound,
    IllegalTransition,
    InvalidJob,
    InvalidLimit,
    InvalidSchedule,
    JobBusy,
    JobEngineError,
    JobNotFound,
)
from jobengine.domain.models import (
    SCHEMA_VERSION,
    EventEnvelope,
    HistoryEntry,
    Job,
    JobSpec,
    TimelineEvent,
    decode_envelope,
)
from jobengine.domain.retry import (
    RetryPolicy,
    RetryStrategy,
    parse_retry_policy,
    policy_for,
    retries_remain,
    retry_delay,
)
from jobengine.domain.status import (
    FINAL,
    SETTLED,
    TRANSITIONS,
    JobStatus,
    check,
    is_allowed,
    targets,
)

__all__ = [
    "FINAL",
    "SCHEMA_VERSION",
    "SETTLED",
    "TRANSITIONS",
    "Clock",
    "ConfigError",
    "DatabaseUnavailable",
    "DuplicateJob",
    "EgressBlocked",
    "EventEnvelope",
    "HandlerNotFound",
    "HistoryEntry",
    "IllegalTransition",
    "InvalidJob",
    "InvalidLimit",
    "InvalidSchedule",
    "Job",
    "JobBusy",
    "JobEngineError",
    "JobNotFound",
    "JobSpec",
    "JobStatus",
    "ManualClock",
    "RetryPolicy",
    "RetryStrategy",
    "SystemClock",
    "TimelineEvent",
    "check",
    "decode_envelope",
    "is_allowed",
    "parse_retry_policy",
    "policy_for",
    "retries_remain",
    "retry_delay",
    "targets",
]
