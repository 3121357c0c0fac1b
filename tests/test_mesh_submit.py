"""An Order sent to its data, over real nodes on loopback, and lineage and log across the border.

N runs Orders and holds data; P is a peer N trusts (with its URL) and holds data N lacks; S submits
and pushes from its own home, holding none of that data. N trusts S; S and N trust each other's
BOMs. Every node is `cats node start` in a subprocess with its own CATS_HOME (S's is never started:
it only runs the `cats` command).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jobs
import pytest
from nodes import RealNode, start_all

from cats.bom import load as load_bom
from cats.bom.index import Index
from cats.bom.signatures import Signatures
from cats.cas import dagcbor
from cats.cas.cid import CID, DAG_CBOR
from cats.cas.dag import walk
from cats.cas.pins import Pins
from cats.identity.trust import Trust


@dataclass
class Mesh:
    n: RealNode  # runs Orders; holds `here`
    p: RealNode  # N's trusted peer; holds `there`
    s: RealNode  # the submitter (never started)
    here: CID  # a folder only N holds
    there: CID  # a folder only P holds
    bom: CID  # N's own run over `here`, made before N started
    work: Path


def _files(seed: int, sizes: tuple[int, ...], prefix: str = "part") -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"{prefix}-{i}.bin": rng.randbytes(size) for i, size in enumerate(sizes)}


@pytest.fixture(scope="module")
def mesh(ray_session: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    from cats import factory
    from cats.order import Function, Order

    work = tmp_path_factory.mktemp("submit")
    n, p, s = (RealNode(work / name, ray_session) for name in ("n", "p", "s"))
    for node in (n, p, s):
        node.home.mkdir(parents=True)
    here = jobs.add(n.store, jobs.folder(work, _files(1, (3_000_000, 1_200_000)), "here"))
    there = jobs.add(p.store, jobs.folder(work, _files(2, (700_000, 900_000)), "there"))
    Pins(n.home / "pins").add(n.store, here)
    Pins(p.home / "pins").add(p.store, there)
    src = jobs.module(work, "submit_sizes", "def sizes(data):\n    return b'%d bytes\\n' % len(data)\n")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CATS_HOME", str(n.home))
        env.delenv("CATS_STORE", raising=False)
        run = factory.run(Order(function=Function(entry="submit_sizes:sizes", source=src), inputs=[here],
                                name="sizes on n"), quiet=True)
    Trust(n.home / "trust.json").add(s.did, name="s")
    Trust(n.home / "trust.json").add(p.did, name="p", url=p.url)
    Trust(s.home / "trust.json").add(n.did, name="n", url=n.url)
    start_all(n, p)
    try:
        yield Mesh(n, p, s, here, there, run.bom, work)
    finally:
        for node in (n, p):
            if node.proc is not None:
                node.stop()


def _order(mesh: Mesh, module: str, *inputs: CID) -> Path:
    """An Order file in S's hands over CIDs (S holds none of their blocks): each file's size and a digest."""
    path = mesh.work / f"{module}.py"
    path.write_text(f"""
import hashlib

from cats.cas.cid import CID
from cats.order import Function, Order


def measure(data: bytes) -> bytes:
    return b"%d %s" % (len(data), hashlib.sha256(data).hexdigest()[:12].encode())


order = Order(function=Function.of(measure), inputs=[CID.parse(c) for c in {[str(i) for i in inputs]!r}],
              name={module!r})
""")
    return path


def _expected(files: dict[str, bytes]) -> dict[str, bytes]:
    import hashlib

    return {name: b"%d %s" % (len(data), hashlib.sha256(data).hexdigest()[:12].encode())
            for name, data in files.items()}


def _dag(node: RealNode, root: CID) -> set[CID]:
    return {c.to_v1() for c in walk(node.store, root)}


def _submitter(mesh: Mesh, name: str) -> RealNode:
    """Another home N trusts, to submit and push from without touching S's."""
    other = RealNode(mesh.work / name, mesh.n.ray)
    other.home.mkdir(parents=True)
    Trust(mesh.n.home / "trust.json").add(other.did, name=name)
    return other


def _orders_on(node: RealNode, submitter: RealNode) -> list[dict]:
    from cats.identity import Identity
    from cats.mesh.client import Node

    with Node(node.url, Identity.load(submitter.home / "identity")) as client:
        return client.orders()


@pytest.mark.slow
def test_an_order_goes_to_data_the_submitter_never_had(mesh: Mesh) -> None:
    from cats.cas.dag import links

    n, s = mesh.n, mesh.s
    res = s.cli("mesh", "submit", str(_order(mesh, "submit_away", mesh.here)), "--to", n.url, "--json",
                "--timeout", "180")
    assert res.code == 0, res.err
    result = json.loads(res.out)
    bom, order, output = CID.parse(result["bom"]), CID.parse(result["order"]), CID.parse(result["output"])
    pushed = result["pushed"]
    assert str(mesh.here) in pushed["present_there"] and pushed["not_held"] == []
    # what was sent is the Order block and what it names that N lacked (its code; N has the lock from its
    # own run): S holds them all, and none of the input's 4 MB
    named = [c for c in links(order, s.store.get(order)) if str(c) not in pushed["present_there"]]
    assert named and mesh.here not in named
    sent = {order.to_v1()}.union(*(_dag(s, c) for c in named))
    assert pushed["blocks"] == len(sent) and pushed["bytes"] < 64 << 10
    assert not any(s.store.has(c) for c in _dag(n, mesh.here))
    # the BOM came back signed by N, with its records; the output stayed on N
    sealed = load_bom(n.store, bom)
    assert result["node"] == n.did and result["pulled"]["signers"] == {str(bom): [n.did]}
    envelope = Signatures(s.home / "signatures").get(bom)
    assert envelope is not None and envelope.signers() == [n.did]
    assert load_bom(s.store, bom) == sealed and all(s.store.has(r) for r in sealed.slices)
    assert result["output_pulled"] is None and not s.store.has(output)
    assert sealed.inputs == [mesh.here] and sealed.outputs == [output]
    assert jobs.outputs(n.home, output) == _expected(_files(1, (3_000_000, 1_200_000)))
    # the run is in S's log, marked with N; it is not S's memoized run of the Order
    logged = json.loads(s.cli("log", "--json").out)
    assert [(e["bom"], e["node"], e["url"]) for e in logged] == [(str(bom), n.did, n.url)]
    assert f"ran on {n.did} at {n.url}" in s.cli("log").out
    index = Index(s.home / "index.sqlite")
    try:
        assert index.bom_for(str(order)) is None and index.producer(str(output)) == str(bom)
    finally:
        index.close()
    assert order.to_v1() in set(Pins(n.home / "pins"))  # the node pinned the Order it admitted


@pytest.mark.slow
def test_an_input_held_on_both_sides_is_not_sent(mesh: Mesh) -> None:
    n = mesh.n
    both = _submitter(mesh, "s-both")
    own = jobs.add(both.store, jobs.folder(mesh.work, _files(3, (40_000,), "own"), "s-own"))  # the node lacks it
    assert jobs.add(both.store, jobs.folder(mesh.work, _files(1, (3_000_000, 1_200_000)), "here-too")) == mesh.here
    res = both.cli("mesh", "submit", str(_order(mesh, "submit_both", mesh.here, own)), "--to", n.url, "--json",
                   "--timeout", "180")
    assert res.code == 0, res.err
    pushed = json.loads(res.out)["pushed"]
    assert str(mesh.here) in pushed["present_there"] and str(own) not in pushed["present_there"]
    assert pushed["not_held"] == []
    assert all(n.store.has(c) for c in _dag(both, own))  # sent: the node lacked it
    assert 40_000 < pushed["bytes"] < 200_000  # S's own input, the Order, code and lock; not N's 4 MB


@pytest.mark.slow
def test_an_input_only_a_trusted_peer_holds_is_pulled_from_it(mesh: Mesh) -> None:
    n, p, s = mesh.n, mesh.p, mesh.s
    assert not n.store.has(mesh.there)
    res = s.cli("mesh", "submit", str(_order(mesh, "submit_peer", mesh.there)), "--to", n.url, "--json",
                "--timeout", "180", "--fetch-output")
    assert res.code == 0, res.err
    result = json.loads(res.out)
    assert result["pushed"]["not_held"] == [str(mesh.there)]
    assert _dag(n, mesh.there) == _dag(p, mesh.there)  # N pulled the whole DAG from P
    assert all(n.store.get(c) for c in walk(n.store, mesh.there, read_leaves=True))
    # --fetch-output: the output is in S's store, whole; the input never came here
    output = CID.parse(result["output"])
    assert result["output_pulled"]["fetched_blocks"] == len(_dag(n, output))
    assert jobs.outputs(s.home, output) == _expected(_files(2, (700_000, 900_000)))
    assert not s.store.has(mesh.there)


@pytest.mark.slow
def test_an_input_no_one_holds_is_named_and_nothing_is_left_behind(mesh: Mesh) -> None:
    n, s = mesh.n, mesh.s
    nowhere = CID.hash(b"no node holds these bytes")
    before = _orders_on(n, s)
    logged = s.cli("log", "--json").out
    line = s.cli("mesh", "submit", str(_order(mesh, "submit_nowhere", mesh.here, nowhere)), "--to", n.url
                 ).error_line(str(nowhere), "input 1", n.url, "400", "neither this node nor its trusted peers",
                              "1 trusted peer asked")
    assert str(mesh.here) not in line  # N holds that one
    assert _orders_on(n, s) == before  # nothing queued
    assert s.cli("log", "--json").out == logged  # nothing logged
    (order,) = [c for c in s.store if c.codec == DAG_CBOR and b"submit_nowhere" in s.store.get(c)]
    assert n.store.has(order) and order.to_v1() not in set(Pins(n.home / "pins"))  # left to gc, not kept


@pytest.mark.slow
def test_a_pushed_bom_is_in_the_receivers_lineage_at_once(mesh: Mesh) -> None:
    from cats.cas.dag import put_cbor

    n = mesh.n
    deriver = _submitter(mesh, "s-derive")
    pulled = deriver.cli("mesh", "pull", str(mesh.bom), "--from", n.url, "--json")
    assert pulled.code == 0, pulled.err
    output = load_bom(n.store, mesh.bom).outputs[0]
    src = jobs.module(mesh.work, "submit_derive", "def shout(data):\n    return data.upper()\n")
    order = mesh.work / "submit_derive_order.py"
    order.write_text("from pathlib import Path\nfrom cats.cas.cid import CID\nfrom cats.order import Order, Function\n"
                     f"order = Order(function=Function(entry='submit_derive:shout', source=Path({str(src)!r})), "
                     f"inputs=[CID.parse({str(output)!r})], name='derived elsewhere')\n")
    ran = deriver.cli("run", str(order), "--json")
    assert ran.code == 0, ran.err
    derived = json.loads(ran.out.splitlines()[-1])["bom"]
    bom = load_bom(deriver.store, CID.parse(derived))
    assert bom.parents == [mesh.bom]

    def lineage() -> dict:
        answer = httpx.get(f"{n.url}/lineage/{mesh.bom}")
        assert answer.status_code == 200, answer.text
        return answer.json()

    assert derived not in {node["cid"] for node in lineage()["nodes"]}
    res = deriver.cli("mesh", "push", derived, "--to", n.url, "--json")
    assert res.code == 0, res.err
    graph = lineage()  # at once: N pulled nothing
    assert derived in {node["cid"] for node in graph["nodes"]}
    assert {"parent": str(mesh.bom), "child": derived} in graph["edges"]
    shown = n.cli("lineage", str(mesh.bom))
    assert shown.code == 0 and derived in shown.out, shown.out + shown.err
    index = Index(n.home / "index.sqlite")
    try:  # indexed as someone else's work: never N's memoized run of that Order
        assert index.bom_for(str(bom.order)) is None and index.producer(str(bom.outputs[0])) == derived
    finally:
        index.close()

    # a block that only looks like a BOM deriving from N's is stored and pinned (any DAG may be), and
    # teaches the lineage nothing
    fake = put_cbor(deriver.store, {"type": "cats.bom", "parents": [mesh.bom], "outputs": [output]})
    res = deriver.cli("mesh", "push", str(fake), "--to", n.url, "--json")
    assert res.code == 0, res.err
    assert n.store.has(fake) and fake.to_v1() in set(Pins(n.home / "pins"))
    assert str(fake) not in {node["cid"] for node in lineage()["nodes"]}
    index = Index(n.home / "index.sqlite")
    try:
        assert str(fake) not in index.boms()
    finally:
        index.close()
    assert dagcbor.decode(n.store.get(fake))["type"] == "cats.bom"
