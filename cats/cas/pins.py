"""Pins and garbage collection: pinned DAGs stay; unpinned, unreachable blocks can be removed.

Pins are files named by CID in `<home>/pins`, so adding one is an atomic create that many
processes can do at once. gc spares blocks written or refreshed after it started or after the oldest
live writer's lease began, so a gc running beside writers (`cats add`, an Order's Ray workers) never
removes a block a DAG in progress still needs: the protocol and why it is safe are in
`BlockStore.lease`.

A store with pins and a gc of its own (`PinningStore`: an IPFS daemon) gets every pin too, since its
gc may run at any time, and CATs' gc there is the store's: it may hold others' pinned data.

For a local store, the pins also keep the set of blocks their walks reached (`.reached.sqlite`): each
such block's whole DAG was present when its pin was added. A pin that asks only for what is new
(`add(..., whole=False)`, the Factory pinning a BOM that links the last run's inputs and results)
stops its walk there. That is safe because gc is what removes blocks, and gc resets the set to what
it keeps, before it removes anything; gc itself always walks every pin to its leaves.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import closing
from functools import partial
from pathlib import Path

from cats._sqlite import connect, in_batches, transaction
from cats.cas.cid import CID
from cats.cas.dag import walk
from cats.cas.store import BlockStore, PinningStore
from cats.cas.store.local import LocalStore
from cats.errors import BlockNotFound, CatsError

# File systems stamp mtimes from a coarse kernel clock, up to a tick (<= 10 ms on Linux) behind
# time.time(); gc dates its start this much earlier so a block written just after it looks newer.
_CLOCK_SLACK = 0.05

_REACHED = "CREATE TABLE IF NOT EXISTS reached (store TEXT NOT NULL, cid BLOB NOT NULL, PRIMARY KEY (store, cid)) " \
           "WITHOUT ROWID"


class Pins:
    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def add(self, store: BlockStore, cid: CID, *, whole: bool = True) -> int:
        """Pin a DAG recursively; every block of it must be present. Returns how many blocks the walk
        checked: the whole DAG's count, or with `whole=False` only those no pin here reached before
        (the walk stops at those, in a local store: their DAGs were complete then and gc has kept them).

        The walk names a missing block; a store with its own pins pins it before the file is made,
        so a failure there leaves no pin."""
        where = _tracked(store)
        db = self._reached() if where is not None and not whole and self._reached_file.exists() else None
        try:
            skip = None if db is None or where is None else partial(_known, db, where)
            walked = [c.to_v1() for c in walk(store, cid, skip=skip)]
        finally:
            if db is not None:
                db.close()
        if isinstance(store, PinningStore):
            store.pin(cid)
        (self.folder / str(cid.to_v1())).touch()
        if where is not None:
            with closing(self._reached()) as db, transaction(db):
                db.executemany("INSERT OR IGNORE INTO reached VALUES (?, ?)", ((where, bytes(c)) for c in walked))
        return len(walked)

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

    @property
    def _reached_file(self) -> Path:
        return self.folder / ".reached.sqlite"  # hidden: not a pin

    def _reached(self) -> sqlite3.Connection:
        return connect(self._reached_file, _REACHED)

    def _keep_only(self, store: BlockStore, kept: set[CID]) -> None:
        """gc's reset, before it removes anything: the blocks pins here reached are the ones it keeps
        (for a store seen through another, such as a cluster's, none: its walk may have read elsewhere)."""
        tracked = _tracked(store) is not None
        if store.url is None or not tracked and not self._reached_file.exists():
            return
        with closing(self._reached()) as db, transaction(db):
            db.execute("DELETE FROM reached WHERE store = ?", (store.url,))
            if tracked:
                db.executemany("INSERT INTO reached VALUES (?, ?)", ((store.url, bytes(c)) for c in kept))


def _tracked(store: BlockStore) -> str | None:
    """The store whose reached blocks the pins keep (a local store: only this gc removes its blocks)."""
    return store.url if isinstance(store, LocalStore) else None


def _known(db: sqlite3.Connection, store: str, cids: list[CID]) -> Iterable[CID]:
    """Those of `cids` (v1) a pin here reached."""
    for marks, batch in in_batches(cids):
        rows = db.execute(f"SELECT cid FROM reached WHERE store = ? AND cid IN ({marks})",
                          [store, *(bytes(c) for c in batch)])
        yield from (CID.from_bytes(row[0]) for row in rows)


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
    pins._keep_only(store, keep)
    return [cid for cid in store if cid not in keep and store.discard(cid, cutoff)]
