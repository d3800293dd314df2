"""The daemon's side of the sandbox: starts the zygote, runs attempts in it, stops it.

`Sandbox` owns one zygote process (`jobengine.daemon.sandbox`) started under
a network-namespace prefix (`unshare --net`); `isolation.SandboxedHandler` is
the `Handler` that runs a Python function there. Per attempt the daemon makes two
socket pairs and hands one end of each to the zygote with the run request:

- the *reply* socket goes to the attempt's child: the job as JSON (then EOF)
  one way, one length-prefixed reply frame the other;
- the *status* socket stays with the zygote, which writes the child's pid
  when it forks and its exit code once it has reaped it and killed what was
  left of its process group. Only then is the attempt over.

Interrupting an attempt (timeout, cancel, lease loss, shutdown) asks the
zygote to SIGKILL the child's process group and waits, shielded, for the
exit line; if the zygote does not answer, the daemon kills the group itself.
A zygote that died is restarted for the next attempt; the attempts it was
running fail. Everything crosses as JSON over unix sockets: no network.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import anyio
import msgspec
import structlog

import jobengine
from jobengine.daemon.sandbox import MAX_CONTROL
from jobengine.daemon.sealed import blocked_attempts
from jobengine.domain.errors import ConfigError, EgressBlocked, JobEngineError
from jobengine.domain.models import Job

log = structlog.get_logger("jobengine.sandbox")
_encode = msgspec.json.Encoder().encode

#: How long an interrupted attempt waits for the zygote to confirm its child is gone.
KILL_WAIT = 5.0


class SandboxError(JobEngineError):
    """Raised when the sandbox cannot run an attempt (its zygote would not start, or died)."""


class HandlerDied(JobEngineError):
    """Raised when a sandboxed handler's process ended without sending a result."""


class HandlerRaised(JobEngineError):
    """Raised when a sandboxed handler raised; its subclasses carry the original type's name."""


class SandboxedEgressBlocked(EgressBlocked):
    """Raised when sealed mode blocked a sandboxed handler's egress (the sandbox's message)."""

    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)
        self.address = message


@cache
def _raised_as(name: str) -> type[HandlerRaised]:
    # Named as the handler's exception, so `last_error` reads "ValueError: boom"
    # exactly as when the handler runs in the daemon.
    return type(name, (HandlerRaised,), {"__module__": "jobengine.sandbox.remote"})


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "the sandbox died"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit status {code}"


class _Status:
    """The attempt's status socket: the child's pid, then its exit code."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.pid: int | None = None
        self.exit: int | None = None
        self.closed = False

    async def wait_exit(self) -> None:
        """Until the zygote reported the exit, or closed the socket (it died)."""
        while self.exit is None and not self.closed:
            await anyio.wait_readable(self.sock)
            try:
                chunk = self.sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                return
            self.buffer += chunk
            while b"\n" in self.buffer:
                line, _, self.buffer = self.buffer.partition(b"\n")
                document = msgspec.json.decode(line)
                self.pid = document.get("pid", self.pid)
                self.exit = document.get("exit", self.exit)


def _frame_body(buffer: bytes | bytearray) -> bytes | None:
    """The reply frame's body once it has fully arrived."""
    if len(buffer) < 8:
        return None
    size = int.from_bytes(buffer[:8], "big")
    return bytes(buffer[8 : 8 + size]) if len(buffer) >= 8 + size else None


async def _read_reply(sock: socket.socket, buffer: bytearray) -> None:
    while _frame_body(buffer) is None:
        await anyio.wait_readable(sock)
        if not _drain(sock, buffer):
            return


def _drain(sock: socket.socket, buffer: bytearray) -> bool:
    """Read what is there without waiting; False at end of stream."""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not chunk:
            return False
        buffer += chunk


async def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            await anyio.wait_writable(sock)


class Sandbox:
    """One zygote in a fresh, empty network namespace, and the attempts it runs."""

    def __init__(self, prefix: Iterable[str], refs: Mapping[str, str], unix: Iterable[str],
                 *, start_timeout: float = 60.0) -> None:
        self.prefix = list(prefix)
        self.refs = dict(refs)
        self.unix = sorted(unix)
        self.start_timeout = start_timeout
        self.path = list(sys.path)  # the sandbox imports what the daemon can
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._ids = itertools.count(1)
        self._restart_lock: anyio.Lock | None = None
        self._send_lock: anyio.Lock | None = None
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The zygote's pid (None before start or after it died)."""
        return self._proc.pid if self._proc is not None and self._control is not None else None

    # -- the zygote's life --------------------------------------------------------------

    def start(self) -> None:
        """Start the zygote and wait until it has imported every handler (blocking).

        Raises `ConfigError` saying why when it cannot: the daemon must not
        start sealed with handlers it cannot run.
        """
        proc, control = self._spawn()
        try:
            ready, _, _ = select.select([control], [], [], self.start_timeout)
            answer = control.recv(MAX_CONTROL) if ready else None
        except OSError:
            answer = b""
        try:
            self._accept(proc, control, answer)
        except SandboxError as exc:
            raise ConfigError(f"sealed mode cannot start its sandbox: {exc}") from None

    def _spawn(self) -> tuple[subprocess.Popen[bytes], socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ)
        root = str(Path(jobengine.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        argv = [*self.prefix, sys.executable, "-m", "jobengine.daemon.sandbox",
                str(theirs.fileno())]
        try:
            # Its own session: a Ctrl-C meant for the daemon (which drains) does
            # not reach the zygote or the handlers it runs.
            proc = subprocess.Popen(argv, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=env)
        except OSError as exc:
            ours.close()
            raise SandboxError(f"cannot run {argv[0]}: {exc}") from exc
        finally:
            theirs.close()
        setup = {"path": self.path, "refs": self.refs, "unix": self.unix}
        with contextlib.suppress(OSError):  # it died at once: the missing answer says so
            ours.send(_encode(setup))
        return proc, ours

    def _accept(self, proc: subprocess.Popen[bytes], control: socket.socket,
                answer: bytes | None) -> None:
        message: dict[str, Any] = msgspec.json.decode(answer) if answer else {}
        if "ready" not in message:
            control.close()
            with contextlib.suppress(OSError):
                proc.kill()
            code = proc.wait()
            if answer is None:
                raise SandboxError(f"the sandbox did not answer within {self.start_timeout:g}s")
            raise SandboxError(str(message.get("error") or
                                   f"the sandbox exited at start ({_describe_exit(code)})"))
        control.setblocking(False)
        self._proc, self._control = proc, control
        log.info("sandbox.started", pid=proc.pid, handlers=sorted(self.refs),
                 prefix=self.prefix)

    async def _ready(self) -> socket.socket:
        """The control socket of a live zygote, restarting a dead one first."""
        if self._closed:
            raise SandboxError("the sandbox is closed")
        if self._control is not None and self._proc is not None and self._proc.poll() is None:
            return self._control
        if self._restart_lock is None:
            self._restart_lock = anyio.Lock()
        async with self._restart_lock:
            if self._control is None or self._proc is None or self._proc.poll() is not None:
                await self._restart()
            assert self._control is not None
            return self._control

    async def _restart(self) -> None:
        self._mark_dead()
        await self._reap_old()
        log.warning("sandbox.restarting")
        proc, control = self._spawn()
        control.setblocking(False)
        answer: bytes | None = None
        try:
            with anyio.move_on_after(self.start_timeout):
                await anyio.wait_readable(control)
                try:
                    answer = control.recv(MAX_CONTROL)
                except OSError:
                    answer = b""
        except BaseException:  # interrupted while it started: do not leave it behind
            control.close()
            proc.kill()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(proc.wait)
            raise
        self._accept(proc, control, answer)

    def _mark_dead(self) -> None:
        if self._control is not None:
            log.warning("sandbox.died", pid=self._proc.pid if self._proc else None)
            self._close_control()

    def _close_control(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None

    async def _reap_old(self) -> None:
        """Close the control socket (the zygote then exits) and reap the process."""
        self._close_control()
        proc, self._proc = self._proc, None
        if proc is not None:
            with anyio.move_on_after(KILL_WAIT) as waited:
                await anyio.to_thread.run_sync(proc.wait)
            if waited.cancelled_caught:
                proc.kill()
                await anyio.to_thread.run_sync(proc.wait)

    async def aclose(self) -> None:
        """Stop the zygote: it kills whatever it still runs, and exits; reaped here."""
        self._closed = True
        with anyio.CancelScope(shield=True):
            await self._reap_old()
            log.info("sandbox.stopped")

    # -- attempts ---------------------------------------------------------------------

    async def _send(self, message: dict[str, Any], fds: list[int]) -> None:
        if self._send_lock is None:
            self._send_lock = anyio.Lock()
        async with self._send_lock:
            control = self._control
            if control is None:
                raise BrokenPipeError("the sandbox is not running")
            while True:
                try:
                    socket.send_fds(control, [_encode(message)], fds)
                    return
                except BlockingIOError:
                    await anyio.wait_writable(control)

    async def run(self, ref: str, job: Job) -> Any:
        """Run one attempt of `job` with the handler `ref` in a fresh child of the zygote."""
        reply, reply_theirs = socket.socketpair()
        status, status_theirs = socket.socketpair()
        watch = _Status(status)
        attempt = next(self._ids)
        buffer = bytearray()
        try:
            for sock in (reply, status):
                sock.setblocking(False)
            try:
                await self._request(attempt, ref, reply_theirs, status_theirs)
            finally:
                # The zygote holds its own copies now; without them (a request
                # that never arrived) the status socket reads EOF at once.
                reply_theirs.close()
                status_theirs.close()
            with contextlib.suppress(OSError):  # a child that died: its status says so
                await _send_all(reply, _encode(job))
                reply.shutdown(socket.SHUT_WR)
            async with anyio.create_task_group() as tg:
                tg.start_soon(_read_reply, reply, buffer)
                await watch.wait_exit()
                tg.cancel_scope.cancel()  # the child is gone: what it wrote is here
            _drain(reply, buffer)
        finally:
            if watch.exit is None:  # interrupted, or the zygote went away
                with anyio.CancelScope(shield=True):
                    await self._stop(attempt, watch)
            reply.close()
            status.close()
        return self._outcome(_frame_body(buffer), watch)

    async def _request(self, attempt: int, ref: str, reply: socket.socket,
                       status: socket.socket) -> None:
        """Send the run request, restarting a dead zygote once."""
        fds = [reply.fileno(), status.fileno()]
        for last in (False, True):
            await self._ready()
            try:
                await self._send({"run": attempt, "ref": ref}, fds)
                return
            except OSError as exc:
                self._mark_dead()
                if last:
                    raise SandboxError(f"the sandbox is not running: {exc}") from exc

    async def _stop(self, attempt: int, watch: _Status) -> None:
        """Kill an interrupted attempt's process group and wait until it is gone."""
        with contextlib.suppress(OSError):
            await self._send({"kill": attempt}, [])
        with anyio.move_on_after(KILL_WAIT):
            await watch.wait_exit()
        if watch.exit is None and watch.pid is not None:
            # The zygote did not confirm (it died or hangs): kill the group ourselves.
            log.warning("sandbox.kill_unconfirmed", pid=watch.pid)
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill(watch.pid, signal.SIGKILL)

    def _outcome(self, body: bytes | None, watch: _Status) -> Any:
        if watch.exit is None:
            self._mark_dead()
        if body is None:
            if watch.exit is None:
                raise SandboxError("the sandbox died during the attempt; it restarts for the "
                                   "next one")
            raise HandlerDied(f"the handler's process ended without a result "
                              f"({_describe_exit(watch.exit)})")
        reply: dict[str, Any] = msgspec.json.decode(body)
        attempts = blocked_attempts.get()
        if attempts is not None:  # the actor fails the attempt even if this was swallowed
            attempts.extend(reply.get("blocked") or ())
        error = reply.get("error")
        if error is None:
            return reply.get("result")
        if error.get("egress"):
            raise SandboxedEgressBlocked(error["message"])
        raise _raised_as(str(error["type"]))(error["message"])
