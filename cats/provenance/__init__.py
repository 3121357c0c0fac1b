"""Exports of a BOM's provenance into other ecosystems' formats: in-toto/SLSA and OpenLineage.

A BOM already links everything a run used and made by CID; these modules only re-state it in the
vocabularies other tools read (policy engines, lineage servers), so nothing here is a second source
of truth. Dependencies point one way: this package reads bom, cas and identity; only the CLI imports it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from cats.bom import BOM
from cats.bom import load as load_bom
from cats.cas import dagcbor, reader
from cats.cas.cid import CID, DAG_PB, RAW
from cats.cas.store import BlockStore
from cats.errors import CatsError
from cats.order import Order

__all__ = ["PROJECT_URI", "Artifact", "artifacts", "load", "order_of", "rfc3339"]

# Names CATs as a builder type and a metadata producer. Both specs want a URI that need not resolve;
# a URN claims no web domain the project does not own.
PROJECT_URI = "urn:cats"


@dataclass(frozen=True, slots=True)
class Artifact:
    """One file of an output or dependency: its path inside it ('' for the top), CID and sha256 (None: a folder)."""

    path: str
    cid: CID
    sha256: str | None


def load(store: BlockStore, cid: str | CID) -> tuple[CID, BOM]:
    """The BOM a CID names; CatsError naming the CID when it is unknown, malformed or not a BOM."""
    try:
        bom_cid = cid if isinstance(cid, CID) else CID.parse(cid)
    except ValueError as e:
        raise CatsError(f"{cid} is not a CID: {e}") from None
    if not store.has(bom_cid):
        raise CatsError(f"BOM {bom_cid} is not in the store")
    return bom_cid, load_bom(store, bom_cid)


def order_of(store: BlockStore, bom: BOM) -> Order:
    """The sealed Order the BOM ran, for what the BOM does not copy (the entry, params)."""
    return Order.model_validate(dagcbor.decode(store.get(bom.order)))


def _sha256(store: BlockStore, cid: CID) -> str:
    """sha256 of the bytes a reader of `cid` gets: a UnixFS file's content, any other block as is."""
    h = hashlib.sha256()
    if cid.codec in (DAG_PB, RAW):
        for chunk in reader.read(store, cid):
            h.update(chunk)
    else:
        h.update(store.get(cid))
    return h.hexdigest()


def artifacts(store: BlockStore, cid: CID, *, expand: bool = True, prefix: str = "") -> Iterator[Artifact]:
    """The files under `cid` (each with its path and sha256), or, unexpanded, a folder as one Artifact.

    Folders are expanded for outputs, which are what an attestation is about; a dependency folder
    (code, IaC, a large input) is named by its CID alone, which already fixes every byte under it.
    """
    if not reader.is_folder(store, cid):
        yield Artifact(prefix, cid, _sha256(store, cid))
    elif not expand:
        yield Artifact(prefix, cid, None)
    else:
        for name, child, _ in reader.entries(store, cid):
            yield from artifacts(store, child, prefix=f"{prefix}/{name}" if prefix else name)


def rfc3339(stamp: str) -> str:
    """An invoice time as RFC 3339 in UTC with a `Z`, the form both specs' validators accept."""
    t = datetime.fromisoformat(stamp).astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
