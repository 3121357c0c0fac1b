"""`cats jobs`: what runs here and what ran, cancel one, read what its slices printed. A job submitted
to another node is named here by the id it has here, and followed on that node over signed requests."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any, BinaryIO

import typer

from cats.cli._text import printable, when
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
    return node, job if job.ended else node.get(job.id)  # an ended job's state is here, its node maybe gone


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
    return f"{s:.0f}s ago" if 0 <= s < 120 else f"{s / 60:.0f}m ago" if 0 <= s < 7200 else \
        f"{s / 3600:.0f}h ago" if 0 <= s < 172800 else when(t)[:10]


def _progress(job: Job) -> str:
    done = f"{job.done}/{job.total}" if job.total is not None else "-"
    return done if job.stages == 1 else f"{done} (stage {job.stage} of {job.stages})"


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
    console = console if console.is_terminal else Console(width=1 << 12)  # piped: whole lines, whole CIDs
    if not listed:
        console.print("no jobs yet: `cats run ORDER.py`, `cats submit`, `cats exec` and `cats demo` make them")
        return
    table = Table("id", "status", "slices", "name", "started", "took", "bom", box=None)
    for j in listed:
        where = f" on {j.node}" if j.kind == "remote" else f" for {j.submitter[:24]}…" if j.submitter else ""
        # names come from Orders, a peer's too: text, never markup
        table.add_row(escape(j.id), f"[{_COLOUR[j.status]}]{j.status}[/]", _progress(j),
                      escape(printable((j.name or j.command or "-") + where)), _age(j.started or j.created),
                      _took(j), escape(j.bom or "-"))
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
        ("started", job.started and when(job.started)),
        ("took", _took(job) if job.started else None)]
    for label, value in rows:
        if value:
            console.print(printable(f"{label:<8}{value}"), markup=False)
    if job.error:
        console.print(printable(f"error   {(job.error.strip().splitlines() or [''])[0]}"), markup=False)
    for s in logs:
        said = ", ".join(k for k in ("stdout", "stderr") if getattr(s, k))
        why = f": {(s.error.strip().splitlines() or [''])[-1][:200]}" if s.error else ""
        console.print(printable(f"  slice {s.index}{f' ({s.name})' if s.name else ''} {s.status}"
                                 f"{f'; printed to {said}' if said else ''}{why}"), markup=False)
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
    stage: int | None = typer.Option(None, "--stage", min=1, metavar="K",
                                     help="Of a pipeline, only stage K (default: every stage; with --slice, the "
                                          "last)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep showing what slices print until the job ends."),
) -> None:
    """Show what the job's slices printed: their stdout on stdout and their stderr on stderr, each line
    prefixed with its slice's number (and stage, for a pipeline), not with --slice. Kept with the BOM
    (the last MiB of each stream per slice), so they outlive the run and travel with its lineage."""
    from cats.factory.logs import LIVE_MAX

    source, job = _open(job_id)
    if stage is not None and stage > job.stages:
        raise CatsError(f"job {job.id} has {job.stages} stage(s): there is no stage {stage}")
    if index is not None and stage is None:
        stage = job.stages
    if index is not None and job.total is not None and stage == job.stage and index >= job.total:
        raise CatsError(f"job {job.id} has {job.total} slices (0 to {job.total - 1}): there is no slice {index}")
    printer = _Printer(prefixed=index is None, staged=job.stages > 1)
    read_whole: set[tuple[int, int, str]] = set()  # streams of slices that had ended when read to their end
    while True:
        ended = job.ended
        for log in source.slices(job):
            if (index is not None and log.index != index) or (stage is not None and log.stage != stage):
                continue
            for stream in ("stdout", "stderr"):
                key = (log.stage, log.index, stream)
                if key in read_whole:
                    continue
                shown = 0  # without -f, what is there now, within what any slice may print
                while follow or shown <= LIVE_MAX:
                    data, after = source.read(job, log, stream, printer.offsets.get(key, 0))
                    if not data:
                        break
                    printer.add(key, data, after)
                    shown += len(data)
                if log.status != "running":
                    read_whole.add(key)
        if ended or not follow:
            break
        time.sleep(_FOLLOW_S)
        job = source.get(job.id)
    printer.close()
    if not printer.printed:
        print(f"slice {index} of job {job.id} printed nothing" if index is not None else
              f"no slice of job {job.id} printed anything", file=sys.stderr)


class _Printer:
    """Writes what slices printed as it arrives, whole lines at a time when prefixed (two slices' lines never
    mix); a stream is keyed by (stage, slice, stream), its offset the one the source gave after its last piece."""

    def __init__(self, prefixed: bool, staged: bool) -> None:
        self.prefixed, self.staged = prefixed, staged
        self.offsets: dict[tuple[int, int, str], int] = {}
        self.partial: dict[tuple[int, int, str], bytes] = {}
        self.printed = False

    def add(self, key: tuple[int, int, str], data: bytes, after: int) -> None:
        self.offsets[key] = after
        self.printed = True
        out = self._out(key[2])
        if not self.prefixed:
            out.write(data)
            out.flush()
            return
        *lines, rest = (self.partial.pop(key, b"") + data).split(b"\n")
        for line in lines:
            out.write(self._prefix(key) + line + b"\n")
        out.flush()
        if rest:
            self.partial[key] = rest

    def close(self) -> None:
        for key, rest in sorted(self.partial.items()):
            self._out(key[2]).write(self._prefix(key) + rest + b"\n")
            self._out(key[2]).flush()

    def _prefix(self, key: tuple[int, int, str]) -> bytes:
        return (b"[stage %d slice %d] " % key[:2]) if self.staged else b"[slice %d] " % key[1]

    @staticmethod
    def _out(stream: str) -> BinaryIO:
        return sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer


def register(app: typer.Typer) -> None:
    app.add_typer(jobs_app, name="jobs")
