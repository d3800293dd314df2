"""The results table (medians, min-max, ratio jobengine / each peer, target) and JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.results import Metric, Results
from bench.stats import Summary
from bench.systems import System


def _num(x: float) -> str:
    if math.isnan(x):
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def cell(summary: Summary | None) -> str:
    """`median [min-max]`, prefixed with the bound ('<' or '>') when a run timed out."""
    if summary is None:
        return ""
    text = summary.bound + _num(summary.median)
    if summary.n > 1:
        text += f" [{_num(summary.low)}-{_num(summary.high)}]"
    return text


def ratio(summaries: dict[str, Summary], peer: str) -> str:
    """jobengine's median over the peer's, e.g. `2.10x`."""
    mine, theirs = summaries.get("jobengine"), summaries.get(peer)
    if mine is None or theirs is None or theirs.median == 0:
        return ""
    return f"{mine.median / theirs.median:.2f}x"


def _with_parts(text: str, results: Results, metric: Metric, column: str) -> str:
    """`total (part + part)`: the medians of the metric's parts, "?" where one is missing."""
    if not metric.parts or not text:
        return text
    medians = [results.summaries(p).get(column) for p in metric.parts]
    return text + " (" + " + ".join("?" if m is None else _num(m.median) for m in medians) + ")"


def rows(results: Results, metrics: list[Metric], systems: list[System]) -> list[list[str]]:
    """The table: header first, then one row per metric that has figures.

    The columns are the systems, then the extra columns (`Results.column`) that
    have a figure in some row; the ratios are jobengine's over each peer's.
    """
    peers = [s for s in systems if s.name != "jobengine"]
    shown = [m for m in metrics if results.summaries(m.key)]
    extra = [(k, label) for k, label in results.columns.items()
             if any(k in results.summaries(m.key) for m in shown)]
    columns = [(s.name, s.label) for s in systems] + extra
    header = ["metric", "unit", *[label for _, label in columns],
              *[f"jobengine / {p.label}" for p in peers], "target", "met"]
    out = [header]
    for metric in shown:
        summaries = results.summaries(metric.key)
        met = metric.check(summaries) if metric.check else None
        out.append([
            metric.label, metric.unit,
            *[_with_parts(cell(summaries.get(k)), results, metric, k) for k, _ in columns],
            *[ratio(summaries, p.name) for p in peers], metric.target,
            "" if met is None else ("yes" if met else "NO"),
        ])
    return out


def markdown(table: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    return "\n".join(lines)


def rich_table(table: list[list[str]], title: str) -> Any:
    """The same table for a terminal."""
    from rich.table import Table

    t = Table(title=title)
    for i, name in enumerate(table[0]):
        t.add_column(name, justify="left" if i == 0 else "right")
    for row in table[1:]:
        t.add_row(*row)
    return t


def write_json(path: Path, results: Results, info: dict[str, Any]) -> None:
    """All figures with every run's value, the environment, and the notes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**info, **results.as_json()}, indent=2, default=str) + "\n")
