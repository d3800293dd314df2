"""The systems under test: which Python runs their script, and how to read their state.

Each system's jobs live in its own tables; the harness reads them with plain
SQL to stop the clock (no job left in a non-final state) and to check the
outcome (exactly N succeeded).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from bench.config import PEER_VENV, PEERS_DIR


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

    def argv(self, command: str, dsn: str, *args: str) -> list[str]:
        """The command line of one protocol step."""
        return [str(self.python), str(self.script), command, "--dsn", dsn, *args]


def _peer_python() -> Path:
    return PEER_VENV / "bin" / "python"


JOBENGINE = System(
    name="jobengine",
    label="jobengine",
    script=PEERS_DIR / "jobengine_peer.py",
    python=Path(sys.executable),
    # One EXISTS per status, so each is served by that status' partial index.
    unfinished_sql=(
        "SELECT EXISTS (SELECT 1 FROM jobengine.jobs WHERE status = 'pending')"
        " OR EXISTS (SELECT 1 FROM jobengine.jobs WHERE status = 'scheduled')"
        " OR EXISTS (SELECT 1 FROM jobengine.jobs WHERE status = 'running')"
    ),
    succeeded_sql="SELECT count(*) FROM jobengine.jobs WHERE status = 'completed'",
    backlog_sql=(
        "SELECT (SELECT count(*) FROM jobengine.jobs WHERE status = 'pending')"
        " + (SELECT count(*) FROM jobengine.jobs WHERE status = 'scheduled')"
        " + (SELECT count(*) FROM jobengine.jobs WHERE status = 'running')"
    ),
    running_sql="SELECT count(*) FROM jobengine.jobs WHERE status = 'running' AND attempt = $1",
)

PGQUEUER = System(
    name="pgqueuer",
    label="PgQueuer",
    script=PEERS_DIR / "pgqueuer_peer.py",
    python=_peer_python(),
    # Finished jobs leave the queue table (their log rows stay).
    unfinished_sql="SELECT EXISTS (SELECT 1 FROM pgqueuer WHERE status IN ('queued', 'picked'))",
    succeeded_sql="SELECT count(DISTINCT job_id) FROM pgqueuer_log WHERE status = 'successful'",
    backlog_sql="SELECT count(*) FROM pgqueuer WHERE status IN ('queued', 'picked')",
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
)

ALL = {s.name: s for s in (JOBENGINE, PGQUEUER, PROCRASTINATE)}
PEERS = [s for s in ALL.values() if s is not JOBENGINE]


def select(names: str) -> list[System]:
    """Systems named in a comma-separated list (jobengine always first)."""
    wanted = [n.strip().lower() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in ALL]
    if unknown:
        raise SystemExit(f"unknown system(s): {', '.join(unknown)}; choose from {', '.join(ALL)}")
    return [s for s in ALL.values() if s.name in wanted]
