"""`jobengine migrate`: create or upgrade the schema."""

from __future__ import annotations

import argparse

import anyio
import asyncpg

from jobengine.cli.context import (
    add_common_options,
    resolve_database,
    settings_from_args,
    unavailable,
)
from jobengine.domain.errors import ConfigError
from jobengine.store import current_version, migrate
from jobengine.store.migrate import apply_roles
from jobengine.store.pool import connect

EXAMPLE = """\
examples:
  jobengine migrate --dsn postgresql://postgres@localhost/app
  jobengine migrate --roles     # and the roles jobengine_daemon / jobengine_app
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `migrate` command."""
    p = sub.add_parser(
        "migrate", help="create or upgrade the database schema",
        description="Apply pending migrations under an advisory lock; a no-op when up to date.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_options(p)
    p.add_argument(
        "--roles", action="store_true",
        help="also create/grant the least-privilege roles jobengine_daemon and jobengine_app",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Apply pending migrations and print what was applied."""
    settings = settings_from_args(args)
    db, _embedded = resolve_database(settings)
    if db.pooled and not db.listen_dsn:
        # Migrations hold a session lock across transactions: a transaction
        # pooler would lend that session's server connection to others.
        raise ConfigError("jobengine migrate needs a direct connection: behind a transaction "
                          "pooler set listen_dsn (or run it with --dsn pointing past the pooler)")
    target = db.direct

    async def go() -> int:
        try:
            conn = await connect(target, "cli")
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise unavailable(target.dsn, exc) from exc
        try:
            applied = await migrate(conn)
            version = await current_version(conn)
            if args.roles:
                await apply_roles(conn)
        finally:
            await conn.close()
        for migration in applied:
            print(f"applied {migration}")
        if not applied:
            print(f"schema is up to date (version {version})")
        if args.roles:
            print("roles jobengine_daemon and jobengine_app are in place")
        return 0

    return anyio.run(go)
