"""The peers' own virtualenv (bench/.venv-peers): created and filled from PyPI on demand.

PgQueuer and Procrastinate are never project dependencies; their workers run
on this venv's Python. The venv is rebuilt when bench/peers/requirements.txt
changes (its hash is kept in the venv).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

from bench.config import PEER_VENV, PEERS_DIR

REQUIREMENTS = PEERS_DIR / "requirements.txt"
_MARKER = PEER_VENV / ".requirements.sha256"
_DISTRIBUTIONS = ("pgqueuer", "procrastinate", "asyncpg", "psycopg", "uvloop")


def _digest() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def ensure() -> None:
    """Create the venv and install the pinned peers unless it is already up to date."""
    python = PEER_VENV / "bin" / "python"
    if python.exists() and _MARKER.exists() and _MARKER.read_text().strip() == _digest():
        return
    print(f"installing the peers into {PEER_VENV} (pip, from PyPI)...", file=sys.stderr,
          flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
                   check=True)
    _MARKER.write_text(_digest() + "\n")


def versions() -> dict[str, str]:
    """Installed versions of the peers and their drivers."""
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        return {}
    code = ("import importlib.metadata as m, json; "
            f"print(json.dumps({{d: m.version(d) for d in {list(_DISTRIBUTIONS)!r}}}))")
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {}
    found: dict[str, str] = json.loads(done.stdout)
    return found
