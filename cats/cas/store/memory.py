"""An in-process block store: for tests, notebooks and short-lived pipelines."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import ClassVar

from cats.cas.cid import CID
from cats.cas.store import BlockStore, missing


class MemoryStore(BlockStore):
    """Blocks in a dict of this process: nothing on disk, and no URL, so Ray workers cannot open it."""

    _named: ClassVar[dict[str, MemoryStore]] = {}

    def __init__(self) -> None:
        self._blocks: dict[bytes, tuple[bytes, float]] = {}
        self._lock = threading.Lock()
        self._leases: dict[int, float] = {}
        self._lease_ids = iter(range(1 << 62))

    @classmethod
    def named(cls, name: str) -> MemoryStore:
        """The process-wide store behind `mem://name`, so every opener sees the same blocks."""
        return cls._named.setdefault(name, cls())

    @staticmethod
    def _key(cid: CID) -> bytes:
        return bytes(cid.to_v1())

    def _has(self, cid: CID) -> bool:
        return self._key(cid) in self._blocks

    def put(self, cid: CID, data: bytes | memoryview) -> None:
        with self._lock:
            self._blocks[self._key(cid)] = (bytes(data), time.time())

    def delete(self, cid: CID) -> None:
        with self._lock:
            self._blocks.pop(self._key(cid), None)

    def __iter__(self) -> Iterator[CID]:
        return (CID.from_bytes(k) for k in list(self._blocks))

    def __len__(self) -> int:
        return len(self._blocks)

    def _get_unverified(self, cid: CID) -> bytes:
        try:
            return self._blocks[self._key(cid)][0]
        except KeyError:
            raise missing(cid) from None

    def mtime(self, cid: CID) -> float:
        entry = self._blocks.get(self._key(cid))
        return entry[1] if entry else 0.0

    # -- gc's protocol (see BlockStore.lease): every writer is in this process ----------------------
    @contextlib.contextmanager
    def lease(self) -> Iterator[None]:
        with self._lock:
            lease = next(self._lease_ids)
            self._leases[lease] = time.time()
        try:
            yield
        finally:
            with self._lock:
                del self._leases[lease]

    def gc_cutoff(self, started: float) -> float:
        with self._lock:
            return min([started, *self._leases.values()])

    def discard(self, cid: CID, older_than: float) -> bool:
        with self._lock:  # put takes it too: the check and the removal are one step
            entry = self._blocks.get(self._key(cid))
            if entry is None or entry[1] >= older_than:
                return False
            del self._blocks[self._key(cid)]
            return True
