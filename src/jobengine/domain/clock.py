"""An injectable clock: the daemon asks it for the time, tests move it by hand.

Two readings: `now()`, the wall clock (for what is shown and measured, such
as pickup latency), and `monotonic()`, for local deadlines (a lease's, say),
which must not jump when the wall clock is set. The database keeps its own
clock for everything it records.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Anything that tells the current time."""

    def now(self) -> datetime:
        """The current time (timezone-aware, UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that only moves forward (for deadlines)."""
        ...


class SystemClock:
    """The real clocks."""

    def now(self) -> datetime:
        """The current time (timezone-aware, UTC)."""
        return datetime.now(UTC)

    def monotonic(self) -> float:
        """`time.monotonic()` (the event loop's clock too)."""
        return time.monotonic()


class ManualClock:
    """A clock that only moves when told to (for tests); both readings move together."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2030, 1, 1, tzinfo=UTC)
        self._mono = 1000.0

    def now(self) -> datetime:
        """The clock's current time."""
        return self._now

    def monotonic(self) -> float:
        """The clock's monotonic reading."""
        return self._mono

    def advance(self, seconds: float) -> datetime:
        """Move the clock forward by `seconds` and return the new time."""
        if seconds < 0:
            raise ValueError("ManualClock.advance: a clock does not go back")
        self._now += timedelta(seconds=seconds)
        self._mono += seconds
        return self._now

    def set(self, when: datetime) -> None:
        """Set the wall clock to `when` (must be timezone-aware; the monotonic reading stays)."""
        if when.tzinfo is None:
            raise ValueError("ManualClock.set needs a timezone-aware datetime")
        self._now = when
