"""CPU time from /proc: of a process tree, e.g. a worker or the PostgreSQL server (stdlib only).

Shared by the harness (`bench.peers._cpu`) and the peer scripts (`_cpu`, run
by whatever Python has the system installed), so both count the same way.

A tree's CPU is the sum, over the root and every live descendant, of
`utime + stime + cutime + cstime` from `/proc/PID/stat`: a process's own time
plus that of the children it has reaped. So a PostgreSQL backend that exits
between two snapshots is still counted: its whole time moves into the
postmaster's `cutime`/`cstime` when the postmaster reaps it (which it does at
once, on SIGCHLD). The resolution is a clock tick (10 ms) per process.

The server's processes are found from the postmaster, whose pid the harness
reads once (the parent of its own backend, `pg_backend_pid()`) and hands to
its children in the environment variable `BENCH_POSTMASTER_PID`; when the
server is not on this host (or not visible from here) there is none, and
only the client side is measured.
"""

from __future__ import annotations

import os
import time

#: the environment variable that carries the postmaster's pid to the peer scripts
POSTMASTER_ENV = "BENCH_POSTMASTER_PID"

_TICK = float(os.sysconf("SC_CLK_TCK"))


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(comm, ppid, ticks of itself and its reaped children) of one process; None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # comm is in parentheses and may itself contain ") ": split at the last one.
    left, right = text.find("("), text.rfind(")")
    fields = text[right + 2:].split()
    try:
        ppid = int(fields[1])
        ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    except (IndexError, ValueError):
        return None
    return text[left + 1:right], ppid, ticks


def tree_seconds(root: int) -> float | None:
    """CPU seconds used so far by `root` and all its descendants (None if `root` is gone)."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        stat = _stat(int(name))
        if stat is None:
            continue
        _, ppid, used = stat
        ticks[int(name)] = used
        children.setdefault(ppid, []).append(int(name))
    if root not in ticks:
        return None
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo.extend(children.get(pid, ()))
    return total / _TICK


def postmaster_of(backend_pid: int) -> int | None:
    """The postmaster of a backend visible in /proc, or None (another host or namespace)."""
    stat = _stat(backend_pid)
    if stat is None or not stat[0].startswith("postgres"):
        return None
    parent = _stat(stat[1])
    return stat[1] if parent is not None and parent[0].startswith("postgres") else None


def postmaster_from_env() -> int | None:
    """The postmaster pid the harness passed down, if any."""
    value = os.environ.get(POSTMASTER_ENV, "")
    return int(value) if value.isdigit() else None


class Meter:
    """CPU seconds of one process tree and of the server between `start()` and `stop()`.

    `pid=None` measures this process (`time.process_time()`, all its threads,
    at nanosecond resolution) instead of a tree read from /proc.
    """

    def __init__(self, pid: int | None = None, server: int | None = None) -> None:
        self.pid = pid
        self.server = server
        self.process = 0.0
        self.database: float | None = None
        self._process0 = 0.0
        self._database0: float | None = None

    def _process_now(self) -> float:
        if self.pid is None:
            return time.process_time()
        return tree_seconds(self.pid) or 0.0

    def start(self) -> None:
        """Take the first snapshot."""
        self._database0 = None if self.server is None else tree_seconds(self.server)
        self._process0 = self._process_now()

    def stop(self) -> None:
        """Take the second snapshot: `process` and `database` are the CPU seconds in between."""
        self.process = self._process_now() - self._process0
        after = None if self.server is None else tree_seconds(self.server)
        self.database = (None if after is None or self._database0 is None
                         else after - self._database0)

    def as_json(self) -> dict[str, float | None]:
        """`{"process": s, "database": s or None}`."""
        return {"process": self.process, "database": self.database}
