"""`serve`: run an ASGI app with uvicorn inside the caller's anyio task group.

No signal handlers of uvicorn's own: the caller (the daemon, `jobengine
api`) owns signals and stops the server by cancelling the scope `serve` runs
in. Shutdown is then graceful: event streams are told to end, the listening
socket closes, requests in flight get `grace` seconds to finish.
"""

from __future__ import annotations

import contextlib
import math
import socket
from collections.abc import Iterator
from typing import Any

import anyio
import uvicorn
from anyio.abc import TaskStatus
from starlette.types import ASGIApp

from jobengine.api.app import begin_shutdown
from jobengine.domain.errors import ConfigError

#: Seconds requests in flight get to finish once the server is told to stop.
DEFAULT_GRACE = 5.0


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its caller."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port), or `ConfigError`."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from exc
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock


async def serve(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    grace: float = DEFAULT_GRACE,
    task_status: TaskStatus[Any] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on host:port until the surrounding scope is cancelled.

    Reports `task_status.started((host, port))` once the socket is listening
    and the app's lifespan has started (with port 0, the port actually
    bound), so `await tg.start(serve, app, host, port)` returns the address.
    `grace` (whole seconds, at least 1) is how long requests in flight may
    take to finish once the scope is cancelled.
    Raises `ConfigError` when the address cannot be bound and `RuntimeError`
    when the app fails to start.
    """
    sock = bind_socket(host, port)
    bound = sock.getsockname()
    address = (host, int(bound[1]))
    config = uvicorn.Config(
        app, lifespan="on", log_config=None, access_log=False, server_header=False,
        timeout_graceful_shutdown=max(1, math.ceil(grace)),
    )
    server = _QuietServer(config)
    done = anyio.Event()
    failure: list[BaseException] = []

    async def run() -> None:
        # Shielded: on cancellation the server is stopped by asking it to, below.
        with anyio.CancelScope(shield=True):
            try:
                await server.serve(sockets=[sock])
            except (Exception, SystemExit) as exc:  # uvicorn exits on a failed startup
                failure.append(exc)
            finally:
                sock.close()
                done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        try:
            while not server.started:
                if done.is_set():
                    raise RuntimeError(f"the API server on {host}:{port} failed to start") from (
                        failure[0] if failure else None
                    )
                await anyio.sleep(0.01)
            task_status.started(address)
            await done.wait()
            if failure:
                raise RuntimeError(f"the API server on {host}:{port} stopped") from failure[0]
        finally:
            with anyio.CancelScope(shield=True):
                begin_shutdown(app)
                server.should_exit = True
                with anyio.move_on_after(grace + 2):
                    await done.wait()
                if not done.is_set():
                    server.force_exit = True
                    await done.wait()
