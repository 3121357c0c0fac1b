"""Data locality on a Ray cluster whose nodes each keep their own block store.

A node says which store it keeps by a custom resource, `cats-store:<name>` (any positive amount):

    CATS_HOME=/data/cats ray start --address HEAD:6379 --resources '{"cats-store:rack1-a": 1000}'

On each such node the Factory places one Keeper actor (named for the store, detached, no CPU) that
opens the node's own default store. It answers which blocks the store holds, so the Factory can
send each slice to a node that holds its input, and serves blocks to workers on other nodes, so a
slice whose input is held elsewhere fetches it (through Ray's object store) instead of failing.
Workers read through a `ClusterStore`: their node's store first, then the peers, keeping what they
fetched; it counts the bytes that crossed between nodes for the invoice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cats.cas import dag
from cats.cas.cid import CID, RAW
from cats.cas.store import BlockStore, missing, open_store
from cats.errors import BlockNotFound, CatsError, IntegrityError

RESOURCE = "cats-store:"
NAMESPACE = "cats"
# What a slice task asks of its store's resource: a token amount, so any advertised amount admits
# as many tasks as the node has CPUs for (Ray keeps four decimals).
TOKEN = 0.0001


class Keeper:
    """Serves one node's store to the cluster (a Ray actor on that node)."""

    def __init__(self) -> None:
        self.store = open_store()  # the node's own default: its CATS_HOME, CATS_STORE or CATS_IPFS_API

    def info(self) -> tuple[str | None, str]:
        import ray

        return self.store.url, ray.get_runtime_context().get_node_id()

    def holding(self, cids: list[str]) -> list[bool]:
        return [self.store.has(CID.parse(c)) for c in cids]

    def blocks(self, cids: list[str]) -> list[bytes | None]:
        """The stored bytes of each CID, None where absent (the receiver verifies them)."""
        out: list[bytes | None] = []
        for c in cids:
            try:
                out.append(self.store.get(CID.parse(c), verify=False))
            except BlockNotFound:
                out.append(None)
        return out


@dataclass(frozen=True)
class Store:
    """A store some node of the cluster keeps: its resource, the URL its node opens it by, its keeper."""

    name: str
    url: str
    node: str
    keeper: Any = field(compare=False)

    @property
    def resource(self) -> str:
        return RESOURCE + self.name


def stores(ray: Any) -> list[Store]:
    """The cluster's advertised stores with a keeper each (started on first use, then reused)."""
    names = sorted(r[len(RESOURCE):] for r in ray.cluster_resources() if r.startswith(RESOURCE))
    keepers = [ray.remote(Keeper).options(
        name=RESOURCE + name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=0,
        resources={RESOURCE + name: TOKEN}).remote() for name in names]
    found = []
    for name, keeper, (url, node) in zip(names, keepers, ray.get([k.info.remote() for k in keepers]), strict=True):
        if url is None:
            raise CatsError(f"the store of node {node[:12]} ({RESOURCE}{name}) lives in one process only; "
                            "give that node an on-disk store or an IPFS daemon")
        found.append(Store(name, url, node, keeper))
    return found


def keepers(names: list[str]) -> list[Any]:
    """The keepers of the named stores, looked up by name (a plan names stores; a worker reaches them)."""
    import ray

    return [ray.get_actor(RESOURCE + name, namespace=NAMESPACE) for name in names]


def holders(ray: Any, all_stores: list[Store], roots: list[CID]) -> list[list[str]]:
    """For each root, the names of the stores that hold it (its root block: a whole input, as added)."""
    asked = [str(r) for r in roots]
    answers = ray.get([s.keeper.holding.remote(asked) for s in all_stores])
    return [[s.name for s, answer in zip(all_stores, answers, strict=True) if answer[i]] for i in range(len(roots))]


def assign(wanted: list[list[str]], names: list[str], slots: dict[str, int], locality: bool) -> list[str]:
    """A store for each slice: with locality, the least loaded of the stores that hold its input
    (any store when none does); without, round robin. Load is counted per slot, so a node with
    more CPUs takes more slices."""
    load = dict.fromkeys(names, 0)
    chosen = []
    for i, holding in enumerate(wanted):
        if not locality:
            pick = names[i % len(names)]
        else:
            pick = min(holding or names, key=lambda n: (load[n] / slots[n], names.index(n)))
        load[pick] += 1
        chosen.append(pick)
    return chosen


class ClusterStore(BlockStore):
    """A node's own store, reading through to the cluster's other stores.

    With `keep` (workers; the driver completing a BOM) fetched blocks stay in the local store, and a
    linking block comes with its missing children in the same call, so reading a file held
    elsewhere costs a few round trips, not one per chunk; `has` fetches too, so a walk through this
    store (a pin) leaves the whole DAG here. Without `keep` (the driver splitting inputs) blocks are
    only read, so this store does not seem to hold what it merely looked at. `moved`/`fetched` count
    the bytes and blocks that came from other nodes.
    """

    def __init__(self, local: BlockStore, peers: list[Any] | Callable[[], list[Any]], keep: bool = True) -> None:
        self.local = local
        self._peers = peers
        self.keep = keep
        self.moved = 0
        self.fetched = 0

    @property
    def url(self) -> str | None:
        return self.local.url

    @property
    def peers(self) -> list[Any]:
        """Keeper handles; given as a callable, looked up on the first miss (so a run whose blocks are
        all here never asks Ray)."""
        if callable(self._peers):
            self._peers = self._peers()
        return self._peers

    def _has(self, cid: CID) -> bool:
        if self.local.has(cid):
            return True
        try:
            self._fetch([cid])
        except BlockNotFound:
            return False
        return True

    def put(self, cid: CID, data: bytes | memoryview) -> None:
        self.local.put(cid, data)

    def delete(self, cid: CID) -> None:
        self.local.delete(cid)

    def __iter__(self) -> Iterator[CID]:
        return iter(self.local)

    def mtime(self, cid: CID) -> float:
        return self.local.mtime(cid)

    def _get_unverified(self, cid: CID) -> bytes:
        try:
            return self.local.get(cid, verify=False)
        except BlockNotFound:
            pass
        data = self._fetch([cid])[cid]
        if self.keep and cid.codec != RAW:  # its children are what will be read next
            children = [c for c in dag.links(cid, data) if not self.local.has(c)]
            if children:
                self._fetch(children, required=False)
        return data

    def _fetch(self, cids: list[CID], required: bool = True) -> dict[CID, bytes]:
        """Blocks from the peers that hold them, checked against their CIDs (and kept, with `keep`)."""
        import ray

        got: dict[CID, bytes] = {}
        wanted = list(cids)
        for peer in self.peers:
            if not wanted:
                break
            answers = ray.get(peer.blocks.remote([str(c) for c in wanted]))
            for c, data in zip(wanted, answers, strict=True):
                if data is None:
                    continue
                if not c.verify(data):
                    raise IntegrityError(f"block {c} from another node's store does not match its CID", c)
                if self.keep:
                    self.local.put(c, data)
                got[c] = data
                self.moved += len(data)
                self.fetched += 1
            wanted = [c for c in wanted if c not in got]
        if wanted and required:
            raise missing(wanted[0])
        return got
