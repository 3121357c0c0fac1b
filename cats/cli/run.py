"""Compute commands: `cats run ORDER.py` and the Bacalhau-style `cats submit`."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import typer

from cats.errors import CatsError

if TYPE_CHECKING:  # imported lazily to keep start-up light
    from pydantic import ValidationError
    from rich.console import Console

    from cats.order import Order

JSON_HELP = "Print one JSON object (bom, output, …): the only line on stdout."
REPLICAS_HELP = ("Run each slice on N distinct workers; a majority of identical outputs decides "
                 "(overrides the Order's Plant).")


def _load_order(path: Path) -> Order:
    """Import ORDER.py as a module named after its file (workers import it the same way). A run it
    starts while imported is refused (it would run twice), and the Order's own checks come back as
    one line naming the field."""
    from pydantic import ValidationError

    from cats.errors import ReentrantRun
    from cats.factory import guard
    from cats.order import Order

    if not path.is_file():
        raise CatsError(f"order file {path} does not exist")
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    try:
        with guard.importing(f"cats run was importing {path} to read its order"):
            spec.loader.exec_module(module)
    except ReentrantRun:
        raise
    except ValidationError as e:
        raise CatsError(f"{path} failed to load: {_invalid(e)}") from None
    except Exception as e:
        raise CatsError(f"{path} failed to load: {type(e).__name__}: {e}") from None
    order = getattr(module, "order", None)
    if not isinstance(order, Order):
        raise CatsError(f"{path} must define a module-level `order = cats.Order(...)`")
    return order


def _invalid(e: ValidationError) -> str:
    """A model's validation error in one line: the model, the field's path and why, for the first problem."""
    first = e.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    why = str(first["ctx"]["error"]) if first["type"] == "value_error" else first["msg"]
    more = f" (and {e.error_count() - 1} more problems)" if e.error_count() > 1 else ""
    return " ".join(f"{e.title} {where}: {why}{more}".split())


def _replicated(order: Order, replicas: int | None) -> Order:
    """The Order (every stage of its pipeline) with its Plant's replica count overridden (a different
    Order, so its own BOM)."""
    if replicas is None:
        return order
    from cats.factory import pipeline

    return pipeline.each(order, lambda stage: stage.model_copy(
        update={"plant": stage.plant.model_copy(update={"replicas": replicas})}))


def _reusing(order: Order, urls: list[str] | None) -> Order:
    """The Order (every stage of its pipeline) with its Plant asking these peers' nodes for evaluations
    (the same Order: its CID does not depend on where results may come from)."""
    if not urls:
        return order
    from cats.factory import pipeline

    return pipeline.each(order, lambda stage: stage.model_copy(update={"plant": stage.plant.model_validate(
        {**stage.plant.model_dump(), "reuse_from": [*stage.plant.reuse_from, *urls]})}))


def _deployed(order: Order, deployment: Path | None) -> Order:
    """The Order (every stage of its pipeline) on a deployment's Ray, with this process storing blocks
    in its IPFS node (a different Plant, so a different Order and BOM: where it ran is part of its
    lineage)."""
    if deployment is None:
        return order
    from cats.factory import pipeline
    from cats.plant.deployment import Deployment

    deployed = Deployment.from_outputs(deployment)
    os.environ.update(deployed.environment())
    return pipeline.each(order, lambda stage: stage.model_copy(update={"plant": deployed.plant(stage.plant)}))


@contextlib.contextmanager
def slice_progress(console: Console, hidden: bool = False) -> Iterator[Callable[[int, int], None]]:
    """A transient bar of finished slices (with their rate); yields the Factory's progress callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TimeElapsedColumn

    with Progress("[bold]slices", BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                  "{task.fields[rate]}", TimeElapsedColumn(), console=console, disable=hidden,
                  transient=True) as bar:
        task = bar.add_task("run", total=None, rate="")

        def progress(done: int, total: int) -> None:
            elapsed = bar.tasks[0].elapsed or 0
            rate = f"{bar.tasks[0].completed / elapsed:.1f}/s" if elapsed and bar.tasks[0].completed else ""
            bar.update(task, completed=done, total=total, rate=rate)

        yield progress


def _result_only_on_stdout() -> TextIO:
    """From now on this process's stdout is its stderr; the real stdout, returned, carries the result
    alone: what user code on the driver prints (a split), or a program it starts, would land there
    otherwise. (What slices print is kept with the run, never on the terminal: `cats jobs logs`.)"""
    try:
        result = os.fdopen(os.dup(1), "w")
    except OSError:
        raise CatsError("stdout is closed: the result would have nowhere to go") from None
    if sys.stdout is not None:
        sys.stdout.flush()
    os.dup2(2, 1)
    return result


def execute(make: Callable[[], Any], as_json: bool, force: bool, confine: Any = None) -> None:
    """Run the Order `make` builds (or loads from its file), confined under the policy `confine` if
    given; the result goes to stdout, and everything else, from the moment `make` starts, to stderr.
    An Order `make` cannot build is one line."""
    from pydantic import ValidationError

    from cats import factory

    out = _result_only_on_stdout()
    try:
        order = make()
    except ValidationError as e:
        raise CatsError(_invalid(e)) from None
    if as_json:  # the result line alone: no bar to draw, so rich is not even loaded
        result = factory.run(order, force=force, quiet=True, confine=confine)
        print(json.dumps(result.summary()), file=out, flush=True)
        return
    from rich.console import Console

    err = Console(stderr=True)
    with slice_progress(err) as progress:
        result = factory.run(order, force=force, quiet=False, progress=progress, confine=confine)
    for k, stage in enumerate(result.stages or [], 1):
        err.print(f"stage {k} of {len(result.stages or [])}: {_state(stage)}  [dim]bom {stage.bom}[/]", soft_wrap=True)
    err.print(f"[green]done[/green] in {result.duration_s:.2f} s: {_state(result)}")
    if result.disagreed:
        err.print(f"[yellow]replicas disagreed[/yellow] on {result.disagreed} of {result.slices} slices; "
                  f"the majority's outputs were kept and the BOM marks them (agreed: false)")
    if result.checks:
        err.print("[green]checks passed[/green]: " + "; ".join(
            f"{c.kind} (false accept <= {c.false_accept_probability:.3g})" for c in result.checks))
    err.print(f"order  {result.order}\noutput {result.output}")
    print(f"bom    {result.bom}", file=out, flush=True)
    err.print(f"[dim]next: cats cat --decode {result.bom} · cats lineage {result.bom} · cats verify {result.bom}[/]",
              soft_wrap=True)


def _state(result: Any) -> str:
    """What a run (or a pipeline's stage) did, in words."""
    if result.reused:
        return "reused (identical Order already run; --force re-runs)"
    reused = f", {result.reused_slices} taken from earlier runs" if result.reused_slices else ""
    return f"{result.executed} of {result.slices} slices run{reused}"


def run(
    order_file: Path = typer.Argument(..., metavar="ORDER.py", help="A Python file defining `order`."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    force: bool = typer.Option(False, "--force", help="Run even if this exact Order already has a BOM."),
    replicas: int | None = typer.Option(None, "--replicas", min=1, help=REPLICAS_HELP),
    deployment: Path | None = typer.Option(None, "--deployment", metavar="OUTPUTS.json",
                                           help="Run on a deployed Plant: `terraform output -json` of terraform/ "
                                                "(its Ray address; its IPFS node as the store)."),
    reuse_from: list[str] | None = typer.Option(None, "--reuse-from", metavar="URL",
                                                help="A peer's node to ask for slices it computed (repeatable); an "
                                                     "answer is taken only if a peer this home trusts signed it."),
) -> None:
    """Run an Order on the Plant (the embedded local Ray by default); stdout gets its BOM CID (`bom CID`).
    An Order whose inputs are Orders runs them first, each a stage with its own BOM; unchanged stages
    are reused, and `--json` lists every stage under `stages`."""
    execute(lambda: _reusing(_deployed(_replicated(_load_order(order_file), replicas), deployment), reuse_from),
            as_json, force)


def submit(
    file: Path = typer.Option(..., "-f", "--file", help="Python file with the entry function."),
    cid: str = typer.Option(..., "-c", "--cid", help="Input: a folder CID (one slice per file) or a data URI "
                            "(s3://, http(s)://, file://, ipfs://; one slice, read by the worker itself)."),
    entry: str = typer.Option(..., "--entry", help="Function name in FILE: f(path) -> bytes or any encodable value."),
    requirements: Path | None = typer.Option(None, "-r", "--requirements", help="pip requirements for the workers."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    force: bool = typer.Option(False, "--force", help="Run even if this exact job already has a BOM."),
    replicas: int | None = typer.Option(None, "--replicas", min=1, help=REPLICAS_HELP),
    output_uri: str | None = typer.Option(None, "-o", "--output-uri",
                                          help="Write each result under this URI prefix; the store keeps references."),
) -> None:
    """Run FILE's entry on each file of a folder CID; the output folder has one entry per input file."""
    from cats.order import Function, Order, Structure

    if not file.is_file():
        raise CatsError(f"--file {file} does not exist")
    reqs: list[str] = []
    if requirements is not None:
        if not requirements.is_file():
            raise CatsError(f"--requirements {requirements} does not exist")
        reqs = [line.strip() for line in requirements.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]

    def make() -> Order:  # the input is a CID or a data URI, as the Order's inputs tell them apart
        return _replicated(Order(function=Function(entry=f"{file.stem}:{entry}", source=file, takes="path"),
                                 inputs=[cid], structure=Structure(requirements=reqs),
                                 name=f"submit {file.name}:{entry}", output_uri=output_uri), replicas)

    execute(make, as_json, force)


def dag(
    order_file: Path = typer.Argument(..., metavar="ORDER.py", help="A Python file defining `order`."),
    as_json: bool = typer.Option(False, "--json", help="Print the stages as one JSON list, the only line on stdout."),
) -> None:
    """Show the stages of ORDER.py's pipeline in run order and which would run, without running anything:
    `current` (already run: its BOM), `run`, or `waits` (an upstream stage runs first; its Order is
    known only then). Sealing adds each stage's code and local inputs to the store."""
    from pydantic import ValidationError

    from cats import factory

    out = _result_only_on_stdout()
    try:
        stages = factory.dag(_load_order(order_file))
    except ValidationError as e:
        raise CatsError(_invalid(e)) from None
    if as_json:
        print(json.dumps([s.summary() for s in stages]), file=out, flush=True)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("#", "stage", "reads", "state", "order", "bom", box=None)
    colour = {"current": "green", "run": "yellow", "waits": "dim"}
    for k, s in enumerate(stages, 1):
        table.add_row(str(k), s.name, ", ".join(str(u + 1) for u in s.upstream) or "-",
                      f"[{colour[s.state]}]{s.state}[/]", str(s.order or "-"), str(s.bom or "-"))
    Console(file=out, width=None if out.isatty() else 400).print(table)  # whole CIDs where a terminal allows
    would = sum(s.state != "current" for s in stages)
    print(f"{would} of {len(stages)} stages would run" if would else "every stage is current: nothing would run",
          file=out, flush=True)


def register(app: typer.Typer) -> None:
    app.command()(run)
    app.command()(dag)
    app.command()(submit)
