"""The systems under test: which Python runs their script, and how to read their state.

Each system's jobs live in its own tables; the harness reads them with plain
SQL to stop the clock (no job left in a non-final state) and to check the
outcome (exactly N succeeded).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from bench.config import OBAN_VENV, PEER_VENV, PEERS_DIR


@dataclass(frozen=True)
class System:
    """One job system and the SQL that reads its state."""

    name: str
    label: str
    script: Path
    python: Path
    #: true while any job is not in a final state (stops the burn-down clock)
    unfinished_sql: str
    #: how many jobs ran to success
    succeeded_sql: str
    #: how many jobs are in a non-final state (the steady-load backlog)
    backlog_sql: str
    #: jobengine only: how many running jobs at attempt $1
    running_sql: str = ""
    #: the peer venv its script runs on (`bench.peers_env.ENVS`), "" for the project's
    env: str = ""
    #: arguments of the script before the step's command (the floor's variant)
    args: tuple[str, ...] = ()

    def argv(self, command: str, dsn: str, *args: str) -> list[str]:
        """The command line of one protocol step."""
        return [str(self.python), str(self.script), *self.args, command, "--dsn", dsn, *args]


def _peer_python() -> Path:
    return PEER_VENV / "bin" / "python"


#: The unfinished jobs, one partial index each (each names a status and, for
#: waiting ones, whether limit_key is set). A bare `status = 'pending'`
#: matches none of them: beside the scale workload's 10M finished jobs each
#: poll read the whole table (~0.5 s of a core, polled throughout the timed
#: burn-down: half the 10M figure was the harness's own reads).
_UNFINISHED = (
    "status = 'pending' AND limit_key IS NULL",
    "status = 'pending' AND limit_key IS NOT NULL",
    "status = 'scheduled' AND limit_key IS NULL",
    "status = 'scheduled' AND limit_key IS NOT NULL",
    "status = 'running'",
)

JOBENGINE = System(
    name="jobengine",
    label="jobengine",
    script=PEERS_DIR / "jobengine_peer.py",
    python=Path(sys.executable),
    unfinished_sql="SELECT " + " OR ".join(
        f"EXISTS (SELECT 1 FROM jobengine.jobs WHERE {p})" for p in _UNFINISHED),
    succeeded_sql="SELECT count(*) FROM jobengine.jobs WHERE status = 'completed'",
    backlog_sql="SELECT " + " + ".join(
        f"(SELECT count(*) FROM jobengine.jobs WHERE {p})" for p in _UNFINISHED),
    running_sql="SELECT count(*) FROM jobengine.jobs WHERE status = 'running' AND attempt = $1",
)


def jobengine_keyed(limit_keys: Sequence[str]) -> System:
    """jobengine whose inserted jobs get these limit keys, round-robin (job i: key i mod n)."""
    return replace(JOBENGINE, args=("--limit-keys", ",".join(limit_keys)))


def jobengine_python_api() -> System:
    """jobengine whose bulk path is the Python API's `defer_many` (not hand-written SQL)."""
    return replace(JOBENGINE, label="jobengine defer_many", args=("--python-api",))


PGQUEUER = System(
    name="pgqueuer",
    label="PgQueuer",
    script=PEERS_DIR / "pgqueuer_peer.py",
    python=_peer_python(),
    # Finished jobs leave the queue table (their log rows stay).
    unfinished_sql="SELECT EXISTS (SELECT 1 FROM pgqueuer WHERE status IN ('queued', 'picked'))",
    succeeded_sql="SELECT count(DISTINCT job_id) FROM pgqueuer_log WHERE status = 'successful'",
    backlog_sql="SELECT count(*) FROM pgqueuer WHERE status IN ('queued', 'picked')",
    env="peers",
)

PROCRASTINATE = System(
    name="procrastinate",
    label="Procrastinate",
    script=PEERS_DIR / "procrastinate_peer.py",
    python=_peer_python(),
    unfinished_sql=(
        "SELECT EXISTS (SELECT 1 FROM procrastinate_jobs WHERE status IN ('todo', 'doing'))"
    ),
    succeeded_sql="SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'",
    backlog_sql="SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')",
    env="peers",
)

_OBAN_UNFINISHED = "state IN ('available', 'scheduled', 'executing', 'retryable')"
OBAN = System(
    name="oban",
    label="oban",
    script=PEERS_DIR / "oban_peer.py",
    python=OBAN_VENV / "bin" / "python",
    # Finished jobs stay (the pruner deletes them after a day).
    unfinished_sql=f"SELECT EXISTS (SELECT 1 FROM oban_jobs WHERE {_OBAN_UNFINISHED})",
    succeeded_sql="SELECT count(*) FROM oban_jobs WHERE state = 'completed'",
    backlog_sql=f"SELECT count(*) FROM oban_jobs WHERE {_OBAN_UNFINISHED}",
    env="oban",
)

ALL = {s.name: s for s in (JOBENGINE, PGQUEUER, PROCRASTINATE, OBAN)}
PEERS = [s for s in ALL.values() if s is not JOBENGINE]


def _floor(variant: str, label: str) -> System:
    return System(
        name=f"floor_{variant}", label=label, script=PEERS_DIR / "floor_peer.py",
        python=Path(sys.executable), unfinished_sql="SELECT false",
        succeeded_sql="SELECT 0", backlog_sql="SELECT count(*) FROM bench_floor.jobs",
        args=(variant,),
    )


#: the many-producers floor: the same inserts into a plain table, then with a NOTIFY trigger
#: (not systems under test: only that workload runs them)
FLOOR_PLAIN = _floor("plain", "plain table")
FLOOR_NOTIFY = _floor("notify", "plain table + NOTIFY trigger")


def select(names: str) -> list[System]:
    """Systems named in a comma-separated list (jobengine always first)."""
    wanted = [n.strip().lower() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in ALL]
    if unknown:
        raise SystemExit(f"unknown system(s): {', '.join(unknown)}; choose from {', '.join(ALL)}")
    return [s for s in ALL.values() if s.name in wanted]
