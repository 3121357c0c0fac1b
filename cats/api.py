"""`cats.verify`, `cats.submit` and `cats.federate`: verification and running on other nodes with this node's
store, identity and trusted peers filled in, the one path the `cats verify` and `cats mesh submit`
(with `--federate` too) commands take.
"""

from __future__ import annotations

from collections.abc import Callable

from cats.bom.home import Home
from cats.cas.cid import CID
from cats.cas.store import BlockStore
from cats.identity import Identity
from cats.identity.trust import Trust
from cats.mesh import client
from cats.mesh import federate as federation
from cats.order import Order
from cats.verification import audit
from cats.verification.report import Report


def verify(bom: CID | str, *, sample: int | None = None, fraction: float | None = None, seed: int | None = None,
           recursive: bool = False, integrity: bool = False, quiet: bool = True,
           store: BlockStore | None = None, home: Home | None = None) -> Report:
    """Verify a BOM from the store alone (`store`, else `home`'s: by default this node's, with its
    identity, trusted peers and kept signatures); never raises on a mismatch: `report.verified` is
    the verdict and `report.problems` names each CID and reason.

    By default every slice is re-executed on Ray from the recorded code, inputs and seeds and must
    give the recorded output CIDs, and the recorded results must merge to the recorded output;
    `sample` (a count) or `fraction` re-executes a random choice (`seed` fixes it; the report gives
    the odds of catching m corrupted slices); `integrity` re-executes nothing and checks that every
    block exists and hashes to its CID, and the BOM each reused slice names as its source (a trusted
    peer's, for one it took from that peer) is intact, signed by this node or a trusted peer, and
    records computing that output. The Order's checks
    run in every mode. With `recursive`, the BOMs that made its inputs and its sub-Orders' BOMs are
    verified too: one missing here is pulled from the nodes of trusted peers, and one whose code or
    data cannot be read here is accepted on the signature of this node or a trusted peer (its
    report says so). `quiet` keeps the workers' output off the terminal.
    """
    with Home.given(home, store) as here:
        store = store if store is not None else here.store
        peers = Trust(here.folder / "trust.json").peers()
        me = here.identity
        return audit.verify(store, CID.parse(bom), sample=sample, fraction=fraction, seed=seed, recursive=recursive,
                            integrity=integrity, quiet=quiet, trusted={me.did, *(p.did for p in peers)},
                            fetch=client.from_peers(store, peers, me), home=here)


def submit(order: Order, *, to: str, timeout: float = 3600.0, store: BlockStore | None = None,
           progress: Callable[[str], None] | None = None, fetch_output: bool = False) -> client.Submitted:
    """Run an Order on the CAT node at `to` (http://host:port), which must trust this node (`cats id`
    prints its DID); return when the node has run it, with its signed BOM pulled here (and the output
    too with `fetch_output`), and the run in this node's `cats log`, marked with the node.

    The Order is sealed here (this store, unless `store` is given) and signed by this node's identity;
    the node is sent only what it lacks of it and this store holds (the Order, code, lock, IaC, inputs),
    and finds inputs neither holds on its own trusted peers. `progress` is called with each job status
    the node reports. Raises MeshError if the node refuses it (naming the inputs no one holds), the run
    fails there, or it does not finish within `timeout` seconds. A slice submitting a sub-Order to the
    Factory it runs under uses `cats.factory.submit` instead.
    """
    return client.submit(order, to, Identity.load(), store=store, timeout=timeout, progress=progress,
                         fetch_output=fetch_output)


def federate(order: Order, *, timeout: float = 3600.0, store: BlockStore | None = None,
             progress: Callable[[str, str], None] | None = None) -> federation.Federated:
    """Run an Order whose inputs live on several trusted peers' nodes where they are: each node runs the
    Order over the inputs it holds and signs its BOM, and this node merges their output folders (from
    their folder blocks, never a file's bytes) into a BOM of its own linking theirs as children, signed,
    and in `cats log`. No input crosses a border: the invoice (`federation`) says what did. Built-in
    splits and the `directory` merge only (a CatsError says which part of the Order does not fit);
    `progress` is called with a node's URL and each job status it reports."""
    from cats.cas.store import open_store

    peers = [(p.did, p.url) for p in Trust().peers() if p.url]
    return federation.federate(order, Identity.load(), store if store is not None else open_store(), peers,
                               timeout=timeout, progress=progress)
