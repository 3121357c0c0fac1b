"""Orders: what to run (Function), how to slice and merge (InfraFunction), in what environment
(Structure), where (Plant), over which inputs. One pydantic schema, canonically encoded as
DAG-CBOR, so a sealed Order has a CID.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from cats.cas import dagcbor
from cats.cas.cid import CID, DAG_CBOR
from cats.cas.fields import CIDField
from cats.errors import CatsError
from cats.order.checks import Check
from cats.order.function import Function
from cats.order.infra import InfraFunction, Slice
from cats.order.structure import Structure
from cats.plant import Plant

__all__ = ["Order", "Function", "InfraFunction", "Slice", "Structure", "Plant"]


class Order(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    function: Function
    inputs: list[CIDField | Path] = Field(
        min_length=1, description="CIDs, or local files and folders (pathlib.Path) that sealing adds")
    infra: InfraFunction = Field(default_factory=InfraFunction)
    structure: Structure = Field(default_factory=Structure)
    plant: Plant = Field(default_factory=Plant)
    name: str | None = None
    # Left out of the encoding while empty, so Orders without checks keep the CIDs they always had.
    checks: list[Check] = Field(default_factory=list, exclude_if=lambda checks: not checks)

    def block(self) -> bytes:
        """The canonical DAG-CBOR encoding; only meaningful once sealed (code, lock, inputs are CIDs)."""
        return dagcbor.encode(self.model_dump(exclude_none=True))

    @property
    def input_cids(self) -> list[CID]:
        """The inputs of a sealed Order."""
        paths = [str(i) for i in self.inputs if not isinstance(i, CID)]
        if paths:
            raise CatsError(f"the Order is not sealed: inputs {', '.join(paths)} are local paths")
        return [i for i in self.inputs if isinstance(i, CID)]

    @property
    def cid(self) -> CID:
        return CID.hash(self.block(), DAG_CBOR)
