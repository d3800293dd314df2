"""The protocol every system's bench script speaks (standard library only).

Each system under test has one script in this folder, run by the Python that
has that system installed (the project's venv for jobengine, `bench/.venv-peers`
for the peers). A script implements `Peer` and calls `main(peer)`; the
harness drives it with one subcommand per step:

- `install --dsn D`: install the system's schema;
- `enqueue-bulk --dsn D --n N`: enqueue N no-op jobs through the system's
  fastest documented bulk path; prints `{"seconds": s, "cpu": {...}}`
  (building the payloads to the commit);
- `enqueue-single --dsn D --n N`: N single enqueues, each its own transaction;
  prints `{"seconds": s, "cpu": {...}}`;
- `enqueue-many --dsn D --connections K --seconds S`: K connections (opened
  first, untimed), each enqueuing single jobs, each in its own transaction,
  back to back for S seconds; prints `{"inserted": n, "seconds": s, "cpu": {...}}`
  (s: from the start until the last lane's last commit);
- `enqueue-paced --dsn D --n N --rate R --connections K --out F`: N single
  enqueues at R per second over K connections; writes `[[key, t], ...]` to F,
  t being `time.time()` right after that enqueue committed;
- `worker --dsn D --concurrency C --handler noop|sleep --record F`: set up,
  print `ready`, wait for `go` on stdin, work until `stop` on stdin (or EOF),
  stop gracefully, write `[[key, t], ...]` to F (t: the handler's first
  statement's `time.time()`), print `done`.

Every job's payload is `{"i": key}`. `"cpu"` is `{"process": s, "database": s}`:
the CPU seconds of this process and of every PostgreSQL process over the
timed interval (`_cpu.py`; `database` is null when the server is not visible).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import _cpu

#: (key, time.time() at the handler's first statement), appended by handlers.
RECORDS: list[tuple[Any, float]] = []

#: the kind / entrypoint / task name of every job
KIND = "noop"
#: worker handlers: record the call and return, or record it and sleep until interrupted
NOOP = "noop"
SLEEP = "sleep"


@dataclass(frozen=True)
class WorkerOptions:
    """What the harness asks of a worker process."""

    dsn: str
    concurrency: int
    handler: str
    lease_ttl: float


class Clock:
    """The timed part of a step: wall seconds, and CPU of this process and of the server.

    A peer wraps exactly what is timed in `with clock:`.
    """

    def __init__(self, dsn: str) -> None:
        self.seconds = 0.0
        self.meter = _cpu.Meter(None, _cpu.postmaster_from_env(), _cpu.database_from_dsn(dsn))
        self._started = 0.0

    def __enter__(self) -> Clock:
        self.meter.start()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._started
        self.meter.stop()

    def as_json(self) -> dict[str, Any]:
        """`{"seconds": s, "cpu": {"process": s, "database": s or None, ...}}`."""
        return {"seconds": self.seconds, "cpu": self.meter.as_json()}


class Inserter(Protocol):
    """One connection's single-job enqueue path."""

    async def insert(self, key: int) -> None:
        """Enqueue one job with payload {"i": key}; return once committed."""

    async def close(self) -> None:
        """Release the connection."""


class Peer(Protocol):
    """What one system's script provides."""

    async def install(self, dsn: str) -> None:
        """Install the system's schema into an empty database."""

    async def enqueue_bulk(self, dsn: str, n: int, clock: Clock) -> None:
        """Enqueue n no-op jobs in one go, `with clock:` from building the payloads to commit."""

    async def open_inserter(self, dsn: str) -> Inserter:
        """A connection ready to enqueue single jobs."""

    async def work(self, options: WorkerOptions, ready: Callable[[], Awaitable[None]],
                   stop: asyncio.Event) -> None:
        """Run a worker until `stop` is set, then stop it gracefully.

        Await `ready()` once everything before the work loop is set up: it says
        "ready" and returns on "go", when the harness starts its clock.
        """


def say(word: str) -> None:
    """One protocol line on stdout."""
    sys.stdout.write(word + "\n")
    sys.stdout.flush()


def _write_json(path: str, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


async def _single(peer: Peer, dsn: str, n: int) -> Clock:
    inserter = await peer.open_inserter(dsn)
    clock = Clock(dsn)
    try:
        with clock:
            for i in range(n):
                await inserter.insert(i)
        return clock
    finally:
        await inserter.close()


async def _many(peer: Peer, dsn: str, connections: int, seconds: float) -> tuple[int, Clock]:
    """K connections enqueuing single jobs back to back for `seconds`: (inserted, clock).

    Lane k enqueues keys k, k + K, k + 2K, ... and starts no insert after the
    deadline; the clock stops when every lane's last insert has committed.
    """
    inserters = [await peer.open_inserter(dsn) for _ in range(connections)]
    counts = [0] * connections
    clock = Clock(dsn)

    async def lane(index: int, inserter: Inserter, deadline: float) -> None:
        key = index
        while time.perf_counter() < deadline:
            await inserter.insert(key)
            counts[index] += 1
            key += connections

    try:
        with clock:
            deadline = time.perf_counter() + seconds
            await asyncio.gather(*(lane(k, ins, deadline) for k, ins in enumerate(inserters)))
    finally:
        for inserter in inserters:
            await inserter.close()
    return sum(counts), clock


async def _paced(peer: Peer, dsn: str, n: int, rate: float, connections: int,
                 first: int) -> list[tuple[int, float]]:
    """Enqueue keys first..first+n-1, key k at start + (k-first)/rate, over K connections."""
    inserters = [await peer.open_inserter(dsn) for _ in range(connections)]
    done: list[tuple[int, float]] = []
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05

    async def lane(index: int, inserter: Inserter) -> None:
        for offset in range(index, n, connections):
            delay = start + offset / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await inserter.insert(first + offset)
            done.append((first + offset, time.time()))

    try:
        await asyncio.gather(*(lane(k, ins) for k, ins in enumerate(inserters)))
    finally:
        for inserter in inserters:
            await inserter.close()
    return done


async def _worker(peer: Peer, options: WorkerOptions, record_path: str | None) -> None:
    loop = asyncio.get_running_loop()
    go = asyncio.Event()
    stop = asyncio.Event()

    def control() -> None:
        # A daemon thread: a blocked read never keeps the process alive.
        if sys.stdin.readline().strip() == "go":
            loop.call_soon_threadsafe(go.set)
            sys.stdin.readline()
        loop.call_soon_threadsafe(go.set)
        loop.call_soon_threadsafe(stop.set)

    async def ready() -> None:
        say("ready")
        await go.wait()

    threading.Thread(target=control, daemon=True).start()
    await peer.work(options, ready, stop)
    if record_path:
        _write_json(record_path, [[_key(k), t] for k, t in RECORDS])
    say("done")


def _key(key: Any) -> Any:
    """A recorded key: the payload's "i" when a handler recorded the raw payload."""
    if isinstance(key, bytes | str):
        return json.loads(key)["i"]
    return key


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The subcommands and their options (see the module docstring)."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("install", "enqueue-bulk", "enqueue-single", "enqueue-paced", "enqueue-many",
                 "worker"):
        p = sub.add_parser(name)
        p.add_argument("--dsn", required=True)
        if name.startswith("enqueue") and name != "enqueue-many":
            p.add_argument("--n", type=int, required=True)
        if name == "enqueue-many":
            p.add_argument("--connections", type=int, required=True)
            p.add_argument("--seconds", type=float, required=True)
        if name == "enqueue-paced":
            p.add_argument("--rate", type=float, required=True)
            p.add_argument("--connections", type=int, default=1)
            p.add_argument("--first", type=int, default=0)
            p.add_argument("--out", required=True)
        if name == "worker":
            p.add_argument("--concurrency", type=int, required=True)
            p.add_argument("--handler", choices=[NOOP, SLEEP], default=NOOP)
            p.add_argument("--lease-ttl", type=float, default=30.0)
            p.add_argument("--record")
    return parser.parse_args(argv)


async def run(peer: Peer, args: argparse.Namespace) -> None:
    """Carry out one subcommand."""
    if args.command == "install":
        await peer.install(args.dsn)
        print(json.dumps({"ok": True}), flush=True)
    elif args.command == "enqueue-bulk":
        clock = Clock(args.dsn)
        await peer.enqueue_bulk(args.dsn, args.n, clock)
        print(json.dumps(clock.as_json()), flush=True)
    elif args.command == "enqueue-single":
        clock = await _single(peer, args.dsn, args.n)
        print(json.dumps(clock.as_json()), flush=True)
    elif args.command == "enqueue-many":
        inserted, clock = await _many(peer, args.dsn, args.connections, args.seconds)
        print(json.dumps({"inserted": inserted, **clock.as_json()}), flush=True)
    elif args.command == "enqueue-paced":
        done = await _paced(peer, args.dsn, args.n, args.rate, args.connections, args.first)
        _write_json(args.out, done)
        print(json.dumps({"inserted": len(done)}), flush=True)
    else:
        options = WorkerOptions(args.dsn, args.concurrency, args.handler, args.lease_ttl)
        await _worker(peer, options, args.record)


def main(peer: Peer, runner: Callable[[Awaitable[None]], None] = asyncio.run) -> None:
    """Parse argv and run the subcommand on `runner` (the system's usual event loop)."""
    args = parse()
    runner(run(peer, args))
