"""The node as an IPFS trustless gateway: what a request asks for, which blocks answer it, and the CAR bytes.

A request names a format (`?format=`, else the `Accept` header, negotiated by its q-values) and, for
a CAR, a scope: `dag-scope=all` (the whole DAG, the default), `block` (the root alone) or `entity`
(for a UnixFS file, every block of the file; for a directory or a HAMT, the blocks that list it; for
anything else, the root alone), and `entity-bytes=from:to` (a file's blocks that hold that inclusive
byte range: negative offsets count from the end, `*` is the end). Blocks go depth first, parents
before children, each once unless the client asked for `dups=y`; identity CIDs are never sent as
blocks (their bytes are in the CID). A CAR may name a path under its CID (`/ipfs/{cid}/a/b`): through
UnixFS folders (HAMT shards by their hashed buckets) and DAG-CBOR maps, lists and links; the blocks
that prove each step come first, then the scope of what the path ends at. A raw block takes no path:
the block alone could not prove it.

What an IPFS path gateway does beyond this is not served, as a node hands out only blocks a reader
checks against their CIDs: no deserialized answers (a file's bytes, directory listings, TAR, DAG-JSON
or DAG-CBOR conversions, `_redirects`: web hosting), no IPNS records or names and no DNSLink (a node
names content by CID only; a mutable name would need keys and DNS it does not hold), and no subdomain
gateway (a browser origin per CID guards web pages, which a node does not serve).

Which blocks answer is decided here, from the blocks that link (read through the store, so checked
against their CIDs); the leaves' bytes are not looked at: `CarWriter` lays each section's header
and then reads the leaf from the store straight into one large buffer, which goes to the socket as
it is. So a large file is served in few, large writes, the block files read once into memory and
nothing copied in between.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

from cats.cas import car, dagcbor, dagpb, hamt, multihash, names, unixfs, varint
from cats.cas.cid import CID, CODEC_NAMES, DAG_CBOR, DAG_PB, RAW
from cats.cas.dag import links
from cats.cas.store import BlockStore
from cats.errors import BlockNotFound, CatsError, DecodeError

RAW_TYPE = "application/vnd.ipld.raw"
CAR_TYPE = "application/vnd.ipld.car"
SCOPES = ("all", "entity", "block")
MAX_ACCEPT = 64  # media ranges of an Accept header looked at; the rest is ignored
CHUNK = 1 << 20  # bytes of CAR per write: a socket mostly takes that whole, so the event loop seldom buffers a copy
_OFFSET = re.compile(r"-?\d{1,19}")


class Refused(CatsError):
    """A request the gateway does not answer: `status` says how (400 malformed, 404 no such path here,
    406 not acceptable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Want:
    """What the client takes: a raw block, or a CARv1 in depth-first order, with or without duplicates."""

    kind: str  # "raw" or "car"
    dups: bool = False

    @property
    def media_type(self) -> str:
        if self.kind == "raw":
            return RAW_TYPE
        return f"{CAR_TYPE}; version=1; order=dfs; dups={'y' if self.dups else 'n'}"


def negotiate(format: str | None, accept: str, query: dict[str, str]) -> Want:
    """The answer's format: `format` when given (as the spec says, it wins over Accept), else the most
    preferred media range of Accept this gateway serves. CAR parameters come from the Accept entry, or
    from `car-version`, `car-order` and `car-dups` in the query, which win. Refused(406) otherwise."""
    offers = _accepted(accept)
    if format is not None:
        if format not in ("raw", "car"):
            raise Refused(406, f"format={format[:40]!r} is not served: ask for format=raw (the block) or "
                               "format=car (its DAG as a CAR)")
        params = next((p for media, p in offers if media == CAR_TYPE and _car_params(p)), {})
        return Want("raw") if format == "raw" else _car(params, query)
    for media, params in offers:
        if media == RAW_TYPE:
            return Want("raw")
        if media == CAR_TYPE and _car_params(params):
            return _car(params, query)
    raise Refused(406, "ask for a format: ?format=raw or Accept: application/vnd.ipld.raw for the block, "
                       "?format=car or Accept: application/vnd.ipld.car (version=1, order=dfs or unk, dups=y or "
                       "n) for its DAG as a CAR")


def _accepted(accept: str) -> list[tuple[str, dict[str, str]]]:
    """Accept's media ranges with their parameters, most preferred first (q=0 left out)."""
    ranked = []
    for i, part in enumerate(accept.split(",")[:MAX_ACCEPT]):
        media, *rest = part.split(";")
        params = {}
        for p in rest[:8]:
            key, _, value = p.partition("=")
            params[key.strip().lower()] = value.strip().strip('"').lower()
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 0.0
        if q > 0:
            ranked.append((-q, i, media.strip().lower(), params))
    return [(media, params) for _, _, media, params in sorted(ranked)]


def _car_params(params: dict[str, str]) -> bool:
    """Whether a CAR media range asks for what this gateway writes."""
    return (params.get("version", "1") == "1" and params.get("order", "dfs") in ("dfs", "unk")
            and params.get("dups", "n") in ("y", "n"))


def _car(params: dict[str, str], query: dict[str, str]) -> Want:
    version = query.get("car-version", params.get("version", "1"))
    order = query.get("car-order", params.get("order", "dfs"))
    dups = query.get("car-dups", params.get("dups", "n"))
    if version != "1" or order not in ("dfs", "unk") or dups not in ("y", "n"):
        raise Refused(406, f"a CAR of version={version[:8]!r}, order={order[:8]!r}, dups={dups[:8]!r} is not "
                           "served: this gateway writes CARv1, order=dfs, dups=n or y")
    return Want("car", dups=dups == "y")


@dataclass(frozen=True)
class Scope:
    """Which blocks of the DAG a CAR carries: `name` one of SCOPES, `span` an entity-bytes range as asked
    ((from, to), to None for `*`), None for the whole entity."""

    name: str = "all"
    span: tuple[int, int | None] | None = None

    @property
    def etag(self) -> str:
        """What tells this answer from the others of the same CID in its ETag."""
        if self.span is None:
            return self.name
        lo, hi = self.span
        return f"{self.name}.{lo}:{'*' if hi is None else hi}"


def parse_scope(dag_scope: str | None, entity_bytes: str | None) -> Scope:
    """dag-scope and entity-bytes from the query; Refused(400) if malformed."""
    name = dag_scope if dag_scope is not None else ("entity" if entity_bytes is not None else "all")
    if name not in SCOPES:
        raise Refused(400, f"dag-scope={name[:40]!r} is none of {', '.join(SCOPES)}")
    if entity_bytes is None:
        return Scope(name)
    if name != "entity":
        raise Refused(400, f"entity-bytes asks for part of an entity: it goes with dag-scope=entity, not {name}")
    lo, sep, hi = entity_bytes.partition(":")
    if not sep or not _OFFSET.fullmatch(lo) or not (hi == "*" or _OFFSET.fullmatch(hi)):
        raise Refused(400, f"entity-bytes={entity_bytes[:60]!r} is not from:to (byte offsets, negative from the "
                           "end, to may be *)")
    start, end = int(lo), None if hi == "*" else int(hi)
    if end is not None and 0 <= end < start:
        raise Refused(400, f"entity-bytes={entity_bytes}: the range ends before it starts")
    return Scope(name, (start, end))


@dataclass(frozen=True)
class Section:
    """One block of the answer: its bytes when they were read to walk the DAG, else None (a leaf, read
    from the store as it is written)."""

    cid: CID
    block: bytes | None


def disposition(name: str) -> str:
    """A Content-Disposition naming the download `name`: quoted as it is when it is plain ASCII, else
    as RFC 6266's UTF-8 form beside an ASCII stand-in."""
    if name.isascii() and name.isprintable() and '"' not in name and "\\" not in name:
        return f'attachment; filename="{name}"'
    plain = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"


@dataclass(frozen=True)
class Resolved:
    """Where a path under a CID ends: `proof`, the blocks that prove each step (the root first, HAMT
    shards on the way included), `roots` the CID each segment reached (the block it lies in, for a
    segment inside a DAG-CBOR block), and the block the path names."""

    cid: CID
    block: bytes
    proof: tuple[Section, ...] = ()
    roots: tuple[CID, ...] = ()


def resolve(store: BlockStore, root: CID, block: bytes, path: str) -> Resolved:
    """Follow `path` (segments split on '/', empty ones skipped) from root, whose block is read.

    Refused(404) when a segment names nothing, when a block on the way is not here, or when the path
    ends inside a DAG-CBOR block rather than at a link; DecodeError when a block on the way is not
    what it claims to be.
    """
    here, data = root, block
    proof: list[Section] = []
    roots = [root]
    value: object = None  # where the walk stands inside a DAG-CBOR block, None at a block's start
    walked = str(root)
    for segment in (s for s in path.split("/") if s):
        if value is None and here.codec == DAG_PB:
            shards, child = _pb_child(store, here, data, segment, walked)
            proof += [Section(here, data), *shards]
            here, data = child, _read(store, child, walked)
            roots.append(here)
        else:
            if value is None:
                if here.codec != DAG_CBOR:
                    raise Refused(404, f"{walked} is a {CODEC_NAMES.get(here.codec, hex(here.codec))} block, so it "
                                       f"has no {names.display(segment)!r}: a path goes through UnixFS folders and "
                                       "DAG-CBOR")
                value = dagcbor.decode(data)
            value = _field(value, segment, walked)
            if isinstance(value, CID):
                proof.append(Section(here, data))
                here, data, value = value, _read(store, value, walked), None
            roots.append(here)
        walked += "/" + names.display(segment)
    if value is not None:
        raise Refused(404, f"{walked} is a value inside block {here}, not a block a CAR can be made of")
    return Resolved(here, data, tuple(proof), tuple(roots))


def _read(store: BlockStore, cid: CID, walked: str) -> bytes:
    try:
        return store.get(cid)
    except BlockNotFound:
        raise Refused(404, f"block {cid} under {walked} is not on this node") from None


def _field(value: object, segment: str, walked: str) -> object:
    """The entry `segment` of a DAG-CBOR map, or item of a list; Refused(404) when there is none."""
    if isinstance(value, dict) and segment in value:
        return value[segment]
    if isinstance(value, list) and segment.isdigit() and int(segment) < len(value):
        return value[int(segment)]
    raise Refused(404, f"{walked} has no {names.display(segment)!r}")


def _pb_child(store: BlockStore, cid: CID, block: bytes, name: str, walked: str) -> tuple[list[Section], CID]:
    """The entry `name` of the UnixFS folder `cid`, and the HAMT shards below it that lead there."""
    found = _unixfs(cid, block)
    if found is None or found[1].kind not in (unixfs.Kind.DIRECTORY, unixfs.Kind.HAMT_SHARD):
        raise Refused(404, f"{walked} is not a folder, so it has no {names.display(name)!r}")
    node, fs = found
    if fs.kind == unixfs.Kind.DIRECTORY:
        for link in node.links:
            if link.name == name:
                return [], link.cid
        raise Refused(404, f"no entry {names.display(name)!r} in {walked}")
    return _hamt_child(store, cid, node, fs, name, walked)


def _hamt_child(store: BlockStore, cid: CID, node: dagpb.Node, fs: unixfs.Data, name: str,
                walked: str) -> tuple[list[Section], CID]:
    """Look `name` up in a HAMT folder by its hash: log2(fanout) bits of it a level, each level's bucket
    a link named by the bucket in hex (a sub-shard) or by the bucket and the name (the entry)."""
    fanout = fs.fanout or hamt.FANOUT
    bits = fanout.bit_length() - 1
    if fanout < 2 or fanout != 1 << bits:
        raise DecodeError(f"HAMT folder {cid} has fanout {fanout}, not a power of two")
    width = len(f"{fanout - 1:X}")
    digest = int.from_bytes(hamt.name_hash(name), "big")
    shards: list[Section] = []
    for depth in range(64 // bits):
        label = f"{(digest >> (64 - (depth + 1) * bits)) & (fanout - 1):0{width}X}"
        link = next((ln for ln in node.links if (ln.name or "").startswith(label)
                     and (ln.name == label or ln.name == label + name)), None)
        if link is None:
            break
        if link.name != label:
            return shards, link.cid
        shard = _read(store, link.cid, walked)
        found = _unixfs(link.cid, shard)
        if found is None or found[1].kind != unixfs.Kind.HAMT_SHARD:
            raise DecodeError(f"{link.cid} is not a HAMT shard where folder {cid} links one")
        shards.append(Section(link.cid, shard))
        node = found[0]
    raise Refused(404, f"no entry {names.display(name)!r} in {walked}")


def sections(store: BlockStore, root: CID, block: bytes, scope: Scope, dups: bool,
             proof: tuple[Section, ...] = ()) -> Iterator[Section]:
    """The blocks answering `scope` under root (its block read already), depth first, parents first,
    after the `proof` of the path that led to root (none of them again unless dups).

    Refused(400) before anything is yielded for an entity-bytes range wholly past the end of the file.
    A block that is missing or does not decode deeper in the DAG raises CatsError as it is met.
    """
    if scope.name == "block":
        found = iter([Section(root, block)])
    elif scope.name == "entity":
        found = _entity(store, root, block, scope.span, dups)
    else:
        found = _dag(store, [(root, block)], dups)
    if not proof:
        return found
    shown = {section.cid.to_v1() for section in proof}
    return itertools.chain(proof, (s for s in found if dups or s.cid.to_v1() not in shown))


def _dag(store: BlockStore, starts: list[tuple[CID, bytes | None]], dups: bool,
         seen: set[CID] | None = None) -> Iterator[Section]:
    """Every block under the starts, depth first (each once unless dups)."""
    seen = set() if seen is None else seen
    stack = list(reversed(starts))
    while stack:
        cid, block = stack.pop()
        if not dups:
            key = cid.to_v1()
            if key in seen:
                continue
            seen.add(key)
        if cid.codec == RAW:
            yield Section(cid, block)
            continue
        data = block if block is not None else store.get(cid)
        yield Section(cid, data)
        stack.extend((child, None) for child in reversed(links(cid, data)))


def _unixfs(cid: CID, block: bytes) -> tuple[dagpb.Node, unixfs.Data] | None:
    """The dag-pb node and its UnixFS data, or None for a block that is not UnixFS."""
    if cid.codec != DAG_PB:
        return None
    node = dagpb.decode(block)
    if node.data is None:
        return None
    try:
        return node, unixfs.decode(node.data)
    except DecodeError:
        return None


def _entity(store: BlockStore, root: CID, block: bytes, span: tuple[int, int | None] | None,
            dups: bool) -> Iterator[Section]:
    if root.codec == RAW:  # a file of one block
        _check_span(span, len(block), root)
        return iter([Section(root, block)])
    found = _unixfs(root, block)
    if found is None:
        return iter([Section(root, block)])
    node, fs = found
    if fs.kind in (unixfs.Kind.FILE, unixfs.Kind.RAW):
        size = len(fs.data or b"") + sum(fs.blocksizes)
        if span is None:
            return _dag(store, [(root, block)], dups)
        first, last = _check_span(span, size, root)
        if last < first:  # an empty range: the root says why
            return iter([Section(root, block)])
        return _file_range(store, root, block, first, last, dups)
    if fs.kind == unixfs.Kind.HAMT_SHARD:
        return _shards(store, root, block, dups)
    return iter([Section(root, block)])  # a directory lists itself; a symlink is its block


def _check_span(span: tuple[int, int | None] | None, size: int, root: CID) -> tuple[int, int]:
    """The inclusive byte range [first, last] an entity-bytes span covers in a file of `size` bytes
    (last < first when it is empty); Refused(400) when it starts past the end."""
    if span is None:
        return 0, size - 1
    lo, hi = span
    first = max(0, size + lo) if lo < 0 else lo
    last = size - 1 if hi is None else (size + hi if hi < 0 else min(hi, size - 1))
    if first >= size and size:
        raise Refused(400, f"entity-bytes from {lo} starts past the end of {root}, a file of {size} bytes")
    return first, last


def _file_range(store: BlockStore, root: CID, block: bytes, first: int, last: int,
                dups: bool) -> Iterator[Section]:
    """The file's blocks that hold bytes first..last (inclusive), found by the blocksizes of its nodes."""
    seen: set[CID] = set()
    stack: list[tuple[CID, bytes | None, int]] = [(root, block, 0)]
    while stack:
        cid, data, at = stack.pop()
        if not dups:
            if cid.to_v1() in seen:
                continue
            seen.add(cid.to_v1())
        if cid.codec == RAW:
            yield Section(cid, data)
            continue
        data = data if data is not None else store.get(cid)
        found = _unixfs(cid, data)
        if found is None or found[1].kind not in (unixfs.Kind.FILE, unixfs.Kind.RAW):
            raise DecodeError(f"{cid} inside file {root} is not a UnixFS file node")
        node, fs = found
        if len(node.links) != len(fs.blocksizes):
            raise DecodeError(f"{cid} has {len(node.links)} links but {len(fs.blocksizes)} block sizes")
        yield Section(cid, data)
        pos = at + len(fs.data or b"")
        wanted = []
        for link, size in zip(node.links, fs.blocksizes, strict=True):
            if pos > last:
                break
            if pos + size > first:
                wanted.append((link.cid, None, pos))
            pos += size
        stack.extend(reversed(wanted))


def _shards(store: BlockStore, root: CID, block: bytes, dups: bool) -> Iterator[Section]:
    """A HAMT directory's own blocks: its shards, whose links to further shards are named by their
    two-character bucket alone (a longer name is an entry, not listed further)."""
    seen: set[CID] = set()
    stack: list[tuple[CID, bytes | None]] = [(root, block)]
    while stack:
        cid, data = stack.pop()
        if not dups:
            if cid.to_v1() in seen:
                continue
            seen.add(cid.to_v1())
        data = data if data is not None else store.get(cid)
        yield Section(cid, data)
        found = _unixfs(cid, data)
        if found is None:
            raise DecodeError(f"{cid} inside directory {root} is not a UnixFS node")
        stack.extend((link.cid, None) for link in reversed(found[0].links) if len(link.name or "") == 2)


class CarWriter:
    """A CARv1 in large pieces: `pieces()` fills one buffer with whole sections, yields a view of it
    once it holds CHUNK bytes (or the sections end), and reuses it for the next piece; so each piece
    must be sent before the next is asked for. Leaves are read by `BlockStore.read_into` directly
    into the buffer."""

    def __init__(self, store: BlockStore, root: CID, blocks: Iterator[Section]) -> None:
        self.store, self.root, self.blocks = store, root, blocks
        self.buffer = bytearray(CHUNK + car.MAX_SECTION)
        self.used = 0  # bytes of the buffer holding whole sections not sent yet
        self.sent = 0

    def pieces(self) -> Iterator[memoryview]:
        """The CAR in pieces; a block that cannot be read ends it after the whole sections before it."""
        view = memoryview(self.buffer)
        head = car.header([self.root])
        view[:len(head)] = head
        self.used = len(head)
        try:
            for section in self.blocks:
                if section.cid.hashfn == multihash.IDENTITY:
                    continue  # its bytes are in the CID (and so in whatever links it)
                yield from self._add(view, section)
        except CatsError:
            if self.used:
                yield self._flush(view)
            raise
        if self.used:
            yield self._flush(view)

    def _add(self, view: memoryview, section: Section) -> Iterator[memoryview]:
        """Lay one section into the buffer, sending the buffer first if it would not fit, and after if full."""
        cid = section.cid
        size = len(section.block) if section.block is not None else self.store.size(cid)
        if size > car.MAX_BLOCK:
            raise CatsError(f"block {cid} holds {size} bytes, more than a CAR section may ({car.MAX_BLOCK})")
        raw = bytes(cid)
        prefix = varint.encode(len(raw) + size) + raw
        if self.used + len(prefix) + size > len(self.buffer):
            yield self._flush(view)
        at = self.used + len(prefix)
        if section.block is not None:
            view[at:at + size] = section.block
        else:
            self.store.read_into(cid, view[at:at + size])  # before the prefix: a failed read leaves no trace
        view[self.used:at] = prefix
        self.used = at + size
        if self.used >= CHUNK:
            yield self._flush(view)

    def _flush(self, view: memoryview) -> memoryview:
        piece, self.used = view[:self.used], 0
        self.sent += len(piece)
        return piece
