"""The UnixFS importer: files and folders to a DAG, with the CIDs `ipfs add` gives under kubo's defaults.

Kubo's defaults: fixed 262,144-byte chunks; a balanced tree of at most 174 links a node; raw
leaves with CIDv1 and UnixFS `File` dag-pb leaves with CIDv0; a one-chunk file is its leaf;
folders are dag-pb `Directory` nodes with links sorted by name (HAMT-sharded past 256 KiB);
hidden files are skipped unless asked for; symlinks are stored as UnixFS symlinks, not followed.

Files stream through in constant memory: chunks are hashed and written by a small thread pool
(hashlib and file writes release the GIL) while the next chunk is read, and only one pending link
list per tree level is kept.
"""

from __future__ import annotations

import io
import os
import stat
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO

from cats.cas import dagpb, hamt, multihash, names, unixfs, varint
from cats.cas.cid import CID, DAG_PB, RAW
from cats.cas.store import BlockStore
from cats.errors import CatsError

CHUNK_SIZE = 262_144
MAX_LINKS = 174
# Chunks in flight between the reader and the hashing threads: bounds memory at ~4 MiB.
_WINDOW = 16


@dataclass(frozen=True, slots=True)
class Entry:
    """One imported node: its CID, the bytes of content under it, and its whole DAG's size."""

    cid: CID
    size: int
    tsize: int


@dataclass(frozen=True, slots=True)
class Added:
    """What `add_path` reports per file and folder, the way `ipfs add` prints lines."""

    path: str
    cid: CID
    size: int
    kind: str
    tsize: int


class Importer:
    """Adds files, folders and bytes to `store` as UnixFS DAGs and returns their CIDs (with no store,
    only computes them). A context manager: leaving it stops its hashing threads."""

    def __init__(self, store: BlockStore | None, cid_version: int = 1, hashfn: str = "sha2-256",
                 raw_leaves: bool | None = None, hidden: bool = False,
                 progress: Callable[[int], None] | None = None, threads: int = 2,
                 shard_threshold: int = hamt.THRESHOLD, ignore: Callable[[str], bool] | None = None) -> None:
        """`store=None` computes CIDs only (`--only-hash`). `progress` receives byte counts as they go.
        `ignore(name)` leaves out the files and folders it is true for, wherever they are in the tree.

        `shard_threshold` is kubo's `Internal.UnixFSShardingSizeThreshold`: folders whose links'
        estimated size passes it are HAMT-sharded.
        """
        if cid_version not in (0, 1):
            raise CatsError(f"--cid-version must be 0 or 1, not {cid_version}")
        self.hashfn = multihash.code_of(hashfn)
        if self.hashfn != multihash.SHA2_256 and cid_version == 0:
            cid_version = 1  # CIDv0 is sha2-256 only; kubo switches to v1 the same way
        self.store = store
        self.version = cid_version
        self.raw_leaves = cid_version == 1 if raw_leaves is None else raw_leaves
        self.hidden = hidden
        self.ignore = ignore
        self.progress = progress
        self.shard_threshold = shard_threshold
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> Importer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    # -- blocks ---------------------------------------------------------------------------
    def _cid(self, block: bytes | memoryview, codec: int) -> CID:
        return CID(self.version if codec == DAG_PB else 1, codec, multihash.digest(block, self.hashfn))

    def _put(self, block: bytes | memoryview, codec: int) -> CID:
        cid = self._cid(block, codec)
        if self.store is not None:
            self.store.put(cid, block)
        return cid

    def _node(self, links: list[dagpb.Link], data: bytes) -> Entry:
        block = dagpb.encode(links, data)
        return Entry(self._put(block, DAG_PB), 0, len(block) + sum(link.tsize or 0 for link in links))

    def _leaf(self, chunk: bytes | memoryview) -> Entry:
        if self.raw_leaves:
            return Entry(self._put(chunk, RAW), len(chunk), len(chunk))
        block = _file_leaf_block(chunk) if chunk else dagpb.encode([], unixfs.encode(unixfs.Kind.FILE, None, 0))
        return Entry(self._put(block, DAG_PB), len(chunk), len(block))

    # -- files ----------------------------------------------------------------------------
    def add_bytes(self, data: bytes) -> Entry:
        return self.add_file(io.BytesIO(data))

    def add_file(self, stream: BinaryIO) -> Entry:
        """Import one file's bytes from its current position; the entry's cid is the file's root."""
        fd, size = _regular_file(stream)
        if fd is not None and size > CHUNK_SIZE:
            # A regular file: worker threads pread their own chunks, so reading runs in parallel too.
            start = stream.tell()
            entry = self._chunks(partial(self._leaf_at, fd, start + off, min(CHUNK_SIZE, size - off))
                                 for off in range(0, size, CHUNK_SIZE))
            stream.seek(start + size)
            return entry
        first = _read_chunk(stream)
        if len(first) < CHUNK_SIZE:  # one chunk: no pool round trip, the leaf is the root
            self._report(len(first))
            return self._leaf(first)
        return self._chunks(partial(self._leaf, chunk) for chunk in _read_chunks(stream, first))

    def _chunks(self, jobs: Iterator[Callable[[], Entry]]) -> Entry:
        """Run leaf jobs on the pool in order, feeding their entries to the balanced tree."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="cats-add")
        tree = _Balanced(self)
        pending: deque[Future[Entry]] = deque()
        for job in jobs:
            pending.append(self._pool.submit(job))
            if len(pending) >= _WINDOW:
                tree.push(self._done(pending.popleft()))
        while pending:
            tree.push(self._done(pending.popleft()))
        return tree.finish()

    def _done(self, future: Future[Entry]) -> Entry:
        entry = future.result()
        self._report(entry.size)
        return entry

    def _leaf_at(self, fd: int, offset: int, length: int) -> Entry:
        chunk = os.pread(fd, length, offset)
        if len(chunk) != length:
            raise CatsError(f"file shrank while being added (short read at byte {offset})")
        return self._leaf(chunk)

    def _report(self, n: int) -> None:
        if self.progress is not None:
            self.progress(n)

    # -- folders --------------------------------------------------------------------------
    def add_path(self, path: str | os.PathLike[str], recursive: bool = True) -> Iterator[Added]:
        """Import a file or folder tree; yields each file and folder, the root last (as `ipfs add`)."""
        root = Path(path)
        name = root.name or str(root)
        if root.is_symlink():
            entry = self._symlink(root)
            yield Added(name, entry.cid, 0, "symlink", entry.tsize)
        elif root.is_dir():
            if not recursive:
                raise CatsError(f"{path} is a directory; use -r to add it")
            yield from self._add_dir(root, name)
        elif root.is_file():
            with open(root, "rb") as f:
                entry = self.add_file(f)
            yield Added(name, entry.cid, entry.size, "file", entry.tsize)
        else:
            raise CatsError(f"cannot add {path}: no such file or folder")

    def _add_dir(self, folder: Path, rel: str) -> Generator[Added, None, Entry]:
        links: list[dagpb.Link] = []
        size = 0
        try:
            # named by their bytes on disk, whatever the locale's file system encoding
            children = sorted((os.fsencode(e.name), e) for e in os.scandir(folder))
        except OSError as e:
            raise CatsError(f"cannot read folder {folder}: {e.strerror}") from None
        for raw, child in children:
            name = names.decode(raw)
            if (name.startswith(".") and not self.hidden) or (self.ignore and self.ignore(name)):
                continue
            child_rel = f"{rel}/{name}"
            if child.is_symlink():
                entry = self._symlink(Path(child.path))
                yield Added(child_rel, entry.cid, 0, "symlink", entry.tsize)
            elif child.is_dir():
                entry = yield from self._add_dir(Path(child.path), child_rel)
            else:
                with open(child.path, "rb") as f:
                    entry = self.add_file(f)
                yield Added(child_rel, entry.cid, entry.size, "file", entry.tsize)
            links.append(dagpb.Link(entry.cid, name, entry.tsize))
            size += entry.size
        node = self.directory(links, size, where=f"folder {rel}")
        yield Added(rel, node.cid, size, "dir", node.tsize)
        return node

    def directory(self, links: list[dagpb.Link], size: int = 0, where: str = "the folder being built") -> Entry:
        """A folder of already-stored entries (links named, sorted by name), sharded as kubo would. Every
        name is checked here, where all of them enter a folder: a file system gives none that is unsafe
        or twice in one folder, but names from elsewhere (slice names, a wrapped path) might.
        `where` names the folder in the error."""
        seen: set[str] = set()
        for link in links:
            names.check(link.name or "", where, seen)
        if hamt.estimated_size(links) > self.shard_threshold:
            top = hamt.build(links, self._shard_node)
            return Entry(top.cid, size, top.tsize or 0)
        node = self._node(links, unixfs.encode(unixfs.Kind.DIRECTORY))
        return Entry(node.cid, size, node.tsize)

    def add_wrapped(self, path: str | os.PathLike[str]) -> Entry:
        """Add a file or folder inside a folder of its own, keeping its name (`ipfs add -w`)."""
        *_, top = self.add_path(path)
        name = names.decode(os.fsencode(Path(path).name))
        return self.directory([dagpb.Link(top.cid, name, top.tsize)], top.size, where=f"the folder wrapping {path}")

    def _shard_node(self, links: list[dagpb.Link], data: bytes) -> dagpb.Link:
        node = self._node(links, data)
        return dagpb.Link(node.cid, None, node.tsize)

    def _symlink(self, link: Path) -> Entry:
        target = os.fsencode(os.readlink(link))
        return self._node([], unixfs.encode(unixfs.Kind.SYMLINK, target))


class _Balanced:
    """Kubo's balanced layout built bottom-up as leaves arrive: one pending link list per level."""

    def __init__(self, importer: Importer) -> None:
        self.importer = importer
        self.levels: list[list[Entry]] = [[]]

    def push(self, entry: Entry, level: int = 0) -> None:
        if level == len(self.levels):
            self.levels.append([])
        pending = self.levels[level]
        pending.append(entry)
        if len(pending) == MAX_LINKS:
            self.levels[level] = []
            self.push(self._parent(pending), level + 1)

    def _parent(self, children: list[Entry]) -> Entry:
        size = sum(c.size for c in children)
        data = unixfs.encode(unixfs.Kind.FILE, None, size, [c.size for c in children])
        node = self.importer._node([dagpb.Link(c.cid, "", c.tsize) for c in children], data)
        return Entry(node.cid, size, node.tsize)

    def finish(self) -> Entry:
        level = 0
        while True:
            pending = self.levels[level]
            top = level == len(self.levels) - 1
            if top and len(pending) == 1:
                return pending[0]
            if pending:
                self.levels[level] = []
                if top:
                    self.levels.append([])
                self.levels[level + 1].append(self._parent(pending))
            level += 1


def _file_leaf_block(chunk: bytes | memoryview) -> bytes:
    """dag-pb{Data: UnixFS{File, Data: chunk, filesize}} in one copy of the chunk, not the two that
    nesting the generic encoders costs: CIDv0 adds run at the speed of this copy."""
    n = len(chunk)
    head = b"\x08\x02\x12" + varint.encode(n)
    tail = b"\x18" + varint.encode(n)
    return b"".join((b"\x0a", varint.encode(len(head) + n + len(tail)), head, chunk, tail))


def _regular_file(stream: BinaryIO) -> tuple[int | None, int]:
    """The descriptor and remaining size of a regular file, or (None, 0) for pipes and buffers."""
    try:
        fd = stream.fileno()
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            return fd, st.st_size - stream.tell()
    except (AttributeError, OSError, io.UnsupportedOperation):
        pass
    return None, 0


def _read_chunks(stream: BinaryIO, first: memoryview) -> Iterator[memoryview]:
    chunk = first
    while chunk:
        yield chunk
        if len(chunk) < CHUNK_SIZE:
            return
        chunk = _read_chunk(stream)


def _read_chunk(stream: BinaryIO) -> memoryview:
    """Read exactly CHUNK_SIZE bytes unless the stream ends first (pipes return short reads)."""
    buf = bytearray(CHUNK_SIZE)
    view = memoryview(buf)
    got = 0
    while got < CHUNK_SIZE:
        n = stream.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return view[:got]

