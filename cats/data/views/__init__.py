"""Lazy views over referenced datasets: slices, windows, columns, transposes, reshapes and
safe casts of a Parquet, Arrow IPC or .npy file named by a data URI, that read only the byte ranges
they need.

    v = view("https://host/t.parquet")                     # pins the version, reads the footer only
    part = v.columns("price", "qty").rows(1_000, 50_000).cast("float64")
    part.materialize()                                      # -> pyarrow.Table: only those column chunks
    [p.materialize() for p in part.partitions()]            # one view per row group it touches
    View.model_validate(part.model_dump(mode="json"))       # plain data: JSON, DAG-CBOR, an Order

A View is a frozen pydantic model: the URI, the format, the pinned version and size, and the ops in
order. Builders return new views and check the op against the metadata at once (the footer or
header is read once per process per version), so an impossible view fails where it is written.
`materialize` reads through `cats.data.read(..., expect=pinned, cache=...)`: a source changed since
`view()` raises DataIntegrityError, and a Cache serves repeated ranges without the network.

What is read (see each backend's docstring): Parquet, the selected columns' chunks in the row
groups holding selected rows; Arrow IPC, the record batches holding selected rows (all their
columns); .npy, the selected rows (C order) or the selected rows of the selected columns
(Fortran order). Row slices bound past the row count are errors rather than clipped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cats import data
from cats.data.cache import Cache
from cats.data.reach import Reach
from cats.data.resolvers import Info
from cats.data.views._io import Meter, forget
from cats.data.views.ops import Cast, Columns, Op, Reshape, Rows, Transpose, Window
from cats.errors import ViewError

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from cats.data.views.plan import Plan

__all__ = ["Cast", "Columns", "Meter", "Op", "Reshape", "Rows", "Transpose", "View", "Window",
           "forget", "view"]

Format = Literal["parquet", "arrow", "npy"]
FORMATS = ("parquet", "arrow", "npy")
_MAGICS = ((b"PAR1", "parquet"), (b"ARROW1", "arrow"), (b"\x93NUMPY", "npy"))
_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".parq": "parquet", ".arrow": "arrow", ".feather": "arrow",
             ".ipc": "arrow", ".npy": "npy"}


class View(BaseModel):
    """A logical view of one pinned dataset: plain data (str, int, lists), so it serializes anywhere."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str
    format: Format
    version: str | None = None
    size: int = Field(ge=0)
    ops: list[Op] = []

    # -- builders ---------------------------------------------------------------------------------

    def rows(self, start: int, stop: int | None = None) -> View:
        """Rows [start, stop) along axis 0 (stop None: to the end)."""
        return self._with(Rows, start=start, stop=stop)

    def window(self, start: int, stop: int, step: int = 1) -> View:
        """Every step-th row of [start, stop)."""
        return self._with(Window, start=start, stop=stop, step=step)

    def columns(self, *names_or_indices: str | int | slice | list | tuple) -> View:
        """Columns by name (tables) or position (tables, axis 1 of arrays); a slice selects positions."""
        picked: list[Any] = []
        for x in names_or_indices:
            if isinstance(x, slice):
                picked += range(*x.indices(self._width()))
            elif isinstance(x, list | tuple):
                picked += x
            else:
                picked.append(x)
        return self._with(Columns, names=picked)

    def transpose(self) -> View:
        """Reverse the axes (.npy arrays of 2 or more dimensions)."""
        return self._with(Transpose)

    def reshape(self, *shape: int | tuple[int, ...] | list[int]) -> View:
        """A new shape with the same element count (.npy); one -1 may stand for the rest."""
        dims = list(shape[0]) if len(shape) == 1 and isinstance(shape[0], tuple | list) else list(shape)
        return self._with(Reshape, shape=dims)

    def cast(self, dtype: str) -> View:
        """A safe cast: a numpy dtype for arrays, an Arrow type name for (every selected column of) tables."""
        return self._with(Cast, dtype=dtype)

    def _with(self, kind: type, **fields: Any) -> View:
        try:
            op = kind(**fields)
        except ValidationError as e:
            args = ", ".join(f"{k}={v!r}" for k, v in fields.items())
            why = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            raise ViewError(f"{kind.__name__.lower()}({args}) on {self.label()}: {why}", self.uri) from None
        new = View(uri=self.uri, format=self.format, version=self.version, size=self.size, ops=[*self.ops, op])
        new._resolve()
        return new

    # -- what the view is -------------------------------------------------------------------------

    def label(self, upto: int | None = None) -> str:
        """How errors name the view: its URI and ops (the first `upto` of them, if given)."""
        ops = " ".join(op.label() for op in self.ops[:upto])
        return f"the {self.format} view of {self.uri}" + (f" [{ops}]" if ops else "")

    @property
    def info(self) -> Info:
        """The pinned source, as `cats.data.read(..., expect=)` takes it."""
        return Info(self.uri, self.size, self.version)

    @property
    def shape(self) -> tuple[int, ...]:
        """The result's shape ((rows, columns) for tables), from the footer or header alone."""
        return self._resolve()[1].shape

    @property
    def num_rows(self) -> int:
        shape = self.shape
        if not shape:
            raise ViewError(f"{self.label()} is a 0-d array, which has no rows", self.uri)
        return shape[0]

    @property
    def schema(self) -> pa.Schema:
        """The result's Arrow schema (tables)."""
        plan = self._resolve()[1]
        if plan.schema is None:
            raise ViewError(f"{self.label()} is an array: it has a dtype, not a schema", self.uri)
        return plan.schema

    @property
    def dtype(self) -> np.dtype:
        """The result's numpy dtype (arrays)."""
        plan = self._resolve()[1]
        if plan.dtype is None:
            raise ViewError(f"{self.label()} is a table: it has a schema, not a dtype", self.uri)
        return plan.dtype

    def byte_ranges(self) -> list[tuple[int, int]]:
        """The (start, end) byte ranges `materialize` fetches (beyond the footer or header), merged."""
        from cats.data.views import engine

        return engine.byte_ranges(self)

    # -- reading ----------------------------------------------------------------------------------

    def materialize(self, cache: Cache | None = None, meter: Meter | None = None,
                    reach: Reach | None = None) -> pa.Table | np.ndarray:
        """The view as a pyarrow Table (Parquet, Arrow) or a numpy array (.npy), reading only what it needs
        (within `reach` when reading for someone else, as a node does for its peers: then without `cache`)."""
        from cats.data.views import engine

        return engine.materialize(self, cache, meter, reach)

    def partitions(self, rows: int | None = None, reach: Reach | None = None) -> list[View]:
        """This view split into row views along the storage units, covering its rows once, in order.

        Parquet: one per row group (split further into at most `rows` rows if given); Arrow: one per
        record batch (likewise); .npy: chunks of `rows` source rows (default: about 1 MiB of them).
        A view whose rows no longer map to source rows (after a transpose or reshape) is cut into
        chunks of `rows` of its own rows. Its footer or header is read within `reach` when given.
        """
        from cats.data.views import engine

        return engine.partitions(self, rows, reach)

    # -- internals --------------------------------------------------------------------------------

    def _resolve(self, cache: Cache | None = None, meter: Meter | None = None) -> tuple[Any, Plan]:
        """The source's parsed metadata (read once per process and version) and this view's plan."""
        from cats.data.views import engine

        return engine.resolve(self, cache, meter)

    def _width(self) -> int:
        shape = self.shape
        if len(shape) < 2:
            raise ViewError(f"columns(slice) on {self.label()}: shape {shape} has no columns", self.uri)
        return shape[1]

def _suffix(uri: str) -> str | None:
    path = urlsplit(uri).path.lower()
    return next((fmt for suffix, fmt in _SUFFIXES.items() if path.endswith(suffix)), None)


def view(uri: str, format: str | None = None) -> View:
    """A view of the whole dataset at `uri`, pinned at its current version; its format from its magic bytes.

    The magic (PAR1, ARROW1, \\x93NUMPY) decides; failing that the name's suffix. The footer or
    header is read now, so a file that is not what it seems fails here, naming the URI.
    """
    if format is not None and format not in FORMATS:
        raise ViewError(f"view({uri!r}, format={format!r}): formats are {', '.join(FORMATS)}", uri)
    info = data.pin(uri)
    head = data.read(uri, 0, min(8, info.size), expect=info) if info.size else b""
    sniffed = next((fmt for magic, fmt in _MAGICS if head.startswith(magic)), None)
    if format is None:
        format = sniffed or _suffix(uri)
        if format is None:
            raise ViewError(f"cannot tell the format of {uri}: it starts with {head!r}, not PAR1 (Parquet), ARROW1 "
                            f"(Arrow IPC) or \\x93NUMPY (.npy), and its name ends in none of "
                            f"{', '.join(_SUFFIXES)}; pass format=", uri)
    elif sniffed is not None and sniffed != format:
        raise ViewError(f"{uri} starts like a {sniffed} file, not {format}", uri)
    made = View(uri=uri, format=format, version=info.version, size=info.size)  # type: ignore[arg-type]
    made._resolve()
    return made
