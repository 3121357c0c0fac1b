"""The driver of a run: seals the Order, returns the BOM of an Order already run here without Ray,
and otherwise has it executed (`execution`); runs a pipeline's stages in order; and tells which
stages of a pipeline would run (`dag`). Loading the machinery that executes (Ray plans, the
ledger, the merge) only when something executes keeps a run with nothing to do quick.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Literal

from cats.bom import load as load_bom
from cats.bom import records as bom_records
from cats.bom.home import Home
from cats.cas.cid import CID, DAG_CBOR
from cats.cas.store import BlockStore
from cats.errors import CatsError, StageFailed
from cats.factory import guard, pipeline
from cats.factory.confine import Policy
from cats.factory.outcome import Progress, Run
from cats.factory.tracking import Tracker
from cats.order import Order
from cats.order.seal import seal

__all__ = ["run", "dag", "Run", "Stage"]


@dataclass
class Stage:
    """A stage of a pipeline as `dag` sees it without running: its name, the stages it reads (by their
    place in the list), and whether it is `current` (its Order has a BOM: its output is known), would
    `run`, or `waits` for an upstream stage that would run (its Order, hence its CID, is not known
    until then)."""

    name: str
    upstream: list[int]
    state: Literal["current", "run", "waits"]
    order: CID | None = None
    bom: CID | None = None
    output: CID | None = None

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "upstream": self.upstream, "state": self.state,
                **{k: str(v) for k in ("order", "bom", "output") if (v := getattr(self, k)) is not None}}



def run(order: Order, *, home: Home | None = None, store: BlockStore | None = None, force: bool = False,
        quiet: bool = False, progress: Progress | None = None, confine: Policy | None = None,
        job: str | None = None) -> Run:
    """Run an Order on its Plant; return the Run, which names its BOM, output and sealed Order.

    The Order is sealed into `store` (default: the `home`'s store, one its Ray workers can open too),
    split here and its slices run as Ray tasks; the BOM is written last, indexed, pinned and signed
    in `home` (default: `CATS_HOME`). An Order already run there returns its BOM at once (`reused`)
    unless `force`; one that failed resumes, running only its missing slices. `progress(done,
    total)` is called as slices finish; `quiet` keeps the workers' output off the terminal. With
    `confine` (a node running a peer's Order), every slice runs in a sandbox under that policy, as
    it does when the Order's Plant is `confined` (under the default policy), and its input URIs are
    pinned and read within the policy's reach. Raises SliceFailed,
    naming the failed slices, with the remote traceback; CheckFailed when the Order's `check_on_run`
    checks reject its output (no BOM is recorded); ReentrantRun when called from code the Factory is
    loading or running.

    The run is a job in the home's job table (`cats jobs`): a new one, or `job`, made by whoever
    queued it (a node's worker). SIGINT stops it (`cats jobs cancel` sends one): it is recorded
    `cancelled` and raises Cancelled.
    """
    guard.check()
    started = time.time()
    with Home.given(home, store) as here:
        track = Tracker.start(here.jobs, order.name, job, progress)
        try:
            with track.interruptible():
                result = _stages(order, here, store if store is not None else here.store, force, quiet, track,
                                 started, confine)
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt) or track.signalled:
                raise track.interrupted() from None
            track.failed(str(e).strip() or type(e).__name__)
            raise
        track.done(str(result.bom), str(result.output))
        return result


def _stages(order: Order, here: Home, where: BlockStore, force: bool, quiet: bool, track: Tracker, started: float,
            confine: Policy | None) -> Run:
    ordered = pipeline.stages(order)
    if len(ordered) == 1:
        track.stage_starts(1)
        return _run(order, here, where, force, quiet, track, started, confine)
    outputs: dict[int, CID] = {}
    runs: list[Run] = []
    for k, stage in enumerate(ordered, 1):
        track.stage_starts(len(ordered))
        try:
            done = _run(pipeline.resolved(stage, outputs), here, where, force, quiet, track, time.time(),
                        confine)
        except CatsError as e:
            first, *rest = str(e).split("\n", 1)  # a slice's remote traceback stays below the line
            kept = "" if k == 1 else "; stage 1 is recorded (a re-run reuses it)" if k == 2 else \
                f"; stages 1-{k - 1} are recorded (a re-run reuses them)"
            raise StageFailed("\n".join([f"stage {k} of {len(ordered)} ({pipeline.name(stage)}): {first}{kept}",
                                         *rest])) from e
        outputs[id(stage)] = done.output
        runs.append(done)
    return dataclasses.replace(runs[-1], stages=runs, duration_s=time.time() - started)


def dag(order: Order, *, home: Home | None = None, store: BlockStore | None = None) -> list[Stage]:
    """The stages of an Order's pipeline in run order (the Order itself last), and which would run:
    each is sealed (its code and local inputs added to the store) and looked up, nothing runs."""
    with Home.given(home, store) as here:
        where = store if store is not None else here.store
        ordered = pipeline.stages(order)
        place = {id(stage): k for k, stage in enumerate(ordered)}
        outputs: dict[int, CID] = {}
        found: list[Stage] = []
        for stage in ordered:
            upstream = pipeline.upstream_of(stage)
            named = Stage(pipeline.name(stage), [place[id(u)] for u in upstream], "waits")
            if all(id(u) in outputs for u in upstream):
                named.order = seal(pipeline.resolved(stage, outputs), where).cid
                known = _memoized(here, where, named.order)
                named.state = "run" if known is None else "current"
                if known is not None:
                    named.bom, named.output = known
                    outputs[id(stage)] = named.output
            found.append(named)
        return found


def _memoized(home: Home, store: BlockStore, order_cid: CID) -> tuple[CID, CID] | None:
    """The BOM and output of an Order already run here, if its BOM is still in the store."""
    known = home.index.bom_for(str(order_cid))
    if known is None or not store.has(CID.parse(known)):
        return None
    return CID.parse(known), CID.parse(home.index.output_of(known))


def _run(order: Order, home: Home, store: BlockStore, force: bool, quiet: bool, track: Tracker, started: float,
         confine: Policy | None) -> Run:
    if store.url is None:
        raise CatsError("the Factory needs a store its Ray workers can open too (file://…, an IPFS daemon); "
                        f"{type(store).__name__} lives in this process only")
    sealed = seal(order, store, confine.reach if confine is not None else None)
    block = sealed.block()
    order_cid = CID.hash(block, DAG_CBOR)
    store.put(order_cid, block)
    track.order(str(order_cid))
    known = None if force else _memoized(home, store, order_cid)
    if known is not None:
        bom, output = known
        replicas = sealed.plant.replicas
        disagreed = None if replicas == 1 else \
            sum(r.agreed is False for r in bom_records(store, load_bom(store, bom)))
        return Run(bom, output, order_cid, reused=True, duration_s=time.time() - started,
                   replicas=replicas, disagreed=disagreed)
    from cats.factory.execution import confinement, execute_order

    policy = confinement(sealed, confine)
    with store.lease():  # until the BOM is pinned: a gc meanwhile spares what the run writes
        return execute_order(sealed, order_cid, home, store, store.url, force, quiet, track, started, policy)
