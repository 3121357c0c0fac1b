"""The embedded default: blocks as files on local disk, safe with many writers at once.

Layout: `<root>/<shard>/<key>` where key is the base32 of the block's CIDv1 and shard its
next-to-last two characters (kubo's flatfs does the same, which keeps folders evenly filled).
A write goes to a unique temporary file in the shard folder and is renamed into place, so
readers never see a partial block and concurrent writers of the same block cannot collide.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from cats.cas.cid import CID
from cats.cas.store import BlockStore, missing

_counter = itertools.count()


def _key(cid: CID) -> str:
    """The CIDv1's base32 text without its multibase prefix."""
    return str(cid.to_v1())[1:]


class LocalStore(BlockStore):
    """Blocks as files under `root` (CATS_HOME/blocks by default): the store every process on this
    machine, Ray workers included, opens by its `file://` URL."""

    def __init__(self, root: str | os.PathLike[str], sync: bool = False) -> None:
        """`sync=True` fsyncs each block before the rename (durable across power loss, slower)."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.sync = sync
        self._shards: set[str] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"file://{self.root.resolve()}"

    def path(self, cid: CID) -> Path:
        key = _key(cid)
        return self.root / key[-3:-1] / key

    def has(self, cid: CID) -> bool:
        return self.path(cid).exists()

    def put(self, cid: CID, data: bytes | memoryview) -> None:
        key = _key(cid)
        shard = key[-3:-1]
        folder = self.root / shard
        final = folder / key
        if final.exists():
            return
        if shard not in self._shards:
            folder.mkdir(exist_ok=True)
            with self._lock:
                self._shards.add(shard)
        tmp = folder / f".{key}.{os.getpid()}.{threading.get_ident()}.{next(_counter)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if self.sync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, final)

    def delete(self, cid: CID) -> None:
        self.path(cid).unlink(missing_ok=True)

    def __iter__(self) -> Iterator[CID]:
        for shard in sorted(os.scandir(self.root), key=lambda e: e.name):
            if not shard.is_dir() or shard.name.startswith("."):
                continue
            for entry in os.scandir(shard.path):
                if entry.name.startswith("."):
                    continue
                yield CID.parse("b" + entry.name)

    def _get_unverified(self, cid: CID) -> bytes:
        try:
            with open(self.path(cid), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise missing(cid) from None

    def mtime(self, cid: CID) -> float:
        try:
            return self.path(cid).stat().st_mtime
        except FileNotFoundError:
            return 0.0
