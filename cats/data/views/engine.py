"""How a View reads: its source's metadata, its plan, the byte ranges, the decoding.

Kept apart from the View model so that holding a view (an Order, a slice record) imports neither
numpy nor pyarrow; only reading one does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cats.data.cache import Cache
from cats.data.reach import Reach
from cats.data.views import arrow as _arrow
from cats.data.views import npy as _npy
from cats.data.views import parquet as _parquet
from cats.data.views._io import GAP_EXACT, Meter, Reader, coalesce, source
from cats.data.views.ops import Columns, Reshape, Rows, Transpose, Window
from cats.data.views.plan import Plan, before, plan_array, plan_table
from cats.errors import ViewError

if TYPE_CHECKING:
    from cats.data.views import View

LOADERS = {"parquet": _parquet.load, "arrow": _arrow.load, "npy": _npy.load}
PARTITION_BYTES = 1 << 20  # default npy partition: about this many bytes of rows


def resolve(view: View, cache: Cache | None = None, meter: Meter | None = None,
            reach: Reach | None = None) -> tuple[Any, Plan]:
    reader = Reader(view.info, cache, meter, reach)
    src = source(view.format, reader, LOADERS[view.format])
    if isinstance(src, _npy.NpySource):
        return src, plan_array(view, src.shape, src.dtype, not src.fortran)
    return src, plan_table(view, src.schema, src.num_rows)


def byte_ranges(view: View) -> list[tuple[int, int]]:
    src, plan = resolve(view)
    if isinstance(src, _parquet.ParquetSource | _arrow.ArrowSource):
        rows, names = plan.rows, plan.columns
        assert rows is not None and names is not None  # plan_table names both
        if isinstance(src, _parquet.ParquetSource):
            return coalesce(src.ranges(src.groups(rows), names) if len(rows) else [], GAP_EXACT)
        return coalesce(src.ranges(src.blocks(rows)) if len(rows) else [], GAP_EXACT)
    return coalesce(src.ranges(plan.rows, plan.columns), _npy.GAP)


def materialize(view: View, cache: Cache | None, meter: Meter | None,
                reach: Reach | None = None) -> pa.Table | np.ndarray:
    src, plan = resolve(view, cache, meter, reach)
    reader = Reader(view.info, cache, meter, reach)
    if plan.schema is not None:
        table = src.read(plan.rows, plan.columns, reader)
        for dtype in plan.casts:
            table = cast_table(view, table, dtype)
        return table
    out = src.read(plan.rows, plan.columns, reader)
    if plan.trim is not None:
        lo, hi, shape = plan.trim
        out = out.reshape(-1)[lo:hi].reshape(shape)
    for dtype in plan.casts:
        out = out.astype(dtype)
    for op in plan.tail:
        out = _apply(out, op)
    return out


def partitions(view: View, rows: int | None, reach: Reach | None = None) -> list[View]:
    if rows is not None and rows < 1:
        raise ViewError(f"partitions(rows={rows}) of {view.label()}: rows must be at least 1", view.uri)
    src, plan = resolve(view, reach=reach)  # the row views below find the parsed source in this process
    if not plan.shape:
        raise ViewError(f"{view.label()} is a 0-d array, which has no rows to partition", view.uri)
    n = plan.shape[0]
    if plan.rows is None or plan.tail or plan.trim is not None:
        row_bytes = (plan.dtype.itemsize if plan.dtype is not None else 8) * _prod(plan.shape[1:])
        size = rows or max(1, PARTITION_BYTES // max(1, row_bytes))
        cuts = [*range(0, n, size), n]
    else:
        if isinstance(src, _npy.NpySource):
            size = rows or max(1, PARTITION_BYTES // max(1, src.row_bytes))
            bounds = [*range(0, src.num_rows, size), src.num_rows]
        else:
            bounds = src.bounds()
            if rows:
                bounds = [b for lo, hi in zip(bounds, bounds[1:], strict=False) for b in range(lo, hi, rows)]
                bounds.append(src.num_rows)
        cuts = sorted({0, n, *(before(plan.rows, b) for b in bounds)})
    return [view.rows(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


def cast_table(view: View, table: pa.Table, dtype: str) -> pa.Table:
    target = pa.type_for_alias(dtype)
    columns = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        try:
            columns.append(pc.cast(column, target, safe=True))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise ViewError(f"cast({dtype!r}) of column {name!r} of {view.label()} would change values: {e}",
                            view.uri) from None
    fields = [f.with_type(target) for f in table.schema]
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=table.schema.metadata))


def _prod(dims: tuple[int, ...]) -> int:
    out = 1
    for d in dims:
        out *= d
    return out


def _apply(a: np.ndarray, op: Any) -> np.ndarray:
    """One op of an array's tail, in numpy (checked when the view was built)."""
    if isinstance(op, Rows):
        return a[op.start:op.stop]
    if isinstance(op, Window):
        return a[op.start:op.stop:op.step]
    if isinstance(op, Columns):
        return a[:, cast(list[int], op.names)]  # an array's columns are positions (plan_array refuses names)
    if isinstance(op, Transpose):
        return a.T
    if isinstance(op, Reshape):
        return a.reshape(op.shape)
    return a.astype(op.dtype)
