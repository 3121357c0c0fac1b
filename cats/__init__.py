"""CATs: Content-Addressable Transformers. Compute over data with verifiable, CID-addressed provenance.

The public API is re-exported here lazily, so `import cats` (and the CLI's start-up) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "CID": "cats.cas.cid",
    "Importer": "cats.cas.importer",
    "BlockStore": "cats.cas.store",
    "open_store": "cats.cas.store",
    "LocalStore": "cats.cas.store.local",
    "MemoryStore": "cats.cas.store.memory",
    "CatsError": "cats.errors",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from cats.cas.cid import CID
    from cats.cas.importer import Importer
    from cats.cas.store import BlockStore, open_store
    from cats.cas.store.local import LocalStore
    from cats.cas.store.memory import MemoryStore
    from cats.errors import CatsError


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cats' has no attribute {name!r}")
