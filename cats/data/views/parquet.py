"""Parquet: the footer once, then only the column chunks of the selected columns in the row groups
that hold selected rows, fetched as exact byte ranges (adjacent chunks merged into one request).

A column chunk starts at its dictionary page (if any) or its first data page and is
`total_compressed_size` bytes long, as the footer says. Decoding is pyarrow's, over a SparseFile
holding just those ranges and given the parsed footer, so it reads nothing else (checked by the
tests against what the server sent).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from cats.data.views._io import Reader, SparseFile, tail
from cats.data.views.plan import pick, within
from cats.errors import ViewError

MAGIC = b"PAR1"
_TAIL = 16 << 10  # the first read of the footer: most footers fit; a bigger one costs one more request


def leaves(t: pa.DataType) -> int:
    """How many Parquet leaf columns (column chunks per row group) an Arrow field of this type has."""
    if pa.types.is_struct(t):
        return sum(leaves(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_map(t):
        return leaves(t.key_type) + leaves(t.item_type)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return leaves(t.value_type)
    return 1


@dataclass
class ParquetSource:
    """A Parquet file's footer, parsed: schema, row-group boundaries, and each field's leaf columns."""

    meta: pq.FileMetaData
    schema: pa.Schema
    starts: list[int]  # first row of each row group, then the row count
    leaf: dict[str, range]  # top-level field -> its leaf column indices
    _chunks: dict[int, list[tuple[int, int]]] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return self.starts[-1]

    def bounds(self) -> list[int]:
        """Row boundaries of the storage units (row groups), from 0 to the row count."""
        return self.starts

    def chunks(self, group: int) -> list[tuple[int, int]]:
        """(start, end) byte range of each leaf column's chunk in a row group."""
        found = self._chunks.get(group)
        if found is None:
            rg = self.meta.row_group(group)
            found = []
            for j in range(rg.num_columns):
                c = rg.column(j)
                start = c.data_page_offset
                if c.has_dictionary_page and 0 < (c.dictionary_page_offset or 0) < start:
                    start = c.dictionary_page_offset
                found.append((start, start + c.total_compressed_size))
            self._chunks[group] = found
        return found

    def ranges(self, groups: list[int], names: list[str]) -> list[tuple[int, int]]:
        """The byte ranges of the named columns' chunks in the given row groups: what a read fetches."""
        out = []
        for g in groups:
            chunks = self.chunks(g)
            out += [chunks[j] for name in names for j in self.leaf[name]]
        return out

    def groups(self, rows: range) -> list[int]:
        """The row groups holding at least one of the rows, in order."""
        return [g for g in range(len(self.starts) - 1) if len(within(rows, self.starts[g], self.starts[g + 1]))]

    def read(self, rows: range, names: list[str], reader: Reader) -> pa.Table:
        if len(rows) == 0:
            return self.schema.empty_table().select(names)
        groups = self.groups(rows)
        segments = reader.fetch(self.ranges(groups, names))
        file = SparseFile(reader.info.size, segments, reader)
        try:
            table = pq.ParquetFile(file, metadata=self.meta).read_row_groups(groups, columns=names,
                                                                              use_pandas_metadata=False)
        except (pa.ArrowException, OSError) as e:
            raise ViewError(f"{reader.uri}: cannot decode row groups {groups}: {e}", reader.uri) from None
        return pick(table.select(names), rows, [(self.starts[g], self.starts[g + 1]) for g in groups])


def load(reader: Reader) -> ParquetSource:
    uri, size = reader.uri, reader.info.size
    _, end = tail(reader, _TAIL)
    if size < 12 or end[-4:] != MAGIC:
        raise ViewError(f"{uri} is not a Parquet file (no PAR1 at its end)", uri)
    (length,) = struct.unpack("<I", end[-8:-4])
    if length + 12 > size:
        raise ViewError(f"{uri}: a Parquet footer of {length} bytes does not fit in {size} bytes", uri)
    if length + 8 > len(end):  # fetch only the part of the footer the first read missed
        end = reader.read(size - length - 8, length + 8 - len(end)) + end
    try:
        meta = pq.read_metadata(pa.BufferReader(MAGIC + end[-length - 8:]))
        schema = meta.schema.to_arrow_schema()
    except (pa.ArrowException, OSError) as e:
        raise ViewError(f"{uri}: malformed Parquet footer: {e}", uri) from None
    starts = [0]
    for g in range(meta.num_row_groups):
        starts.append(starts[-1] + meta.row_group(g).num_rows)
    leaf, j = {}, 0
    for f in schema:
        leaf[f.name] = range(j, j + leaves(f.type))
        j += leaves(f.type)
    if j != meta.num_columns or len(leaf) != len(schema):
        raise ViewError(f"{uri}: cannot map the Parquet columns to its {len(schema)} fields "
                        "(duplicate names or an unknown nesting)", uri)
    return ParquetSource(meta, schema, starts, leaf)
