"""A BOM as OpenLineage RunEvents: a START and a COMPLETE event, one JSON document a line.

The run id is a UUID derived from the BOM CID (so exporting twice gives the same run, and a
lineage server merges rather than duplicates it); the job is the Order, named by its name or CID;
datasets in the store are named by CID in the `ipfs` namespace, pinned URIs by the URI in the
namespace of its scheme and host, as OpenLineage's naming convention asks.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import urlsplit

from cats import __version__
from cats.bom import BOM
from cats.cas.cid import CID
from cats.cas.store import BlockStore
from cats.data import Info
from cats.data.views import View
from cats.order import label
from cats.provenance import PROJECT_URI, load, rfc3339

SPEC = "https://openlineage.io/spec/2-0-2/OpenLineage.json"
SCHEMA_URL = f"{SPEC}#/$defs/RunEvent"
NAMESPACE = "cats"
_RUN_IDS = uuid.uuid5(uuid.NAMESPACE_URL, f"{PROJECT_URI}:bom")


def run_id(bom: CID) -> str:
    """The run's UUID: a name-based UUID (v5) of the BOM CID's v1 text, the same wherever it is derived."""
    return str(uuid.uuid5(_RUN_IDS, str(bom.to_v1())))


def _dataset(item: CID | Info | View) -> dict[str, Any]:
    if isinstance(item, CID):
        return {"namespace": "ipfs", "name": str(item)}
    parts = urlsplit(item.uri)
    return {"namespace": f"{parts.scheme}://{parts.netloc}", "name": label(item)}


def events(bom_cid: CID, bom: BOM) -> list[dict[str, Any]]:
    """START (inputs known) and COMPLETE (inputs and outputs) RunEvents, JSON-ready."""
    job = {"namespace": NAMESPACE, "name": bom.name or str(bom.order)}
    run = {"runId": run_id(bom_cid)}
    inputs = [_dataset(i) for i in bom.inputs]
    common = {"producer": f"{PROJECT_URI}:{__version__}", "schemaURL": SCHEMA_URL, "run": run, "job": job,
              "inputs": inputs}
    return [{"eventType": "START", "eventTime": rfc3339(bom.invoice.started), **common, "outputs": []},
            {"eventType": "COMPLETE", "eventTime": rfc3339(bom.invoice.finished), **common,
             "outputs": [_dataset(o) for o in bom.outputs]}]


def lines(store: BlockStore, bom: str | CID) -> str:
    """The events of the BOM `bom` names, as JSON lines."""
    bom_cid, record = load(store, bom)
    return "".join(json.dumps(e, sort_keys=True) + "\n" for e in events(bom_cid, record))
