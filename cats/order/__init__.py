"""Orders: what to run (Function), how to slice and merge (InfraFunction), in what environment
(Structure), where (Plant), over which inputs. One pydantic schema, canonically encoded as
DAG-CBOR, so a sealed Order has a CID.

Inputs are CIDs, local paths (sealing adds them to the store) or data URIs (sealing pins them:
the URI's size and version token go into the Order, so workers read exactly that version and a
source that changes during the job fails it, naming the URI).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cats.cas import dagcbor
from cats.cas.cid import CID, DAG_CBOR
from cats.cas.fields import CIDField
from cats.data import Info
from cats.data.views import View
from cats.errors import CatsError, InvalidCID
from cats.order.checks import Check
from cats.order.function import Function
from cats.order.infra import InfraFunction, Slice
from cats.order.structure import Structure
from cats.plant import Plant

__all__ = ["Order", "Function", "InfraFunction", "Slice", "Structure", "Plant", "Input", "Source", "label"]

_SCHEME = r"^[A-Za-z][A-Za-z0-9+.-]*://"
DataURI = Annotated[str, StringConstraints(pattern=_SCHEME)]


def _cid_or_uri(value: Any) -> Any:
    """A str input is a CID or a data URI; anything else in a str is a mistyped CID, not a path."""
    if isinstance(value, str) and not re.match(_SCHEME, value):
        try:
            CID.parse(value)
        except InvalidCID as e:
            raise ValueError(f"{e}; an input given as str is a CID or a data URI (scheme://…), "
                             "local files and folders are given as pathlib.Path") from None
    return value


# Sealed: a CID or a pinned URI (Info). Tried left to right, CIDField after Info: its serializer
# would otherwise claim every member of the union.
Input = Annotated[View | Info | DataURI | CIDField | Path, Field(union_mode="left_to_right"),
                  BeforeValidator(_cid_or_uri)]
Source = Annotated[View | Info | CIDField, Field(union_mode="left_to_right")]


def label(item: CID | Info | View) -> str:
    """How lineage and listings name a sealed input: its CID, `uri@version`, or that and the view's ops."""
    if isinstance(item, CID):
        return str(item)
    ops = " ".join(op.label() for op in item.ops) if isinstance(item, View) else ""
    return f"{item.uri}@{item.version}" + (f" {ops}" if ops else "")


class Order(BaseModel):
    """A job: run `function` over slices of `inputs`, cut and joined as `infra` says, in the
    environment `structure` describes, on `plant`. Written with local paths and URIs; the Factory
    seals it (every reference becomes a CID or a pinned URI), and the sealed Order's DAG-CBOR block
    is what its CID names: the same sealed Order is the same job, so its BOM is reused.

    `checks` are cheap validators of the output that `cats verify` runs; with `check_on_run` they
    also gate the run: a failing check fails it and no BOM is recorded for it. Both are left out of
    the encoding when unset, so Orders without them keep the CIDs they always had."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    function: Function
    inputs: list[Input | Order] = Field(
        min_length=1, description="CIDs, local files and folders (pathlib.Path) that sealing adds, data URIs "
                                  "(mem://, file://, http(s)://, s3://, ipfs://) or views of them that sealing pins, "
                                  "and other Orders (their outputs: the Factory runs them first)")
    infra: InfraFunction = Field(default_factory=InfraFunction)
    structure: Structure = Field(default_factory=Structure)
    plant: Plant = Field(default_factory=Plant)
    name: str | None = None
    # Left out of the encoding while empty, so Orders without checks keep the CIDs they always had.
    checks: list[Check] = Field(default_factory=list, exclude_if=lambda checks: not checks)
    check_on_run: bool = Field(
        default=False, exclude_if=lambda on: not on,
        description="run `checks` on the output at the end of the run: one that fails fails the run and its BOM "
                    "is not recorded (not indexed, pinned or signed); left out of the encoding while False")
    output_uri: DataURI | None = Field(
        default=None, description="workers write each slice's result under this URI prefix (named as the slice); "
                                  "the store keeps only references to them")

    @field_validator("check_on_run")
    @classmethod
    def _checks_to_run(cls, on: bool, info: ValidationInfo) -> bool:
        if on and not info.data.get("checks", [None]):  # no "checks" in data: they failed, and say why
            raise ValueError("no checks to run: give the Order checks=[Check(...)] or leave check_on_run False")
        return on

    @model_validator(mode="after")
    def _takes_fits_split(self) -> Order:
        if self.function.takes == "table" and self.infra.split == "lines":
            raise ValueError("the function takes='table' but split='lines' cuts byte ranges, not tables: "
                             "split by 'row-groups' (or 'files', a whole Parquet file per slice)")
        return self

    @model_validator(mode="after")
    def _merge_of_references(self) -> Order:
        if self.output_uri is None:
            return self
        if self.infra.merge not in ("directory", "list"):
            raise ValueError("results written to output_uri are merged as a list of references: "
                             "infra.merge must be 'directory' (the default) or 'list'")
        if self.plant.replicas > 1:
            raise ValueError("replicas compare results kept in the store; output_uri needs plant.replicas == 1")
        return self

    def block(self) -> bytes:
        """The canonical DAG-CBOR encoding; only meaningful once sealed (code, lock, inputs are CIDs)."""
        return dagcbor.encode(self.model_dump(exclude_none=True))

    @property
    def sources(self) -> list[CID | Info | View]:
        """The inputs of a sealed Order: CIDs, pinned URIs and views."""
        unsealed = [f"{i.name or i.function.entry} (an Order)" if isinstance(i, Order) else str(i)
                    for i in self.inputs if not isinstance(i, (CID, Info, View))]
        if unsealed:
            raise CatsError(f"the Order is not sealed: inputs {', '.join(unsealed)} are local paths, unpinned URIs "
                            "or Orders")
        return [i for i in self.inputs if isinstance(i, (CID, Info, View))]

    @property
    def input_cids(self) -> list[CID]:
        """The sealed inputs that live in the store."""
        return [i for i in self.sources if isinstance(i, CID)]

    @property
    def cid(self) -> CID:
        return CID.hash(self.block(), DAG_CBOR)
