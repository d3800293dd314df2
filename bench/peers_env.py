"""The peers' own virtualenvs, created and filled from PyPI on demand.

The peers are never project dependencies; their workers run on these venvs'
Pythons:
- `bench/.venv-peers` (PgQueuer, Procrastinate), built with the harness's own
  Python from `bench/peers/requirements.txt`;
- `bench/.venv-oban` (oban), built from `bench/peers/requirements-oban.txt`
  with a Python 3.12+ (oban's minimum): `$BENCH_OBAN_PYTHON`, else the first
  of `python3.12`, `python3.13`, ... on PATH that runs (a pyenv shim may not),
  else the oldest 3.12+ under `~/.pyenv/versions/`.

A venv is rebuilt when its requirements file changes (its hash is kept in the
venv). A venv that cannot be built raises `Unavailable` with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.config import OBAN_VENV, PEER_VENV, PEERS_DIR


class Unavailable(RuntimeError):
    """A peer's venv cannot be built here (the message says why)."""


def _this_python() -> str:
    return sys.executable


def _python_at_least(path: str, version: tuple[int, int]) -> bool:
    try:
        done = subprocess.run(
            [path, "-c", f"import sys; sys.exit(0 if sys.version_info >= {version!r} else 1)"],
            capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _version_key(name: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", name)
    return tuple(int(p) for p in parts[:3])


def find_python(version: tuple[int, int]) -> str:
    """The oldest Python interpreter of at least `version` that runs (see the module docstring).

    The oldest, so that the peer runs on the version its reference figures
    were taken with (3.12) where that is installed.
    """
    tried: list[str] = []
    wanted = os.environ.get("BENCH_OBAN_PYTHON")
    candidates = [wanted] if wanted else []
    for minor in range(version[1], 16):
        found = shutil.which(f"python3.{minor}")
        if found:
            candidates.append(found)
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if pyenv.is_dir():
        for d in sorted(pyenv.iterdir(), key=lambda d: _version_key(d.name)):
            if _version_key(d.name)[:2] >= version:
                candidates.append(str(d / "bin" / "python3"))
    for path in candidates:
        tried.append(path)
        if os.path.exists(path) and _python_at_least(path, version):
            return path
    raise Unavailable(f"no Python >= {version[0]}.{version[1]} found (tried: "
                      f"{', '.join(tried) or 'nothing on PATH or under ~/.pyenv'}); "
                      "set BENCH_OBAN_PYTHON to one")


@dataclass(frozen=True)
class Env:
    """One peer venv: where it lives, what goes into it, and which Python builds it."""

    name: str
    venv: Path
    requirements: Path
    #: distributions whose versions the report names
    distributions: tuple[str, ...]
    base_python: Callable[[], str] = _this_python
    #: also report the venv's Python version, under this name ("" for not)
    python_key: str = ""

    @property
    def python(self) -> Path:
        """The venv's interpreter."""
        return self.venv / "bin" / "python"

    @property
    def _marker(self) -> Path:
        return self.venv / ".requirements.sha256"

    def _digest(self) -> str:
        return hashlib.sha256(self.requirements.read_bytes()).hexdigest()

    def ensure(self) -> None:
        """Create the venv and install the pinned peers unless it is already up to date."""
        if (self.python.exists() and self._marker.exists()
                and self._marker.read_text().strip() == self._digest()):
            return
        base = self.base_python()
        print(f"installing {self.name} into {self.venv} (pip, from PyPI, with {base})...",
              file=sys.stderr, flush=True)
        steps = []
        if not self.python.exists():
            steps.append([base, "-m", "venv", str(self.venv)])
        steps.append([str(self.python), "-m", "pip", "install", "--quiet", "-r",
                      str(self.requirements)])
        for argv in steps:
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-8:]
                raise Unavailable(f"`{' '.join(argv)}` exited {done.returncode}: "
                                  + " | ".join(tail))
        self._marker.write_text(self._digest() + "\n")

    def versions(self) -> dict[str, str]:
        """Installed versions of the peers and their drivers."""
        if not self.python.exists():
            return {}
        code = ("import importlib.metadata as m, json, platform; "
                f"v = {{d: m.version(d) for d in {list(self.distributions)!r}}}; "
                f"v.update({{{self.python_key!r}: platform.python_version()}}"
                f" if {self.python_key!r} else {{}}); print(json.dumps(v))")
        done = subprocess.run([str(self.python), "-c", code], capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            return {}
        found: dict[str, str] = json.loads(done.stdout)
        return found


PEERS = Env("PgQueuer and Procrastinate", PEER_VENV, PEERS_DIR / "requirements.txt",
            ("pgqueuer", "procrastinate", "asyncpg", "psycopg", "uvloop"))
OBAN = Env("oban", OBAN_VENV, PEERS_DIR / "requirements-oban.txt",
           ("oban",), lambda: find_python((3, 12)), python_key="oban's Python")

#: by the name a System gives in `env`
ENVS = {"peers": PEERS, "oban": OBAN}
