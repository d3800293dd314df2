"""Running a system's script: one-shot steps, and worker processes driven by stdin.

A worker's stdout is read on a thread all the time (libraries may print), its
stderr goes to a log file under the run's output folder; a worker that does
not stop when asked is killed, so nothing outlives the harness.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from bench.systems import System


class StepFailed(RuntimeError):
    """A protocol step exited non-zero or timed out (the message says which, with stderr)."""


class StepTimeout(StepFailed):
    """A protocol step ran past its time limit."""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # each script runs against its own interpreter's packages
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def step(system: System, command: str, dsn: str, *args: str, limit: float) -> dict[str, Any]:
    """Run one step to completion; its last stdout line is JSON."""
    argv = system.argv(command, dsn, *args)

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, timeout=limit, env=_env(),
                              check=False)

    try:
        done = await asyncio.to_thread(run)
    except subprocess.TimeoutExpired as exc:
        raise StepTimeout(f"{system.name} {command}: no result within {limit:g}s") from exc
    if done.returncode != 0:
        raise StepFailed(f"{system.name} {command} exited {done.returncode}:\n"
                         f"{done.stderr.strip()[-3000:]}")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    result: dict[str, Any] = json.loads(lines[-1])
    return result


class Worker:
    """One worker process of a system (see bench/peers/_common.py for the protocol)."""

    def __init__(self, system: System, dsn: str, *, concurrency: int, log_path: Path,
                 handler: str = "noop", lease_ttl: float = 30.0,
                 record_path: Path | None = None) -> None:
        args = ["--concurrency", str(concurrency), "--handler", handler,
                "--lease-ttl", str(lease_ttl)]
        if record_path is not None:
            args += ["--record", str(record_path)]
        self.system = system
        self.record_path = record_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self.process = subprocess.Popen(
            system.argv("worker", dsn, *args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._log, text=True, env=_env(),
        )
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.append(line.strip())

    async def _wait_line(self, word: str, limit: float) -> None:
        deadline = time.monotonic() + limit
        while word not in self._lines:
            if self.process.poll() is not None and not self._reader.is_alive():
                raise StepFailed(f"{self.system.name} worker exited {self.process.returncode} "
                                 f"before saying {word!r}; see {self._log.name}")
            if time.monotonic() > deadline:
                raise StepTimeout(f"{self.system.name} worker: no {word!r} within {limit:g}s")
            await asyncio.sleep(0.005)

    def _send(self, line: str) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    async def ready(self, limit: float = 60.0) -> None:
        """Wait until the worker finished its set-up."""
        await self._wait_line("ready", limit)

    def go(self) -> None:
        """Start working (the clock starts now)."""
        self._send("go")

    async def stop(self, limit: float = 60.0) -> list[list[Any]]:
        """Stop gracefully (kill after `limit`); return the handler records."""
        self._send("stop")
        try:
            await self._wait_line("done", limit)
            await asyncio.to_thread(self.process.wait, limit)
        except (StepFailed, subprocess.TimeoutExpired):
            self.kill()
            raise
        finally:
            self.close()
        if self.record_path is None or not self.record_path.exists():
            return []
        records: list[list[Any]] = json.loads(self.record_path.read_text())
        return records

    def kill(self) -> None:
        """SIGKILL the worker (no-op once it exited)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        """Make sure the process is gone and the log closed."""
        self.kill()
        if self.process.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()
        self._log.close()

    def status(self) -> dict[str, int]:
        """VmHWM / VmRSS of the worker in kB, from /proc."""
        fields: dict[str, int] = {}
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    fields[key] = int(value.split()[0])
        return fields
