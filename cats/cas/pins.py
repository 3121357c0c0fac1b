"""Pins and garbage collection: pinned DAGs stay; unpinned, unreachable blocks can be removed.

Pins are files named by CID in `<home>/pins`, so adding one is an atomic create that many
processes can do at once. Blocks written after a gc starts are spared, so a gc running beside
writers (Ray workers filling the store) never removes a block a DAG in progress still needs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

from cats.cas.cid import CID
from cats.cas.dag import walk
from cats.cas.store import BlockStore
from cats.errors import BlockNotFound, CatsError

# File systems stamp mtimes from a coarse kernel clock, up to a tick (<= 10 ms on Linux) behind
# time.time(); gc dates its start this much earlier so a block written just after it looks newer.
_CLOCK_SLACK = 0.05


class Pins:
    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def add(self, store: BlockStore, cid: CID) -> int:
        """Pin a DAG recursively; every block of it must be present. Returns its block count."""
        count = sum(1 for _ in walk(store, cid))
        (self.folder / str(cid.to_v1())).touch()
        return count

    def rm(self, cid: CID) -> None:
        path = self.folder / str(cid.to_v1())
        if not path.exists():
            raise CatsError(f"{cid} is not pinned")
        path.unlink()

    def __iter__(self) -> Iterator[CID]:
        return (CID.parse(p.name) for p in sorted(self.folder.iterdir()) if not p.name.startswith("."))

    def __contains__(self, cid: CID) -> bool:
        return (self.folder / str(cid.to_v1())).exists()


def gc(store: BlockStore, pins: Pins) -> list[CID]:
    """Remove every block not reachable from a pin and older than this call; return what went."""
    started = time.time() - _CLOCK_SLACK
    keep: set[CID] = set()
    for root in pins:
        try:
            keep.update(c.to_v1() for c in walk(store, root))
        except BlockNotFound as e:
            raise CatsError(f"pinned DAG {root} is incomplete ({e}); gc removed nothing") from None
    removed = []
    for cid in store:
        if cid not in keep and store.mtime(cid) < started:
            store.delete(cid)
            removed.append(cid)
    return removed
