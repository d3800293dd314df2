"""Rebuild sql/schema.sql from sql/migrations/ (run from the repository root).

schema.sql is the canonical schema: what all migrations applied in order
produce, plus the bookkeeping rows that make `jobengine migrate` a no-op on a
database installed from it. tests/test_schema.py checks that both routes give
the same catalog, so a stale schema.sql fails CI.

    python sql/build_schema.py
"""

from __future__ import annotations

from pathlib import Path

from jobengine.store.migrate import BOOKKEEPING_SQL
from jobengine.store.sqlfiles import load_migrations

HEADER = """\
-- jobengine: the canonical schema, equal to all of sql/migrations/ applied in order.
-- A test (tests/test_schema.py) keeps the two identical. Install with:
--   psql -v ON_ERROR_STOP=1 -f sql/schema.sql
-- (jobengine migrate is the usual way: it also records the migrations.)
"""


def build(root: Path) -> str:
    """The text of schema.sql for the migrations under `root`."""
    migrations = load_migrations(root)
    parts = [HEADER]
    for m in migrations:
        parts.append(f"-- ===== from {m.version:04d}_{m.name}.sql =====\n{m.sql.rstrip()}\n")
    rows = ",\n".join(f"    ({m.version}, '{m.name}', '{m.checksum}')" for m in migrations)
    parts.append(
        "-- ===== bookkeeping: the migrations this schema equals, so `jobengine migrate` "
        "finds nothing to do =====\n"
        f"{BOOKKEEPING_SQL.strip()}\n"
        "INSERT INTO jobengine.schema_migrations (version, name, checksum) VALUES\n"
        f"{rows};\n"
    )
    return "\n".join(parts)


if __name__ == "__main__":
    root = Path(__file__).resolve().parent
    (root / "schema.sql").write_text(build(root))
    print(f"wrote {root / 'schema.sql'}")
