"""Retry policies: how long a failed job waits before it is scheduled again.

Pure arithmetic: the caller passes the clock's `now` and a random source, so
tests need neither time nor luck.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import msgspec

from jobengine.domain.errors import InvalidJob


class RetryStrategy(StrEnum):
    """How the delay grows with the attempt number."""

    FIXED = "fixed"
    LINEAR = "linear"
    EXPONENTIAL = "exponential"


class RetryPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A job's retry policy (`jobs.retry_policy`, or the daemon's `[retry]` default).

    The delay before retry n (n = the attempt that just failed, from 1) is
    `base_delay` (fixed), `base_delay * n` (linear) or `base_delay * 2**(n-1)`
    (exponential), capped at `max_delay`. With `jitter`, the delay is drawn
    uniformly from [delay/2, delay], so retries of many jobs spread out but
    never wait longer than the capped delay.
    """

    strategy: RetryStrategy = RetryStrategy.EXPONENTIAL
    base_delay: float = 1.0
    max_delay: float = 300.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if not self.base_delay >= 0:  # also catches NaN
            raise InvalidJob("retry_policy.base_delay must be >= 0", "retry_policy.base_delay")
        if not self.max_delay >= 0:
            raise InvalidJob("retry_policy.max_delay must be >= 0", "retry_policy.max_delay")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based) before the next one."""
        n = max(attempt, 1)
        if self.strategy is RetryStrategy.FIXED:
            raw = self.base_delay
        elif self.strategy is RetryStrategy.LINEAR:
            raw = self.base_delay * n
        else:
            # Cap the exponent: 2.0**1024 overflows, and any exponent that
            # large is far past every sensible max_delay anyway.
            raw = self.base_delay * 2.0 ** min(n - 1, 1000)
        capped = min(raw, self.max_delay)
        if self.jitter:
            r = (rng or random).random()
            return capped / 2 + r * (capped / 2)
        return capped

    def next_run_at(
        self, attempt: int, now: datetime, rng: random.Random | None = None
    ) -> datetime:
        """When the job may run again after failed attempt `attempt`."""
        try:
            return now + timedelta(seconds=self.delay(attempt, rng))
        except OverflowError:
            # A huge max_delay (the database accepts any number >= 0) runs past
            # datetime's range: that means "not before the end of time".
            return datetime.max.replace(tzinfo=now.tzinfo)

    def to_json(self) -> dict[str, Any]:
        """The policy as stored in `jobs.retry_policy`."""
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


def parse_retry_policy(raw: Any) -> RetryPolicy | None:
    """Build a `RetryPolicy` from its JSON form, or raise `InvalidJob` saying what is wrong."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidJob("retry_policy must be a JSON object or null", "retry_policy")
    strategy = raw.get("strategy", RetryStrategy.EXPONENTIAL.value)
    # isinstance first: a list or object here is unhashable and would raise TypeError.
    if not isinstance(strategy, str) or strategy not in {s.value for s in RetryStrategy}:
        raise InvalidJob(
            f"retry_policy.strategy {strategy!r} is unknown: "
            "use 'fixed', 'linear' or 'exponential'",
            "retry_policy.strategy",
        )
    try:
        return msgspec.convert(raw, RetryPolicy)
    except msgspec.ValidationError as exc:
        raise InvalidJob(f"retry_policy: {exc}", "retry_policy") from exc


def retries_remain(attempts_counted: int, max_retries: int) -> bool:
    """Tell whether a job that has used `attempts_counted` attempts may run again.

    `max_retries` counts retries after the first attempt, so `max_retries = 3`
    allows 4 attempts in all. Attempts given back at shutdown are not counted.
    """
    return attempts_counted <= max_retries


def policy_for(raw: Any, default: RetryPolicy) -> RetryPolicy:
    """A job's own retry policy (`jobs.retry_policy`), or `default` when it has none.

    The database refuses invalid policies; one that slipped in anyway (an
    older schema) falls back to the default rather than stopping a retry.
    """
    try:
        return parse_retry_policy(raw) or default
    except InvalidJob:
        return default


def retry_delay(
    *,
    attempt: int,
    releases: int,
    max_retries: int,
    policy: RetryPolicy,
    backoff: bool = True,
    rng: random.Random | None = None,
) -> float | None:
    """The retry decision for a failed attempt: seconds until the next one, or None.

    None means no attempt remains: the job is failed for good. `attempt`
    counts entries into running, `releases` the give-backs among them (not
    counted against `max_retries`). Without `backoff` (a rescued job whose
    worker died: the job itself did not fail) the next attempt is due at once.
    """
    counted = attempt - releases
    if not retries_remain(counted, max_retries):
        return None
    return policy.delay(counted, rng) if backoff else 0.0
