"""The verification report: one pydantic schema for `--json`, the rich table and the tests."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field

from cats.bom.signatures import BadSignature

# Each kind of failure has its own reason, so a reader can tell tampering from non-determinism.
Reason = Literal[
    "output-differs",      # re-execution gave another CID, or a stored output does not match its CID
    "code-altered",        # a block of the code DAG does not match its CID
    "input-altered",       # a block an input slice reads does not match its CID
    "bom-altered",         # the BOM, its Order or its records are corrupted or contradict each other
    "block-missing",       # a block the lineage needs is not in the store (or a pinned URI is unreadable)
    "reexecution-failed",  # the function raised on re-execution though the run recorded a result
    "check-failed",        # a validator of the Order rejected the output
    "child-differs",       # a re-executed slice submitted other sub-Orders than its record attributes to it
    "signature-invalid",   # a signature kept for the BOM does not hold (forged, another key, another CID, malformed)
    "source-unsigned",     # the source BOM of a reused slice bears no signature by this node or a trusted peer
]


class Problem(BaseModel):
    """One thing verification found wrong: its reason, a one-line detail, and the CID (or URI) and
    slice concerned."""

    reason: Reason
    detail: str
    cid: str | None = Field(default=None, description="the CID concerned, or the URI for a data reference")
    slice: int | None = None


class SliceResult(BaseModel):
    """A re-executed slice: the output CID the BOM records, the one re-execution gave, and the verdict."""

    index: int
    name: str | None
    recorded: str
    recomputed: str | None = None
    ok: bool
    reason: Reason | None = None


class SourceBOM(BaseModel):
    """A BOM that reused slices name as the run that computed them, as `--integrity` found it: intact,
    signed by a trusted DID, and holding a record of its own execution giving each reused output."""

    bom: str
    slices: int = Field(description="how many slices of the verified BOM were reused from it")
    signers: list[str] = Field(default_factory=list, description="trusted DIDs whose signatures on it hold")
    verified: bool
    peer: bool = Field(default=False, description="a trusted peer's BOM (the slices' `vouched`): only its block, "
                                                  "its signature and the record blocks that proved them are here")


class Drift(BaseModel):
    """A distribution whose version here differs from the recorded lock (None: absent on that side)."""

    package: str
    recorded: str | None
    current: str | None


class Sample(BaseModel):
    """A sampled audit: how many slices of how many were re-executed, the seed that chose them, and
    the odds that this sample catches m corrupted slices."""

    total: int
    checked: int
    seed: int | None = None
    detection: dict[str, float] = Field(
        default_factory=dict,
        description="m corrupted slices -> probability this sample would have caught at least one")


class Report(BaseModel):
    """The verdict on a BOM: `verified` is true only if nothing in `problems` and every ancestor and
    sub-Order report (with `recursive`) verified too. Environment drift is reported, never a failure."""

    bom: str
    verified: bool
    # "signature": this part of the lineage could not be re-executed here (its code or data blocks are
    # not readable) and was accepted on the signature of a trusted signer instead
    # "federation": a federated run, which executed nothing itself: its parts' BOMs (its children) must be the
    # Order over its inputs, signed by the nodes named, and their outputs must merge into its output
    mode: Literal["reexecute", "integrity", "signature", "federation"]
    name: str | None = None
    signers: list[str] = Field(default_factory=list, description="DIDs whose signatures on this BOM verify")
    bad_signatures: list[BadSignature] = Field(
        default_factory=list, description="signatures kept for this BOM that do not hold: claimed signer, reason")
    unchecked: list[Problem] = Field(
        default_factory=list, description="in signature mode: what re-execution could not reach here")
    sample: Sample | None = None
    slices: list[SliceResult] = Field(default_factory=list)
    problems: list[Problem] = Field(default_factory=list)
    drift: list[Drift] = Field(default_factory=list)
    reused_from: list[SourceBOM] = Field(default_factory=list,
                                         description="in integrity mode: the BOMs its reused slices were taken from")
    checks: list[dict[str, Any]] = Field(default_factory=list, description="the Order's validators' reports")
    ancestors: list[Report] = Field(default_factory=list)
    children: list[Report] = Field(default_factory=list, description="the sub-Orders' BOMs, with --recursive")
    blocks_checked: int = 0

    @computed_field  # type: ignore[prop-decorator]  # mypy reads no decorator over a property; pydantic's way
    @property
    def signature(self) -> Literal["signed", "unsigned", "invalid"]:
        """"unsigned": no signature is kept for it here (not a failure); "invalid": one kept does not hold."""
        return "invalid" if self.bad_signatures else "signed" if self.signers else "unsigned"
