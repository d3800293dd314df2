"""A smoke run of the benchmark harness (tiny sizes, jobengine only).

Benchmarks are not tests: this only keeps `python -m bench run` working. It
installs no peers (`--systems jobengine`) and uses databases of its own
prefix, so it never disturbs a real bench run on the same server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: the rows a jobengine-only quick run must print (labels carry the quick sizes)
EXPECTED_ROWS = [
    "enqueue 500 in one call",
    "enqueue 50, one tx each",
    "burn-down 500, concurrency 10",
    "burn-down 500, concurrency 50",
    "idle pickup p50",
    "idle pickup p99",
    "steady load pickup p99",
    "steady load: backlog at end",
    "limits c10: burn-down 500 over 100 keys, 20 at ≤ 2 running, 20 at ≤ 100 starts per 1 s",
    "limits c10: most running at once, one concurrency-limited key",
    "limits c10: most starts of one rate-limited key within 0.95 s",
    "burn-down c10, empty tables",
    "burn-down c10, 5k finished jobs present",
    "scale: full / empty",
    "dashboard: overview /ui/ p99, 5k jobs",
    "peak RSS, 200 running jobs",
    "rescue 10 jobs after SIGKILL (lease_ttl 2 s)",
]


@pytest.mark.slow
def test_quick_run_prints_the_table(server_dsn: str, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--quick", "--systems", "jobengine",
         "--dsn", server_dsn, "--out", str(out), "--format", "markdown",
         "--db-prefix", f"bench_smoke_{os.getpid()}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=90, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| metric | unit | jobengine |")
    labels = [row.split("|")[1].strip() for row in rows[1:]]
    for expected in EXPECTED_ROWS:
        assert expected in labels, (expected, labels)
    assert "note:" not in done.stdout, done.stdout
    data = json.loads(out.read_text())
    assert data["systems"] == ["jobengine"]
    burn = data["metrics"]["burndown.c10"]["jobengine"]
    assert burn["median"] > 0
    assert not burn["bound"]
    assert out.with_suffix(".md").exists()
