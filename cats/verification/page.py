"""A lineage as one self-contained HTML page: the data each run read and made as boxes (a folder's first
entries with their sizes), the runs between them, the BOMs that fed them and their sub-Orders' BOMs,
left to right; each run with its Order, function, slices, time, signers (by their names in the trust
list, the DID on hover) and integrity state. No network: styles are inline and the layout is computed
here (`layout`), so the picture reads without script; the script only copies CIDs and opens a run's
slice table.

Integrity is checked here without re-executing anything (every block of each BOM's DAG present and
hashing to its CID); `cats verify` re-executes. Folder listings read only folder blocks already in the
store, never fetch: a peer's BOM whose data lives elsewhere shows its CIDs and says so.
"""

from __future__ import annotations

import contextlib
import html
from dataclasses import dataclass, field
from itertools import islice

import networkx as nx

from cats.bom import BOM, lineage, records
from cats.bom.index import Index
from cats.cas import dagcbor, dagpb, reader, unixfs
from cats.cas.cid import CID, DAG_PB, RAW
from cats.cas.store import BlockStore
from cats.config import home
from cats.data.resolvers import Info
from cats.errors import CatsError
from cats.identity import Identity
from cats.identity.trust import Trust
from cats.order import Order, Source
from cats.order import label as input_label
from cats.verification.layout import layout

# Slices listed per BOM (the page of a million-slice run stays small), folder entries drawn per data box
_SLICES_SHOWN = 200
_LOG_SHOWN = 4 << 10  # the end of each slice's log shown in its table (the whole: `cats cat CID`)
_LOGS_SHOWN = 512 << 10  # of every log on one page
_ENTRIES_SHOWN = 8
# Box geometry in CSS pixels: the page's style sets the same line height, padding and border
_LINE, _HEAD, _FRAME = 18, 24, 20
_DATA_WIDTH, _RUN_WIDTH = 230, 280


@dataclass
class _Entry:
    name: str
    cid: str
    size: int | None  # None: the entry's root block is not here and its link gives no exact size


@dataclass
class _Data:
    """A data box: an input or output, by CID or pinned URI, and what the store shows of it."""

    label: str
    kind: str = "data"  # folder, file, URI, or data when its root block is not here
    size: int | None = None
    count: int | None = None  # a folder's entries; None for a sharded folder (counting would read every shard)
    entries: list[_Entry] = field(default_factory=list)
    note: str | None = None
    roles: set[str] = field(default_factory=set)


@dataclass
class _Record:
    """A slice in its run's table: its input, output and the end of what it printed, by stream."""

    name: str
    output: str
    printed: list[tuple[str, str, int | None]] = field(default_factory=list)  # (stream, its last bytes, size)


@dataclass
class _Run:
    """A run box: one BOM, or a BOM the lineage links that is not here."""

    cid: str
    index: int
    missing: bool
    name: str | None = None
    state: str = "missing"
    detail: str = ""
    order: str = ""
    entry: str | None = None
    slices: int = 0
    counts: str = ""
    took: float = 0.0
    started: str = ""
    signers: list[tuple[str, str]] = field(default_factory=list)  # (shown name, DID)
    records: list[_Record] = field(default_factory=list)


def lineage_page(store: BlockStore, cid: CID | str, index: Index | None = None) -> str:
    """The page for one BOM's lineage (descendants too, given the run index)."""
    from cats.verification.audit import verify

    g = lineage.graph(store, cid, index)
    names = _signer_names()
    runs: dict[str, _Run] = {}
    boms: dict[str, BOM] = {}
    budget = [_LOGS_SHOWN]
    for i, node in enumerate(_ordered(g)):
        attrs = g.nodes[node]
        if attrs["missing"]:
            runs[node] = _Run(node, i, True, detail=attrs["error"] or "not in this store")
            continue
        bom = boms[node] = lineage.open_bom(store, node)
        report = verify(store, CID.parse(node), integrity=True)  # signatures are checked there too
        inv = bom.invoice
        counts = f"{inv.executed} run" + (f", {inv.reused} reused" if inv.reused else "") + \
            (f", {inv.resumed} resumed" if inv.resumed else "")
        runs[node] = _Run(
            node, i, False, name=bom.name, state="intact" if report.verified else "altered",
            detail="; ".join(f"{p.reason}: {p.detail}" for p in report.problems[:3])
            or f"{report.blocks_checked} blocks present and matching their CIDs",
            order=str(bom.order), entry=_entry(store, bom.order), slices=inv.slices, counts=counts,
            took=inv.duration_s, started=inv.started, signers=[(names.get(d, _short(d)), d) for d in report.signers],
            records=_records(store, bom, budget))
    data: dict[str, _Data] = {}
    for bom in boms.values():
        for source in bom.inputs:
            data.setdefault(input_label(source), _look(store, source)).roles.add("input")
        for out in bom.outputs:
            data.setdefault(str(out), _look(store, out)).roles.add("output")
    return render(g, runs, boms, data)


def render(g: nx.DiGraph, runs: dict[str, _Run], boms: dict[str, BOM], data: dict[str, _Data]) -> str:
    """The HTML of a lineage graph, its runs' and data's facts gathered."""
    picture = _picture(g, boms)
    sizes = {key: (_RUN_WIDTH, _height(_run_lines(runs[key[4:]]))) if key.startswith("run:")
             else (_DATA_WIDTH, _height(_data_lines(data[picture.nodes[key]["label"]]))) for key in picture}
    boxes, paths = layout(picture, sizes)
    root = g.graph["root"]
    parts = []
    for key, box in boxes.items():
        style = f"left:{box.x}px;top:{box.y}px;width:{box.width}px;height:{box.height}px"
        parts.append(_run_box(runs[key[4:]], key, style, root) if key.startswith("run:")
                     else _data_box(data[picture.nodes[key]["label"]], key, style))
    for (a, b, attrs), d in zip(picture.edges(data=True), paths, strict=True):
        parts.append(f'<path d="{d}" data-from="{html.escape(a)}" data-to="{html.escape(b)}" '
                     f'class="{attrs["kind"]}" marker-end="url(#arrow)"/>')
    width = max((b.x + b.width for b in boxes.values()), default=0) + 8
    height = max((b.y + b.height for b in boxes.values()), default=0) + 8
    title = html.escape(f"Lineage of {g.nodes[root].get('name') or root}")
    slices = "\n".join(_slice_table(runs[n]) for n in _ordered(g) if not runs[n].missing)
    return _PAGE.format(title=title, root=html.escape(root), runs=len(g), data=len(data), width=width, height=height,
                        boxes="\n".join(p for p in parts if p.startswith("<section")),
                        edges="\n".join(p for p in parts if p.startswith("<path")), slices=slices)


def _ordered(g: nx.DiGraph) -> list[str]:
    """BOMs parents first, then by start time: the order boxes are first laid out in."""
    started = {n: g.nodes[n].get("started") or "" for n in g}
    return list(nx.lexicographical_topological_sort(g, key=lambda n: (started[n], n)))


def _picture(g: nx.DiGraph, boms: dict[str, BOM]) -> nx.DiGraph:
    """The graph drawn: data -> run for inputs, run -> data for outputs, run -> run for a sub-Order's BOM
    (`nested`) and for a parent whose outputs are not this run's inputs as they are (or is not here)."""
    p = nx.DiGraph()
    order = _ordered(g)
    for node in order:
        p.add_node(f"run:{node}")
    for node in order:
        for source in boms[node].inputs if node in boms else ():
            key = f"data:{input_label(source)}"
            p.add_node(key, label=input_label(source))
            p.add_edge(key, f"run:{node}", kind="input")
    for node in order:
        for out in boms[node].outputs if node in boms else ():
            key = f"data:{out}"
            if key in p and nx.has_path(p, key, f"run:{node}"):  # an output equal to its own lineage's input
                key = f"data:{out}@{node}"
            p.add_node(key, label=str(out))
            p.add_edge(f"run:{node}", key, kind="output")
    for a, b, attrs in g.edges(data=True):
        ra, rb = f"run:{a}", f"run:{b}"
        if attrs.get("nested"):
            p.add_edge(ra, rb, kind="nested")
        elif not any(p.has_edge(d, rb) for d in p.successors(ra)):
            p.add_edge(ra, rb, kind="parent")
    return p


def _look(store: BlockStore, source: Source) -> _Data:
    """What the store shows of an input or output without fetching anything: its kind and size and, for
    a folder whose block is here, its first entries."""
    found = _Data(input_label(source))
    if not isinstance(source, CID):
        found.kind, found.size = "URI", source.size if isinstance(source, Info) else None
        return found
    if not store.has(source):
        found.note = "not in this store"
        return found
    if source.codec == RAW:
        found.kind, found.size = "file", store.size(source)
        return found
    if source.codec != DAG_PB:
        return found
    try:
        node = dagpb.decode(store.get(source))
        fs = unixfs.decode(node.data or b"")
        if fs.kind not in (unixfs.Kind.DIRECTORY, unixfs.Kind.HAMT_SHARD):
            found.kind, found.size = "file", reader.stat(store, source).size
            return found
        found.kind, found.size = "folder", sum(link.tsize or 0 for link in node.links)
        found.count = len(node.links) if fs.kind == unixfs.Kind.DIRECTORY else None
        for name, child, tsize in islice(reader.iter_entries(store, source), _ENTRIES_SHOWN + 1):
            found.entries.append(_Entry(name, str(child), _size_of(store, child, tsize)))
    except CatsError as e:  # a block of the folder is absent, altered or unreadable: shown, never fatal
        found.note = f"listing stopped: {e}"
    return found


def _size_of(store: BlockStore, cid: CID, tsize: int) -> int | None:
    """A folder entry's size: a raw block's link size is its size; a UnixFS node's root block says, if here."""
    if cid.codec == RAW:
        return tsize
    if cid.codec == DAG_PB and store.has(cid):
        try:
            return reader.stat(store, cid).size
        except CatsError:
            return None
    return None


def _entry(store: BlockStore, order: CID) -> str | None:
    """The Order's function entry point, when its block is here."""
    try:
        return Order.model_validate(dagcbor.decode(store.get(order))).function.entry
    except (CatsError, ValueError):  # absent or unreadable: the integrity state says which
        return None


def _records(store: BlockStore, bom: BOM, budget: list[int]) -> list[_Record]:
    try:
        return [_Record(r.input.name or r.input.origin, str(r.output),
                        [(k, *_printed(store, cid, budget)) for k in ("stdout", "stderr") if (cid := getattr(r, k))])
                for r in islice(records(store, bom), _SLICES_SHOWN)]
    except CatsError:  # the integrity state already says what is missing
        return []


def _printed(store: BlockStore, cid: CID, budget: list[int]) -> tuple[str, int | None]:
    """The last bytes of a slice's log (as text) and its size, within what the page still has room for."""
    try:
        size = reader.stat(store, cid).size
        shown = min(size, _LOG_SHOWN, budget[0])
        budget[0] -= shown
        text = b"".join(reader.read(store, cid, size - shown, shown)).decode(errors="replace") if shown else ""
    except CatsError:
        return "", None
    return ("…" if shown < size else "") + text, size


def _signer_names() -> dict[str, str]:
    """Names for DIDs: the trust list's, and `this node` for this home's own key (never made here)."""
    names: dict[str, str] = {}
    if (home() / "identity" / "ed25519.pem").exists():
        with contextlib.suppress(CatsError):
            names[Identity.load().did] = "this node"
    with contextlib.suppress(CatsError):  # a broken trust list names nobody; `cats mesh trust ls` says why
        names.update({p.did: p.name for p in Trust().peers() if p.name})
    return names


def _short(text: str) -> str:
    return text if len(text) <= 24 else f"{text[:12]}…{text[-8:]}"


def _bytes(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _duration(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"


def _height(lines: list[str]) -> int:
    return _FRAME + _HEAD + _LINE * len(lines)


def _cid(text: str) -> str:
    """A CID (or a pinned URI) shortened for the eye, whole in the clipboard."""
    return f'<button class="cid" data-copy="{html.escape(text)}" title="{html.escape(text)} (click to copy)">' \
           f"{html.escape(_short(text))}</button>"


def _line(key: str, value: str) -> str:
    return f'<div class="line"><span class="k">{key}</span> {value}</div>'


def _run_lines(run: _Run) -> list[str]:
    if run.missing:
        return [_line("BOM", _cid(run.cid)),
                f'<div class="line note" title="{html.escape(run.detail)}">{html.escape(run.detail)}</div>']
    signers = " ".join(f'<span class="signer" title="{html.escape(did)}">{html.escape(name)}</span>'
                       for name, did in run.signers) or "nobody"
    entry = html.escape(run.entry) if run.entry else "(Order not here)"
    when = run.started[:16].replace("T", " ")
    return [_line("Order", _cid(run.order)),
            f'<div class="line"><span class="k">function</span> <code title="{entry}">{entry}</code></div>',
            _line("slices", f'<a href="#slices-{run.index}">{run.slices}</a>: {html.escape(run.counts)}'),
            _line("took", f'{_duration(run.took)} <span title="{html.escape(run.started)}">· {html.escape(when)}'
                          "</span>"),
            _line("signed by", signers),
            _line("BOM", _cid(run.cid))]


def _run_box(run: _Run, key: str, style: str, root: str) -> str:
    name = html.escape(run.name or ("missing BOM" if run.missing else "unnamed Order"))
    mark = " root" if run.cid == root else ""
    return (f'<section class="bom {run.state}{mark}" data-cid="{html.escape(run.cid)}" data-key="{html.escape(key)}" '
            f'style="{style}"><h2><span class="name" title="{name}">{name}</span>'
            f'<span class="state" title="{html.escape(run.detail)}">{run.state}</span></h2>'
            f'{"".join(_run_lines(run))}</section>')


def _data_lines(d: _Data) -> list[str]:
    lines = [_line("CID" if d.kind != "URI" else "URI", _cid(d.label))]
    for e in d.entries[:_ENTRIES_SHOWN]:
        name = html.escape(e.name)
        lines.append(f'<div class="line entry"><span class="fname" title="{name} ({html.escape(e.cid)})">{name}'
                     f'</span><span class="size">{_bytes(e.size)}</span></div>')
    if len(d.entries) > _ENTRIES_SHOWN:
        more = f"and {d.count - _ENTRIES_SHOWN} more" if d.count is not None else "and more"
        lines.append(f'<div class="line more">{more} (cats ls {html.escape(_short(d.label))})</div>')
    if d.note:
        lines.append(f'<div class="line note" title="{html.escape(d.note)}">{html.escape(d.note)}</div>')
    return lines


def _data_box(d: _Data, key: str, style: str) -> str:
    what = d.kind
    if d.kind == "folder":
        what += f" · {d.count} entries" if d.count is not None else " · sharded"
    if d.size is not None:
        what += f" · {_bytes(d.size)}"
    roles = " ".join(sorted(d.roles))
    return (f'<section class="data {roles}" data-cid="{html.escape(d.label)}" data-key="{html.escape(key)}" '
            f'style="{style}"><h3>{html.escape(what)}</h3>{"".join(_data_lines(d))}</section>')


def _slice_table(run: _Run) -> str:
    rows = "".join(f"<tr><td>{html.escape(r.name)}</td><td>{_cid(r.output)}</td><td>{_logs(r)}</td></tr>"
                   for r in run.records)
    more = run.slices - len(run.records)
    rows += f'<tr><td colspan="3">and {more} more (cats bom show)</td></tr>' if more > 0 else ""
    name = html.escape(run.name or "unnamed Order")
    return (f'<details id="slices-{run.index}"><summary>{name}: {run.slices} slice(s), BOM {_cid(run.cid)}'
            f'</summary><table class="slices"><tr><th>slice input</th><th>output</th><th>printed</th></tr>{rows}'
            '</table></details>')


def _logs(record: _Record) -> str:
    """What the slice printed, a stream per click (its end, as text: never markup)."""
    if not record.printed:
        return "-"
    return "".join(f'<details class="log"><summary>{stream} ({_bytes(size) if size is not None else "not here"})'
                   f"</summary><pre>{html.escape(text)}</pre></details>" for stream, text, size in record.printed)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 0; padding: 16px; background: #f6f7f9; color: #1b1f24; }}
header {{ margin-bottom: 12px; }} header h1 {{ font-size: 20px; margin: 0 0 4px; }} header p {{ margin: 0; }}
.legend span {{ display: inline-block; margin-right: 14px; }}
#dag {{ position: relative; }}
#dag section {{ position: absolute; box-sizing: border-box; overflow: hidden; background: #fff;
  border: 2px solid #8c959f; border-radius: 8px; padding: 8px 10px; }}
#dag h2, #dag h3 {{ display: flex; gap: 8px; margin: 0; height: 24px; font-size: 14px; line-height: 20px;
  white-space: nowrap; }}
#dag h3 {{ font-weight: 600; color: #57606a; }}
.name {{ flex: 1; overflow: hidden; text-overflow: ellipsis; }}
.line {{ height: 18px; line-height: 18px; font-size: 12.5px; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }}
.k {{ color: #57606a; }} .note, .more {{ color: #6e7781; font-style: italic; }}
.entry {{ display: flex; gap: 8px; }} .fname {{ flex: 1; overflow: hidden; text-overflow: ellipsis; }}
.size {{ color: #57606a; font-variant-numeric: tabular-nums; }}
.signer {{ background: #ddf4ff; border-radius: 4px; padding: 0 4px; margin-right: 3px; cursor: help; }}
#dag section.bom {{ background: #fffdf5; }}
.bom.root {{ box-shadow: 0 0 0 3px #0969da55; }}
#dag .bom.intact {{ border-color: #1a7f37; }} #dag .bom.altered {{ border-color: #cf222e; }}
#dag .bom.missing {{ border-style: dashed; }}
.state {{ font-size: 11px; font-weight: 600; text-transform: uppercase; }}
.intact .state {{ color: #1a7f37; }} .altered .state {{ color: #cf222e; }} .missing .state {{ color: #6e7781; }}
#dag section.data {{ border-color: #afb8c1; border-radius: 4px; }}
#dag section.data.input {{ border-left: 6px solid #0969da; }}
#dag section.data.output {{ border-right: 6px solid #8250df; }}
.cid {{ font: 11.5px ui-monospace, monospace; background: #eaeef2; border: 0; border-radius: 4px; padding: 0 4px;
  cursor: copy; }}
.cid.copied {{ background: #1a7f37; color: #fff; }}
#dag svg {{ position: absolute; left: 0; top: 0; overflow: visible; }}
#dag path {{ fill: none; stroke: #57606a; stroke-width: 2; }} #dag path.nested {{ stroke-dasharray: 6 4; }}
#dag path.parent {{ stroke-dasharray: 2 3; }} #dag marker path {{ fill: #57606a; stroke: none; }}
h2.runs {{ font-size: 16px; margin: 24px 0 8px; }}
details {{ margin: 4px 0; }} summary {{ cursor: pointer; }}
.log pre {{ max-height: 240px; max-width: 720px; overflow: auto; background: #f6f6f6; padding: 4px; margin: 2px 0; }}
.slices td, .slices th {{ font-size: 12px; padding-right: 10px; text-align: left; }}
</style></head>
<body>
<header><h1>{title}</h1><p>BOM <code>{root}</code> · {runs} run(s) · {data} input and output(s).</p>
<p class="legend"><span>Left to right: data, the run that read it, what it made.</span>
<span>Run border: green, every block present and matching its CID; red, altered; dashed, not here.</span>
<span>Dashed arrow: a sub-Order's BOM; dotted: a parent BOM not linked through data.</span>
<span>Hover a signer for the DID; click a CID to copy it.</span></p></header>
<div id="dag" style="width:{width}px;height:{height}px">
<svg width="{width}" height="{height}" aria-hidden="true"><defs><marker id="arrow" viewBox="0 0 10 10" refX="9"
  refY="5" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#57606a"/></marker></defs>
{edges}
</svg>
{boxes}
</div>
<h2 class="runs">Slices of each run</h2>
{slices}
<script>
document.addEventListener("click", ev => {{
  const link = ev.target.closest('a[href^="#slices-"]');
  if (link) document.querySelector(link.getAttribute("href")).open = true;
  const button = ev.target.closest(".cid");
  if (!button) return;
  navigator.clipboard.writeText(button.dataset.copy).then(() => {{
    button.classList.add("copied"); setTimeout(() => button.classList.remove("copied"), 800);
  }});
}});
</script>
</body></html>
"""
