"""Network namespaces the tests make, and what runs in them (this module holds no tests).

The sealed-mode tests never aim anything at an address outside a namespace
they made: `TestNamespace` is a fresh network namespace (`ip netns add`) with
loopback up and a veth pair whose address, 10.213.0.1, exists only in it. A
daemon started there is *not* isolated (it sees interfaces besides `lo`), so
sealed mode must isolate its handlers itself; a `Sink` listening on
10.213.0.1 in the same namespace counts every connection that arrives.
PostgreSQL is reached over its unix socket (the socket directory is shared
across network namespaces), see `unix_socket_dsn`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from tests.dbutil import dsn_with_database, wait_for

REPO = Path(__file__).resolve().parents[1]

#: The address of the test namespace's veth: it exists nowhere else.
SINK_HOST = "10.213.0.1"
SINK_PORT = 8080

IP = shutil.which("ip") or "/usr/sbin/ip"


def can_make_namespaces() -> bool:
    """Root, with iproute2: what `TestNamespace` needs."""
    return os.geteuid() == 0 and Path(IP).exists()


def _ip(*args: str) -> None:
    subprocess.run([IP, *args], check=True, capture_output=True, timeout=30)


class TestNamespace:
    """A named network namespace: loopback up, and a veth pair holding `SINK_HOST`."""

    __test__ = False  # not a test class, whatever its name says

    def __init__(self) -> None:
        self.name = f"je-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    @property
    def path(self) -> str:
        """Its bind mount: what `nsenter --net=` or setns() would enter."""
        return f"/run/netns/{self.name}"

    def argv(self, command: list[str]) -> list[str]:
        """`command`, run inside this namespace."""
        return [IP, "netns", "exec", self.name, *command]

    def __enter__(self) -> TestNamespace:
        _ip("netns", "add", self.name)
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
            _ip("-n", self.name, "link", "add", "je0", "type", "veth", "peer", "name", "je1")
            _ip("-n", self.name, "addr", "add", f"{SINK_HOST}/24", "dev", "je0")
            _ip("-n", self.name, "link", "set", "je0", "up")
            _ip("-n", self.name, "link", "set", "je1", "up")
        except BaseException:
            _ip("netns", "del", self.name)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        _ip("netns", "del", self.name)


class Host:
    """A host of its own: a network namespace joined to this one by a veth pair.

    This side of the link holds `10.214.<n>.1` (where the database listens),
    the namespace's side `10.214.<n>.2`; `cut()` takes this side down (the
    packets of open connections are dropped, not refused, as a cable pulled
    out), `restore()` brings it back.
    """

    __test__ = False

    def __init__(self, n: int) -> None:
        self.n = n
        self.name = f"je-h{n}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        tag = uuid.uuid4().hex[:6]
        self.outer, self.inner = f"jeh{n}{tag}a", f"jeh{n}{tag}b"
        self.db_address = f"10.214.{n}.1"
        self.address = f"10.214.{n}.2"

    def argv(self, command: list[str]) -> list[str]:
        """`command`, run on this host."""
        return [IP, "netns", "exec", self.name, *command]

    def __enter__(self) -> Host:
        _ip("netns", "add", self.name)
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
            _ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner,
                "netns", self.name)
            _ip("addr", "add", f"{self.db_address}/24", "dev", self.outer)
            _ip("link", "set", self.outer, "up")
            _ip("-n", self.name, "addr", "add", f"{self.address}/24", "dev", self.inner)
            _ip("-n", self.name, "link", "set", self.inner, "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def cut(self) -> None:
        """Pull the cable: nothing gets through until `restore()`."""
        _ip("link", "set", self.outer, "down")

    def restore(self) -> None:
        """Plug it back in."""
        _ip("link", "set", self.outer, "up")

    def __exit__(self, *exc: object) -> None:
        # Deleting the namespace deletes its end of the pair, and so the pair.
        subprocess.run([IP, "netns", "del", self.name], capture_output=True, timeout=30)
        subprocess.run([IP, "link", "del", self.outer], capture_output=True, timeout=30)


SINK_SCRIPT = r"""
import socket, sys
host, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((host, port))
server.listen(64)
with open(out, "a") as f:
    f.write("listening\n")
while True:
    conn, peer = server.accept()
    with open(out, "a") as f:
        f.write(f"connection from {peer[0]}\n")
    conn.close()
"""


class Sink:
    """A TCP listener on `SINK_HOST:SINK_PORT` in a namespace, logging each connection."""

    def __init__(self, ns: TestNamespace, folder: Path) -> None:
        self.log = folder / "sink.log"
        self.proc = subprocess.Popen(
            ns.argv([sys.executable, "-c", SINK_SCRIPT, SINK_HOST, str(SINK_PORT),
                     str(self.log)]))

    def connections(self) -> list[str]:
        """The connections it accepted so far."""
        if not self.log.exists():
            return []
        return [line for line in self.log.read_text().splitlines() if line.startswith("conn")]

    async def ready(self) -> None:
        """Until it listens."""
        async def probe() -> bool:
            return self.log.exists() and "listening" in self.log.read_text()

        await wait_for(probe, within=20, message="the sink to listen")

    def close(self) -> None:
        """Stop it."""
        self.proc.kill()
        self.proc.wait(10)


@contextmanager
def sink_in(ns: TestNamespace, folder: Path) -> Iterator[Sink]:
    """A running `Sink` in `ns`, stopped afterwards."""
    sink = Sink(ns, folder)
    try:
        yield sink
    finally:
        sink.close()


def unix_socket_dsn(server_dsn: str, database: str) -> str | None:
    """A DSN reaching the test server over its unix socket, if it has one we can find."""
    parts = urlsplit(server_dsn)
    if "host=/" in parts.query:
        return dsn_with_database(server_dsn, database)
    port = parts.port or 5432
    for folder in ("/var/run/postgresql", "/run/postgresql", "/tmp"):
        if Path(folder, f".s.PGSQL.{port}").exists():
            user = parts.username or "postgres"
            return f"postgresql://{user}@/{database}?host={folder}&port={port}"
    return None


def daemon_env(dsn: str, **extra: str) -> dict[str, str]:
    """The environment of a `jobengine run` started by a test: quick retries and polls."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBENGINE_")}
    env.update({"PYTHONPATH": str(REPO), "JOBENGINE_DSN": dsn,
                "JOBENGINE_RETRY_BASE_DELAY": "0", "JOBENGINE_RETRY_JITTER": "false",
                "JOBENGINE_DAEMON_POLL_INTERVAL": "0.5"})
    env.pop("NOTIFY_SOCKET", None)
    env.update(extra)
    return env


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a process with stdout and stderr going to `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=str(log.parent))


def stop(proc: subprocess.Popen[bytes], within: float = 30) -> int:
    """SIGTERM (the daemon drains), then SIGKILL if it does not end in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(within)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(10)


def process_gone(pid: int) -> bool:
    """Whether `pid` no longer runs (gone, or a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")
