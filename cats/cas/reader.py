"""Reading UnixFS back: whole files, byte ranges, listings, paths inside folders, and `get` to disk.

A range read walks the tree by the `blocksizes` each file node records, so it fetches only the
blocks that cover the range. Every block comes through the store's verifying `get`.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cats.cas import dagpb, names, unixfs
from cats.cas.cid import CID, DAG_PB, RAW
from cats.cas.importer import check_name
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
    """(name, cid, tsize) of a folder's entries, flattening HAMT shards."""
    if fs.kind == unixfs.Kind.DIRECTORY:
        for link in node.links:
            name = link.name or ""
            check_name(name, f"folder {cid}")
            yield name, link.cid, link.tsize or 0
    elif fs.kind == unixfs.Kind.HAMT_SHARD:
        width = len(f"{(fs.fanout or _HAMT_DEFAULT_FANOUT) - 1:X}")
        for link in node.links:
            name = link.name or ""
            if len(name) == width:  # a sub-shard
                sub, sub_fs = _pb(store, link.cid)
                yield from _entries(store, link.cid, sub, sub_fs)
            else:
                check_name(name[width:], f"folder {cid}")
                yield name[width:], link.cid, link.tsize or 0
    else:
        raise CatsError(f"{cid} is a {_kind_name(fs.kind)}, not a folder")


def entries(store: BlockStore, cid: CID) -> list[tuple[str, CID, int]]:
    """A folder's (name, cid, tsize) without reading the entries themselves (ls does, for sizes)."""
    node, fs = _pb(store, cid)
    return list(_entries(store, cid, node, fs))


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
    block = store.get(cid)
    if cid.codec == RAW:
        total = len(block)
    else:
        node, fs = _pb(store, cid, block)
        if fs.kind not in (unixfs.Kind.FILE, unixfs.Kind.RAW):
            raise CatsError(f"{cid} is a {_kind_name(fs.kind)}, not a file")
        total = len(fs.data or b"") + sum(fs.blocksizes)
    end = total if length is None else min(total, offset + length)
    if offset < end:
        yield from _range(store, cid, offset, end, total, block)


def _range(store: BlockStore, cid: CID, start: int, end: int, expected: int,
           block: bytes | None = None) -> Iterator[bytes]:
    if cid.codec == RAW:
        data = store.get(cid) if block is None else block
        if len(data) != expected:
            raise DecodeError(f"raw block {cid} holds {len(data)} bytes where its parent says {expected}")
        yield data[start:end]
        return
    node, fs = _pb(store, cid, block)
    if fs.kind not in (unixfs.Kind.FILE, unixfs.Kind.RAW):
        raise DecodeError(f"{cid} is a {_kind_name(fs.kind)} inside a file")
    data = fs.data or b""
    if len(node.links) != len(fs.blocksizes):
        raise DecodeError(f"{cid} has {len(node.links)} links but {len(fs.blocksizes)} block sizes")
    if len(data) + sum(fs.blocksizes) != expected:
        raise DecodeError(f"{cid} holds {len(data) + sum(fs.blocksizes)} bytes where {expected} were expected")
    if start < len(data):
        yield data[start:min(end, len(data))]
    pos = len(data)
    for link, size in zip(node.links, fs.blocksizes, strict=True):
        if pos >= end:
            break
        if pos + size > start:
            yield from _range(store, link.cid, max(0, start - pos), min(size, end - pos), size)
        pos += size


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
        super().__init__(stat(store, cid).size, lambda offset, n: b"".join(read(store, cid, offset, n)), str(cid))


def get(store: BlockStore, cid: CID, dest: str | os.PathLike[str]) -> Path:
    """Write a file or folder tree to dest. Built beside dest and renamed in, so a failure leaves nothing."""
    dest = Path(dest)
    if dest.exists() or dest.is_symlink():
        raise CatsError(f"{dest} already exists; choose another -o destination")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        out = staging / "out"
        _write(store, cid, out, out)
        os.replace(out, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _write(store: BlockStore, cid: CID, path: Path, top: Path) -> None:
    info = stat(store, cid)
    if info.kind == "file":
        with open(path, "wb") as f:
            for chunk in read(store, cid):
                f.write(chunk)
    elif info.kind == "symlink":
        _, fs = _pb(store, cid)
        target = os.fsdecode(fs.data or b"")  # the bytes it holds, whatever the locale
        resolved = os.path.normpath(os.path.join(path.parent, target))
        if os.path.isabs(target) or not (resolved + os.sep).startswith(str(top) + os.sep):
            raise UnsafePath(f"symlink {cid} points outside the destination: {target!r}")
        os.symlink(target, path)
    else:
        node, fs = _pb(store, cid)
        path.mkdir()
        for name, child, _ in _entries(store, cid, node, fs):
            _write(store, child, path / os.fsdecode(names.encode(name)), top)
