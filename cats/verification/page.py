"""A lineage as one self-contained HTML page: every BOM with its Order, inputs, outputs, slices,
signers and integrity state, drawn as a DAG. No network: styles and script are inline.

The cards are plain HTML in columns (a BOM's column is its depth in the lineage), so the page reads
even without script; the script only draws the edges between them and copies CIDs on click.
Integrity is checked here without re-executing anything (every block of each BOM's DAG present and
hashing to its CID); `cats verify` re-executes.
"""

from __future__ import annotations

import html
import json
from itertools import islice
from typing import Any

import networkx as nx

from cats.bom import lineage, records
from cats.bom.index import Index
from cats.cas.cid import CID
from cats.cas.store import BlockStore

# Slices listed per BOM (the page of a million-slice run stays small)
_SLICES_SHOWN = 200


def lineage_page(store: BlockStore, cid: CID | str, index: Index | None = None) -> str:
    """The page for one BOM's lineage (descendants too, given the run index)."""
    from cats.verification.audit import verify

    g = lineage.graph(store, cid, index)
    for node, attrs in g.nodes(data=True):
        if attrs["missing"]:
            attrs["state"], attrs["detail"] = "missing", attrs["error"] or "not in this store"
            attrs["signers"], attrs["records"] = [], []
            continue
        bom = lineage.open_bom(store, node)
        attrs["records"] = [(r.input.name or r.input.origin, str(r.output))
                            for r in islice(records(store, bom), _SLICES_SHOWN)]
        report = verify(store, CID.parse(node), integrity=True)  # signatures are checked there too
        attrs["signers"] = report.signers
        attrs["state"] = "intact" if report.verified else "altered"
        attrs["detail"] = "; ".join(f"{p.reason}: {p.detail}" for p in report.problems[:3]) or \
            f"{report.blocks_checked} blocks present and matching their CIDs"
    return render(g)


def render(g: nx.DiGraph) -> str:
    """The HTML of a lineage graph whose nodes carry `state`, `detail` and `signers` besides the usual."""
    depth: dict[str, int] = {}
    for node in nx.topological_sort(g):
        depth[node] = max((depth[p] + 1 for p in g.predecessors(node)), default=0)
    columns: dict[int, list[str]] = {}
    for node in sorted(g, key=lambda n: (g.nodes[n].get("started") or "", n)):
        columns.setdefault(depth[node], []).append(node)
    cards = "\n".join(
        f'<div class="column">{"".join(_card(g, n) for n in columns[d])}</div>' for d in sorted(columns))
    edges = [{"from": a, "to": b, "nested": bool(data.get("nested"))} for a, b, data in g.edges(data=True)]
    root = g.graph["root"]
    return _PAGE.format(title=html.escape(f"Lineage of {g.nodes[root].get('name') or root}"), root=html.escape(root),
                        count=len(g), cards=cards, edges=json.dumps(edges).replace("</", "<\\/"))


def _cid(text: str) -> str:
    """A CID (or a pinned URI) shortened for the eye, whole in the clipboard."""
    short = text if len(text) <= 24 else f"{text[:12]}…{text[-8:]}"
    return f'<button class="cid" data-copy="{html.escape(text)}" title="{html.escape(text)} (click to copy)">' \
           f"{html.escape(short)}</button>"


def _slices(a: dict[str, Any]) -> str:
    """The slice count, opening onto each slice's input and output (the first few hundred)."""
    rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{_cid(out)}</td></tr>" for name, out in a["records"])
    more = a["slices"] - len(a["records"])
    rows += f'<tr><td colspan="2">and {more} more (cats bom show)</td></tr>' if more > 0 else ""
    return f'<details><summary>{a["slices"]}</summary><table class="slices">{rows}</table></details>'


def _card(g: nx.DiGraph, node: str) -> str:
    a: dict[str, Any] = g.nodes[node]
    rows = [("BOM", _cid(node))]
    if not a["missing"]:
        rows += [("Order", _cid(a["order"])),
                 ("inputs", " ".join(_cid(i) for i in a["inputs"])),
                 ("outputs", " ".join(_cid(o) for o in a["outputs"])),
                 ("slices", _slices(a)),
                 ("signed by", " ".join(_cid(d) for d in a["signers"]) or "nobody")]
    body = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
    name = html.escape(a.get("name") or ("missing BOM" if a["missing"] else "unnamed Order"))
    root = " root" if node == g.graph["root"] else ""
    return (f'<section class="bom {a["state"]}{root}" data-cid="{html.escape(node)}">'
            f'<h2>{name}</h2><p class="state" title="{html.escape(a["detail"])}">{a["state"]}</p>'
            f"<table>{body}</table></section>")


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 0; padding: 16px; background: #f6f7f9; color: #1b1f24; }}
header {{ margin-bottom: 16px; }} header code {{ font-size: 12px; }}
#dag {{ position: relative; display: flex; gap: 72px; align-items: flex-start; }}
.column {{ display: flex; flex-direction: column; gap: 24px; }}
.bom {{ position: relative; z-index: 1; background: #fff; border: 2px solid #8c959f; border-radius: 8px;
        padding: 8px 12px; width: 330px; }}
.bom.root {{ box-shadow: 0 0 0 3px #0969da55; }}
.bom h2 {{ font-size: 15px; margin: 0 0 4px; }}
.bom.intact {{ border-color: #1a7f37; }} .bom.altered {{ border-color: #cf222e; }}
.bom.missing {{ border-style: dashed; }}
.state {{ margin: 0 0 6px; font-size: 12px; font-weight: 600; text-transform: uppercase; }}
.intact .state {{ color: #1a7f37; }} .altered .state {{ color: #cf222e; }} .missing .state {{ color: #6e7781; }}
table {{ border-collapse: collapse; }} th {{ text-align: left; font-weight: 500; color: #57606a; padding-right: 8px;
  vertical-align: top; white-space: nowrap; }}
.cid {{ font: 12px ui-monospace, monospace; background: #eaeef2; border: 0; border-radius: 4px; padding: 1px 4px;
        margin: 1px; cursor: copy; }}
.cid.copied {{ background: #1a7f37; color: #fff; }}
summary {{ cursor: pointer; }} .slices td {{ font-size: 12px; padding-right: 6px; }}
svg {{ position: absolute; left: 0; top: 0; overflow: visible; pointer-events: none; }}
path {{ fill: none; stroke: #57606a; stroke-width: 2; }} path.nested {{ stroke-dasharray: 6 4; }}
</style></head>
<body>
<header><h1>{title}</h1><p>BOM <code>{root}</code> · {count} BOM(s). Arrows run from the BOM that made an input
to the BOM that used it; dashed arrows to the sub-Orders a slice submitted. A border says the integrity
check: green, every block present and matching its CID; red, altered; dashed, not in this store.</p></header>
<div id="dag">
{cards}
<svg id="edges"></svg>
<svg width="0" height="0" aria-hidden="true"><defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5"
  markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#57606a"/></marker></defs></svg>
</div>
<script id="edge-data" type="application/json">{edges}</script>
<script>
(function () {{
  const dag = document.getElementById("dag"), svg = document.getElementById("edges");
  const edges = JSON.parse(document.getElementById("edge-data").textContent);
  const card = cid => dag.querySelector(`section[data-cid="${{cid}}"]`);
  function draw() {{
    svg.setAttribute("width", dag.scrollWidth); svg.setAttribute("height", dag.scrollHeight);
    svg.replaceChildren();
    const origin = dag.getBoundingClientRect();
    for (const e of edges) {{
      const a = card(e.from), b = card(e.to);
      if (!a || !b) continue;
      const ra = a.getBoundingClientRect(), rb = b.getBoundingClientRect();
      const x1 = ra.right - origin.left, y1 = ra.top + ra.height / 2 - origin.top;
      const x2 = rb.left - origin.left, y2 = rb.top + rb.height / 2 - origin.top;
      const p = document.createElementNS("http://www.w3.org/2000/svg", "path");
      p.setAttribute("d", `M${{x1}},${{y1}} C${{x1 + 36}},${{y1}} ${{x2 - 36}},${{y2}} ${{x2}},${{y2}}`);
      p.setAttribute("data-from", e.from); p.setAttribute("data-to", e.to);
      p.setAttribute("marker-end", "url(#arrow)");
      if (e.nested) p.setAttribute("class", "nested");
      svg.appendChild(p);
    }}
  }}
  document.addEventListener("click", ev => {{
    const button = ev.target.closest(".cid");
    if (!button) return;
    navigator.clipboard.writeText(button.dataset.copy).then(() => {{
      button.classList.add("copied"); setTimeout(() => button.classList.remove("copied"), 800);
    }});
  }});
  window.addEventListener("resize", draw);
  draw();
}})();
</script>
</body></html>
"""
