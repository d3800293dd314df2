"""`jobengine watch`: follow `jobengine_events` live, one coloured line per transition.

It LISTENs on the channel every status change is announced on and prints
each notification at once; it reconnects with backoff when the connection
drops (saying so on stderr, and finding the new primary after a failover),
and exits 0 on SIGINT or SIGTERM. Behind it, a reader follows the timeline's
gap-free cursor (as `GET /v1/events` does) after every reconnect and every
second, and prints whatever no notification brought: events sent while it
was away, or everything when a transaction pooler leaves no LISTEN.
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
    resolve_database,
    settings_from_args,
)
from jobengine.cli.output import console, event_line
from jobengine.domain.models import EventEnvelope, decode_envelope
from jobengine.notifications import EVENTS_CHANNEL, Listener, Signal, listen_source
from jobengine.store import TRANSIENT, JobStore, create_pool
from jobengine.store.pool import Database

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
        self.show(env)

    def show(self, env: EventEnvelope) -> None:
        """Print one envelope (or skip it)."""
        if not self.wanted(env):
            return
        if self.as_json:
            sys.stdout.write(msgspec.json.encode(env).decode() + "\n")
            sys.stdout.flush()
        else:
            self.console.print(event_line(env))
            self.console.file.flush()


class Follower:
    """Prints every transition once: notifications at once, the timeline's cursor behind them."""

    #: how many printed event ids are remembered (a notification and the cursor
    #: bring the same event a few milliseconds to a second apart)
    REMEMBER = 50_000

    def __init__(self, printer: Printer) -> None:
        self.printer = printer
        self._seen: dict[str, None] = {}  # insertion-ordered: the oldest go first
        self.wake = Signal()

    def skip(self, event_ids: list[str]) -> None:
        """Never print these (they had committed before watch started)."""
        for event_id in event_ids:
            self._first_time(event_id)

    def _first_time(self, event_id: str) -> bool:
        if event_id in self._seen:
            return False
        self._seen[event_id] = None
        if len(self._seen) > self.REMEMBER:
            del self._seen[next(iter(self._seen))]
        return True

    def on_payload(self, payload: str) -> None:
        """A notification: print it now (unless the cursor already did)."""
        try:
            env = decode_envelope(payload)
        except msgspec.DecodeError:
            self.printer.on_payload(payload)
            return
        if self._first_time(env.event_id):
            self.printer.show(env)

    async def catch_up(self, store: JobStore, cursor: tuple[int, int]) -> tuple[int, int]:
        """Print what the cursor finds that no notification brought; the new cursor."""
        while True:
            page = await store.events_after(cursor, 500)
            for row in page.events:
                env = decode_envelope(msgspec.json.encode(row["envelope"]))
                if self._first_time(env.event_id):
                    self.printer.show(env)
            cursor = page.cursor
            if len(page.events) < 500:
                return cursor


async def follow(db: Database, printer: Printer, *, poll_interval: float = 1.0) -> None:
    """LISTEN and print until cancelled; reconnect with backoff when the connection drops."""
    follower = Follower(printer)

    def report(event: str, **_fields: object) -> None:
        # One line on stderr, never on stdout (where --json output goes).
        if event == "listener.connected":
            print("watching job transitions (Ctrl-C to stop)", file=sys.stderr, flush=True)
        elif event == "listener.lost":
            print("jobengine: warning: lost the database connection; reconnecting",
                  file=sys.stderr, flush=True)

    def on_up(first: bool) -> None:
        if not first:
            follower.wake.set()  # read what was sent while away

    pool = await create_pool(db, "cli", min_size=1, max_size=2)
    try:
        store = JobStore(pool)
        cursor, committed = await store.events_head()
        follower.skip(committed)
        source = listen_source(db, "cli")
        async with anyio.create_task_group() as tg:
            if source is None:
                print("watching job transitions (Ctrl-C to stop; polling: no LISTEN through "
                      "the pooler without listen_dsn)", file=sys.stderr, flush=True)
            else:
                listener = Listener(source, {EVENTS_CHANNEL: follower.on_payload},
                                    name="watch", report=report, backoff_max=_MAX_BACKOFF,
                                    probe_interval=10.0, on_up=on_up)
                await tg.start(listener.run)
            while True:
                await follower.wake.wait(poll_interval)
                try:
                    cursor = await follower.catch_up(store, cursor)
                except TRANSIENT:
                    continue  # the database is away: the next round reads it all
    finally:
        with anyio.CancelScope(shield=True):
            await pool.close()


def run(args: argparse.Namespace) -> int:
    """Follow transitions until SIGINT/SIGTERM; exit 0 then."""
    settings = settings_from_args(args)
    db, embedded = resolve_database(settings)
    printer = Printer(args.kind, args.queue, args.json)

    async def go() -> int:
        await ensure_schema(db, embedded=embedded, actor="cli")
        async with anyio.create_task_group() as tg:

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(stop_on_signal)
            await follow(db, printer)
        return 0

    return anyio.run(go)
