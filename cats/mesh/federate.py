"""Federated Orders: an Order whose inputs live on several organizations' nodes runs where they are.

The submitter seals the Order and asks its trusted peers' nodes (IPFS routing v1) which holds each
input. Each node is sent a sub-Order: the same function, infra, structure and plant over only the
inputs it holds, so none of them crosses a border. Built-in splits cut each input on its own, and
seeds derive from each slice's evaluation key, so every slice is the evaluation it would be in one
run over all the inputs. Each node runs its part and signs its BOM. The submitter merges the parts'
output folders from their folder blocks alone (`egress.union`: the folder one run would have made)
and writes the federated BOM: the Order, every input, the merged output, no slice records of its
own, the parts' BOMs as `children`, and an invoice saying who ran which part and what crossed.

Every node is sent its sub-Order before any is asked to run one, so a node that refuses (it does
not trust this one) or cannot be reached leaves nothing queued anywhere and nothing written here.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from cats import __version__
from cats.bom import BOM, Federation, Invoice, timestamp
from cats.bom import load as load_bom
from cats.bom.child import Child, Executor
from cats.bom.signatures import Signatures, sign
from cats.cas.cid import CID, DAG_CBOR
from cats.cas.store import BlockStore
from cats.errors import BlockNotFound, CatsError, MeshError
from cats.factory import egress
from cats.identity import Identity
from cats.mesh import routing
from cats.mesh.client import Node, PullReport, PushReport, collect, job_here, place_order, push_order
from cats.order import Order


@dataclass
class Part:
    """One node's share of a federated Order: the inputs (by index) it holds and what running them took."""

    did: str
    url: str
    inputs: list[int]
    order: str = ""
    job: str = ""
    bom: str = ""
    output: str = ""
    pushed: PushReport | None = None
    pulled: PullReport | None = None
    duration_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"did": self.did, "url": self.url, "inputs": self.inputs, "order": self.order, "job": self.job,
                "bom": self.bom, "output": self.output, "duration_s": self.duration_s,
                "pushed": self.pushed.summary() if self.pushed else None,
                "pulled": self.pulled.summary() if self.pulled else None}


@dataclass
class Federated:
    """A federated run: its BOM (this node's, linking the parts'), the Order, the merged output, the parts,
    and the bytes that crossed: block bytes sent to the nodes and fetched from them, and data bytes."""

    bom: str
    order: str
    output: str
    parts: list[Part]
    pushed: int
    pulled: int
    data: int
    duration_s: float
    folder_blocks: int = 0

    def summary(self) -> dict[str, Any]:
        return {"bom": self.bom, "order": self.order, "output": self.output, "pushed": self.pushed,
                "pulled": self.pulled, "data": self.data, "folder_blocks": self.folder_blocks,
                "duration_s": self.duration_s, "parts": [p.summary() for p in self.parts]}


def check(order: Order) -> None:
    """What a federated Order must be: its slices cut from each input alone, its output folders merged
    without their files, nothing over the whole output. One line naming what is not."""
    if not isinstance(order.infra.split, str):
        raise CatsError("--federate sends each node an Order over its own inputs: a split of the Order's own "
                        f"({order.infra.split.entry}) may cut across inputs; use a built-in split")
    if order.infra.merge != "directory":
        merge = order.infra.merge if isinstance(order.infra.merge, str) else order.infra.merge.entry
        raise CatsError(f"--federate merges the nodes' output folders without their data: only the 'directory' "
                        f"merge can (this Order's merge is {merge!r})")
    if order.output_uri is not None:
        raise CatsError("--federate keeps each node's results in its own store: the Order writes them to "
                        f"{order.output_uri}")
    if order.checks:
        raise CatsError("--federate: the Order's checks read the whole output, which no node holds")


def plan(order: Order, peers: list[tuple[str, str]]) -> list[Part]:
    """Which trusted peer's node runs which inputs of a sealed Order: each CID input goes to a node that
    holds it whole (of those that do, the one holding the most input bytes, the first asked on a tie)."""
    sources = order.sources
    for i, item in enumerate(sources):
        if not isinstance(item, CID):
            raise CatsError(f"--federate places inputs by CID: input {i} ({item.uri}) is a URI")
    if not peers:
        raise CatsError("--federate found no node to send parts to: no trusted peer has a node URL "
                        "(cats mesh trust add DID --url URL)")
    asked = routing.holdings([c for c in sources if isinstance(c, CID)], peers)
    parts: dict[str, Part] = {}
    for i, cid in enumerate(sources):
        holders = [h for h in asked if h.error is None and str(cid) in h.inputs]
        if not holders:
            down = "; ".join(f"{h.url}: {h.error}" for h in asked if h.error)
            raise CatsError(f"--federate: input {i} ({cid}) is held whole by none of the {len(asked)} trusted "
                            f"peers' nodes asked{f' ({down})' if down else ''}; nothing was sent")
        best = max(holders, key=lambda h: h.bytes)
        parts.setdefault(best.did, Part(best.did, best.url, [])).inputs.append(i)
    return list(parts.values())


def federate(order: Order, identity: Identity, store: BlockStore, peers: list[tuple[str, str]], *,
             timeout: float = 3600.0, progress: Callable[[str, str], None] | None = None) -> Federated:
    """Run an Order as parts on the nodes holding its inputs (`plan`) and merge their outputs here into a
    BOM of this node's, signed and in `cats log`. When one node holds every input, the Order goes there
    whole (`client.submit`) and its BOM is the node's."""
    from cats.order.seal import seal

    started, wall = time.perf_counter(), time.time()
    check(order)
    sealed = seal(order, store)
    order_cid = CID.hash(sealed.block(), DAG_CBOR)
    store.put(order_cid, sealed.block())
    parts = plan(sealed, peers)
    if len(parts) == 1:  # one node holds them all: the Order goes there whole, as `--to` that node
        return _whole(sealed, parts[0], identity, store, timeout, progress, started, peers)
    subs = {p.did: sealed.model_copy(update={"inputs": [sealed.inputs[i] for i in p.inputs]}) for p in parts}
    with ExitStack() as stack:
        nodes = {p.did: stack.enter_context(Node(p.url, identity, did=p.did)) for p in parts}
        for p in parts:  # every node gets its sub-Order before any runs one: a refusal leaves nothing queued
            block = subs[p.did].block()
            cid = CID.hash(block, DAG_CBOR)
            store.put(cid, block)
            p.order, p.pushed = str(cid), push_order(store, cid, nodes[p.did])
        for p in parts:
            p.job = place_order(nodes[p.did], CID.parse(p.order))

        def finish(p: Part) -> None:  # each part is a job of this home, followed on its node
            with job_here(nodes[p.did], p.job, p.order, sealed.name) as record:
                bom, output, p.pulled = collect(store, nodes[p.did], p.job, CID.parse(p.order), timeout,
                                                None if progress is None else lambda s: progress(p.url, s))
                record(str(bom), str(output))
            p.bom, p.output, p.duration_s = str(bom), str(output), time.perf_counter() - started

        with ThreadPoolExecutor(max_workers=len(parts)) as pool:
            for future in [pool.submit(finish, p) for p in parts]:
                future.result()
        fetched = _Fetched(store, [nodes[p.did] for p in parts])
        try:
            output = egress.union(fetched, [CID.parse(p.output) for p in parts])
        except BlockNotFound as e:
            raise MeshError(f"--federate: no node sent block {e.cid} of the parts' output folders") from None
    pushed = sum(p.pushed.bytes for p in parts if p.pushed)
    pulled = sum(p.pulled.fetched_bytes for p in parts if p.pulled) + fetched.bytes
    data = _fetched_inputs(parts, peers)
    children = [Child(bom=CID.parse(p.bom), order=CID.parse(p.order), duration_s=p.duration_s, attempts=1,
                      executor=Executor(node=load_bom(store, CID.parse(p.bom)).invoice.executor, did=p.did))
                for p in parts]
    finished = time.time()
    assert sealed.function.code is not None
    bom = BOM(name=sealed.name, order=order_cid, code=sealed.function.code, structure=sealed.structure,
              inputs=sealed.sources, outputs=[output], output_encoding="unixfs-directory", slices=[],
              children=sorted(c.bom for c in children),
              invoice=Invoice(started=timestamp(wall), finished=timestamp(finished), duration_s=finished - wall,
                              slices=0, executed=0, resumed=0, bytes_in=0, bytes_out=0,
                              executor=socket.gethostname(), nodes=[p.did for p in parts], cats_version=__version__,
                              federation=Federation(parts=children, pushed=pushed, pulled=pulled, data=data)))
    bom_cid = CID.hash(bom.block(), DAG_CBOR)
    store.put(bom_cid, bom.block())
    _record(store, bom_cid, str(order_cid), str(output), sealed.name, parts, identity)
    return Federated(bom=str(bom_cid), order=str(order_cid), output=str(output), parts=parts, pushed=pushed,
                     pulled=pulled, data=data, duration_s=time.perf_counter() - started,
                     folder_blocks=fetched.blocks)


def _whole(order: Order, part: Part, identity: Identity, store: BlockStore, timeout: float,
           progress: Callable[[str, str], None] | None, started: float, peers: list[tuple[str, str]]) -> Federated:
    from cats.mesh.client import submit

    done = submit(order, part.url, identity, store=store, timeout=timeout,
                  progress=None if progress is None else lambda s: progress(part.url, s))
    part.order, part.job, part.bom, part.output = done.order, done.job, done.bom, done.output
    part.pushed, part.pulled, part.duration_s = done.pushed, done.pulled, done.duration_s
    return Federated(bom=done.bom, order=done.order, output=done.output, parts=[part], pushed=done.pushed.bytes,
                     pulled=done.pulled.fetched_bytes, data=_fetched_inputs([part], peers),
                     duration_s=time.perf_counter() - started)


def _fetched_inputs(parts: list[Part], peers: list[tuple[str, str]]) -> int:
    """Bytes of the inputs a node did not hold and fetched from another (from what their holders say)."""
    not_held = {c for p in parts if p.pushed for c in p.pushed.not_held}
    if not not_held:
        return 0
    held = {cid: n for h in routing.holdings([CID.parse(c) for c in not_held], peers) for cid, n in h.inputs.items()}
    return sum(held.values())


def _record(store: BlockStore, bom: CID, order: str, output: str, name: str | None, parts: list[Part],
            identity: Identity) -> None:
    """Signed by this node; the parts' BOMs and its own in the lineage; the run in `cats log`, marked with the
    nodes that ran its parts (never this node's memoized run of the Order: its output's files are there)."""
    from cats.bom.index import Index
    from cats.bom.lineage import learn
    from cats.config import home

    Signatures().add(sign(identity, bom))
    index = Index(home() / "index.sqlite")
    try:
        for p in parts:
            learn(store, index, CID.parse(p.bom))
        learn(store, index, bom)
        index.record_remote_run(order, str(bom), output, name, ", ".join(p.did for p in parts),
                                ", ".join(p.url for p in parts))
    finally:
        index.close()



class _Fetched(BlockStore):
    """This node's store, fetching a block it lacks from the parts' nodes (each checked against its CID)
    and keeping it: the merge reads only folder blocks, so only those cross."""

    def __init__(self, store: BlockStore, nodes: list[Node]) -> None:
        self.store, self.nodes = store, nodes
        self.blocks = self.bytes = 0

    def _has(self, cid: CID) -> bool:
        return self.store.has(cid)

    def put(self, cid: CID, data: bytes | memoryview) -> None:
        self.store.put(cid, data)

    def delete(self, cid: CID) -> None:
        self.store.delete(cid)

    def __iter__(self) -> Any:
        return iter(self.store)

    def _get_unverified(self, cid: CID) -> bytes:
        try:
            return self.store.get(cid)
        except BlockNotFound:
            pass
        for node in self.nodes:
            try:
                data = node.block(cid)
            except MeshError:
                continue
            self.store.put(cid, data)
            self.blocks, self.bytes = self.blocks + 1, self.bytes + len(data)
            return data
        raise BlockNotFound(f"block {cid} is on none of the parts' nodes", cid)
