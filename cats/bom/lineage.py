"""Lineage: the graph of BOMs linked by `parents`, upward from the store and downward from the index.

A BOM names the BOMs that produced its inputs, so ancestors are a walk over content-addressed links
and need nothing but the store. Descendants are not linked from anywhere (a BOM cannot name BOMs
made after it), so they come from the local run index: every indexed BOM is read and its parents
inverted. BOMs made elsewhere join the index as they arrive (`learn`: pulled, pushed, or run for this
node by another), so what others derived shows here at once. Nodes are BOM CIDs in their canonical
text form; edges run parent -> child. A parent whose block is absent or is not a BOM becomes a node
marked `missing` so a partial history still renders.
The BOMs of sub-Orders (a BOM's `children`) are linked too, and walked with the ancestors: their
edges run from the BOM whose slices submitted them and carry `nested=True`.
"""

from __future__ import annotations

import json
import re
from collections import deque
from typing import Any

import networkx as nx
from rich.markup import escape
from rich.tree import Tree

from cats.bom import BOM, load, records
from cats.bom.index import Index
from cats.cas.cid import CID, DAG_CBOR
from cats.cas.dag import walk
from cats.cas.store import BlockStore
from cats.errors import BlockNotFound, CatsError
from cats.order import label as input_label

__all__ = ["open_bom", "graph", "ancestors", "descendants", "learn", "learn_within", "to_json", "to_dot", "to_mermaid",
           "to_tree"]


def open_bom(store: BlockStore, cid: CID | str) -> BOM:
    """Parse and load one BOM; every failure is a CatsError naming the CID, for one-line CLI errors."""
    parsed = CID.parse(cid)
    try:
        return load(store, parsed)
    except BlockNotFound:
        raise BlockNotFound(f"BOM {parsed} not found in the store", parsed) from None


def _attrs(bom: BOM | None, error: str | None = None) -> dict[str, Any]:
    """Node attributes; JSON-ready (strings, not CID objects) so every renderer can use them as they are."""
    if bom is None:
        return {"name": None, "order": None, "inputs": [], "outputs": [], "started": None, "slices": None,
                "missing": True, "error": error}
    return {"name": bom.name, "order": str(bom.order), "inputs": [input_label(c) for c in bom.inputs],
            "outputs": [str(c) for c in bom.outputs], "started": bom.invoice.started,
            "slices": bom.invoice.slices, "missing": False, "error": None}


def _try_load(store: BlockStore, cid: CID) -> tuple[BOM | None, str | None]:
    """A linked BOM, or None and why: a broken link must not hide the rest of the history."""
    try:
        return load(store, cid), None
    except CatsError as e:
        return None, str(e)


def _walk_up(store: BlockStore, g: nx.DiGraph, root: str, bom: BOM) -> None:
    """Add every ancestor of root (already a node) with its parent -> child edges, and every
    sub-Order's BOM of those (and of their own ancestors) with nested edges."""
    boms = {root: bom}
    stack = [root]

    def reach(cid: CID) -> str:
        key = str(cid)
        if key not in g:
            found, error = _try_load(store, cid)
            g.add_node(key, **_attrs(found, error))
            if found is not None:
                boms[key] = found
                stack.append(key)
        return key

    while stack:
        here = stack.pop()
        for parent in boms[here].parents:
            g.add_edge(reach(parent), here)
        for child in boms[here].children:
            g.add_edge(here, reach(child), nested=True)


def learn(store: BlockStore, index: Index, cid: CID) -> BOM:
    """Index a BOM made elsewhere (pulled, pushed here, or run for this node by another) as the producer
    of its outputs, and its slice results' encodings: an Order here that reads one of them names it as
    parent, its lineage shows it as derived from its parents at once, and `cats.read` decodes its results.
    What this node made itself stays its own, and it never becomes this node's memoized run of its Order.
    CatsError, and nothing indexed, unless it decodes as a BOM whose record blocks are here."""
    bom = load(store, cid)
    results = [(str(r.output), r.encoding) for r in records(store, bom)]
    index.learn_outputs(str(cid), [str(o) for o in bom.outputs], results)
    return bom


def learn_within(store: BlockStore, index: Index, root: CID) -> list[str]:
    """`learn` every BOM in the DAG under root, which must be here whole (a pinned DAG, say): those that
    are BOMs and intact, in walk order. Other blocks, and blocks that only look like BOMs, teach nothing."""
    learned = []
    for cid in walk(store, root):
        if cid.codec != DAG_CBOR or b"cats.bom" not in store.get(cid):
            continue
        try:
            learn(store, index, cid)
        except CatsError:
            continue
        learned.append(str(cid))
    return learned


def _children(store: BlockStore, index: Index) -> tuple[dict[str, set[str]], dict[str, BOM]]:
    """Invert `parents` over every BOM the index knows (run here or pulled); unreadable BOMs are
    skipped (they name no parents we can see)."""
    children: dict[str, set[str]] = {}
    boms: dict[str, BOM] = {}
    for key in index.boms():
        try:
            bom = load(store, CID.parse(key))
        except CatsError:
            continue
        boms[key] = bom
        for parent in bom.parents:
            children.setdefault(str(parent), set()).add(key)
    return children, boms


def _below(children: dict[str, set[str]], root: str) -> list[str]:
    """Descendants of root in breadth-first order (each once)."""
    seen: set[str] = {root}
    order: list[str] = []
    queue = deque([root])
    while queue:
        for child in sorted(children.get(queue.popleft(), ())):
            if child not in seen:
                seen.add(child)
                order.append(child)
                queue.append(child)
    return order


def graph(store: BlockStore, cid: CID | str, index: Index | None = None) -> nx.DiGraph:
    """The lineage of one BOM: its ancestors from the store and, given an index, its descendants.

    The root must load (a CatsError naming it otherwise); `g.graph["root"]` holds its CID. Only
    edges between nodes of the graph are kept, so a descendant's unrelated other parents are left out.
    """
    bom = open_bom(store, cid)
    root = str(CID.parse(cid))
    g = nx.DiGraph(root=root)
    g.add_node(root, **_attrs(bom))
    _walk_up(store, g, root, bom)
    if index is not None:
        children, boms = _children(store, index)
        below = [d for d in _below(children, root) if d not in g]
        for key in below:
            g.add_node(key, **_attrs(boms[key]))
        for key in below:
            for parent in boms[key].parents:
                if str(parent) in g:
                    g.add_edge(str(parent), key)
    return g


def ancestors(store: BlockStore, cid: CID | str) -> set[str]:
    """CIDs of every BOM that fed into cid, transitively (missing ones included)."""
    g = graph(store, cid)
    inputs = nx.subgraph_view(g, filter_edge=lambda p, c: not _nested(g, p, c))
    return set(nx.ancestors(inputs, g.graph["root"]))


def descendants(store: BlockStore, index: Index, cid: CID | str) -> set[str]:
    """CIDs of every indexed BOM that used cid's outputs, transitively."""
    children, _ = _children(store, index)
    return set(_below(children, str(CID.parse(cid))))


def _nested(g: nx.DiGraph, parent: str, child: str) -> bool:
    """Whether the edge links a sub-Order's BOM to the BOM that submitted it (not an input's producer)."""
    return bool(g.edges[parent, child].get("nested"))


def _parents(g: nx.DiGraph, node: str) -> list[str]:
    return sorted(p for p in g.predecessors(node) if not _nested(g, p, node))


def _derived(g: nx.DiGraph, node: str, nested: bool = False) -> list[str]:
    """The BOMs built on node's outputs or, with nested, its sub-Orders' BOMs."""
    return sorted(c for c in g.successors(node) if _nested(g, node, c) == nested)


# -- renderers ----------------------------------------------------------------------------------------
def _ordered(g: nx.DiGraph) -> list[str]:
    """Parents before children, ties by CID: stable output for diffs and tests."""
    return list(nx.lexicographical_topological_sort(g))


def _edges(g: nx.DiGraph) -> list[tuple[str, str]]:
    return sorted(g.edges)


def to_json(g: nx.DiGraph) -> str:
    """The graph as one JSON document: root, nodes with their attributes, and parent -> child edges
    (`nested` on those to sub-Orders' BOMs)."""
    return json.dumps({"root": g.graph.get("root"),
                       "nodes": [{"cid": n, **g.nodes[n]} for n in _ordered(g)],
                       "edges": [{"parent": p, "child": c, **({"nested": True} if _nested(g, p, c) else {})}
                                 for p, c in _edges(g)]}, indent=2)


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _caption(g: nx.DiGraph, node: str) -> list[str]:
    """Label lines shared by DOT and Mermaid: name (or state), CID, start time."""
    attrs = g.nodes[node]
    if attrs.get("missing"):
        return ["missing", node]
    lines = [attrs.get("name") or "(unnamed)", node]
    if attrs.get("started"):
        lines.append(attrs["started"])
    return lines


def to_dot(g: nx.DiGraph) -> str:
    """Graphviz DOT; every id and label is a quoted, escaped string, so any CID or name is valid."""
    root = g.graph.get("root")
    out = ["digraph lineage {", '  node [shape=box, fontname="monospace"];']
    for node in _ordered(g):
        label = "\\n".join(_dot_quote(line)[1:-1] for line in _caption(g, node))
        extra = ", style=dashed, color=red" if g.nodes[node].get("missing") else ""
        extra += ", penwidth=2" if node == root else ""
        out.append(f'  {_dot_quote(node)} [label="{label}"{extra}];')
    out += [f"  {_dot_quote(p)} -> {_dot_quote(c)}{' [style=dashed]' if _nested(g, p, c) else ''};"
            for p, c in _edges(g)]
    out.append("}")
    return "\n".join(out) + "\n"


_MERMAID_ESCAPES = {'"': "#quot;", "#": "#35;", "<": "#lt;", ">": "#gt;", "\n": " "}


def _mermaid_id(cid: str) -> str:
    """A Mermaid node id for a CID: Mermaid ids cannot be quoted, so prefix and keep word characters."""
    return "n_" + re.sub(r"\W", "_", cid)


def _mermaid_text(text: str) -> str:
    return "".join(_MERMAID_ESCAPES.get(ch, ch) for ch in text)


def to_mermaid(g: nx.DiGraph) -> str:
    """A Mermaid flowchart; labels are quoted with entity escapes, ids are `n_<CID>`."""
    root = g.graph.get("root")
    out = ["flowchart TD"]
    for node in _ordered(g):
        label = "<br/>".join(_mermaid_text(line) for line in _caption(g, node))
        out.append(f'  {_mermaid_id(node)}["{label}"]')
    out += [f"  {_mermaid_id(p)} {'-.->' if _nested(g, p, c) else '-->'} {_mermaid_id(c)}" for p, c in _edges(g)]
    missing = [_mermaid_id(n) for n in _ordered(g) if g.nodes[n].get("missing")]
    out.append("  classDef missing stroke-dasharray: 5 5,stroke:#c00")
    if missing:
        out.append(f"  class {','.join(missing)} missing")
    if root in g:
        out.append("  classDef root stroke-width:3px")
        out.append(f"  class {_mermaid_id(root)} root")
    return "\n".join(out) + "\n"


def _tree_label(g: nx.DiGraph, node: str) -> str:
    attrs = g.nodes[node]
    if attrs.get("missing"):
        return f"[red]missing[/red] {node}"
    name = escape(attrs.get("name") or "(unnamed)")
    return f"[bold]{name}[/bold] {node} [dim]{escape(attrs.get('started') or '')}[/dim]".rstrip()


def _fill(branch: Tree, g: nx.DiGraph, node: str, shown: set[str]) -> None:
    """Inputs, outputs, parents and sub-Orders of node under branch; a BOM reached twice is expanded once."""
    attrs = g.nodes[node]
    if attrs.get("missing"):
        branch.add(f"[red]{escape(attrs.get('error') or 'not in the store')}[/red]")
        return
    for title in ("inputs", "outputs"):
        if attrs.get(title):
            sub = branch.add(title)
            for cid in attrs[title]:
                sub.add(cid)
    for title, linked in (("parents", _parents(g, node)), ("sub-Orders", _derived(g, node, nested=True))):
        if linked:
            sub = branch.add(title)
            for other in linked:
                if other in shown:
                    sub.add(_tree_label(g, other) + " [dim](shown above)[/dim]")
                    continue
                shown.add(other)
                _fill(sub.add(_tree_label(g, other)), g, other, shown)


def _fill_down(branch: Tree, g: nx.DiGraph, node: str, shown: set[str]) -> None:
    for child in _derived(g, node):
        if child in shown:
            continue
        shown.add(child)
        _fill_down(branch.add(_tree_label(g, child)), g, child, shown)


def to_tree(g: nx.DiGraph, root: str) -> Tree:
    """A rich Tree: the BOM, its inputs and outputs, its parents and sub-Orders recursively, then what
    was derived from it."""
    tree = Tree(_tree_label(g, root))
    _fill(tree, g, root, {root})
    if _derived(g, root):
        _fill_down(tree.add("derived"), g, root, {root})
    return tree
