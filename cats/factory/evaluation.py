"""Evaluation keys: the result of a function on a slice, addressed by everything that determines it.

A slice's key is the CID of a DAG-CBOR block naming the code (its CID and entry), the parameters,
what the function takes, the slice's input (a CID and range, a URI at its pinned version and range,
a view, and the split's name for it), the environment (the lock's CID and the requirements), and the
rules of result encodings and seeds. What only says how or where a slice runs (the Plant's CPUs,
time limit, batching, confinement) is not in it. Two Orders sharing a slice share its key, so a
run looks its slices up in the run index and executes only those no finished run has computed.

Seeds derive from the key, so a seeded function gives the same result for the same evaluation
whatever Order it is part of.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cats.cas import dagcbor
from cats.cas.cid import CID, DAG_CBOR
from cats.order import Order
from cats.order.infra import Slice

# The version of the rules a key stands for: result encodings, seeds from keys. A change to either
# must change this, so no result made under other rules is reused.
RULES = "cats.evaluation/1"


def key(order: Order, piece: Slice) -> CID:
    """The evaluation key of one slice of a sealed Order."""
    fn = order.function
    assert fn.code is not None
    block: dict[str, Any] = {
        "rules": RULES, "code": fn.code, "entry": fn.entry, "params": fn.params, "takes": fn.takes,
        "input": piece.model_dump(mode="json", exclude_none=True),
        "lock": order.structure.lock, "requirements": list(order.structure.requirements),
    }
    return CID.hash(dagcbor.encode({k: v for k, v in block.items() if v is not None}), DAG_CBOR)


def seed(evaluation: CID) -> int:
    """The seed of a slice, from its key: the same evaluation gets the same seed in every Order."""
    return int.from_bytes(hashlib.sha256(bytes(evaluation)).digest()[:4], "big")


def reusable(order: Order) -> bool:
    """Whether an Order's slices may be taken from, and given to, other runs. Not a replicated run
    (its point is to execute each slice again, N times), nor one writing results to URIs (a result's
    reference names its URI)."""
    return order.plant.replicas == 1 and order.output_uri is None
