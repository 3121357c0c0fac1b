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

from cats.cas import reader
from cats.cas.cid import CID
from cats.cas.importer import Importer
from cats.cas.store import BlockStore, open_store
from cats.config import home
from cats.errors import BlockNotFound, IntegrityError
from cats.factory import results
from cats.order.function import Function
from cats.order.infra import Slice

_loaded: dict[tuple[str, str], Callable[..., Any]] = {}


def code_folder(store: BlockStore, code: CID) -> Path:
    """The code DAG as files in `CATS_HOME/code/<cid>`, fetched once per machine."""
    folder = home() / "code" / str(code)
    if not folder.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=folder.parent)) / "code"
        reader.get(store, code, staging)
        # another worker on this machine may have got there first: same CID, same files
        with contextlib.suppress(OSError):
            os.replace(staging, folder)
        shutil.rmtree(staging.parent, ignore_errors=True)
    return folder


def load(store: BlockStore, fn: Function) -> Callable[..., Any]:
    """Import the entry point from its code folder, never from whatever else shares its name."""
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


def materialize(store: BlockStore, piece: Slice, takes: str, scratch: Path) -> tuple[Any, int]:
    """The function's argument for a slice, and the bytes read to make it."""
    if takes == "slice":
        return piece, 0
    if piece.row_group is not None or takes == "table":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(reader.FileReader(store, piece.cid))
        table = parquet.read_row_group(piece.row_group) if piece.row_group is not None else parquet.read()
        return table, table.nbytes
    data = b"".join(reader.read(store, piece.cid, piece.offset or 0, piece.length))
    if takes == "path":
        path = scratch / (piece.name.rsplit("/", 1)[-1] if piece.name else str(piece.cid))
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
              items: list[tuple[int, dict[str, Any], int]], store_outputs: bool = True) -> list[dict[str, Any]]:
    """Run slices; one record per slice: its output, or the error with the remote traceback.

    An error from a block that is missing or does not match its CID says so (`kind`, `cid`), so
    verification can tell an altered input from a failing function. `store_outputs=False` only
    computes the outputs' CIDs (re-execution for verification must not write into the store).
    """
    store = open_store(store_url)
    fn = Function.model_validate(function)
    attempt = _attempt(run_dir, batch)
    node = _node()
    out: list[dict[str, Any]] = []
    try:
        func = load(store, fn)
    except Exception as e:
        failure = _failure(e, f"loading {fn.entry} from {fn.code} failed:\n")
        return [{"index": i, **failure} for i, _, _ in items]
    seed_kw = _accepts_seed(func)
    with tempfile.TemporaryDirectory(prefix="cats-slice-") as tmp, \
            Importer(store if store_outputs else None, cid_version=1) as importer:
        for index, piece_json, seed in items:
            started = time.perf_counter()
            try:
                piece = Slice.model_validate(piece_json)
                arg, bytes_in = materialize(store, piece, fn.takes, Path(tmp))
                kwargs = dict(fn.params)
                if seed_kw:
                    kwargs["seed"] = seed
                data, encoding = results.encode(func(arg, **kwargs))
                entry = importer.add_bytes(data)
            except Exception as e:
                out.append({"index": index, **_failure(e)})
                continue
            out.append({"index": index, "output": str(entry.cid), "encoding": encoding, "size": entry.size,
                        "tsize": entry.tsize, "bytes_in": bytes_in, "node": node, "worker": os.getpid(),
                        "attempts": attempt, "duration_s": time.perf_counter() - started})
    return out


class Replica:
    """One replica of a replicated run: a Ray actor, so a process of its own that runs every batch
    (the Factory compares the replicas' outputs). Every record says which node and process made it."""

    def where(self) -> tuple[str, int]:
        return _node(), os.getpid()

    def run(self, store_url: str, function: dict[str, Any], run_dir: str, batch: int,
            items: list[tuple[int, dict[str, Any], int]]) -> list[dict[str, Any]]:
        node, pid = self.where()
        return [{"node": node, "worker": pid, **r} for r in run_batch(store_url, function, run_dir, batch, items)]


def _failure(e: Exception, prefix: str = "") -> dict[str, Any]:
    """The error record of a slice: the traceback, and for a missing or altered block its CID."""
    failure: dict[str, Any] = {"error": prefix + traceback.format_exc()}
    if isinstance(e, (IntegrityError, BlockNotFound)):
        failure |= {"kind": "integrity" if isinstance(e, IntegrityError) else "missing", "cid": str(e.cid)}
    return failure


def _node() -> str:
    try:
        import ray

        return f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:12]}"
    except Exception:  # outside Ray (tests calling run_batch directly)
        return socket.gethostname()
