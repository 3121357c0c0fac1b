"""What runs inside a Ray worker: load the code by CID, read each slice from the store, call the
function, encode and store the result. Only CIDs and small records go back to the driver.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import shutil
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cats import data as cats_data
from cats.bom.ref import OutputRef
from cats.cas import reader
from cats.cas.cid import CID, DAG_CBOR
from cats.cas.importer import Importer
from cats.cas.store import BlockStore, open_store
from cats.config import home
from cats.data import Cache
from cats.errors import BlockNotFound, DataError, DataIntegrityError, IntegrityError, ReentrantRun
from cats.factory import guard, nested, results
from cats.factory.egress import entry_name
from cats.factory.ingress import open_input
from cats.order.function import Function
from cats.order.infra import Slice
from cats.plant.cluster import ClusterStore

_loaded: dict[tuple[str, str], Callable[..., Any]] = {}


def code_folder(store: BlockStore, code: CID) -> Path:
    """The code DAG as files in `CATS_HOME/code/<cid>`, fetched once per machine, by `reader.get`: code
    whose symlinks lead outside its folder, or whose names are unsafe, is refused and leaves nothing."""
    folder = home() / "code" / str(code)
    if not folder.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=folder.parent)) / "code"
        try:
            reader.get(store, code, staging)
            # another worker on this machine may have got there first: same CID, same files
            with contextlib.suppress(OSError):
                os.replace(staging, folder)
        finally:
            shutil.rmtree(staging.parent, ignore_errors=True)
    return folder


def load(store: BlockStore, fn: Function, purpose: str) -> Callable[..., Any]:
    """Import the entry point from its code folder, never from whatever else shares its name.
    `purpose` (e.g. "to run slice 3 in a worker") tells a Factory run the import starts why it is refused."""
    assert fn.code is not None
    key = (str(fn.code), fn.entry)
    if key in _loaded:
        return _loaded[key]
    folder = str(code_folder(store, fn.code))
    top = fn.module.split(".")[0]
    for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
        origin = getattr(sys.modules[name], "__file__", None) or ""
        if not origin.startswith(folder + os.sep):
            del sys.modules[name]
    if folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)
    importlib.invalidate_caches()
    with guard.importing(f"importing {fn.module} {purpose}"):
        obj: Any = importlib.import_module(fn.module)
    for part in fn.qualname.split("."):
        obj = getattr(obj, part)
    _loaded[key] = obj
    return obj


def _accepts_seed(func: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "seed" or p.kind is p.VAR_KEYWORD for p in params)


def materialize(store: BlockStore, piece: Slice, takes: str, scratch: Path,
                cache: Cache | None = None) -> tuple[Any, int]:
    """The function's argument for a slice, and the bytes read to make it."""
    if takes == "slice":
        return piece, 0
    if piece.view is not None:
        value = piece.view.materialize(cache)
        return value, value.nbytes
    f = open_input(store, piece.cid or piece.source, cache)  # type: ignore[arg-type]  # a Slice has one
    if piece.row_group is not None or takes == "table":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(f)
        table = parquet.read_row_group(piece.row_group) if piece.row_group is not None else parquet.read()
        return table, table.nbytes
    f.seek(piece.offset or 0)
    data = f.read(-1 if piece.length is None else piece.length)
    if takes == "path":
        path = scratch / (Path(piece.name or piece.origin).name or "slice")
        path.write_bytes(data)
        return path, len(data)
    return data, len(data)


def _attempt(run_dir: str, batch: int) -> int:
    """Count this attempt at a batch (a retried task after a worker died counts 2, 3, ...)."""
    folder = Path(run_dir) / "attempts"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / str(batch), "ab") as f:
        f.write(b".")
        return f.tell()


def run_batch(store_url: str, function: dict[str, Any], run_dir: str, batch: int,
              items: list[tuple[int, dict[str, Any], int]], store_outputs: bool = True,
              output_uri: str | None = None, peers: list[Any] | None = None,
              children: dict[int, list[dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """Run slices; one record per slice: its output, or the error with the remote traceback.

    An error from a block that is missing or does not match its CID says so (`kind`, `cid`), so
    verification can tell an altered input from a failing function. `store_outputs=False` only
    computes the outputs' CIDs (re-execution for verification must not write into the store).
    With `output_uri`, each result goes to `output_uri/<slice name>` and the store gets only a
    reference block to it (`cats.bom.OutputRef`); the record's `content` is the result's own CID.
    Slices that read URIs go through this machine's data cache; the last record carries the
    batch's cache counters (`data`). With `peers` (the keepers of other nodes' stores, on a cluster
    whose nodes keep their own), blocks this node's store lacks are fetched from them and the last
    record counts what came (`moved`). A slice that submits sub-Orders (`cats.factory.submit`) lists
    them in its record; re-executed for verification, it is answered with `children`, what the BOM
    records per slice.
    """
    store = open_store(store_url) if peers is None else ClusterStore(open_store(store_url), peers)
    fn = Function.model_validate(function)
    attempt = _attempt(run_dir, batch)
    node = _node()
    out: list[dict[str, Any]] = []
    more = f" and {len(items) - 1} more" if len(items) > 1 else ""
    try:
        func = load(store, fn, f"to run slice {items[0][0]}{more} in a worker")
    except Exception as e:
        failure = _failure(e, f"loading {fn.entry} from {fn.code} failed:\n")
        return [{"index": i, **failure} for i, _, _ in items]
    seed_kw = _accepts_seed(func)
    cache = Cache() if any("source" in piece or "view" in piece for _, piece, _ in items) else None
    with tempfile.TemporaryDirectory(prefix="cats-slice-") as tmp, \
            Importer(store if store_outputs and not output_uri else None, cid_version=1) as importer:
        for index, piece_json, seed in items:
            started = time.perf_counter()
            try:
                piece = Slice.model_validate(piece_json)
                arg, bytes_in = materialize(store, piece, fn.takes, Path(tmp), cache)
                kwargs = dict(fn.params)
                if seed_kw:
                    kwargs["seed"] = seed
                with nested.scope(store, index, None if store_outputs else (children or {}).get(index, [])) as scope, \
                        guard.running(f"running slice {index} of {fn.entry}"):
                    data, encoding = results.encode(func(arg, **kwargs))
                entry = importer.add_bytes(data)
                record = {"output": str(entry.cid), "encoding": encoding, "size": entry.size, "tsize": entry.tsize}
                if output_uri:
                    record = _write_out(store, output_uri, index, piece, data, record, store_outputs)
            except Exception as e:
                out.append({"index": index, **_failure(e)})
                continue
            out.append({"index": index, **record, "bytes_in": bytes_in, "node": node, "worker": os.getpid(),
                        "attempts": attempt, "duration_s": time.perf_counter() - started, **scope.record()})
    if cache is not None:
        cache.close()
        if out:
            out[-1]["data"] = {name: cache.counts[name] for name in ("hits", "misses", "bytes_in", "bytes_out",
                                                                        "fetch_s")}
    if isinstance(store, ClusterStore) and out:
        out[-1]["moved"] = {"bytes": store.moved, "blocks": store.fetched}
    return out


def _write_out(store: BlockStore, output_uri: str, index: int, piece: Slice, data: bytes, record: dict[str, Any],
               store_outputs: bool) -> dict[str, Any]:
    """Write a result to its URI and store the reference block that stands for it in the BOM."""
    content = record["output"]
    if not store_outputs:  # verification: the CID of the content is what is compared
        return {**record, "content": content}
    uri = f"{output_uri.rstrip('/')}/{entry_name(piece.name, index)}"
    written = cats_data.write(uri, data)
    ref = OutputRef(uri=uri, version=written.version, size=len(data), content=content, encoding=record["encoding"])
    block = ref.block()
    cid = CID.hash(block, DAG_CBOR)
    store.put(cid, block)
    return {**record, "output": str(cid), "encoding": "ref", "tsize": len(block), "content": content}


class Replica:
    """One replica of a replicated run: a Ray actor, so a process of its own that runs every batch
    (the Factory compares the replicas' outputs). Every record says which node and process made it."""

    def where(self) -> tuple[str, int]:
        return _node(), os.getpid()

    def run(self, store_url: str, function: dict[str, Any], run_dir: str, batch: int,
            items: list[tuple[int, dict[str, Any], int]], peers: list[Any] | None = None) -> list[dict[str, Any]]:
        node, pid = self.where()
        return [{"node": node, "worker": pid, **r}
                for r in run_batch(store_url, function, run_dir, batch, items, peers=peers)]


def _failure(e: Exception, prefix: str = "") -> dict[str, Any]:
    """The error record of a slice: the traceback, and for a missing or altered block its CID. A run
    started from user code needs no traceback: its message says where and what to do instead."""
    if isinstance(e, ReentrantRun):
        return {"error": str(e)}
    failure: dict[str, Any] = {"error": prefix + traceback.format_exc()}
    if isinstance(e, (IntegrityError, BlockNotFound)):
        failure |= {"kind": "integrity" if isinstance(e, IntegrityError) else "missing", "cid": str(e.cid)}
    elif isinstance(e, DataError) and e.uri:  # a source changed since it was pinned, or is unreadable
        failure |= {"kind": "integrity" if isinstance(e, DataIntegrityError) else "data", "uri": e.uri}
    return failure


def _node() -> str:
    try:
        import ray

        return f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:12]}"
    except Exception:  # outside Ray (tests calling run_batch directly)
        return socket.gethostname()
