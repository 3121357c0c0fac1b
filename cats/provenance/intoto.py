"""A BOM as an in-toto Statement v1 with a SLSA Provenance v1 predicate, in a signed DSSE envelope.

Subjects are the output files, named by their path in the output folder. Each ResourceDescriptor
carries `uri: ipfs://<CID>` and a DigestSet with `sha256` (lowercase hex of the file's bytes, for
files) and `cid` (the CIDv1 text, base32; immutable because it is itself a multihash of the DAG),
which consumers that do not know `cid` ignore, as the DigestSet spec asks. The envelope reuses the
DSSE code that signs BOMs, with in-toto's payload type.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from cats.bom import BOM
from cats.bom.signatures import Envelope, Signature, pae
from cats.cas.cid import CID
from cats.cas.store import BlockStore
from cats.data import Info
from cats.data.views import View
from cats.identity import Identity
from cats.order import label
from cats.provenance import PROJECT_URI, Artifact, artifacts, load, order_of, rfc3339

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
BUILD_TYPE = f"{PROJECT_URI}:order:v1"


def _descriptor(item: Artifact, name: str | None = None) -> dict[str, Any]:
    digest = {"cid": str(item.cid.to_v1())}
    if item.sha256 is not None:
        digest["sha256"] = item.sha256
    rd: dict[str, Any] = {"uri": f"ipfs://{item.cid}", "digest": digest}
    if name:
        rd["name"] = name
    return rd


def _source(store: BlockStore, source: CID | Info | View) -> dict[str, Any]:
    """An input: a CID with its digests, or a pinned URI named by its version (its bytes are not in the store)."""
    if isinstance(source, CID):
        return _descriptor(next(artifacts(store, source, expand=False)), "input")
    annotations: dict[str, Any] = {"size": source.size}
    if source.version is not None:
        annotations["version"] = source.version
    if isinstance(source, View):
        annotations["view"] = label(source)
    return {"uri": source.uri, "name": "input", "annotations": annotations}


def statement(store: BlockStore, bom_cid: CID, bom: BOM, builder: str) -> dict[str, Any]:
    """The Statement for a BOM, as JSON-ready data; `builder` is the DID of the node that attests it."""
    order = order_of(store, bom)
    subjects = [_descriptor(a, a.path or str(a.cid)) for out in bom.outputs for a in artifacts(store, out)]
    s = bom.structure
    deps = [_source(store, i) for i in bom.inputs]
    deps.append(_descriptor(next(artifacts(store, bom.code, expand=False)), "code"))
    deps += [_descriptor(next(artifacts(store, cid, expand=False)), name)
             for name, cid in (("lock", s.lock), ("iac", s.iac)) if cid is not None]
    external: dict[str, Any] = {"order": str(bom.order), "entry": order.function.entry}
    if order.function.params:
        external["params"] = order.function.params
    if bom.name:
        external["name"] = bom.name
    internal: dict[str, Any] = {"python": s.python, "outputEncoding": bom.output_encoding,
                                "slices": bom.invoice.slices, "executor": bom.invoice.executor,
                                "nodes": bom.invoice.nodes}
    if s.requirements:
        internal["requirements"] = s.requirements
    if s.command is not None:
        internal["command"] = s.command
    predicate = {
        "buildDefinition": {"buildType": BUILD_TYPE, "externalParameters": external,
                            "internalParameters": internal, "resolvedDependencies": deps},
        "runDetails": {
            "builder": {"id": builder, "version": {"cats": bom.invoice.cats_version}},
            "metadata": {"invocationId": str(bom_cid), "startedOn": rfc3339(bom.invoice.started),
                         "finishedOn": rfc3339(bom.invoice.finished)},
            "byproducts": [_descriptor(next(artifacts(store, bom_cid)), "bom")],
        },
    }
    return {"_type": STATEMENT_TYPE, "subject": subjects, "predicateType": PREDICATE_TYPE, "predicate": predicate}


def envelope(store: BlockStore, bom: str | CID, identity: Identity | None = None) -> Envelope:
    """The signed DSSE envelope of the BOM's Statement; builder and signer are this node's DID.

    The identity (default: this node's) is loaded only once the BOM is, so a mistyped CID makes no key.
    """
    bom_cid, record = load(store, bom)
    identity = identity or Identity.load()
    payload = json.dumps(statement(store, bom_cid, record, identity.did), sort_keys=True,
                         separators=(",", ":")).encode()
    sig = base64.b64encode(identity.sign(pae(PAYLOAD_TYPE, payload))).decode()
    return Envelope(payloadType=PAYLOAD_TYPE, payload=base64.b64encode(payload).decode(),
                    signatures=[Signature(keyid=identity.did, sig=sig)])
