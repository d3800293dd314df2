"""Figures: one measured value (maybe a bound), and summaries over repetitions."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Value:
    """One run's figure; `bound` is '<' or '>' when the run hit its time limit."""

    value: float
    bound: str = ""

    def as_json(self) -> dict[str, Any]:
        """A JSON-friendly form."""
        return {"value": self.value, "bound": self.bound} if self.bound else {"value": self.value}


@dataclass
class Summary:
    """Median and min-max of one metric over the repetitions of one system."""

    median: float
    low: float
    high: float
    n: int
    bound: str = ""
    values: list[Value] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """A JSON-friendly form (with every repetition's value)."""
        return {"median": self.median, "min": self.low, "max": self.high, "n": self.n,
                "bound": self.bound, "runs": [v.as_json() for v in self.values]}


def summarise(values: Sequence[Value]) -> Summary | None:
    """Median and range; a bound in any run makes the summary a bound of the same side."""
    if not values:
        return None
    nums = [v.value for v in values]
    bounds = {v.bound for v in values if v.bound}
    return Summary(statistics.median(nums), min(nums), max(nums), len(nums),
                   "".join(sorted(bounds))[:1], list(values))


def percentile(sorted_xs: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation of an already sorted list."""
    if not sorted_xs:
        return math.nan
    k = (len(sorted_xs) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    if lo == hi:
        return sorted_xs[lo]
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (k - lo)


def latencies_ms(inserted: Sequence[Sequence[Any]], handled: Sequence[Sequence[Any]],
                 skip: set[Any] | None = None) -> tuple[list[float], int]:
    """Commit → handler-start latencies in ms, sorted, and how many jobs never started.

    `inserted` and `handled` are [key, time.time()] pairs; a key handled twice
    counts its first start.
    """
    first: dict[Any, float] = {}
    for key, t in handled:
        if key not in first or t < first[key]:
            first[key] = t
    out: list[float] = []
    missing = 0
    for key, t in inserted:
        if skip and key in skip:
            continue
        if key in first:
            out.append((first[key] - t) * 1000.0)
        else:
            missing += 1
    out.sort()
    return out, missing
