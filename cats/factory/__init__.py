"""The Factory: turns an Order into Ray tasks, one per batch of slices, and the run into a BOM.

Workers read their slices from the store and write results into it; the driver sees only CIDs
and small records. Finished slices are indexed as they arrive, so a failed or interrupted run
resumes with the missing ones, and an Order that already has a BOM returns it without Ray.
"""

from __future__ import annotations

import math
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cats import __version__
from cats.bom import BOM, Invoice, SliceRecord, write_records
from cats.bom.index import Index
from cats.cas.cid import CID, DAG_CBOR
from cats.cas.pins import Pins
from cats.cas.store import BlockStore, open_store
from cats.cas.store.local import LocalStore
from cats.config import home
from cats.errors import CatsError
from cats.factory import egress, ingress, worker
from cats.order import Order
from cats.order.function import Function
from cats.order.seal import seal
from cats.plant import connect

# Batches per CPU when the Plant does not fix the batch size: enough to balance uneven slices,
# few enough that per-task overhead stays small next to tiny slices.
_BATCHES_PER_CPU = 32


class SliceFailed(CatsError):
    """A slice raised; the message names it and carries the remote traceback."""


@dataclass
class Run:
    bom: CID
    output: CID
    order: CID
    reused: bool = False
    slices: int = 0
    executed: int = 0
    duration_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"bom": str(self.bom), "output": str(self.output), "order": str(self.order), "reused": self.reused,
                "slices": self.slices, "executed": self.executed, "duration_s": round(self.duration_s, 3)}


Progress = Callable[[int, int], None]


def _store_url(store: BlockStore | None) -> tuple[BlockStore, str]:
    store = store or open_store()
    if not isinstance(store, LocalStore):
        raise CatsError("the Factory needs an on-disk store its Ray workers can open (file://…); "
                        f"{type(store).__name__} lives in this process only")
    return store, f"file://{store.root.resolve()}"


def run(order: Order, *, store: BlockStore | None = None, force: bool = False, quiet: bool = False,
        progress: Progress | None = None) -> Run:
    """Run an Order; return its BOM. An Order already run returns its BOM at once unless force."""
    started = time.time()
    store, url = _store_url(store)
    sealed = seal(order, store)
    block = sealed.block()
    order_cid = CID.hash(block, DAG_CBOR)
    store.put(order_cid, block)
    index = Index(home() / "index.sqlite")
    try:
        known = None if force else index.bom_for(str(order_cid))
        if known is not None and store.has(CID.parse(known)):
            bom = CID.parse(known)
            output = CID.parse(index.output_of(known))
            return Run(bom, output, order_cid, reused=True, duration_s=time.time() - started)
        return _execute(sealed, order_cid, store, url, index, force, quiet, progress, started)
    finally:
        index.close()


def _execute(order: Order, order_cid: CID, store: BlockStore, url: str, index: Index, force: bool,
             quiet: bool, progress: Progress | None, started: float) -> Run:
    pieces = ingress.split(order, store)
    done = {} if force else index.done_slices(str(order_cid))
    resumed = len(done)
    todo = [i for i in range(len(pieces)) if i not in done]
    seeds = [_seed(order_cid, i) for i in range(len(pieces))]
    if progress:
        progress(len(done), len(pieces))
    # "directory" and "list" merges only link CIDs, so the driver does them; other merges read data
    links_only = order.infra.merge in ("directory", "list")
    ray = connect(order.plant, quiet=quiet) if todo or not links_only else None
    if todo:
        assert ray is not None
        # per invocation, so a forced or resumed run counts its own attempts from 1
        (home() / "runs").mkdir(exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix=f"{order_cid}-", dir=home() / "runs"))
        try:
            failures = _dispatch(ray, order, url, run_dir, pieces, seeds, todo, done, index, order_cid, progress)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        if failures:
            first = failures[0]
            name = pieces[first["index"]][0].name
            where = f"slice {first['index']}" + (f" ({name})" if name else "")
            more = f" ({len(failures) - 1} more slices failed)" if len(failures) > 1 else ""
            raise SliceFailed(f"{where} of order {order_cid} failed{more}; finished slices are kept and a "
                              f"re-run executes only the missing ones. Remote traceback:\n{first['error']}")
    results = [done[i] for i in range(len(pieces))]
    parts = [{**r, "name": pieces[r["index"]][0].name, "assembly": pieces[r["index"]][1]} for r in results]
    how = order.infra.merge if isinstance(order.infra.merge, str) else order.infra.merge.model_dump()
    if links_only or ray is None:
        merged = egress.merge(url, how, parts)
    else:
        merged = ray.get(ray.remote(egress.merge).options(num_cpus=0).remote(url, how, parts))
    records = [SliceRecord(index=r["index"], input=pieces[r["index"]][0], output=r["output"],
                           encoding=r["encoding"], size=r["size"], tsize=r["tsize"],
                           assembly=pieces[r["index"]][1], seed=seeds[r["index"]], node=r["node"],
                           duration_s=r["duration_s"], attempts=r["attempts"], bytes_in=r["bytes_in"])
               for r in results]
    outputs = [CID.parse(merged["output"])]
    finished = time.time()
    assert order.function.code is not None and order.structure.lock is not None
    bom = BOM(
        name=order.name, order=order_cid, code=order.function.code,
        structure=order.structure,
        inputs=order.input_cids, outputs=outputs, output_encoding=merged["encoding"],
        slices=write_records(store, records),
        parents=sorted({CID.parse(p) for i in order.input_cids if (p := index.producer(str(i)))}),
        invoice=Invoice(
            started=_iso(started), finished=_iso(finished), duration_s=finished - started,
            slices=len(records), executed=len(todo), resumed=resumed,
            bytes_in=sum(r.bytes_in for r in records), bytes_out=sum(r.size for r in records),
            executor=socket.gethostname(), nodes=sorted({r.node for r in records}), cats_version=__version__),
    )
    block = bom.block()
    bom_cid = CID.hash(block, DAG_CBOR)
    store.put(bom_cid, block)  # only now: every output and record it links is already stored
    Pins(home() / "pins").add(store, bom_cid)
    index.record_run(str(order_cid), str(bom_cid), [str(o) for o in outputs], order.name)
    return Run(bom_cid, outputs[0], order_cid, slices=len(records), executed=len(todo),
               duration_s=finished - started)


def _dispatch(ray: Any, order: Order, url: str, run_dir: Path, pieces: list[ingress.Piece], seeds: list[int],
              todo: list[int], done: dict[int, dict[str, Any]], index: Index, order_cid: CID,
              progress: Progress | None) -> list[dict[str, Any]]:
    """Run the slices in batches, no more batches in flight than the cluster has slots, so a batch
    starts when it is submitted and its timeout counts running time, not time in Ray's queue."""
    plant = order.plant
    slots = max(1, int(ray.cluster_resources().get("CPU", 1) // plant.num_cpus))
    size = plant.batch or max(1, math.ceil(len(todo) / (slots * _BATCHES_PER_CPU)))
    task = ray.remote(worker.run_batch).options(
        num_cpus=plant.num_cpus, resources=plant.resources or None, max_retries=plant.retries,
        runtime_env={"pip": order.structure.requirements} if order.structure.requirements else None)
    function = order.function.model_dump(mode="json", exclude_none=True)
    batches = [todo[start:start + size] for start in range(0, len(todo), size)]
    pending: dict[Any, tuple[list[int], float]] = {}
    failures: list[dict[str, Any]] = []

    def submit(b: int) -> None:
        chunk = batches[b]
        items = [(i, pieces[i][0].model_dump(mode="json", exclude_none=True), seeds[i]) for i in chunk]
        deadline = time.time() + plant.timeout_s * len(chunk) if plant.timeout_s else math.inf
        pending[task.remote(url, function, str(run_dir), b, items)] = (chunk, deadline)

    queued = iter(range(len(batches)))
    for b in queued:
        submit(b)
        if len(pending) >= slots:
            break
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
        for ref in ready:
            chunk, _ = pending.pop(ref)
            if (b := next(queued, None)) is not None:
                submit(b)
            try:
                outcome = ray.get(ref)
            except Exception as e:  # the task itself failed beyond its retries (e.g. its worker died)
                failures.extend({"index": i, "error": str(e)} for i in chunk)
                continue
            ok = [r for r in outcome if "error" not in r]
            failures.extend(r for r in outcome if "error" in r)
            index.save_slices(str(order_cid), ok)
            done.update((r["index"], r) for r in ok)
            if progress:
                progress(len(done), len(pieces))
        now = time.time()
        for ref, (chunk, deadline) in list(pending.items()):
            if now > deadline:
                ray.cancel(ref, force=True)
                pending.pop(ref)
                failures.extend({"index": i, "error": f"timed out after {plant.timeout_s} s per slice"}
                                for i in chunk if i not in done)
                if (b := next(queued, None)) is not None:
                    submit(b)
    return sorted(failures, key=lambda f: f["index"])


def _seed(order_cid: CID, index: int) -> int:
    """A per-slice seed derived from the Order and the slice, the same on every machine."""
    import hashlib

    digest = hashlib.sha256(bytes(order_cid) + index.to_bytes(8, "big")).digest()
    return int.from_bytes(digest[:4], "big")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


__all__ = ["run", "Run", "SliceFailed", "Function"]
