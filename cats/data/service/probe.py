"""Metadata a client can compute cheaply before registering a URI, reading only what it needs by range.

    describe("s3://b/t.parquet")                 -> Meta(format, size, checksums.version, shape, columns, chunking)
    describe("file:///d/x.npy", checksum=True)   -> Meta(..., dtype, shape, layout, checksums.sha256)

Size and version come from `stat`; the format from the first bytes (magic numbers); a .npy file's
dtype, shape and order from its header; a Parquet file's schema, rows and row groups from its
footer alone. `checksum=True` streams the whole object through SHA-256 in bounded ranges. Every
read after `stat` insists on the version it reported, so the metadata describes one version.
"""

from __future__ import annotations

import ast
import hashlib
import struct

from cats import data
from cats.data.resolvers import Info, max_fetch
from cats.data.service.models import Checksums, Chunk, Chunking, Meta
from cats.errors import DataError

_MAGIC = [  # (prefix, format); longer prefixes first where one extends another
    (b"\x93NUMPY", "npy"),
    (b"PAR1", "parquet"),
    (b"ARROW1", "arrow"),
    (b"\x89HDF\r\n\x1a\n", "hdf5"),
    (b"PK\x03\x04", "zip"),
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"ORC", "orc"),
    (b"Obj\x01", "avro"),
    (b"CDF\x01", "netcdf"),
    (b"CDF\x02", "netcdf"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
]
_SNIFF = 16
_NPY_MAX_HEADER = 1 << 20
_HASH_CHUNK = 8 << 20


def sniff(head: bytes) -> str | None:
    """The format the first bytes announce, or None."""
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


def describe(uri: str, checksum: bool = False) -> Meta:
    info = data.stat(uri)
    pinned = info if info.version is not None else None
    head = data.read(uri, 0, min(info.size, _SNIFF), expect=pinned) if info.size else b""
    meta = Meta(format=sniff(head), size=info.size, checksums=Checksums(version=info.version))
    if meta.format == "npy":
        meta = _npy(uri, info, pinned, head, meta)
    elif meta.format == "parquet":
        meta = _parquet(uri, pinned, meta)
    if checksum:
        assert meta.checksums is not None
        meta.checksums.sha256 = sha256(uri, info, pinned)
    return meta


def sha256(uri: str, info: Info, pinned: Info | None) -> str:
    """SHA-256 of the whole object, read in ranges no larger than CATS_DATA_MAX_FETCH allows."""
    digest = hashlib.sha256()
    step = max(1, min(_HASH_CHUNK, max_fetch()))
    pos = 0
    while pos < info.size:
        chunk = data.read(uri, pos, min(step, info.size - pos), expect=pinned)
        if not chunk:
            raise DataError(f"{uri} ended at byte {pos}, before the {info.size} bytes it reported", uri)
        digest.update(chunk)
        pos += len(chunk)
    return digest.hexdigest()


def _npy(uri: str, info: Info, pinned: Info | None, head: bytes, meta: Meta) -> Meta:
    """dtype, shape and order from a .npy header (format versions 1, 2 and 3)."""
    def bad(why: str) -> DataError:
        return DataError(f"{uri} starts like a .npy file but {why}; register it with --no-inspect to skip this", uri)

    if len(head) < 10:
        raise bad("is too short for a header")
    major = head[6]
    if major not in (1, 2, 3):
        raise bad(f"has unknown format version {major}")
    size_bytes = 2 if major == 1 else 4
    start = 8 + size_bytes
    if len(head) < start:
        raise bad("is too short for a header")
    (length,) = struct.unpack("<H" if major == 1 else "<I", head[8:start])
    if length > _NPY_MAX_HEADER or start + length > info.size:
        raise bad(f"declares a header of {length} bytes")
    text = data.read(uri, start, length, expect=pinned).decode("utf-8" if major == 3 else "latin-1")
    try:
        header = ast.literal_eval(text)  # literals only, never code
        descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
        if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
            raise ValueError(f"shape {shape!r}")
    except (ValueError, SyntaxError, TypeError, KeyError) as e:
        raise bad(f"its header does not parse ({e})") from None
    offset = start + length
    return meta.model_copy(update={
        "dtype": _dtype_name(descr), "shape": list(shape), "layout": "F" if fortran else "C",
        "chunking": Chunking(kind="contiguous", chunks=[Chunk(offset=offset, size=info.size - offset)])})


def _dtype_name(descr: object) -> str:
    """numpy's name for a .npy descr (float64 for '<f8' on this machine, >f8 if foreign); else the descr as written."""
    try:
        from numpy.lib.format import descr_to_dtype

        # numpy's stub admits only list descrs; the function takes any (a str such as '<f8' most often)
        dtype = descr_to_dtype(descr)  # type: ignore[arg-type]
    except Exception:  # an unusual descr, or no numpy: still worth recording as written
        return str(descr)
    if dtype.names:
        return str(dtype.descr)
    return dtype.name if dtype.isnative else dtype.str


def _parquet(uri: str, pinned: Info | None, meta: Meta) -> Meta:
    """Schema, rows and row groups from the footer; pyarrow reads only the tail of the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with data.open(uri, expect=pinned) as f:
            parquet = pq.ParquetFile(f)
            md, schema = parquet.metadata, parquet.schema_arrow
    except pa.ArrowException as e:
        raise DataError(f"{uri} starts like a Parquet file but its footer does not parse ({e}); "
                        "register it with --no-inspect to skip this", uri) from None
    chunks = []
    for i in range(md.num_row_groups):
        group = md.row_group(i)
        columns = [group.column(j) for j in range(group.num_columns)]
        starts = [c.dictionary_page_offset if c.has_dictionary_page else c.data_page_offset for c in columns]
        chunks.append(Chunk(offset=min(starts, default=0), size=sum(c.total_compressed_size for c in columns),
                            rows=group.num_rows))
    types = {str(field.type) for field in schema}
    return meta.model_copy(update={
        "shape": [md.num_rows, md.num_columns], "layout": "columnar",
        "columns": {field.name: str(field.type) for field in schema},
        "dtype": types.pop() if len(types) == 1 else None,
        "chunking": Chunking(kind="row-groups", chunks=chunks)})
