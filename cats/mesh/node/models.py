"""The node's wire format (pydantic): what its JSON answers look like, for the app and its OpenAPI.

Every error is `ErrorBody` (`{"detail": "..."}`), validation errors included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

from pydantic import BaseModel, ConfigDict, Field

from cats.bom.jobs import Status

if TYPE_CHECKING:
    from cats.bom.jobs import Job


class ErrorBody(BaseModel):
    detail: str = Field(description="what went wrong, naming the CID, DID or field")


class NodeId(BaseModel):
    did: str = Field(description="the node's did:key; it signs every BOM the node makes")
    version: str = Field(description="the CATs version the node runs")
    private: bool = Field(description="whether reads need a signed request from a trusted peer")


class Imported(BaseModel):
    roots: list[str] = Field(description="the CAR's roots")
    blocks: int = Field(description="blocks in the CAR, each checked against its CID")


class Pinned(BaseModel):
    pinned: str = Field(description="the DAG's root")
    blocks: int = Field(description="blocks of the DAG, all present")


HAS_MAX = 1000  # CIDs per POST /has: an Order's code, lock, IaC and inputs fit in one, many times over


class HasRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cids: list[str] = Field(max_length=HAS_MAX, description=f"DAG roots to look for, at most {HAS_MAX}")


class Has(BaseModel):
    present: list[str] = Field(description="the CIDs asked for whose whole DAG is on this node, as asked")
    missing: list[str] = Field(description="the others: a block of their DAG is absent (or does not decode)")


class OrderRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    order: str = Field(description="CID of a sealed Order block already pushed to this node, with every block "
                                   "it names (code, lock, IaC, input DAGs)")


class OrderStatus(BaseModel):
    id: str = Field(description="the order's id on this node")
    status: Status
    order: str | None = Field(default=None, description="the Order's CID")
    name: str | None = Field(default=None, description="the Order's name")
    bom: str | None = Field(default=None, description="the BOM's CID, once done")
    output: str | None = Field(default=None, description="the output's CID, once done")
    error: str | None = Field(default=None, description="why it failed, or who cancelled it")
    done: int | None = Field(default=None, description="slices finished so far")
    total: int | None = Field(default=None, description="slices in all, once it is split")
    stage: int | None = Field(default=None, description="of a pipeline, the stage running (done and total are its)")
    stages: int | None = Field(default=None, description="stages of the pipeline (1: a plain Order)")
    started: float | None = Field(default=None, description="when it started running")
    finished: float | None = Field(default=None, description="when it ended (done, failed or cancelled)")

    @classmethod
    def of(cls, row: Job, **more: Any) -> Self:
        return cls.model_validate({"id": row.id, "status": row.status, "order": row.order, "name": row.name,
                                   "bom": row.bom, "output": row.output, "error": row.error,
                                   "done": row.done if row.total is not None else None,
                                   "total": row.total, "started": row.started, "finished": row.finished,
                                   **({"stage": row.stage, "stages": row.stages} if row.stages > 1 else {}), **more})


class OrderEntry(OrderStatus):
    submitter: str = Field(description="the DID that submitted it")
    created: float = Field(description="when it was accepted (seconds since the epoch)")

    @classmethod
    def of(cls, row: Job, **more: Any) -> Self:
        return super().of(row, submitter=row.submitter, created=row.created, **more)


class LineageNode(BaseModel):
    model_config = ConfigDict(extra="allow")

    cid: str
    name: str | None
    order: str | None
    inputs: list[str]
    outputs: list[str]
    started: str | None
    slices: int | None
    missing: bool = Field(description="a parent whose block is absent here or is not a BOM")
    error: str | None


class LineageEdge(BaseModel):
    parent: str
    child: str
    nested: bool = Field(default=False, description="child is the BOM of a sub-Order parent's slice submitted "
                                                    "(present only when true)")


class Lineage(BaseModel):
    root: str
    nodes: list[LineageNode] = Field(description="BOMs, parents before children")
    edges: list[LineageEdge]
