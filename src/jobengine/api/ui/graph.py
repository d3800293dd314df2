"""A job's place in its DAG as a small graph: its parents above, its children below.

Laid out here, drawn by the template as SVG (so every label is escaped like
any other text). Each node links to its job's page and is coloured by status.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobengine.domain.models import Job

#: Nodes shown per row; the rest are counted in a "+N more" label.
PER_ROW = 6
NODE_W = 176
NODE_H = 44
GAP_X = 20
ROW_GAP = 46


@dataclass(frozen=True, slots=True)
class Node:
    """A job's box: its top-left corner, and what it says."""

    x: int
    y: int
    job_id: int
    kind: str
    status: str
    current: bool


@dataclass(frozen=True, slots=True)
class Edge:
    """A dependency, from the parent's bottom to the child's top."""

    x1: int
    y1: int
    x2: int
    y2: int


@dataclass(frozen=True, slots=True)
class Graph:
    """The drawing: its size, boxes, lines, and how many jobs each row left out."""

    width: int
    height: int
    nodes: list[Node]
    edges: list[Edge]
    more_parents: int
    more_children: int
    node_w: int = NODE_W
    node_h: int = NODE_H


def _row(jobs: list[Job], y: int, width: int) -> list[Node]:
    shown = jobs[:PER_ROW]
    row_w = len(shown) * NODE_W + max(0, len(shown) - 1) * GAP_X
    x0 = (width - row_w) // 2
    return [Node(x0 + i * (NODE_W + GAP_X), y, j.id, j.kind, j.status.value, False)
            for i, j in enumerate(shown)]


def dag_graph(job: Job, parents: list[Job], children: list[Job]) -> Graph | None:
    """The graph of `job` with its parents and children, or None when it has neither."""
    if not parents and not children:
        return None
    columns = max(1, min(PER_ROW, max(len(parents), len(children))))
    width = columns * NODE_W + (columns - 1) * GAP_X + 20
    y = 10
    top = _row(parents, y, width)
    if top:
        y += NODE_H + ROW_GAP
    me = Node((width - NODE_W) // 2, y, job.id, job.kind, job.status.value, True)
    y += NODE_H + ROW_GAP
    bottom = _row(children, y, width)
    height = (y + NODE_H if bottom else me.y + NODE_H) + 24
    edges = [Edge(p.x + NODE_W // 2, p.y + NODE_H, me.x + NODE_W // 2, me.y) for p in top]
    edges += [Edge(me.x + NODE_W // 2, me.y + NODE_H, c.x + NODE_W // 2, c.y) for c in bottom]
    return Graph(width, height, [*top, me, *bottom], edges,
                 max(0, len(parents) - PER_ROW), max(0, len(children) - PER_ROW))
