"""Cross-organization lineage over real nodes: org B's Order consumes org A's output; B's
`cats verify --recursive` fetches A's BOM from A's node, re-executes A's part where A's code and
data are readable, and otherwise accepts it on A's signature — and the report says which."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jobs
import pytest
from conftest import WorkerEnv
from nodes import RealNode, start_all

from cats.bom import load as load_bom
from cats.cas.cid import CID
from cats.data import Cache
from cats.identity.trust import Trust


@dataclass
class Orgs:
    a: RealNode
    b: RealNode
    bom_a: CID  # A's run over a file only A may read (a URI input)
    output_a: CID
    private_file: Path
    work: Path


@pytest.fixture(scope="module")
def orgs(ray_session: str, worker_env: WorkerEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orgs]:
    from cats import factory
    from cats.order import Function, Order

    work = tmp_path_factory.mktemp("orgs")
    a, b = RealNode(work / "a", ray_session), RealNode(work / "b", ray_session)
    for node in (a, b):
        node.home.mkdir(parents=True)
    private_file = worker_env.data_root / "org-a-private.txt"
    private_file.write_bytes(b"".join(b"reading %d\n" % i for i in range(500)))
    src = jobs.module(work, "orgs_a", "def count(data):\n    return b'%d lines\\n' % data.count(b'\\n')\n")
    with pytest.MonkeyPatch.context() as env:
        worker_env.apply(env)
        env.setenv("CATS_HOME", str(a.home))
        env.delenv("CATS_STORE", raising=False)
        run = factory.run(Order(function=Function(entry="orgs_a:count", source=src),
                                inputs=[f"file://{private_file}"], name="org A"), quiet=True)
    Trust(a.home / "trust.json").add(b.did, name="b", url=b.url)
    Trust(b.home / "trust.json").add(a.did, name="a", url=a.url)
    start_all(a, b)
    try:
        yield Orgs(a, b, run.bom, run.output, private_file, work)
    finally:
        for node in (a, b):
            if node.proc is not None:
                node.stop()


def _b_builds_on_a(orgs: Orgs, module: str) -> CID:
    """B pulls A's BOM (and so A's output), then runs its own Order over A's output in B's home."""
    b = orgs.b
    pulled = b.cli("mesh", "pull", str(orgs.bom_a), "--from", orgs.a.url, "--json")
    assert pulled.code == 0, pulled.err
    src = jobs.module(orgs.work, module, "def shout(data):\n    return data.upper()\n")
    order = orgs.work / f"{module}_order.py"
    order.write_text("from pathlib import Path\nfrom cats.cas.cid import CID\n"
                     "from cats.order import Order, Function, InfraFunction\n"
                     f"order = Order(function=Function(entry='{module}:shout', source=Path({str(src)!r})), "
                     f"inputs=[CID.parse({str(orgs.output_a)!r})], infra=InfraFunction(split='files'), name='org B')\n")
    ran = b.cli("run", str(order), "--json")
    assert ran.code == 0, ran.err
    bom_b = CID.parse(json.loads(ran.out.splitlines()[-1])["bom"])
    assert load_bom(b.store, bom_b).parents == [orgs.bom_a]  # the lineage crosses into A
    return bom_b


@pytest.mark.slow
def test_a_part_is_reexecuted_where_readable_and_fetched_when_missing(orgs: Orgs, worker_env: WorkerEnv) -> None:
    bom_b = _b_builds_on_a(orgs, "orgs_b1")
    b = orgs.b
    b.store.delete(orgs.bom_a)  # B kept A's output but not A's BOM: verify must fetch it from A's node

    res = b.cli("verify", str(bom_b), "--recursive", "--json", **worker_env.variables())

    assert res.code == 0, res.out + res.err
    report = json.loads(res.out)
    assert report["verified"] and report["signers"] == [b.did]
    (ancestor,) = report["ancestors"]
    assert ancestor["bom"] == str(orgs.bom_a) and ancestor["mode"] == "reexecute" and ancestor["verified"]
    assert ancestor["signers"] == [orgs.a.did]
    assert b.store.has(orgs.bom_a)  # fetched from A


@pytest.mark.slow
def test_a_part_b_cannot_read_stands_on_a_signature(orgs: Orgs, worker_env: WorkerEnv,
                                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    bom_b = _b_builds_on_a(orgs, "orgs_b2")
    b = orgs.b
    hidden = orgs.private_file.with_suffix(".away")
    orgs.private_file.rename(hidden)  # A's data is not readable from B
    # A and B share this machine's Ray workers here, and so their data cache: empty it, as B's own
    # machines would be
    for root in tmp_path_factory.getbasetemp().glob("ray-session-home*/cache/data"):
        Cache(root).clear()
    try:
        trusting = b.cli("verify", str(bom_b), "--recursive", "--json", **worker_env.variables())
        Trust(b.home / "trust.json").rm(orgs.a.did)
        doubting = b.cli("verify", str(bom_b), "--recursive", "--json", **worker_env.variables())
    finally:
        hidden.rename(orgs.private_file)
        Trust(b.home / "trust.json").add(orgs.a.did, name="a", url=orgs.a.url)

    assert trusting.code == 0, trusting.out + trusting.err
    (ancestor,) = json.loads(trusting.out)["ancestors"]
    assert ancestor["mode"] == "signature" and ancestor["verified"] and ancestor["signers"] == [orgs.a.did]
    assert {p["reason"] for p in ancestor["unchecked"]} == {"block-missing"}
    assert any(str(orgs.private_file) in p["detail"] or p["cid"] == f"file://{orgs.private_file}"
               for p in ancestor["unchecked"])
    assert doubting.code == 1  # the same lineage, without trust in A: not verified
    (ancestor,) = json.loads(doubting.out)["ancestors"]
    assert ancestor["mode"] == "reexecute" and not ancestor["verified"]
