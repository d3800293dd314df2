"""What endangers a long-running installation, read from the database's statistics.

`jobengine doctor` and `/metrics` report these; the judgement (what is too
much) is in `jobengine.domain.health`.
"""

from __future__ import annotations

from typing import Any

from jobengine.domain.health import Horizon, RetentionState, TableHealth
from jobengine.store.executor import Executor, fetch_on


class HealthStore:
    """Reads the figures `jobengine doctor` judges."""

    def __init__(self, db: Executor) -> None:
        self._db = db

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        return await fetch_on(self._db, query, *args)

    async def tables(self) -> list[TableHealth]:
        """Sizes and dead tuples of jobengine's tables (the ledger as one)."""
        return [
            TableHealth(
                r["name"], r["table_bytes"], r["index_bytes"], r["live_rows"], r["dead_rows"]
            )
            for r in await self._fetch("health_tables")
        ]

    async def horizon(self) -> Horizon:
        """The oldest transaction and what holds the xmin horizon back."""
        r = (await self._fetch("health_horizon"))[0]
        return Horizon(
            oldest_transaction_seconds=float(r["oldest_transaction_seconds"] or 0.0),
            session_xmin_age=int(r["session_xmin_age"] or 0),
            slot_xmin_age=int(r["slot_xmin_age"] or 0),
            inactive_slots=int(r["inactive_slots"] or 0),
            prepared_xact_age=int(r["prepared_xact_age"] or 0),
            database_xid_age=int(r["database_xid_age"] or 0),
        )

    async def retention(self) -> RetentionState:
        """Where retention stands: last pass, oldest rows left, the default partition."""
        r = (await self._fetch("health_retention"))[0]
        return RetentionState(
            now=r["now"],
            last_pass=r["last_pass"],
            oldest_finished=r["oldest_finished"],
            oldest_partition=r["oldest_partition"],
            newest_partition_end=r["newest_partition_end"],
            default_rows=int(r["default_rows"]),
        )
