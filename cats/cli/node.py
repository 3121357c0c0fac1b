"""`cats node start`: run this machine as a CAT Node (serving blocks and BOMs, running Orders for trusted peers).

FastAPI and uvicorn are imported inside the command, so `cats --help` stays fast.
"""

from __future__ import annotations

import logging
from typing import Any

import typer

node_app = typer.Typer(help="This machine as a CAT Node: serve its blocks and BOMs, run Orders for trusted peers.",
                       no_args_is_help=True)


@node_app.command()
def start(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8480, "--port", min=0, max=65535, help="Port (0: any free one, printed)."),
    private: bool = typer.Option(False, "--private", help="Reads too need a signed request from a trusted peer."),
    log_level: str = typer.Option("warning", "--log-level", help="Log level: debug, info, warning, error."),
) -> None:
    """Run the node in the foreground (state in CATS_HOME; its own in CATS_HOME/node/) until Ctrl-C or SIGTERM."""
    from cats.mesh.node.app import create_app, log
    from cats.web import listen, run, state_dir, url_of

    folder = state_dir("node")
    sock = listen(host, port)

    def ready(app: Any) -> None:
        node = app.state.node
        typer.echo(f"cats node {node.identity.did} listening on {url_of(sock)}")
        peers = len(node.trust.peers())
        typer.echo(f"{'private' if private else 'public'} node; state in {folder.parent}; {peers} trusted peer(s)"
                   + ("" if peers else ": add one with `cats mesh trust add DID`"), err=True)
        if host not in ("127.0.0.1", "::1", "localhost"):
            typer.echo("warning: plain HTTP beyond loopback; put TLS in front (requests are signed, not encrypted)",
                       err=True)

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.getLevelNamesMapping().get(log_level.upper(), logging.DEBUG))
    # an order still running at the end is stopped and recorded as interrupted (the app's lifespan)
    run(create_app(folder, private=private), sock, log_level=log_level, ready=ready)
    typer.echo("cats node stopped", err=True)


def register(app: typer.Typer) -> None:
    app.add_typer(node_app, name="node")
