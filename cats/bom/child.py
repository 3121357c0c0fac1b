"""A sub-Order's place in its parent's BOM: which BOM it made, and who ran it for which slice.

A slice that submits sub-Orders (`cats.factory.submit`) carries one `Child` per submission in its
slice record; the parent BOM links the child BOMs themselves in `children`, so a walk of the parent's
DAG (pinning, pulls, lineage) reaches them without reading the slice records.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from cats.cas.fields import CIDField


class Executor(BaseModel):
    """Who ran a sub-Order: the host its driver ran on, and the identity that signed its BOM."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    node: str = Field(description="the executor in the child BOM's invoice")
    did: str | None = Field(default=None, description="the first signer of the child BOM; None if no signature "
                                                       "was known where it ran")


class Child(BaseModel):
    """A sub-Order a slice submitted: its BOM and Order, who ran it, and what waiting for it took."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bom: CIDField
    order: CIDField
    executor: Executor
    duration_s: float = Field(description="how long the slice waited for it, every attempt included")
    attempts: int = Field(description="runs of the sub-Order it took (a failed run is re-run: resumed)")
