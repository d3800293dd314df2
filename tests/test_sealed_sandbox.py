"""Sealed mode's sandbox: Python handlers in an empty network namespace, when the daemon has a network.

Every daemon here runs inside a namespace the test made (`tests.netns`): it
has an interface besides `lo`, so the daemon is not isolated and must
sandbox its Python handlers. Handlers aim only at the sink listening in that
same namespace; the sink's log shows whether anything arrived. A control run
without `--sealed` shows the same handlers do reach it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

import tests.handlers
from jobengine.daemon import from_callables
from jobengine.daemon.handlers import FunctionHandler
from jobengine.daemon.isolation import handler_reference
from jobengine.domain import ConfigError, Job
from tests.daemon_helpers import daemon_ready, wait_status
from tests.dbutil import wait_for
from tests.netns import (
    SINK_HOST,
    SINK_PORT,
    TestNamespace,
    can_make_namespaces,
    daemon_env,
    process_gone,
    sink_in,
    spawn,
    stop,
    unix_socket_dsn,
)

needs_namespaces = pytest.mark.skipif(not can_make_namespaces(),
                                      reason="needs root and iproute2 (ip netns)")
SINK = {"host": SINK_HOST, "port": SINK_PORT}
RUN = [sys.executable, "-m", "jobengine.cli.main", "run"]

#: Ways to try to connect: in Python (anyio, socket, one that swallows the error), and
#: from a child process of a sync and of an async handler.
CONNECTORS = {
    "connect_anyio": "tests.handlers:connect_anyio",
    "egress": "tests.handlers:egress",
    "connect_swallowed": "tests.handlers:connect_swallowed",
    "connect_in_child": "tests.handlers:connect_in_child",
    "connect_in_child_async": "tests.handlers:connect_in_child_async",
}
PYTHON_LEVEL = {"connect_anyio", "egress", "connect_swallowed"}


# -- what can be sandboxed -----------------------------------------------------------------


def test_only_functions_importable_by_reference_can_be_sandboxed() -> None:
    def nested(job: Job) -> None:
        return None

    handlers = from_callables({"ok": tests.handlers.record, "anon": lambda job: None,
                               "nested": nested})
    checked = {kind: h for kind, h in handlers.items() if isinstance(h, FunctionHandler)}
    assert handler_reference("ok", checked["ok"]) == "tests.handlers:record"
    with pytest.raises(ConfigError, match=r"cannot sandbox handler 'anon': .*<lambda> is a lambda"):
        handler_reference("anon", checked["anon"])
    with pytest.raises(ConfigError, match=r"cannot sandbox handler 'nested': .*nested function"):
        handler_reference("nested", checked["nested"])


# -- daemons in a namespace of our own ------------------------------------------------------


@pytest.fixture
def ns() -> Iterator[TestNamespace]:
    if not can_make_namespaces():
        pytest.skip("needs root and iproute2 (ip netns)")
    with TestNamespace() as namespace:
        yield namespace


@pytest.fixture
def dsn(server_dsn: str, db_dsn: str) -> str:
    """This test's database over the server's unix socket (reachable from any namespace)."""
    found = unix_socket_dsn(server_dsn, urlsplit(db_dsn).path.lstrip("/"))
    if found is None:
        pytest.skip("the test server has no unix socket to reach it from a network namespace")
    return found


@asynccontextmanager
async def daemon_in(ns: TestNamespace, dsn: str, folder: Path, handlers: dict[str, str], *,
                    sealed: bool = True, wrap: list[str] | None = None,
                    env: dict[str, str] | None = None) -> AsyncIterator[tuple[subprocess.Popen[bytes], Path]]:
    """`jobengine run [--sealed]` inside `ns` with these handlers, stopped afterwards."""
    log = folder / f"daemon-{uuid.uuid4().hex[:6]}.log"
    extra = {f"JOBENGINE_HANDLERS_{kind.upper()}": ref for kind, ref in handlers.items()}
    argv = [*(wrap or []), *RUN, *(["--sealed"] if sealed else [])]
    proc = spawn(ns.argv(argv), daemon_env(dsn, **extra, **(env or {})), log)
    try:
        await daemon_ready(log)
        yield proc, log
    finally:
        stop(proc)


async def insert(conn: asyncpg.Connection, kind: str, payload: dict[str, Any] | None = None,
                 job_timeout: timedelta | None = None) -> int:
    job_id: int = await conn.fetchval(
        "INSERT INTO jobengine.jobs (kind, payload, max_retries, timeout)"
        " VALUES ($1, $2, 0, $3) RETURNING id", kind, json.dumps(payload or {}), job_timeout)
    return job_id


async def row(conn: asyncpg.Connection, job_id: int) -> asyncpg.Record:
    return await conn.fetchrow("SELECT status::text AS status, status_reason, last_error,"
                               " result::text AS result FROM jobengine.jobs WHERE id = $1", job_id)


async def processes(conn: asyncpg.Connection, job_id: int) -> dict[str, int]:
    """The pids `tests.handlers:sleep_with_child` recorded, once it has (else empty)."""
    rows = await conn.fetch("SELECT role, pid FROM test_processes WHERE job_id = $1", job_id)
    return {r["role"]: r["pid"] for r in rows} if len(rows) == 3 else {}


# -- nothing connects, whatever the loop, whoever tries ----------------------------------------


@pytest.mark.anyio
@pytest.mark.slow
@needs_namespaces
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_sealed_handlers_reach_nothing_on_any_loop_nor_from_a_child(
    loop: str, ns: TestNamespace, dsn: str, recording_db: asyncpg.Connection, tmp_path: Path
) -> None:
    env = {"JOBENGINE_LOOP": "asyncio"} if loop == "asyncio" else {}
    with sink_in(ns, tmp_path) as sink:
        await sink.ready()
        async with daemon_in(ns, dsn, tmp_path, CONNECTORS, env=env) as (_proc, log):
            assert '"sandbox.started"' in log.read_text()  # the premise: not isolated
            ids = {kind: await insert(recording_db, kind, SINK) for kind in CONNECTORS}
            for job_id in ids.values():
                await wait_status(recording_db, job_id, "failed", "completed", within=60)
        assert sink.connections() == []
    blocked = f"egress blocked: sealed mode blocked a connection to {SINK_HOST}:{SINK_PORT}"
    for kind, job_id in ids.items():
        found = await row(recording_db, job_id)
        assert found["status"] == "failed", (kind, dict(found))
        if kind in PYTHON_LEVEL:  # the guard names it; a child just cannot get out
            assert found["status_reason"] == "egress_blocked", (kind, dict(found))
            assert found["last_error"] == f"EgressBlocked: {blocked}", kind


@pytest.mark.anyio
@pytest.mark.slow
@needs_namespaces
async def test_unsealed_the_same_handlers_do_reach_the_sink(
    ns: TestNamespace, dsn: str, recording_db: asyncpg.Connection, tmp_path: Path
) -> None:
    with sink_in(ns, tmp_path) as sink:
        await sink.ready()
        async with daemon_in(ns, dsn, tmp_path, CONNECTORS, sealed=False):
            ids = {kind: await insert(recording_db, kind, SINK) for kind in CONNECTORS}
            for job_id in ids.values():
                await wait_status(recording_db, job_id, "failed", "completed", within=60)
        assert len(sink.connections()) == len(CONNECTORS)
    for kind, job_id in ids.items():
        assert (await row(recording_db, job_id))["result"] == '"connected"', kind


@pytest.mark.anyio
@pytest.mark.slow
@needs_namespaces
@pytest.mark.skipif(shutil.which("nsenter") is None, reason="needs util-linux nsenter")
@pytest.mark.parametrize("sealed", [True, False])
async def test_a_root_handler_cannot_setns_back_into_a_network(
    sealed: bool, ns: TestNamespace, dsn: str, recording_db: asyncpg.Connection, tmp_path: Path
) -> None:
    # As root, a plain `unshare --net` would leave CAP_SYS_ADMIN, and with it
    # setns() into any namespace that has a network: sealed mode drops it.
    reenter = ["nsenter", f"--net={ns.path}", sys.executable, "-c", tests.handlers.CONNECT_SCRIPT,
               SINK_HOST, str(SINK_PORT)]
    handlers = {"setns_python": "tests.handlers:connect_via_setns",
                "setns_command": json.dumps({"command": reenter})}
    with sink_in(ns, tmp_path) as sink:
        await sink.ready()
        async with daemon_in(ns, dsn, tmp_path, handlers, sealed=sealed):
            ids = [await insert(recording_db, kind, {**SINK, "netns": ns.path})
                   for kind in handlers]
            for job_id in ids:
                await wait_status(recording_db, job_id, "failed", "completed", within=60)
        statuses = [(await row(recording_db, job_id))["status"] for job_id in ids]
        if sealed:
            assert (statuses, sink.connections()) == (["failed", "failed"], [])
        else:  # the control: the same handlers, unsealed, do get out
            assert (statuses, len(sink.connections())) == (["completed", "completed"], 2)


# -- the proof: every inet connect stays in the sandbox's empty namespace, and fails ----------

_CALL = re.compile(r"^(?P<pid>\d+)\s+(?P<name>\w+)\((?P<rest>.*)$")
_RESUMED = re.compile(r"^(?P<pid>\d+)\s+<\.\.\. (?P<name>\w+) resumed>(?P<rest>.*)$")
_UNFINISHED = "<unfinished ...>"


def syscalls(trace: str) -> list[tuple[int, str, str]]:
    """(pid, name, arguments and result) of each call in an `strace -f` log, in order."""
    pending: dict[int, tuple[str, str]] = {}
    calls = []
    for line in trace.splitlines():
        if resumed := _RESUMED.match(line):
            pid = int(resumed["pid"])
            name, head = pending.pop(pid, (resumed["name"], ""))
            calls.append((pid, name, head + resumed["rest"]))
        elif call := _CALL.match(line):
            pid, rest = int(call["pid"]), call["rest"]
            if rest.endswith(_UNFINISHED):
                pending[pid] = (call["name"], rest[: -len(_UNFINISHED)])
            else:
                calls.append((pid, call["name"], rest))
    return calls


def _result(text: str) -> str:
    return text.rsplit(" = ", 1)[-1].strip() if " = " in text else "?"


def in_new_netns(calls: list[tuple[int, str, str]]) -> set[int]:
    """The processes that entered a fresh network namespace, and all they started after."""
    isolated: set[int] = set()
    for pid, name, text in calls:
        result = _result(text).split()[0]
        if name == "unshare" and "CLONE_NEWNET" in text and result == "0":
            isolated.add(pid)
        elif name in ("clone", "clone3", "fork", "vfork") and result.isdigit() \
                and pid in isolated:
            isolated.add(int(result))
    return isolated


def _daemon_pid(log: Path) -> int:
    for line in log.read_text().splitlines():
        if '"daemon.ready"' in line:
            return int(json.loads(line)["daemon_id"].rsplit("-", 2)[1])
    raise AssertionError("no daemon.ready line")


def _sandbox_pid(log: Path) -> int:
    for line in log.read_text().splitlines():
        if '"sandbox.started"' in line:
            return int(json.loads(line)["pid"])
    raise AssertionError("no sandbox.started line")


@pytest.mark.anyio
@pytest.mark.slow
@needs_namespaces
async def test_sealed_sandbox_under_strace_every_inet_connect_is_in_its_empty_namespace(
    ns: TestNamespace, dsn: str, recording_db: asyncpg.Connection, tmp_path: Path
) -> None:
    trace = tmp_path / "connect.trace"
    strace = ["strace", "-f", "-qq", "-e", "signal=none", "-o", str(trace),
              "-e", "trace=connect,unshare,setns,clone,clone3,fork,vfork"]
    handlers = {k: CONNECTORS[k] for k in ("connect_anyio", "connect_in_child")}
    with sink_in(ns, tmp_path) as sink:
        await sink.ready()
        async with daemon_in(ns, dsn, tmp_path, handlers, wrap=strace) as (proc, log):
            ids = [await insert(recording_db, kind, SINK) for kind in handlers]
            for job_id in ids:
                await wait_status(recording_db, job_id, "failed", "completed", within=60)
            # Stop the traced daemon itself (strace would only detach on SIGTERM).
            os.kill(_daemon_pid(log), signal.SIGTERM)
            assert proc.wait(60) == 0
        assert sink.connections() == []
    for job_id in ids:
        assert (await row(recording_db, job_id))["status"] == "failed"
    calls = syscalls(trace.read_text())
    isolated = in_new_netns(calls)
    assert _sandbox_pid(log) in isolated  # the zygote entered its namespace
    assert _daemon_pid(log) not in isolated
    connects = [(pid, text) for pid, name, text in calls if name == "connect"]
    assert any("AF_UNIX" in text for _, text in connects)  # the database, over its socket
    inet = [(pid, text) for pid, text in connects if re.search(r"AF_INET6?\b", text)]
    # The child process did try (so the trace follows the sandbox) ...
    assert inet, "no inet connect traced at all: the trace does not see the handler's child"
    for pid, text in inet:
        # ... and only from inside a fresh namespace, where there is no route out.
        assert pid in isolated, f"an inet connect outside the sandbox: {pid} {text}"
        assert _result(text).startswith("-1 ENETUNREACH"), f"{pid} {text}"
    assert [t for _, name, t in calls if name == "setns" and _result(t) == "0"] == []


# -- interrupted attempts, results, a sandbox that dies ---------------------------------------


@pytest.mark.anyio
@pytest.mark.slow
@needs_namespaces
async def test_an_interrupted_sandboxed_attempt_kills_its_whole_process_group(
    ns: TestNamespace, dsn: str, recording_db: asyncpg.Connection, tmp_path: Path
) -> None:
    handlers = {"sleeper": "tests.handlers:sleep_with_child"}
    async with daemon_in(ns, dsn, tmp_path, handlers):
        timed = await insert(recording_db, "sleeper", job_timeout=timedelta(seconds=1))
        cancelled = await insert(recording_db, "sleeper")
        pids: dict[int, dict[str, int]] = {}
        for job_id in (timed, cancelled):
            async def recorded(j: int = job_id) -> dict[str, int]:
                return await processes(recording_db, j)
            pids[job_id] = await wait_for(recorded, within=30)
        await recording_db.execute(
            "UPDATE jobengine.jobs SET status = 'cancelled' WHERE id = $1", cancelled)
        await wait_status(recording_db, timed, "failed", within=30)
        for job_id, found in pids.items():
            async def gone(found: dict[str, int] = found) -> bool:
                return process_gone(found["handler"]) and process_gone(found["child"])

            await wait_for(gone, within=10, message=f"job {job_id}'s processes to be killed")
        zygote = pids[timed]["parent"]
        assert pids[cancelled]["parent"] == zygote
        assert not process_gone(zygote)  # the sandbox lives on
    assert (await row(recording_db, timed))["status_reason"] == "timeout"

    async def zygote_gone() -> bool:
        return process_gone(zygote)

    await wait_for(zygote_gone, within=10, message="the sandbox to exit with the daemon")


@pytest.mark.anyio
@pytest.mark.slow
@needs_namespaces
async def test_sandboxed_results_errors_and_a_sandbox_that_dies(
    ns: TestNamespace, dsn: str, recording_db: asyncpg.Connection, tmp_path: Path
) -> None:
    handlers = {"record": "tests.handlers:record", "fail": "tests.handlers:fail",
                "odd": "tests.handlers:unserialisable",
                "sleeper": "tests.handlers:sleep_with_child"}
    async with daemon_in(ns, dsn, tmp_path, handlers) as (_proc, log):
        ok = await insert(recording_db, "record")
        bad = await insert(recording_db, "fail", {"message": "boom"})
        odd = await insert(recording_db, "odd")
        for job_id in (ok, bad, odd):
            await wait_status(recording_db, job_id, "completed", "failed", within=30)
        victim = await insert(recording_db, "sleeper")
        found = await wait_for(lambda: processes(recording_db, victim), within=30)
        os.kill(found["parent"], signal.SIGKILL)  # the zygote
        await wait_status(recording_db, victim, "failed", within=30)

        async def gone() -> bool:
            return process_gone(found["handler"]) and process_gone(found["child"])

        await wait_for(gone, within=10, message="the dead sandbox's processes to be gone")
        again = await insert(recording_db, "record")  # runs in a restarted sandbox
        await wait_status(recording_db, again, "completed", within=60)
        assert '"sandbox.restarting"' in log.read_text()
    result = json.loads((await row(recording_db, ok))["result"])
    executed = await recording_db.fetchval(
        "SELECT pid FROM test_executions WHERE job_id = $1", ok)
    assert result == {"pid": executed}
    assert executed != _daemon_pid(log)  # it ran in a child of the sandbox
    assert (await row(recording_db, bad))["last_error"] == "ValueError: boom"
    assert (await row(recording_db, odd))["last_error"].startswith(
        "TypeError: the handler's result is not JSON-serialisable")
    assert (await row(recording_db, victim))["last_error"].startswith(
        "SandboxError: the sandbox died during the attempt")


# -- refusing to start -------------------------------------------------------------------------


@pytest.mark.slow
@needs_namespaces
def test_sealed_refuses_to_start_a_python_handler_it_cannot_sandbox(
    ns: TestNamespace, dsn: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        ns.argv([*RUN, "--sealed"]),
        env=daemon_env(dsn, PATH="/nonexistent", JOBENGINE_HANDLERS_X="tests.handlers:record"),
        capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert errors == [
        "jobengine: error: sealed mode cannot isolate Python handlers: `unshare` (util-linux) "
        "is not installed; install it, or run the daemon where it has no network but loopback "
        "(systemd PrivateNetwork=yes, or inside `unshare --net`)"
    ]
