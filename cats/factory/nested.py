"""Nested Orders: a Function submits sub-Orders through the Factory it runs under.

`submit(order)` inside a slice seals the sub-Order into the slice's store and runs it as a Ray task
of its own, the child's driver. That driver asks for no CPU, so it always starts, and the slice
waiting for it gives its CPU back to Ray while blocked, so children run even when every CPU holds
a parent slice. Each child is attributed to the slice that submitted it: a `cats.bom.Child` in the
slice's record (its BOM, Order, who ran it, how long, how many attempts), and its BOM linked in the
parent BOM's `children`.

Under verification the slice is re-executed and must neither write nor run anything: a submit
answers with the child the BOM records for that slice and Order, and an Order it does not record
fails the slice.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cats.bom import load as load_bom
from cats.bom.child import Child, Executor
from cats.bom.home import Home
from cats.bom.signatures import Envelope, Signatures
from cats.cas import dagcbor
from cats.cas.cid import CID
from cats.cas.store import BlockStore, open_store
from cats.cas.store.memory import MemoryStore
from cats.errors import CatsError, ChildFailed
from cats.order import Order
from cats.order.seal import seal
from cats.plant import connect

if TYPE_CHECKING:
    from cats.factory import Run

# The environment a sub-Order is sealed with where its author left it to the machine running the slice.
_ENVIRONMENT = ("python", "lock")


@dataclass
class _Scope:
    """The slice running in this worker, and what its submissions produced."""

    store: BlockStore
    index: int
    recorded: list[Child] | None  # what the BOM records for this slice; None unless verifying
    children: list[Child] = field(default_factory=list)
    envelopes: list[dict[str, Any]] = field(default_factory=list)
    submitted: list[str] = field(default_factory=list)  # Order CIDs, when verifying

    def record(self) -> dict[str, Any]:
        """What the slice's record carries back to the driver (nothing for a slice without children)."""
        if self.recorded is not None:
            return {"submitted": self.submitted} if self.submitted else {}
        out: dict[str, Any] = {}
        if self.children:
            out["children"] = [c.model_dump(mode="json") for c in self.children]
        if self.envelopes:
            out["signatures"] = self.envelopes
        return out


_current: _Scope | None = None  # a module global, not a context variable: threads the function starts see it


@contextmanager
def scope(store: BlockStore, index: int, recorded: list[dict[str, Any]] | None) -> Iterator[_Scope]:
    """Around one call of the function on slice `index`; `recorded` (the BOM's children of the slice)
    marks a re-execution for verification."""
    global _current
    _current = _Scope(store, index, None if recorded is None else [Child.model_validate(c) for c in recorded])
    try:
        yield _current
    finally:
        _current = None


def _slice() -> _Scope:
    if _current is None:
        raise CatsError("cats.factory.submit and slice_store work inside a slice the Factory runs; "
                        "elsewhere use cats.factory.run")
    return _current


def slice_store() -> BlockStore:
    """The store of the running slice: where its sub-Orders' outputs are (a Run names them by CID)."""
    return _slice().store


def submit(order: Order, *, timeout_s: float | None = None, retries: int = 0) -> Run:
    """Run a sub-Order from inside a slice and return its Run; its BOM is attributed to the slice.

    The sub-Order must finish within `timeout_s` (every attempt included); a failed run is run again
    up to `retries` times, resuming (only its missing slices execute). Its own Plant still limits and
    retries each of its slices. An Order already run returns its BOM at once. Raises ChildFailed.
    """
    here = _slice()
    if here.recorded is not None:
        return _answer(here, order)
    if retries < 0 or (timeout_s is not None and timeout_s <= 0):
        raise CatsError(f"submit needs retries >= 0 and timeout_s > 0, got retries={retries}, timeout_s={timeout_s}")
    sealed = seal(order, here.store)  # on this machine: the sub-Order's local paths are here
    cid = sealed.cid
    ray = connect(sealed.plant, quiet=True)
    # on this node: the slice's store is this node's (on a cluster of node stores, other nodes have their own)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here_node = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    drive = ray.remote(_drive).options(num_cpus=0, scheduling_strategy=here_node)
    started = time.monotonic()
    failed = ""  # why the last attempt failed
    for attempt in range(1, retries + 2):
        left = None if timeout_s is None else timeout_s - (time.monotonic() - started)
        if left is not None and left <= 0:
            raise ChildFailed(f"child Order {cid} of slice {here.index} timed out after {timeout_s} s; {failed}")
        ref = drive.remote(sealed, here.store.url)
        if not ray.wait([ref], timeout=left)[0]:
            ray.cancel(ref, force=True)  # recursive: the child's slice tasks go too
            raise ChildFailed(f"child Order {cid} of slice {here.index} timed out after {timeout_s} s "
                              f"(attempt {attempt} of {retries + 1})")
        try:
            run, executor, envelope = ray.get(ref)
        except Exception as e:  # its run failed (a RayTaskError around SliceFailed), or its driver died
            failed = f"attempt {attempt} failed: {getattr(e, 'cause', None) or e}"
            continue
        here.children.append(Child(bom=run.bom, order=run.order, executor=executor,
                                   duration_s=time.monotonic() - started, attempts=attempt))
        if envelope is not None:
            here.envelopes.append(envelope)
        return run
    raise ChildFailed(f"child Order {cid} of slice {here.index} failed on all {retries + 1} attempt(s); {failed}")


def _drive(order: Order, url: str) -> tuple[Run, Executor, dict[str, Any] | None]:
    """The child's driver, a Ray task: runs the sealed sub-Order as any Order is run, in the home of
    the node it lands on (its index, pins and identity); returns the Run, who ran it and the signature."""
    from cats.factory import run as run_order

    home = Home.open(store=open_store(url))
    try:
        run = run_order(order, home=home, quiet=True)
        envelope = home.signatures.get(run.bom)
    finally:
        home.close()
    signers = envelope.signers() if envelope else []
    executor = Executor(node=load_bom(home.store, run.bom).invoice.executor, did=signers[0] if signers else None)
    return run, executor, envelope.model_dump() if envelope and signers else None


def _answer(here: _Scope, order: Order) -> Run:
    """Verification: the child the BOM records for this slice and this Order, without writing or
    running anything. Sealing happens in memory, with the recorded environment where the author
    left it to the machine (so drift is reported by the child's own verification, not here)."""
    from cats.factory import Run

    unsealed = {f for f in _ENVIRONMENT if f not in order.structure.model_fields_set}
    cid: CID | None = None
    for child in here.recorded or ():
        recorded = Order.model_validate(dagcbor.decode(here.store.get(child.order)))
        environment = {f: getattr(recorded.structure, f) for f in unsealed}
        cid = _cid(order.model_copy(update={"structure": order.structure.model_copy(update=environment)}))
        if cid == child.order:
            here.submitted.append(str(cid))
            bom = load_bom(here.store, child.bom)
            return Run(child.bom, bom.outputs[0], child.order, reused=True, slices=bom.invoice.slices)
    cid = cid or _cid(order)
    here.submitted.append(str(cid))
    raise CatsError(f"slice {here.index} submitted child Order {cid}, which its BOM does not record "
                    f"(it records {', '.join(str(c.order) for c in here.recorded or ()) or 'none'})")


def _cid(order: Order) -> CID:
    """The CID the sealed Order would have, its blocks kept in memory only."""
    return seal(order, MemoryStore()).cid


def keep_signatures(envelopes: Iterable[dict[str, Any]], signatures: Signatures) -> None:
    """Keep the signatures of the children the slices' outcomes brought back (`SliceOutcome.signatures`)
    in `signatures`, beside this node's own, so the child BOMs show as signed wherever their parent
    is (their driver may run elsewhere)."""
    for envelope in envelopes:
        signatures.add(Envelope.parse(envelope, "the signature a slice brought back for its child"))
