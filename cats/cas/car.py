"""CAR v1: a DAG's blocks in one file, for moving lineage between stores and machines.

Import is all-or-nothing: every block is read and checked against its CID into a staging
file first; only a CAR that parses to the end, whose blocks all verify and whose roots are
present, is copied into the target store. The staging file is one unnamed file in the store's own
temporary area (it vanishes with the process, however that ends) holding each block once: its
disk use is at most the CAR's size.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from cats.cas import dagcbor, multihash, varint
from cats.cas.cid import CID
from cats.cas.dag import walk
from cats.cas.store import BlockStore
from cats.errors import CarError, CarTruncated, CatsError

# A section larger than this is not a block any IPFS implementation would write (kubo caps at 2 MiB).
MAX_BLOCK = 4 << 20
MAX_SECTION = MAX_BLOCK + 128  # a block and its CID
MAX_IDENTITY = 128  # bytes an identity CID may carry inline (IPFS refuses longer ones)
PIECE = 1 << 20  # bytes an import reads at a time


def header(roots: list[CID]) -> bytes:
    """A CARv1 header, its length prefix included."""
    head = dagcbor.encode({"roots": roots, "version": 1})
    return varint.encode(len(head)) + head


def section(cid: CID, block: bytes | memoryview) -> bytes:
    """One CARv1 section: length prefix, the CID's bytes, the block."""
    raw = bytes(cid)
    return b"".join((varint.encode(len(raw) + len(block)), raw, block))


def export(store: BlockStore, roots: Iterable[CID], out: BinaryIO) -> int:
    """Write the DAGs under roots; return the number of blocks written."""
    roots = list(roots)
    out.write(header(roots))
    count = 0
    seen: set[CID] = set()
    for root in roots:
        for cid in walk(store, root):
            if cid.to_v1() in seen:
                continue
            seen.add(cid.to_v1())
            out.write(section(cid, store.get(cid)))
            count += 1
    return count


def _read_exact(stream: BinaryIO, n: int, what: str, offset: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise CarTruncated(f"CAR truncated: {what} at byte {offset} needs {n} bytes, {len(data)} present")
    return data


def _header_length(n: int) -> None:
    if not n:
        raise CarError("not a CAR file: empty or zero-length header")
    if n > MAX_BLOCK:
        raise CarError(f"not a CAR file: header claims {n} bytes")


def _roots(raw: bytes | memoryview) -> list[CID]:
    """The roots a CARv1 header names, each identity root within the inline limit."""
    try:
        header = dagcbor.decode(raw)
    except CatsError as e:
        raise CarError(f"CAR header is not valid DAG-CBOR: {e}") from None
    if not isinstance(header, dict) or header.get("version") != 1:
        raise CarError(f"unsupported CAR header {header!r:.200}: only version 1 is read")
    roots = header.get("roots")
    if not isinstance(roots, list) or not all(isinstance(r, CID) for r in roots):
        raise CarError("CAR header roots must be a list of CIDs")
    for root in roots:
        _check_inline(root, "in the header")
    return roots


def _check_inline(cid: CID, where: str) -> None:
    if cid.hashfn == multihash.IDENTITY and len(cid.digest) > MAX_IDENTITY:
        raise CarError(f"CAR identity CID {where} holds {len(cid.digest)} bytes inline, more than the "
                       f"{MAX_IDENTITY} an identity CID may")


def read_header(stream: BinaryIO) -> list[CID]:
    """The roots of the CAR a stream starts with, leaving the stream at its first section."""
    try:
        n = varint.read(stream)
    except CatsError as e:
        raise CarError(f"CAR header length: {e}") from None
    _header_length(n or 0)
    return _roots(_read_exact(stream, n or 0, "header", 0))


class Sections:
    """An incremental CARv1 reader: fed a stream in pieces cut anywhere, it yields each section's
    (CID, block) as soon as the section is whole, holding at most one section besides the piece in hand.

    Blocks are read-only views of the pieces: a section within one piece is never copied, one split
    across pieces is joined once. Limits are checked before any memory is spent on a section: a header
    of at most MAX_BLOCK bytes, sections of at most MAX_SECTION, minimal varints, identity CIDs of at
    most MAX_IDENTITY bytes. `verify` hashes each block against its CID; a caller that checks blocks
    itself (in other threads, say) passes False. `root`, when given, must be among the header's roots.
    Errors are CarError naming the byte offset (CarTruncated for a stream that ends inside a section).
    Each feed's sections are to be taken in full before the next feed.
    """

    def __init__(self, *, verify: bool, root: CID | None = None) -> None:
        self.verify = verify
        self.root = root
        self.roots: list[CID] | None = None  # once the header has arrived
        self._held: list[bytes | memoryview] = []  # received, not yet parsed
        self._size = 0  # bytes held
        self._need = 0  # bytes the next section needs in all, once its length is known
        self._at = 0  # stream offset of the first byte held

    def feed(self, piece: bytes | memoryview) -> Iterator[tuple[CID, memoryview]]:
        """The sections this piece completes. Only a section split across pieces is copied (once, when its
        last piece comes); the rest of a piece is read in place."""
        view = memoryview(piece)
        while view:
            if not self._held:
                yield from self._parse(view)
                return
            if self._need and self._size + len(view) < self._need:  # the held section goes on past this piece
                self._held.append(view)
                self._size += len(view)
                return
            # the held section ends in this piece (or its length is still unknown): join just what it needs
            take = self._need - self._size if self._need else 16
            head, view = view[:take], view[take:]
            yield from self._parse(memoryview(b"".join([*self._held, head])))

    def _parse(self, data: memoryview) -> Iterator[tuple[CID, memoryview]]:
        """The whole sections at the start of data; what follows them is held for the next piece."""
        self._held, self._size, self._need = [], 0, 0
        pos = 0
        try:
            while True:
                try:
                    found = varint.decode_prefix(data, pos)
                except CatsError as e:
                    raise CarError(f"{self._where(pos)}: {e}") from None
                if found is None:
                    break
                n, start = found
                if self.roots is None:
                    _header_length(n)
                elif n > MAX_SECTION:
                    raise CarError(f"{self._where(pos)} claims {n} bytes, more than any block may hold")
                end = start + n
                if end > len(data):
                    self._need = end - pos
                    break
                if self.roots is None:
                    self._header(data[start:end])
                else:
                    yield self._section(data[start:end], self._at + pos)
                pos = end
        finally:
            self._held = [data[pos:]] if pos < len(data) else []
            self._size = len(data) - pos
            self._at += pos

    def end(self) -> None:
        """The stream has ended: refuse one that ended inside a section, or before its header."""
        if self._size:
            where = "the header" if self.roots is None else f"a section at byte {self._at}"
            whole = f"of its {self._need} bytes" if self._need else "bytes, its length cut short"
            raise CarTruncated(f"CAR truncated: the stream ended inside {where} ({self._size} {whole} present)")
        if self.roots is None:
            raise CarError("not a CAR file: empty or zero-length header")

    def _where(self, pos: int) -> str:
        return "CAR header length" if self.roots is None else f"CAR section at byte {self._at + pos}"

    def _header(self, raw: memoryview) -> None:
        roots = _roots(raw)
        if self.root is not None and self.root.to_v1() not in {r.to_v1() for r in roots}:
            raise CarError(f"CAR roots {[str(r) for r in roots]} do not include {self.root}")
        self.roots = roots

    def _section(self, raw: memoryview, offset: int) -> tuple[CID, memoryview]:
        try:
            cid, start = CID.read(raw, 0)
        except CatsError as e:
            raise CarError(f"CAR section at byte {offset} has a malformed CID: {e}") from None
        _check_inline(cid, f"at byte {offset}")
        block = raw[start:]
        if self.verify:
            try:
                matches = cid.verify(block)
            except CatsError as e:  # a hash function this reader does not know
                raise CarError(f"CAR block {cid} at byte {offset}: {e}") from None
            if not matches:
                raise CarError(f"CAR block {cid} at byte {offset} does not match its CID")
        return cid, block


def index(stream: BinaryIO) -> dict[CID, tuple[int, int]]:
    """Where each block of a seekable CAR file lies, (offset, length) by CIDv1 (the first of a CID kept),
    found without reading the blocks, under the limits `Sections` applies; what the blocks hold is for
    the reader to check."""
    read_header(stream)
    offset = stream.tell()
    size = stream.seek(0, os.SEEK_END)
    stream.seek(offset)
    found: dict[CID, tuple[int, int]] = {}
    while offset < size:
        try:
            n = varint.read(stream)
        except CatsError as e:
            raise CarError(f"CAR section at byte {offset}: {e}") from None
        assert n is not None  # bytes remain
        start = stream.tell()
        if n > MAX_SECTION:
            raise CarError(f"CAR section at byte {offset} claims {n} bytes, more than any block may hold")
        if start + n > size:
            raise CarTruncated(f"CAR truncated: the file ended inside a section at byte {offset}")
        try:
            cid, used = CID.read(stream.read(min(n, MAX_SECTION - MAX_BLOCK)), 0)
        except CatsError as e:
            raise CarError(f"CAR section at byte {offset} has a malformed CID: {e}") from None
        found.setdefault(cid.to_v1(), (start + used, n - used))
        offset = stream.seek(start + n)
    return found


def import_car(store: BlockStore, stream: BinaryIO) -> tuple[list[CID], int]:
    """Verify and stage every block, then copy them in (under a writer's lease, so a gc beside it
    spares them). Returns the roots and the block count."""
    reader = Sections(verify=True)
    with tempfile.TemporaryFile(prefix="car.", dir=store.temp_dir()) as staging:
        staged: dict[CID, tuple[CID, int, int]] = {}  # CIDv1 -> (CID as the CAR names it, offset, size)
        end = 0
        count = 0
        try:
            while piece := stream.read(PIECE):
                for cid, block in reader.feed(piece):
                    count += 1
                    if cid.hashfn != multihash.IDENTITY and cid.to_v1() not in staged:
                        staging.write(block)
                        staged[cid.to_v1()] = (cid, end, len(block))
                        end += len(block)
            reader.end()
        except CarError as e:
            raise type(e)(f"{e}; nothing imported") from None
        roots = reader.roots or []
        absent = [r for r in roots if r.hashfn != multihash.IDENTITY and r.to_v1() not in staged
                  and not store.has(r)]
        if absent:
            raise CarError(f"CAR root {absent[0]} is not in the file; nothing imported")
        staging.flush()
        with store.lease():
            for cid, at, size in staged.values():
                store.put(cid, os.pread(staging.fileno(), size, at))
        return roots, count
