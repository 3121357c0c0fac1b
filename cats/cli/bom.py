"""Provenance commands: `cats bom show`, `cats lineage` and `cats log`.

Heavy modules (pydantic models, networkx, rich) are imported inside the commands so `cats --help`
and the store commands start fast.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cats.cas.cid import CID
from cats.cas.store import BlockStore, open_store
from cats.config import home

if TYPE_CHECKING:  # imported lazily to keep start-up light
    from cats.bom import BOM
    from cats.bom.index import Index


def _store() -> BlockStore:
    return open_store()


def _index() -> Index | None:
    """The run index, or None before the first run (reading must not create it)."""
    from cats.bom.index import Index

    path = home() / "index.sqlite"
    return Index(path) if path.exists() else None


def _print_json(value: object) -> None:
    typer.echo(json.dumps(value, indent=2))


class Format(StrEnum):
    tree = "tree"
    json = "json"
    dot = "dot"
    mermaid = "mermaid"
    html = "html"


def lineage(
    cid: str = typer.Argument(..., metavar="CID", help="A BOM CID."),
    fmt: Format = typer.Option(Format.tree, "-f", "--format",
                               help="tree (rich), json, dot (Graphviz), mermaid, or html (a self-contained page "
                                    "drawing the DAG with each BOM's signers and integrity)."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Write to this file instead of stdout."),
) -> None:
    """Show the BOMs a run came from (through its parents) and, from the local index, those built on it."""
    from cats.bom import lineage as lin

    index = _index()
    try:
        if fmt is Format.html:
            from cats.verification.page import lineage_page

            text = lineage_page(_store(), cid, index)
        else:
            g = lin.graph(_store(), cid, index)
    finally:
        if index is not None:
            index.close()
    if fmt is Format.html:
        _emit(text, output)
        return
    if fmt is Format.tree:
        from rich.console import Console

        console = Console()
        if not console.is_terminal:  # piped: never wrap a CID across lines
            console = Console(width=1 << 16)
        console.print(lin.to_tree(g, g.graph["root"]), crop=False)
        return
    render = {Format.json: lin.to_json, Format.dot: lin.to_dot, Format.mermaid: lin.to_mermaid}[fmt]
    _emit(render(g), output)


def _emit(text: str, output: Path | None) -> None:
    """To stdout, or written whole to a file (beside it first, then renamed: never half a page)."""
    if output is None:
        typer.echo(text, nl=False)
        return
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(output)
    typer.echo(f"wrote {output}", err=True)


bom_app = typer.Typer(help="Bills of materials: the record of each run.", no_args_is_help=True)


@bom_app.command("show")
def show(
    cid: str = typer.Argument(..., metavar="CID", help="A BOM CID."),
    as_json: bool = typer.Option(False, "--json", help="Print the BOM as JSON, with its slice records."),
) -> None:
    """Show a BOM: Order, code, environment, inputs, outputs, parents, sub-Orders and invoice."""
    from cats.bom import records
    from cats.bom.lineage import open_bom
    from cats.bom.signatures import Signatures
    from cats.order import label as input_label

    store = _store()
    bom = open_bom(store, cid)
    signers, bad = Signatures().check(CID.parse(cid))
    if as_json:
        data: dict[str, Any] = bom.model_dump(mode="json")
        data["slice_records"] = [r.model_dump(mode="json") for r in records(store, bom)]
        data["signers"] = signers
        data["bad_signatures"] = [b.model_dump() for b in bad]
        _print_json(data)
        return
    env, inv = bom.structure, bom.invoice
    rows: list[tuple[str, list[str]]] = [
        ("bom", [str(CID.parse(cid))]),
        ("name", [bom.name or "-"]),
        ("order", [str(bom.order)]),
        ("code", [str(bom.code)]),
        ("python", [env.python]),
        ("lock", [str(env.lock)]),
        ("requirements", env.requirements or ["-"]),
        ("iac", [str(env.iac) if env.iac else "-"]),
        *([("reuse", ["keyed on code only: takes results made under any Python and lock"])]
          if env.reuse == "code" else []),
        ("inputs", [input_label(c) for c in bom.inputs]),
        ("outputs", [str(c) for c in bom.outputs]),
        ("encoding", [bom.output_encoding]),
        ("parents", [str(c) for c in bom.parents] or ["-"]),
        ("sub-Orders", _children(store, bom) or ["-"]),
        ("slices", [f"{inv.slices} ({inv.executed} run, {inv.resumed} resumed) in {len(bom.slices)} record "
                    f"block{'' if len(bom.slices) == 1 else 's'}"]),
        ("started", [inv.started]),
        ("finished", [f"{inv.finished} ({inv.duration_s:.2f} s)"]),
        ("bytes", [f"{inv.bytes_in} in, {inv.bytes_out} out"]),
        *([("data cache", [f"{inv.data.hits} hits, {inv.data.misses} misses, {inv.data.bytes_in:,} bytes fetched, "
                           f"mean fetch {inv.data.mean_fetch_s * 1e3:.1f} ms"])] if inv.data else []),
        ("executor", [inv.executor]),
        ("nodes", inv.nodes or ["-"]),
        ("cats", [inv.cats_version]),
        ("signed by", signers or ["-"]),
        *([("signature-invalid", [f"{b.signer}: {b.reason}" if b.signer else b.reason for b in bad])] if bad else []),
    ]
    for key, values in rows:
        for i, value in enumerate(values):
            typer.echo(f"{key if i == 0 else '':<13}{value}")


def _children(store: BlockStore, bom: BOM) -> list[str]:
    """One line per sub-Order: the slice that submitted it, its BOM, and who ran it how."""
    from cats.bom import records

    if not bom.children:  # no need to read the slice records
        return []
    return [f"slice {r.index}: {c.bom} by {c.executor.node} {c.executor.did or '(unsigned)'}, "
            f"{c.duration_s:.2f} s, {c.attempts} attempt{'' if c.attempts == 1 else 's'}"
            for r in records(store, bom) for c in r.children or ()]


def _when(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="seconds")


def log(
    limit: int = typer.Option(20, "-n", "--limit", min=1, help="Show at most this many runs."),
    as_json: bool = typer.Option(False, "--json", help="Print the runs as a JSON list."),
) -> None:
    """List recent runs from the local index, newest first: time, name, BOM, output, and for a run
    another node made for this one (`cats mesh submit`), that node."""
    index = _index()
    if index is None:
        runs = []
    else:
        try:
            runs = index.recent(limit)
        finally:
            index.close()
    entries = [{"time": _when(r["created"]), "name": r["name"], "bom": r["bom"], "output": r["output"],
                "order": r["order"], "node": r["node"], "url": r["url"]} for r in runs]
    if as_json:
        _print_json(entries)
        return
    width = max((len(e["name"] or "-") for e in entries), default=0)
    for e in entries:
        where = f"  ran on {e['node']} at {e['url']}" if e["node"] else ""
        typer.echo(f"{e['time']}  {e['name'] or '-':<{width}}  {e['bom']}  {e['output']}{where}")


def register(app: typer.Typer) -> None:
    app.add_typer(bom_app, name="bom")
    app.command()(lineage)
    app.command()(log)
