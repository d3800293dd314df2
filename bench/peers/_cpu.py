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


def _tree(root: int) -> dict[int, int] | None:
    """Ticks of `root` and of each of its live descendants (None if `root` is gone)."""
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
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        out[pid] = ticks.get(pid, 0)
        todo.extend(children.get(pid, ()))
    return out


def tree_seconds(root: int) -> float | None:
    """CPU seconds used so far by `root` and all its descendants (None if `root` is gone)."""
    tree = _tree(root)
    return None if tree is None else sum(tree.values()) / _TICK


#: process titles of PostgreSQL's own processes (not a session's backend)
_AUXILIARY = ("checkpointer", "background writer", "walwriter", "autovacuum launcher",
              "autovacuum worker", "logical replication", "archiver", "stats collector",
              "parallel worker", "walsender", "walreceiver", "startup", "wal")


def database_of(pid: int) -> str | None:
    """The database a backend serves, from its process title; None for the server's own."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            title = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return None
    if not title.startswith("postgres:"):
        return None  # the postmaster
    rest = title.split(": ")[-1].strip()  # after "postgres: [cluster_name: ]"
    words = rest.split()
    if rest.startswith("autovacuum worker"):
        return words[2] if len(words) > 2 else None
    if rest.startswith(_AUXILIARY) or len(words) < 2:
        return None
    return words[1]  # "user database host(port) state"


def database_from_dsn(dsn: str) -> str:
    """The database a postgresql:// DSN names ("" if none)."""
    from urllib.parse import urlsplit

    return urlsplit(dsn).path.lstrip("/")


class _ServerSnapshot:
    """The server's CPU ticks in all, and those of backends serving other databases."""

    def __init__(self, postmaster: int, database: str) -> None:
        tree = _tree(postmaster) or {}
        self.total = sum(tree.values())
        self.foreign = {pid: ticks for pid, ticks in tree.items()
                        if (db := database_of(pid)) is not None and db != database}


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

    `database` is the server's share: all its processes (the live ones, and
    the ones the postmaster reaped in between), less what the backends of
    other databases used while alive at a snapshot (a shared server's other
    users). Other databases' backends that exited in between cannot be told
    apart and stay in: `foreign_exited` counts the ones seen at the start.
    """

    def __init__(self, pid: int | None = None, server: int | None = None,
                 database: str = "") -> None:
        self.pid = pid
        self.server = server
        self.dbname = database
        self.process = 0.0
        self.database: float | None = None
        #: CPU seconds of other databases' backends, left out of `database`
        self.foreign = 0.0
        self.foreign_exited = 0
        self._process0 = 0.0
        self._server0: _ServerSnapshot | None = None

    def _process_now(self) -> float:
        if self.pid is None:
            return time.process_time()
        return tree_seconds(self.pid) or 0.0

    def start(self) -> None:
        """Take the first snapshot."""
        if self.server is not None:
            self._server0 = _ServerSnapshot(self.server, self.dbname)
        self._process0 = self._process_now()

    def stop(self) -> None:
        """Take the second snapshot: `process` and `database` are the CPU seconds in between."""
        self.process = self._process_now() - self._process0
        if self.server is None or self._server0 is None:
            return
        before, after = self._server0, _ServerSnapshot(self.server, self.dbname)
        foreign = sum(t - before.foreign.get(pid, 0) for pid, t in after.foreign.items())
        self.foreign = foreign / _TICK
        self.foreign_exited = len(before.foreign.keys() - after.foreign.keys())
        self.database = (after.total - before.total - foreign) / _TICK

    def as_json(self) -> dict[str, float | int | None]:
        """`{"process": s, "database": s or None, "foreign": s, "foreign_exited": n}`."""
        return {"process": self.process, "database": self.database, "foreign": self.foreign,
                "foreign_exited": self.foreign_exited}
