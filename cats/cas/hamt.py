"""HAMT-sharded UnixFS folders, as kubo writes a folder too large for one block.

A folder is sharded when its links' estimated size (name bytes plus binary CID bytes, summed)
passes 256 KiB. Entries are placed by the murmur3-x64-64 hash of their name, 8 bits a
level (fanout 256): a bucket with one entry links it as `XX<name>`, a bucket with several links a
sub-shard as `XX`, where XX is the bucket index in upper-case hex. Each shard records which
buckets are in use as a bitfield, big-endian with leading zero bytes dropped.
"""

from __future__ import annotations

from collections.abc import Callable

import mmh3

from cats.cas import dagpb, names, unixfs

THRESHOLD = 262_144
FANOUT = 256
MURMUR3_X64_64 = 0x22


def estimated_size(links: list[dagpb.Link]) -> int:
    return sum(len(names.encode(link.name or "")) + len(bytes(link.cid)) for link in links)


def name_hash(name: str) -> bytes:
    return mmh3.hash64(names.encode(name), 0, signed=False)[0].to_bytes(8, "big")


def build(links: list[dagpb.Link], put_node: Callable[[list[dagpb.Link], bytes], dagpb.Link]) -> dagpb.Link:
    """Shard links into a HAMT; put_node stores one shard node and returns a link to it."""
    return _shard([(name_hash(link.name or ""), link) for link in links], 0, put_node)


def _shard(items: list[tuple[bytes, dagpb.Link]], depth: int,
           put_node: Callable[[list[dagpb.Link], bytes], dagpb.Link]) -> dagpb.Link:
    buckets: dict[int, list[tuple[bytes, dagpb.Link]]] = {}
    for digest, link in items:
        buckets.setdefault(digest[depth], []).append((digest, link))
    links = []
    bitfield = 0
    for index in sorted(buckets):
        bitfield |= 1 << index
        group = buckets[index]
        prefix = f"{index:02X}"
        if len(group) == 1:
            link = group[0][1]
            links.append(dagpb.Link(link.cid, prefix + (link.name or ""), link.tsize))
        else:
            child = _shard(group, depth + 1, put_node)
            links.append(dagpb.Link(child.cid, prefix, child.tsize))
    field = bitfield.to_bytes((bitfield.bit_length() + 7) // 8, "big")
    data = unixfs.encode(unixfs.Kind.HAMT_SHARD, field, hash_type=MURMUR3_X64_64, fanout=FANOUT)
    return put_node(links, data)
