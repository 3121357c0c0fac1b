"""A left-to-right layered layout of a small DAG of boxes, computed on the server so a page needs no
script to place anything: columns by longest path (sources pulled next to what reads them), rows
ordered by the barycenters of their neighbours, each box centred on its neighbours where the boxes
above leave room. Good enough for lineages of tens of boxes; no crossing minimisation beyond that.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from statistics import fmean

import networkx as nx

COLUMN_GAP = 56
ROW_GAP = 18
_SWEEPS = 4


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    width: int
    height: int


def layout(g: nx.DiGraph, sizes: dict[str, tuple[int, int]]) -> tuple[dict[str, Box], list[str]]:
    """Boxes for every node of the acyclic g (sizes: width, height), and the edges as SVG path data
    (from the middle of a box's right side to the middle of the next one's left side), in g's edge order."""
    layer = _layers(g)
    columns: dict[int, list[str]] = {}
    for node in g:  # g's insertion order breaks ties
        columns.setdefault(layer[node], []).append(node)
    order = [columns[k] for k in sorted(columns)]
    for sweep in range(_SWEEPS):
        forward = sweep % 2 == 0
        for i in range(1, len(order)) if forward else range(len(order) - 2, -1, -1):
            rank = {n: r for r, n in enumerate(order[i - 1 if forward else i + 1])}
            near = g.predecessors if forward else g.successors
            order[i] = _by_barycenter(order[i], {n: [rank[m] for m in near(n) if m in rank] for n in order[i]})
    x, left = {}, 0
    for column in order:
        for node in column:
            x[node] = left
        left += max(sizes[n][0] for n in column) + COLUMN_GAP
    centre: dict[str, float] = {}
    for i, column in enumerate(order):  # stacked, then each box eased towards what feeds it
        _stack(column, sizes, centre, {n: _mean(centre, g.predecessors(n)) for n in column} if i else {})
    for column in reversed(order):  # sources eased towards what reads them
        _stack(column, sizes, centre,
               {n: _mean(centre, g.successors(n)) for n in column if not any(True for _ in g.predecessors(n))})
    boxes = {n: Box(x[n], round(centre[n] - sizes[n][1] / 2), *sizes[n]) for n in g}
    return boxes, [_path(boxes[a], boxes[b]) for a, b in g.edges]


def _layers(g: nx.DiGraph) -> dict[str, int]:
    """Column of each node: its longest path from a source; a source sits just left of its first reader."""
    layer: dict[str, int] = {}
    topo = list(nx.topological_sort(g))
    for node in topo:
        layer[node] = max((layer[p] + 1 for p in g.predecessors(node)), default=0)
    for node in reversed(topo):
        readers = [layer[s] for s in g.successors(node)]
        if readers and g.in_degree(node) == 0:
            layer[node] = min(readers) - 1
    low = min(layer.values(), default=0)
    return {n: k - low for n, k in layer.items()}


def _by_barycenter(column: list[str], ranks: dict[str, list[int]]) -> list[str]:
    """column reordered by the mean rank of each node's neighbours in the column swept from; nodes
    without such neighbours keep their place."""
    keyed = []
    for i, node in enumerate(column):
        near = ranks[node]
        keyed.append((fmean(near) if near else float(i), i, node))
    return [node for _, _, node in sorted(keyed)]


def _mean(centre: dict[str, float], nodes: Iterable[str]) -> float | None:
    placed = [centre[n] for n in nodes if n in centre]
    return fmean(placed) if placed else None


def _stack(column: list[str], sizes: dict[str, tuple[int, int]], centre: dict[str, float],
           wanted: dict[str, float | None]) -> None:
    """Place column top to bottom in its order, each box at its wanted centre (else where it was, else
    right below the previous one) unless that would overlap the box above; never above y = 0."""
    floor = 0.0
    for node in column:
        half = sizes[node][1] / 2
        want = wanted.get(node)
        if want is None:
            want = centre.get(node, floor + half)
        centre[node] = max(want, floor + half)
        floor = centre[node] + half + ROW_GAP


def _path(a: Box, b: Box) -> str:
    x1, y1 = a.x + a.width, a.y + a.height / 2
    x2, y2 = b.x, b.y + b.height / 2
    bend = max(COLUMN_GAP / 2, (x2 - x1) / 3)
    return f"M{x1:.0f},{y1:.0f} C{x1 + bend:.0f},{y1:.0f} {x2 - bend:.0f},{y2:.0f} {x2:.0f},{y2:.0f}"
