"""What ``/proc`` and ``postmaster.pid`` say: live PIDs, start times, our postmaster.

A PID is alive when ``os.kill(pid, 0)`` does not raise
:class:`ProcessLookupError` and ``/proc/<pid>/stat`` does not call it a zombie.
Its start time (``/proc/<pid>/stat`` field 22 after ``btime`` of
``/proc/stat``) tells a holder that registered itself from a process that got
its PID later (see :mod:`jobengine.embedded.holders`).

A ``postmaster.pid`` whose PID is dead -- or alive but not a postgres process
working in this data directory (checked through ``/proc/<pid>/cwd``, else
``/proc/<pid>/cmdline``) -- is stale and :func:`remove_stale` removes it
before ``pg_ctl start``, because the postmaster only ignores a stale lock file
whose PID is dead or belongs to another user.  Without procfs, ``kill(pid, 0)``
is trusted.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from jobengine.embedded.errors import EmbeddedPostgresError

__all__ = [
    "PidFile",
    "is_our_postmaster",
    "live_pidfile",
    "pid_alive",
    "process_start_time",
    "read_pidfile",
    "remove_stale",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PidFile:
    """The parts of ``postmaster.pid`` we use."""

    pid: int
    port: int | None
    socket_dir: str | None
    status: str


def _proc_stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of ``/proc/<pid>/stat`` (after the command name), or ``None``."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def pid_alive(pid: int) -> bool:
    """True if ``pid`` names a live, non-zombie process."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user
    fields = _proc_stat_fields(pid)
    return not (fields and fields[0] in ("Z", "X"))


def process_start_time(pid: int) -> float | None:
    """Wall-clock start time of ``pid`` from ``/proc`` (Linux), else ``None``."""
    fields = _proc_stat_fields(pid)
    try:
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        ticks = int(fields[19]) if fields else None  # stat(5) field 22, "starttime"
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return None if ticks is None else boot + ticks / os.sysconf("SC_CLK_TCK")


def read_pidfile(data_dir: Path) -> PidFile | None:
    """The ``postmaster.pid`` of ``data_dir``, or ``None`` when there is none.

    A file whose first line is not a PID reads as PID 0 (never alive).

    Raises:
        EmbeddedPostgresError: the file exists but cannot be read.
    """
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EmbeddedPostgresError(f"cannot read {data_dir / 'postmaster.pid'}: {exc}") from exc
    try:
        pid = abs(int(lines[0]))
    except (IndexError, ValueError):
        return PidFile(0, None, None, "")
    field = [line.strip() for line in lines] + [""] * 8
    port = int(field[3]) if field[3].isdigit() else None
    return PidFile(pid, port, field[4] or None, field[7])


def is_our_postmaster(pid: int, data_dir: Path) -> bool:
    """``pid`` is alive and is a postgres process working in ``data_dir``."""
    if not pid_alive(pid):
        return False
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():
        return True  # no procfs: trust kill(pid, 0)
    try:
        cwd: str | None = os.readlink(proc / "cwd")  # the postmaster chdirs to PGDATA
    except FileNotFoundError:
        return False
    except OSError:
        cwd = None  # not ours to inspect
    if cwd is not None:
        try:
            return os.path.samefile(cwd, data_dir)
        except OSError:
            return False
    try:
        argv0 = (proc / "cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return True
    return os.path.basename(argv0).startswith(b"postgres")


def live_pidfile(data_dir: Path) -> PidFile | None:
    """The ``postmaster.pid`` of ``data_dir`` if its postmaster runs, else ``None``."""
    info = read_pidfile(data_dir)
    if info is None or not is_our_postmaster(info.pid, data_dir):
        return None
    return info


def remove_stale(data_dir: Path, info: PidFile) -> None:
    """Remove the lock files of a dead postmaster (whose PID may have been reused)."""
    _log.info("removing stale postmaster.pid (pid %s) in %s", info.pid, data_dir)
    (data_dir / "postmaster.pid").unlink(missing_ok=True)
    if info.socket_dir and info.port:
        lock = Path(info.socket_dir) / f".s.PGSQL.{info.port}.lock"
        with contextlib.suppress(OSError):
            first = lock.read_text().splitlines()[:1]
            # only the socket lock of that very postmaster: another server may use the name now
            if first and first[0].strip().lstrip("-") == str(info.pid):
                lock.unlink()
