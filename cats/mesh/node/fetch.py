"""The DAGs an Order names that this node lacks: which trusted peer holds them, and pulling them from there.

A submitter pushes only what it holds and the node lacks, so an Order may arrive naming inputs that
are on neither side: they are looked for on the node's trusted peers that have a URL. At admission
(`locate`) every peer is asked once, with POST /has, which of the missing DAGs it holds whole; an
Order naming a DAG no one holds is refused on the spot, naming every such CID. The bytes move
later, in the run's own process (`gather`), before the Factory starts: a large input does not hold
the submitter's request open, and cancelling the order or reaching the node's time cap stops the
transfer with the run. Every block pulled is checked against its CID, as any pull's is.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from cats.cas.cid import CID
from cats.cas.dag import complete
from cats.cas.store import BlockStore
from cats.errors import CatsError
from cats.mesh.node.orders import OrderRejected, named_cids

if TYPE_CHECKING:
    from cats.identity import Identity
    from cats.identity.trust import Peer
    from cats.order import Order

ASK_TIMEOUT_S = 10.0  # for one peer's answer to POST /has, at admission


def lacking(store: BlockStore, order: Order) -> list[tuple[str, CID]]:
    """The DAGs the Order names (code, lock, IaC, inputs) that are not wholly here, with what each is."""
    proven: set[CID] = set()
    return [(what, cid) for what, cid in named_cids(order) if not complete(store, cid, proven)]


def sources(peers: list[Peer], me: str) -> list[Peer]:
    """The trusted peers an Order's DAGs may come from: those with a node URL, this node left out."""
    return [p for p in peers if p.url and p.did != me]


def locate(order_cid: CID, missing: list[tuple[str, CID]], peers: list[Peer], identity: Identity) -> None:
    """OrderRejected(400) naming every missing DAG that none of the peers holds whole (asked in parallel,
    one request each; a peer that cannot be asked holds nothing)."""
    from cats.mesh.client import Node

    def ask(peer: Peer) -> set[CID] | str:
        assert peer.url is not None
        try:
            with Node(peer.url, identity, did=peer.did, timeout=ASK_TIMEOUT_S) as node:
                return node.has([cid for _, cid in missing])
        except CatsError as e:
            return str(e)

    answers: list[set[CID] | str] = []
    if peers:
        with ThreadPoolExecutor(max_workers=min(8, len(peers)), thread_name_prefix="cats-locate") as pool:
            answers = list(pool.map(ask, peers))
    held = set().union(*(a for a in answers if isinstance(a, set)))
    nowhere = [(what, cid) for what, cid in missing if cid.to_v1() not in held]
    if not nowhere:
        return
    failed = [a for a in answers if isinstance(a, str)]
    asked = (f"{len(peers)} trusted peer{'' if len(peers) == 1 else 's'} asked" if peers
             else "no trusted peer with a node URL to ask")
    why = f"; {len(failed)} could not answer: {failed[0]}" if failed else ""
    needs = ", ".join(f"its {what} {cid}" for what, cid in nowhere)
    raise OrderRejected(400, f"Order {order_cid} needs {needs}, which neither this node nor its trusted peers "
                             f"hold ({asked}{why}): push {'it' if len(nowhere) == 1 else 'them'} with the Order")


def gather(store: BlockStore, order_cid: CID, order: Order, peers: list[Peer], identity: Identity) -> None:
    """Pull every DAG the Order names that is not here from a trusted peer holding it (the first that can
    send it); CatsError naming the first no peer could send, with why."""
    from cats.mesh.client import from_peers

    missing = lacking(store, order)
    if not missing:
        return
    fetch = from_peers(store, peers, identity)
    for what, cid in missing:
        if (why := fetch(cid)) is not None:
            raise CatsError(f"Order {order_cid}: its {what} {cid} could not be pulled from a trusted peer: {why}")
