"""Canonical encodings of slice results, so deterministic code gives the same CID everywhere.

bytes as-is; str as UTF-8; pandas and Arrow tables as Arrow IPC streams with fixed options and no
schema metadata (pandas writes its own version into it); numpy arrays as .npy; JSON-able values
(and CIDs) as DAG-CBOR. The encoding's name is recorded beside the output so it can be decoded.
"""

from __future__ import annotations

import io
from typing import Any

from cats.cas import dagcbor
from cats.errors import CatsError, EncodeError

ENCODINGS = ("bytes", "text", "arrow", "npy", "dag-cbor")


def _arrow(table: Any) -> bytes:
    return arrow_stream(table.replace_schema_metadata(None))


def arrow_stream(table: Any) -> bytes:
    """An Arrow table as an IPC stream, as it is (its schema's metadata too)."""
    import pyarrow as pa

    sink = io.BytesIO()
    options = pa.ipc.IpcWriteOptions(compression=None, use_threads=False)
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _from_pandas(df: Any) -> Any:
    import pandas as pd
    import pyarrow as pa

    if not isinstance(df.index, pd.RangeIndex) or df.index.start != 0 or df.index.step != 1:
        df = df.reset_index()
    return pa.Table.from_pandas(df, preserve_index=False)


def encode(value: Any) -> tuple[bytes, str]:
    """(bytes, encoding name) for a result value; EncodeError for values with no canonical form."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), "bytes"
    if isinstance(value, str):
        return value.encode(), "text"
    kind = type(value).__module__.split(".")[0]
    if kind == "pandas" and type(value).__name__ == "DataFrame":
        return _arrow(_from_pandas(value)), "arrow"
    if kind == "pyarrow" and type(value).__name__ in ("Table", "RecordBatch"):
        import pyarrow as pa

        table = pa.Table.from_batches([value]) if isinstance(value, pa.RecordBatch) else value
        return _arrow(table), "arrow"
    if kind == "numpy" and type(value).__name__ == "ndarray":
        import numpy as np

        if value.dtype.hasobject:
            raise EncodeError("numpy arrays of Python objects have no canonical encoding")
        buf = io.BytesIO()
        np.save(buf, value, allow_pickle=False)
        return buf.getvalue(), "npy"
    try:
        return dagcbor.encode(value), "dag-cbor"
    except EncodeError as e:
        raise EncodeError(f"a result of type {type(value).__name__} has no canonical encoding "
                          f"(bytes, str, DataFrame, Arrow table, ndarray or JSON-able): {e}") from None


def decode(data: bytes, encoding: str) -> Any:
    if encoding == "bytes":
        return data
    if encoding == "text":
        return data.decode()
    if encoding == "arrow":
        import pyarrow as pa

        return pa.ipc.open_stream(data).read_all()
    if encoding == "npy":
        import numpy as np

        return np.load(io.BytesIO(data), allow_pickle=False)
    if encoding == "dag-cbor":
        return dagcbor.decode(data)
    raise CatsError(f"unknown result encoding {encoding!r}; known: {', '.join(ENCODINGS)}")
