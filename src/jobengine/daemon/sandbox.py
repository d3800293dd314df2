"""The sandbox zygote: runs sealed mode's Python handlers in an empty network namespace.

`python -m jobengine.daemon.sandbox FD` is started once per daemon, under
`unshare --net` (see `jobengine.daemon.zygote`), with FD one end of a
SOCK_SEQPACKET socket pair whose other end the daemon keeps. It

1. reads its setup (the daemon's `sys.path`, the handler references, the
   database's unix sockets), drops the capabilities that could leave the
   namespace, installs the egress guard, imports every handler, and answers
   `{"ready": pid}` or `{"error": "..."}`;
2. for each `{"run": id, "ref": ...}` (with two fds: the attempt's reply
   socket and its status socket) forks a child that runs the handler;
3. on `{"kill": id}` kills that child's whole process group at once;
4. when a child exits, kills what is left of its process group, reaps it and
   writes `{"exit": code}` on the attempt's status socket, then closes it: the
   daemon knows the attempt has really stopped when that socket closes;
5. when the daemon's end closes (the daemon stopped or died), kills every
   child's process group, reaps them and exits.

The zygote is single-threaded and runs no event loop, so forking it is safe
and cheap: each attempt starts from the pre-imported handler modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import inspect
import os
import selectors
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

import msgspec

from jobengine.daemon.sealed import ESCAPE_CAPABILITIES, AllowList, EgressGuard
from jobengine.domain.errors import EgressBlocked
from jobengine.domain.models import Job

#: Largest control message (setup, run, kill, the zygote's answer): small JSON documents.
MAX_CONTROL = 1 << 20

_PR_CAPBSET_DROP = 24
_PR_SET_PDEATHSIG = 1
_CAP_VERSION_3 = 0x20080522


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def frame(document: Any) -> bytes:
    """A reply frame: 8-byte big-endian length, then the JSON document."""
    body = msgspec.json.encode(document)
    return len(body).to_bytes(8, "big") + body


def drop_escape_capabilities() -> None:
    """Drop `ESCAPE_CAPABILITIES` from the bounding, effective, permitted and inheritable sets.

    A daemon run as root gets `unshare --net` without a user namespace, so
    its sandbox would otherwise keep CAP_SYS_ADMIN and could `setns` back into
    the host's network. Best effort: a process without the capabilities has
    nothing to drop.
    """
    try:
        libc = _libc()
    except OSError:
        return
    for cap in ESCAPE_CAPABILITIES.values():
        libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(_CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # two of {effective, permitted, inheritable}
    if libc.capget(header, data) != 0:
        return
    mask = 0
    for cap in ESCAPE_CAPABILITIES.values():
        mask |= 1 << cap
    for i in range(3):
        data[i] &= ~mask & 0xFFFFFFFF
    libc.capset(header, data)


class Zygote:
    """The fork server's state: its control socket, its handlers and running children."""

    def __init__(self, control: socket.socket, funcs: dict[str, Callable[..., Any]],
                 guard: EgressGuard) -> None:
        self.control = control
        self.funcs = funcs
        self.guard = guard
        #: pid -> (attempt id, status socket)
        self.children: dict[int, tuple[int, socket.socket]] = {}
        self.by_id: dict[int, int] = {}
        self.wake_r, self.wake_w = socket.socketpair()
        self.selector = selectors.DefaultSelector()

    def serve(self) -> None:
        """Handle requests until the daemon's end of the control socket closes."""
        self.wake_w.setblocking(False)
        signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        self.selector.register(self.control, selectors.EVENT_READ)
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        while True:
            for key, _ in self.selector.select():
                if key.fileobj is self.wake_r:
                    with contextlib.suppress(BlockingIOError):
                        self.wake_r.recv(4096)
                    self.reap()
                elif not self.handle_request():
                    self.shutdown()
                    return

    def handle_request(self) -> bool:
        """One control message; False when the daemon has gone."""
        try:
            data, fds, _flags, _addr = socket.recv_fds(
                self.control, MAX_CONTROL, 2, socket.MSG_CMSG_CLOEXEC)
        except (ConnectionError, OSError):
            return False
        if not data:
            return False
        message = msgspec.json.decode(data)
        if "run" in message and len(fds) == 2:
            self.start(int(message["run"]), str(message["ref"]), fds[0], fds[1])
        elif "kill" in message:
            pid = self.by_id.get(int(message["kill"]))
            if pid is not None:
                kill_group(pid)
        else:
            for fd in fds:
                os.close(fd)
        return True

    def start(self, attempt: int, ref: str, reply_fd: int, status_fd: int) -> None:
        """Fork the child that runs one attempt."""
        status = socket.socket(fileno=status_fd)
        pid = os.fork()
        if pid == 0:  # the child: never returns
            status.detach()
            run_child(self, ref, reply_fd, status_fd)
        os.close(reply_fd)
        status.setblocking(False)
        self.children[pid] = (attempt, status)
        self.by_id[attempt] = pid
        send_line(status, {"pid": pid})

    def reap(self) -> None:
        """Reap every child that exited: kill its group's leftovers first, then report."""
        while True:
            try:
                # WNOWAIT: the exited child stays a zombie, so its pid (= its
                # process group's id) cannot be reused while we kill the group.
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == 0:
                return
            pid = info.si_pid
            kill_group(pid)
            _, wait_status = os.waitpid(pid, 0)
            entry = self.children.pop(pid, None)
            if entry is not None:
                attempt, status = entry
                self.by_id.pop(attempt, None)
                send_line(status, {"exit": os.waitstatus_to_exitcode(wait_status)})
                status.close()

    def shutdown(self) -> None:
        """The daemon is gone: kill every attempt, reap them, and leave."""
        for pid in list(self.children):
            kill_group(pid)
        while self.children:
            try:
                pid, wait_status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            entry = self.children.pop(pid, None)
            if entry is not None:
                send_line(entry[1], {"exit": os.waitstatus_to_exitcode(wait_status)})
                entry[1].close()

    def close_inherited(self) -> None:
        """In a child: close everything of the zygote's but the child's own sockets."""
        signal.set_wakeup_fd(-1)
        self.selector.close()
        for sock in (self.control, self.wake_r, self.wake_w):
            sock.close()
        for _attempt, status in self.children.values():
            status.close()


def kill_group(pid: int) -> None:
    """SIGKILL a child and its process group (it may not have called setsid yet)."""
    for kill in (os.kill, os.killpg):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signal.SIGKILL)


def send_line(sock: socket.socket, document: Any) -> None:
    """One JSON line on a status socket; a daemon that stopped listening is ignored."""
    with contextlib.suppress(OSError):
        sock.send(msgspec.json.encode(document) + b"\n")


def run_child(zygote: Zygote, ref: str, reply_fd: int, status_fd: int) -> None:
    """The attempt's process: its own process group, the job in, the outcome out."""
    code = 0
    try:
        parent = os.getppid()
        os.setsid()
        _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the zygote died before the line above
            os._exit(1)
        os.close(status_fd)
        zygote.close_inherited()
        for signum in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        zygote.guard.blocked.clear()
        reply = socket.socket(fileno=reply_fd)
        func = zygote.funcs.get(ref)
        reply.sendall(frame(run_attempt(ref, func, _read_all(reply), zygote.guard)))
    except BaseException:  # the child must never return into the zygote's loop
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def run_attempt(
    ref: str, func: Callable[..., Any] | None, document: bytes, guard: EgressGuard
) -> dict[str, Any]:
    """Run the handler on the job in `document`; the reply the daemon decodes.

    `{"result": ...}` or `{"error": {"type", "message", "egress"}}`, each with
    `"blocked"`: the egress attempts the guard blocked, so that a handler that
    swallowed `EgressBlocked` still fails its attempt (as in the daemon).
    """
    try:
        if func is None:  # not imported at start-up (a handler added since)
            from jobengine.daemon.handlers import import_function

            func = import_function(ref)
        job = msgspec.json.decode(document, type=Job)
        result = func(job)
        if inspect.isawaitable(result):
            # Plain asyncio, never uvloop: its sockets raise the audit events
            # the guard needs to name what was blocked.
            with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
                result = runner.run(_awaited(result))
        try:
            encoded = msgspec.json.encode(result)
        except (TypeError, ValueError, OverflowError) as exc:
            return _error("TypeError", f"the handler's result is not JSON-serialisable: {exc}",
                          False, guard)
        return {"result": msgspec.Raw(encoded), "blocked": list(guard.blocked)}
    except BaseException as exc:  # SystemExit too: it ends the attempt, as in the daemon
        return _error(type(exc).__name__, str(exc), isinstance(exc, EgressBlocked), guard)


def _error(name: str, message: str, egress: bool, guard: EgressGuard) -> dict[str, Any]:
    return {"error": {"type": name, "message": message, "egress": egress},
            "blocked": list(guard.blocked)}


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def main(argv: list[str]) -> int:
    """Set up from the daemon's first message, answer ready (or why not), then serve."""
    from jobengine.daemon.handlers import import_function

    control = socket.socket(fileno=int(argv[0]))
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)  # the daemon ends us, by closing its end
    setup = msgspec.json.decode(control.recv(MAX_CONTROL))
    sys.path[:] = [str(p) for p in setup["path"]]
    drop_escape_capabilities()
    # The guard comes before the imports: a module that phones home at import
    # time fails to import here, and the daemon refuses to start, saying so.
    guard = EgressGuard(AllowList(unix=set(setup["unix"])))
    guard.install()
    funcs: dict[str, Callable[..., Any]] = {}
    for kind, ref in setup["refs"].items():
        try:
            funcs[ref] = import_function(ref)
        except Exception as exc:  # any import failure is reported, in one line
            reason = str(exc) or type(exc).__name__
            control.send(msgspec.json.encode(
                {"error": f"handler {kind!r} ({ref}) cannot be imported in the sandbox: "
                          f"{reason}"}))
            return 1
    # Everything imported so far is shared with every child, copy-on-write:
    # keep the collector from touching (and so copying) those pages in each one.
    gc.freeze()
    control.send(msgspec.json.encode({"ready": os.getpid()}))
    Zygote(control, funcs, guard).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
