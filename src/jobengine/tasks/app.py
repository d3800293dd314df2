"""`jobengine.App`: where tasks are registered, deferred from, and waited on.

An App holds no connection until it needs one: importing a module that
makes one (a daemon's `--app`, the sealed sandbox) costs nothing. Its own
database is `dsn`, else the configuration as the CLI reads it (`config=`,
`JOBENGINE_CONFIG`, `JOBENGINE_DSN`), else the embedded PostgreSQL.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, overload

import anyio
import asyncpg

from jobengine.daemon.handlers import FunctionHandler, Handler
from jobengine.domain.models import Job
from jobengine.domain.status import SETTLED
from jobengine.store import JobStore, create_pool
from jobengine.store.pool import Database, connect
from jobengine.tasks import connections
from jobengine.tasks.task import Task, TaskOptions
from jobengine.tasks.waiting import Waiters

P = ParamSpec("P")
R = TypeVar("R")

#: How often `App.wait` reads the job where it cannot LISTEN (a pooler, no listen_dsn).
POLL_INTERVAL = 1.0


class App:
    """A set of tasks, and the database their jobs go to.

        app = jobengine.App()

        @app.task(queue="mail", max_retries=5)
        async def send_email(to: str, subject: str = "hi") -> None: ...

        job_id = await send_email.defer(to="a@b.example")
        job = await app.wait(job_id, timeout=30)
    """

    def __init__(self, dsn: str | None = None, *, config: str | Path | None = None,
                 actor: str = "app", pool_size: int = 4) -> None:
        self.tasks: dict[str, Task[Any, Any]] = {}
        self._db: Database | None = Database(dsn) if dsn is not None else None
        self._config = config
        self._actor = actor
        self._pool_size = pool_size
        self._embedded = False
        self._schema_ready = False
        self._pool: asyncpg.Pool | None = None
        self._pool_lock: anyio.Lock | None = None
        self._waiters: Waiters | None = None
        #: the event loop the pool and the LISTEN connection belong to
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- tasks ------------------------------------------------------------------

    @overload
    def task(self, func: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self, func: None = None, /, *, kind: str | None = None, queue: str = "default",
        priority: int = 0, max_retries: int = 3, retry_policy: dict[str, Any] | None = None,
        timeout: float | None = None, requires_network: bool = False,
        limit_key: str | None = None,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self, func: Callable[..., Any] | None = None, /, *, kind: str | None = None,
        queue: str = "default", priority: int = 0, max_retries: int = 3,
        retry_policy: dict[str, Any] | None = None, timeout: float | None = None,
        requires_network: bool = False, limit_key: str | None = None,
    ) -> Any:
        """Make a function a task: `@app.task` or `@app.task(queue=..., ...)`.

        `kind` defaults to "module.function" (a function in a script run as
        `__main__`: its name alone). The other arguments are the defaults of
        the task's jobs (see `Task.configure` for one call's). Raises
        `ValueError` naming a wrong option, and `TypeError` for a function
        that cannot take a payload (positional-only or `*args` parameters).
        """

        def register(f: Callable[..., Any]) -> Task[Any, Any]:
            name = kind or _default_kind(f)
            if name in self.tasks:
                raise ValueError(f"a task of kind {name!r} is already registered: "
                                 "give one of them another kind=")
            options = TaskOptions(
                kind=name, queue=queue, priority=priority, max_retries=max_retries,
                retry_policy=retry_policy, timeout=timeout,
                requires_network=requires_network, limit_key=limit_key,
            )
            task: Task[Any, Any] = Task(self, f, options)
            self.tasks[name] = task
            return task

        return register(func) if func is not None else register

    def handlers(self, *, thread_limit: int = 40,
                 limiter: anyio.CapacityLimiter | None = None) -> dict[str, Handler]:
        """The daemon's handlers for these tasks (`jobengine run --app`, `run_daemon(app=)`);
        plain functions' threads under `limiter` (else one of `thread_limit`)."""
        limiter = limiter or anyio.CapacityLimiter(max(thread_limit, 1))
        out: dict[str, Handler] = {}
        for kind, task in self.tasks.items():
            # By this reference sealed mode's sandbox imports the task again.
            ref = f"{task.func.__module__}:{task.func.__qualname__}.run_job"
            out[kind] = FunctionHandler(kind, ref, task.run_job, limiter, wants_results=True)
        return out

    # -- the database -------------------------------------------------------------

    @property
    def database(self) -> Database:
        """Where the app's connections go (resolved, and the embedded PostgreSQL
        started, on first use): the configuration's `dsn`, `pooler` and `listen_dsn`."""
        if self._db is None:
            from jobengine.cli.config import load_settings
            from jobengine.cli.context import resolve_database

            self._db, self._embedded = resolve_database(load_settings(self._config))
        return self._db

    @property
    def dsn(self) -> str:
        """The database's DSN (see `database`)."""
        return self.database.dsn

    async def use_database(self, dsn: str, *, pooler: str | None = None,
                           listen_dsn: str | None = None) -> None:
        """Use this database from now on (in tests: a scratch one); closes the old connections.

        `pooler="pgbouncer"` and `listen_dsn` as in the configuration.
        """
        await self.aclose()
        self._db, self._embedded = Database(dsn, listen_dsn=listen_dsn, pooler=pooler), False

    async def pool(self) -> asyncpg.Pool:
        """The app's own connection pool (made on first use, in this event loop).

        On the embedded PostgreSQL the first use also migrates it, as the CLI does.
        """
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # A pool belongs to the loop that made it: a new loop (a second
            # `asyncio.run`) gets a new one, and a lock of its own.
            self._pool, self._waiters, self._loop = None, None, loop
            self._pool_lock = anyio.Lock()
        assert self._pool_lock is not None
        async with self._pool_lock:  # many first calls at once: one pool
            if self._pool is None:
                if self._db is None:  # starting the embedded server blocks: not in the loop
                    await anyio.to_thread.run_sync(lambda: self.database)
                await self._ensure_schema()
                self._pool = await create_pool(self.database, self._actor, min_size=1,
                                               max_size=self._pool_size)
        return self._pool

    async def insert(self, job: connections.Insert, connection: Any = None) -> list[int]:
        """Insert jobs through `connection`, or the app's pool; their ids."""
        return await connections.insert(connection if connection is not None
                                        else await self.pool(), job)

    def insert_sync(self, job: connections.Insert, connection: Any = None) -> list[int]:
        """Insert jobs through a synchronous `connection`, or a connection of the app's own."""
        if connection is not None:
            return connections.insert_sync(connection, job)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._insert_once(job))
        raise RuntimeError("defer_sync without connection= cannot run inside an event loop: "
                           "use `await task.defer(...)` there, or give a synchronous connection")

    async def _ensure_schema(self) -> None:
        """On the embedded PostgreSQL, migrate it once (as the CLI does); else nothing."""
        if self._embedded and not self._schema_ready:
            from jobengine.cli.context import ensure_schema

            await ensure_schema(self.database, embedded=True, actor=self._actor)
            self._schema_ready = True

    async def _insert_once(self, job: connections.Insert) -> list[int]:
        db = self.database  # (resolved here, if not yet: this call's own event loop)
        await self._ensure_schema()
        conn = await connect(db, self._actor)
        try:
            return await connections.insert(conn, job)
        finally:
            await conn.close()

    async def get(self, job_id: int) -> Job:
        """The job as it is now (`JobNotFound` if there is none)."""
        return await JobStore(await self.pool()).get(job_id)

    # `timeout=` is the contract's (`app.wait(job_id, timeout=30)`), as asyncio's own
    # `wait_for` has it: simpler for an app than a cancel scope around the call.
    async def wait(self, job_id: int, timeout: float | None = None) -> Job:  # noqa: ASYNC109
        """The job once it is settled: completed, cancelled, or failed with no retry left.

        Woken by the job's notifications, never by polling (behind a
        transaction pooler without `listen_dsn`, where nothing can LISTEN, it
        reads the job every `POLL_INTERVAL` seconds). Raises `TimeoutError`
        naming the job and its status when `timeout` seconds pass first, and
        `JobNotFound` for an id that names no job.
        """
        store = JobStore(await self.pool())
        status = "unknown"
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            async with self._woken(job_id) as woken:
                while True:
                    job = await store.get(job_id)
                    if job.status in SETTLED:
                        return job
                    status = job.status.value
                    await woken()
        raise TimeoutError(f"job {job_id} did not settle within {timeout:g}s: it is {status}")

    @asynccontextmanager
    async def _woken(self, job_id: int) -> AsyncIterator[Callable[[], Awaitable[object]]]:
        """What `wait` waits on between reads of the job: its notifications, or a poll."""
        listen = self.database.listen
        if listen is None:
            yield lambda: anyio.sleep(POLL_INTERVAL)
            return
        if self._waiters is None:
            self._waiters = Waiters(lambda: connect(listen, f"{self._actor}-wait"))
        waiters = self._waiters
        async with waiters.watching(job_id) as signal:

            async def woken() -> None:
                await signal.wait()
                await waiters.ensure()  # (reopened if the connection was lost)

            yield woken

    async def aclose(self) -> None:
        """Close the app's connections (it opens new ones if used again)."""
        waiters, self._waiters = self._waiters, None
        pool, self._pool = self._pool, None
        if waiters is not None:
            await waiters.aclose()
        if pool is not None:
            await pool.close()

    async def __aenter__(self) -> App:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _default_kind(func: Callable[..., Any]) -> str:
    module = getattr(func, "__module__", None) or ""
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", "task")
    if module in ("", "__main__"):
        return str(qualname)
    return f"{module}.{qualname}"
