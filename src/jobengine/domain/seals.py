"""Seals of the ledger's days, as exported outside the database and read back.

A seal is one UTC day of ledger rows: how many, and their digest (see
migration 0007). `jobengine audit seals` prints them as JSON lines, and the
daemon logs each new one as `ledger.day_sealed`; either form can be kept
anywhere the database's superuser cannot reach, and given back to
`jobengine audit verify --seals FILE`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

import msgspec

#: The log event a daemon writes for each day it seals.
SEALED_EVENT = "ledger.day_sealed"


@dataclass(frozen=True, slots=True)
class SealRecord:
    """One sealed day: its rows and their digest, as recorded when it was sealed."""

    day: date
    rows: int
    digest: bytes

    def as_json(self) -> dict[str, Any]:
        """The exported form: `{"day": "2026-12-01", "rows": 40120, "digest": "<hex>"}`."""
        return {"day": self.day.isoformat(), "rows": self.rows, "digest": self.digest.hex()}


def parse_seals(text: str) -> list[SealRecord]:
    """Seals from exported lines: `audit seals` output, or the daemon's JSON log lines.

    Lines that are not JSON objects, and JSON log lines of other events, are
    skipped (a journal excerpt has both); a seal line that is malformed is a
    `ValueError` naming its line. A day given twice must agree with itself.
    """
    found: dict[date, SealRecord] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        start = line.find("{")
        if start < 0:
            continue
        try:
            obj = msgspec.json.decode(line[start:])
        except msgspec.DecodeError:
            continue
        if not isinstance(obj, dict) or "digest" not in obj:
            continue
        if "event" in obj and obj["event"] != SEALED_EVENT:
            continue
        record = _record(obj, number)
        if record.day in found and found[record.day] != record:
            raise ValueError(f"line {number}: day {record.day} is given twice, differently")
        found[record.day] = record
    return sorted(found.values(), key=lambda r: r.day)


def _record(obj: dict[str, Any], number: int) -> SealRecord:
    try:
        day = date.fromisoformat(str(obj["day"]))
        rows = obj["rows"]
        digest = bytes.fromhex(str(obj["digest"]))
    except (KeyError, ValueError) as exc:
        raise ValueError(f"line {number}: not a seal (day, rows, digest): {exc}") from None
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        raise ValueError(f"line {number}: rows must be a count, not {rows!r}")
    if len(digest) != 32:
        raise ValueError(f"line {number}: digest must be 64 hex digits (sha256)")
    return SealRecord(day, rows, digest)
