"""What runs inside a Ray worker: load the code by CID, read each slice from the store, call the
function, encode and store the result. Only CIDs and small records go back to the driver.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from cats import data as cats_data
from cats.bom.ref import OutputRef
from cats.cas.cid import CID, DAG_CBOR
from cats.cas.importer import Importer
from cats.cas.store import BlockStore, open_store
from cats.cas.store.local import LocalStore
from cats.config import home
from cats.data import Cache, Reach
from cats.errors import BlockNotFound, DataError, DataIntegrityError, IntegrityError, ReentrantRun
from cats.factory import confine as confine_
from cats.factory import guard, logs, nested, results
from cats.factory._confined import accepts_seed
from cats.factory._plan import Item
from cats.factory.code import code_folder, load
from cats.factory.confine import Policy
from cats.factory.egress import entry_name
from cats.factory.ingress import open_input
from cats.factory.outcome import DataCounts, MovedCounts, SliceOutcome
from cats.order.function import Function
from cats.order.infra import Slice
from cats.plant import cluster
from cats.plant.cluster import ClusterStore


def materialize(store: BlockStore, piece: Slice, takes: str, scratch: Path,
                cache: Cache | None = None, reach: Reach | None = None) -> tuple[Any, int]:
    """The function's argument for a slice, and the bytes read to make it (a URI through `cache`, or
    within `reach`: the one the run's policy gives)."""
    if takes == "slice":
        return piece, 0
    if piece.view is not None:
        value = piece.view.materialize(cache, reach=reach)
        return value, value.nbytes
    f = open_input(store, piece.cid or piece.source, cache, reach)  # type: ignore[arg-type]  # a Slice has one
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


# Runs one slice: (index, Slice, seed, scratch folder, cache, its descriptors 1 and 2) -> (the result's
# bytes, or a file of them at its start; its encoding; the bytes read to make it)
Call = Callable[[int, Slice, int, Path, Cache | None, tuple[int, ...]], tuple[bytes | BinaryIO, str, int]]
_SPOOL = 8 << 20  # a confined result larger than this waits on disk, not in memory


def _direct_call(store: BlockStore, func: Callable[..., Any], fn: Function) -> Call:
    """A slice run here, in this worker: the operator's own code, printing to the slice's streams."""
    seed_kw = accepts_seed(func)

    def call(index: int, piece: Slice, seed: int, scratch: Path, cache: Cache | None, streams: tuple[int, ...]) -> \
            tuple[bytes | BinaryIO, str, int]:
        arg, bytes_in = materialize(store, piece, fn.takes, scratch, cache)
        kwargs = dict(fn.params)
        if seed_kw:
            kwargs["seed"] = seed
        with guard.running(f"running slice {index} of {fn.entry}"), logs.redirected(streams):
            data, encoding = results.encode(func(arg, **kwargs))
        return data, encoding, bytes_in

    return call


def _confined_call(store: BlockStore, fn: Function, run_dir: str, confine: dict[str, Any]) -> Call:
    """A slice run in this worker's sandbox for the run: the worker reads its input and sends it in,
    the result comes back, at most the policy's bytes, spooled to disk past a few MiB."""
    assert fn.code is not None
    policy = Policy.from_dict(confine["policy"])
    local = store.local if isinstance(store, ClusterStore) else store
    hidden = [str(home()), *confine.get("hide", [])] + ([str(local.root)] if isinstance(local, LocalStore) else [])
    key = confine_.key(run_dir, str(fn.code), fn.entry, fn.params, confine)
    folder = code_folder(store, fn.code)
    entry = {"module": fn.module, "qualname": fn.qualname, "params": fn.params}

    def box() -> confine_.Sandbox:  # a sandbox that died with a slice is replaced for the next one
        return confine_.sandbox(key, folder, entry, policy, bool(confine["network"]), dict(confine["env"]), hidden)

    box()  # started before the first slice: code that does not load fails every slice with the reason

    def call(index: int, piece: Slice, seed: int, scratch: Path, cache: Cache | None, streams: tuple[int, ...]) -> \
            tuple[bytes | BinaryIO, str, int]:
        kind, argument, bytes_in = confined_argument(store, piece, fn.takes, scratch, cache, policy.reach)
        sink = tempfile.SpooledTemporaryFile(max_size=_SPOOL, mode="w+b", dir=str(scratch))  # noqa: SIM115
        try:
            encoding = box().call(index, kind, piece.name or piece.origin, seed, argument, sink, streams)
        except BaseException:
            sink.close()
            raise
        sink.seek(0)
        return sink, encoding, bytes_in  # type: ignore[return-value]  # binary, and a file when it matters

    return call


def confined_argument(store: BlockStore, piece: Slice, takes: str, scratch: Path,
                      cache: Cache | None, reach: Reach | None) -> tuple[str, bytes, int]:
    """What a confined function takes, as bytes to send: the input's bytes (as they are, or for a
    path, to become a file in its scratch folder), a table as an Arrow stream with its schema's
    metadata (pandas keeps a DataFrame's index there), or an array in its result encoding."""
    value, bytes_in = materialize(store, piece, "bytes" if takes == "path" else takes, scratch, cache, reach)
    if isinstance(value, bytes):
        return ("path" if takes == "path" else "bytes"), value, bytes_in
    if type(value).__module__.split(".")[0] == "pyarrow":
        return "table", results.arrow_stream(value), bytes_in
    return "npy", results.encode(value)[0], bytes_in


def _attempt(run_dir: str, batch: int) -> int:
    """Count this attempt at a batch (a retried task after a worker died counts 2, 3, ...)."""
    folder = Path(run_dir) / "attempts"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / str(batch), "ab") as f:
        f.write(b".")
        return f.tell()


def run_batch(store_url: str, function: dict[str, Any], run_dir: str, batch: int, items: list[Item],
              write: bool = True, output_uri: str | None = None, peers: list[str] | None = None,
              children: dict[int, list[dict[str, Any]]] | None = None,
              confine: dict[str, Any] | None = None) -> list[SliceOutcome]:
    """Run slices; one outcome per slice: its output, or the error with the remote traceback.

    `write=False` only computes the outputs' CIDs (re-execution for verification must not write
    into the store). With `output_uri`, each result goes to `output_uri/<slice name>` and the store
    gets only a reference block to it (`cats.bom.OutputRef`); the outcome's `content` is the
    result's own CID. Slices that read URIs go through this machine's data cache; the last outcome
    carries the batch's cache counters (`data`). With `peers` (the names of other nodes' stores, on
    a cluster whose nodes keep their own), blocks this node's store lacks are fetched from their
    keepers and the last outcome counts what came (`moved`). A slice that submits sub-Orders
    (`cats.factory.submit`) lists them in its outcome; re-executed for verification, it is answered
    with `children`, what the BOM records per slice. What each slice prints is captured in live
    files of `run_dir` (`cats.factory.logs`) and, when writing, stored: its outcome, failed or not,
    links each stream it wrote to (`stdout`, `stderr`).
    """
    names = peers
    store = open_store(store_url) if names is None else \
        ClusterStore(open_store(store_url), lambda: cluster.keepers(names))
    fn = Function.model_validate(function)
    attempt = _attempt(run_dir, batch)
    node = _node()
    more = f" and {len(items) - 1} more" if len(items) > 1 else ""
    try:
        call = _confined_call(store, fn, run_dir, confine) if confine is not None else \
            _direct_call(store, load(store, fn, f"to run slice {items[0][0]}{more} in a worker"), fn)
    except Exception as e:
        failure = _failure(e, f"loading {fn.entry} from {fn.code} failed:\n")
        return [SliceOutcome(index=i, **failure) for i, _, _ in items]
    # URIs read for someone else (the policy's reach) skip this machine's cache, which is its user's own reads
    own = confine is None or confine["policy"].get("reach") is None
    cache = Cache() if own and any("source" in piece or "view" in piece for _, piece, _ in items) else None
    out: list[dict[str, Any]] = []
    live = logs.folder(run_dir)
    with tempfile.TemporaryDirectory(prefix="cats-slice-") as tmp, \
            Importer(store if write and not output_uri else None, cid_version=1) as importer, \
            Importer(store, cid_version=1) as keeper:
        stored = keeper if write else None  # verification stores nothing, logs neither
        for index, piece_json, seed in items:
            started = time.perf_counter()
            with logs.Live(live, index) as printed:
                try:
                    piece = Slice.model_validate(piece_json)
                    with nested.scope(store, index, None if write else (children or {}).get(index, [])) as scope:
                        made, encoding, bytes_in = call(index, piece, seed, Path(tmp), cache, printed.fds)
                    if isinstance(made, bytes):
                        entry, data = importer.add_bytes(made), made
                    else:
                        with made:
                            entry = importer.add_file(made)
                            made.seek(0)
                            data = made.read() if output_uri else b""
                    result: dict[str, Any] = {"output": entry.cid, "encoding": encoding, "size": entry.size,
                                              "tsize": entry.tsize}
                    if output_uri:
                        result = _write_out(store, output_uri, index, piece, data, result, write)
                except Exception as e:
                    out.append({"index": index, **_failure(e), **printed.kept(stored)})
                    continue
                out.append({"index": index, **result, "bytes_in": bytes_in, "node": node, "worker": os.getpid(),
                            "attempts": attempt, "duration_s": time.perf_counter() - started, **scope.record(),
                            **printed.kept(stored)})
    if cache is not None:
        cache.close()
        if out:
            out[-1]["data"] = DataCounts.model_validate({name: cache.counts[name] for name in DataCounts.model_fields})
    if isinstance(store, ClusterStore) and out:
        out[-1]["moved"] = MovedCounts(bytes=store.moved, blocks=store.fetched)
    return [SliceOutcome(**o) for o in out]


def _write_out(store: BlockStore, output_uri: str, index: int, piece: Slice, data: bytes, result: dict[str, Any],
               write: bool) -> dict[str, Any]:
    """Write a result to its URI and store the reference block that stands for it in the BOM."""
    content = result["output"]
    if not write:  # verification: the CID of the content is what is compared
        return {**result, "content": content}
    uri = f"{output_uri.rstrip('/')}/{entry_name(piece.name, index)}"
    written = cats_data.write(uri, data)
    ref = OutputRef(uri=uri, version=written.version, size=len(data), content=str(content),
                    encoding=result["encoding"])
    block = ref.block()
    cid = CID.hash(block, DAG_CBOR)
    store.put(cid, block)
    return {**result, "output": cid, "encoding": "ref", "tsize": len(block), "content": content}


class Replica:
    """One replica of a replicated run: a Ray actor, so a process of its own that runs every batch
    (the Factory compares the replicas' outputs). Every outcome says which node and process made it."""

    def where(self) -> tuple[str, int]:
        return _node(), os.getpid()

    def run(self, store_url: str, function: dict[str, Any], run_dir: str, batch: int, items: list[Item],
            write: bool = True, output_uri: str | None = None, peers: list[str] | None = None,
            children: dict[int, list[dict[str, Any]]] | None = None,
            confine: dict[str, Any] | None = None) -> list[SliceOutcome]:
        node, pid = self.where()
        return [o if o.node is not None else o.model_copy(update={"node": node, "worker": pid})
                for o in run_batch(store_url, function, run_dir, batch, items, write, output_uri, peers, children,
                                   confine)]


def _failure(e: Exception, prefix: str = "") -> dict[str, Any]:
    """The error record of a slice: the traceback, and for a missing or altered block its CID. A run
    started from user code needs no traceback: its message says where and what to do instead."""
    if isinstance(e, (ReentrantRun, confine_.Refused, confine_.Raised)):  # a reason, or the sandbox's traceback
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
