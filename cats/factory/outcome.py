"""What a worker reports for one slice: a typed, frozen record that crosses the Ray boundary.

Workers build one `SliceOutcome` per slice; the Factory's driver reads it into the BOM's slice
record, the run index keeps it (as JSON) so an interrupted run resumes, and verification compares
its output CID with the recorded one. Unknown fields are refused: a worker and a driver of
different versions fail loudly instead of dropping what the other sent. `Run` is what a whole run
returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cats.bom import ReplicaOutcome, SliceRecord, Vouched
from cats.bom.child import Child
from cats.cas.cid import CID
from cats.cas.fields import CIDField
from cats.order.checks import CheckReport
from cats.order.infra import Slice

# progress(done, total), called as slices finish
Progress = Callable[[int, int], None]


class DataCounts(BaseModel):
    """A batch's use of its machine's data cache (slices that read URIs)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hits: int
    misses: int
    bytes_in: int
    bytes_out: int
    fetch_s: float

    def __add__(self, other: DataCounts) -> DataCounts:
        return DataCounts(**{f: getattr(self, f) + getattr(other, f) for f in DataCounts.model_fields})


class MovedCounts(BaseModel):
    """What a batch fetched from other nodes' stores, on a cluster whose nodes keep their own."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bytes: int
    blocks: int

    def __add__(self, other: MovedCounts) -> MovedCounts:
        return MovedCounts(bytes=self.bytes + other.bytes, blocks=self.blocks + other.blocks)


class SliceOutcome(BaseModel):
    """One slice's result (`output` set) or failure (`error` set, with the remote traceback).

    A failure from a block that is missing or does not match its CID names it (`kind`, `cid`), one
    from a URI that changed or is unreadable names the URI, so verification can tell an altered
    input from a failing function. A slice that printed links the last `cats.factory.logs.KEPT`
    bytes of each stream it wrote to (`stdout`, `stderr`), failed or not. The last outcome of a batch
    carries the batch's counters (`data`, `moved`); a replicated run's kept outcome carries every
    replica's (`replicas`, `agreed`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int
    output: CIDField | None = Field(default=None, description="the result's CID (a reference block's, with a URI)")
    encoding: str | None = None
    size: int | None = None
    tsize: int | None = None
    content: CIDField | None = Field(default=None, description="a result written to a URI: its own CID")
    node: str | None = None
    worker: int | None = Field(default=None, description="pid of the worker process")
    attempts: int | None = None
    duration_s: float | None = None
    bytes_in: int | None = None
    data: DataCounts | None = None
    moved: MovedCounts | None = None
    children: list[Child] | None = Field(default=None, description="sub-Orders the slice submitted")
    signatures: list[dict[str, Any]] | None = Field(default=None, description="the children's signature envelopes")
    submitted: list[str] | None = Field(default=None, description="Order CIDs it submitted, re-executed to verify")
    replicas: list[ReplicaOutcome] | None = None
    agreed: bool | None = None
    stdout: CIDField | None = Field(default=None, description="what the slice printed to stdout (UnixFS file)")
    stderr: CIDField | None = Field(default=None, description="what the slice printed to stderr (UnixFS file)")
    error: str | None = None
    kind: Literal["integrity", "missing", "data"] | None = None
    cid: str | None = Field(default=None, description="the block a `missing`/`integrity` failure is about")
    uri: str | None = Field(default=None, description="the URI a `data`/`integrity` failure is about")
    disagreement: bool = Field(default=False, description="the replicas' quorum, not a worker, failed it")
    reused_from: CIDField | None = Field(default=None, description="the BOM whose run computed this evaluation")
    vouched: Vouched | None = Field(default=None, description="the trusted peer's BOM that computed it, and its signer")

    @property
    def failed(self) -> bool:
        return self.error is not None

    def record(self, piece: Slice, assembly: dict[str, Any], seed: int) -> SliceRecord:
        """The BOM's record of this slice (a successful one), which also names its input and seed."""
        return SliceRecord.model_validate({**self.model_dump(include=_RECORDED), "input": piece, "assembly": assembly,
                                           "seed": seed})


# What a slice's BOM record takes from its outcome.
_RECORDED = {"index", "output", "encoding", "size", "tsize", "node", "duration_s", "attempts", "bytes_in", "replicas",
             "agreed", "children", "reused_from", "vouched", "stdout", "stderr"}


@dataclass
class Run:
    """What `run` returns: the BOM's CID (the handle for everything), the output's and the sealed
    Order's; whether an earlier BOM of the same Order was reused; slices in all, executed now, and
    taken from earlier runs' evaluations (`reused_slices`); the reports of the checks that gated it
    (None: the Order does not ask, or its BOM was reused). A pipeline's Run is its final stage's,
    with every stage's Run in run order (`stages`, the final one last) and the whole run's time."""

    bom: CID
    output: CID
    order: CID
    reused: bool = False
    slices: int = 0
    executed: int = 0
    reused_slices: int = 0
    duration_s: float = 0.0
    replicas: int = 1
    disagreed: int | None = None  # slices kept by a majority over dissent; None with one replica
    checks: list[CheckReport] | None = None
    stages: list[Run] | None = None

    def summary(self) -> dict[str, Any]:
        summary = {"bom": str(self.bom), "output": str(self.output), "order": str(self.order),
                   "reused": self.reused, "slices": self.slices, "executed": self.executed,
                   "duration_s": round(self.duration_s, 3), "replicas": self.replicas}
        if self.reused_slices:
            summary["reused_slices"] = self.reused_slices
        if self.disagreed is not None:
            summary["disagreed"] = self.disagreed
        if self.checks is not None:
            summary["checks"] = [c.model_dump(mode="json") for c in self.checks]
        if self.stages is not None:
            summary["stages"] = [s.stage_summary() for s in self.stages]
        return summary

    def stage_summary(self) -> dict[str, Any]:
        """What a pipeline's result says of this stage."""
        summary = {"order": str(self.order), "bom": str(self.bom), "output": str(self.output),
                   "executed": self.executed, "reused": self.reused}
        if self.reused_slices:
            summary["reused_slices"] = self.reused_slices
        return summary
