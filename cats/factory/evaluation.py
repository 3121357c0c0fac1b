"""Evaluation keys: the result of a function on a slice, addressed by everything that determines it.

A slice's key is the CID of a DAG-CBOR block naming the code (its CID and entry), the parameters,
what the function takes, the slice's input (a CID, a URI at its pinned version and range, a view,
and the split's name for it; a byte range of a stored file by the leaves that hold it, so bytes
appended to a file leave the keys of its earlier ranges as they were), the requirements, the
environment (the Python version, the lock's CID, the versions of the tools a command calls), the
variables confined code is given (`Plant.env`: declared, like the parameters, so a code-only key
keeps them), and the rules of result encodings and seeds. An Order whose Structure says
`reuse="code"` keys on code only: its keys leave the environment out but say so, so they never
match those of an Order keyed on its environment, and a different environment never reuses
silently. What only says how or where a slice runs (the Plant's CPUs, time limit, batching,
confinement) is not in it. Two Orders sharing a slice share its key, so a run looks its slices up
in the run index and executes only those no finished run has computed.

Seeds derive from the key, so a seeded function gives the same result for the same evaluation
whatever Order it is part of.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cats.cas import dagcbor, reader
from cats.cas.cid import CID, DAG_CBOR
from cats.cas.store import BlockStore
from cats.order import Order
from cats.order.infra import Slice
from cats.order.structure import Structure

# The version of the rules a key stands for: result encodings, seeds from keys. A change to either
# must change this, so no result made under other rules is reused.
RULES = "cats.evaluation/1"


def keys(order: Order, pieces: list[Slice], store: BlockStore) -> list[CID]:
    """The evaluation key of each slice of a sealed Order (whose inputs are in `store`)."""
    trees: dict[CID, reader.FileTree] = {}
    return [key(order, piece, trees, store) for piece in pieces]


def key(order: Order, piece: Slice, trees: dict[CID, reader.FileTree] | None = None,
        store: BlockStore | None = None) -> CID:
    """The evaluation key of one slice of a sealed Order; with the store, a byte range of a stored
    file is named by its leaves (`trees` keeps each file's walked tree between slices)."""
    fn = order.function
    assert fn.code is not None
    block: dict[str, Any] = {
        "rules": RULES, "code": fn.code, "entry": fn.entry, "params": fn.params, "takes": fn.takes,
        # a function taking its Slice may read the whole file: its input is the file, not the range
        "input": _input(piece, trees if trees is not None else {}, None if fn.takes == "slice" else store),
        "requirements": list(order.structure.requirements), "env": order.plant.env or None,
        **_environment(order.structure),
    }
    return CID.hash(dagcbor.encode({k: v for k, v in block.items() if v is not None}), DAG_CBOR)


def _environment(structure: Structure) -> dict[str, Any]:
    """What of the machine a result depends on, or on code only the mode itself (so such keys differ)."""
    if structure.reuse == "code":
        return {"reuse": "code"}
    return {"python": structure.python, "lock": structure.lock, "tools": structure.tools or None}


def _input(piece: Slice, trees: dict[CID, reader.FileTree], store: BlockStore | None) -> dict[str, Any]:
    described = piece.model_dump(mode="json", exclude_none=True)
    if store is None or piece.cid is None or piece.row_group is not None or \
            (piece.offset is None and piece.length is None):
        return described
    tree = trees.get(piece.cid)
    if tree is None:
        tree = trees[piece.cid] = reader.FileTree(store, piece.cid)
    start = piece.offset or 0
    end = tree.size if piece.length is None else min(tree.size, start + piece.length)
    held = tree.leaves(start, end)
    if not held:
        return described
    del described["cid"]
    described.pop("offset", None)
    return {**described, "leaves": [cid for _, cid in held], "skip": start - held[0][0], "length": end - start}


def seed(evaluation: CID) -> int:
    """The seed of a slice, from its key: the same evaluation gets the same seed in every Order."""
    return int.from_bytes(hashlib.sha256(bytes(evaluation)).digest()[:4], "big")


def reusable(order: Order) -> bool:
    """Whether an Order's slices may be taken from, and given to, other runs. Not a replicated run
    (its point is to execute each slice again, N times), nor one writing results to URIs (a result's
    reference names its URI)."""
    return order.plant.replicas == 1 and order.output_uri is None
