"""`create_app`: the REST API (and the dashboard at `/ui/`) as one Starlette application.

The daemon (`jobengine run --http`) and `jobengine api` both build the app
here and serve it with `jobengine.api.server.serve`. The app owns one LISTEN
connection from the pool while it runs (for event streams), started and
stopped by its lifespan.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import asyncpg
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from jobengine.api import events, jobs, ops, scheduling
from jobengine.api.auth import AuthMiddleware, Authorizer, allow_all
from jobengine.api.config import HttpSettings
from jobengine.api.errors import exception_handlers
from jobengine.api.hub import EventHub
from jobengine.api.inputs import ApiContext, ReadinessCheck
from jobengine.api.openapi import openapi_json
from jobengine.api.ui import routes as ui
from jobengine.store import JobStore
from jobengine.store.pool import Database


def create_app(
    pool: asyncpg.Pool,
    http: HttpSettings,
    *,
    readiness: ReadinessCheck | None = None,
    authorizer: Authorizer = allow_all,
    poll_interval: float = 1.0,
    keepalive: float = 15.0,
    database: Database | None = None,
) -> Starlette:
    """Build the REST API on `pool` (connections should carry actor "api").

    - `readiness`: extra checks for `/readyz`, e.g. the daemon's
      `lambda: {"listener": ...}`; all must be true for a 200.
    - `authorizer`: decides, per request, whether it may have the scope its
      route requires (see `jobengine.api.auth`); default: allow everything.
    - `poll_interval`: seconds an event stream waits for a notification
      before it reads anyway; `keepalive`: seconds between keepalive
      comments on an idle stream.
    - `database`: where the pool's connections go; behind a transaction
      pooler the LISTEN connection is its `listen_dsn`'s, and without one
      there is no LISTEN: event streams read every `poll_interval`.

    The app holds one connection for LISTEN while its lifespan runs.
    """
    hub = EventHub(pool, database=database)
    ctx = ApiContext(
        store=JobStore(pool), http=http, hub=hub, readiness=readiness,
        poll_interval=poll_interval, keepalive=keepalive,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            await tg.start(ctx.hub.run)
            try:
                yield
            finally:
                ctx.closing.set()
                tg.cancel_scope.cancel()

    routes: list[BaseRoute] = [*jobs.ROUTES, *scheduling.ROUTES, *events.ROUTES, *ops.ROUTES,
                               *ui.ROUTES]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(AuthMiddleware, routes=routes, authorizer=authorizer,
                               on_denied=ui.on_denied)],
        exception_handlers=exception_handlers(),
        lifespan=lifespan,
    )
    app.state.jobengine = ctx
    app.state.authorizer = authorizer  # (the dashboard's sign-in checks a token with it)
    app.state.openapi = openapi_json()
    return app


def begin_shutdown(app: ASGIApp) -> None:
    """Tell the app's event streams to end (the server is stopping); no-op for other apps."""
    state = getattr(app, "state", None)
    ctx = getattr(state, "jobengine", None)
    if isinstance(ctx, ApiContext):
        ctx.closing.set()
