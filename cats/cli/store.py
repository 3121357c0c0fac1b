"""Content-store commands: add, cat, get, ls, export, import, pin, gc, repair."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cats.cas.cid import CID
from cats.cas.store import BlockStore, PinningStore, open_store
from cats.config import home
from cats.errors import CatsError

if TYPE_CHECKING:  # imported lazily to keep start-up light
    from rich.progress import Progress

    from cats.cas.pins import Pins


def _store() -> BlockStore:
    return open_store()


def _pins() -> Pins:
    from cats.cas.pins import Pins

    return Pins(home() / "pins")


def _print_json(value: object) -> None:
    typer.echo(json.dumps(value, indent=2))


def _named(key: str, name: str) -> dict[str, str]:
    """A file name for --json: as `names.display` shows it, and, when its bytes are not UTF-8 (which no
    JSON string can hold), those exact bytes in standard base64 under `<key>_base64`."""
    from cats.cas import names

    if names.is_text(name):
        return {key: name}
    return {key: names.display(name), f"{key}_base64": base64.b64encode(names.encode(name)).decode()}


def add(
    path: Path = typer.Argument(..., help="File or folder to add."),
    recursive: bool = typer.Option(False, "-r", "--recursive", help="Add a folder and everything in it."),
    cid_version: int = typer.Option(1, "--cid-version", min=0, max=1,
                                    help="0: Qm… with dag-pb leaves (kubo's default); 1: base32 with raw leaves."),
    only_hash: bool = typer.Option(False, "-n", "--only-hash", help="Compute CIDs; write nothing."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print only the root CID."),
    hashfn: str = typer.Option("sha2-256", "--hash", help="Multihash function: sha2-256 or blake3."),
    hidden: bool = typer.Option(False, "-H", "--hidden", help="Include files whose names start with a dot."),
    pin: bool = typer.Option(True, "--pin/--no-pin", help="Pin the added root so gc keeps it."),
    as_json: bool = typer.Option(False, "--json", help="Print entries as a JSON list."),
) -> None:
    """Add a file or folder; print `added CID PATH` per entry, the root last (as `ipfs add`).

    Names are stored as the bytes the file system holds, as kubo stores them; those that are not UTF-8
    are printed as `cats ls` prints them."""
    from cats.cas import names
    from cats.cas.importer import Importer

    store = None if only_hash else _store()
    total = _size_of(path) if sys.stderr.isatty() and not quiet and not as_json else 0
    with _lease(store), _progress(total) as advance, Importer(store, cid_version, hashfn, hidden=hidden,
                                                              progress=advance) as importer:
        entries = []
        for added in importer.add_path(path, recursive=recursive):
            entries.append(added)
            if not quiet and not as_json:
                typer.echo(f"added {added.cid} {names.display(added.path)}")
        root = entries[-1]
        if pin and store is not None:
            _pins().add(store, root.cid)
    if quiet:
        typer.echo(str(root.cid))
    elif as_json:
        _print_json([{**_named("path", e.path), "cid": str(e.cid), "size": e.size, "kind": e.kind} for e in entries])


def _lease(store: BlockStore | None) -> contextlib.AbstractContextManager[None]:
    """A writer's lease on store until the root is pinned, so a gc running beside spares every block."""
    return contextlib.nullcontext() if store is None else store.lease()


def _size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


class _progress:
    """A rich progress bar on stderr for adds above 64 MiB; a no-op otherwise."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.bar: Progress | None = None

    def __enter__(self) -> Callable[[int], None] | None:
        if self.total < 64 << 20:
            return None
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        bar = self.bar = Progress("adding", BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=True)
        bar.start()
        task = bar.add_task("add", total=self.total)
        return lambda n: bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def cat(
    target: str = typer.Argument(..., metavar="CID[/PATH]", help="A file's CID, or a path inside a folder CID."),
    offset: int = typer.Option(0, "--offset", min=0, help="Start at this byte."),
    length: int | None = typer.Option(None, "--length", min=0, help="Read at most this many bytes."),
    decode: bool = typer.Option(False, "--decode", help="Print the result decoded by the encoding its run recorded "
                                "(a BOM: its output): DAG-CBOR and folders as DAG-JSON, Arrow tables as JSON lines, "
                                "arrays as JSON, str as text, bytes as they are."),
) -> None:
    """Write a file's bytes to stdout (only the blocks covering --offset/--length are read)."""
    from cats.cas import reader

    store = _store()
    root, path = reader.split_path(target)
    cid = reader.resolve(store, root, path)
    out = sys.stdout.buffer
    if decode:
        from cats.factory.outputs import read

        if offset or length is not None:
            raise CatsError("--decode reads a whole result: leave out --offset and --length")
        out.write(_printable(read(cid, store=store)))
    else:
        for chunk in reader.read(store, cid, offset, length):
            out.write(chunk)
    out.flush()


def _printable(value: Any) -> bytes:
    """A decoded result as stdout shows it: bytes and text as they are, an Arrow table as one JSON object
    per row, a numpy array as nested JSON lists, anything else (the IPLD data model) as DAG-JSON."""
    from cats.cas import dagjson

    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    kind = type(value).__module__.split(".")[0]
    if kind == "pyarrow":
        return b"".join(_json(row) + b"\n" for row in value.to_pylist())
    if kind == "numpy":
        return _json(value.tolist()) + b"\n"
    if isinstance(value, dict):  # a folder's names may not be UTF-8 (DAG-JSON holds text): shown as `cats ls` does
        from cats.cas import names

        value = {k if names.is_text(k) else names.display(k): v for k, v in value.items()}
    return dagjson.encode(value) + b"\n"


def _json(value: object) -> bytes:
    """JSON of Arrow cells and array items: bytes the DAG-JSON way, dates and times in ISO 8601, other
    scalars JSON lacks (decimals, durations) as text, NaN and infinities as null."""
    import math

    from cats.cas import dagjson

    def plain(v: object) -> object:
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, bytes):
            return json.loads(dagjson.encode(v))
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if v is None or isinstance(v, (bool, int, str)):
            return v
        isoformat = getattr(v, "isoformat", None)
        return isoformat() if callable(isoformat) else str(v)

    return json.dumps(plain(value), ensure_ascii=False).encode()


def get(
    target: str = typer.Argument(..., metavar="CID[/PATH]"),
    output: Path | None = typer.Option(None, "-o", "--output",
                                       help="Destination (default: the CID or last path part)."),
    allow_outside_links: bool = typer.Option(False, "--allow-outside-links",
                                             help="Write symlinks that point outside the destination (each with "
                                                  "a warning) instead of refusing the tree."),
) -> None:
    """Write a file or folder tree to disk; nothing is left behind if it fails. A tree whose symlinks
    would lead outside the destination is refused unless --allow-outside-links."""
    from cats.cas import names, reader

    store = _store()
    root, path = reader.split_path(target)
    cid = reader.resolve(store, root, path)
    dest = output or Path(path.rsplit("/", 1)[-1] if path else str(root))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader.get(store, cid, dest, allow_outside_links=allow_outside_links)
    for warning in caught:
        typer.echo(f"warning: {warning.message}", err=True)
    typer.echo(f"saved {cid} to {names.display(str(dest))}")


def ls(
    target: str = typer.Argument(..., metavar="CID[/PATH]"),
    as_json: bool = typer.Option(False, "--json", help="Print entries as JSON."),
) -> None:
    """List a folder: CID, size and name of each entry.

    A name whose bytes are not UTF-8 is shown with `\\xNN` escapes for those bytes; --json gives the same
    text in "name" and the exact bytes in "name_base64"."""
    from cats.cas import names, reader

    store = _store()
    root, path = reader.split_path(target)
    items = reader.ls(store, reader.resolve(store, root, path))
    if as_json:
        _print_json([{**_named("name", i.name), "cid": str(i.cid), "kind": i.kind, "size": i.size} for i in items])
        return
    for i in items:
        typer.echo(f"{i.cid} {i.size:>12} {names.display(i.name)}{'/' if i.kind == 'dir' else ''}")


def export(
    target: str = typer.Argument(..., metavar="CID"),
    output: Path = typer.Option(..., "-o", "--output", help="The CAR file to write."),
) -> None:
    """Export a DAG as a CAR v1 file (written to a temporary name, then renamed)."""
    from cats.cas import car

    cid = CID.parse(target)
    store = _store()
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent if str(output.parent) else ".")
    try:
        with os.fdopen(fd, "wb") as f:
            count = car.export(store, [cid], f)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    typer.echo(f"exported {count} blocks of {cid} to {output}")


def import_(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="A CAR v1 file."),
    pin: bool = typer.Option(True, "--pin/--no-pin", help="Pin the CAR's roots."),
) -> None:
    """Import a CAR v1 file: every block is checked; all or nothing."""
    from cats.cas import car

    store = _store()
    with store.lease():
        with open(path, "rb") as f:
            roots, count = car.import_car(store, f)
        pins = _pins() if pin else None
        for root in roots:
            if pins is not None:
                pins.add(store, root)
            typer.echo(f"imported {root}")
    typer.echo(f"{count} blocks")


pin_app = typer.Typer(help="Keep DAGs from garbage collection.", no_args_is_help=True)


@pin_app.command("add")
def pin_add(cids: list[str] = typer.Argument(..., metavar="CID...")) -> None:
    """Pin DAGs recursively (every block must be present)."""
    store, pins = _store(), _pins()
    for text in cids:
        cid = CID.parse(text)
        count = pins.add(store, cid)
        typer.echo(f"pinned {cid} ({count} blocks)")


@pin_app.command("rm")
def pin_rm(cids: list[str] = typer.Argument(..., metavar="CID...")) -> None:
    """Unpin DAGs (in an IPFS daemon store too); their blocks go at the next gc unless another pin reaches them."""
    store, pins = _store(), _pins()
    for text in cids:
        cid = CID.parse(text)
        pins.rm(store, cid)
        typer.echo(f"unpinned {cid}")


@pin_app.command("ls")
def pin_ls(as_json: bool = typer.Option(False, "--json")) -> None:
    """List pinned roots; in an IPFS daemon store, every recursive pin it holds (what its gc keeps)."""
    store = _store()
    roots = [str(c) for c in (store.pins() if isinstance(store, PinningStore) else _pins())]
    if as_json:
        _print_json(roots)
    else:
        for r in roots:
            typer.echo(r)


def gc(as_json: bool = typer.Option(False, "--json")) -> None:
    """Remove blocks that no pin reaches; in an IPFS daemon store, run the daemon's own gc (after
    pinning every CATs pin there), which keeps whatever the daemon pins."""
    from cats.cas.pins import gc as collect

    removed = collect(_store(), _pins())
    if as_json:
        _print_json({"removed": [str(c) for c in removed]})
    else:
        typer.echo(f"removed {len(removed)} blocks")


def repair(
    cids: list[str] = typer.Argument(None, metavar="[CID...]",
                                     help="Check these DAGs (default: every pinned DAG and every stored block)."),
    cars: list[Path] = typer.Option([], "--car", exists=True, dir_okay=False, help="A CAR file holding good copies."),
    paths: list[Path] = typer.Option([], "--from", help="A file or folder to import again for good copies "
                                     "(with --cid-version, --hash, -H as it was added)."),
    peers: list[str] = typer.Option([], "--peer", help="A trusted node's URL to fetch good copies from."),
    cid_version: int = typer.Option(1, "--cid-version", min=0, max=1, help="How --from was added: CID version."),
    hashfn: str = typer.Option("sha2-256", "--hash", help="How --from was added: multihash function."),
    hidden: bool = typer.Option(False, "-H", "--hidden", help="How --from was added: with dot files."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check blocks against their CIDs and restore bad or missing ones from CARs, files or peers.

    Every block a source gives is hashed against its CID before it is written. Exits 1 if any block
    is still bad or missing."""
    from cats.cas.repair import car_source, path_source
    from cats.cas.repair import repair as run

    store = _store()
    roots = [CID.parse(c) for c in cids or []]
    with contextlib.ExitStack() as stack, store.lease():
        sources = [(f"car {p}", stack.enter_context(car_source(p))) for p in cars]
        sources += [(f"from {p}", stack.enter_context(path_source(store, p, cid_version, hashfn, hidden)))
                    for p in paths]
        if peers:
            from cats.identity import Identity
            from cats.mesh.client import Node

            identity = Identity.load()
            sources += [(f"peer {url}", stack.enter_context(Node(url, identity)).block) for url in peers]
        report = run(store, roots or list(_pins()), sources, every_block=not roots)
    if as_json:
        _print_json(report.summary())
    else:
        for cid, state in report.bad.items():
            how = report.repaired.get(cid)
            typer.echo(f"{state} {cid}: " + (f"repaired ({how})" if how else "still bad"))
        typer.echo(f"checked {report.checked} blocks: {len(report.bad)} bad, {len(report.repaired)} repaired, "
                   f"{len(report.still_bad)} still bad")
    if report.still_bad:
        more = f" and {len(report.still_bad) - 1} more" if len(report.still_bad) > 1 else ""
        raise CatsError(f"block {report.still_bad[0]}{more} still bad or missing: give a --car, --from or --peer "
                        "that holds it")


def register(app: typer.Typer) -> None:
    app.command()(add)
    app.command()(cat)
    app.command()(get)
    app.command()(ls)
    app.command()(export)
    app.command("import")(import_)
    app.add_typer(pin_app, name="pin")
    app.command()(gc)
    app.command()(repair)
