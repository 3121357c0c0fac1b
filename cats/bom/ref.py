"""Reference blocks: what the store keeps for a result that workers wrote to a URI (`Order.output_uri`).

The bytes live at the URI; the block records where, at which version, and the CID the bytes hash
to, so a reader can fetch them and check them, and verification can compare a re-execution's CID
without writing anything. The content CID is text, not a link: its blocks are not in the store,
and a link would make every walk of the BOM (pins, gc, integrity) look for them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cats.cas import dagcbor
from cats.cas.cid import CID
from cats.cas.store import BlockStore
from cats.errors import CatsError, DecodeError


class OutputRef(BaseModel):
    """A result written to a URI: where, at which version, its size, the CID its bytes hash to, and
    its encoding. The store keeps this block in the result's place."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["cats.ref"] = "cats.ref"
    uri: str
    version: str | None = Field(description="the URI's version token right after the write")
    size: int
    content: str = Field(description="CIDv1 of the bytes as a UnixFS file (raw leaves), as text")
    encoding: str = Field(description="how the result was encoded (bytes, text, arrow, npy, dag-cbor)")

    def block(self) -> bytes:
        return dagcbor.encode(self.model_dump(exclude_none=True))


def load_ref(store: BlockStore, cid: CID) -> OutputRef:
    try:
        return OutputRef.model_validate(dagcbor.decode(store.get(cid)))
    except (DecodeError, ValueError) as e:
        raise CatsError(f"{cid} is not an output reference: {str(e).splitlines()[0]}") from None
