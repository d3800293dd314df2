"""Sealed (air-gapped) mode.

The egress guard is a process-wide audit hook that cannot be removed, so it is
only ever installed in child processes here. Addresses that must not be
reached are either an unlisted loopback address (127.0.0.2) or, for the
documentation range 203.0.113.0/24, used only inside an empty network
namespace (`unshare -n`), where nothing can leave the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from jobengine.daemon.scheduler import Scheduler
from jobengine.daemon.sealed import (
    AllowList,
    database_endpoints,
    netns_wrapper,
    network_is_isolated,
)
from jobengine.domain import ConfigError, JobSpec
from jobengine.store import JobStore
from tests.daemon_helpers import daemon_ready, wait_status
from tests.netns import TestNamespace, can_make_namespaces, daemon_env, spawn, unix_socket_dsn

REPO = Path(__file__).resolve().parents[1]


# -- what sealed mode allows ---------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "inet", "unix"),
    [
        ("postgresql://u@127.0.0.1:5432/db", [("127.0.0.1", 5432)], []),
        ("postgresql://u@db.internal/db", [("db.internal", 5432)], []),
        ("postgresql://u@/db?host=/var/run/postgresql", [], ["/var/run/postgresql/.s.PGSQL.5432"]),
        ("postgresql://u@/db?host=/tmp/x&port=6543", [], ["/tmp/x/.s.PGSQL.6543"]),
        ("postgresql://u:pw@[::1]:6000,db2/db", [("::1", 6000), ("db2", 5432)], []),
    ],
)
def test_database_endpoints(dsn: str, inet: list[Any], unix: list[str]) -> None:
    assert database_endpoints(dsn) == (inet, unix)


def test_allow_list_matches_addresses_and_names() -> None:
    allow = AllowList(inet={("127.0.0.1", 5432)}, names={"db.internal"})
    assert allow.allows_inet("127.0.0.1", 5432)
    assert not allow.allows_inet("127.0.0.1", 5433)
    assert not allow.allows_inet("127.0.0.2", 5432)
    assert allow.allows_name("db.internal")
    assert allow.allows_name("127.0.0.1")
    assert not allow.allows_name("example.com")


def test_no_unshare_means_sealed_mode_cannot_isolate_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("jobengine.daemon.sealed.network_is_isolated", lambda: False)
    monkeypatch.setattr("jobengine.daemon.sealed.shutil.which", lambda _name: None)
    with pytest.raises(ConfigError, match="cannot isolate command handlers"):
        netns_wrapper()


def test_an_isolated_process_needs_no_wrapper(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("jobengine.daemon.sealed.network_is_isolated", lambda: True)
    assert netns_wrapper() is None


GUARD_SCRIPT = r"""
import asyncio, json, socket, sys
import asyncpg
from jobengine.daemon.sealed import seal
from jobengine.domain import EgressBlocked
dsn = sys.argv[1]
seal(dsn)
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "allowed"
    except EgressBlocked as exc:
        out[name] = str(exc)
    except OSError as exc:
        out[name] = "oserror: " + str(exc)
attempt("tcp", lambda: socket.create_connection(("127.0.0.2", 9), timeout=1))
attempt("dns", lambda: socket.getaddrinfo("example.invalid", 80))
def unix():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect("/tmp/jobengine-not-the-database.sock")
    finally:
        s.close()
attempt("unix", unix)
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(b"x", ("127.0.0.2", 53))
    finally:
        s.close()
attempt("udp", udp)
async def db():
    conn = await asyncpg.connect(dsn)
    out["db"] = await conn.fetchval("SELECT 'database reached'")
    await conn.close()
asyncio.run(db())
print(json.dumps(out))
"""


def test_guard_lets_only_the_database_through(db_dsn: str) -> None:
    result = subprocess.run([sys.executable, "-c", GUARD_SCRIPT, db_dsn],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["db"] == "database reached"
    assert out["tcp"] == "egress blocked: sealed mode blocked a connection to 127.0.0.2:9"
    assert out["dns"] == "egress blocked: sealed mode blocked a name lookup of 'example.invalid'"
    assert "jobengine-not-the-database.sock" in out["unix"]
    assert "127.0.0.2:53" in out["udp"]


# -- jobs that need the network ------------------------------------------------------


@pytest.mark.anyio
async def test_sealed_daemon_holds_jobs_that_need_the_network(pool: asyncpg.Pool) -> None:
    store = JobStore(pool)
    job, _ = await store.insert(JobSpec(kind="fetch", requires_network=True))
    ready: list[str] = []
    sealed = Scheduler(store, ["default"], poll_interval=1, on_ready=lambda: ready.append("x"),
                       sealed=True)
    first = await sealed.run_once()
    again = await sealed.run_once()
    assert (first.held, again.held) == (1, 0)  # noted once
    assert (await store.get(job.id)).status.value == "pending"
    events = await store.timeline(job.id)
    assert [e.event_type for e in events] == ["job.created", "job.held"]
    assert "sealed mode" in (events[-1].envelope.reason or "")
    ttl = timedelta(seconds=30)
    assert await store.claim(owner="d", queues=["default"], kinds=["fetch"], limit=5,
                             lease_ttl=ttl, sealed=True) == []
    # unsealed, it runs
    claimed = await store.claim(owner="d", queues=["default"], kinds=["fetch"], limit=5,
                                lease_ttl=ttl)
    assert [j.id for j in claimed] == [job.id]


# -- the daemon, sealed, as a process ----------------------------------------------------


@pytest.mark.anyio
@pytest.mark.slow
async def test_handler_egress_fails_the_attempt_and_the_retry_policy_applies(
    db_dsn: str, recording_db: asyncpg.Connection, tmp_path: Path
) -> None:
    log = tmp_path / "daemon.log"
    proc = spawn([sys.executable, "-m", "jobengine.cli.main", "run", "--sealed"],
                  daemon_env(db_dsn, JOBENGINE_HANDLERS_EGRESS="tests.handlers:egress"), log)
    try:
        await daemon_ready(log)
        job_id = await recording_db.fetchval(
            "INSERT INTO jobengine.jobs (kind, payload, max_retries)"
            " VALUES ('egress', '{\"host\": \"127.0.0.2\", \"port\": 9}', 1) RETURNING id")
        await wait_status(recording_db, job_id, "failed", within=20)
    finally:
        proc.terminate()
        proc.wait(20)
    row = await recording_db.fetchrow("SELECT attempt, last_error, status_reason FROM jobengine.jobs WHERE id = $1", job_id)
    assert row["attempt"] == 2  # failed, retried once, failed for good
    assert row["status_reason"] == "egress_blocked"
    assert row["last_error"] == (
        "EgressBlocked: egress blocked: sealed mode blocked a connection to 127.0.0.2:9")
    failed = await recording_db.fetch(
        "SELECT envelope->>'reason' AS reason FROM jobengine.timeline_events"
        " WHERE job_id = $1 AND event_type = 'job.failed'", job_id)
    assert [r["reason"] for r in failed] == ["egress_blocked", "egress_blocked"]


@pytest.mark.anyio
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
async def test_sealed_command_handlers_run_without_a_network(
    db_dsn: str, recording_db: asyncpg.Connection, tmp_path: Path
) -> None:
    show = [sys.executable, "-c",
            "import json, sys; sys.stdin.read(); lines = open('/proc/self/net/dev').read().splitlines()[2:];"
            "print(json.dumps(sorted(l.split(':')[0].strip() for l in lines)))"]
    try:
        netns_wrapper()
    except ConfigError as exc:
        pytest.skip(str(exc))
    log = tmp_path / "daemon.log"
    proc = spawn([sys.executable, "-m", "jobengine.cli.main", "run", "--sealed"],
                  daemon_env(db_dsn, JOBENGINE_HANDLERS_SHOW=json.dumps({"command": show})), log)
    try:
        await daemon_ready(log)
        job_id = await recording_db.fetchval("INSERT INTO jobengine.jobs (kind) VALUES ('show') RETURNING id")
        await wait_status(recording_db, job_id, "completed", within=20)
    finally:
        proc.terminate()
        proc.wait(20)
    assert await recording_db.fetchval("SELECT result::text FROM jobengine.jobs WHERE id = $1", job_id) == '["lo"]'


@contextmanager
def _with_a_network(server_dsn: str, db_dsn: str) -> Iterator[tuple[list[str], str]]:
    """(argv prefix, DSN) to run a daemon that has a network: an interface besides `lo`.

    This process, if it has one; else a namespace of the test's own with a
    veth in it (the database then over its unix socket).
    """
    if not network_is_isolated():
        yield [], db_dsn
        return
    if not can_make_namespaces():
        pytest.skip("this process has no network; a namespace with one needs root and iproute2")
    dsn = unix_socket_dsn(server_dsn, urlsplit(db_dsn).path.lstrip("/"))
    if dsn is None:
        pytest.skip("the test server has no unix socket to reach it from a network namespace")
    with TestNamespace() as ns:
        yield ns.argv([]), dsn


def test_sealed_refuses_to_start_a_command_handler_it_cannot_isolate(
    server_dsn: str, db_dsn: str, tmp_path: Path
) -> None:
    # The premise: the daemon has a network, so a command needs a namespace of
    # its own, and without `unshare` on PATH it cannot have one.
    with _with_a_network(server_dsn, db_dsn) as (prefix, dsn):
        result = subprocess.run(
            [*prefix, sys.executable, "-m", "jobengine.cli.main", "run", "--sealed"],
            env=daemon_env(dsn, PATH="/nonexistent",
                     JOBENGINE_HANDLERS_X=json.dumps({"command": ["/bin/true"]})),
            capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert len(errors) == 1, result.stderr  # one clear line, no traceback
    assert errors[0].startswith(
        "jobengine: error: sealed mode cannot isolate command handlers: `unshare`")


# -- the proof: no AF_INET connect at all ------------------------------------------------


def _daemon_pid(log: Path) -> int:
    """The daemon's pid, from its id (host-pid-random) in the "daemon.ready" log line."""
    for line in log.read_text().splitlines():
        if '"daemon.ready"' in line:
            daemon_id = json.loads(line)["daemon_id"]
            return int(daemon_id.rsplit("-", 2)[1])
    raise AssertionError("no daemon ready line")


@pytest.mark.anyio
@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for unshare -n")
@pytest.mark.skipif(shutil.which("strace") is None or shutil.which("unshare") is None,
                    reason="needs strace and unshare")
async def test_sealed_daemon_in_an_empty_network_namespace_makes_no_inet_connect(
    server_dsn: str, db_dsn: str, recording_db: asyncpg.Connection, tmp_path: Path
) -> None:
    database = urlsplit(db_dsn).path.lstrip("/")
    dsn = unix_socket_dsn(server_dsn, database)
    if dsn is None:
        pytest.skip("the test server has no unix socket to reach it from a network namespace")
    trace = tmp_path / "connect.trace"
    log = tmp_path / "daemon.log"
    proc = spawn(["unshare", "--net", "--", "strace", "-f", "-qq", "-e", "trace=connect",
                   "-o", str(trace), sys.executable, "-m", "jobengine.cli.main", "run", "--sealed"],
                  daemon_env(dsn, JOBENGINE_HANDLERS_EGRESS="tests.handlers:egress"), log)
    try:
        await daemon_ready(log)
        job_id = await recording_db.fetchval(
            "INSERT INTO jobengine.jobs (kind, payload, max_retries)"
            " VALUES ('egress', '{\"host\": \"203.0.113.7\", \"port\": 80}', 0) RETURNING id")
        await wait_status(recording_db, job_id, "failed", within=30)
        # Stop the traced daemon itself (strace would only detach on SIGTERM).
        os.kill(_daemon_pid(log), signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    last_error = await recording_db.fetchval("SELECT last_error FROM jobengine.jobs WHERE id = $1", job_id)
    assert last_error == (
        "EgressBlocked: egress blocked: sealed mode blocked a connection to 203.0.113.7:80")
    calls = trace.read_text()
    connects = [line for line in calls.splitlines() if "connect(" in line]
    assert connects, "strace saw no connect at all: the trace is not working"
    assert any("AF_UNIX" in line for line in connects)  # the database, over its socket
    inet = [line for line in connects if re.search(r"AF_INET6?\b", line)]
    assert inet == [], inet
