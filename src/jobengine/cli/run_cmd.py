"""`jobengine run`: the daemon, until SIGTERM/SIGINT (then it drains)."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from typing import Any, cast

import anyio
import structlog

from jobengine.api.config import parse_listen
from jobengine.cli import loop
from jobengine.cli.context import (
    add_common_options,
    ensure_schema,
    redact,
    resolve_database,
    settings_from_args,
)
from jobengine.cli.logs import configure_logging
from jobengine.daemon import Daemon, HandlerSource, Notifier
from jobengine.domain.errors import ConfigError
from jobengine.store.pool import Database

EXAMPLE = """\
examples:
  jobengine run --dsn postgresql://jobs@db/app --config /etc/jobengine/jobengine.toml
  JOBENGINE_HANDLERS_EMAIL=myapp.jobs:send_email jobengine run --http 127.0.0.1:8080
  jobengine run --app myapp.tasks:app      # a jobengine.App's tasks, beside [handlers]

With no DSN anywhere (flag, JOBENGINE_DSN, config), jobengine starts and uses
its embedded PostgreSQL. SIGTERM/SIGINT drain: stop claiming, let running
jobs finish within daemon.shutdown_grace, give the rest back; a second
signal skips the grace period.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `run` command."""
    p = sub.add_parser(
        "run", help="run the daemon (schedule, claim and run jobs)",
        description="Run the jobengine daemon until SIGTERM/SIGINT.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_options(p)
    p.add_argument("--http", metavar="HOST:PORT", help="also serve the REST API here")
    p.add_argument("--sealed", action="store_true", default=None,
                   help="sealed (air-gapped) mode: no network egress but the database")
    p.add_argument("--app", metavar="MODULE:ATTR",
                   help="run the tasks of this jobengine.App (imported from the current "
                        "directory or sys.path) beside [handlers] (or: app = ... in the "
                        "config, JOBENGINE_APP)")
    p.add_argument("--queues", help="comma-separated queues to take (default: from config)")
    p.add_argument("--concurrency", type=int, help="jobs running at once")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the daemon in the foreground; returns 0 after a graceful stop."""
    overrides: dict[str, Any] = {"sealed": args.sealed}
    daemon_over: dict[str, Any] = {}
    if args.queues:
        daemon_over["queues"] = [q.strip() for q in args.queues.split(",") if q.strip()]
    if args.concurrency is not None:
        daemon_over["concurrency"] = args.concurrency
    if daemon_over:
        overrides["daemon"] = daemon_over
    if args.http:
        overrides["http"] = {"listen": args.http}
    settings = settings_from_args(args, **overrides)
    configure_logging(args.log_level)
    log = structlog.get_logger("jobengine.run")
    ref = args.app or settings.app
    app = load_app(ref) if ref else None
    if not settings.handlers and not (app is not None and app.handlers()):
        raise ConfigError(
            "no handlers configured: add a [handlers] section (kind = \"pkg.module:function\") "
            "or JOBENGINE_HANDLERS_<KIND>, or give --app with tasks; a daemon claims only "
            "kinds it has handlers for"
        )
    listen = parse_listen(settings.http.listen) if settings.http.listen else None
    if listen is not None:
        from jobengine.api.tokens import authorizer_for

        # Refuses a non-loopback address without tokens, before anything starts.
        authorizer_for(settings.http.tokens, listen[0])
        if not settings.http.tokens:
            log.warning("api.no_tokens", note="serving without authentication, on loopback only",
                        listen=settings.http.listen)
    db, embedded = resolve_database(settings)
    daemon = Daemon(settings.daemon_config(), db, app=app, notifier=Notifier(),
                    api_address=listen)

    async def main() -> int:
        await ensure_schema(db, embedded=embedded, actor=daemon.id)
        log.info("daemon.starting", daemon_id=daemon.id, database=redact(db.dsn),
                 embedded=embedded, pooler=db.pooler,
                 listen=redact(db.listen.dsn) if db.listen else None)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch_signals, daemon)
            if listen is not None:
                await tg.start(_serve_api, settings, db, listen, daemon)
            await daemon.run()
            tg.cancel_scope.cancel()
        return 0

    return loop.run(main)


def load_app(ref: str) -> HandlerSource:
    """Import `--app module:attr` (the current directory first, as uvicorn does)."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--app {ref!r} must look like 'package.module:app'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--app {ref!r}: cannot import {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(f"--app {ref!r}: {module_name} has no {attr!r}") from None
    if not callable(getattr(target, "handlers", None)):
        raise ConfigError(f"--app {ref!r} is a {type(target).__name__}, not a jobengine.App")
    return cast(HandlerSource, target)


async def _watch_signals(daemon: Daemon) -> None:
    log = structlog.get_logger("jobengine.run")
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        count = 0
        async for signum in signals:
            count += 1
            name = signal.Signals(signum).name
            if count == 1:
                log.info("daemon.stop_requested", signal=name, then="draining")
                daemon.request_stop()
            else:
                log.info("daemon.stop_requested", signal=name, then="stopping now")
                daemon.request_stop(immediate=True)


async def _serve_api(
    settings: Any, db: Database, listen: tuple[str, int], daemon: Daemon,
    *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    from jobengine.api.app import create_app
    from jobengine.api.server import serve
    from jobengine.api.tokens import authorizer_for
    from jobengine.store import create_pool

    pool = await create_pool(db, "api", min_size=1, max_size=4)
    try:

        async def readiness() -> dict[str, bool]:
            return daemon.readiness()

        app = create_app(pool, settings.http, readiness=readiness,
                         authorizer=authorizer_for(settings.http.tokens, listen[0]),
                         database=db)
        await serve(app, listen[0], listen[1], task_status=task_status)
    finally:
        with anyio.CancelScope(shield=True):
            await pool.close()

