"""Tasks: Python functions that run as jobs, and how they are deferred.

`@app.task(...)` turns a function into a `Task`. Calling the task calls the
function; `defer` (and `defer_sync`, `defer_many`) creates a job whose
payload is the call's keyword arguments, checked against the function's
signature first (see `tasks.arguments`). `configure(...)` sets one call's
job fields (run_at, depends_on, idempotency_key, ...) and connection.

Typing: a task is `Task[P, R]` for a function `Callable[P, R]`, so
`mypy --strict` checks `defer`'s arguments against the function's
parameters. `defer(..., connection=conn)` also works, but a checker knows
nothing of `connection` there: `configure(connection=conn).defer(...)` is
the same call, checked.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

import msgspec

from jobengine.domain.errors import InvalidJob
from jobengine.domain.models import Job
from jobengine.domain.retry import parse_retry_policy
from jobengine.tasks import connections, running
from jobengine.tasks.arguments import Arguments

if TYPE_CHECKING:
    from jobengine.tasks.app import App

P = ParamSpec("P")
R = TypeVar("R")

#: As the database's check on `kind` and `queue`.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")

_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """The job fields a task's jobs get (`@app.task(...)`, then `configure(...)`)."""

    kind: str
    queue: str = "default"
    priority: int = 0
    max_retries: int = 3
    #: a retry policy object (`{"strategy": "fixed", "base_delay": 5}`), or None for `[retry]`
    retry_policy: Mapping[str, Any] | None = None
    #: seconds, or None for no timeout
    timeout: float | None = None
    requires_network: bool = False
    limit_key: str | None = None
    run_at: datetime | None = None
    depends_on: tuple[int, ...] = ()
    idempotency_key: str | None = None

    def checked(self) -> TaskOptions:
        """These options, or `ValueError` naming the one that is wrong."""
        for name in ("kind", "queue"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _NAME.match(value):
                raise ValueError(f"{name} {value!r} must be 1-100 letters, digits or _ . : - "
                                 "and start with a letter or digit")
        for name in ("priority", "max_retries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, not {value!r}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, not {self.max_retries}")
        if self.timeout is not None and not (
                isinstance(self.timeout, (int, float)) and math.isfinite(self.timeout)
                and self.timeout > 0):
            raise ValueError(f"timeout must be a number of seconds above 0, not {self.timeout!r}")
        try:
            parse_retry_policy(dict(self.retry_policy) if isinstance(self.retry_policy, Mapping)
                               else self.retry_policy)
        except InvalidJob as exc:
            raise ValueError(str(exc)) from None
        if self.run_at is not None and (not isinstance(self.run_at, datetime)
                                        or self.run_at.utcoffset() is None):
            raise ValueError(f"run_at must be a timezone-aware datetime, not {self.run_at!r}")
        if any(isinstance(d, bool) or not isinstance(d, int) for d in self.depends_on):
            raise ValueError(
                f"depends_on must be job ids (integers), not {list(self.depends_on)!r}")
        for name in ("idempotency_key", "limit_key"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a non-empty string or None, not {value!r}")
        return self

    def with_changes(self, changes: Mapping[str, Any]) -> TaskOptions:
        """These options with some replaced (`timeout` as seconds or a timedelta)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
        changes = dict(changes)
        if isinstance(changes.get("timeout"), timedelta):
            changes["timeout"] = changes["timeout"].total_seconds()
        if "depends_on" in changes:
            changes["depends_on"] = tuple(changes["depends_on"] or ())
        return dataclasses.replace(self, **changes).checked()

    def insert(self, payloads: bytes) -> connections.Insert:
        """The insert statement's parameters for these options and payloads."""
        policy = self.retry_policy
        return connections.Insert(
            kind=self.kind, queue=self.queue, payloads=payloads, priority=self.priority,
            run_at=self.run_at, depends_on=self.depends_on, max_retries=self.max_retries,
            retry_policy=None if policy is None else msgspec.json.encode(policy).decode(),
            timeout=self.timeout, requires_network=self.requires_network,
            idempotency_key=self.idempotency_key, limit_key=self.limit_key,
        )


@dataclass(frozen=True)
class Configured(Generic[P, R]):
    """A task with one call's options (`task.configure(...)`): defer it as the task."""

    task: Task[P, R]
    options: TaskOptions
    connection: Any = field(default=None)

    async def defer(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """Create the job (in `connection`'s transaction, if one was given); its id."""
        connection = kwargs.pop("connection", self.connection)
        payload = self.task.arguments.bind(args, kwargs)
        ids = await self.task.app.insert(self.options.insert(self.task.arguments.encode([payload])),
                                         connection)
        return ids[0]

    def defer_sync(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """As `defer`, from synchronous code (a psycopg or SQLAlchemy connection, or none)."""
        connection = kwargs.pop("connection", self.connection)
        payload = self.task.arguments.bind(args, kwargs)
        ids = self.task.app.insert_sync(
            self.options.insert(self.task.arguments.encode([payload])), connection)
        return ids[0]

    async def defer_many(self, items: Iterable[Mapping[str, Any]], *,
                         connection: Any = _UNSET) -> list[int]:
        """Create one job per item (each the keyword arguments of one call) in one
        statement; their ids, in order."""
        insert = self._many(items)
        if insert is None:
            return []
        return await self.task.app.insert(insert, self._connection(connection))

    def defer_many_sync(self, items: Iterable[Mapping[str, Any]], *,
                        connection: Any = _UNSET) -> list[int]:
        """As `defer_many`, from synchronous code."""
        insert = self._many(items)
        if insert is None:
            return []
        return self.task.app.insert_sync(insert, self._connection(connection))

    def _connection(self, given: Any) -> Any:
        return self.connection if given is _UNSET else given

    def _many(self, items: Iterable[Mapping[str, Any]]) -> connections.Insert | None:
        """The one statement for these items (None for none)."""
        payloads = self._payloads(items)
        return self.options.insert(self.task.arguments.encode(payloads)) if payloads else None

    def configure(self, **options: Any) -> Configured[P, R]:
        """These options with more changed (see `Task.configure`)."""
        connection = options.pop("connection", self.connection)
        return Configured(self.task, self.options.with_changes(options), connection)

    def _payloads(self, items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        payloads = []
        check = self.task.arguments.check
        for i, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise TypeError(f"{self.task.kind}: item {i} must be a mapping of "
                                f"arguments, not {type(item).__name__}")
            payload = dict(item)
            try:
                check(payload)
            except TypeError as exc:
                raise TypeError(f"item {i}: {exc}") from None
            payloads.append(payload)
        if self.options.idempotency_key is not None and len(payloads) > 1:
            raise ValueError(f"{self.task.kind}: one idempotency_key cannot name "
                             f"{len(payloads)} jobs: defer them one by one")
        return payloads


class Task(Generic[P, R]):
    """A function that runs as jobs of its kind (made by `@app.task`).

    Calling it calls the function. `defer(**kwargs)` creates a job instead.
    """

    def __init__(self, app: App, func: Any, options: TaskOptions) -> None:
        self.app = app
        self.func = func
        self.options = options.checked()
        self.kind = options.kind
        self.arguments = Arguments(func, options.kind)
        functools.update_wrapper(self, func)
        #: the daemon's handler: runs one attempt of a job of this kind
        self.run_job = self._run_async if inspect.iscoroutinefunction(func) else self._run_sync

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function itself (no job)."""
        return self.func(*args, **kwargs)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<Task {self.kind}>"

    def configure(self, **options: Any) -> Configured[P, R]:
        """One call's options: `run_at`, `depends_on`, `idempotency_key`, `priority`,
        `queue`, `max_retries`, `retry_policy`, `timeout`, `requires_network`,
        `limit_key`, and `connection`; `ValueError` naming a wrong one."""
        connection = options.pop("connection", None)
        return Configured(self, self.options.with_changes(options), connection)

    async def defer(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """Create a job with these arguments as its payload; its id.

        `connection=` (an asyncpg, psycopg or SQLAlchemy async connection):
        inserted in that connection's current transaction. Wrong arguments
        raise `TypeError` naming the argument, and nothing is written.
        """
        return await Configured(self, self.options).defer(*args, **kwargs)

    def defer_sync(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """As `defer`, from synchronous code (`connection=`: psycopg 3 or SQLAlchemy)."""
        return Configured(self, self.options).defer_sync(*args, **kwargs)

    async def defer_many(self, items: Iterable[Mapping[str, Any]], *,
                         connection: Any = None) -> list[int]:
        """One job per item, all in one statement; their ids in order."""
        return await Configured(self, self.options).defer_many(items, connection=connection)

    def defer_many_sync(self, items: Iterable[Mapping[str, Any]], *,
                        connection: Any = None) -> list[int]:
        """As `defer_many`, from synchronous code."""
        return Configured(self, self.options).defer_many_sync(items, connection=connection)

    # -- running (the daemon calls these through its handler) -----------------------

    async def _run_async(self, job: Job) -> Any:
        kwargs = self.arguments.load(job.payload)
        token = running.enter(job)
        try:
            result = await self.func(**kwargs)
        finally:
            running.leave(token)
        return _stored(self.kind, result)

    def _run_sync(self, job: Job) -> Any:
        kwargs = self.arguments.load(job.payload)
        token = running.enter(job)
        try:
            result = self.func(**kwargs)
        finally:
            running.leave(token)
        if inspect.isawaitable(result):  # returned a coroutine: the caller awaits it
            return _awaited(self.kind, result)
        return _stored(self.kind, result)


async def _awaited(kind: str, result: Any) -> Any:
    return _stored(kind, await result)


def _stored(kind: str, result: Any) -> Any:
    """The result as JSON values (structs, dataclasses, datetimes, enums converted)."""
    try:
        return msgspec.to_builtins(result)
    except TypeError as exc:
        raise TypeError(f"task {kind}: its result cannot be stored as JSON: {exc}") from None
