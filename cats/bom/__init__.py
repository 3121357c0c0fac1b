"""Bills of materials: the DAG-CBOR record of a run, linking everything it used and made.

A BOM links the Order, its code, its environment (lock, IaC), each input and output, the slice
records (in blocks of up to 1,000, so a BOM block stays small whatever the slice count), the BOMs
that produced its inputs, and an invoice. Its links are CID links any IPLD tool can walk.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, field_validator

from cats.bom.child import Child
from cats.cas import dagcbor
from cats.cas.cid import CID, DAG_CBOR
from cats.cas.dag import put_cbor
from cats.cas.fields import CIDField
from cats.cas.store import BlockStore
from cats.errors import CatsError, DecodeError
from cats.order import Source
from cats.order.infra import Slice
from cats.order.structure import Structure

RECORDS_PER_BLOCK = 1000


class ReplicaOutcome(BaseModel):
    """What one replica of a slice said, so a disagreement names who said what."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    node: str
    worker: int | None = Field(default=None, description="pid of the worker process")
    output: CIDField | None = Field(default=None, description="its output; None when it failed")
    error: str | None = Field(default=None, description="last line of its error, when it failed")


class Vouched(BaseModel):
    """A trusted peer's evaluation a run took instead of executing the slice: the BOM whose run computed it
    and the peer whose signature over that BOM was checked. The BOM is named by its CID's text, not linked:
    only the result's blocks were fetched, so a link would make this BOM's DAG reach a lineage that is not here."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bom: str = Field(description="CID of the peer's BOM that computed this evaluation")
    signer: str = Field(description="the did:key, trusted here, that signed that BOM")

    @field_validator("bom")
    @classmethod
    def _cid(cls, text: str) -> str:
        return str(CID.parse(text))


class SliceRecord(BaseModel):
    """What one slice did: the Slice it read, the output CID and how the result is encoded
    (`bytes`, `text`, `arrow`, `npy`, `dag-cbor`, or `ref` for a result written to a URI), the
    split's assembly record, the seed it was given, who ran it, how long, in how many attempts, and
    what it printed (links to the tail of each stream, the DAG walk keeps them with the BOM)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int
    input: Slice
    output: CIDField
    encoding: str
    size: int
    tsize: int
    assembly: dict[str, JsonValue] = Field(default_factory=dict)
    seed: int
    node: str
    duration_s: float
    attempts: int
    bytes_in: int
    # None for a run with one replica, so such records keep the encoding they had before replication
    replicas: list[ReplicaOutcome] | None = Field(default=None, description="every replica, in replica order")
    agreed: bool | None = Field(default=None, description="False when a majority won over dissent")
    children: list[Child] | None = Field(default=None, description="sub-Orders this slice submitted, in order")
    reused_from: CIDField | None = Field(default=None, description="the BOM of the run that computed this "
                                         "evaluation, when this run took its result instead of executing it")
    vouched: Vouched | None = Field(default=None, description="a trusted peer's evaluation taken instead of "
                                    "executing the slice: its BOM and signer")
    # None for a slice that printed nothing, so its record keeps the encoding it had before logs were kept
    stdout: CIDField | None = Field(default=None, description="the last MiB the slice printed to stdout, a UnixFS "
                                    "file")
    stderr: CIDField | None = Field(default=None, description="the last MiB the slice printed to stderr, a UnixFS "
                                    "file")

    @property
    def executed(self) -> bool:
        """Whether the run computed this slice itself, alone: not taken from another run, submitting no
        sub-Orders, with one replica; only such a record can vouch for a slice another run takes."""
        return self.reused_from is None and self.vouched is None and not self.children and not self.replicas


class DataUse(BaseModel):
    """What the workers' data caches did for the slices executed in this invocation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hits: int
    misses: int
    bytes_in: int = Field(description="bytes fetched from sources")
    bytes_out: int = Field(description="bytes handed to the function, from sources or the cache")
    mean_fetch_s: float = Field(description="mean latency of a fetch from a source (a miss)")


class Moved(BaseModel):
    """Bytes that crossed between the nodes of a cluster whose nodes keep their own stores."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    locality: bool = Field(description="slices were sent to nodes holding their inputs")
    placed: dict[str, int] = Field(description="slices run next to each store (cats-store:<name>)")
    between_nodes: int = Field(description="bytes workers fetched from other nodes' stores")
    blocks: int = Field(description="blocks workers fetched from other nodes' stores")
    to_driver: int = Field(description="bytes the driver read from other nodes' stores: blocks the split looked "
                                       "at, and results made elsewhere and inputs it lacked, copied so the whole "
                                       "BOM DAG is in its store")


class Federation(BaseModel):
    """A run whose parts ran on the nodes holding their inputs, each signing its own BOM (the run's
    `children`), merged here from the parts' output folders: who ran which part, and what crossed the
    borders between the nodes and the submitter."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    parts: list[Child] = Field(description="each node's part: its BOM and sub-Order, and the node that signed it")
    pushed: int = Field(description="block bytes the submitter sent the nodes: sub-Orders, code, lock, IaC")
    pulled: int = Field(description="block bytes the submitter fetched: the parts' BOMs, slice records and "
                                    "output folder blocks (never a file's bytes)")
    data: int = Field(description="input and result bytes that crossed a border: inputs a node had to fetch "
                                  "from another, results fetched to merge (0 when every slice ran where its "
                                  "file is)")


def timestamp(t: float) -> str:
    """An invoice's time (`started`, `finished`): UTC ISO 8601 to the millisecond, however the run was made."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


class Invoice(BaseModel):
    """What a run cost and where it ran: times, slices run and resumed, bytes in and out, the driver
    and the nodes, the CATs version, and the data caches' and the cluster's traffic."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    started: str
    finished: str
    duration_s: float
    slices: int
    executed: int = Field(description="slices run in this invocation")
    resumed: int = Field(description="slices taken from an earlier, interrupted run of the same Order")
    reused: int | None = Field(default=None, description="slices whose evaluation a finished run of any Order "
                               "computed: not executed, their records name that run's BOM (`reused_from`, or "
                               "`vouched` for a trusted peer's)")
    bytes_in: int
    bytes_out: int
    executor: str = Field(description="host and Ray node of the driver")
    nodes: list[str] = Field(description="nodes that ran slices")
    cats_version: str
    data: DataUse | None = Field(default=None, description="the data caches' counters, when slices read URIs")
    moved: Moved | None = Field(default=None, description="on a cluster of node stores: what crossed between nodes")
    confined: bool | None = Field(default=None, description="true when the code ran confined (a sandbox of its own)")
    federation: Federation | None = Field(default=None, description="a federated run: its parts, run on the nodes "
                                          "holding their inputs, and what crossed borders")


class BOM(BaseModel):
    """The bill of materials of a run, a DAG-CBOR block: links to the Order, its code and
    environment, every input and output, the slice records, the BOMs that made its inputs
    (`parents`) and its sub-Orders' (`children`), and the invoice. Its CID is the handle for the
    whole lineage. `output_encoding` says how to decode the output: a result encoding, or
    `unixfs-directory` (a folder of the slices' results) or `dag-cbor-list` (a list of their CIDs)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["cats.bom"] = "cats.bom"
    version: Literal[1] = 1
    name: str | None = None
    order: CIDField
    code: CIDField
    structure: Structure = Field(description="the sealed environment: python, lock, requirements, IaC")
    inputs: list[Source] = Field(description="CIDs, and URIs pinned at their version")
    outputs: list[CIDField]
    output_encoding: str
    slices: list[CIDField] = Field(description="blocks of slice records, in slice order")
    parents: list[CIDField] = Field(default_factory=list, description="BOMs that produced the inputs")
    # Left out of the encoding while empty, so BOMs without sub-Orders keep the CIDs they always had.
    children: list[CIDField] = Field(default_factory=list, exclude_if=lambda children: not children,
                                     description="BOMs of the sub-Orders its slices submitted")
    invoice: Invoice

    def block(self) -> bytes:
        return dagcbor.encode(self.model_dump(exclude_none=True))


class RecordBlocks:
    """Slice records written into record blocks as they come, in any order: a block is stored as
    soon as every record of its range is in, and only its CID is kept, so a writer holds the
    records of unfinished ranges only, however many slices the run has."""

    def __init__(self, store: BlockStore, total: int) -> None:
        self.store, self.total = store, total
        self._held: dict[int, dict[int, SliceRecord]] = {}  # block -> slice index -> record
        self._cids: list[CID | None] = [None] * -(-total // RECORDS_PER_BLOCK)

    def add(self, record: SliceRecord) -> None:
        if not 0 <= record.index < self.total:
            raise CatsError(f"slice record {record.index} is outside the run's {self.total} slices")
        k = record.index // RECORDS_PER_BLOCK
        held = self._held.setdefault(k, {})
        held[record.index] = record
        if len(held) == self._size(k):
            del self._held[k]
            self._cids[k] = put_cbor(self.store, [held[i].model_dump(exclude_none=True) for i in sorted(held)])

    def _size(self, k: int) -> int:
        return min(RECORDS_PER_BLOCK, self.total - k * RECORDS_PER_BLOCK)

    def blocks(self) -> list[CID]:
        """The record blocks, in slice order; every slice must have its record."""
        cids = [cid for cid in self._cids if cid is not None]
        if len(cids) < len(self._cids):
            k = self._cids.index(None)
            first, size = k * RECORDS_PER_BLOCK, self._size(k)
            raise CatsError(f"slices {first} to {first + size - 1} have {len(self._held.get(k, {}))} records of "
                            f"{size}: the record blocks are incomplete")
        return cids


def write_records(store: BlockStore, records: list[SliceRecord]) -> list[CID]:
    """The record blocks of a run's records (every slice's, any order)."""
    writer = RecordBlocks(store, len(records))
    for record in records:
        writer.add(record)
    return writer.blocks()


def load(store: BlockStore, cid: CID) -> BOM:
    if cid.codec != DAG_CBOR:
        raise CatsError(f"{cid} is {cid.codec_name}, not a BOM (dag-cbor)")
    try:
        return BOM.model_validate(dagcbor.decode(store.get(cid)))
    except DecodeError as e:
        raise CatsError(f"{cid} is not a BOM: {e}") from None
    except ValueError as e:  # pydantic's ValidationError
        raise CatsError(f"{cid} is not a BOM: {str(e).splitlines()[0]}") from None


_RECORD_BLOCK = TypeAdapter(list[SliceRecord])


def records(store: BlockStore, bom: BOM) -> Iterator[SliceRecord]:
    for block in bom.slices:
        yield from record_block(store, block)


def record_block(store: BlockStore, cid: CID) -> list[SliceRecord]:
    """The records one of a BOM's record blocks holds."""
    return _RECORD_BLOCK.validate_python(dagcbor.decode(store.get(cid)))
