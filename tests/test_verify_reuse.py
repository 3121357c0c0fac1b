"""`cats verify` and reused slices: re-execution runs them like any other (the reusing BOM stands on its
own), and `--integrity` checks each slice's source BOM: here and intact, signed by this node or a
trusted peer, and holding a record of its own execution giving that output.

One module-wide home holds run A (3 files) and run B (the same 3 files and one more: 3 slices reused
from A, 1 executed); each test verifies a copy of it as its CATS_HOME.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jobs
import pytest

from cats import api, factory
from cats.bom import BOM, SliceRecord, write_records
from cats.bom import load as load_bom
from cats.bom import records as bom_records
from cats.bom.signatures import Envelope, Signatures, sign
from cats.cas.cid import CID, DAG_CBOR, RAW
from cats.cas.store.local import LocalStore
from cats.identity import Identity
from cats.identity.trust import Trust
from cats.order import Function, Order
from cats.verification.report import Report, SourceBOM

pytestmark = pytest.mark.usefixtures("ray_session")

JOB = """
def stamp(data, seed):
    return data.upper() + b"#%d" % seed
"""


@dataclass
class Reused:
    home: Path
    a: factory.Run
    b: factory.Run
    recs: list[SliceRecord]  # B's


@pytest.fixture(scope="module")
def reused(ray_session: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reused]:
    root = tmp_path_factory.mktemp("vr")
    home = root / "home"
    files = {f"f{i}.txt": f"file {i}\n".encode() for i in range(4)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CATS_HOME", str(home))
        mp.delenv("CATS_STORE", raising=False)
        mp.delenv("CATS_IPFS_API", raising=False)
        fn = Function(entry="vr_job:stamp", source=jobs.module(root, "vr_job", JOB))
        a = factory.run(Order(function=fn, inputs=[jobs.folder(root, dict(list(files.items())[:3]), "v1")]))
        b = factory.run(Order(function=fn, inputs=[jobs.folder(root, files, "v2")]))
    store = jobs.home_store(home)
    recs = list(bom_records(store, load_bom(store, b.bom)))
    assert [r.reused_from for r in recs] == [a.bom] * 3 + [None]
    yield Reused(home, a, b, recs)


def _home(reused: Reused, cats_home: Path) -> LocalStore:
    """A copy of the module's home as this test's CATS_HOME (store, signatures, identity)."""
    shutil.copytree(reused.home, cats_home)
    return jobs.home_store(cats_home)



def _put_bom(store: LocalStore, bom: BOM) -> CID:
    block = bom.block()
    cid = CID.hash(block, DAG_CBOR)
    store.put(cid, block)
    return cid


def _forge(store: LocalStore, reused: Reused, index: int, source: CID) -> CID:
    """A BOM written straight into the store: B with slice `index` claiming to be reused from `source`."""
    recs = [r.model_copy(update={"reused_from": source}) if r.index == index else r for r in reused.recs]
    return _put_bom(store, load_bom(store, reused.b.bom).model_copy(update={"slices": write_records(store, recs)}))


def _problems(report: Report) -> list[tuple[str, int | None, str | None]]:
    return [(p.reason, p.slice, p.cid) for p in report.problems]


# -- re-execution: a reused slice is re-executed like any other -------------------------------------
def test_reexecution_covers_reused_slices(reused: Reused, cats_home: Path) -> None:
    store = _home(reused, cats_home)
    report = api.verify(reused.b.bom)
    assert report.verified, report.problems
    assert [(s.index, s.ok) for s in report.slices] == [(i, True) for i in range(4)]
    assert report.reused_from == []  # re-execution does not lean on the source BOM ...
    store.delete(reused.a.bom)
    assert api.verify(reused.b.bom).verified  # ... so B verifies without it: it stands on its own

    forged = b"not what slice 1 gives\n"
    forged_cid = CID.hash(forged, RAW)
    store.put(forged_cid, forged)
    recs = [r.model_copy(update={"output": forged_cid}) if r.index == 1 else r for r in reused.recs]
    claimed = _put_bom(store, load_bom(store, reused.b.bom).model_copy(update={"slices": write_records(store, recs)}))
    report = api.verify(claimed)  # a reused record naming another output
    assert not report.verified
    assert [(s.index, s.reason) for s in report.slices if not s.ok] == [(1, "output-differs")]

    jobs.tamper(store, reused.recs[0].output)  # the reused output block itself
    report = api.verify(reused.b.bom)
    assert not report.verified
    assert ("output-differs", 0, str(reused.recs[0].output)) in _problems(report)
    assert [(s.index, s.reason) for s in report.slices if not s.ok] == [(0, "output-differs")]


# -- integrity: the source BOMs are intact, signed and computed what was taken from them ------------
def test_integrity_lists_the_source_boms_it_checked(reused: Reused, cats_home: Path, cli) -> None:
    _home(reused, cats_home)
    me = Identity.load(cats_home / "identity").did
    report = api.verify(reused.b.bom, integrity=True)
    assert report.verified, report.problems
    assert report.reused_from == [SourceBOM(bom=str(reused.a.bom), slices=3, signers=[me], verified=True)]
    assert api.verify(reused.a.bom, integrity=True).reused_from == []  # a BOM that reused nothing names none

    res = cli("verify", str(reused.b.bom), "--integrity", "--json")
    assert res.code == 0, (res.out, res.err)
    assert json.loads(res.out)["reused_from"] == [{"bom": str(reused.a.bom), "slices": 3, "signers": [me],
                                                "verified": True, "peer": False}]
    res = cli("verify", str(reused.b.bom), "--integrity")
    assert res.code == 0, (res.out, res.err)
    assert f"3 slice(s) reused from BOM {reused.a.bom}: signed by {me}" in res.out


def _missing(store: LocalStore, reused: Reused, home: Path) -> str:
    store.delete(reused.a.bom)
    return "the source BOM is not in the store"


def _altered(store: LocalStore, reused: Reused, home: Path) -> str:
    jobs.tamper(store, reused.a.bom)
    return "the source BOM is not intact"


def _records_missing(store: LocalStore, reused: Reused, home: Path) -> str:
    record_block = load_bom(store, reused.a.bom).slices[0]
    store.delete(record_block)
    return f"its slice records: block {record_block} is not in the store"


def _unsigned(store: LocalStore, reused: Reused, home: Path) -> str:
    (home / "signatures" / f"{reused.a.bom}.json").unlink()
    return "signed by neither this node nor a trusted peer"


def _signed_by_a_stranger(store: LocalStore, reused: Reused, home: Path) -> str:
    (home / "signatures" / f"{reused.a.bom}.json").unlink()
    stranger = Identity.load(home.parent / "stranger")
    Signatures(home / "signatures").add(sign(stranger, reused.a.bom))
    return f"signed by neither this node nor a trusted peer (only by {stranger.did})"


def _signature_forged(store: LocalStore, reused: Reused, home: Path) -> str:
    """B's envelope (signed by this node) filed as A's: its signature is over another BOM."""
    envelope = Signatures(home / "signatures").get(reused.b.bom)
    assert isinstance(envelope, Envelope)
    (home / "signatures" / f"{reused.a.bom}.json").write_text(json.dumps(envelope.model_dump()))
    return f"the payload is BOM {reused.b.bom}, not this one"


SOURCE_FAULTS = {
    "missing": (_missing, "block-missing"),
    "altered": (_altered, "bom-altered"),
    "records-missing": (_records_missing, "block-missing"),
    "unsigned": (_unsigned, "source-unsigned"),
    "signed-by-a-stranger": (_signed_by_a_stranger, "source-unsigned"),
    "signature-forged": (_signature_forged, "signature-invalid"),
}


@pytest.mark.parametrize("fault", list(SOURCE_FAULTS))
def test_a_source_bom_that_does_not_vouch_fails_integrity(fault: str, reused: Reused, cats_home: Path, cli) -> None:
    store = _home(reused, cats_home)
    spoil, reason = SOURCE_FAULTS[fault]
    said = spoil(store, reused, cats_home)

    report = api.verify(reused.b.bom, integrity=True)

    assert not report.verified
    # one problem per reused slice, naming the slice and the source BOM; the executed slice 3 is fine
    assert _problems(report) == [(reason, i, str(reused.a.bom)) for i in range(3)]
    for i, problem in enumerate(report.problems):
        assert problem.detail.startswith(f"slice {i} reused from BOM {reused.a.bom}: ") and said in problem.detail
        assert "\n" not in problem.detail
    assert [(s.bom, s.verified) for s in report.reused_from] == [(str(reused.a.bom), False)]

    res = cli("verify", str(reused.b.bom), "--integrity", "--json")
    assert res.code == 1, (res.out, res.err)
    data = json.loads(res.out)
    assert [(p["reason"], p["slice"], p["cid"]) for p in data["problems"]] == _problems(report)
    assert data["reused_from"][0]["verified"] is False
    assert api.verify(reused.b.bom).verified  # re-execution needs no source: B still stands on its own


def test_a_trusted_peers_signature_vouches_for_a_source(reused: Reused, cats_home: Path) -> None:
    _home(reused, cats_home)
    (cats_home / "signatures" / f"{reused.a.bom}.json").unlink()
    peer = Identity.load(cats_home.parent / "peer")
    Signatures(cats_home / "signatures").add(sign(peer, reused.a.bom))
    assert api.verify(reused.b.bom, integrity=True).problems[0].reason == "source-unsigned"
    Trust(cats_home / "trust.json").add(peer.did, name="peer")

    report = api.verify(reused.b.bom, integrity=True)

    assert report.verified, report.problems
    assert report.reused_from == [SourceBOM(bom=str(reused.a.bom), slices=3, signers=[peer.did], verified=True)]


# -- an attacker's BOM: reused_from names a BOM that never computed that output ---------------------
def test_a_forged_reuse_claim_fails_integrity(reused: Reused, cats_home: Path, cli) -> None:
    store = _home(reused, cats_home)
    # slice 3 was executed by B; the forgery says A computed it, but A never saw that file
    forged = _forge(store, reused, 3, reused.a.bom)
    # slice 0 was reused by B from A: B is signed and intact, but it did not compute that output
    relayed = _forge(store, reused, 0, reused.b.bom)
    for bom in (forged, relayed):
        Signatures(cats_home / "signatures").add(sign(Identity.load(cats_home / "identity"), bom))

    report = api.verify(forged, integrity=True)

    assert not report.verified
    assert _problems(report) == [("bom-altered", 3, str(reused.a.bom))]
    assert report.problems[0].detail == (f"slice 3 reused from BOM {reused.a.bom}: it never computed output "
                                         f"{reused.recs[3].output} (bytes)")
    assert [(s.bom, s.slices, s.verified) for s in report.reused_from] == [(str(reused.a.bom), 4, False)]

    report = api.verify(relayed, integrity=True)
    assert _problems(report) == [("bom-altered", 0, str(reused.b.bom))]
    assert {(s.bom, s.verified) for s in report.reused_from} == {(str(reused.a.bom), True), (str(reused.b.bom), False)}

    res = cli("verify", str(forged), "--integrity")
    assert res.code == 1, (res.out, res.err)
    assert "NOT VERIFIED" in res.out and "bom-altered" in res.out and "does not vouch for them" in res.out
