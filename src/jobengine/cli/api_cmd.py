"""`jobengine api`: serve the REST API alone (no daemon), until SIGINT or SIGTERM.

The same app `jobengine run --http` serves; with no `--listen`, `[http]
listen` from the settings, else 127.0.0.1:8080.
"""

from __future__ import annotations

import argparse
import signal

import anyio
import structlog

from jobengine.api.config import DEFAULT_LISTEN, parse_listen
from jobengine.cli import loop
from jobengine.cli.context import add_common_options, open_store, settings_from_args
from jobengine.cli.logs import configure_logging

EXAMPLE = """\
examples:
  jobengine api --listen 127.0.0.1:8080 --dsn postgresql://postgres@localhost/app
  curl -s localhost:8080/v1/jobs -H 'Content-Type: application/json' -d '{"kind": "email"}'
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `api` command."""
    p = sub.add_parser(
        "api", help="serve the REST API (without running jobs)",
        description="Serve the REST API with uvicorn until SIGINT/SIGTERM. Jobs are only run "
                    "by `jobengine run`.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_options(p)
    p.add_argument("--listen", metavar="HOST:PORT",
                   help=f"address to listen on (default: [http] listen, else {DEFAULT_LISTEN})")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until a signal arrives; exit 0 after a clean stop."""
    # The web stack is imported here, so that other commands start fast.
    from jobengine.api.app import create_app
    from jobengine.api.server import serve
    from jobengine.api.tokens import authorizer_for

    settings = settings_from_args(args)
    host, port = parse_listen(args.listen or settings.http.listen or DEFAULT_LISTEN)
    configure_logging(args.log_level)
    log = structlog.get_logger("jobengine.api")
    authorizer = authorizer_for(settings.http.tokens, host)
    if not settings.http.tokens:
        log.warning("api.no_tokens",
                    message="no [http.tokens] configured: serving without authentication, "
                            "on loopback only")

    async def go() -> int:
        # Signals are ours from before the server starts, so none is lost in between.
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with open_store(settings, "api", max_size=10) as store:
                database = settings.database(settings.dsn) if settings.dsn else None
                app = create_app(store.db, settings.http, authorizer=authorizer,
                                 database=database)
                async with anyio.create_task_group() as tg:
                    bound_host, bound_port = await tg.start(serve, app, host, port)
                    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
                    log.info("api.listening", url=f"http://{shown}:{bound_port}",
                             port=bound_port)
                    async for signum in signals:
                        log.info("api.stopping", signal=signal.Signals(signum).name)
                        tg.cancel_scope.cancel()
                        break
        return 0

    return loop.run(go)
