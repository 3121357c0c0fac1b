"""InfraFunction: how inputs become slices (ingress) and result slices become outputs (egress).

Built-in splits: `files` (one slice per file of a folder CID), `lines` (line-aligned byte ranges
of a file, or of every file in a folder), `row-groups` (one slice per Parquet row group, of a file
or of every file in a folder). Over a folder, slices are named as their file.
Built-in merges: `directory` (one entry per slice, named as its input; the byte results of slices
cut from one file are joined, in slice order, into its entry), `concat` (bytes joined in slice
order), `table` (Arrow tables concatenated), `list` (a DAG-CBOR list of the results). A Function in
either place is the user's own split or merge.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

from cats.cas.fields import CIDField
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
    model_config = ConfigDict(frozen=True, extra="forbid")

    split: SplitKind | Function = "files"
    merge: MergeKind | Function = "directory"
    chunk_bytes: int = Field(default=1 << 20, gt=0, description="target slice size for `lines`")
