"""DAG-PB: the protobuf block format that carries UnixFS.

Encoding follows the canonical form (links before data, link fields in field order), so that our
blocks are byte-identical to kubo's. Decoding is strict in the same way the spec asks decoders to be.
"""

from __future__ import annotations

from typing import NamedTuple

from cats.cas import names, varint
from cats.cas.cid import CID
from cats.errors import DecodeError, InvalidCID


class Link(NamedTuple):
    """A link; `name` holds the Name bytes as `names` decodes them, so names that are not UTF-8 round-trip."""

    cid: CID
    name: str | None = None
    tsize: int | None = None


class Node(NamedTuple):
    links: list[Link]
    data: bytes | None = None


def _encode_link(link: Link) -> bytes:
    cid = bytes(link.cid)
    out = [b"\x0a", varint.encode(len(cid)), cid]
    if link.name is not None:
        name = names.encode(link.name)
        out += [b"\x12", varint.encode(len(name)), name]
    if link.tsize is not None:
        out += [b"\x18", varint.encode(link.tsize)]
    return b"".join(out)


def encode(links: list[Link], data: bytes | memoryview | None = None) -> bytes:
    out: list[bytes | memoryview] = []
    for link in links:
        body = _encode_link(link)
        out += [b"\x12", varint.encode(len(body)), body]
    if data is not None:
        out += [b"\x0a", varint.encode(len(data)), data]
    return b"".join(out)


def _field(buf: bytes, i: int, end: int) -> tuple[int, int, int]:
    """Read a protobuf key at i; return (field number, wire type, offset after it)."""
    key, i = varint.decode(buf, i)
    if i > end:
        raise DecodeError("truncated protobuf key")
    return key >> 3, key & 7, i


def _bytes_field(buf: bytes, i: int, end: int) -> tuple[bytes, int]:
    n, i = varint.decode(buf, i)
    if i + n > end:
        raise DecodeError("protobuf length-delimited field overruns its message")
    return buf[i:i + n], i + n


def _decode_link(buf: bytes, i: int, end: int) -> Link:
    cid: CID | None = None
    name: str | None = None
    tsize: int | None = None
    last = 0
    while i < end:
        field, wire, i = _field(buf, i, end)
        if field <= last:
            raise DecodeError("PBLink fields out of order or repeated")
        last = field
        if field == 1 and wire == 2:
            raw, i = _bytes_field(buf, i, end)
            try:
                cid = CID.from_bytes(raw)
            except InvalidCID as e:
                raise DecodeError(f"PBLink Hash is not a CID: {e}") from None
        elif field == 2 and wire == 2:
            raw, i = _bytes_field(buf, i, end)
            name = names.decode(raw)
        elif field == 3 and wire == 0:
            tsize, i = varint.decode(buf, i)
        else:
            raise DecodeError(f"unexpected PBLink field {field} (wire type {wire})")
    if i != end:
        raise DecodeError("PBLink overruns its length")
    if cid is None:
        raise DecodeError("PBLink without Hash")
    return Link(cid, name, tsize)


def decode(buf: bytes) -> Node:
    links: list[Link] = []
    data: bytes | None = None
    i, end = 0, len(buf)
    try:
        while i < end:
            field, wire, i = _field(buf, i, end)
            if wire != 2:
                raise DecodeError(f"unexpected PBNode wire type {wire} for field {field}")
            raw, j = _bytes_field(buf, i, end)
            if field == 2:
                if data is not None:
                    raise DecodeError("PBNode Links after Data")
                links.append(_decode_link(buf, j - len(raw), j))
            elif field == 1:
                if data is not None:
                    raise DecodeError("PBNode has two Data fields")
                data = raw
            else:
                raise DecodeError(f"unexpected PBNode field {field}")
            i = j
    except IndexError:
        raise DecodeError("truncated dag-pb block") from None
    return Node(links, data)
