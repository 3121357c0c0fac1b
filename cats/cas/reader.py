"""Reading UnixFS back: whole files, byte ranges, listings, paths inside folders, and `get` to disk.

A range read walks the tree by the `blocksizes` each file node records, so it fetches only the
blocks that cover the range. Every block comes through the store's verifying `get`.
"""

from __future__ import annotations

import bisect
import io
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cats.cas import dagpb, names, unixfs
from cats.cas.cid import CID, DAG_PB, RAW
from cats.cas.store import BlockStore
from cats.errors import CatsError, DecodeError, PathNotFound, UnknownCodec, UnsafePath

# A HAMT-sharded folder prefixes each entry with the hex of its hash bucket; fanout 256 -> 2 chars.
_HAMT_DEFAULT_FANOUT = 256


@dataclass(frozen=True, slots=True)
class Item:
    """A folder entry or a stat result: name, CID, kind ('file', 'dir', 'symlink', 'raw') and size."""

    name: str
    cid: CID
    kind: str
    size: int


def split_path(text: str) -> tuple[CID, str]:
    """Parse `CID[/path]`, `/ipfs/CID[/path]` or `ipfs://CID[/path]` into the CID and the inner path.
    Nothing is stripped but slashes: spaces may belong to a name, and a CID has none."""
    for prefix in ("ipfs://", "/ipfs/"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    head, _, rest = text.partition("/")
    return CID.parse(head), rest.strip("/")


def _pb(store: BlockStore, cid: CID, block: bytes | None = None) -> tuple[dagpb.Node, unixfs.Data]:
    """Decode a UnixFS node, fetching its block unless the caller already has it."""
    if cid.codec != DAG_PB:
        raise UnknownCodec(f"{cid} is {cid.codec_name}, not a UnixFS (dag-pb) node")
    node = dagpb.decode(store.get(cid) if block is None else block)
    if node.data is None:
        raise DecodeError(f"{cid} is dag-pb without UnixFS data")
    try:
        return node, unixfs.decode(node.data)
    except DecodeError as e:
        raise DecodeError(f"{cid}: {e}") from None


def _kind_name(kind: unixfs.Kind) -> str:
    return {unixfs.Kind.DIRECTORY: "dir", unixfs.Kind.HAMT_SHARD: "dir",
            unixfs.Kind.SYMLINK: "symlink"}.get(kind, "file")


def stat(store: BlockStore, cid: CID) -> Item:
    if cid.codec == RAW:
        return Item(str(cid), cid, "file", len(store.get(cid)))
    node, fs = _pb(store, cid)
    if fs.kind in (unixfs.Kind.FILE, unixfs.Kind.RAW):
        size = fs.filesize if fs.filesize is not None else len(fs.data or b"")
    elif fs.kind == unixfs.Kind.SYMLINK:
        size = len(fs.data or b"")
    else:
        size = sum(link.tsize or 0 for link in node.links)
    return Item(str(cid), cid, _kind_name(fs.kind), size)


def _entries(store: BlockStore, cid: CID, node: dagpb.Node, fs: unixfs.Data) -> Iterator[tuple[str, CID, int]]:
    """(name, cid, tsize) of a folder's entries, flattening HAMT shards. Each name is checked as it is
    decoded (`names.check`), across all the shards of one folder, so no caller meets an unsafe or a
    duplicate name."""
    seen: set[str] = set()
    if fs.kind == unixfs.Kind.DIRECTORY:
        for link in node.links:
            name = link.name or ""
            names.check(name, f"folder {cid}", seen)
            yield name, link.cid, link.tsize or 0
    elif fs.kind == unixfs.Kind.HAMT_SHARD:
        yield from _shard_entries(store, cid, node, fs, f"folder {cid}", seen)
    else:
        raise CatsError(f"{cid} is a {_kind_name(fs.kind)}, not a folder")


def _shard_entries(store: BlockStore, cid: CID, node: dagpb.Node, fs: unixfs.Data, where: str,
                   seen: set[str]) -> Iterator[tuple[str, CID, int]]:
    width = len(f"{(fs.fanout or _HAMT_DEFAULT_FANOUT) - 1:X}")
    for link in node.links:
        name = link.name or ""
        if len(name) == width:  # a sub-shard
            sub, sub_fs = _pb(store, link.cid)
            if sub_fs.kind != unixfs.Kind.HAMT_SHARD:
                raise DecodeError(f"{link.cid} is a {_kind_name(sub_fs.kind)} where {cid} links a sub-shard")
            yield from _shard_entries(store, link.cid, sub, sub_fs, where, seen)
        else:
            names.check(name[width:], where, seen)
            yield name[width:], link.cid, link.tsize or 0


def entries(store: BlockStore, cid: CID) -> list[tuple[str, CID, int]]:
    """A folder's (name, cid, tsize) without reading the entries themselves (ls does, for sizes)."""
    return list(iter_entries(store, cid))


def iter_entries(store: BlockStore, cid: CID) -> Iterator[tuple[str, CID, int]]:
    """`entries` one at a time: a sharded folder's shards are read only as far as the caller goes."""
    node, fs = _pb(store, cid)
    yield from _entries(store, cid, node, fs)


def is_folder(store: BlockStore, cid: CID) -> bool:
    if cid.codec != DAG_PB:
        return False
    return _pb(store, cid)[1].kind in (unixfs.Kind.DIRECTORY, unixfs.Kind.HAMT_SHARD)


def ls(store: BlockStore, cid: CID) -> list[Item]:
    node, fs = _pb(store, cid)
    items = []
    for name, child, _ in _entries(store, cid, node, fs):
        info = stat(store, child)
        items.append(Item(name, child, info.kind, info.size))
    return items


def resolve(store: BlockStore, cid: CID, path: str) -> CID:
    """The CID that `path` names inside the folder `cid`."""
    here = cid
    walked = str(cid)
    for part in PurePosixPath(path).parts if path else ():
        if part in ("/", "."):
            continue
        if here.codec == RAW:
            raise PathNotFound(f"{walked} is not a folder, so it has no '{names.display(part)}'")
        node, fs = _pb(store, here)
        if fs.kind not in (unixfs.Kind.DIRECTORY, unixfs.Kind.HAMT_SHARD):
            raise PathNotFound(f"{walked} is not a folder, so it has no '{names.display(part)}'")
        for name, child, _ in _entries(store, here, node, fs):
            if name == part:
                here = child
                break
        else:
            raise PathNotFound(f"no entry '{names.display(part)}' in {walked}")
        walked += "/" + names.display(part)
    return here


def read(store: BlockStore, cid: CID, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
    """A file's bytes from offset, length bytes at most, fetching only the covering blocks (each once)."""
    if offset < 0 or (length is not None and length < 0):
        raise CatsError("offset and length must not be negative")
    yield from FileTree(store, cid).read(offset, length)


class FileTree:
    """A UnixFS file's tree, walked by the `blocksizes` each node records: the one walk of a file that
    every range read takes, fetching only the blocks that cover what is asked. Inner nodes are decoded
    once per FileTree, so many reads of one file (a sample of entries, a reader's many ranges) cost one
    walk of its upper levels; leaves are fetched each time (through the store's verifying `get`).
    """

    def __init__(self, store: BlockStore, cid: CID) -> None:
        self.store, self.cid = store, cid
        self._inner: dict[CID, tuple[bytes, list[CID], list[int]]] = {}  # nodes with links, decoded
        self._raw: bytes | None = None
        block = store.get(cid)
        if cid.codec == RAW:
            self._raw = block
            self.size = len(block)
            return
        node, fs = _pb(store, cid, block)
        if fs.kind not in (unixfs.Kind.FILE, unixfs.Kind.RAW):
            raise CatsError(f"{cid} is a {_kind_name(fs.kind)}, not a file")
        data, _, sizes = self._node(cid, block)
        self.size = len(data) + sum(sizes)

    def read(self, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """The bytes from offset, length bytes at most."""
        end = self.size if length is None else min(self.size, offset + length)
        if offset >= end:
            return
        for at, data in self.pieces([(offset, end)]):
            yield data[max(0, offset - at):end - at]

    def pieces(self, spans: Sequence[tuple[int, int]]) -> Iterator[tuple[int, bytes]]:
        """(file offset, data) of each leaf, or node's inline data, that overlaps one of the spans
        [start, end), in file order: spans sorted, not overlapping, each within the file."""
        spans = [(lo, hi) for lo, hi in spans if lo < hi]
        starts, ends = [lo for lo, _ in spans], [hi for _, hi in spans]
        if spans:
            yield from self._walk(self.cid, 0, self.size, starts, ends)

    def leaves(self, start: int, end: int) -> list[tuple[int, CID]]:
        """(file offset, CID) of each leaf that overlaps [start, end), in file order, found through the
        inner nodes only (no leaf is fetched): the identity of a range's bytes, which stays the same
        when bytes are appended to the file (chunks are cut from its start)."""
        found: list[tuple[int, CID]] = []

        def walk(cid: CID, at: int) -> None:
            if cid.codec == RAW or cid not in self._inner and not self._has_links(cid):
                found.append((at, cid))
                return
            data, children, sizes = self._node(cid)
            if data:  # a node holding bytes of its own as well as children: it stands for them
                found.append((at, cid))
            pos = at + len(data)
            for child, size in zip(children, sizes, strict=True):
                if pos >= end:
                    break
                if pos + size > start:
                    walk(child, pos)
                pos += size

        if start < end:
            walk(self.cid, 0)
        return found

    def _has_links(self, cid: CID) -> bool:
        return bool(self._node(cid)[1])

    def _walk(self, cid: CID, at: int, expected: int, starts: list[int],
              ends: list[int]) -> Iterator[tuple[int, bytes]]:
        if cid.codec == RAW:
            data = self._raw if self._raw is not None else self.store.get(cid)  # the root's, or a leaf
            if len(data) != expected:
                raise DecodeError(f"raw block {cid} holds {len(data)} bytes where its parent says {expected}")
            yield at, data
            return
        data, children, sizes = self._node(cid)
        if len(data) + sum(sizes) != expected:
            raise DecodeError(f"{cid} holds {len(data) + sum(sizes)} bytes where {expected} were expected")
        if data and _overlaps(starts, ends, at, at + len(data)):
            yield at, data
        pos = at + len(data)
        for child, size in zip(children, sizes, strict=True):
            if pos >= ends[-1]:
                break
            if _overlaps(starts, ends, pos, pos + size):
                yield from self._walk(child, pos, size, starts, ends)
            pos += size

    def _node(self, cid: CID, block: bytes | None = None) -> tuple[bytes, list[CID], list[int]]:
        """(inline data, children, their sizes) of a file node."""
        known = self._inner.get(cid)
        if known is not None:
            return known
        node, fs = _pb(self.store, cid, block)
        if fs.kind not in (unixfs.Kind.FILE, unixfs.Kind.RAW):
            raise DecodeError(f"{cid} is a {_kind_name(fs.kind)} inside a file")
        if len(node.links) != len(fs.blocksizes):
            raise DecodeError(f"{cid} has {len(node.links)} links but {len(fs.blocksizes)} block sizes")
        entry = (fs.data or b"", [link.cid for link in node.links], fs.blocksizes)
        if node.links:
            self._inner[cid] = entry
        return entry


def _overlaps(starts: list[int], ends: list[int], lo: int, hi: int) -> bool:
    """Whether [lo, hi) overlaps one of the sorted, disjoint spans."""
    return bisect.bisect_right(ends, lo) < bisect.bisect_left(starts, hi)


class RangeFile(io.RawIOBase):
    """A seekable, read-only file whose every read is one range read, through `fetch(offset, length)`.

    What pyarrow and other libraries that read by ranges (Parquet footers, row groups) need; the
    store's files (`FileReader`) and the URI resolvers (`cats.data`) both hand these out.
    """

    def __init__(self, size: int, fetch: Callable[[int, int], bytes], name: str) -> None:
        super().__init__()
        self.size, self._fetch, self.name = size, fetch, name
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset} in {self.name}")
        self._pos = base + offset
        return self._pos

    def read(self, n: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError(f"I/O operation on closed file {self.name}")
        left = max(0, self.size - self._pos)
        n = left if n is None or n < 0 else min(n, left)
        if n == 0:
            return b""
        data = self._fetch(self._pos, n)
        self._pos += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read(-1)


class FileReader(RangeFile):
    """A UnixFS file CID as a RangeFile: each read fetches only its covering blocks."""

    def __init__(self, store: BlockStore, cid: CID) -> None:
        tree = FileTree(store, cid)
        super().__init__(tree.size, lambda offset, n: b"".join(tree.read(offset, n)), str(cid))


# -- get: a tree to disk -----------------------------------------------------------------------
# Nothing is written through a link: every folder is entered by a descriptor opened with O_NOFOLLOW,
# every file created with O_EXCL|O_NOFOLLOW, and the tree's symlinks are made last, once each has been
# resolved, through the tree's other symlinks as they will be on disk, to a place inside it.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_HOPS = 40  # symlinks followed in one resolution, as Linux's MAXSYMLINKS: past it, a loop


@dataclass(slots=True)
class _Node:
    """One entry of a tree about to be written: a folder's children, a file's CID, or a symlink's target."""

    cid: CID
    kind: str  # "dir", "file" or "symlink"
    target: str = ""
    children: dict[str, _Node] = field(default_factory=dict)


def get(store: BlockStore, cid: CID, dest: str | os.PathLike[str], *, allow_outside_links: bool = False) -> Path:
    """Write a file or folder tree to dest, which must not exist yet. Refused, with nothing written, when a
    symlink of the tree would resolve outside it (absolute, or climbing out, maybe through other links of
    the tree) unless `allow_outside_links`, which writes such links as they are, with a warning each.
    Built in a folder beside dest and renamed in whole, so a failure (or an interrupt) leaves nothing."""
    dest = Path(dest)
    if dest.exists() or dest.is_symlink():
        raise CatsError(f"{dest} already exists; choose another -o destination")
    tree = _plan(store, cid)
    outside = _check_links(tree, cid, allow_outside_links)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        at = os.open(staging, _DIR_FLAGS)
        try:
            _lay_out(store, tree, at)
        finally:
            os.close(at)
        os.replace(staging / "out", dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for message in outside:
        warnings.warn(message, stacklevel=2)
    return dest


def check_tree(store: BlockStore, cid: CID) -> None:
    """Refuse (UnsafePath) a tree `get` would refuse, writing nothing: sealing an Order's code checks it so,
    since every worker lays that code out with `get`."""
    _check_links(_plan(store, cid), cid, allow_outside=False)


def _plan(store: BlockStore, cid: CID) -> _Node:
    """The whole tree's shape from its folder and entry blocks, file contents left unread; every name is
    checked as its folder is decoded."""
    root = _node(store, cid)
    folders = [root] if root.kind == "dir" else []
    while folders:
        folder = folders.pop()
        node, fs = _pb(store, folder.cid)
        for name, child, _ in _entries(store, folder.cid, node, fs):
            folder.children[name] = entry = _node(store, child)
            if entry.kind == "dir":
                folders.append(entry)
    return root


def _node(store: BlockStore, cid: CID) -> _Node:
    if cid.codec == RAW:
        return _Node(cid, "file")
    _, fs = _pb(store, cid)
    kind = _kind_name(fs.kind)
    return _Node(cid, kind, names.decode(fs.data or b"") if kind == "symlink" else "")


def _check_links(root: _Node, cid: CID, allow_outside: bool) -> list[str]:
    """Refuse the tree if a symlink resolves outside it, unless allowed: then say which, one line each."""
    outside = []
    for where, name, link in _links(root):
        shown = f"symlink '{'/'.join(names.display(p) for p in [*where, name])}' in {cid}" if name \
            else f"symlink {cid}"
        target = names.display(link.target)
        if link.target == "" or "\0" in link.target:
            raise UnsafePath(f"{shown} has an unusable target '{target}'")
        if root.kind == "dir" and _lands(root, where, link.target) is not None:
            continue
        message = f"{shown} points outside the destination: '{target}'"
        if not allow_outside:
            raise UnsafePath(message)
        outside.append(message)
    return outside


def _links(root: _Node) -> Iterator[tuple[list[str], str, _Node]]:
    """Every symlink of the tree: its folder's path from the root, its name, its node. A tree that is
    one symlink yields it with no name; its folder is the one dest goes in."""
    if root.kind == "symlink":
        yield [], "", root
    stack: list[tuple[list[str], _Node]] = [([], root)]
    while stack:
        where, folder = stack.pop()
        for name, child in folder.children.items():
            if child.kind == "symlink":
                yield where, name, child
            elif child.kind == "dir":
                stack.append(([*where, name], child))


def _lands(root: _Node, where: list[str], target: str) -> list[str] | None:
    """Where a symlink in the folder `where` leads: its path from the root, resolved as the kernel will,
    through the tree's own symlinks; None when that is outside (absolute, `..` above the root, or a loop).
    Past a name the tree lacks, or through a file, the rest is taken by its text alone, as realpath does:
    a link is never trusted on the strength of something that is not there."""
    if target.startswith("/"):
        return None
    here = list(where)
    pending = list(reversed(target.split("/")))
    hops = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not here:
                return None
            here.pop()
            continue
        entry = _find(root, [*here, part])
        if entry is not None and entry.kind == "symlink":
            hops += 1
            if hops > _MAX_HOPS or entry.target.startswith("/"):
                return None
            pending.extend(reversed(entry.target.split("/")))
            continue
        here.append(part)
    return here


def _find(root: _Node, path: list[str]) -> _Node | None:
    node: _Node | None = root
    for part in path:
        node = node.children.get(part) if node is not None and node.kind == "dir" else None
    return node


def _lay_out(store: BlockStore, root: _Node, at: int) -> None:
    """Write the tree as `out` in the folder open as `at`: folders and files first, symlinks last."""
    _make(store, root, "out", at, str(root.cid))
    if root.kind != "dir":
        return
    top = _open_dir(at, "out")
    stack: list[tuple[int, Iterator[tuple[str, _Node]], str]] = [(top, iter(root.children.items()), "")]
    try:
        while stack:
            fd, items, where = stack[-1]
            for name, child in items:
                shown = f"{where}{names.display(name)}"
                if child.kind == "symlink":
                    continue
                _make(store, child, name, fd, shown)
                if child.kind == "dir":
                    stack.append((_open_dir(fd, name, shown), iter(child.children.items()), shown + "/"))
                    break
            else:
                os.close(stack.pop()[0])
    finally:
        for fd, _, _ in stack:
            os.close(fd)
    for folders, name, link in _links(root):
        fd = at
        try:
            for part in ["out", *folders]:
                fd, parent = _open_dir(fd, part), fd
                if parent != at:
                    os.close(parent)
            _make(store, link, name, fd, "/".join(names.display(p) for p in [*folders, name]))
        finally:
            if fd != at:
                os.close(fd)


def _open_dir(at: int, name: str, shown: str = "") -> int:
    try:
        return os.open(names.encode(name), _DIR_FLAGS, dir_fd=at)
    except OSError as e:
        raise CatsError(f"cannot open folder '{shown or name}' being written: {e.strerror}") from None


def _make(store: BlockStore, node: _Node, name: str, at: int, shown: str) -> None:
    """Create one entry in the folder open as `at`, never following a link that stands in its place."""
    raw = names.encode(name)
    try:
        if node.kind == "dir":
            os.mkdir(raw, 0o777, dir_fd=at)
        elif node.kind == "symlink":
            os.symlink(names.encode(node.target), raw, dir_fd=at)
        else:
            with open(os.open(raw, _FILE_FLAGS, 0o666, dir_fd=at), "wb") as f:
                for chunk in read(store, node.cid):
                    f.write(chunk)
    except OSError as e:
        raise CatsError(f"cannot write '{shown}' ({node.cid}): {e.strerror}") from None
