"""Where jobengine's SQL lives, and how it is loaded.

Migrations ship inside the wheel as `jobengine/sql/migrations/NNNN_name.sql`
(copied there from the repository's top-level `sql/` at build time); in a
source checkout or an editable install they are read from `sql/` directly.
Named queries live next to this module in `queries/*.sql`, each introduced by
a `-- name: noun_verb` line, and are parsed once at import.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from hashlib import sha256
from importlib import resources
from pathlib import Path
from types import MappingProxyType

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_QUERY_HEADER = re.compile(r"^--\s*name:\s*([a-z][a-z0-9_]*)\s*$", re.MULTILINE)


def sql_dir() -> Path:
    """The directory holding `migrations/` and `schema.sql`."""
    packaged = Path(str(resources.files("jobengine"))) / "sql"
    if (packaged / "migrations").is_dir():
        return packaged
    # Source checkout / editable install: <repo>/src/jobengine/store/ -> <repo>/sql
    source = Path(__file__).resolve().parents[3] / "sql"
    if (source / "migrations").is_dir():
        return source
    raise FileNotFoundError(
        f"jobengine's SQL files are missing (looked in {packaged} and {source})"
    )


@dataclass(frozen=True)
class Migration:
    """One forward-only schema migration."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the migration's text, recorded when it is applied."""
        return sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """All migrations in version order; refuses gaps and duplicate numbers."""
    folder = (directory or sql_dir()) / "migrations"
    found: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file {path.name!r} is not named NNNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise ValueError(
                f"migrations must be numbered 0001, 0002, ... without gaps; "
                f"found {migration.version:04d} where {expected:04d} was expected"
            )
    return found


def parse_queries(text: str) -> dict[str, str]:
    """Split a `-- name:`-annotated SQL file into {name: statement}."""
    parts = _QUERY_HEADER.split(text)
    queries: dict[str, str] = {}
    # parts = [preamble, name1, body1, name2, body2, ...]
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip().rstrip(";")
    return queries


def _load_all_queries() -> Mapping[str, str]:
    merged: dict[str, str] = {}
    for entry in sorted(resources.files("jobengine.store").joinpath("queries").iterdir(),
                        key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        for name, sql in parse_queries(entry.read_text()).items():
            if name in merged:
                raise ValueError(f"query {name!r} is defined in more than one file")
            merged[name] = sql
    return MappingProxyType(merged)


#: Every named query, by name.
QUERIES: Mapping[str, str] = _load_all_queries()
