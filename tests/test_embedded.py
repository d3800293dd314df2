"""The embedded PostgreSQL lifecycle (jobengine.embedded), against real servers.

Every data directory lives under one /tmp/jobengine-embtest-* base: as root the
server runs as `embedded_postgres`, which must be able to traverse the parents
(a pytest tmp_path under /root would not do).  One module-scoped server serves
the read-only checks; lifecycle tests get their own fresh directory (initdb
takes about a second).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

import jobengine
from jobengine.embedded import (
    DEFAULT_DATA_DIR,
    HOLDERS_FILE,
    SERVER_USER,
    EmbeddedPostgres,
    EmbeddedPostgresError,
    ensure_embedded,
)
from jobengine.embedded import server as embedded_server
from jobengine.embedded.processes import pid_alive

SRC_DIR = str(Path(jobengine.__file__).resolve().parents[1])

HOLDER_SCRIPT = textwrap.dedent(
    """
    import sys
    from jobengine.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(sys.argv[1])
    print(server.start(), flush=True)
    for line in sys.stdin:
        if line.strip() == "stop":
            server.stop()
            print("stopped", flush=True)
            break
    """
)

LOCALE_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from urllib.parse import parse_qs, urlsplit
    import asyncpg
    from jobengine.embedded import ensure_embedded

    async def probe(dsn):
        conn = await asyncpg.connect(dsn)
        try:
            return {
                "version": await conn.fetchval("SHOW server_version_num"),
                "lc_messages": await conn.fetchval("SHOW lc_messages"),
                "encoding": await conn.fetchval("SHOW server_encoding"),
            }
        finally:
            await conn.close()

    dsn = ensure_embedded(sys.argv[1])
    assert ensure_embedded(sys.argv[1]) == dsn
    host = parse_qs(urlsplit(dsn).query)["host"][0]
    mode = os.stat(host).st_mode & 0o777
    print(json.dumps({"dsn": dsn, "mode": mode, **asyncio.run(probe(dsn))}), flush=True)
    # no explicit stop: the atexit hook registered by ensure_embedded stops the server
    """
)


# --------------------------------------------------------------------------- helpers


def _child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC_DIR, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _force_stop(data_dir: Path) -> None:
    """Teardown safety net: fast-shutdown a server a failed test left running."""
    pid = _postmaster_pid(data_dir)
    if pid is None or not EmbeddedPostgres(data_dir).running:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + 30
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _holders(data_dir: Path) -> list[int]:
    return list(json.loads((data_dir / HOLDERS_FILE).read_text()))


def _socket_host(dsn: str) -> str:
    return parse_qs(urlsplit(dsn).query)["host"][0]


async def _fetchval(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


class Holder:
    """Another process holding the server in `data_dir` (see HOLDER_SCRIPT)."""

    def __init__(self, data_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER_SCRIPT, str(data_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_child_env(),
        )
        self.pid = self.proc.pid

    @property
    def _stdout(self) -> IO[str]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    def dsn(self) -> str:
        line = self._stdout.readline().strip()
        assert line.startswith("postgresql://"), f"holder failed to start (said {line!r})"
        return line

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        assert self._stdout.readline().strip() == "stopped"
        self.close()
        assert self.proc.returncode == 0

    def kill(self) -> None:
        self.proc.kill()
        self.close()

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stdout.close()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def base_dir() -> Iterator[Path]:
    """A private base under /tmp for all data directories of this module."""
    base = Path(tempfile.mkdtemp(prefix="jobengine-embtest-", dir="/tmp"))
    try:
        yield base
    finally:
        for pidfile in base.rglob("postmaster.pid"):
            _force_stop(pidfile.parent)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def server(base_dir: Path) -> Iterator[EmbeddedPostgres]:
    """One embedded server shared by the read-only tests."""
    srv = EmbeddedPostgres(base_dir / "shared")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def fresh_dir(base_dir: Path) -> Iterator[Path]:
    """An empty data directory of this test's own (short: its socket fits in it)."""
    path = Path(tempfile.mkdtemp(prefix="t", dir=base_dir))
    try:
        yield path
    finally:
        _force_stop(path)


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    """Collects holder processes and reaps any a failed test left behind."""
    procs: list[Holder] = []
    try:
        yield procs
    finally:
        for holder in procs:
            if holder.proc.returncode is None:
                holder.kill()


# --------------------------------------------------------------------------- tests


@pytest.mark.anyio
async def test_start_returns_a_dsn_asyncpg_can_use(server: EmbeddedPostgres) -> None:
    dsn = server.dsn()
    assert dsn.startswith("postgresql://postgres@/postgres?host=")
    assert _socket_host(dsn) == str(server.data_dir)
    assert (server.data_dir / ".s.PGSQL.5432").is_socket()
    version = await _fetchval(dsn, "SELECT version()")
    assert isinstance(version, str)
    assert version.startswith("PostgreSQL 18")
    assert server.dsn("other db").startswith("postgresql://postgres@/other%20db?host=")


@pytest.mark.anyio
async def test_server_settings(server: EmbeddedPostgres) -> None:
    conn = await asyncpg.connect(server.dsn())
    try:
        settings = {
            name: await conn.fetchval(f"SHOW {name}")
            for name in (
                "dynamic_shared_memory_type",
                "listen_addresses",
                "max_connections",
                "shared_buffers",
                "fsync",
                "unix_socket_permissions",
                "server_encoding",
                "lc_messages",
            )
        }
        provider = await conn.fetchrow(
            "SELECT datlocprovider, datlocale FROM pg_database WHERE datname = 'postgres'"
        )
    finally:
        await conn.close()
    assert settings == {
        "dynamic_shared_memory_type": "mmap",
        "listen_addresses": "",  # unix socket only: no TCP
        "max_connections": "200",
        "shared_buffers": "128MB",
        "fsync": "on",
        "unix_socket_permissions": "0777",
        "server_encoding": "UTF8",
        "lc_messages": "C",
    }
    assert provider is not None
    assert tuple(provider) == (b"b", "C.UTF-8")  # builtin provider: no host locale needed
    # initdb already wrote mmap into the cluster's own configuration
    conf = (server.data_dir / "postgresql.conf").read_text()
    assert "\ndynamic_shared_memory_type = mmap" in conf
    # postmaster.pid: line 6 is the TCP listen address, empty when there is none
    lines = (server.data_dir / "postmaster.pid").read_text().splitlines()
    assert lines[5].strip() == ""
    assert lines[7].strip() == "ready"


def test_data_dir_is_private(server: EmbeddedPostgres) -> None:
    st = server.data_dir.stat()
    assert st.st_mode & 0o777 == 0o700
    if os.geteuid() == 0:
        import pwd

        assert pwd.getpwuid(st.st_uid).pw_name == SERVER_USER
        # every parent is traversable by the server user
        for parent in server.data_dir.parents:
            assert parent.stat().st_mode & 0o001


def test_second_instance_in_process_shares_the_server(server: EmbeddedPostgres) -> None:
    other = EmbeddedPostgres(server.data_dir)
    assert other.start() == server.dsn()
    assert os.getpid() in _holders(server.data_dir)
    other.stop()
    assert server.running  # `server` still holds it
    assert os.getpid() in _holders(server.data_dir)
    other.stop()  # a second stop is a no-op
    assert server.running


@pytest.mark.anyio
async def test_other_process_stopping_keeps_the_server_up(
    server: EmbeddedPostgres, holders: list[Holder]
) -> None:
    holder = Holder(server.data_dir)
    holders.append(holder)
    assert holder.dsn() == server.dsn()
    assert set(_holders(server.data_dir)) == {os.getpid(), holder.pid}
    holder.stop()
    assert server.running
    assert _holders(server.data_dir) == [os.getpid()]
    assert await _fetchval(server.dsn(), "SELECT 1") == 1


@pytest.mark.anyio
async def test_dead_holder_is_pruned_and_last_holder_stops(
    fresh_dir: Path, holders: list[Holder]
) -> None:
    doomed, survivor = Holder(fresh_dir), None
    holders.append(doomed)
    dsn = doomed.dsn()  # it initialised and started the server
    survivor = Holder(fresh_dir)
    holders.append(survivor)
    assert survivor.dsn() == dsn
    doomed.kill()  # SIGKILL: it stays listed
    assert set(_holders(fresh_dir)) == {doomed.pid, survivor.pid}

    me = EmbeddedPostgres(fresh_dir)
    assert me.start() == dsn
    assert set(_holders(fresh_dir)) == {survivor.pid, os.getpid()}  # doomed pruned

    survivor.stop()
    assert me.running
    assert await _fetchval(dsn, "SELECT 1") == 1

    postmaster = _postmaster_pid(fresh_dir)
    assert postmaster is not None
    me.stop()  # last live holder
    assert not me.running
    assert not (fresh_dir / "postmaster.pid").exists()
    assert not pid_alive(postmaster)  # gone, or a zombie awaiting its reaper
    assert _holders(fresh_dir) == []


def test_dead_pid_listed_before_start_does_not_keep_the_server(fresh_dir: Path) -> None:
    corpse = subprocess.Popen([sys.executable, "-c", "pass"])
    corpse.wait()
    with EmbeddedPostgres(fresh_dir) as srv:
        (fresh_dir / HOLDERS_FILE).write_text(json.dumps([corpse.pid, os.getpid()]))
    assert not srv.running


def test_concurrent_first_starts_run_initdb_once(fresh_dir: Path, holders: list[Holder]) -> None:
    first, second = Holder(fresh_dir), Holder(fresh_dir)
    holders.extend([first, second])
    assert first.dsn() == second.dsn()
    assert set(_holders(fresh_dir)) == {first.pid, second.pid}
    first.stop()
    assert EmbeddedPostgres(fresh_dir).running
    second.stop()
    assert not EmbeddedPostgres(fresh_dir).running


@pytest.mark.parametrize("alive", [False, True], ids=["dead-pid", "reused-pid"])
def test_stale_postmaster_pid_does_not_block_start(fresh_dir: Path, alive: bool) -> None:
    with EmbeddedPostgres(fresh_dir):
        pass  # create the cluster
    other = subprocess.Popen(["sleep", "60"])
    try:
        if not alive:
            other.kill()
            other.wait()
        # what a crashed server leaves behind, possibly with its PID now in use elsewhere
        (fresh_dir / "postmaster.pid").write_text(
            f"{other.pid}\n{fresh_dir}\n1700000000\n5432\n{fresh_dir}\n\n  0 0\nready   \n"
        )
        srv = EmbeddedPostgres(fresh_dir)
        assert not srv.running
        with srv:
            assert srv.running
            assert _postmaster_pid(fresh_dir) != other.pid
        assert not srv.running
    finally:
        other.kill()
        other.wait()


def test_start_failure_raises_with_log_tail(fresh_dir: Path) -> None:
    srv = EmbeddedPostgres(fresh_dir)
    with srv:
        pass
    with (fresh_dir / "postgresql.conf").open("a") as conf:
        conf.write("\njobengine_bogus_setting = 1\n")
    with pytest.raises(EmbeddedPostgresError) as info:
        srv.start()
    message = str(info.value)
    assert str(srv.log_path) in message
    assert "jobengine_bogus_setting" in message
    assert not srv.running
    assert os.getpid() not in _holders(fresh_dir)
    srv.stop()  # not started: no-op


def test_non_empty_directory_without_cluster_is_refused(fresh_dir: Path) -> None:
    (fresh_dir / "precious.txt").write_text("not a database")
    with pytest.raises(EmbeddedPostgresError, match="PG_VERSION"):
        EmbeddedPostgres(fresh_dir).start()
    assert (fresh_dir / "precious.txt").read_text() == "not a database"


def test_missing_locale_and_long_path_in_a_subprocess(base_dir: Path) -> None:
    # ~150 bytes: too long for a unix socket in the data dir, so /tmp/jobengine-<hash> is used
    data_dir = base_dir / ("long-" + "x" * 60) / ("y" * 60) / "pgdata"
    assert len(str(data_dir / ".s.PGSQL.5432")) > 100
    bad = "xx_YY.UTF-8"  # not an installed locale
    env = _child_env(LANG=bad, LC_ALL=bad, LC_MESSAGES=bad, LC_CTYPE=bad)
    done = subprocess.run(
        [sys.executable, "-c", LOCALE_SCRIPT, str(data_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    try:
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["version"].startswith("18")
        assert result["lc_messages"] == "C"
        assert result["encoding"] == "UTF8"
        host = _socket_host(result["dsn"])
        assert host.startswith("/tmp/jobengine-")
        assert result["mode"] == 0o700
        # the atexit hook of ensure_embedded stopped the server when the child exited
        assert not EmbeddedPostgres(data_dir).running
        assert not (data_dir / "postmaster.pid").exists()
    finally:
        _force_stop(data_dir)
    # stopping the server also removed its private socket directory
    assert not Path(host).exists()


def test_ensure_embedded_is_idempotent_in_process(server: EmbeddedPostgres) -> None:
    dsn = ensure_embedded(server.data_dir)
    try:
        assert dsn == server.dsn()
        assert ensure_embedded(str(server.data_dir)) == dsn
    finally:
        # release the process-wide instance now rather than at interpreter exit
        embedded_server._SHARED.pop(server.data_dir).stop()
    assert server.running


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert embedded_server._default_data_dir() == tmp_path / "jobengine" / "pgdata"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert (
        embedded_server._default_data_dir() == tmp_path / "home" / ".local/share/jobengine/pgdata"
    )
    monkeypatch.delenv("XDG_DATA_HOME")
    assert (
        embedded_server._default_data_dir() == tmp_path / "home" / ".local/share/jobengine/pgdata"
    )
    assert EmbeddedPostgres().data_dir == DEFAULT_DATA_DIR.resolve()
