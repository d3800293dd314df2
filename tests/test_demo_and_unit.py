"""`jobengine demo` with no set-up at all, and the systemd unit."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "jobengine.service"


@pytest.mark.slow
def test_demo_runs_on_the_embedded_default_with_no_set_up() -> None:
    # A brand-new data directory: no DSN anywhere, so the demo must start the
    # embedded PostgreSQL, migrate it, run the DAG and print the timeline.
    # (Not under pytest's tmp_path: as root, the embedded server runs as its own
    # user, which needs to traverse the parent folders.)
    base = Path(tempfile.mkdtemp(prefix="jobengine-demo-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBENGINE_")}
    env["XDG_DATA_HOME"] = str(base)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "jobengine.cli.main", "demo"],
            env=env, capture_output=True, text=True, timeout=240, cwd=str(base),
        )
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert "settled:" in out
        for fragment in ("extract=completed", "load=completed", "flaky=completed",
                         "cleanup=cancelled", "report=cancelled"):
            assert fragment in re.sub(r"\s+", " ", out).replace(" ,", ",")
        for event in ("job.created", "job.retry_scheduled", "job.failed", "job.cancelled"):
            assert event in out
        assert (base / "jobengine" / "pgdata" / "PG_VERSION").read_text().strip() == "18"
    finally:
        # stop the embedded server the demo left running for the next command
        from jobengine.embedded import EmbeddedPostgres

        EmbeddedPostgres(base / "jobengine" / "pgdata").stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def unit_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's jobengine (verify checks it)."""
    exe = shutil.which("jobengine") or str(Path(sys.executable).parent / "jobengine")
    text = UNIT.read_text().replace("/usr/local/bin/jobengine", exe)
    path = tmp_path / "jobengine.service"
    path.write_text(text)
    return path


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_passes_systemd_analyze_verify(unit_here: Path) -> None:
    result = subprocess.run(["systemd-analyze", "verify", str(unit_here)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "jobengine.service" not in result.stderr, result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_exposure_is_ok_or_better(unit_here: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit_here)],
        capture_output=True, text=True, timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0


def test_unit_is_type_notify_with_watchdog_and_restart() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "Restart=on-failure", "KillMode=mixed"):
        assert line in text
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
    assert re.search(r"^ExecStart=\S*jobengine run", text, re.M)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_sealed_drop_in_verifies_and_cuts_the_network(unit_here: Path) -> None:
    dropin_dir = unit_here.parent / "jobengine.service.d"
    dropin_dir.mkdir()
    shutil.copy(REPO / "systemd" / "jobengine-sealed.conf", dropin_dir / "sealed.conf")
    result = subprocess.run(["systemd-analyze", "verify", str(unit_here)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text = (REPO / "systemd" / "jobengine-sealed.conf").read_text()
    for line in ("Environment=JOBENGINE_SEALED=1", "PrivateNetwork=yes",
                 "RestrictAddressFamilies=AF_UNIX"):
        assert re.search(rf"^{re.escape(line)}$", text, re.M)
