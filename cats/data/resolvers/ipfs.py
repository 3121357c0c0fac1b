"""`ipfs://CID[/path]` from the local block store (`CATS_STORE` or `CATS_HOME`'s), by verified range reads.

The reader's `Reach` decides which root CIDs it may read (the Data Service: pinned DAGs only).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from cats.cas import reader
from cats.cas.cid import CID
from cats.cas.store import BlockStore, open_store
from cats.data.reach import Reach
from cats.data.resolvers import Info, Resolver
from cats.errors import (
    BlockNotFound,
    DataError,
    DataIntegrityError,
    DataNotFound,
    IntegrityError,
    InvalidCID,
    MalformedURI,
    PathNotFound,
)


@contextmanager
def _mapped(uri: str) -> Iterator[None]:
    try:
        yield
    except (BlockNotFound, PathNotFound) as e:
        raise DataNotFound(f"{uri} not found: {e}", uri) from None
    except IntegrityError as e:
        raise DataIntegrityError(f"{uri}: {e}", uri) from None


class IPFSResolver(Resolver):
    def __init__(self, reach: Reach) -> None:
        self.reach = reach
        self.store: BlockStore = open_store()

    def _file(self, uri: str) -> tuple[CID, int]:
        """The CID and size of the file the URI names (its version: content addressing makes it immutable)."""
        try:
            root, path = reader.split_path(uri)
        except InvalidCID as e:
            raise MalformedURI(f"{uri!r} is malformed: expected ipfs://CID[/path] ({e})", uri) from None
        self.reach.ipfs(uri, root)
        with _mapped(uri):
            cid = reader.resolve(self.store, root, path)
            item = reader.stat(self.store, cid)
        if item.kind != "file":
            raise DataError(f"{uri} is a {item.kind}, not a file", uri)
        return cid, item.size

    def stat(self, uri: str) -> Info:
        cid, size = self._file(uri)
        return Info(uri, size, str(cid))

    def _fetch(self, uri: str, offset: int, n: int) -> tuple[bytes, str | None]:
        cid, _ = self._file(uri)
        with _mapped(uri):
            return b"".join(reader.read(self.store, cid, offset, n)), str(cid)
