"""Ingress: split an Order's inputs into slices, each with an assembly record for the merge.

Runs on the driver and reads only what slicing needs: folder listings, the few blocks around
each `lines` boundary, a Parquet footer. An input is a CID in the store or a pinned URI; both are
read through one seekable file (`open_input`), which workers use too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from cats import data
from cats.cas import names, reader
from cats.cas.cid import CID
from cats.cas.reader import RangeFile
from cats.cas.store import BlockStore
from cats.data import Cache, Info, Reach
from cats.data.views import View
from cats.errors import CatsError
from cats.factory.code import load
from cats.order import Order, label
from cats.order.function import Function
from cats.order.infra import Slice, Split

# How far past a `lines` boundary to look for the newline, per read.
_PROBE = 64 * 1024

Piece = tuple[Slice, dict[str, Any]]


def split(order: Order, store: BlockStore, reach: Reach | None = None) -> list[Piece]:
    """The Order's slices, each with its assembly record; URIs are read within `reach` (default:
    the user's own). A slice's name goes into the BOM as DAG-CBOR text, so a file name that is not
    UTF-8 is refused here, before anything runs."""
    kind = order.infra.split
    pieces = _user_split(kind, order.sources, store) if isinstance(kind, Function) else \
        _built_in(order, kind, store, reach)
    for piece, assembly in pieces:
        if piece.name is not None and not names.is_text(piece.name):
            where = label(order.sources[assembly["input"]]) if "input" in assembly else piece.origin
            raise CatsError(f"file {names.display(piece.name)} in input {where} has a name that is not UTF-8, "
                            "which a BOM cannot record as a slice name: rename it; nothing was run")
    return pieces


def _built_in(order: Order, kind: str, store: BlockStore, reach: Reach | None) -> list[Piece]:
    pieces: list[Piece] = []
    for i, item in enumerate(order.sources):
        if isinstance(item, View):
            pieces += ((s, {"input": i, "part": k}) for k, s in enumerate(_view_slices(item, kind, reach)))
        elif kind == "files":
            found = files(store, item) if isinstance(item, CID) else [Slice(source=item, name=_basename(item))]
            pieces += ((s, {"input": i, "name": s.name}) for s in found)
        elif kind == "lines":
            pieces += ((s, {"input": i, "offset": s.offset} | ({"name": s.name} if s.name else {}))
                       for s in lines(store, item, order.infra.chunk_bytes, reach))
        else:
            pieces += ((s, {"input": i, "row_group": s.row_group} | ({"name": s.name} if s.name else {}))
                       for s in row_groups(store, item, reach))
    return pieces


def open_input(store: BlockStore, item: CID | Info, cache: Cache | None = None,
               reach: Reach | None = None) -> RangeFile:
    """A seekable file over an input: a file CID read from the store, or a URI read by range at its
    pinned version (through `cache`, or within `reach`, when given); either way each read fetches
    only what it covers."""
    if isinstance(item, CID):
        return reader.FileReader(store, item)
    return RangeFile(item.size, lambda offset, n: data.read(item.uri, offset, n, expect=item, cache=cache,
                                                            reach=reach), item.uri)


def _view_slices(item: View, kind: str, reach: Reach | None) -> list[Slice]:
    """`row-groups`: one slice per storage unit the view covers (Parquet row group, Arrow record
    batch, a chunk of .npy rows); `files`: the whole view as one slice."""
    if kind == "files":
        return [Slice(view=item)]
    if kind == "lines":
        raise CatsError(f"{item.label()} is split by rows: use split='row-groups' (or 'files' for one slice)")
    return [Slice(view=part) for part in item.partitions(reach=reach)]


def _basename(info: Info) -> str:
    """A URI's last path segment (its slice and output name), or the whole URI if it has none."""
    return info.uri.rstrip("/").rsplit("/", 1)[-1] or info.uri


def _origin(item: CID | Info) -> dict[str, Any]:
    return {"cid": item} if isinstance(item, CID) else {"source": item}


def files(store: BlockStore, cid: CID, prefix: str = "") -> Iterator[Slice]:
    """One slice per file under a folder (nested folders flattened to `a/b` names); a file is one slice."""
    if not reader.is_folder(store, cid):
        if prefix:
            yield Slice(cid=cid, name=prefix)
        else:
            yield Slice(cid=cid, name=str(cid))
        return
    for name, child, _ in reader.entries(store, cid):
        path = f"{prefix}/{name}" if prefix else name
        if reader.is_folder(store, child):
            yield from files(store, child, path)
        else:
            yield Slice(cid=child, name=path)


def lines(store: BlockStore, item: CID | Info, chunk: int, reach: Reach | None = None) -> Iterator[Slice]:
    """Byte ranges of about `chunk` bytes, each ending just after a newline (or at the end), of a file
    or of every file under a folder, named as the file."""
    texts = files(store, item) if isinstance(item, CID) and reader.is_folder(store, item) else [None]
    for text in texts:
        part = item if text is None else text.cid
        assert part is not None
        f = open_input(store, part, reach=reach)
        size, origin, name = f.size, _origin(part), None if text is None else text.name
        start = 0
        while start < size or start == 0:
            end = _next_line_end(f, min(start + chunk, size) - 1) if start + chunk < size else size
            yield Slice(**origin, name=name, offset=start, length=end - start)
            if end >= size:
                break
            start = end


def _next_line_end(f: RangeFile, pos: int) -> int:
    """The offset just past the first newline at or after pos (the end of the file if none)."""
    f.seek(pos)
    while window := f.read(_PROBE):
        hit = window.find(b"\n")
        if hit >= 0:
            return pos + hit + 1
        pos += len(window)
    return f.size


def row_groups(store: BlockStore, item: CID | Info, reach: Reach | None = None) -> Iterator[Slice]:
    """One slice per row group of a Parquet file, or of every file under a folder (shards), named as the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = files(store, item) if isinstance(item, CID) and reader.is_folder(store, item) else [None]
    for shard in shards:
        part = item if shard is None else shard.cid
        assert part is not None
        try:
            meta = pq.ParquetFile(open_input(store, part, reach=reach)).metadata
        except pa.ArrowInvalid as e:
            what = label(item) if shard is None else f"{shard.name} in {label(item)}"
            raise CatsError(f"input {what} is not a Parquet file: {e}") from None
        origin = _origin(part)
        name = None if shard is None else shard.name
        for i in range(meta.num_row_groups):
            yield Slice(**origin, name=name, row_group=i, meta={"rows": meta.row_group(i).num_rows})


def _user_split(fn: Function, inputs: list[CID | Info | View], store: BlockStore) -> list[Piece]:
    user_split: Split = load(store, fn, "to split the Order's inputs")
    pieces: list[Piece] = []
    for item in user_split(inputs, store, **fn.params):
        piece, assembly = item if isinstance(item, tuple) else (item, {})
        if not isinstance(piece, Slice):
            raise CatsError(f"split {fn.entry} yielded {type(piece).__name__}, not a cats Slice")
        pieces.append((piece, dict(assembly)))
    return pieces
