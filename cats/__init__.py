"""CATs: Content-Addressable Transformers. Compute over data with verifiable, CID-addressed provenance.

    import cats

    order = cats.Order(function=cats.Function.of(shout), inputs=[Path("texts")])
    run = cats.run(order)                      # on the embedded local Ray; run.bom names everything
    cats.read(run.bom)                         # the output, decoded as the run recorded it
    cats.verify(run.bom).verified              # re-executed from the store alone

The public API is re-exported here lazily (each name imports its module on first use), so
`import cats` (and the CLI's start-up, and every Ray worker's) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    # an Order: what to run, over which inputs, how sliced and merged, in what environment, where
    "Order": "cats.order",
    "Function": "cats.order.function",
    "InfraFunction": "cats.order.infra",
    "Slice": "cats.order.infra",
    "Split": "cats.order.infra",
    "Merge": "cats.order.infra",
    "Structure": "cats.order.structure",
    "Plant": "cats.plant",
    "Check": "cats.order.checks",
    # running it here or on another node, reading what it made, verifying it
    "run": "cats.factory.driver",
    "Run": "cats.factory.outcome",
    "submit": "cats.api",
    "Submitted": "cats.mesh.client",
    "federate": "cats.api",
    "Federated": "cats.mesh.federate",
    "read": "cats.factory.outputs",
    "BOM": "cats.bom",
    "verify": "cats.api",
    "Report": "cats.verification.report",
    "Home": "cats.bom.home",
    # the content store
    "CID": "cats.cas.cid",
    "Importer": "cats.cas.importer",
    "BlockStore": "cats.cas.store",
    "open_store": "cats.cas.store",
    "LocalStore": "cats.cas.store.local",
    "MemoryStore": "cats.cas.store.memory",
    # the errors callers tell apart (every one is a CatsError)
    "CatsError": "cats.errors",
    "InvalidCID": "cats.errors",
    "DecodeError": "cats.errors",
    "BlockNotFound": "cats.errors",
    "IntegrityError": "cats.errors",
    "PathNotFound": "cats.errors",
    "DataError": "cats.errors",
    "DataNotFound": "cats.errors",
    "DataForbidden": "cats.errors",
    "DataTimeout": "cats.errors",
    "DataUnavailable": "cats.errors",
    "DataIntegrityError": "cats.errors",
    "ViewError": "cats.errors",
    "SliceFailed": "cats.errors",
    "StageFailed": "cats.errors",
    "ChildFailed": "cats.errors",
    "MeshError": "cats.errors",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from cats.api import federate, submit, verify
    from cats.bom import BOM
    from cats.bom.home import Home
    from cats.cas.cid import CID
    from cats.cas.importer import Importer
    from cats.cas.store import BlockStore, open_store
    from cats.cas.store.local import LocalStore
    from cats.cas.store.memory import MemoryStore
    from cats.errors import (
        BlockNotFound,
        CatsError,
        ChildFailed,
        DataError,
        DataForbidden,
        DataIntegrityError,
        DataNotFound,
        DataTimeout,
        DataUnavailable,
        DecodeError,
        IntegrityError,
        InvalidCID,
        MeshError,
        PathNotFound,
        SliceFailed,
        StageFailed,
        ViewError,
    )
    from cats.factory.driver import run
    from cats.factory.outcome import Run
    from cats.factory.outputs import read
    from cats.mesh.client import Submitted
    from cats.mesh.federate import Federated
    from cats.order import Order
    from cats.order.checks import Check
    from cats.order.function import Function
    from cats.order.infra import InfraFunction, Merge, Slice, Split
    from cats.order.structure import Structure
    from cats.plant import Plant
    from cats.verification.report import Report


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'cats' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
