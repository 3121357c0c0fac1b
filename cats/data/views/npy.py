""".npy arrays: the header once, then only the bytes of the selected rows (and, for Fortran order, columns).

C order: row r of an array of shape (n, *inner) is one contiguous run of itemsize*prod(inner) bytes
at data + r*rowbytes, so a row range is one byte range and a strided window one range per row
(neighbours closer than GAP bytes are merged into one request, reading the gap). Column selection
on C order fetches the rows and picks the columns afterwards.

Fortran order: for each combination of trailing indices, the n values along axis 0 are contiguous,
so a selection of rows and axis-1 columns is one range (covering the selected rows) per selected
column and trailing combination.
"""

from __future__ import annotations

import ast
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cats.data.views._io import Reader, SparseFile
from cats.data.views.plan import within
from cats.errors import ViewError

MAGIC = b"\x93NUMPY"
GAP = 64 << 10  # rows closer than this are fetched in one request together with what lies between
# One read of this much holds any ordinary header (numpy pads headers to 64 bytes; 128 is usual).
_HEAD = 4096
# Longer headers are refused before literal_eval sees them (numpy's own loader stops at 10,000 bytes).
MAX_HEADER = 1 << 16


@dataclass
class NpySource:
    """A .npy header, parsed: dtype, shape, memory order and where the data starts."""

    dtype: np.dtype
    shape: tuple[int, ...]
    fortran: bool
    offset: int
    size: int

    @property
    def num_rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def row_bytes(self) -> int:
        return self.dtype.itemsize * math.prod(self.shape[1:])

    def ranges(self, rows: range, cols: list[int] | None) -> list[tuple[int, int]]:
        """The byte ranges a read of these rows (and axis-1 columns) fetches, before merging."""
        if not self.shape:
            return [(self.offset, self.size)]
        if len(rows) == 0:
            return []
        if self.fortran and len(self.shape) > 1:
            n0, item = self.shape[0], self.dtype.itemsize
            lo, hi = rows.start, rows[-1] + 1
            return [(self.offset + (u * n0 + lo) * item, self.offset + (u * n0 + hi) * item)
                    for u in self._units(cols)]
        rb = self.row_bytes
        if rows.step == 1 or (rows.step - 1) * rb <= GAP:  # one covering range: the gaps are cheaper than requests
            return [(self.offset + rows.start * rb, self.offset + (rows[-1] + 1) * rb)]
        return [(self.offset + r * rb, self.offset + (r + 1) * rb) for r in rows]

    def _units(self, cols: list[int] | None) -> list[int]:
        """Fortran order: the runs of axis 0 to read, as indices of (axis-1 column, trailing combination)."""
        n1, k = self.shape[1], math.prod(self.shape[2:])
        js = range(n1) if cols is None else cols
        return [j + n1 * t for t in range(k) for j in js]

    def read(self, rows: range | None, cols: list[int] | None, reader: Reader) -> np.ndarray:
        if not self.shape:  # a 0-d array: its one element
            return np.frombuffer(reader.read(self.offset, self.dtype.itemsize), self.dtype).reshape(()).copy()
        assert rows is not None
        if self.fortran and len(self.shape) > 1:
            return self._read_fortran(rows, cols, reader)
        inner = self.shape[1:]
        rb = self.row_bytes
        if len(rows) == 0 or rb == 0:
            out = np.empty((len(rows), *inner), self.dtype)
        else:
            parts = []
            for start, buf in reader.fetch(self.ranges(rows, None), gap=GAP):
                first = (start - self.offset) // rb
                count = len(buf) // rb
                block = np.frombuffer(buf, self.dtype, count=count * (rb // self.dtype.itemsize))
                block = block.reshape(count, *inner)
                sel = within(rows, first, first + count)
                parts.append(block[sel.start - first:sel.stop - first:rows.step])
            out = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if cols is not None:
            out = out[:, cols]
        return out if out.flags.writeable else out.copy()

    def _read_fortran(self, rows: range, cols: list[int] | None, reader: Reader) -> np.ndarray:
        js = self.shape[1] if cols is None else len(cols)
        trailing = self.shape[2:]
        units = self._units(cols)
        if len(rows) == 0 or not units:
            return np.empty((len(rows), js, *trailing), self.dtype)
        lo, cover, item, n0 = rows.start, rows[-1] + 1 - rows.start, self.dtype.itemsize, self.shape[0]
        held = SparseFile(self.size, reader.fetch(self.ranges(rows, cols), gap=GAP), reader)
        buf = np.empty((len(units), cover), self.dtype)
        for i, u in enumerate(units):
            buf[i] = np.frombuffer(held.get(self.offset + (u * n0 + lo) * item, cover * item), self.dtype)
        # runs are ordered (trailing combination, column) with axis 2 varying fastest: reversing all axes
        # turns (…, axis 3, axis 2, column, row) into (row, column, axis 2, axis 3, …)
        out = buf.reshape(*reversed(trailing), js, cover).transpose()
        return out[::rows.step]


def load(reader: Reader) -> NpySource:
    size = reader.info.size
    head = header(lambda n: reader.read(0, n), size, reader.uri)
    return NpySource(head.dtype, head.shape, head.fortran, head.offset, size)


@dataclass(frozen=True)
class NpyHeader:
    """What a .npy header says: the data's dtype, shape and memory order, and where it starts."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    fortran: bool  # Fortran order, for more than one dimension (one dimension is the same either way)
    offset: int


def header(read: Callable[[int], bytes], size: int, name: str) -> NpyHeader:
    """Parse the header of a .npy file of `size` bytes, read(n) giving its first n bytes (one read
    for any ordinary header, two for a huge structured dtype). Errors are one-line ViewErrors naming
    `name`; object arrays are refused (.npy stores them pickled), and so is a file whose size is not
    the header's plus the data the header describes."""
    head = read(min(size, _HEAD))
    if head[:6] != MAGIC or len(head) < 10:
        raise ViewError(f"{name} is not a .npy file (no \\x93NUMPY magic)", name)
    major = head[6]
    if major == 1:
        (hlen,), start = struct.unpack_from("<H", head, 8), 10
    elif major in (2, 3) and len(head) >= 12:
        (hlen,), start = struct.unpack_from("<I", head, 8), 12
    else:
        raise ViewError(f"{name} is a .npy file of format version {major}.{head[7]}; versions 1, 2 and 3 are read",
                        name)
    end = start + hlen
    if end > size or hlen > MAX_HEADER:
        raise ViewError(f"{name}: a .npy header of {hlen} bytes runs past the end of the {size}-byte file or "
                        f"the {MAX_HEADER}-byte limit", name)
    if end > len(head):
        head = read(end)
    try:
        meta = ast.literal_eval(head[start:end].decode("utf-8" if major == 3 else "latin1"))
        if not isinstance(meta, dict) or set(meta) != {"descr", "fortran_order", "shape"}:
            raise ValueError("the header must be a dict of descr, fortran_order and shape")
        shape = meta["shape"]
        if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise ValueError(f"shape {shape!r} is not a tuple of sizes")
        if not isinstance(meta["fortran_order"], bool):
            raise ValueError(f"fortran_order {meta['fortran_order']!r} is not True or False")
        dtype = np.lib.format.descr_to_dtype(meta["descr"])
    except (ValueError, SyntaxError, TypeError, KeyError, RecursionError, MemoryError, UnicodeDecodeError) as e:
        raise ViewError(f"{name}: malformed .npy header: {e}", name) from None
    if dtype.hasobject:
        raise ViewError(f"{name} holds Python objects (dtype {dtype}), which .npy stores pickled; not read", name)
    nbytes = dtype.itemsize * math.prod(shape)
    if end + nbytes != size:
        raise ViewError(f"{name}: the .npy header says {nbytes} bytes of data (dtype {dtype}, shape {shape}) "
                        f"but the file holds {size - end}", name)
    return NpyHeader(dtype, shape, meta["fortran_order"] and len(shape) > 1, end)
