"""Executing a sealed Order on its Plant: split it, take the slices earlier runs (or trusted peers)
computed, run the rest as Ray tasks, merge the results and write, pin, sign and index the BOM; and
re-execute recorded slices for verification, through the same plan and executor.

Workers read their slices from the store and write results into it; the driver sees only CIDs
and small records. Finished slices are indexed as they arrive, so a failed or interrupted run
resumes with the missing ones.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from cats import __version__
from cats.bom import BOM, Invoice, SliceRecord, timestamp
from cats.bom.home import Home
from cats.bom.ref import load_ref
from cats.bom.signatures import sign
from cats.cas.cid import CID, DAG_CBOR
from cats.cas.dag import complete, walk
from cats.cas.store import BlockStore
from cats.data import Info
from cats.data.views import View
from cats.errors import CatsError, SliceFailed
from cats.factory import egress, evaluation, gate, guard, ingress, logs, nested
from cats.factory._execute import execute
from cats.factory._ledger import Ledger
from cats.factory._plan import Plan, plan
from cats.factory.confine import Policy, check_confinable
from cats.factory.outcome import Run, SliceOutcome
from cats.factory.peers import from_peers
from cats.factory.tracking import Tracker
from cats.order import Order, label
from cats.order.function import Function
from cats.plant import cluster, connect
from cats.plant.cluster import ClusterStore


def confinement(order: Order, confine: Policy | None) -> Policy | None:
    """The policy the Order's slices run under (None: unconfined), checked before anything runs."""
    policy = confine if confine is not None else Policy() if order.plant.confined else None
    if policy is not None:
        check_confinable(order, policy)
    return policy


def execute_order(order: Order, order_cid: CID, home: Home, store: BlockStore, url: str, force: bool,
                  quiet: bool, track: Tracker, started: float, policy: Policy | None) -> Run:
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
    earlier: list[SliceOutcome] = []  # slices an interrupted run finished
    if not force:
        for r in index.done_slices(str(order_cid)).values():
            earlier.append(SliceOutcome.model_validate(r))
            ledger.add(earlier[-1], executed=False)
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
    named = [piece.name for piece, _ in pieces]
    track.slices(earlier, named, "resumed")  # results taken from other runs link no logs: nothing to say of them
    track.progress(ledger.done, len(pieces))
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
            # a slice that submitted sub-Orders is not offered to other runs: its record carries their BOMs; what
            # one printed stays with the run that executed it, which a run taking the result names (`reused_from`)
            offered = [(str(keys[o.index]), {k: v for k, v in d.items() if k not in logs.STREAMS})
                       for o, d in zip(ok, done, strict=True) if reuse and not o.children]
            index.save_slices(str(order_cid), done, offered)
            for o in ok:
                ledger.add(o)
            track.slices(ok, named, "done")
            track.progress(ledger.done, len(pieces))

        failures = _execute_plan(ray, work, home, f"{order_cid}-", finished, track.folder)
        track.slices(failures, named, "failed")
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
            started=timestamp(started), finished=timestamp(finished_at), duration_s=finished_at - started,
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


def _execute_plan(ray: Any, work: Plan, home: Home, prefix: str, done: Callable[[list[SliceOutcome]], None],
                  opened: Callable[[str], None] | None = None) -> list[SliceOutcome]:
    """Run a plan with a run folder of its own in the home's runs, so each invocation counts its own attempts
    (`opened` is told where it is: the workers keep what slices print there while they run)."""
    home.runs.mkdir(exist_ok=True)
    run_dir = tempfile.mkdtemp(prefix=prefix, dir=home.runs)
    if opened is not None:
        opened(run_dir)
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

