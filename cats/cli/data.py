"""`cats data`: the Data Service (serve, token add) and its client (register, get, sign, log, rm), and cache stats.

The client commands read the service's URL from `CATS_DATA_SERVICE` and the token from
`CATS_DATA_TOKEN`. FastAPI, uvicorn and pyarrow are imported inside the commands that need them.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:  # imported lazily to keep start-up light
    from rich.console import Console

    from cats.data.service.client import Client

data_app = typer.Typer(help="Datasets by URI: the Data Service, its client, and the worker data cache.",
                       no_args_is_help=True)
token_app = typer.Typer(help="Principals of the Data Service and their bearer tokens.", no_args_is_help=True)
data_app.add_typer(token_app, name="token")


def _print_json(value: object) -> None:
    typer.echo(json.dumps(value, indent=2))


def _console() -> Console:
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=1 << 16)  # piped: never wrap a URI


def _client() -> Client:
    from cats.data.service.client import Client

    return Client()


@data_app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8470, "--port", min=0, max=65535, help="Port (0: any free one, printed)."),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn's log level: debug, info, warning, error."),
    allow_host: list[str] | None = typer.Option(
        None, "--allow-host", help="A host name, IP address or network (10.0.0.0/8) the service may fetch from "
                                   "although it is loopback, private or link-local (repeatable; adds to "
                                   "CATS_DATA_ALLOW_HOSTS)."),
) -> None:
    """Run the Data Service in the foreground (state in CATS_HOME/dataservice/) until Ctrl-C or SIGTERM.

    It reads file:// only inside CATS_DATA_ROOTS (nothing while unset) and never inside CATS_HOME; it
    fetches from no loopback, private or link-local address unless allowed; ipfs:// only pinned DAGs.
    """
    from cats.data.reach import Reach
    from cats.data.service.app import create_app
    from cats.web import listen, run, state_dir, url_of

    folder = state_dir("dataservice")
    reach = Reach.service(allow_hosts=allow_host)
    sock = listen(host, port)

    def ready(app: Any) -> None:
        typer.echo(f"cats data service listening on {url_of(sock)}", err=False)
        where = f"inside {os.pathsep.join(reach.roots)}" if reach.roots else "nowhere (set CATS_DATA_ROOTS)"
        typer.echo(f"state in {folder}; file:// URIs are read {where}, never inside CATS_HOME", err=True)
        typer.echo(f"special addresses (loopback, private, link-local, ...) it may fetch from: {reach.hosts}",
                   err=True)
        if not app.state.db.principals():
            typer.echo("no principals yet: add one with `cats data token add NAME`", err=True)
        if host not in ("127.0.0.1", "::1", "localhost"):
            typer.echo("warning: plain HTTP beyond loopback sends tokens in clear; put TLS in front", err=True)

    run(create_app(folder, reach), sock, log_level=log_level, ready=ready)
    typer.echo("cats data service stopped", err=True)


@token_app.command("add")
def token_add(
    name: str = typer.Argument(..., help="The principal's name (letters, digits, _ . @ -)."),
    rotate: bool = typer.Option(False, "--rotate", help="Replace the token of an existing principal."),
    as_json: bool = typer.Option(False, "--json", help="Print {principal, token} as JSON."),
) -> None:
    """Create a principal in CATS_HOME/dataservice/ and print its bearer token (shown this once only)."""
    from cats.data.service.db import ServiceDB
    from cats.data.service.models import PRINCIPAL
    from cats.data.service.signing import new_token, token_digest
    from cats.errors import CatsError
    from cats.web import state_dir

    if not re.fullmatch(PRINCIPAL, name):
        raise CatsError(f"principal name {name!r} must be 1-64 letters, digits, _ . @ - (starting with one "
                        "letter or digit)")
    token = new_token()
    db = ServiceDB(state_dir("dataservice") / "state.sqlite")
    try:
        db.add_principal(name, token_digest(token), time.time(), rotate=rotate)
    finally:
        db.close()
    if as_json:
        _print_json({"principal": name, "token": token})
        return
    typer.echo(token)
    typer.echo(f"token of {name}: keep it, it is shown only once (set CATS_DATA_TOKEN to it)", err=True)


@data_app.command("register")
def register_(
    uri: str = typer.Argument(..., help="The dataset's URI (s3://, https://, file://, ipfs://, ...)."),
    replica: list[str] | None = typer.Option(None, "--replica", help="Another URI with the same bytes (repeatable)."),
    ttl: float | None = typer.Option(None, "--ttl", min=0.001, help="Seconds until the dataset expires."),
    reader: list[str] | None = typer.Option(None, "--reader", help="A principal who may read it (repeatable)."),
    meta: str | None = typer.Option(None, "--meta", help="JSON metadata overriding what is computed, "
                                                         'e.g. \'{"partitioning": ["year"]}\'.'),
    checksum: bool = typer.Option(False, "--checksum", help="Read the whole object to record its SHA-256."),
    no_inspect: bool = typer.Option(False, "--no-inspect", help="Compute nothing here: register as given."),
    as_json: bool = typer.Option(False, "--json", help="Print the registered dataset as JSON."),
) -> None:
    """Register a URI with the Data Service; you own it. Size, version, format, npy/Parquet layout are computed here."""
    from pydantic import ValidationError

    from cats.data.service.models import Meta
    from cats.errors import CatsError

    fields: dict[str, Any] = {}
    if not no_inspect:
        from cats.data.service.probe import describe

        fields = describe(uri, checksum=checksum).model_dump(exclude_none=True)
    if meta:
        try:
            given = json.loads(meta)
        except ValueError as e:
            raise CatsError(f"--meta is not JSON: {e}") from None
        if not isinstance(given, dict):
            raise CatsError("--meta must be a JSON object")
        fields.update(given)
    try:
        described = Meta.model_validate(fields)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise CatsError(f"metadata for {uri} is invalid: {problems}") from None
    with _client() as client:
        dataset = client.register(uri, described, ttl_s=ttl, readers=reader, replicas=replica)
    if as_json:
        _print_json(dataset.model_dump(mode="json"))
        return
    _show(dataset)


@data_app.command()
def get(
    handle: str = typer.Argument(..., help="A dataset handle from `cats data register`."),
    as_json: bool = typer.Option(False, "--json", help="Print the dataset as JSON."),
) -> None:
    """Show a dataset's URIs, metadata, owner, readers and expiry (its owner and readers only)."""
    with _client() as client:
        dataset = client.get(handle)
    if as_json:
        _print_json(dataset.model_dump(mode="json"))
        return
    _show(dataset)


def _show(dataset: Any) -> None:
    from rich.table import Table

    table = Table(show_header=False, box=None)
    table.add_row("handle", dataset.handle)
    for i, uri in enumerate(dataset.uris):
        table.add_row("uri" if i == 0 else f"replica {i}", uri)
    table.add_row("owner", dataset.owner)
    table.add_row("readers", ", ".join(dataset.readers) or "-")
    table.add_row("expires", dataset.expires_at.isoformat() if dataset.expires_at else "never")
    for name, value in dataset.meta.model_dump(exclude_none=True).items():
        if name == "chunking":
            value = f"{value['kind']}, {len(value['chunks'])} chunk(s)"
        table.add_row(name, value if isinstance(value, str) else json.dumps(value))
    _console().print(table)


@data_app.command()
def sign(
    handle: str = typer.Argument(..., help="A dataset handle you may read."),
    ttl: float = typer.Option(3600.0, "--ttl", min=0.001, max=86400.0, help="Seconds it stays valid (at most 24 h)."),
    replica: int = typer.Option(0, "--replica", min=0, help="Which of the dataset's URIs to read through it."),
    as_json: bool = typer.Option(False, "--json", help="Print {handle, signed_uri, sub, expires_at} as JSON."),
) -> None:
    """Print a URL of the service that streams the dataset; it works only with your token, until it expires."""
    with _client() as client:
        signed = client.sign(handle, ttl_s=ttl, replica=replica)
    if as_json:
        _print_json(signed.model_dump(mode="json"))
        return
    typer.echo(signed.signed_uri)
    typer.echo(f"valid until {signed.expires_at.isoformat()} for {signed.sub} only", err=True)


@data_app.command()
def log(
    handle: str = typer.Argument(..., help="A dataset handle you own."),
    limit: int = typer.Option(1000, "--limit", min=1, help="The newest this many entries."),
    as_json: bool = typer.Option(False, "--json", help="Print the entries as JSON."),
) -> None:
    """Show who accessed a dataset, how, and what they were answered (its owner only)."""
    with _client() as client:
        entries = client.log(handle, limit=limit).entries
    if as_json:
        _print_json([e.model_dump(mode="json") for e in entries])
        return
    from rich.table import Table

    table = Table("time", "principal", "action", "status", "bytes", "detail")
    for e in entries:
        table.add_row(e.time.isoformat(timespec="seconds"), e.principal or "-", e.action, str(e.status),
                      str(e.bytes), e.detail or "")
    _console().print(table)


@data_app.command()
def rm(handle: str = typer.Argument(..., help="A dataset handle you own.")) -> None:
    """Forget a dataset (its owner only); its access log stays with the service."""
    with _client() as client:
        client.delete(handle)
    typer.echo(f"deleted {handle}")


@data_app.command()
def stats(as_json: bool = typer.Option(False, "--json", help="Print the counters as JSON.")) -> None:
    """The worker data cache of this machine (CATS_HOME/cache/data): hits, misses, bytes, latency, entries."""
    from cats.data.cache import Cache

    cache = Cache()
    try:
        counters = cache.stats()
    finally:
        cache.close()
    if as_json:
        _print_json(counters)
        return
    from rich.table import Table

    table = Table("counter", "value")
    for name, value in counters.items():
        if name == "mean_fetch_s":
            text = f"{value * 1000:.3f} ms"
        else:
            text = f"{value:,}" if isinstance(value, int) else f"{value:g}"
        table.add_row(name, text)
    _console().print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
