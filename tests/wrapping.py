"""A block store that forwards to another, for tests that watch or interfere with store traffic."""

from __future__ import annotations

from collections.abc import Iterator

from cats.cas.cid import CID
from cats.cas.store import BlockStore


class Forwarding(BlockStore):
    def __init__(self, inner: BlockStore) -> None:
        self.inner = inner

    def _has(self, cid: CID) -> bool:
        return self.inner.has(cid)

    def put(self, cid: CID, data: bytes | memoryview) -> None:
        self.inner.put(cid, data)

    def delete(self, cid: CID) -> None:
        self.inner.delete(cid)

    def __iter__(self) -> Iterator[CID]:
        return iter(self.inner)

    def _get_unverified(self, cid: CID) -> bytes:
        return self.inner.get(cid, verify=False)

    def mtime(self, cid: CID) -> float:
        return self.inner.mtime(cid)
