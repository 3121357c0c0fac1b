"""Environment drift: how the recorded lock differs from this machine's. Reported, never a failure."""

from __future__ import annotations

from cats.cas import dagcbor
from cats.cas.cid import CID
from cats.cas.store import BlockStore
from cats.order.environment import environment_lock
from cats.verification.report import Drift


def compare(store: BlockStore, recorded: CID) -> list[Drift]:
    current = environment_lock(store)
    if current == recorded:
        return []
    old = dagcbor.decode(store.get(recorded))
    new = dagcbor.decode(store.get(current))
    return [Drift(package=name, recorded=old.get(name), current=new.get(name))
            for name in sorted(old.keys() | new.keys()) if old.get(name) != new.get(name)]
