"""Pins and garbage collection: pinned DAGs stay; unpinned, unreachable blocks can be removed.

Pins are files named by CID in `<home>/pins`, so adding one is an atomic create that many
processes can do at once. gc spares blocks written or refreshed after it started or after the oldest
live writer's lease began, so a gc running beside writers (`cats add`, an Order's Ray workers) never
removes a block a DAG in progress still needs: the protocol and why it is safe are in
`BlockStore.lease`.

A store with pins and a gc of its own (`PinningStore`: an IPFS daemon) gets every pin too, since its
gc may run at any time, and CATs' gc there is the store's: it may hold others' pinned data.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

from cats.cas.cid import CID
from cats.cas.dag import walk
from cats.cas.store import BlockStore, PinningStore
from cats.errors import BlockNotFound, CatsError

# File systems stamp mtimes from a coarse kernel clock, up to a tick (<= 10 ms on Linux) behind
# time.time(); gc dates its start this much earlier so a block written just after it looks newer.
_CLOCK_SLACK = 0.05


class Pins:
    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def add(self, store: BlockStore, cid: CID) -> int:
        """Pin a DAG recursively; every block of it must be present. Returns its block count.

        The walk names a missing block; a store with its own pins pins it before the file is made,
        so a failure there leaves no pin."""
        count = sum(1 for _ in walk(store, cid))
        if isinstance(store, PinningStore):
            store.pin(cid)
        (self.folder / str(cid.to_v1())).touch()
        return count

    def rm(self, store: BlockStore, cid: CID) -> None:
        """Unpin a DAG, here and in a store with its own pins (where a pin CATs did not make goes too,
        as `cats pin ls` lists the store's pins there)."""
        path = self.folder / str(cid.to_v1())
        unpinned = isinstance(store, PinningStore) and store.unpin(cid)
        if not path.exists() and not unpinned:
            raise CatsError(f"{cid} is not pinned")
        path.unlink(missing_ok=True)

    def __iter__(self) -> Iterator[CID]:
        return (CID.parse(p.name) for p in sorted(self.folder.iterdir()) if not p.name.startswith("."))

    def __contains__(self, cid: CID) -> bool:
        return (self.folder / str(cid.to_v1())).exists()


def gc(store: BlockStore, pins: Pins) -> list[CID]:
    """Remove every block not reachable from a pin and older than this call and every live writer's
    lease; return what went.

    A store with its own gc runs it, once every pin is pinned there too (pins made while another
    store was in use, or unpinned there by someone else would otherwise go)."""
    if isinstance(store, PinningStore):
        for root in pins:
            try:
                store.pin(root)
            except CatsError as e:
                raise CatsError(f"pinned DAG {root} could not be pinned in {store} ({e}); gc removed nothing") from None
        return store.collect()
    cutoff = store.gc_cutoff(time.time() - _CLOCK_SLACK)  # leases first, then pins: see BlockStore.lease
    keep: set[CID] = set()
    for root in pins:
        try:
            keep.update(c.to_v1() for c in walk(store, root))
        except BlockNotFound as e:
            raise CatsError(f"pinned DAG {root} is incomplete ({e}); gc removed nothing") from None
    return [cid for cid in store if cid not in keep and store.discard(cid, cutoff)]
