"""InfraFunction: how inputs become slices (ingress) and result slices become outputs (egress).

Built-in splits: `files` (one slice per file of a folder CID), `lines` (line-aligned byte ranges
of a file, or of every file in a folder), `row-groups` (one slice per Parquet row group, of a file
or of every file in a folder). Over a folder, slices are named as their file.
Built-in merges: `directory` (one entry per slice, named as its input; the byte results of slices
cut from one file are joined, in slice order, into its entry), `concat` (bytes joined in slice
order), `table` (Arrow tables concatenated), `list` (a DAG-CBOR list of the results). A Function in
either place is the user's own split or merge: `Split` and `Merge` say what it is called with and
must return.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from cats.cas.cid import CID
from cats.cas.fields import CIDField
from cats.cas.store import BlockStore
from cats.data import Info
from cats.data.views import View
from cats.order.function import Function

SplitKind = Literal["files", "lines", "row-groups"]
MergeKind = Literal["directory", "concat", "table", "list"]


class Slice(BaseModel):
    """One unit of work: a file CID, a pinned URI (`source`) or a view of one, optionally narrowed to
    a byte range or a row group. Workers read a source themselves, by range, at its pinned version;
    a view reads only the byte ranges it needs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cid: CIDField | None = None
    source: Info | None = None
    view: View | None = None
    name: str | None = Field(default=None, description="entry name inside its input folder")
    offset: int | None = None
    length: int | None = None
    row_group: int | None = None
    meta: dict[str, JsonValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_origin(self) -> Slice:
        if sum(x is not None for x in (self.cid, self.source, self.view)) != 1:
            raise ValueError("a slice reads exactly one of: a CID, a source URI, a view")
        return self

    @property
    def origin(self) -> str:
        """What the slice reads, for messages: its CID or its URI."""
        where = self.source or self.view
        return str(self.cid) if where is None else where.uri


class InfraFunction(BaseModel):
    """How the Factory cuts the inputs into slices and joins the slices' results into the output:
    a built-in by name, or a Function of the user's (a `Split`, a `Merge`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    split: SplitKind | Function = "files"
    merge: MergeKind | Function = "directory"
    chunk_bytes: int = Field(default=1 << 20, gt=0, description="target slice size for `lines`")


Assembly = Mapping[str, JsonValue]


class Split(Protocol):
    """A user's split, `InfraFunction(split=Function.of(my_split))`: called as
    `my_split(inputs, store, **params)` once per run, on the driver, before any slice runs.

    - `inputs`: the Order's sealed inputs, in order: a `CID` (a file or folder in the store), an
      `Info` (a URI pinned at its size and version) or a `View` of one.
    - `store`: the block store holding those CIDs. Read it through `cats.cas.reader`:
      `reader.entries(store, cid)` lists a folder (name, CID, size), `reader.stat(store, cid).size`
      sizes a file, `reader.read(store, cid, offset, length)` yields the bytes of a range, fetching
      only the blocks that cover it, each checked against its CID. A pinned URI reads by range with
      `cats.data.read(info.uri, offset, length, expect=info)`.
    - the Function's `params` arrive as keyword arguments; give them defaults, so the split
      type-checks as a `Split`.

    It yields, in slice order, one `Slice` per task (what the task reads: a CID or pinned URI,
    optionally narrowed to a byte range or a row group, and a `name` under which the `directory`
    merge files its result) or a `(Slice, assembly)` pair: the assembly is a JSON-able dict that the
    BOM records beside the slice and the merge receives beside the slice's result. Read only what
    slicing needs (a listing, a few bytes around each boundary); workers read the slices. The same
    inputs must give the same slices: `cats verify` splits again and compares with the records.
    """

    def __call__(self, inputs: list[CID | Info | View], store: BlockStore, /
                 ) -> Iterable[Slice | tuple[Slice, Assembly]]: ...


class Merge(Protocol):
    """A user's merge, `InfraFunction(merge=Function.of(my_merge))`: called as
    `my_merge(parts, **params)` once per run, after every slice has finished (in a Ray task, or on the
    driver where the results are all in its store).

    - `parts`: one `(value, assembly)` pair per slice, in slice order. The value is the slice's
      result as the Function returned it, decoded from the store: bytes, str, a pyarrow Table (for
      a pandas DataFrame too), a numpy array, or a JSON-able value (CIDs as `cats.CID`). The assembly
      is the dict the split yielded with the slice (`{}` if none); the built-in splits give
      `{"input": i, ...}`: the input's index and the slice's name, offset, row group or part.
    - the Function's `params` arrive as keyword arguments, as for a `Split`.

    It returns the output, encoded as results are (bytes, str, DataFrame or Arrow table, ndarray,
    JSON-able) and recorded in the BOM with that encoding (`cats.read(bom)` decodes it). The same
    parts must give the same output: `cats verify` merges the recorded results again.
    """

    def __call__(self, parts: list[tuple[Any, dict[str, JsonValue]]], /) -> Any: ...
