"""DAGs of any codec: the links out of a block, and walks over them (export, pin, gc)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from cats.cas import dagpb
from cats.cas.cid import CID, DAG_CBOR, DAG_JSON, DAG_PB, RAW
from cats.cas.store import BlockStore, missing
from cats.errors import CatsError, DecodeError, InvalidCID, UnknownCodec


def links(cid: CID, block: bytes) -> list[CID]:
    if cid.codec == RAW:
        return []
    if cid.codec == DAG_PB:
        return [link.cid for link in dagpb.decode(block).links]
    if cid.codec == DAG_CBOR:
        from cats.cas import dagcbor

        return dagcbor.block_links(block)
    if cid.codec == DAG_JSON:
        from cats.cas import dagjson

        return list(dagjson.links(dagjson.decode(block)))
    raise UnknownCodec(f"cannot follow links of {cid}: codec {cid.codec_name} is not supported")


def walk(store: BlockStore, cid: CID, *, read_leaves: bool = False, seen: set[CID] | None = None,
         skip: Callable[[list[CID]], Iterable[CID]] | None = None) -> Iterator[CID]:
    """Every CID of a DAG, each once, parents before children (dag-pb, dag-cbor, dag-json, raw).

    Every block is proven present: linking blocks are read (and so verified); raw leaves, which
    link nothing, are checked with `has` so a walk over a large file does not read its data, unless
    `read_leaves` asks for them to be read and hashed too. CIDs in `seen` (as v1) are skipped, so
    several walks can share the work; so are those `skip` picks (as v1) from the root and from each
    block's links, asked once per block: DAGs the caller already knows complete.
    """
    seen = set() if seen is None else seen
    if skip is not None:
        seen.update(skip([cid.to_v1()]))
    stack = [cid]
    while stack:
        here = stack.pop()
        key = here.to_v1()
        if key in seen:
            continue
        seen.add(key)  # before reading: a bad block is met once, however many paths lead to it
        if here.codec == RAW:
            if read_leaves:
                store.get(here)
            elif not store.has(here):
                raise missing(here)
            yield here
            continue
        try:
            children = links(here, store.get(here))
        except InvalidCID as e:
            raise DecodeError(f"{here}: {e}") from None
        yield here
        if skip is not None and children:
            seen.update(skip([c.to_v1() for c in children]))
        stack.extend(reversed(children))


def complete(store: BlockStore, cid: CID, proven: set[CID] | None = None) -> bool:
    """Whether every block of the DAG is here: linking blocks are read (and so verified), raw leaves
    checked with `has`. A DAG whose blocks are not all here, or one of which does not decode, is not.

    `proven` holds (as v1) blocks whose whole subtree is known to be here, which are not looked at
    again; a DAG found complete adds its blocks to it, one found incomplete adds nothing (its blocks
    seen so far prove nothing about their subtrees), so several DAGs sharing subtrees are checked once.
    """
    proven = set() if proven is None else proven
    found: set[CID] = set()
    stack = [cid]
    while stack:
        here = stack.pop()
        key = here.to_v1()
        if key in proven or key in found:
            continue
        found.add(key)
        if here.codec == RAW:
            if not store.has(here):
                return False
            continue
        try:
            stack.extend(links(here, store.get(here)))
        except CatsError:  # absent, corrupted, or not decodable: not a DAG that is here
            return False
    proven |= found
    return True


def put_cbor(store: BlockStore, value: object) -> CID:
    """Encode value as DAG-CBOR, store the block, return its CID."""
    from cats.cas import dagcbor

    block = dagcbor.encode(value)
    cid = CID.hash(block, DAG_CBOR)
    store.put(cid, block)
    return cid
