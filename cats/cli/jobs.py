"""`cats jobs`: what runs here and what ran, cancel one, read what its slices printed. A job submitted
to another node is named here by the id it has here, and followed on that node over signed requests."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any, BinaryIO

import typer

from cats.errors import CatsError

if TYPE_CHECKING:
    from cats.bom.home import Home
    from cats.bom.jobs import Job
    from cats.factory.jobs import Jobs

jobs_app = typer.Typer(help="Jobs: every Order run here (or sent from here to a node); list, show, cancel, logs.",
                       invoke_without_command=True)
_FOLLOW_S = 0.5  # how often `logs -f` looks for more
_COLOUR = {"queued": "cyan", "running": "yellow", "done": "green", "failed": "red", "cancelled": "magenta",
           "dead": "red"}


def _open(ref: str) -> tuple[Jobs, Job]:
    """The job `ref` names (an id or a prefix of one) and the jobs that serve it: this home's, or for a
    job submitted to a node, that node's (the job as the node tells it, its status copied here)."""
    from cats.bom.home import Home
    from cats.factory.jobs import LocalJobs

    local = LocalJobs(Home.open())
    job = local.get(ref)
    if job.kind != "remote":
        return local, job
    from cats.mesh.jobs import NodeJobs

    node = NodeJobs(job, local.home)
    return node, node.get(job.id)


def _asked(job: Job, home: Home) -> Job:
    """A job on another node as that node tells it now, or as last known if it cannot be asked."""
    from cats.mesh.jobs import NodeJobs

    try:
        return NodeJobs(job, home).get(job.id)
    except CatsError:
        return job


def _age(t: float | None) -> str:
    if t is None:
        return "-"
    s = time.time() - t
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else \
        f"{s / 3600:.0f}h ago" if s < 172800 else time.strftime("%Y-%m-%d", time.localtime(t))


def _progress(job: Job) -> str:
    return f"{job.done}/{job.total}" if job.total is not None else "-"


def _took(job: Job) -> str:
    if job.started is None:
        return "-"
    return f"{(job.finished or time.time()) - job.started:.1f}s"


@jobs_app.callback()
def jobs(
    ctx: typer.Context,
    everything: bool = typer.Option(False, "--all", "-a", help="Every job, not only the queued, running and "
                                                                "latest ones."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON array of jobs (id, status, order, bom, …)."),
) -> None:
    """List jobs: queued and running ones and the latest finished ones, oldest first. A job whose driver
    ended without saying how (killed, the machine restarted) shows as `dead`."""
    if ctx.invoked_subcommand is not None:
        return
    from cats.bom.home import Home
    from cats.factory.jobs import LocalJobs

    here = LocalJobs(Home.open())
    listed = [_asked(job, here.home) if job.kind == "remote" and not job.ended else job
              for job in here.listing(everything)]
    if as_json:
        typer.echo(json.dumps([j.summary() for j in listed]))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    if not listed:
        console.print("no jobs yet: `cats run ORDER.py`, `cats submit`, `cats exec` and `cats demo` make them")
        return
    table = Table("id", "status", "slices", "name", "started", "took", "bom", box=None)
    for j in listed:
        where = f" on {j.node}" if j.kind == "remote" else f" for {j.submitter[:24]}…" if j.submitter else ""
        # names come from Orders, a peer's too: text, never markup
        table.add_row(escape(j.id), f"[{_COLOUR[j.status]}]{j.status}[/]", _progress(j),
                      escape((j.name or j.command or "-") + where), _age(j.started or j.created), _took(j),
                      escape(j.bom or "-"))
    console.print(table, soft_wrap=True)


@jobs_app.command()
def show(
    job_id: str = typer.Argument(..., metavar="ID", help="A job's id (or the first characters of it)."),
    as_json: bool = typer.Option(False, "--json", help="Print the job as one JSON object, with its slices' logs."),
) -> None:
    """Show one job: its status, progress, Order, BOM, who drives it, and the slices that failed or printed."""
    source, job = _open(job_id)
    logs = source.slices(job)
    if as_json:
        typer.echo(json.dumps({**job.summary(), "slices": [s.model_dump(exclude_none=True) for s in logs]}))
        return
    from rich.console import Console

    console = Console(soft_wrap=True)
    console.print(f"job     {job.id}  [{_COLOUR[job.status]}]{job.status}[/]")
    rows: list[tuple[str, Any]] = [
        ("name", job.name), ("order", job.order), ("slices", _progress(job)), ("bom", job.bom), ("output", job.output),
        ("node", job.node and f"{job.node} (id there {job.remote})"), ("for", job.submitter),
        ("command", job.command), ("driver", job.pid and f"pid {job.pid} on {job.host}"),
        ("started", job.started and time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.started))),
        ("took", _took(job) if job.started else None)]
    for label, value in rows:
        if value:
            console.print(f"{label:<8}{value}", markup=False)
    if job.error:
        console.print(f"error   {job.error.strip().splitlines()[0]}", markup=False)
    for s in logs:
        said = ", ".join(k for k in ("stdout", "stderr") if getattr(s, k))
        why = f": {s.error.strip().splitlines()[-1][:200]}" if s.error else ""
        console.print(f"  slice {s.index}{f' ({s.name})' if s.name else ''} {s.status}"
                      f"{f'; printed to {said}' if said else ''}{why}", markup=False)
    if logs:
        console.print(f"[dim]cats jobs logs {job.id} [--slice N] shows what they printed[/]")


@jobs_app.command()
def cancel(
    job_id: str = typer.Argument(..., metavar="ID", help="A job's id (or the first characters of it)."),
    as_json: bool = typer.Option(False, "--json", help="Print the job as one JSON object once it stopped."),
) -> None:
    """Cancel a queued or running job from any terminal: its Ray tasks and every slice's process stop,
    it is recorded `cancelled`, and its finished slices are kept, so running it again resumes."""
    import getpass
    import os

    source, job = _open(job_id)
    stopped = source.cancel(job, f"cancelled by {getpass.getuser()} (cats jobs cancel, pid {os.getpid()})")
    if as_json:
        typer.echo(json.dumps(stopped.summary()))
        return
    typer.echo(f"job {stopped.id} is {stopped.status}" + (f": {stopped.error}" if stopped.status != "cancelled"
                                                           and stopped.error else ""))


@jobs_app.command()
def logs(
    job_id: str = typer.Argument(..., metavar="ID", help="A job's id (or the first characters of it)."),
    index: int | None = typer.Option(None, "--slice", "-s", min=0, metavar="N",
                                     help="Only slice N, as it printed it (no prefix)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep showing what slices print until the job ends."),
) -> None:
    """Show what the job's slices printed: their stdout on stdout and their stderr on stderr, each line
    prefixed `[slice N]` (not with --slice). Kept with the BOM (the last MiB of each stream per slice),
    so they outlive the run and travel with its lineage."""
    source, job = _open(job_id)
    if index is not None and job.total is not None and index >= job.total:
        raise CatsError(f"job {job.id} has {job.total} slices (0 to {job.total - 1}): there is no slice {index}")
    printer = _Printer(prefixed=index is None)
    read_whole: set[tuple[int, str]] = set()  # streams of slices that had ended when read to their end
    while True:
        ended = job.ended
        for log in source.slices(job):
            if index is not None and log.index != index:
                continue
            for stream in ("stdout", "stderr"):
                if (log.index, stream) in read_whole:
                    continue
                while data := source.read(job, log, stream, printer.offset(log.index, stream)):
                    printer.add(log.index, stream, data)
                if log.status != "running":
                    read_whole.add((log.index, stream))
        if ended or not follow:
            break
        time.sleep(_FOLLOW_S)
        job = source.get(job.id)
    printer.close()
    if not printer.printed:
        print(f"slice {index} of job {job.id} printed nothing" if index is not None else
              f"no slice of job {job.id} printed anything", file=sys.stderr)


class _Printer:
    """Writes what slices printed as it arrives, whole lines at a time when prefixed (two slices' lines never mix)."""

    def __init__(self, prefixed: bool) -> None:
        self.prefixed = prefixed
        self.offsets: dict[tuple[int, str], int] = {}
        self.partial: dict[tuple[int, str], bytes] = {}
        self.printed = False

    def offset(self, index: int, stream: str) -> int:
        return self.offsets.get((index, stream), 0)

    def add(self, index: int, stream: str, data: bytes) -> None:
        if not data:
            return
        key = (index, stream)
        self.offsets[key] = self.offset(index, stream) + len(data)
        self.printed = True
        out = self._out(stream)
        if not self.prefixed:
            out.write(data)
            out.flush()
            return
        *lines, rest = (self.partial.pop(key, b"") + data).split(b"\n")
        for line in lines:
            out.write(b"[slice %d] %s\n" % (index, line))
        out.flush()
        if rest:
            self.partial[key] = rest

    def close(self) -> None:
        for (index, stream), rest in sorted(self.partial.items()):
            self._out(stream).write(b"[slice %d] %s\n" % (index, rest))
            self._out(stream).flush()

    @staticmethod
    def _out(stream: str) -> BinaryIO:
        return sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer


def register(app: typer.Typer) -> None:
    app.add_typer(jobs_app, name="jobs")
