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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cats import __version__
from cats.bom import BOM, DataUse, Invoice, Moved, SliceRecord, write_records
from cats.bom import load as load_bom
from cats.bom import records as bom_records
from cats.bom.index import Index
from cats.bom.ref import load_ref
from cats.bom.signatures import Signatures, sign
from cats.cas.cid import CID, DAG_CBOR
from cats.cas.dag import walk
from cats.cas.pins import Pins
from cats.cas.store import BlockStore, open_store
from cats.config import home
from cats.data import Info
from cats.data.views import View
from cats.errors import CatsError, SliceFailed
from cats.factory import egress, guard, ingress, nested, worker
from cats.factory.nested import slice_store, submit
from cats.identity import Identity
from cats.order import Order, label
from cats.order.function import Function
from cats.order.seal import seal
from cats.plant import Plant, cluster, connect, embedded
from cats.plant.cluster import ClusterStore

# Batches per CPU when the Plant does not fix the batch size: enough to balance uneven slices,
# few enough that per-task overhead stays small next to tiny slices.
_BATCHES_PER_CPU = 32


@dataclass
class Run:
    """What `run` returns: the BOM's CID (the handle for everything), the output's and the sealed
    Order's; whether an earlier BOM of the same Order was reused; slices in all and executed now."""

    bom: CID
    output: CID
    order: CID
    reused: bool = False
    slices: int = 0
    executed: int = 0
    duration_s: float = 0.0
    replicas: int = 1
    disagreed: int | None = None  # slices kept by a majority over dissent; None with one replica

    def summary(self) -> dict[str, Any]:
        summary = {"bom": str(self.bom), "output": str(self.output), "order": str(self.order),
                   "reused": self.reused, "slices": self.slices, "executed": self.executed,
                   "duration_s": round(self.duration_s, 3), "replicas": self.replicas}
        if self.disagreed is not None:
            summary["disagreed"] = self.disagreed
        return summary


Progress = Callable[[int, int], None]


def _store_url(store: BlockStore | None) -> tuple[BlockStore, str]:
    store = store if store is not None else open_store()  # an empty store is falsy (len 0), not absent
    if store.url is None:
        raise CatsError("the Factory needs a store its Ray workers can open too (file://…, an IPFS daemon); "
                        f"{type(store).__name__} lives in this process only")
    return store, store.url


def run(order: Order, *, store: BlockStore | None = None, force: bool = False, quiet: bool = False,
        progress: Progress | None = None) -> Run:
    """Run an Order on its Plant; return the Run, which names its BOM, output and sealed Order.

    The Order is sealed into `store` (this node's, unless given: one its Ray workers can open too),
    split here and its slices run as Ray tasks; the BOM is written last, pinned and signed by this
    node. An Order already run returns its BOM at once (`reused`) unless `force`; one that failed
    resumes, running only its missing slices. `progress(done, total)` is called as slices finish;
    `quiet` keeps the workers' output off the terminal. Raises SliceFailed, naming the failed
    slices, with the remote traceback, and ReentrantRun when called from code the Factory is
    loading or running.
    """
    guard.check()
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
            replicas = sealed.plant.replicas
            disagreed = None if replicas == 1 else \
                sum(r.agreed is False for r in bom_records(store, load_bom(store, bom)))
            return Run(bom, output, order_cid, reused=True, duration_s=time.time() - started,
                       replicas=replicas, disagreed=disagreed)
        with store.lease():  # until the BOM is pinned: a gc meanwhile spares what the run writes
            return _execute(sealed, order_cid, store, url, index, force, quiet, progress, started)
    finally:
        index.close()


def _execute(order: Order, order_cid: CID, store: BlockStore, url: str, index: Index, force: bool,
             quiet: bool, progress: Progress | None, started: float) -> Run:
    # Inputs the driver's store lacks are read from the stores of the cluster's nodes, if it has any
    # (only read: which node holds an input decides where its slices run).
    def peers() -> list[Any]:
        return [s.keeper for s in cluster.stores(connect(order.plant, quiet=quiet)) if s.url != url]

    looked = ClusterStore(store, peers, keep=False)
    pieces = ingress.split(order, looked)
    if order.output_uri:  # each result has its own URI: two slices of one name would overwrite each other
        names = Counter(egress.entry_name(p.name, i) for i, (p, _) in enumerate(pieces))
        if twice := sorted(n for n, k in names.items() if k > 1):
            raise CatsError(f"slices would write the same URI under {order.output_uri}: "
                            f"{', '.join(twice[:10])} (inputs with files of the same name); nothing was run")
    done = {} if force else index.done_slices(str(order_cid))
    resumed = len(done)
    todo = [i for i in range(len(pieces)) if i not in done]
    seeds = [_seed(order_cid, i) for i in range(len(pieces))]
    if progress:
        progress(len(done), len(pieces))
    # "directory" and "list" merges only link CIDs, so the driver does them; other merges read data
    links_only = order.infra.merge in ("directory", "list")
    ray = connect(order.plant, quiet=quiet) if todo or not links_only else None
    nodes = cluster.stores(ray) if ray is not None else []
    placed: dict[str, int] = {}
    if todo:
        assert ray is not None
        groups = place(ray, order, url, pieces, todo, nodes, placed)
        # per invocation, so a forced or resumed run counts its own attempts from 1
        (home() / "runs").mkdir(exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix=f"{order_cid}-", dir=home() / "runs"))
        try:
            dispatch = _dispatch if order.plant.replicas == 1 else _dispatch_replicated
            failures = dispatch(ray, order, groups, run_dir, pieces, seeds, done, index, order_cid, progress)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        if failures:
            raise SliceFailed(_failure_message(order_cid, pieces, failures))
    results = [done[i] for i in range(len(pieces))]
    here = ClusterStore(store, [s.keeper for s in nodes if s.url != url])
    if nodes:  # results made on other nodes (and inputs only they held) come here: the BOM's DAG is whole here
        children = [CID.parse(c["bom"]) for r in results for c in r.get("children", ())]  # sub-Orders' BOMs
        for root in [CID.parse(r["output"]) for r in results] + order.input_cids + children:
            for _ in walk(here, root):
                pass
    parts = [{**r, "name": pieces[r["index"]][0].name, "assembly": pieces[r["index"]][1]} for r in results]
    how = order.infra.merge if isinstance(order.infra.merge, str) else order.infra.merge.model_dump()
    if order.output_uri:  # the results are reference blocks: their list is the output
        how = "list"
    if links_only or ray is None or nodes:  # on a cluster of node stores, only the driver's store has them all
        merged = egress.merge(url, how, parts)
    else:
        gpus = order.plant.num_gpus if isinstance(order.infra.merge, Function) else 0  # the user's merge may use them
        merged = ray.get(ray.remote(egress.merge).options(num_cpus=0, num_gpus=gpus).remote(url, how, parts))
    records = [SliceRecord(index=r["index"], input=pieces[r["index"]][0], output=r["output"],
                           encoding=r["encoding"], size=r["size"], tsize=r["tsize"],
                           assembly=pieces[r["index"]][1], seed=seeds[r["index"]], node=r["node"],
                           duration_s=r["duration_s"], attempts=r["attempts"], bytes_in=r["bytes_in"],
                           replicas=r.get("replicas"), agreed=r.get("agreed"), children=r.get("children"))
               for r in results]
    outputs = [CID.parse(merged["output"])]
    finished = time.time()
    assert order.function.code is not None and order.structure.lock is not None
    bom = BOM(
        name=order.name, order=order_cid, code=order.function.code,
        structure=order.structure,
        inputs=order.sources, outputs=outputs, output_encoding=merged["encoding"],
        slices=write_records(store, records),
        parents=sorted({CID.parse(p) for i in order.sources
                        if (p := index.producer(label(i.info if isinstance(i, View) else i)))}),
        children=sorted({c.bom for r in records for c in r.children or ()}),
        invoice=Invoice(
            started=_iso(started), finished=_iso(finished), duration_s=finished - started,
            slices=len(records), executed=len(todo), resumed=resumed,
            bytes_in=sum(r.bytes_in for r in records), bytes_out=sum(r.size for r in records),
            executor=socket.gethostname(), cats_version=__version__,
            nodes=sorted({r.node for r in records} | {o.node for r in records for o in r.replicas or ()}),
            data=_data_use([done[i] for i in todo]),
            moved=_moved(order, looked.moved + here.moved, [done[i] for i in todo], placed) if nodes else None),
    )
    block = bom.block()
    bom_cid = CID.hash(block, DAG_CBOR)
    store.put(bom_cid, block)  # only now: every output and record it links is already stored
    Pins(home() / "pins").add(store, bom_cid)
    Signatures().add(sign(Identity.load(), bom_cid))  # this node vouches for what it produced
    nested.keep_signatures(results)
    # results written to URIs are outputs too: an Order reading one at that version names this BOM as parent
    written = [label(Info(ref.uri, ref.size, ref.version)) for r in records if r.encoding == "ref"
               for ref in [load_ref(store, r.output)]]
    index.record_run(str(order_cid), str(bom_cid), [str(o) for o in outputs] + written, order.name,
                     [(str(r.output), r.encoding) for r in records])
    replicas = order.plant.replicas
    return Run(bom_cid, outputs[0], order_cid, slices=len(records), executed=len(todo),
               duration_s=finished - started, replicas=replicas,
               disagreed=None if replicas == 1 else sum(r.agreed is False for r in records))


def _data_use(executed: list[dict[str, Any]]) -> DataUse | None:
    """The cache counters the workers reported for this invocation's batches; None if none read a URI."""
    counts = [r["data"] for r in executed if "data" in r]
    if not counts:
        return None
    total = {name: sum(c[name] for c in counts) for name in ("hits", "misses", "bytes_in", "bytes_out", "fetch_s")}
    return DataUse(hits=int(total["hits"]), misses=int(total["misses"]), bytes_in=int(total["bytes_in"]),
                   bytes_out=int(total["bytes_out"]),
                   mean_fetch_s=total["fetch_s"] / total["misses"] if total["misses"] else 0.0)


def _moved(order: Order, to_driver: int, executed: list[dict[str, Any]], placed: dict[str, int]) -> Moved:
    """What crossed between nodes: the workers' fetches of this invocation, and the driver's reads."""
    counts = [r["moved"] for r in executed if "moved" in r]
    return Moved(locality=order.plant.locality, placed=placed, between_nodes=sum(c["bytes"] for c in counts),
                 blocks=sum(c["blocks"] for c in counts), to_driver=to_driver)


def _failure_message(order_cid: CID, pieces: list[ingress.Piece], failures: list[dict[str, Any]]) -> str:
    """One message for all failed slices: disagreements first (each with who said what), else the
    first error's remote traceback."""

    def where(i: int) -> str:
        name = pieces[i][0].name
        return f"slice {i}" + (f" ({name})" if name else "")

    kept = "finished slices are kept and a re-run executes only the missing ones"
    split = [f for f in failures if f.get("disagreement")]
    errors = [f for f in failures if not f.get("disagreement")]
    if not split:
        first = errors[0]
        more = f" ({len(errors) - 1} more slices failed)" if len(errors) > 1 else ""
        if "\n" not in first["error"].strip():  # a reason, not a traceback (a timeout, a refused run)
            return f"{where(first['index'])} of order {order_cid} failed{more}: {first['error'].strip()}; {kept}"
        return (f"{where(first['index'])} of order {order_cid} failed{more}; {kept}. "
                f"Remote traceback:\n{first['error']}")
    shown = 20
    names = ", ".join(where(f["index"]) for f in split[:shown])
    if len(split) > shown:
        names += f" and {len(split) - shown} more"
    message = (f"replicas disagreed on {len(split)} slice(s) of order {order_cid}: {names}; {kept}.\n"
               + "\n".join(f"{where(f['index'])}: {f['error']}" for f in split[:shown]))
    if errors:
        message += (f"\n{len(errors)} other slice(s) failed; {where(errors[0]['index'])}, "
                    f"remote traceback:\n{errors[0]['error']}")
    return message


@dataclass
class Group:
    """Slices that run where one store is local: the URL workers open it by, the resources that place them."""

    url: str
    resources: dict[str, float]
    slots: int
    todo: list[int]
    peers: list[Any]  # keepers of the other nodes' stores, for blocks this one lacks


def place(ray: Any, order: Order, url: str, pieces: list[ingress.Piece], todo: list[int],
          nodes: list[cluster.Store], placed: dict[str, int]) -> list[Group]:
    """One group on a plain Ray (workers open the driver's store); on a cluster of node stores, one
    per store, each slice next to a store holding its input (`placed` counts them per store). A
    replicated run gets one group per replica, all slices each: on such a cluster, replica k runs
    next to store k (round robin), so replicas land on distinct nodes and read their own stores."""
    plant = order.plant
    need = _per_task(plant)
    alive = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n.get("Alive")}
    # on the embedded Ray, a task that fits no node would wait in Ray's queue forever; a cluster may grow to fit it
    for name, amount in need.items() if embedded(plant) else ():
        most = max((r.get(name, 0) for r in alive.values()), default=0)
        if amount > most:
            each = "slice" if plant.replicas == 1 else "replica of a slice"
            plural = "s" if name in ("CPU", "GPU") and amount != 1 else ""
            raise CatsError(f"the Order asks for {amount:g} {name}{plural} per {each}; this Ray has {most:g}"
                            + (" on any one node" if len(alive) > 1 else "") + "; nothing was run")
    if not nodes:
        slots = max(1, _fits(ray.cluster_resources(), need))
        return [Group(url, dict(plant.resources), slots, todo, [])] * plant.replicas
    if url not in {s.url for s in nodes}:
        raise CatsError(f"this driver's store ({url}) is none of the cluster's node stores "
                        f"({', '.join(s.resource for s in nodes)}), so their workers could not read the code: "
                        "run the driver on a node that advertises its store, with that store")
    slots = {s.name: max(1, _fits(alive.get(s.node, {}), need)) for s in nodes}
    if plant.replicas > 1:
        homes = [nodes[k % len(nodes)] for k in range(plant.replicas)]
        placed.update({s.name: len(todo) * homes.count(s) for s in nodes})
        return [Group(s.url, {**plant.resources, s.resource: cluster.TOKEN}, slots[s.name], todo,
                      [o.keeper for o in nodes if o.url != s.url]) for s in homes]
    roots = [pieces[i][0].cid for i in todo]
    held = iter(cluster.holders(ray, nodes, [r for r in roots if r is not None]))
    wanted = [[] if r is None else next(held) for r in roots]
    if lost := [str(r) for r, w in zip(roots, wanted, strict=True) if r is not None and not w]:
        raise CatsError(f"no store of the cluster ({', '.join(s.resource for s in nodes)}) holds input "
                        f"{lost[0]}" + (f" (nor {len(lost) - 1} more)" if len(lost) > 1 else "") + "; nothing was run")
    chosen = cluster.assign(wanted, [s.name for s in nodes], slots, plant.locality)
    groups = []
    for s in nodes:
        mine = [i for i, name in zip(todo, chosen, strict=True) if name == s.name]
        placed[s.name] = len(mine)
        if mine:
            groups.append(Group(s.url, {**plant.resources, s.resource: cluster.TOKEN}, slots[s.name], mine,
                                 [o.keeper for o in nodes if o.url != s.url]))
    return groups


def _per_task(plant: Plant) -> dict[str, float]:
    """What one task of a slice asks of a node: the Plant's CPUs, GPUs and custom resources; a replica
    a 1/N share of the GPUs and custom resources, and no CPUs here, since it asks at most what the Ray
    has (see `_dispatch_replicated`)."""
    n = plant.replicas
    need = {"CPU": plant.num_cpus if n == 1 else 0.0, "GPU": plant.num_gpus / n,
            **{name: amount / n for name, amount in plant.resources.items()}}
    return {name: amount for name, amount in need.items() if amount > 0}


def _fits(have: dict[str, float], need: dict[str, float]) -> int:
    """How many tasks asking `need` a node (or a whole Ray) holding `have` runs at once."""
    return min((int(have.get(name, 0) // amount) for name, amount in need.items()), default=1)


def _dispatch(ray: Any, order: Order, groups: list[Group], run_dir: Path, pieces: list[ingress.Piece],
              seeds: list[int], done: dict[int, dict[str, Any]], index: Index, order_cid: CID,
              progress: Progress | None) -> list[dict[str, Any]]:
    """Run the slices in batches, no more batches of a group in flight than its nodes have slots, so a
    batch starts when it is submitted and its timeout counts running time, not time in Ray's queue."""
    plant = order.plant
    task = ray.remote(worker.run_batch)
    options = {"num_cpus": plant.num_cpus, "num_gpus": plant.num_gpus, "max_retries": plant.retries,
               "runtime_env": {"pip": order.structure.requirements} if order.structure.requirements else None}
    function = order.function.model_dump(mode="json", exclude_none=True)
    batches: list[tuple[Group, list[int]]] = []
    queues: list[list[int]] = []  # per group, its batches' numbers in submission order
    for group in groups:
        size = plant.batch or max(1, math.ceil(len(group.todo) / (group.slots * _BATCHES_PER_CPU)))
        queues.append([])
        for start in range(0, len(group.todo), size):
            queues[-1].append(len(batches))
            batches.append((group, group.todo[start:start + size]))
    pending: dict[Any, tuple[int, int, float]] = {}  # ref -> (group, batch, deadline)
    failures: list[dict[str, Any]] = []

    def submit(g: int) -> None:
        if not queues[g]:
            return
        b = queues[g].pop(0)
        group, chunk = batches[b]
        items = [(i, pieces[i][0].model_dump(mode="json", exclude_none=True), seeds[i]) for i in chunk]
        deadline = time.time() + plant.timeout_s * len(chunk) if plant.timeout_s else math.inf
        ref = task.options(**options, resources=group.resources or None).remote(
            group.url, function, str(run_dir), b, items, True, order.output_uri, peers=group.peers or None)
        pending[ref] = (g, b, deadline)

    for g, group in enumerate(groups):
        for _ in range(group.slots):
            submit(g)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
        for ref in ready:
            g, b, _ = pending.pop(ref)
            chunk = batches[b][1]
            submit(g)
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
        for ref, (g, b, deadline) in list(pending.items()):
            if now > deadline:
                ray.cancel(ref, force=True)
                pending.pop(ref)
                failures.extend({"index": i, "error": f"timed out after {plant.timeout_s} s per slice"}
                                for i in batches[b][1] if i not in done)
                submit(g)
    return sorted(failures, key=lambda f: f["index"])


def _dispatch_replicated(ray: Any, order: Order, homes: list[Group], run_dir: Path, pieces: list[ingress.Piece],
                         seeds: list[int], done: dict[int, dict[str, Any]], index: Index, order_cid: CID,
                         progress: Progress | None) -> list[dict[str, Any]]:
    """Run every batch on each of N Ray actors (N distinct processes, spread over nodes where there
    are several; replica k placed as `homes[k]` says) and let a quorum of output CIDs decide each
    slice, so one faulty or dishonest worker cannot decide a result. An actor runs one batch at a
    time, so (as in `_dispatch`) a batch's timeout counts only its running time; the replicas
    progress independently."""
    plant = order.plant
    n = plant.replicas
    todo = homes[0].todo
    # a share of the CPUs one task would get, so N replicas fit wherever one task fits
    cpus = _fraction(min(plant.num_cpus, ray.cluster_resources().get("CPU", plant.num_cpus)) / n)
    options: dict[str, Any] = {
        "num_cpus": cpus, "num_gpus": _fraction(plant.num_gpus / n), "scheduling_strategy": "SPREAD",
        "max_restarts": plant.retries, "max_task_retries": plant.retries,
        "runtime_env": {"pip": order.structure.requirements} if order.structure.requirements else None}
    replica = ray.remote(worker.Replica)
    function = order.function.model_dump(mode="json", exclude_none=True)
    size = plant.batch or max(1, math.ceil(len(todo) / _BATCHES_PER_CPU))
    batches = [todo[start:start + size] for start in range(0, len(todo), size)]
    actors: list[tuple[Any, Any]] = []  # (actor, ref of its (node, pid))
    started: set[Any] = set()  # `where` refs of actors known to be up: their batches' clocks run
    upto = [0] * n  # the next batch of each replica
    pending: dict[Any, tuple[int, int, float]] = {}  # ref -> (replica, batch, deadline)
    arrived: dict[int, dict[int, list[dict[str, Any]]]] = {}  # batch -> replica -> records
    failures: list[dict[str, Any]] = []

    def start(k: int) -> tuple[Any, Any]:
        resources = {r: _fraction(v / n) for r, v in homes[k].resources.items()} or None
        actor = replica.options(**options, resources=resources).remote()
        return actor, actor.where.remote()

    def whereabouts(k: int) -> dict[str, Any]:
        try:
            node, pid = ray.get(actors[k][1], timeout=5)
        except Exception:  # died or never started
            return {"node": "unknown"}
        return {"node": node, "worker": pid}

    def submit(k: int) -> None:
        b = upto[k]
        if b == len(batches):
            return
        upto[k] += 1
        chunk = batches[b]
        items = [(i, pieces[i][0].model_dump(mode="json", exclude_none=True), seeds[i]) for i in chunk]
        deadline = time.time() + plant.timeout_s * len(chunk) if plant.timeout_s else math.inf
        # per replica, so each counts its own attempts
        ref = actors[k][0].run.remote(homes[k].url, function, str(run_dir / f"replica-{k}"), b, items,
                                      homes[k].peers or None)
        pending[ref] = (k, b, deadline)

    def replace(k: int) -> None:
        ray.kill(actors[k][0], no_restart=True)
        actors[k] = start(k)

    def arrive(k: int, b: int, records: list[dict[str, Any]]) -> None:
        got = arrived.setdefault(b, {})
        got[k] = records
        if len(got) < n:
            return
        del arrived[b]
        said = [{r["index"]: r for r in got[j]} for j in range(n)]
        ok = []
        for i in batches[b]:
            kept, failure = _quorum([said[j][i] for j in range(n)], plant.on_disagreement)
            if failure is not None:
                failures.append(failure)
            else:
                ok.append(kept)
        # every replica's counters, not only those of the records the quorum kept
        for key in ("data", "moved"):
            counters = [r[key] for j in range(n) for r in got[j] if key in r]
            for r in ok:
                r.pop(key, None)
            if ok and counters:
                ok[-1][key] = {f: sum(c[f] for c in counters) for f in counters[0]}
        index.save_slices(str(order_cid), ok)
        done.update((r["index"], r) for r in ok)
        if progress:
            progress(len(done), len(pieces))

    try:
        actors.extend(start(k) for k in range(n))
        for k in range(n):
            submit(k)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                k, b, _ = pending.pop(ref)
                try:
                    records = ray.get(ref)
                except Exception as e:  # the call failed; an actor dead beyond its restarts is replaced
                    records = [{"index": i, "error": str(e), **whereabouts(k)} for i in batches[b]]
                    if isinstance(e, ray.exceptions.RayActorError):
                        replace(k)
                submit(k)
                arrive(k, b, records)
            if not plant.timeout_s:
                continue
            now = time.time()
            for ref, (k, b, deadline) in list(pending.items()):
                up = actors[k][1]
                if up not in started:  # an actor's start is not its first batch's running time
                    if not ray.wait([up], timeout=0)[0]:
                        continue
                    started.add(up)
                    deadline = now + plant.timeout_s * len(batches[b])
                    pending[ref] = (k, b, deadline)
                if now > deadline:
                    pending.pop(ref)
                    who = whereabouts(k)
                    replace(k)  # an actor task cannot be force-cancelled; its process can be killed
                    submit(k)
                    arrive(k, b, [{"index": i, "error": f"timed out after {plant.timeout_s} s per slice", **who}
                                  for i in batches[b]])
    finally:
        for actor, _ in actors:
            ray.kill(actor, no_restart=True)
    return sorted(failures, key=lambda f: f["index"])


def _quorum(said: list[dict[str, Any]], on_disagreement: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Decide a slice from its replicas' records (one each, in replica order): the kept record, or
    the failure. A strict majority of identical outputs wins; dissent fails it unless marked."""
    n = len(said)
    index = said[0]["index"]
    outcomes = [{"node": r.get("node", "unknown"), "worker": r.get("worker"), "output": r.get("output"),
                 "error": _last_line(r["error"]) if "error" in r else None} for r in said]
    outcomes = [{k: v for k, v in o.items() if v is not None} for o in outcomes]
    votes = Counter((r["output"], r["encoding"]) for r in said if "error" not in r)
    if not votes:  # every replica failed: the same error as one worker would give
        return None, {"index": index, "error": f"all {n} replicas failed; replica 0 ({_who(outcomes[0])}):\n"
                                             f"{said[0]['error']}"}
    (output, encoding), count = votes.most_common(1)[0]
    told = "; ".join(f"replica {k} ({_who(o)}) -> {o.get('output') or 'failed: ' + o['error']}"
                     for k, o in enumerate(outcomes))
    if 2 * count <= n:
        return None, {"index": index, "disagreement": True,
                      "error": f"no majority among {n} replicas (at most {count} agree): {told}"}
    agreed = count == n
    if not agreed and on_disagreement == "fail":
        return None, {"index": index, "disagreement": True,
                      "error": f"{count} of {n} replicas agree on {output}, the others do not: {told}"}
    chosen = next(r for r in said if "error" not in r and (r["output"], r["encoding"]) == (output, encoding))
    return {**chosen, "replicas": outcomes, "agreed": agreed}, None


def _who(outcome: dict[str, Any]) -> str:
    return f"{outcome['node']}, pid {outcome.get('worker', '?')}"


def _last_line(error: str) -> str:
    lines = error.strip().splitlines()
    return (lines[-1] if lines else "error")[:300]


def _fraction(x: float) -> float:
    """Ray keeps 4 decimals of a resource; round down so N shares never add up to more than the whole."""
    return max(math.floor(x * 10_000) / 10_000, 0.0001) if x > 0 else 0.0


def _seed(order_cid: CID, index: int) -> int:
    """A per-slice seed derived from the Order and the slice, the same on every machine."""
    import hashlib

    digest = hashlib.sha256(bytes(order_cid) + index.to_bytes(8, "big")).digest()
    return int.from_bytes(digest[:4], "big")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


__all__ = ["run", "Run", "Function", "submit", "slice_store"]
