"""The README's "Python API" examples type-check with `mypy --strict`, and run."""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

import asyncpg
import psycopg
import pytest
from mypy import api
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from jobengine.daemon import run_daemon
from tests.daemon_helpers import config

REPO = Path(__file__).resolve().parents[1]


def python_section_code() -> str:
    """The README's "Python API" section's ```python blocks, as one module."""
    readme = (REPO / "README.md").read_text()
    start = readme.index("\n## Python API\n")
    end = readme.index("\n## ", start + 1)
    blocks = re.findall(r"```python\n(.*?)```", readme[start:end], flags=re.S)
    assert len(blocks) >= 4, "the Python API section lost its examples"
    return "\n\n".join(blocks)


@pytest.mark.slow
def test_the_readme_python_examples_type_check_strictly(tmp_path: Path) -> None:
    module = tmp_path / "readme_tasks.py"
    module.write_text(python_section_code())
    out, err, status = api.run([
        "--strict", "--cache-dir", str(REPO / ".mypy_cache"), "--no-error-summary",
        str(module),
    ])
    assert status == 0, out + err


@pytest.mark.anyio
async def test_the_readme_python_examples_run(tmp_path: Path, db_dsn: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    module = tmp_path / "readme_tasks.py"
    module.write_text(python_section_code())
    monkeypatch.syspath_prepend(str(tmp_path))
    readme = importlib.import_module("readme_tasks")
    await readme.app.use_database(db_dsn)
    conn = await asyncpg.connect(db_dsn)
    try:
        async with run_daemon(config(), db_dsn, app=readme.app):
            await readme.main()
            await readme.more(conn)
            welcome = await readme.sign_up(conn, "new@example.com")
            done = await readme.app.wait(welcome, timeout=30)
        assert done.result == {"sent_to": "new@example.com", "subject": "welcome", "attempt": 1}
        with psycopg.connect(db_dsn) as pg:
            readme.sign_up_sync(pg, "sync@example.com")
        engine = create_engine(db_dsn.replace("postgresql://", "postgresql+psycopg://", 1))
        try:
            with Session(engine) as session:
                billed = readme.invoice(session, 42)
        finally:
            engine.dispose()
        row = await conn.fetchrow("SELECT kind, payload FROM jobengine.jobs WHERE id = $1",
                                  billed)
        assert row is not None
        assert row["kind"] == "billing.invoice"
        assert json.loads(row["payload"])["invoice"] == {"customer": 42, "amount_cents": 1999}
    finally:
        await conn.close()
        await readme.app.aclose()
        sys.modules.pop("readme_tasks", None)
