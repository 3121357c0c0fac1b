"""The driver of a run: seals the Order, splits it, runs its plan on Ray, merges the results and
writes the BOM; and re-executes recorded slices for verification.

Workers read their slices from the store and write results into it; the driver sees only CIDs
and small records. Finished slices are indexed as they arrive, so a failed or interrupted run
resumes with the missing ones, and an Order that already has a BOM returns it without Ray.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from cats import __version__
from cats.bom import BOM, Invoice, SliceRecord
from cats.bom import load as load_bom
from cats.bom import records as bom_records
from cats.bom.home import Home
from cats.bom.ref import load_ref
from cats.bom.signatures import sign
from cats.cas.cid import CID, DAG_CBOR
from cats.cas.dag import complete, walk
from cats.cas.store import BlockStore
from cats.data import Info
from cats.data.views import View
from cats.errors import CatsError, SliceFailed, StageFailed
from cats.factory import egress, evaluation, gate, guard, ingress, nested, pipeline
from cats.factory._execute import execute
from cats.factory._ledger import Ledger
from cats.factory._plan import Plan, plan
from cats.factory.confine import Policy, check_confinable
from cats.factory.outcome import SliceOutcome
from cats.factory.peers import from_peers
from cats.order import Order, label
from cats.order.checks import CheckReport
from cats.order.function import Function
from cats.order.seal import seal
from cats.plant import cluster, connect
from cats.plant.cluster import ClusterStore


@dataclass
class Run:
    """What `run` returns: the BOM's CID (the handle for everything), the output's and the sealed
    Order's; whether an earlier BOM of the same Order was reused; slices in all, executed now, and
    taken from earlier runs' evaluations (`reused_slices`); the reports of the checks that gated it
    (None: the Order does not ask, or its BOM was reused). A pipeline's Run is its final stage's,
    with every stage's Run in run order (`stages`, the final one last) and the whole run's time."""

    bom: CID
    output: CID
    order: CID
    reused: bool = False
    slices: int = 0
    executed: int = 0
    reused_slices: int = 0
    duration_s: float = 0.0
    replicas: int = 1
    disagreed: int | None = None  # slices kept by a majority over dissent; None with one replica
    checks: list[CheckReport] | None = None
    stages: list[Run] | None = None

    def summary(self) -> dict[str, Any]:
        summary = {"bom": str(self.bom), "output": str(self.output), "order": str(self.order),
                   "reused": self.reused, "slices": self.slices, "executed": self.executed,
                   "duration_s": round(self.duration_s, 3), "replicas": self.replicas}
        if self.reused_slices:
            summary["reused_slices"] = self.reused_slices
        if self.disagreed is not None:
            summary["disagreed"] = self.disagreed
        if self.checks is not None:
            summary["checks"] = [c.model_dump(mode="json") for c in self.checks]
        if self.stages is not None:
            summary["stages"] = [s.stage_summary() for s in self.stages]
        return summary

    def stage_summary(self) -> dict[str, Any]:
        """What a pipeline's result says of this stage."""
        summary = {"order": str(self.order), "bom": str(self.bom), "output": str(self.output),
                   "executed": self.executed, "reused": self.reused}
        if self.reused_slices:
            summary["reused_slices"] = self.reused_slices
        return summary


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


Progress = Callable[[int, int], None]


def run(order: Order, *, home: Home | None = None, store: BlockStore | None = None, force: bool = False,
        quiet: bool = False, progress: Progress | None = None, confine: Policy | None = None) -> Run:
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
    """
    guard.check()
    started = time.time()
    with Home.given(home, store) as here:
        where = store if store is not None else here.store
        ordered = pipeline.stages(order)
        if len(ordered) == 1:
            return _run(order, here, where, force, quiet, progress, started, confine)
        outputs: dict[int, CID] = {}
        runs: list[Run] = []
        for k, stage in enumerate(ordered, 1):
            try:
                done = _run(pipeline.resolved(stage, outputs), here, where, force, quiet, progress, time.time(),
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


def _run(order: Order, home: Home, store: BlockStore, force: bool, quiet: bool, progress: Progress | None,
         started: float, confine: Policy | None) -> Run:
    if store.url is None:
        raise CatsError("the Factory needs a store its Ray workers can open too (file://…, an IPFS daemon); "
                        f"{type(store).__name__} lives in this process only")
    sealed = seal(order, store, confine.reach if confine is not None else None)
    block = sealed.block()
    order_cid = CID.hash(block, DAG_CBOR)
    store.put(order_cid, block)
    known = None if force else _memoized(home, store, order_cid)
    if known is not None:
        bom, output = known
        replicas = sealed.plant.replicas
        disagreed = None if replicas == 1 else \
            sum(r.agreed is False for r in bom_records(store, load_bom(store, bom)))
        return Run(bom, output, order_cid, reused=True, duration_s=time.time() - started,
                   replicas=replicas, disagreed=disagreed)
    policy = confinement(sealed, confine)
    with store.lease():  # until the BOM is pinned: a gc meanwhile spares what the run writes
        return _execute(sealed, order_cid, home, store, store.url, force, quiet, progress, started, policy)


def confinement(order: Order, confine: Policy | None) -> Policy | None:
    """The policy the Order's slices run under (None: unconfined), checked before anything runs."""
    policy = confine if confine is not None else Policy() if order.plant.confined else None
    if policy is not None:
        check_confinable(order, policy)
    return policy


def _execute(order: Order, order_cid: CID, home: Home, store: BlockStore, url: str, force: bool,
             quiet: bool, progress: Progress | None, started: float, policy: Policy | None) -> Run:
    # Inputs the driver's store lacks are read from the stores of the cluster's nodes, if it has any
    # (only read: which node holds an input decides where its slices run).
    def peers() -> list[Any]:
        return [s.keeper for s in cluster.stores(connect(order.plant, quiet=quiet)) if s.url != url]

    index = home.index
    looked = ClusterStore(store, peers, keep=False)
    pieces = ingress.split(order, looked, policy.reach if policy is not None else None)
    if order.output_uri:  # each result has its own URI: two slices of one name would overwrite each other
        names = Counter(egress.entry_name(p.name, i) for i, (p, _) in enumerate(pieces))
        if twice := sorted(n for n, k in names.items() if k > 1):
            raise CatsError(f"slices would write the same URI under {order.output_uri}: "
                            f"{', '.join(twice[:10])} (inputs with files of the same name); nothing was run")
    keys = evaluation.keys(order, [piece for piece, _ in pieces], looked)
    ledger = Ledger(store, keys, pieces)
    if not force:  # slices an interrupted run finished
        for r in index.done_slices(str(order_cid)).values():
            ledger.add(SliceOutcome.model_validate(r), executed=False)
    resumed = ledger.done
    reuse = evaluation.reusable(order)
    if reuse and not force:  # slices a finished run of any Order computed: the same evaluation, the same result
        missing = [i for i in range(len(pieces)) if not ledger.has(i)]
        known = index.evaluations([str(keys[i]) for i in missing])
        for i in missing:
            # the whole result, not its root alone: a result missing a block is computed again
            if (hit := known.get(str(keys[i]))) is not None and complete(store, CID.parse(hit[1]["output"])):
                ledger.add(SliceOutcome.model_validate({**hit[1], "index": i, "reused_from": hit[0]}), executed=False)
    if reuse and not force and order.plant.reuse_from:  # and those a trusted peer computed and proves
        for outcome in from_peers(order, keys, [i for i in range(len(pieces)) if not ledger.has(i)], home, store):
            ledger.add(outcome, executed=False)
    reused = ledger.done - resumed
    todo = [i for i in range(len(pieces)) if not ledger.has(i)]
    if progress:
        progress(ledger.done, len(pieces))
    # "directory" and "list" merges only link CIDs, so the driver does them; other merges read data
    links_only = order.infra.merge in ("directory", "list")
    ray = connect(order.plant, quiet=quiet) if todo or not links_only else None
    nodes = cluster.stores(ray) if ray is not None else []
    placed: dict[str, int] = {}
    if todo:
        assert ray is not None
        work = plan(ray, order, url, [(i, pieces[i][0], evaluation.seed(keys[i])) for i in todo], nodes,
                    confine=policy, hide=[str(home.folder)])
        placed = work.placed

        def finished(ok: list[SliceOutcome]) -> None:
            done = [o.model_dump(mode="json", exclude_none=True) for o in ok]
            # a slice that submitted sub-Orders is not offered to other runs: its record carries their BOMs
            offered = [(str(keys[o.index]), d) for o, d in zip(ok, done, strict=True) if reuse and not o.children]
            index.save_slices(str(order_cid), done, offered)
            for o in ok:
                ledger.add(o)
            if progress:
                progress(ledger.done, len(pieces))

        failures = _execute_plan(ray, work, home, f"{order_cid}-", finished)
        if failures:
            raise SliceFailed(_failure_message(order_cid, pieces, failures))
    results = ledger.finished()
    here = ClusterStore(store, [s.keeper for s in nodes if s.url != url])
    if nodes:  # results made on other nodes (and inputs only they held) come here: the BOM's DAG is whole here
        for root in [r.output for r in results] + order.input_cids + sorted(ledger.children):
            for _ in walk(here, root):
                pass
    how = order.infra.merge if isinstance(order.infra.merge, str) else order.infra.merge.model_dump()
    if order.output_uri:  # the results are reference blocks: their list is the output
        how = "list"
    if links_only or ray is None or nodes:  # on a cluster of node stores, only the driver's store has them all
        merged = egress.merge(url, how, ledger.parts())
    else:
        gpus = order.plant.num_gpus if isinstance(order.infra.merge, Function) else 0  # the user's merge may use them
        merged = ray.get(ray.remote(egress.merge).options(num_cpus=0, num_gpus=gpus).remote(url, how, ledger.parts()))
    outputs = [CID.parse(merged["output"])]
    checks = gate.check(order, order_cid, ClusterStore(store, peers, keep=False), outputs[0])  # raises: no BOM
    finished_at = time.time()
    assert order.function.code is not None and order.structure.lock is not None
    bom = BOM(
        name=order.name, order=order_cid, code=order.function.code,
        structure=order.structure,
        inputs=order.sources, outputs=outputs, output_encoding=merged["encoding"],
        slices=ledger.records.blocks(),
        parents=sorted({CID.parse(p) for i in order.sources
                        if (p := index.producer(label(i.info if isinstance(i, View) else i)))}),
        children=sorted(ledger.children),
        invoice=Invoice(
            started=_iso(started), finished=_iso(finished_at), duration_s=finished_at - started,
            slices=len(pieces), executed=len(todo), resumed=resumed, reused=reused or None,
            bytes_in=ledger.bytes_in, bytes_out=ledger.bytes_out,
            executor=socket.gethostname(), cats_version=__version__,
            nodes=sorted(ledger.nodes), data=ledger.data_use(),
            moved=ledger.moved_between(order.plant.locality, looked.moved + here.moved, placed) if nodes else None,
            confined=True if policy is not None else None),
    )
    block = bom.block()
    bom_cid = CID.hash(block, DAG_CBOR)
    store.put(bom_cid, block)  # only now: every output and record it links is already stored
    home.pins.add(store, bom_cid, whole=False)  # the walk stops at what earlier BOMs' pins reached
    home.signatures.add(sign(home.identity, bom_cid))  # this node vouches for what it produced
    nested.keep_signatures(ledger.envelopes, home.signatures)
    # results written to URIs are outputs too: an Order reading one at that version names this BOM as parent
    written = [label(Info(ref.uri, ref.size, ref.version)) for r in results if r.encoding == "ref"
               for ref in [load_ref(store, r.output)]]
    index.record_run(str(order_cid), str(bom_cid), [str(o) for o in outputs] + written, order.name,
                     [(str(r.output), r.encoding) for r in results])
    replicas = order.plant.replicas
    return Run(bom_cid, outputs[0], order_cid, slices=len(pieces), executed=len(todo), reused_slices=reused,
               duration_s=finished_at - started, replicas=replicas,
               disagreed=None if replicas == 1 else ledger.disagreed, checks=checks)


def _execute_plan(ray: Any, work: Plan, home: Home, prefix: str, done: Callable[[list[SliceOutcome]], None]) -> \
        list[SliceOutcome]:
    """Run a plan with a run folder of its own in the home's runs, so each invocation counts its own attempts."""
    home.runs.mkdir(exist_ok=True)
    run_dir = tempfile.mkdtemp(prefix=prefix, dir=home.runs)
    try:
        return execute(ray, work, run_dir, done)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def reexecute(order: Order, store: BlockStore, chosen: list[SliceRecord], *, home: Home | None = None,
              quiet: bool = True, confine: Policy | None = None) -> dict[int, SliceOutcome]:
    """Run recorded slices of a sealed Order again, for verification: with their recorded seeds,
    under the Order's own Plant and requirements (its time limit, retries, resources, placement),
    computing output CIDs without storing them; a slice that submits sub-Orders is answered with
    the children its record lists (nothing runs). Each slice runs once: a replicated run's
    replicas were compared when it ran. Its run folder is in `home`'s runs (default `CATS_HOME`).
    Confined as `run` is (`confine`, or the Plant's). Returns each slice's outcome, by index."""
    if not chosen:
        return {}
    guard.check("cats.verify")
    policy = confinement(order, confine)
    ray = connect(order.plant, quiet=quiet)
    outcomes: dict[int, SliceOutcome] = {}
    with Home.given(home, store) as where:
        work = reexecution_plan(ray, order, store, chosen, policy, hide=[str(where.folder)])
        failures = _execute_plan(ray, work, where, "verify-", lambda ok: outcomes.update((o.index, o) for o in ok))
    return outcomes | {o.index: o for o in failures}


def reexecution_plan(ray: Any, order: Order, store: BlockStore, chosen: list[SliceRecord],
                     confine: Policy | None = None, hide: list[str] | None = None) -> Plan:
    """The plan `reexecute` runs on `ray`: the run's own, for these slices, with one replica and nothing written."""
    once = order.model_copy(update={"plant": order.plant.model_copy(update={"replicas": 1})})
    children = {r.index: [c.model_dump(mode="json") for c in r.children] for r in chosen if r.children}
    assert store.url is not None
    return plan(ray, once, store.url, [(r.index, r.input, r.seed) for r in chosen], cluster.stores(ray),
                write=False, children=children, confine=confine, hide=hide)


def _failure_message(order_cid: CID, pieces: list[ingress.Piece], failures: list[SliceOutcome]) -> str:
    """One message for all failed slices: disagreements first (each with who said what), else the
    first error's remote traceback."""

    def where(i: int) -> str:
        name = pieces[i][0].name
        return f"slice {i}" + (f" ({name})" if name else "")

    kept = "finished slices are kept and a re-run executes only the missing ones"
    split = [f for f in failures if f.disagreement]
    errors = [f for f in failures if not f.disagreement]
    if not split:
        first = errors[0]
        error = first.error or ""
        more = f" ({len(errors) - 1} more slices failed)" if len(errors) > 1 else ""
        if "\n" not in error.strip():  # a reason, not a traceback (a timeout, a refused run)
            return f"{where(first.index)} of order {order_cid} failed{more}: {error.strip()}; {kept}"
        return (f"{where(first.index)} of order {order_cid} failed{more}; {kept}. "
                f"Remote traceback:\n{error}")
    shown = 20
    names = ", ".join(where(f.index) for f in split[:shown])
    if len(split) > shown:
        names += f" and {len(split) - shown} more"
    message = (f"replicas disagreed on {len(split)} slice(s) of order {order_cid}: {names}; {kept}.\n"
               + "\n".join(f"{where(f.index)}: {f.error}" for f in split[:shown]))
    if errors:
        message += (f"\n{len(errors)} other slice(s) failed; {where(errors[0].index)}, "
                    f"remote traceback:\n{errors[0].error}")
    return message


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")
