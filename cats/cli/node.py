"""`cats node start|orders`: run this machine as a CAT Node (serving blocks and BOMs, running Orders for
trusted peers), and list the orders it was given.

FastAPI and uvicorn are imported inside the command, so `cats --help` stays fast.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import typer

node_app = typer.Typer(help="This machine as a CAT Node: serve its blocks and BOMs, run Orders for trusted peers.",
                       no_args_is_help=True)


@node_app.command()
def start(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8480, "--port", min=0, max=65535, help="Port (0: any free one, printed)."),
    private: bool = typer.Option(False, "--private", help="Reads too need a signed request from a trusted peer."),
    unconfined: bool = typer.Option(False, "--unconfined",
                                    help="Run peers' Orders without confinement, with this node's full rights "
                                         "(its identity key, trust list, files and processes): only for peers you "
                                         "trust as yourself."),
    allow_network: bool = typer.Option(False, "--allow-network",
                                       help="Give network access to Orders that declare it (plant.network); "
                                            "without it they are refused."),
    max_output: int = typer.Option(1 << 30, "--max-output", min=1, metavar="BYTES",  # confine.Policy's default
                                   help="Largest result of one slice of a confined Order, in bytes."),
    max_order_seconds: float = typer.Option(3600.0, "--max-order-seconds", min=0.001, metavar="S",
                                            help="Wall time one order may run before it is stopped and recorded "
                                                 "failed (whatever its Plant's timeout_s)."),
    data_root: list[str] | None = typer.Option(
        None, "--data-root", metavar="PATH",
        help="A folder whose files peers' Orders may name as file:// inputs (repeatable; adds to CATS_DATA_ROOTS; "
             "never CATS_HOME)."),
    allow_host: list[str] | None = typer.Option(
        None, "--allow-host", help="A host name, IP address or network (10.0.0.0/8) peers' Orders may name in "
                                   "http(s):// inputs although it is loopback, private or link-local (repeatable; "
                                   "adds to CATS_DATA_ALLOW_HOSTS)."),
    log_level: str = typer.Option("warning", "--log-level", help="Log level: debug, info, warning, error."),
) -> None:
    """Run the node in the foreground (state in CATS_HOME; its own in CATS_HOME/node/) until Ctrl-C or SIGTERM.

    Peers' Orders run one at a time, each confined (a sandbox: its input, its code read-only, no
    identity key, no other process, no network unless allowed), unless --unconfined. On Ctrl-C or
    SIGTERM the node takes no new order, cancels the one running and keeps the queued ones for its
    next start. The node reads a confined Order's input URIs as the Data Service reads for its callers:
    file:// only inside CATS_DATA_ROOTS and --data-root (nothing while neither is set), never inside
    CATS_HOME; no loopback, private or link-local host unless allowed; ipfs:// only pinned DAGs.
    """
    from cats.data.reach import Reach
    from cats.mesh.node.app import create_app, log
    from cats.mesh.node.orders import NodePolicy
    from cats.web import listen, run, state_dir, url_of

    folder = state_dir("node")
    reach = Reach.service(allow_hosts=allow_host, roots=data_root)
    policy = NodePolicy(unconfined=unconfined, allow_network=allow_network, max_output=max_output,
                        max_order_seconds=max_order_seconds, reach=reach)
    sock = listen(host, port)

    def ready(app: Any) -> None:
        node = app.state.node
        typer.echo(f"cats node {node.identity.did} listening on {url_of(sock)}")
        peers = len(node.trust.peers())
        typer.echo(f"{'private' if private else 'public'} node; state in {folder.parent}; {peers} trusted peer(s)"
                   + ("" if peers else ": add one with `cats mesh trust add DID`"), err=True)
        if node.refusal is not None:
            typer.echo(f"warning: every Order will be refused: {node.refusal}", err=True)
        elif unconfined:
            typer.echo("warning: --unconfined: peers' Orders run with this node's full rights; they can read its "
                       "identity key (and sign BOMs and requests as this node), its trust list, every file and "
                       "process of its user, and the network", err=True)
        else:
            typer.echo(f"Orders run confined; network {'given to those declaring it' if allow_network else 'refused'};"
                       f" at most {max_output} bytes per slice and {max_order_seconds:g} s per order", err=True)
            where = f"inside {os.pathsep.join(reach.roots)}" if reach.roots else "nowhere (see --data-root)"
            typer.echo(f"their file:// inputs are read {where}, never inside CATS_HOME; special addresses "
                       f"(loopback, private, link-local, ...) their inputs may name: {reach.hosts}", err=True)
        if host not in ("127.0.0.1", "::1", "localhost"):
            typer.echo("warning: plain HTTP beyond loopback; put TLS in front (requests are signed, not encrypted)",
                       err=True)

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.getLevelNamesMapping().get(log_level.upper(), logging.DEBUG))
    # on the way out the running order is stopped and recorded cancelled (the app's lifespan)
    run(create_app(folder, private=private, policy=policy), sock, log_level=log_level, ready=ready)
    typer.echo("cats node stopped", err=True)


@node_app.command()
def orders(
    status: str | None = typer.Option(None, "--status", metavar="S",
                                      help="Only orders with this status: queued, running, done, failed, cancelled."),
    as_json: bool = typer.Option(False, "--json", help="Print the orders as a JSON list."),
) -> None:
    """List the orders this node was given, oldest first, from its state in CATS_HOME (running or not):
    its jobs of kind `node` (`cats jobs` lists them with this home's own runs)."""
    from cats.bom.jobs import STATUSES, JobTable
    from cats.config import home
    from cats.errors import CatsError
    from cats.mesh.node.models import OrderEntry

    if status is not None and status not in STATUSES:
        raise CatsError(f"--status {status!r} is none of {', '.join(STATUSES)}")
    path = home() / "jobs.sqlite"
    rows = []
    if path.exists():  # a home that never ran anything has none, and listing them creates nothing
        table = JobTable(path)
        try:
            rows = table.reap(table.rows(status=status, kind="node"))
        finally:
            table.close()
    entries = [OrderEntry.of(row) for row in rows]
    if as_json:
        typer.echo(json.dumps([e.model_dump() for e in entries], indent=2))
        return
    if not entries:
        typer.echo("no orders" + (f" {status}" if status else "") + " on this node", err=True)
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from cats.cli._text import printable, when

    table_out = Table("id", "status", "order", "submitter", "created", "started", "finished", "BOM or error")
    for e in entries:
        if e.bom:
            outcome = e.bom
        elif e.error:
            outcome = (e.error.strip().splitlines() or [""])[0]
        else:
            outcome = "-"
        # an error is a peer's code's own words: text, never markup or terminal control
        table_out.add_row(e.id, e.status, e.order, e.submitter, when(e.created), when(e.started),
                          when(e.finished), escape(printable(outcome)))
    console = Console(emoji=False)  # a DID holds ":key:", which rich would draw as an emoji
    (console if console.is_terminal else Console(width=1 << 12, emoji=False)).print(table_out)


def register(app: typer.Typer) -> None:
    app.add_typer(node_app, name="node")
