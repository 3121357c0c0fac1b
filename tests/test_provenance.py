"""`cats export-provenance`: a real run's BOM as a signed in-toto/SLSA attestation and as OpenLineage
RunEvents, each checked with its ecosystem's own library (in-toto-attestation's protobuf bindings,
openlineage-python's event classes), plus the DSSE signature and the error path.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import jobs
import pytest
from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import Statement
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.serde import Serde

from cats import factory
from cats.bom import load as load_bom
from cats.bom.signatures import Envelope
from cats.cas import reader
from cats.cas.store.memory import MemoryStore
from cats.identity import Identity
from cats.order import Function, Order
from cats.provenance import artifacts
from cats.provenance.openlineage import run_id

FILES = {"a.txt": b"alpha\n", "b.txt": b"bravo bravo\n", "c.txt": b"charlie\n"}


def _without_empty_facets(value: object) -> object:
    """openlineage-python writes `facets: {}` where we leave facets out; the spec makes them optional."""
    if isinstance(value, dict):
        return {k: _without_empty_facets(v) for k, v in value.items() if v != {}}
    if isinstance(value, list):
        return [_without_empty_facets(v) for v in value]
    return value


@pytest.fixture
def run(ray_session: str, cats_home: Path, tmp_path: Path):  # (result, store)
    """One small Order (upper-case each file of a folder) run on the session's Ray."""
    src = jobs.module(tmp_path, "fx_provenance_upper", """
        def shout(data):
            return data.upper()
    """)
    store = jobs.home_store(cats_home)
    inputs = jobs.add(store, jobs.folder(tmp_path, FILES))
    order = Order(function=Function(entry="fx_provenance_upper:shout", source=src, params={}), inputs=[inputs],
                  name="shout-provenance")
    return factory.run(order), store


@pytest.mark.slow
def test_in_toto(run, cli, tmp_path: Path) -> None:
    result, store = run
    bom = load_bom(store, result.bom)
    out = tmp_path / "att.json"
    r = cli("export-provenance", str(result.bom), "--format", "in-toto", "-o", out)
    assert r.code == 0, r.err

    envelope = Envelope.model_validate_json(out.read_bytes())
    assert envelope.payloadType == "application/vnd.in-toto+json"
    me = Identity.load()
    assert envelope.signers() == [me.did]
    payload = base64.b64decode(envelope.payload)
    tampered = envelope.model_copy(update={"payload": base64.b64encode(payload.replace(b"shout", b"SHOUT")).decode()})
    assert tampered.signers() == []

    # the Statement and every ResourceDescriptor parse into in-toto's protos (unknown fields refused) and validate
    doc = json.loads(payload)
    pb = json_format.ParseDict(doc, statement_pb2.Statement())
    Statement.copy_from_pb(pb).validate()
    assert pb.type == "https://in-toto.io/Statement/v1" and pb.predicate_type == "https://slsa.dev/provenance/v1"
    prov = json_format.ParseDict(doc["predicate"], provenance_pb2.Provenance())
    deps = prov.build_definition.resolved_dependencies
    for rd in [*pb.subject, *deps, *prov.run_details.byproducts]:
        ResourceDescriptor.copy_from_pb(rd).validate()

    # subjects: each output file by its path, sha256 of its bytes, its CID
    outputs = {name: cid for name, cid, _ in reader.entries(store, result.output)}
    assert sorted(s.name for s in pb.subject) == sorted(FILES)
    for s in pb.subject:
        data = b"".join(reader.read(store, outputs[s.name]))
        assert data == FILES[s.name].upper()
        assert s.digest["sha256"] == hashlib.sha256(data).hexdigest()
        assert s.uri == f"ipfs://{outputs[s.name]}" and s.digest["cid"] == str(outputs[s.name].to_v1())

    # buildDefinition and runDetails
    assert prov.build_definition.external_parameters["order"] == str(bom.order)
    assert prov.build_definition.external_parameters["entry"] == "fx_provenance_upper:shout"
    assert {d.name: d.uri for d in deps} == {"input": f"ipfs://{bom.inputs[0]}", "code": f"ipfs://{bom.code}",
                                             "lock": f"ipfs://{bom.structure.lock}"}
    lock = next(d for d in deps if d.name == "lock")
    assert lock.digest["sha256"] == hashlib.sha256(store.get(bom.structure.lock)).hexdigest()
    details = prov.run_details
    assert details.builder.id == me.did
    assert details.metadata.invocation_id == str(result.bom)
    assert details.metadata.started_on.ToJsonString()[:19] == bom.invoice.started[:19]
    assert details.metadata.finished_on.ToJsonString()[:19] == bom.invoice.finished[:19]
    assert details.byproducts[0].digest["sha256"] == hashlib.sha256(store.get(result.bom)).hexdigest()

    # stdout gives the same Statement (the signature is deterministic: Ed25519)
    again = cli("export-provenance", str(result.bom), "-f", "in-toto")
    assert again.code == 0 and json.loads(again.out) == json.loads(out.read_text())


@pytest.mark.slow
def test_openlineage(run, cli) -> None:
    result, store = run
    bom = load_bom(store, result.bom)
    r = cli("export-provenance", str(result.bom), "--format", "openlineage")
    assert r.code == 0, r.err
    start, complete = (json.loads(line) for line in r.out.splitlines())

    # rebuilt with openlineage-python's classes (which validate times, UUIDs, URIs), they serialize to the same JSON
    for doc in (start, complete):
        event = RunEvent(eventType=RunState(doc["eventType"]), eventTime=doc["eventTime"], producer=doc["producer"],
                         run=Run(runId=doc["run"]["runId"]), job=Job(**doc["job"]),
                         inputs=[InputDataset(**d) for d in doc["inputs"]],
                         outputs=[OutputDataset(**d) for d in doc["outputs"]])
        assert _without_empty_facets(Serde.to_dict(event)) == doc

    assert start["eventType"] == "START" and complete["eventType"] == "COMPLETE"
    assert start["run"]["runId"] == complete["run"]["runId"] == run_id(result.bom)
    assert start["job"] == complete["job"] == {"namespace": "cats", "name": "shout-provenance"}
    assert start["inputs"] == complete["inputs"] == [{"namespace": "ipfs", "name": str(bom.inputs[0])}]
    assert complete["outputs"] == [{"namespace": "ipfs", "name": str(result.output)}]
    assert start["eventTime"][:19] == bom.invoice.started[:19]
    assert complete["eventTime"][:19] == bom.invoice.finished[:19]


def test_errors(cli, cats_home: Path) -> None:
    unknown = "bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
    for fmt in ("in-toto", "openlineage"):
        cli("export-provenance", unknown, "-f", fmt).error_line(unknown)
        cli("export-provenance", "not-a-cid", "-f", fmt).error_line("not-a-cid")
    (cats_home.parent / "plain.txt").write_bytes(b"just bytes")
    plain = str(jobs.add(jobs.home_store(cats_home), cats_home.parent / "plain.txt"))
    for fmt in ("in-toto", "openlineage"):
        cli("export-provenance", plain, "-f", fmt).error_line(plain, "not a BOM")
    assert not (cats_home / "identity").exists()  # a failed export makes no key


def test_output_files_by_path(tmp_path: Path) -> None:
    """A nested output folder gives one subject per file, named by its path, hashed over its bytes."""
    store = MemoryStore()
    files = {"top.txt": b"top\n", "sub/inner.txt": b"inner\n", "sub/deeper/leaf.bin": bytes(range(256)) * 1000}
    for name, data in files.items():
        (tmp_path / "out" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "out" / name).write_bytes(data)
    folder = jobs.add(store, tmp_path / "out")
    found = {a.path: a.sha256 for a in artifacts(store, folder)}
    assert found == {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    [whole] = artifacts(store, folder, expand=False)
    assert (whole.path, whole.cid, whole.sha256) == ("", folder, None)
