"""A run's ledger: slice outcomes folded into the BOM as they arrive, resumed ones the same way.

Each outcome becomes its slice record at once, and the records go into record blocks as soon as a
block's range is complete (`RecordBlocks`); the invoice's totals are sums kept as outcomes come. Per
slice the driver keeps only what the merge needs (output, encoding, sizes), so its memory follows
the batches in flight, not the number of slices.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from cats.bom import DataUse, Moved, RecordBlocks
from cats.cas.cid import CID
from cats.cas.store import BlockStore
from cats.factory import evaluation
from cats.factory.ingress import Piece
from cats.factory.outcome import DataCounts, MovedCounts, SliceOutcome


class Result(NamedTuple):
    """What the merge and the run index need of a finished slice."""

    output: CID
    encoding: str
    size: int
    tsize: int


class Ledger:
    """The slices of one invocation of an Order (`pieces`, from its split), as they finish."""

    def __init__(self, store: BlockStore, keys: list[CID], pieces: list[Piece]) -> None:
        self.keys, self.pieces = keys, pieces  # each slice's evaluation key, whose seed it is given
        self.records = RecordBlocks(store, len(pieces))
        self.results: list[Result | None] = [None] * len(pieces)
        self.done = 0
        self.bytes_in = self.bytes_out = self.disagreed = 0
        self.nodes: set[str] = set()
        self.children: set[CID] = set()  # sub-Orders' BOMs
        self.envelopes: list[dict[str, Any]] = []  # the signatures the sub-Orders' drivers gave their BOMs
        self.data: DataCounts | None = None  # counters of the slices executed now, not of resumed ones
        self.moved: MovedCounts | None = None

    def add(self, outcome: SliceOutcome, executed: bool = True) -> None:
        """A successful slice: executed in this invocation, or resumed from an interrupted one, or
        reused from another run's evaluation."""
        i = outcome.index
        piece, assembly = self.pieces[i]
        record = outcome.record(piece, assembly, evaluation.seed(self.keys[i]))
        self.records.add(record)
        self.results[i] = Result(record.output, record.encoding, record.size, record.tsize)
        self.done += 1
        self.bytes_in += record.bytes_in
        self.bytes_out += record.size
        self.disagreed += record.agreed is False
        self.nodes.add(record.node)
        self.nodes.update(o.node for o in record.replicas or ())
        self.children.update(c.bom for c in record.children or ())
        self.envelopes += outcome.signatures or ()
        if executed and outcome.data is not None:
            self.data = outcome.data if self.data is None else self.data + outcome.data
        if executed and outcome.moved is not None:
            self.moved = outcome.moved if self.moved is None else self.moved + outcome.moved

    def has(self, index: int) -> bool:
        return self.results[index] is not None

    def finished(self) -> list[Result]:
        """Every slice's result, in slice order (all must have finished)."""
        results = [r for r in self.results if r is not None]
        assert len(results) == len(self.results), "slices are missing"
        return results

    def parts(self) -> list[dict[str, Any]]:
        """The merge's input: per slice, in slice order, its result, name and assembly record."""
        return [{"index": i, "output": str(r.output), "encoding": r.encoding, "size": r.size, "tsize": r.tsize,
                 "name": piece.name, "assembly": assembly}
                for i, (r, (piece, assembly)) in enumerate(zip(self.finished(), self.pieces, strict=True))]

    def data_use(self) -> DataUse | None:
        """The cache counters the workers reported for this invocation's batches; None if none read a URI."""
        c = self.data
        if c is None:
            return None
        return DataUse(hits=c.hits, misses=c.misses, bytes_in=c.bytes_in, bytes_out=c.bytes_out,
                       mean_fetch_s=c.fetch_s / c.misses if c.misses else 0.0)

    def moved_between(self, locality: bool, to_driver: int, placed: dict[str, int]) -> Moved:
        """What crossed between nodes: the workers' fetches of this invocation, and the driver's reads."""
        m = self.moved or MovedCounts(bytes=0, blocks=0)
        return Moved(locality=locality, placed=placed, between_nodes=m.bytes, blocks=m.blocks, to_driver=to_driver)
