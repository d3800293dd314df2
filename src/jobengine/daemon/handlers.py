"""Handlers: resolving `[handlers]` entries and running them for one job.

Three forms, one interface (`Handler.__call__(job) -> result`):
- an async function: awaited in the actor's task, so cancelling the actor
  interrupts it at its next await;
- a plain function: run in a worker thread. A thread cannot be killed, so on
  timeout or cancel it is abandoned: it may run on, but its return value is
  thrown away and it can never change the job;
- a command: the job as JSON on stdin, exit 0 = completed, stdout stored as
  the result when it is JSON. It runs in its own process group, and the whole
  group is killed on timeout or cancel.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import msgspec
from anyio.abc import Process

from jobengine.daemon.config import CommandHandler, HandlerSpec
from jobengine.domain.errors import ConfigError, HandlerNotFound, JobEngineError
from jobengine.domain.models import Job

_encode = msgspec.json.Encoder().encode

#: Cap on what a command may print to stdout/stderr that jobengine keeps.
_MAX_OUTPUT = 1024 * 1024


class Handler(Protocol):
    """Runs one job and returns its result (anything JSON-serialisable, or None)."""

    kind: str

    async def __call__(self, job: Job) -> Any:
        """Run the job; raise to fail the attempt."""
        ...


class HandlerSource(Protocol):
    """Something that brings its own handlers: the Python API's `jobengine.App`.

    `jobengine run --app pkg.module:app` and `run_daemon(..., app=app)` take
    one; its handlers run beside those of `[handlers]`.
    """

    def handlers(self, *, thread_limit: int = 40,
                 limiter: anyio.CapacityLimiter | None = None) -> dict[str, Handler]:
        """The handlers, by kind (plain functions' threads under `limiter`, if given)."""
        ...


class CommandFailed(JobEngineError):
    """Raised when a command handler exits non-zero (the message carries stderr's tail)."""


@dataclass
class FunctionHandler:
    """A Python function handler (async awaited, sync in a worker thread)."""

    kind: str
    ref: str
    func: Callable[[Job], Any]
    limiter: anyio.CapacityLimiter | None = None
    #: the job comes with its completed dependencies' results (`Job.dependency_results`)
    wants_results: bool = False

    async def __call__(self, job: Job) -> Any:
        """Call the function with the job."""
        if inspect.iscoroutinefunction(self.func):
            return await self.func(job)
        result = await anyio.to_thread.run_sync(
            self.func, job, abandon_on_cancel=True, limiter=self.limiter
        )
        if inspect.isawaitable(result):  # a sync function that returned a coroutine
            return await result
        return result


@dataclass
class ProcessHandler:
    """A command handler: the job as JSON on stdin, exit code and stdout back."""

    kind: str
    spec: CommandHandler
    #: wraps the argv (sealed mode runs commands in an empty network namespace)
    wrap: Callable[[list[str]], list[str]] | None = None

    async def __call__(self, job: Job) -> Any:
        """Run the command for this job; kill its process group if interrupted."""
        argv = list(self.spec.command)
        if self.wrap is not None:
            argv = self.wrap(argv)
        env = {**os.environ, **self.spec.env} if self.spec.env else None
        process = await anyio.open_process(
            argv, cwd=self.spec.cwd, env=env, start_new_session=True,
        )
        try:
            return await _talk(process, _encode(_job_document(job)))
        finally:
            _kill_group(process)
            with anyio.CancelScope(shield=True):
                await process.aclose()


async def _talk(process: Process, document: bytes) -> Any:
    out = bytearray()
    err = bytearray()

    async def pump(stream: Any, into: bytearray) -> None:
        async for chunk in stream:
            if len(into) < _MAX_OUTPUT:
                into.extend(chunk[: _MAX_OUTPUT - len(into)])

    async with anyio.create_task_group() as tg:
        assert process.stdin is not None
        assert process.stdout is not None
        assert process.stderr is not None
        tg.start_soon(pump, process.stdout, out)
        tg.start_soon(pump, process.stderr, err)
        # A program that does not read its stdin closes it early; its exit code
        # still decides the outcome.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await process.stdin.send(document)
        await process.stdin.aclose()
        code = await process.wait()
    if code != 0:
        tail = err.decode(errors="replace").strip()[-2000:]
        raise CommandFailed(f"command exited with status {code}" + (f": {tail}" if tail else ""))
    text = out.decode(errors="replace").strip()
    if not text:
        return None
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return None  # stdout that is not JSON is not a result


def _kill_group(process: Process) -> None:
    """Kill the command and everything it started (its own process group)."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


def _job_document(job: Job) -> dict[str, Any]:
    return {
        "id": job.id, "kind": job.kind, "queue": job.queue, "payload": job.payload,
        "attempt": job.attempt, "max_retries": job.max_retries,
    }


def import_function(ref: str) -> Callable[..., Any]:
    """Import "package.module:function" (HandlerNotFound saying what failed)."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise HandlerNotFound(f"handler {ref!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise HandlerNotFound(f"handler {ref!r}: cannot import {module_name!r}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise HandlerNotFound(f"handler {ref!r}: {module_name} has no {attr!r}") from exc
    if not callable(target):
        raise HandlerNotFound(f"handler {ref!r} is not callable")
    return target  # type: ignore[no-any-return]


def resolve_handlers(
    specs: Mapping[str, HandlerSpec],
    *,
    thread_limit: int = 40,
    wrap_command: Callable[[list[str]], list[str]] | None = None,
    limiter: anyio.CapacityLimiter | None = None,
) -> dict[str, Handler]:
    """Turn `[handlers]` into callables; fails fast on the first bad entry.

    Plain functions run in threads under `limiter` (a new one of `thread_limit`
    unless given: one shared with an app's tasks caps their threads together).
    """
    limiter = limiter or anyio.CapacityLimiter(max(thread_limit, 1))
    handlers: dict[str, Handler] = {}
    for kind, spec in specs.items():
        if isinstance(spec, CommandHandler):
            if not spec.command:
                raise HandlerNotFound(f"handler {kind!r}: command must not be empty")
            handlers[kind] = ProcessHandler(kind, spec, wrap_command)
        else:
            handlers[kind] = FunctionHandler(kind, spec, import_function(spec), limiter)
    return handlers


def merge_handlers(configured: Mapping[str, Handler], source: HandlerSource | None,
                   *, thread_limit: int = 40,
                   limiter: anyio.CapacityLimiter | None = None) -> dict[str, Handler]:
    """`[handlers]` and an app's tasks together; a kind in both is a `ConfigError`."""
    merged = dict(configured)
    if source is None:
        return merged
    for kind, handler in source.handlers(thread_limit=thread_limit, limiter=limiter).items():
        if kind in merged:
            raise ConfigError(
                f"kind {kind!r} is both in [handlers] and a task of the app: "
                "remove one of the two"
            )
        merged[kind] = handler
    return merged


def from_callables(funcs: Mapping[str, Callable[[Job], Any] | Callable[[Job], Awaitable[Any]]],
                   *, thread_limit: int = 40) -> dict[str, Handler]:
    """Handlers from Python callables directly (for running the daemon in-process)."""
    limiter = anyio.CapacityLimiter(max(thread_limit, 1))
    return {
        kind: FunctionHandler(kind, getattr(f, "__qualname__", repr(f)), f, limiter)
        for kind, f in funcs.items()
    }
