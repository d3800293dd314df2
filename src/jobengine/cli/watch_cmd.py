"""`jobengine watch`: follow `jobengine_events` live, one coloured line per transition.

It LISTENs on the channel every status change is announced on, reconnects
with backoff when the connection drops (saying so on stderr), and exits 0 on
SIGINT or SIGTERM. Notifications sent while it was reconnecting are not
replayed: for a gap-free feed use the API's `GET /v1/events` stream.
"""

from __future__ import annotations

import argparse
import signal
import sys

import anyio
import msgspec

from jobengine.cli.context import (
    add_common_options,
    ensure_schema,
    resolve_dsn,
    settings_from_args,
)
from jobengine.cli.output import console, event_line
from jobengine.domain.models import EventEnvelope, decode_envelope
from jobengine.notifications import EVENTS_CHANNEL, Listener
from jobengine.store import connection

_MAX_BACKOFF = 5.0

EXAMPLE = """\
examples:
  jobengine watch
  jobengine watch --kind email --kind report --queue default
  jobengine watch --json | jq -c 'select(.to_status == "failed")'
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `watch` command."""
    p = sub.add_parser(
        "watch", help="follow job transitions live",
        description="Print one line per transition as it commits (LISTEN jobengine_events), "
                    "until Ctrl-C or SIGTERM.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_options(p)
    p.add_argument("--kind", action="append", default=[], help="only these kinds (repeatable)")
    p.add_argument("--queue", action="append", default=[], help="only these queues (repeatable)")
    p.add_argument("--json", action="store_true", help="print each EventEnvelope as a JSON line")
    p.set_defaults(func=run)


class Printer:
    """Prints the envelopes that pass the filters."""

    def __init__(self, kinds: list[str], queues: list[str], as_json: bool) -> None:
        self.kinds = set(kinds)
        self.queues = set(queues)
        self.as_json = as_json
        self.console = console()

    def wanted(self, env: EventEnvelope) -> bool:
        """True if the envelope passes the --kind and --queue filters."""
        return (not self.kinds or env.kind in self.kinds) and (
            not self.queues or env.queue in self.queues
        )

    def on_payload(self, payload: str) -> None:
        """One notification's payload: print one line (or skip it)."""
        try:
            env = decode_envelope(payload)
        except msgspec.DecodeError:
            print(f"jobengine: warning: unreadable event: {payload[:200]}", file=sys.stderr)
            return
        if not self.wanted(env):
            return
        if self.as_json:
            sys.stdout.write(msgspec.json.encode(env).decode() + "\n")
            sys.stdout.flush()
        else:
            self.console.print(event_line(env))
            self.console.file.flush()


async def follow(dsn: str, printer: Printer) -> None:
    """LISTEN and print until cancelled; reconnect with backoff when the connection drops."""

    def report(event: str, **_fields: object) -> None:
        # One line on stderr, never on stdout (where --json output goes).
        if event == "listener.connected":
            print("watching job transitions (Ctrl-C to stop)", file=sys.stderr, flush=True)
        elif event == "listener.lost":
            print("jobengine: warning: lost the database connection; reconnecting",
                  file=sys.stderr, flush=True)

    listener = Listener(lambda: connection(dsn, "cli"), {EVENTS_CHANNEL: printer.on_payload},
                        name="watch", report=report, backoff_max=_MAX_BACKOFF,
                        probe_interval=10.0)
    await listener.run()


def run(args: argparse.Namespace) -> int:
    """Follow transitions until SIGINT/SIGTERM; exit 0 then."""
    settings = settings_from_args(args)
    dsn, embedded = resolve_dsn(settings)
    printer = Printer(args.kind, args.queue, args.json)

    async def go() -> int:
        await ensure_schema(dsn, embedded=embedded, actor="cli")
        async with anyio.create_task_group() as tg:

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(stop_on_signal)
            await follow(dsn, printer)
        return 0

    return anyio.run(go)
