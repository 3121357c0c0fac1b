"""Block stores: one small interface, implementations chosen by URL scheme (as fsspec does).

Every store repairs and collects the same way:
- `put` of bytes the caller hashed replaces a stored block its cheap check finds bad (the local store
  compares the size, and optionally a sample of the bytes), and refreshes the block's time when it
  keeps it; `restore` replaces one unconditionally after verifying the bytes; `check` tells a good
  block from a missing or corrupt one.
- gc and writers share a protocol (`lease`, `gc_cutoff`, `discard`): see `BlockStore.lease`.

`open_store()` with no argument gives the embedded default, the on-disk store in `CATS_HOME`, or the
IPFS daemon `CATS_IPFS_API` names. Other stores register a scheme in `SCHEMES` (`ipfs+http://` is
the daemon store).
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Literal
from urllib.parse import urlsplit

from cats.cas import multihash
from cats.cas.cid import CID
from cats.errors import BlockNotFound, CatsError, IntegrityError


class BlockStore(ABC):
    """Maps CIDs to block bytes. Implementations store `_get_unverified` bytes; hashing lives here."""

    @property
    def url(self) -> str | None:
        """A URL another process opens this same store with (`open_store(url)`); None: this process only."""
        return None

    def has(self, cid: CID) -> bool:
        """Whether the block is here; an identity CID carries its block, so it always is (as in IPFS)."""
        return cid.hashfn == multihash.IDENTITY or self._has(cid)

    @abstractmethod
    def _has(self, cid: CID) -> bool: ...

    @abstractmethod
    def put(self, cid: CID, data: bytes | memoryview) -> None:
        """Store data under cid. The caller vouches that data hashes to cid (it just computed it).

        A block already stored is kept only if the store's cheap check finds it matches (at least its
        size), and then its time is refreshed, as if written now (gc's protocol relies on it); one that
        does not match is replaced, so adding good bytes again repairs a corrupted block."""

    @abstractmethod
    def delete(self, cid: CID) -> None: ...

    @abstractmethod
    def __iter__(self) -> Iterator[CID]:
        """Every stored block's CID (as CIDv1: v0 and v1 of the same block are one entry)."""

    @abstractmethod
    def _get_unverified(self, cid: CID) -> bytes:
        """The stored bytes, or BlockNotFound."""

    def get(self, cid: CID, verify: bool = True) -> bytes:
        if cid.hashfn == multihash.IDENTITY:  # never stored: the bytes are in the CID
            return bytes(cid.digest)
        data = self._get_unverified(cid)
        if verify and not cid.verify(data):
            raise IntegrityError(f"block {cid} is corrupted: its bytes do not hash to its CID", cid)
        return data

    def size(self, cid: CID) -> int:
        """The stored block's size in bytes (without reading it, where the store can); BlockNotFound if absent."""
        return len(self.get(cid, verify=False))

    def read_into(self, cid: CID, buffer: memoryview) -> None:
        """Copy the stored block, unverified, into buffer, which is `size(cid)` bytes long (what serving a
        CAR does, so a block goes from its file to the socket's buffer without an object of its own).
        IntegrityError if the block is not that long any more."""
        data = self.get(cid, verify=False)
        if len(data) != len(buffer):
            raise IntegrityError(f"block {cid} holds {len(data)} bytes, not the {len(buffer)} expected", cid)
        buffer[:] = data

    @contextlib.contextmanager
    def writing(self) -> Iterator[Callable[[CID, bytes | memoryview], bool]]:
        """A `put` for many blocks at once (a pull's, from several threads), answering whether the block
        was not here before: a store may gather them (the local store packs them); each is stored by
        the end of the block, and may be visible sooner."""
        def put(cid: CID, data: bytes | memoryview) -> bool:
            here = self.has(cid)
            self.put(cid, data)
            return not here

        yield put

    def put_verified(self, cid: CID, data: bytes | memoryview) -> None:
        """Store bytes that came from elsewhere, after checking they match cid."""
        if not cid.verify(data):
            raise IntegrityError(f"block {cid} does not match its bytes; not stored", cid)
        self.put(cid, data)

    def restore(self, cid: CID, data: bytes | memoryview) -> None:
        """Replace the stored block with data, whatever is stored now, once data is checked against cid:
        what repair writes (bytes from elsewhere, never trusted)."""
        if not cid.verify(data):
            raise IntegrityError(f"block {cid} does not match its bytes; not stored", cid)
        self.delete(cid)
        self.put(cid, data)

    def check(self, cid: CID) -> Literal["ok", "missing", "corrupt"]:
        """Whether the stored block is there and hashes to its CID (it is read in full)."""
        try:
            data = self._get_unverified(cid)
        except BlockNotFound:
            return "missing"
        return "ok" if cid.verify(data) else "corrupt"

    def mtime(self, cid: CID) -> float:
        """When the block was last written or refreshed by `put` (0 where a store does not track it)."""
        return 0.0

    @contextlib.contextmanager
    def lease(self) -> Iterator[None]:
        """Hold a writer's lease while writing a DAG and until its root is pinned: gc removes no block
        written or refreshed since the lease began.

        Why that is safe (`cats.cas.pins.gc` is the collector): gc notes its own start S, then reads the
        live leases and takes the cutoff C = min(S, start of the oldest), then reads the pins, and
        removes only blocks that no pin reaches and whose time is before C, each by `discard`.
        A block a writer relies on was put (written, or refreshed by a de-duplicated `put`) under its
        lease, so its time is at or after the lease's start. If gc saw the lease, that start is >= C;
        if the lease became visible after gc read the leases, the put came later still, after S >= C.
        Either way the block's time is >= C and gc keeps it; once the writer pins its root and ends
        its lease, the pin keeps the DAG (gc reads pins after leases, so it sees one or the other).
        `discard` makes the time check and the removal one step with respect to `put`'s refresh, so
        a refresh landing between them is not lost. Leases end with their process: a crashed
        writer's lease does not hold gc back.

        Stores with no gc of their own beyond `pins.gc` and no other process sharing them need not
        track leases: the default holds none."""
        yield

    def gc_cutoff(self, started: float) -> float:
        """The time before which gc may remove blocks: started, or the start of the oldest live lease."""
        return started

    def discard(self, cid: CID, older_than: float) -> bool:
        """Remove the block if its time is before older_than; True if removed. A store shared with other
        writers does both at once with respect to `put`'s refresh (see `lease`)."""
        if self.mtime(cid) >= older_than:
            return False
        self.delete(cid)
        return True

    def temp_dir(self) -> str | None:
        """Where to stage bytes bound for this store (its own disk, cleaned when it opens); None: the
        system's temporary folder."""
        return None


class PinningStore(BlockStore):
    """A store with pins and a garbage collector of its own: an IPFS daemon, whose gc may run at any
    time (`ipfs repo gc`, or on its own) and keeps only what the daemon has pinned. So CATs' pins
    (`cats.cas.pins`) are pinned in it too, and CATs' gc runs the store's own instead of deleting
    blocks one by one: the store may hold others' pinned data that CATs' pins know nothing of."""

    @abstractmethod
    def pin(self, cid: CID) -> None:
        """Pin cid's DAG recursively; every block of it must be in the store."""

    @abstractmethod
    def unpin(self, cid: CID) -> bool:
        """Drop the recursive pin of cid; False if the store had none."""

    @abstractmethod
    def pins(self) -> list[CID]:
        """The roots the store pins recursively (CATs' and anyone else's)."""

    @abstractmethod
    def collect(self) -> list[CID]:
        """Run the store's own garbage collection; return the blocks it removed (as the store names
        them: a daemon keys blocks by multihash and names each with the raw codec)."""


def missing(cid: CID) -> BlockNotFound:
    return BlockNotFound(f"block {cid} not found in the store", cid)


SCHEMES: dict[str, Callable[[str], BlockStore]] = {}


def register(scheme: str, factory: Callable[[str], BlockStore]) -> None:
    SCHEMES[scheme] = factory


def open_store(url: str | None = None) -> BlockStore:
    """Open a store by URL (`file:///path`, `mem://name`, `ipfs+http://host:port`).

    Default: `CATS_STORE`, else the daemon at `CATS_IPFS_API`, else `CATS_HOME`'s store.
    """
    url = url or os.environ.get("CATS_STORE")
    if not url and os.environ.get("CATS_IPFS_API"):
        from cats.cas.store.ipfs import IPFSStore

        return IPFSStore(os.environ["CATS_IPFS_API"])
    if not url:
        from cats.cas.store.local import LocalStore
        from cats.config import home

        return LocalStore(home() / "blocks")
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise CatsError(f"unknown block store URL {url!r}; schemes: {', '.join(sorted(SCHEMES))}")
    return SCHEMES[scheme](url)


def _local(url: str) -> BlockStore:
    from cats.cas.store.local import LocalStore

    return LocalStore(urlsplit(url).path)


def _memory(url: str) -> BlockStore:
    from cats.cas.store.memory import MemoryStore

    return MemoryStore.named(urlsplit(url).netloc or "default")


def _ipfs(url: str) -> BlockStore:
    from cats.cas.store.ipfs import IPFSStore

    return IPFSStore(url)


register("file", _local)
register("mem", _memory)
register("ipfs+http", _ipfs)
register("ipfs+https", _ipfs)
