"""Ingress: split an Order's inputs into slices, each with an assembly record for the merge.

Runs on the driver and reads only what slicing needs: folder listings, the few blocks around
each `lines` boundary, a Parquet footer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from cats.cas import reader
from cats.cas.cid import CID
from cats.cas.store import BlockStore
from cats.errors import CatsError
from cats.order import Order
from cats.order.function import Function
from cats.order.infra import Slice

# How far past a `lines` boundary to look for the newline, per read.
_PROBE = 64 * 1024

Piece = tuple[Slice, dict[str, Any]]


def split(order: Order, store: BlockStore) -> list[Piece]:
    kind = order.infra.split
    if isinstance(kind, Function):
        return _user_split(kind, order.input_cids, store)
    pieces: list[Piece] = []
    for i, cid in enumerate(order.input_cids):
        if kind == "files":
            pieces += ((s, {"input": i, "name": s.name}) for s in files(store, cid))
        elif kind == "lines":
            pieces += ((s, {"input": i, "offset": s.offset}) for s in lines(store, cid, order.infra.chunk_bytes))
        else:
            pieces += ((s, {"input": i, "row_group": s.row_group}) for s in row_groups(store, cid))
    return pieces


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


def lines(store: BlockStore, cid: CID, chunk: int) -> Iterator[Slice]:
    """Byte ranges of about `chunk` bytes, each ending just after a newline (or at the end)."""
    size = reader.stat(store, cid).size
    start = 0
    while start < size or start == 0:
        end = _next_line_end(store, cid, min(start + chunk, size) - 1, size) if start + chunk < size else size
        yield Slice(cid=cid, offset=start, length=end - start)
        if end >= size:
            return
        start = end


def _next_line_end(store: BlockStore, cid: CID, pos: int, size: int) -> int:
    """The offset just past the first newline at or after pos (the end of the file if none)."""
    while pos < size:
        window = b"".join(reader.read(store, cid, pos, _PROBE))
        hit = window.find(b"\n")
        if hit >= 0:
            return pos + hit + 1
        pos += len(window)
    return size


def row_groups(store: BlockStore, cid: CID) -> Iterator[Slice]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(reader.FileReader(store, cid)).metadata
    except pa.ArrowInvalid as e:
        raise CatsError(f"input {cid} is not a Parquet file: {e}") from None
    for i in range(meta.num_row_groups):
        yield Slice(cid=cid, row_group=i, meta={"rows": meta.row_group(i).num_rows})


def _user_split(fn: Function, inputs: list[CID], store: BlockStore) -> list[Piece]:
    from cats.factory.worker import load

    pieces: list[Piece] = []
    for item in load(store, fn)(inputs, store, **fn.params):
        piece, assembly = item if isinstance(item, tuple) else (item, {})
        if not isinstance(piece, Slice):
            raise CatsError(f"split {fn.entry} yielded {type(piece).__name__}, not a cats Slice")
        pieces.append((piece, dict(assembly)))
    return pieces
