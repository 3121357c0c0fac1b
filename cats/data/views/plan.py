"""The planner: turns a view's ops into what to read and what to do with it afterwards.

It walks the ops (`ops.py`) in order over the source's metadata (no data) and yields a Plan:

- tables (Parquet, Arrow): the source rows (a `range`: row slices and windows compose into one),
  the columns, and the casts, applied after reading (casts commute with row and column selection);
- arrays (.npy): the same for rows along axis 0 and columns along axis 1 until the first transpose
  or reshape; that op and everything after it (`tail`) are applied in numpy to what was read. A
  reshape of whole C-order rows followed by row slices is narrowed to the covering source rows
  (`trim`), so e.g. `reshape(-1).rows(a, b)` reads only the rows holding elements a..b.

Every op is checked against the shape, columns and types at its point, so an impossible view fails
when it is built, naming the op and the view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from cats.data.views.ops import Cast, Columns, Reshape, Rows, Transpose, Window, _Op
from cats.errors import ViewError

if TYPE_CHECKING:
    from cats.data.views import View


@dataclass
class Plan:
    """What a view reads and what it does to it afterwards."""

    rows: range | None  # source rows along axis 0, in order (None: a 0-d array)
    columns: list | None  # tables: names; arrays: axis-1 indices (None: all)
    shape: tuple[int, ...]  # of the result (tables: rows, columns)
    casts: list[str] = field(default_factory=list)
    tail: list[_Op] = field(default_factory=list)  # arrays: applied in numpy after reading, in order
    trim: tuple[int, int, tuple[int, ...]] | None = None  # arrays: flat [a, b) of what was read, then this shape
    schema: pa.Schema | None = None
    dtype: np.dtype | None = None


@dataclass
class At:
    """Where in a view an op stands: errors name the view as it was before that op."""

    view: View
    index: int

    @property
    def uri(self) -> str:
        return self.view.uri

    @property
    def format(self) -> str:
        return self.view.format

    def label(self) -> str:
        return self.view.label(self.index)


def before(rows: range, x: int) -> int:
    """How many elements of `rows` are smaller than x."""
    return min(len(rows), max(0, -(-(x - rows.start) // rows.step)))


def within(rows: range, lo: int, hi: int) -> range:
    """The elements of `rows` in [lo, hi), as a range."""
    return rows[before(rows, lo):before(rows, hi)]


def pick(table: pa.Table, rows: range, units: list[tuple[int, int]]) -> pa.Table:
    """The selected rows of a table made of the given source row units [lo, hi), concatenated in order."""
    if rows.step == 1 and all(a[1] == b[0] for a, b in zip(units, units[1:], strict=False)):
        return table.slice(rows.start - units[0][0], len(rows))
    parts, base = [], 0
    for lo, hi in units:
        inner = within(rows, lo, hi)
        parts.append(np.arange(inner.start, inner.stop, inner.step, dtype=np.int64) - lo + base)
        base += hi - lo
    return table.take(np.concatenate(parts))


def _rows(at: At, op: Rows | Window, n: int) -> range:
    stop = n if op.stop is None else op.stop
    if op.start > n or stop > n:
        raise ViewError(f"{op.label()} is out of range: {at.label()} has {n} rows there", at.uri)
    return range(n)[op.start:stop:op.step if isinstance(op, Window) else 1]


def _positions(at: At, op: Columns, names: list[str] | None, n: int) -> list[int]:
    """Positions among n columns (named `names`, for tables) that the op selects, checked."""
    out = []
    for x in op.names:
        if isinstance(x, str):
            if names is None:
                raise ViewError(f"{op.label()}: arrays take column positions (ints), not names ({at.label()})",
                                at.uri)
            if x not in names:
                raise ViewError(f"{op.label()}: no column {x!r} in {at.label()}; it has {', '.join(names)}",
                                at.uri)
            out.append(names.index(x))
        else:
            if not 0 <= x < n:
                raise ViewError(f"{op.label()}: column {x} is out of range: {at.label()} has {n} columns",
                                at.uri)
            out.append(x)
    if len(set(out)) != len(out):
        raise ViewError(f"{op.label()} selects a column twice ({at.label()})", at.uri)
    return out


def reshaped(at: At, op: Reshape, shape: tuple[int, ...]) -> tuple[int, ...]:
    n = math.prod(shape)
    target = list(op.shape)
    unknown = [i for i, d in enumerate(target) if d == -1]
    if len(unknown) > 1 or any(d < -1 for d in target):
        raise ViewError(f"{op.label()}: a shape takes non-negative sizes and at most one -1 ({at.label()})",
                        at.uri)
    if unknown:
        rest = math.prod(d for d in target if d != -1)
        if rest == 0 or n % rest:
            raise ViewError(f"{op.label()} cannot reshape shape {shape} ({n} elements) of {at.label()} "
                            f"into {tuple(op.shape)}", at.uri)
        target[unknown[0]] = n // rest
    if math.prod(target) != n:
        raise ViewError(f"{op.label()} cannot reshape shape {shape} ({n} elements) of {at.label()} into "
                        f"{tuple(target)} ({math.prod(target)} elements)", at.uri)
    return tuple(target)


def numpy_cast(at: At, op: Cast, dtype: np.dtype) -> np.dtype:
    try:
        target = np.dtype(op.dtype)
    except TypeError:
        raise ViewError(f"{op.label()}: {op.dtype!r} is not a numpy dtype ({at.label()})", at.uri) from None
    if not np.can_cast(dtype, target, "safe"):
        raise ViewError(f"{op.label()} is not a safe cast: {dtype} to {target} can lose values ({at.label()}); "
                        "only casts numpy calls safe are allowed", at.uri)
    return target


def arrow_type(at: At, op: Cast) -> pa.DataType:
    try:
        return pa.type_for_alias(op.dtype)
    except (ValueError, KeyError):
        raise ViewError(f"{op.label()}: {op.dtype!r} is not an Arrow type name such as int64, float64, string "
                        f"({at.label()})", at.uri) from None


_WIDENING = {(pa.string(), pa.large_string()), (pa.binary(), pa.large_binary()), (pa.date32(), pa.date64())}


def safe_arrow(src: pa.DataType, dst: pa.DataType) -> bool:
    """Whether casting src to dst can never lose or change a value: numpy's safe casts, and a few widenings."""
    if src == dst or (src, dst) in _WIDENING:
        return True

    def numeric(t: pa.DataType) -> bool:
        return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)

    if numeric(src) and numeric(dst):
        return bool(np.can_cast(src.to_pandas_dtype(), dst.to_pandas_dtype(), "safe"))
    if pa.types.is_timestamp(src) and pa.types.is_timestamp(dst) and src.tz == dst.tz:
        return bool(np.can_cast(np.dtype(f"M8[{src.unit}]"), np.dtype(f"M8[{dst.unit}]"), "safe"))
    if pa.types.is_duration(src) and pa.types.is_duration(dst):
        return bool(np.can_cast(np.dtype(f"m8[{src.unit}]"), np.dtype(f"m8[{dst.unit}]"), "safe"))
    return False


def plan_table(view: View, schema: pa.Schema, num_rows: int) -> Plan:
    rows = range(num_rows)
    names = list(schema.names)
    types = {f.name: f.type for f in schema}
    casts = []
    for i, op in enumerate(view.ops):
        at = At(view, i)
        if isinstance(op, Rows | Window):
            rows = rows[_rows_range(at, op, rows)]
        elif isinstance(op, Columns):
            names = [names[k] for k in _positions(at, op, names, len(names))]
        elif isinstance(op, Cast):
            target = arrow_type(at, op)
            for name in names:
                if not safe_arrow(types[name], target):
                    raise ViewError(f"{op.label()} is not a safe cast for column {name!r}: {types[name]} to "
                                    f"{target} can lose values ({at.label()})", view.uri)
                types[name] = target
            casts.append(op.dtype)
        else:
            raise ViewError(f"{op.label()} is for .npy arrays: {at.label()} is a {view.format} table, whose "
                            "rows and columns cannot be transposed or reshaped", view.uri)
    fields = [schema.field(name).with_type(types[name]) for name in names]
    return Plan(rows, names, (len(rows), len(names)), casts,
                schema=pa.schema(fields, metadata=schema.metadata))


def _rows_range(at: At, op: Rows | Window, rows: range) -> slice:
    r = _rows(at, op, len(rows))
    return slice(r.start, r.stop, r.step)


def _array_step(at: At, op: _Op, shape: tuple[int, ...], dtype: np.dtype) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype after one op, checked."""
    if isinstance(op, Rows | Window | Columns) and not shape:
        raise ViewError(f"{op.label()}: {at.label()} is a 0-d array, which has no rows", at.uri)
    if isinstance(op, Rows | Window):
        return (len(_rows(at, op, shape[0])), *shape[1:]), dtype
    if isinstance(op, Columns):
        if len(shape) < 2:
            raise ViewError(f"{op.label()}: {at.label()} has shape {shape}; columns are axis 1 of a 2-D "
                            "(or more) array", at.uri)
        return (shape[0], len(_positions(at, op, None, shape[1])), *shape[2:]), dtype
    if isinstance(op, Transpose):
        if len(shape) < 2:
            raise ViewError(f"{op.label()}: {at.label()} has shape {shape}; only 2-D (or more) arrays "
                            "transpose", at.uri)
        return shape[::-1], dtype
    if isinstance(op, Reshape):
        return reshaped(at, op, shape), dtype
    assert isinstance(op, Cast)
    return shape, numpy_cast(at, op, dtype)


def plan_array(view: View, shape: tuple[int, ...], dtype: np.dtype, c_order: bool) -> Plan:
    inner = shape[1:]
    rows = range(shape[0]) if shape else None
    cols: list[int] | None = None
    casts: list[str] = []
    tail: list[_Op] = []
    for i, op in enumerate(view.ops):
        at = At(view, i)
        before_shape = shape
        shape, dtype = _array_step(at, op, shape, dtype)
        if tail or isinstance(op, Transpose | Reshape):
            tail.append(op)
        elif isinstance(op, Rows | Window):
            assert rows is not None
            rows = rows[_rows_range(at, op, rows)]
        elif isinstance(op, Columns):
            current = cols if cols is not None else list(range(before_shape[1]))
            cols = [current[k] for k in _positions(at, op, None, len(current))]
        else:
            casts.append(op.dtype)
    plan = Plan(rows, cols, shape, casts, tail, dtype=dtype)
    if c_order and rows is not None and cols is None and rows.step == 1 and tail and isinstance(tail[0], Reshape):
        _narrow(view, plan, inner)
    return plan


def _narrow(view: View, plan: Plan, source_inner: tuple[int, ...]) -> None:
    """Reshapes and row slices right after reading whole C-order rows: read only the rows they keep."""
    assert plan.rows is not None and plan.dtype is not None
    at = At(view, len(view.ops))  # every op was checked already; this only names the view
    rows = plan.rows
    # what is read has shape (len(rows), *source_inner): elements [lo, hi) of it, in C order, are kept
    cur: tuple[int, ...] = (len(rows), *source_inner)
    lo, hi = 0, math.prod(cur)
    used = 0
    casts = list(plan.casts)
    for op in plan.tail:
        if isinstance(op, Reshape):
            cur = reshaped(at, op, cur)
        elif isinstance(op, Rows | Window) and cur and (isinstance(op, Rows) or op.step == 1):
            r = _rows(at, op, cur[0])
            inner = math.prod(cur[1:])
            lo, hi = lo + r.start * inner, lo + (r.start + len(r)) * inner
            cur = (len(r), *cur[1:])
        elif isinstance(op, Cast):
            casts.append(op.dtype)
        else:
            break
        used += 1
    rowsize = math.prod(source_inner)
    if rowsize == 0:
        return
    first, last = lo // rowsize, -(-hi // rowsize) if hi > lo else lo // rowsize
    plan.rows = rows[first:last]
    plan.trim = (lo - first * rowsize, hi - first * rowsize, cur)
    plan.casts = casts
    plan.tail = plan.tail[used:]

