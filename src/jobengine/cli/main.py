"""The `jobengine` command: the composition root that reads config and wires the rest."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import asyncpg

from jobengine import __version__
from jobengine.cli import (
    api_cmd,
    demo_cmd,
    jobs_cmd,
    ledger_cmd,
    migrate_cmd,
    run_cmd,
    scheduling_cmd,
    token_cmd,
    watch_cmd,
)
from jobengine.cli.context import fail
from jobengine.domain.errors import JobEngineError

#: The command modules, each with register(subparsers); order = order in --help.
COMMANDS = [
    migrate_cmd, run_cmd, api_cmd, jobs_cmd, scheduling_cmd, watch_cmd, ledger_cmd, demo_cmd,
    token_cmd,
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command registered."""
    parser = argparse.ArgumentParser(
        prog="jobengine",
        description="A Postgres-backed job lifecycle engine.",
    )
    parser.add_argument("--version", action="version", version=f"jobengine {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except BaseExceptionGroup as group:
        # A task group wraps what one task raised (e.g. the daemon refusing to
        # start sealed): the same one clear line as when it is raised directly.
        error = _sole_error(group)
        if isinstance(error, JobEngineError):
            return fail(str(error))
        if isinstance(error, asyncpg.PostgresError):
            return fail(f"database error: {error}")
        raise
    except JobEngineError as exc:
        return fail(str(exc))
    except asyncpg.PostgresError as exc:
        return fail(f"database error: {exc}")
    except KeyboardInterrupt:
        return 130
    return code


def _sole_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside (nested) groups of one, else None."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        if len(error.exceptions) != 1:
            return None
        error = error.exceptions[0]
    return error


if __name__ == "__main__":
    sys.exit(main())
