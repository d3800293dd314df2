"""The error tree: every error jobengine raises on purpose derives from `JobEngineError`."""

from __future__ import annotations


class JobEngineError(Exception):
    """Raised when jobengine reports any failure on purpose; the root of the tree."""


class IllegalTransition(JobEngineError):
    """Raised when a status change is not in the lifecycle's transition table."""

    def __init__(self, src: str | None, dst: str, job_id: int | None = None) -> None:
        self.src = src
        self.dst = dst
        self.job_id = job_id
        where = f"job {job_id}: " if job_id is not None else ""
        super().__init__(f"{where}illegal transition {src or '(insert)'} -> {dst}")


class JobNotFound(JobEngineError):
    """Raised when a job id names no job."""

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} not found")


class InvalidJob(JobEngineError):
    """Raised when a job's fields fail validation (the message names the field and why)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


class DuplicateJob(JobEngineError):
    """Raised when a job's idempotency key is already taken by another job."""

    def __init__(self, key: str, existing_id: int | None = None) -> None:
        self.key = key
        self.existing_id = existing_id
        super().__init__(f"a job with idempotency_key {key!r} already exists")


class InvalidSchedule(JobEngineError):
    """Raised when a schedule could not run; names the schedule and the field."""

    def __init__(self, name: str, field: str, problem: str) -> None:
        self.name = name
        self.field = field
        self.problem = problem
        super().__init__(f"schedule {name}: {field}: {problem}")


class InvalidLimit(JobEngineError):
    """Raised when a concurrency or rate limit is malformed; names the key and the field."""

    def __init__(self, key: str, field: str, problem: str) -> None:
        self.key = key
        self.field = field
        self.problem = problem
        super().__init__(f"limit {key}: {field}: {problem}")


class JobBusy(JobEngineError):
    """Raised when a job's row stayed locked by another transaction past the wait allowed."""

    def __init__(self, job_id: int | None = None) -> None:
        self.job_id = job_id
        what = f"job {job_id}" if job_id is not None else "the job"
        super().__init__(f"{what} is locked by another transaction; try again")


class ConfigError(JobEngineError):
    """Raised when the configuration is missing, malformed or inconsistent."""


class HandlerNotFound(ConfigError):
    """Raised when a handler reference cannot be imported or is not callable."""


class EgressBlocked(JobEngineError):
    """Raised when sealed mode blocks a network connection."""

    def __init__(self, address: str, action: str = "a connection to") -> None:
        self.address = address
        super().__init__(f"egress blocked: sealed mode blocked {action} {address}")


class DatabaseUnavailable(JobEngineError):
    """Raised when the database cannot be reached."""


class PayloadMismatch(JobEngineError):
    """Raised when a job's payload does not fit its task's parameters (naming both)."""
