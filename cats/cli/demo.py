"""`cats demo`: the scenarios people bring, on real data built here, on the embedded default.

Each scenario builds its data once (kept in CATS_HOME/demo/), runs its Order on the local Ray,
reads the result back from the store for the figures it prints, shows the lineage tree and
re-executes every slice to verify the BOM. `--mesh` runs the two-organization scenario instead.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import typer

from cats.errors import CatsError


def _needs_pillow(keys: list[str]) -> None:
    """The photo scenario needs Pillow and scikit-image's sample images: say so before anything runs."""
    if "thumbnails" not in keys:
        return
    import importlib.util

    missing = [name for name, module in (("Pillow", "PIL"), ("scikit-image", "skimage"))
               if importlib.util.find_spec(module) is None]
    if missing:
        raise CatsError(f"the thumbnails scenario needs {' and '.join(missing)}: pip install 'cats[demo]' "
                        "(or leave it out: cats demo sensor-logs column-stats)")


def _scenario(number: int, total: int, key: str, force: bool, console: Any, quiet: bool) -> dict[str, Any]:
    from cats import demo, factory
    from cats.api import verify
    from cats.bom import lineage as lin
    from cats.bom import load
    from cats.bom.index import Index
    from cats.cas.store import open_store
    from cats.cli.run import slice_progress
    from cats.cli.verify import print_report
    from cats.config import home

    scenario = demo.SCENARIOS[key]
    if not quiet:
        console.print(f"\n[bold]{number}/{total} {scenario.title}[/]  [dim]({key})[/]")
    started = time.monotonic()
    building = not quiet and not demo.data_path(scenario).is_dir()
    with console.status(f"building {scenario.data} (once)…") if building else contextlib.nullcontext():
        folder = demo.data_folder(scenario)
    store = open_store()
    with slice_progress(console, hidden=quiet) as progress:
        run = factory.run(scenario.module.order(folder), store=store, force=force, quiet=True, progress=progress)
    bom = load(store, run.bom)
    figures = scenario.module.summary(store, bom)
    with console.status("verifying: re-executing every slice…") if not quiet else contextlib.nullcontext():
        checked = time.monotonic()
        report = verify(run.bom, store=store)
        verify_s = time.monotonic() - checked
    result = {"scenario": key, "name": bom.name, "bom": str(run.bom), "output": str(run.output),
              "order": str(run.order), "input": str(bom.inputs[0]), "slices": bom.invoice.slices,
              "executed": run.executed, "reused": run.reused, "run_s": round(run.duration_s, 3),
              "verified": report.verified, "verify_s": round(verify_s, 3),
              "seconds": round(time.monotonic() - started, 3),
              "figures": {k: v for k, v in figures.items() if k != "text"}}
    if quiet:
        return result
    state = "reused: this exact Order ran before (--force runs it again)" if run.reused else \
        f"{run.executed} of {bom.invoice.slices} slices run on Ray"
    console.print(f"{state}, {run.duration_s:.2f} s")
    console.print(f"[bold]{figures['text']}[/]")
    if key == "column-stats":
        console.print(_stats_table(figures["stats"]))
    console.print(f"BOM     {run.bom}\noutput  {run.output}   [dim](cats get {run.output} -o {key})[/]")
    index = Index(home() / "index.sqlite")
    try:
        console.print(lin.to_tree(lin.graph(store, run.bom, index), str(run.bom)))
    finally:
        index.close()
    print_report(report, out=console)
    console.print(f"[dim]verified in {verify_s:.2f} s[/]")
    return result


def _stats_table(rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    def cell(stat: str, value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}" if stat in ("mean", "std") else f"{value:g}"

    table = Table("column", "count", "mean", "std", "min", "max", "mode")
    for r in rows:
        table.add_row(r["column"], f"{r['count']:,}", *(cell(s, r[s]) for s in ("mean", "std", "min", "max", "mode")))
    return table


def _mesh(console: Any, started: float, force: bool, as_json: bool) -> None:
    """Scenario 4, in CATS_HOME/demo/mesh (made afresh each time)."""
    from rich.table import Table

    from cats.bom import lineage as lin
    from cats.cli.run import slice_progress
    from cats.cli.verify import print_report
    from cats.config import home
    from cats.demo import orgs

    say = (lambda _: None) if as_json else (lambda text: console.print(f"[bold]>[/] {text}"))
    with slice_progress(console, hidden=as_json) as progress:
        story = orgs.run(home() / "demo" / "mesh", force=force, say=say, progress=progress)
    total = time.monotonic() - started
    a, b, report = story.a, story.b, story.report
    if as_json:
        typer.echo(json.dumps({
            "orgs": {o.name: {"did": o.did, "url": o.url} for o in (a, b)},
            "a": {"logs": str(story.logs), "bom": str(story.clean.bom), "output": str(story.clean.output),
                  "slices": story.clean.slices},
            "b": {"bom": str(story.built.bom), "output": str(story.built.output), "slices": story.built.slices,
                  "parents": sorted(story.seen_by_b.predecessors(str(story.built.bom))),
                  "figures": {k: v for k, v in story.summary.items() if k != "text"}},
            "pulled": story.pulled.summary(),
            "derived_seen_by_a": sorted(story.seen_by_a.successors(str(story.clean.bom))),
            "verified": report.verified, "report": report.model_dump(mode="json"), "seconds": round(total, 3)}))
    else:
        nodes = Table("organization", "DID", "node", title="two CAT nodes (stopped now)")
        for o in (a, b):
            nodes.add_row(o.name, o.did, o.url)
        console.print(nodes)
        console.print(f"{a.name} published logs {story.logs}\n{a.name} cleaned them: BOM {story.clean.bom} "
                      f"({story.clean.slices} slices), output {story.clean.output}")
        console.print(f"{b.name} pulled {story.pulled.fetched_blocks} blocks ({story.pulled.fetched_bytes / 1e6:.1f} "
                      f"MB) of {a.name}'s lineage from its node, signatures of {len(story.pulled.signers)} BOM(s)")
        console.print(f"{b.name} built on them: BOM {story.built.bom}\n[bold]{story.summary['text']}[/]")
        console.print(f"\n[bold]lineage as {b.name} sees it[/]")
        console.print(lin.to_tree(story.seen_by_b, str(story.built.bom)))
        console.print(f"\n[bold]{b.name} verifies it all[/]")
        print_report(report, out=console)
        console.print(f"\n[bold]lineage as {a.name} sees it[/] (after pulling {b.name}'s BOM)")
        console.print(lin.to_tree(story.seen_by_a, str(story.clean.bom)))
        if not report.verified:
            verdict = "[red]NOT verified[/]"
        elif all(r.verified and r.mode == "reexecute" for r in report.ancestors):
            verdict = f"[green]verified[/], re-executing {a.name}'s part too"
        else:
            verdict = f"[green]verified[/], [yellow]not all re-executed[/] in {a.name}'s part"
        console.print(f"\ntwo organizations in {total:.1f} s: {verdict}")
    if not report.verified:
        raise typer.Exit(1)


def demo(
    scenarios: list[str] | None = typer.Argument(
        None, metavar="SCENARIO", help="thumbnails, sensor-logs, column-stats (default: all three)."),
    mesh: bool = typer.Option(False, "--mesh", help="Run the two-organization scenario instead: two CAT nodes, "
                                                    "org B builds on org A's data and verifies back into A."),
    force: bool = typer.Option(False, "--force", help="Run the Orders even if they ran before (else reused)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with every CID and figure."),
) -> None:
    """Run the demo scenarios on the embedded default: print BOM CIDs, lineage and verification.

    Data is built here, without network, once (in CATS_HOME/demo/): photos from scikit-image's sample
    images, two weeks of hourly sensor logs, a year of readings as Parquet shards.
    """
    from cats.cli.verify import report_console
    from cats.demo import SCENARIOS
    from cats.plant import Plant, connect

    if mesh and scenarios:
        raise CatsError("--mesh runs the two-organization scenario on its own; leave out the scenario names")
    keys = scenarios or list(SCENARIOS)
    unknown = [k for k in keys if k not in SCENARIOS]
    if unknown:
        raise CatsError(f"no demo scenario {', '.join(unknown)}: choose from {', '.join(SCENARIOS)}")
    if not mesh:
        _needs_pillow(keys)
    console = report_console()
    started = time.monotonic()
    with console.status("starting the embedded local Ray…") if not as_json else contextlib.nullcontext():
        connect(Plant(), quiet=True)  # once, up front: the first scenario's run time is its own
    ray_s = time.monotonic() - started
    if not as_json:
        console.print(f"[dim]local Ray ready in {ray_s:.1f} s[/]")
    if mesh:
        _mesh(console, started, force, as_json)
        return
    results = [_scenario(i, len(keys), key, force, console, as_json) for i, key in enumerate(keys, 1)]
    total = time.monotonic() - started
    if as_json:
        typer.echo(json.dumps({"scenarios": results, "verified": all(r["verified"] for r in results),
                               "ray_start_s": round(ray_s, 3), "seconds": round(total, 3)}))
    else:
        from rich.table import Table

        table = Table("scenario", "slices", "run s", "verify s", "BOM", "verified", title="cats demo")
        for r in results:
            table.add_row(r["scenario"], str(r["slices"]), f"{r['run_s']:.2f}", f"{r['verify_s']:.2f}", r["bom"],
                          "[green]yes[/]" if r["verified"] else "[red]NO[/]")
        console.print(table)
        console.print(f"{len(results)} scenario(s) in {total:.1f} s (data building and Ray start included)")
        last = results[-1]["bom"]
        console.print(f"[dim]next: cats lineage {last} --format html -o lineage.html · cats verify {last} · "
                      f"cats demo --mesh[/]")
    if not all(r["verified"] for r in results):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command()(demo)
