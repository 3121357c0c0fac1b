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
from collections.abc import Iterable
from typing import BinaryIO

from cats.cas import dagcbor, multihash, varint
from cats.cas.cid import CID
from cats.cas.dag import walk
from cats.cas.store import BlockStore
from cats.errors import CarError, CatsError

# A section larger than this is not a block any IPFS implementation would write (kubo caps at 2 MiB).
MAX_BLOCK = 4 << 20
MAX_IDENTITY = 128  # bytes an identity CID may carry inline (IPFS refuses longer ones)


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
        raise CarError(f"CAR truncated: {what} at byte {offset} needs {n} bytes, {len(data)} present")
    return data


def read_header(stream: BinaryIO) -> list[CID]:
    try:
        n = varint.read(stream)
    except CatsError as e:
        raise CarError(f"CAR header length: {e}") from None
    if not n:
        raise CarError("not a CAR file: empty or zero-length header")
    if n > MAX_BLOCK:
        raise CarError(f"not a CAR file: header claims {n} bytes")
    try:
        header = dagcbor.decode(_read_exact(stream, n, "header", 0))
    except CarError:
        raise
    except CatsError as e:
        raise CarError(f"CAR header is not valid DAG-CBOR: {e}") from None
    if not isinstance(header, dict) or header.get("version") != 1:
        raise CarError(f"unsupported CAR header {header!r}: only version 1 is read")
    roots = header.get("roots")
    if not isinstance(roots, list) or not all(isinstance(r, CID) for r in roots):
        raise CarError("CAR header roots must be a list of CIDs")
    return roots


def _inline(cid: CID, where: str) -> bool:
    """Whether cid is an identity CID, whose block is in the CID and so is never stored."""
    if cid.hashfn != multihash.IDENTITY:
        return False
    if len(cid.digest) > MAX_IDENTITY:
        raise CarError(f"CAR identity CID {where} holds {len(cid.digest)} bytes inline, more than the "
                       f"{MAX_IDENTITY} an identity CID may; nothing imported")
    return True


def import_car(store: BlockStore, stream: BinaryIO) -> tuple[list[CID], int]:
    """Verify and stage every block, then copy them in (under a writer's lease, so a gc beside it
    spares them). Returns the roots and the block count."""
    roots = read_header(stream)
    with tempfile.TemporaryFile(prefix="car.", dir=store.temp_dir()) as staging:
        staged: dict[CID, tuple[CID, int, int]] = {}  # CIDv1 -> (CID as the CAR names it, offset, size)
        end = 0
        count = 0
        while True:
            offset = stream.tell() if stream.seekable() else -1
            try:
                n = varint.read(stream)
            except CatsError as e:
                raise CarError(f"CAR section at byte {offset}: {e}") from None
            if n is None:
                break
            if n > MAX_BLOCK + 128:
                raise CarError(f"CAR section at byte {offset} claims {n} bytes, more than any block may hold")
            section = _read_exact(stream, n, "section", offset)
            try:
                cid, start = CID.read(section, 0)
            except CatsError as e:
                raise CarError(f"CAR section at byte {offset} has a malformed CID: {e}") from None
            block = memoryview(section)[start:]
            try:
                matches = cid.verify(block)
            except CatsError as e:  # a hash function this reader does not know
                raise CarError(f"CAR block {cid} at byte {offset}: {e}; nothing imported") from None
            if not matches:
                raise CarError(f"CAR block {cid} at byte {offset} does not match its CID; nothing imported")
            count += 1
            if not _inline(cid, f"at byte {offset}") and cid.to_v1() not in staged:
                staging.write(block)
                staged[cid.to_v1()] = (cid, end, len(block))
                end += len(block)
        absent = [r for r in roots if not _inline(r, "in the header") and r.to_v1() not in staged
                  and not store.has(r)]
        if absent:
            raise CarError(f"CAR root {absent[0]} is not in the file; nothing imported")
        staging.flush()
        with store.lease():
            for cid, at, size in staged.values():
                store.put(cid, os.pread(staging.fileno(), size, at))
        return roots, count
