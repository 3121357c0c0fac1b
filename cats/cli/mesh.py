"""The mesh of CAT Nodes, client side: `cats id`, `cats mesh trust|peers|pull|push|submit|cancel`.

httpx, rich and the client are imported inside the commands so `cats --help` stays fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:  # imported lazily to keep start-up light
    from rich.console import Console

    from cats.cas.cid import CID
    from cats.identity import Identity
    from cats.mesh.client import PullReport

mesh_app = typer.Typer(help="Other CAT Nodes: whom to trust, and pulling, pushing and running Orders there.",
                       no_args_is_help=True)
trust_app = typer.Typer(help="The peers this node trusts to write to it (and read it, when private).",
                        no_args_is_help=True)
mesh_app.add_typer(trust_app, name="trust")

JSON_HELP = "Print one JSON object."


def _print_json(value: object) -> None:
    typer.echo(json.dumps(value, indent=2))


def _err() -> Console:
    from rich.console import Console

    console = Console(stderr=True, emoji=False)  # a DID holds ":key:", which rich would draw as an emoji
    return console if console.is_terminal else Console(stderr=True, emoji=False, width=1 << 12)  # never wrap a CID


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _cid(text: str) -> CID:
    from cats.cas.cid import CID

    return CID.parse(text)


def ident(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Print this node's DID (its Ed25519 key in CATS_HOME/identity, made on first use)."""
    from cats.identity import Identity

    did = Identity.load().did
    if as_json:
        _print_json({"did": did})
    else:
        typer.echo(did)


# -- trust ----------------------------------------------------------------------------------------------


@trust_app.command("add")
def trust_add(
    did: str = typer.Argument(..., metavar="DID", help="The peer's did:key."),
    name: str | None = typer.Option(None, "--name", help="A name to show for it."),
    url: str | None = typer.Option(None, "--url", help="Its node's URL (http://host:port)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Trust a peer: it may push blocks and signatures and submit Orders here (and read, if private)."""
    from cats.errors import CatsError
    from cats.identity.trust import Trust

    if url is not None and not url.startswith(("http://", "https://")):
        raise CatsError(f"--url {url!r} must start with http:// or https://")
    peer = Trust().add(did, name=name, url=url)
    if as_json:
        _print_json(peer.model_dump())
    else:
        typer.echo(f"trusted {peer.did}" + (f" ({peer.name})" if peer.name else "") +
                   (f" at {peer.url}" if peer.url else ""))


@trust_app.command("rm")
def trust_rm(did: str = typer.Argument(..., metavar="DID"),
             as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """Stop trusting a peer."""
    from cats.identity.trust import Trust

    Trust().rm(did)
    if as_json:
        _print_json({"removed": did})
    else:
        typer.echo(f"no longer trusted: {did}")


@trust_app.command("ls")
def trust_ls(as_json: bool = typer.Option(False, "--json", help="Print the peers as a JSON list.")) -> None:
    """List trusted peers: DID, name, node URL."""
    from cats.identity.trust import Trust

    peers = Trust().peers()
    if as_json:
        _print_json([p.model_dump() for p in peers])
        return
    if not peers:
        typer.echo("no trusted peers; add one with `cats mesh trust add DID --url URL`", err=True)
    for p in peers:
        typer.echo(f"{p.did}  {p.name or '-'}  {p.url or '-'}")


# -- peers ----------------------------------------------------------------------------------------------


def _check(peer: Any, timeout: float) -> dict[str, Any]:
    """Whether the peer's node answers /id with the peer's DID."""
    from cats.errors import CatsError
    from cats.mesh.client import Node

    row = {"did": peer.did, "name": peer.name, "url": peer.url, "status": "no url", "detail": None}
    if not peer.url:
        return row
    try:
        with Node(peer.url, timeout=timeout) as node:
            info = node.id()
    except CatsError as e:
        return {**row, "status": "down", "detail": str(e)}
    if info["did"] != peer.did:
        return {**row, "status": "wrong did", "detail": f"the node there is {info['did']}"}
    return {**row, "status": "reachable", "detail": f"version {info.get('version')}"
                                                    + (", private" if info.get("private") else "")}


def peers(
    as_json: bool = typer.Option(False, "--json", help="Print the peers as a JSON list."),
    timeout: float = typer.Option(3.0, "--timeout", min=0.1, help="Seconds to wait for each node."),
) -> None:
    """Trusted peers, their node URL and whether it answers with their DID (reachable, wrong did, down)."""
    from concurrent.futures import ThreadPoolExecutor

    from cats.identity.trust import Trust

    trusted = Trust().peers()
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(trusted)))) as pool:
        rows = list(pool.map(lambda p: _check(p, timeout), trusted))
    if as_json:
        _print_json(rows)
        return
    if not rows:
        typer.echo("no trusted peers; add one with `cats mesh trust add DID --url URL`", err=True)
        return
    from rich.console import Console
    from rich.table import Table

    colour = {"reachable": "green", "wrong did": "red", "down": "red", "no url": "dim"}
    table = Table("DID", "name", "URL", "status", "detail")
    for r in rows:
        table.add_row(r["did"], r["name"] or "", r["url"] or "", f"[{colour[r['status']]}]{r['status']}[/]",
                      r["detail"] or "")
    console = Console(emoji=False)
    (console if console.is_terminal else Console(width=1 << 12, emoji=False)).print(table)


# -- pull, push, submit ---------------------------------------------------------------------------------


class _PullBar:
    """Bytes and blocks as they arrive, on stderr, when it is a terminal; a no-op otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import DownloadColumn, Progress, SpinnerColumn, TextColumn, TransferSpeedColumn

            self.bar = Progress(SpinnerColumn(), "pulling", DownloadColumn(), TransferSpeedColumn(),
                                TextColumn("{task.fields[blocks]} blocks, {task.fields[skipped]} here already"),
                                console=_err(), transient=True)
            self.task = self.bar.add_task("pull", total=None, blocks=0, skipped=0)

    def __enter__(self) -> Callable[[PullReport], None] | None:
        if self.bar is None:
            return None
        self.bar.start()
        return self.update

    def update(self, report: PullReport) -> None:
        assert self.bar is not None
        self.bar.update(self.task, completed=report.fetched_bytes, blocks=report.fetched_blocks,
                        skipped=report.skipped_blocks)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _identity() -> Identity:
    from cats.identity import Identity

    return Identity.load()


@mesh_app.command()
def pull(
    cid: str = typer.Argument(..., metavar="CID", help="A BOM (its whole lineage comes along) or any DAG."),
    url: str = typer.Option(..., "--from", help="The node's URL, e.g. http://host:8700."),
    pin: bool = typer.Option(True, "--pin/--no-pin", help="Pin the pulled DAG here."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Fetch a DAG from a node, with every block it links and its BOMs' signatures.

    A BOM brings its whole lineage: code, inputs, outputs, records, parent BOMs. Every block is
    checked against its CID; run it again after an interruption and only missing blocks are fetched.
    """
    from cats.cas.pins import Pins
    from cats.cas.store import open_store
    from cats.config import home
    from cats.identity.trust import Trust
    from cats.mesh.client import Node
    from cats.mesh.client import pull as run
    from cats.mesh.routing import Sources

    root = _cid(cid)
    store = open_store()
    with store.lease(), _PullBar(not as_json) as progress, Node(url, _identity()) as node:
        report = run(store, root, url, progress=progress, node=node)
        if pin:
            Pins(home() / "pins").add(store, root)
        if node.did in Trust():  # this node now knows that peer holds the DAG (it answers so, routing v1)
            Sources(home() / "sources.sqlite").add(root, node.did, node.url)
    if as_json:
        _print_json({**report.summary(), "pinned": pin})
        return
    err = _err()
    rate = report.fetched_bytes / report.duration_s if report.duration_s else 0
    err.print(f"[green]pulled[/] {report.blocks} blocks of {root} from {report.url} in {report.duration_s:.2f} s: "
              f"{report.fetched_blocks} fetched ({_size(report.fetched_bytes)}, {_size(rate)}/s), "
              f"{report.skipped_blocks} here already ({_size(report.skipped_bytes)})")
    for bom in report.boms:
        signers = report.signers.get(bom)
        err.print(f"BOM {bom}: " + (f"signed by {', '.join(signers)}" if signers else "[yellow]no signature[/]"))
    typer.echo(str(root))


@mesh_app.command()
def push(
    cid: str = typer.Argument(..., metavar="CID", help="A DAG in the local store (a BOM: its whole lineage)."),
    url: str = typer.Option(..., "--to", help="The node's URL; it must trust this node (`cats id`)."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Send a DAG to a node that trusts this one, pin it there, and send the BOMs' signatures."""
    from cats.cas.store import open_store
    from cats.mesh.client import push as run

    root = _cid(cid)
    with _err().status(f"pushing {root}", spinner="dots") if sys.stderr.isatty() and not as_json else _null():
        report = run(open_store(), root, url, _identity())
    if as_json:
        _print_json(report.summary())
        return
    what = "the node had it whole already" if report.complete_there else \
        f"{report.blocks} blocks ({_size(report.bytes)}) in {report.requests} request(s)"
    _err().print(f"[green]pushed[/] {root} to {report.url} in {report.duration_s:.2f} s: {what}; pinned there"
                 + (f"; {len(report.signed)} BOM signature(s) sent" if report.signed else ""))
    typer.echo(str(root))


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@mesh_app.command()
def submit(
    order_file: Path = typer.Argument(..., metavar="ORDER.py", help="A Python file defining `order`."),
    url: str | None = typer.Option(None, "--to", help="The node that runs it; it must trust this node (`cats id`). "
                                                     "`auto`: the trusted peer whose node holds the most input bytes."),
    federate: bool = typer.Option(False, "--federate", help="Run each input on the trusted peer's node holding it "
                                  "and merge the parts' output folders here, moving no data."),
    timeout: float = typer.Option(3600.0, "--timeout", min=1, help="Seconds to wait for the run."),
    fetch_output: bool = typer.Option(False, "--fetch-output", help="Pull the output's DAG here too."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (bom, order, output, …)."),
) -> None:
    """Run an Order on another node, next to its data; print the BOM CID last.

    The Order is sealed here; the node is sent what it lacks of it and this node holds (the Order,
    code, lock, IaC, inputs) and pulls inputs neither holds from its trusted peers, or refuses the
    Order naming them. The signed BOM comes back, and the output only with --fetch-output.

    With --federate, inputs held on several trusted peers' nodes stay there: each node runs the Order
    over those it holds and signs its BOM, and this node merges the parts' output folders (their
    folder blocks only) into a BOM of its own linking theirs (`cats verify --recursive` walks them).
    """
    from cats.api import submit as run
    from cats.cli.run import _load_order
    from cats.errors import CatsError

    if federate == (url is not None):
        raise CatsError("cats mesh submit needs either --to URL|auto or --federate")
    order = _load_order(order_file)
    if url is None:
        _federate(order, timeout, fetch_output, as_json)
        return
    placement = _place(order) if url == "auto" else None
    if placement is not None:
        url = placement.chosen.url
        _err().print(f"--to auto: {url} ({placement.chosen.did}): {placement.reason}")
    if sys.stderr.isatty() and not as_json:
        with _err().status(f"submitting to {url}", spinner="dots") as status:
            result = run(order, to=url, timeout=timeout, fetch_output=fetch_output,
                         progress=lambda s: status.update(f"order {s} on {url}"))
    else:
        result = run(order, to=url, timeout=timeout, fetch_output=fetch_output)
    if as_json:
        typer.echo(json.dumps({**result.summary(), **({"placement": placement.summary()} if placement else {})}))
        return
    signers = result.pulled.signers.get(result.bom) or []
    pushed = result.pushed
    sent = ("the node had the Order whole already" if pushed.complete_there else
            f"sent {pushed.blocks} blocks ({_size(pushed.bytes)})"
            + (f"; {len(pushed.present_there)} named DAG(s) were there already" if pushed.present_there else "")
            + (f"; {len(pushed.not_held)} came from the node's peers" if pushed.not_held else ""))
    fetched = (f"pulled here ({_size(result.output_pulled.fetched_bytes)})" if result.output_pulled is not None
               else "left on the node (--fetch-output pulls it)")
    _err().print(f"[green]done[/] on {result.url} in {result.duration_s:.2f} s (job {result.job}); {sent}\n"
                 f"order  {result.order}\noutput {result.output}: {fetched}\n"
                 + (f"signed by {', '.join(signers)}" if signers else "[yellow]the BOM came back unsigned[/]"))
    typer.echo(result.bom)


def _federate(order: Any, timeout: float, fetch_output: bool, as_json: bool) -> None:
    from cats.api import federate
    from cats.errors import CatsError

    if fetch_output:
        raise CatsError("--federate leaves each part's output on its node: pull the merged folder's files with "
                        "cats mesh pull")
    if sys.stderr.isatty() and not as_json:
        with _err().status("federating", spinner="dots") as status:
            result = federate(order, timeout=timeout, progress=lambda url, s: status.update(f"order {s} on {url}"))
    else:
        result = federate(order, timeout=timeout)
    if as_json:
        typer.echo(json.dumps(result.summary()))
        return
    lines = [f"part on {p.url} ({p.did}): input(s) {', '.join(map(str, p.inputs))}, BOM {p.bom}"
             for p in result.parts]
    _err().print("\n".join(lines) + f"\n[green]done[/] in {result.duration_s:.2f} s; crossed borders: "
                 f"{_size(result.pushed)} sent (Orders, code), {_size(result.pulled)} fetched (BOMs, records, "
                 f"folder blocks), {_size(result.data)} of data\norder  {result.order}\noutput {result.output}")
    typer.echo(result.bom)


def _place(order: Any) -> Any:
    """--to auto: ask every trusted peer's node (IPFS routing v1) where the Order's CID inputs are."""
    from cats.cas.cid import CID
    from cats.identity.trust import Trust
    from cats.mesh.routing import locate

    inputs = [i for i in order.inputs if isinstance(i, CID)]
    return locate(inputs, [(p.did, p.url) for p in Trust().peers() if p.url])


@mesh_app.command()
def cancel(
    job: str = typer.Argument(..., metavar="JOB", help="The order's id on that node (`cats mesh submit` prints it)."),
    url: str = typer.Option(..., "--to", help="The node running it."),
    as_json: bool = typer.Option(False, "--json", help="Print the order's status as one JSON object."),
) -> None:
    """Cancel an order on a node: a queued one never runs, a running one is stopped.

    Signed with this node's identity: the order's submitter may cancel it, and so may the node's
    operator (its own identity, from its CATS_HOME). An order that has ended already is left as it is
    (exit status 1, saying so).
    """
    from cats.mesh.client import Node

    with Node(url, _identity()) as node:
        state = node.cancel(job)
    if as_json:
        _print_json(state)
    else:
        typer.echo(f"order {job} on {node.url}: {state.get('status')}")


def register(app: typer.Typer) -> None:
    app.command("id")(ident)
    mesh_app.command()(peers)
    app.add_typer(mesh_app, name="mesh")
