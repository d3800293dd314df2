"""Test signals: what the daemon's services did, for tests to wait on (River's testsignal).

In production every signal is a no-op (`signal()` returns at once, nothing is
kept). A test enables them (`DaemonSignals.enabled()`), passes them to the
daemon, and awaits exactly the step it needs (`await signals.flushed.wait()`)
instead of sleeping or timing anything.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Generic, TypeVar

import anyio

T = TypeVar("T")


class TestSignal(Generic[T]):
    """One kind of event; values are kept, in order, once enabled."""

    __test__ = False  # not a pytest test class

    def __init__(self, name: str) -> None:
        self.name = name
        self._values: deque[T] | None = None
        self._arrived = anyio.Event()

    def enable(self) -> None:
        """Start keeping values (call before the daemon runs)."""
        self._values = deque()

    def signal(self, value: T) -> None:
        """Record that it happened (a no-op unless enabled)."""
        if self._values is not None:
            self._values.append(value)
            self._arrived.set()

    async def wait(self, *, within: float = 10.0) -> T:
        """The next value not yet waited for; `AssertionError` after `within` seconds."""
        if self._values is None:
            raise RuntimeError(f"test signal {self.name!r} is not enabled")
        with anyio.move_on_after(within):
            while not self._values:
                # Only waiters replace the event, and only while nothing is
                # kept: a value signalled meanwhile is in the deque already.
                self._arrived = anyio.Event()
                await self._arrived.wait()
            return self._values.popleft()
        raise AssertionError(f"timed out after {within}s waiting for test signal {self.name!r}")

    def drain(self) -> list[T]:
        """Every value kept and not yet waited for."""
        if self._values is None:
            return []
        values = list(self._values)
        self._values.clear()
        return values


class DaemonSignals:
    """The daemon's test signals; all no-ops unless enabled."""

    def __init__(self) -> None:
        #: the attempts one claim took: list of (job id, attempt)
        self.claimed: TestSignal[list[tuple[int, int]]] = TestSignal("claimed")
        #: each outcome flush's FlushReport
        self.flushed: TestSignal[Any] = TestSignal("flushed")
        #: each lease renewal pass's LeasePass
        self.renewed: TestSignal[Any] = TestSignal("renewed")
        #: attempts stopped because their lease's local deadline passed
        self.fenced: TestSignal[list[tuple[int, int]]] = TestSignal("fenced")
        #: each reaper pass that changed something (ReapPass)
        self.reaped: TestSignal[Any] = TestSignal("reaped")
        #: each schedule tick this daemon created a job for: (schedule name, job id)
        self.ticked: TestSignal[tuple[str, int]] = TestSignal("ticked")

    @classmethod
    def enabled(cls) -> DaemonSignals:
        """Signals that keep what happens (for tests)."""
        signals = cls()
        for signal in signals.all():
            signal.enable()
        return signals

    def all(self) -> list[TestSignal[Any]]:
        """Every signal."""
        return [self.claimed, self.flushed, self.renewed, self.fenced, self.reaped, self.ticked]
