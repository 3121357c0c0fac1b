"""Arrow IPC files (Feather v2): the footer once, then only the record batches holding selected rows.

The footer (a flatbuffer at the end of the file) lists each record batch's block: offset, metadata
length and body length. Rows per batch live in each batch's own message header, so loading a
source also reads those headers (a few hundred bytes each, in parallel; once per process per
version). A read fetches whole record batches: metadata and body, every column (the body is one
range per batch; pruning columns inside it is not done), plus the dictionary batches when the
schema has dictionary-encoded fields. Decoding is pyarrow's, over a SparseFile holding the footer
and those blocks.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pyarrow as pa

from cats.data.views._io import Reader, SparseFile, tail
from cats.data.views.plan import pick, within
from cats.errors import ViewError

MAGIC = b"ARROW1"
_TAIL = 16 << 10
_BLOCK = struct.Struct("<qi4xq")  # offset, metaDataLength, (padding), bodyLength
_RECORD_BATCH = 3  # MessageHeader union tag


class _Table:
    """A flatbuffer table in `buf` at absolute position `pos`: just enough to read Arrow's footer and messages."""

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf, self.pos = buf, pos
        vtable = pos - _unpack("<i", buf, pos)
        self.vtable, self.vsize = vtable, _unpack("<H", buf, vtable)

    @classmethod
    def root(cls, buf: bytes, base: int = 0) -> _Table:
        return cls(buf, base + _unpack("<I", buf, base))

    def _field(self, i: int) -> int:
        at = 4 + 2 * i
        off = _unpack("<H", self.buf, self.vtable + at) if at + 2 <= self.vsize else 0
        return self.pos + off if off else 0

    def scalar(self, i: int, fmt: str, default: int = 0) -> int:
        p = self._field(i)
        return _unpack(fmt, self.buf, p) if p else default

    def table(self, i: int) -> _Table | None:
        p = self._field(i)
        return _Table(self.buf, p + _unpack("<I", self.buf, p)) if p else None

    def structs(self, i: int, layout: struct.Struct) -> list[tuple]:
        p = self._field(i)
        if not p:
            return []
        v = p + _unpack("<I", self.buf, p)
        n = _unpack("<I", self.buf, v)
        if v + 4 + n * layout.size > len(self.buf):
            raise ValueError("vector runs past the end")
        return [layout.unpack_from(self.buf, v + 4 + k * layout.size) for k in range(n)]


def _unpack(fmt: str, buf: bytes, pos: int) -> int:
    if pos < 0 or pos + struct.calcsize(fmt) > len(buf):
        raise ValueError(f"offset {pos} outside the {len(buf)}-byte flatbuffer")
    return struct.unpack_from(fmt, buf, pos)[0]


def _batch_rows(head: bytes) -> int:
    """The row count a record batch's encapsulated message header declares."""
    base = 8 if head[:4] == b"\xff\xff\xff\xff" else 4  # continuation marker (current) or legacy length prefix
    message = _Table.root(head, base)
    if message.scalar(1, "<B") != _RECORD_BATCH:
        raise ValueError("a block of the footer's record batches holds another kind of message")
    batch = message.table(2)
    if batch is None:
        raise ValueError("a record batch message without its header")
    return batch.scalar(0, "<q")


@dataclass
class ArrowSource:
    """An Arrow IPC file's footer, parsed: schema, blocks of record and dictionary batches, batch boundaries."""

    schema: pa.Schema
    footer: tuple[int, bytes]  # (offset, bytes) of the footer through the end of the file
    batches: list[tuple[int, int]]  # (start, end) byte range of each record batch block
    dictionaries: list[tuple[int, int]]
    starts: list[int]

    @property
    def num_rows(self) -> int:
        return self.starts[-1]

    def bounds(self) -> list[int]:
        return self.starts

    def blocks(self, rows: range) -> list[int]:
        return [b for b in range(len(self.batches)) if len(within(rows, self.starts[b], self.starts[b + 1]))]

    def ranges(self, blocks: list[int]) -> list[tuple[int, int]]:
        """The byte ranges a read of these record batches fetches (with the dictionaries, if any)."""
        return [self.batches[b] for b in blocks] + self.dictionaries

    def read(self, rows: range, names: list[str], reader: Reader) -> pa.Table:
        if len(rows) == 0:
            return self.schema.empty_table().select(names)
        blocks = self.blocks(rows)
        segments = reader.fetch(self.ranges(blocks)) + [self.footer]
        try:
            ipc = pa.ipc.open_file(SparseFile(reader.info.size, segments, reader))
            table = pa.Table.from_batches([ipc.get_batch(b) for b in blocks], schema=self.schema)
        except (pa.ArrowException, OSError) as e:
            raise ViewError(f"{reader.uri}: cannot decode record batches {blocks}: {e}", reader.uri) from None
        return pick(table.select(names), rows, [(self.starts[b], self.starts[b + 1]) for b in blocks])


def load(reader: Reader) -> ArrowSource:
    uri, size = reader.uri, reader.info.size
    _, end = tail(reader, _TAIL)
    if size < 18 or end[-6:] != MAGIC:
        raise ViewError(f"{uri} is not an Arrow IPC file (no ARROW1 at its end; the streaming format has no "
                        "footer and cannot be read by range)", uri)
    (length,) = struct.unpack("<i", end[-10:-6])
    if length <= 0 or length + 10 > size - 8:
        raise ViewError(f"{uri}: an Arrow footer of {length} bytes does not fit in {size} bytes", uri)
    if length + 10 > len(end):  # fetch only the part of the footer the first read missed
        end = reader.read(size - length - 10, length + 10 - len(end)) + end
    footer = (size - length - 10, end[len(end) - length - 10:])
    try:
        root = _Table.root(footer[1])
        dictionaries = [(o, o + m + b) for o, m, b in root.structs(2, _BLOCK)]
        batches = [(o, o + m + b) for o, m, b in root.structs(3, _BLOCK)]
        if any(s < 8 or e > footer[0] or e <= s for s, e in batches + dictionaries):
            raise ValueError("a block lies outside the file's body")
        ipc = pa.ipc.open_file(SparseFile(size, [footer], reader))
        schema = ipc.schema
        if ipc.num_record_batches != len(batches):
            raise ValueError(f"{ipc.num_record_batches} batches by pyarrow, {len(batches)} in the footer")
        heads = [(o, m) for o, m, _ in root.structs(3, _BLOCK)]
        held = SparseFile(size, reader.fetch([(o, o + m) for o, m in heads], max_requests=len(heads) + 1), reader)
        starts = [0]
        for o, m in heads:
            starts.append(starts[-1] + _batch_rows(bytes(held.get(o, m))))
    except (ValueError, pa.ArrowException, OSError) as e:
        raise ViewError(f"{uri}: malformed Arrow IPC footer: {e}", uri) from None
    return ArrowSource(schema, footer, batches, dictionaries, starts)
