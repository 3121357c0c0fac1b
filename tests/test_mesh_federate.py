"""A federated Order over real nodes on loopback: each part runs on the node holding its inputs, and the
submitter's BOM links the nodes' signed BOMs, merged from their output folders without their data.

A and B are two organizations' nodes (`cats node start`), each holding one folder the other lacks; both
trust S, which submits from its own home and holds none of the data. S trusts A and B with their URLs.
L is a home holding both folders, where the same Order runs from scratch for comparison.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nodes import RealNode, start_all
from servers import free_port

from cats.bom import load as load_bom
from cats.bom.signatures import Signatures, sign
from cats.cas import reader
from cats.cas.cid import CID, DAG_CBOR
from cats.cas.dag import walk
from cats.cas.pins import Pins
from cats.identity import Identity
from cats.identity.trust import Trust

LEFT = {"a-0.bin": 700_000, "sub/a-1.bin": 300_000, "a-2.bin": 90_000}
RIGHT = {"b-0.bin": 500_000, "sub/b-1.bin": 400_000}


@dataclass
class Fed:
    a: RealNode  # holds `left`
    b: RealNode  # holds `right`
    s: RealNode  # the submitter (never started)
    left: CID
    right: CID
    work: Path


def _tree(base: Path, seed: int, sizes: dict[str, int]) -> Path:
    rng = random.Random(seed)
    for name, size in sizes.items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_bytes(rng.randbytes(size))
    return base


def _add(node: RealNode, folder: Path) -> CID:
    from cats.cas.importer import Importer

    with Importer(node.store, cid_version=1) as importer:
        *_, top = importer.add_path(folder)
    Pins(node.home / "pins").add(node.store, top.cid)
    return top.cid


@pytest.fixture(scope="module")
def fed(ray_session: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    work = tmp_path_factory.mktemp("federate")
    a, b, s = (RealNode(work / name, ray_session) for name in ("a", "b", "s"))
    for node in (a, b, s):
        node.home.mkdir(parents=True)
    left = _add(a, _tree(work / "left", 1, LEFT))
    right = _add(b, _tree(work / "right", 2, RIGHT))
    for node in (a, b):
        Trust(node.home / "trust.json").add(s.did, name="s")
    Trust(s.home / "trust.json").add(a.did, name="a", url=a.url)
    Trust(s.home / "trust.json").add(b.did, name="b", url=b.url)
    start_all(a, b)
    try:
        yield Fed(a, b, s, left, right, work)
    finally:
        for node in (a, b):
            if node.proc is not None:
                node.stop()


def _order(fed: Fed, module: str, *inputs: CID, merge: str = "directory") -> Path:
    """An Order file over CIDs (the submitter holds none of their blocks): each file's size and a digest."""
    path = fed.work / f"{module}.py"
    path.write_text(f"""
import hashlib

from cats.cas.cid import CID
from cats.order import Function, InfraFunction, Order


def measure(data: bytes) -> bytes:
    return b"%d %s" % (len(data), hashlib.sha256(data).hexdigest()[:12].encode())


order = Order(function=Function.of(measure), inputs=[CID.parse(c) for c in {[str(i) for i in inputs]!r}],
              infra=InfraFunction(merge={merge!r}), name={module!r})
""")
    return path


def _dag(node: RealNode, root: CID) -> set[CID]:
    return {c.to_v1() for c in walk(node.store, root)}


def _home(fed: Fed, name: str, *trusted: RealNode, dead: bool = False) -> RealNode:
    """Another submitting home, which the nodes in `trusted` trust (and it them, with their URLs)."""
    other = RealNode(fed.work / name, fed.a.ray)
    other.home.mkdir(parents=True)
    for node in (fed.a, fed.b):
        Trust(other.home / "trust.json").add(node.did, name=node.base.name, url=node.url)
        if node in trusted:
            Trust(node.home / "trust.json").add(other.did, name=name)
    if dead:  # a trusted peer whose node is down
        Trust(other.home / "trust.json").add(RealNode(fed.work / f"{name}-down", fed.a.ray).did, name="down",
                                             url=f"http://127.0.0.1:{free_port()}")
    return other


def _orders_on(node: RealNode, submitter: RealNode) -> list[dict]:
    from cats.mesh.client import Node

    with Node(node.url, Identity.load(submitter.home / "identity")) as client:
        return client.orders()


@pytest.mark.slow
def test_a_federated_order_runs_each_part_where_its_data_is(fed: Fed) -> None:
    a, b, s = fed.a, fed.b, fed.s
    order_file = _order(fed, "federated_measure", fed.left, fed.right)
    res = s.cli("mesh", "submit", str(order_file), "--federate", "--json", "--timeout", "180")
    assert res.code == 0, res.err
    result = json.loads(res.out)
    parts = {p["did"]: p for p in result["parts"]}
    assert parts.keys() == {a.did, b.did}
    assert parts[a.did]["inputs"] == [0] and parts[b.did]["inputs"] == [1]
    bom_cid, output = CID.parse(result["bom"]), CID.parse(result["output"])

    # the federated BOM: the Order over every input, the merged output, the nodes' BOMs as children
    bom = load_bom(s.store, bom_cid)
    federation = bom.invoice.federation
    assert federation is not None and bom.slices == [] and bom.inputs == [fed.left, fed.right]
    assert bom.outputs == [output] and str(bom.order) == result["order"]
    assert sorted(bom.children) == sorted(CID.parse(p["bom"]) for p in parts.values())
    assert {(str(c.bom), c.executor.did) for c in federation.parts} == {(p["bom"], d) for d, p in parts.items()}
    for node in (a, b):  # each part is the node's own signed BOM over its own inputs
        part = load_bom(node.store, CID.parse(parts[node.did]["bom"]))
        assert part.inputs == [fed.left if node is a else fed.right]
        assert part.outputs == [CID.parse(parts[node.did]["output"])]
        envelope = Signatures(s.home / "signatures").get(CID.parse(parts[node.did]["bom"]))
        assert envelope is not None and envelope.signers() == [node.did]
    assert Signatures(s.home / "signatures").check(bom_cid, [s.did])[0] == [s.did]

    # nothing of the data crossed: no input block left its node, no result file came here
    assert federation.data == 0 and result["data"] == 0
    assert not any(b.store.has(c) for c in _dag(a, fed.left)) and not any(a.store.has(c) for c in _dag(b, fed.right))
    assert not any(s.store.has(c) for c in _dag(a, fed.left) | _dag(b, fed.right))
    part_files = {cid for node in (a, b) for _, cid, _ in _files(node, CID.parse(parts[node.did]["output"]))}
    assert part_files and not any(s.store.has(c) for c in part_files)
    assert 0 < federation.pushed == result["pushed"] < 256 << 10  # two sub-Orders, the code and the lock
    assert 0 < federation.pulled == result["pulled"] < 64 << 10  # BOMs, records, folder blocks
    assert result["folder_blocks"] == 4  # the two parts' top folders and their two `sub` folders: no file's block

    # the merged folder lists every file, with the results a from-scratch run over both folders gives
    merged = {name: cid for name, cid, _ in _files(s, output)}
    assert sorted(merged) == sorted([*LEFT, *RIGHT])
    local = RealNode(fed.work / "l", a.ray)
    local.home.mkdir(parents=True)
    assert (_add(local, fed.work / "left"), _add(local, fed.work / "right")) == (fed.left, fed.right)
    ran = local.cli("run", str(order_file), "--json")
    assert ran.code == 0, ran.err
    alone = json.loads(ran.out.splitlines()[-1])
    assert {name: cid for name, cid, _ in _files(local, CID.parse(alone["output"]))} == merged
    assert alone["output"] == str(output)  # the very folder one run over the union merges

    # in S's log, marked with the nodes that ran its parts
    logged = json.loads(s.cli("log", "--json").out)
    assert [(e["bom"], e["node"]) for e in logged] == [(str(bom_cid), f"{a.did}, {b.did}")]

    # verify: the parts are the Order over its inputs and merge into its output; --recursive walks them,
    # accepted on the nodes' signatures (their data is not here)
    shallow = s.cli("verify", str(bom_cid), "--json")
    assert shallow.code == 0, shallow.out + shallow.err
    assert json.loads(shallow.out)["mode"] == "federation"
    deep = s.cli("verify", str(bom_cid), "--recursive", "--json")
    assert deep.code == 0, deep.out + deep.err
    report = json.loads(deep.out)
    assert report["verified"] and report["mode"] == "federation"
    assert sorted((c["bom"], c["mode"], c["signers"]) for c in report["children"]) == \
        sorted((p["bom"], "signature", [d]) for d, p in parts.items())
    assert "part VERIFIED" in s.cli("verify", str(bom_cid), "--recursive").out


def _files(node: RealNode, folder: CID, prefix: str = "") -> list[tuple[str, CID, int]]:
    """(path, CID, tsize) of every file under a folder of the node's store, nested folders flattened."""
    found = []
    for name, cid, tsize in reader.entries(node.store, folder):
        if cid.codec != 0x55 and node.store.has(cid) and reader.is_folder(node.store, cid):
            found += _files(node, cid, f"{prefix}{name}/")
        else:
            found.append((f"{prefix}{name}", cid, tsize))
    return found


@pytest.mark.slow
def test_a_forged_federated_bom_does_not_verify(fed: Fed) -> None:
    s = fed.s
    res = s.cli("mesh", "submit", str(_order(fed, "federated_forged", fed.left, fed.right)), "--federate", "--json",
                "--timeout", "180")
    assert res.code == 0, res.err
    bom = load_bom(s.store, CID.parse(json.loads(res.out)["bom"]))
    parts = bom.invoice.federation.parts  # type: ignore[union-attr]
    wrong = bom.model_copy(update={"outputs": [load_bom(s.store, parts[0].bom).outputs[0]]})  # one part's folder
    dropped = bom.model_copy(update={"children": bom.children[:1], "invoice": bom.invoice.model_copy(update={
        "federation": bom.invoice.federation.model_copy(update={"parts": parts[:1]})})})  # type: ignore[union-attr]
    for forged, reason in ((wrong, "output-differs"), (dropped, "bom-altered")):
        cid = CID.hash(forged.block(), DAG_CBOR)
        s.store.put(cid, forged.block())
        Signatures(s.home / "signatures").add(sign(Identity.load(s.home / "identity"), cid))
        checked = s.cli("verify", str(cid), "--json")
        assert checked.code == 1
        assert [p["reason"] for p in json.loads(checked.out)["problems"]] == [reason]


@pytest.mark.slow
def test_a_node_down_or_refusing_leaves_nothing_behind(fed: Fed) -> None:
    a, b = fed.a, fed.b
    # B's folder is on no node this home can ask: B does not count (untrusted here), the other is down
    lonely = _home(fed, "s-down", a, dead=True)
    Trust(lonely.home / "trust.json").rm(b.did)
    line = lonely.cli("mesh", "submit", str(_order(fed, "federated_down", fed.left, fed.right)), "--federate"
                      ).error_line("input 1", str(fed.right), "2 trusted peers' nodes", "nothing was sent")
    assert "cannot ask" in line
    assert _orders_on(a, lonely) == [] and lonely.cli("log", "--json").out.strip() == "[]"

    # B does not trust this home: it refuses its part before A is asked to run anything
    refused = _home(fed, "s-refused", a)
    line = refused.cli("mesh", "submit", str(_order(fed, "federated_refused", fed.left, fed.right)), "--federate"
                       ).error_line(b.url, "403")
    assert _orders_on(a, refused) == [] and refused.cli("log", "--json").out.strip() == "[]"
    assert not any(c.codec == DAG_CBOR and b"cats.bom" in refused.store.get(c) for c in refused.store)


def test_an_order_a_federation_cannot_merge_is_refused(cats_home: Path, cli, tmp_path: Path) -> None:  # noqa: ANN001
    order = tmp_path / "federated_concat.py"
    order.write_text("from cats.cas.cid import CID\nfrom cats.order import Function, InfraFunction, Order\n"
                     "def f(data: bytes) -> bytes:\n    return data\n"
                     f"order = Order(function=Function.of(f), inputs=[CID.parse({str(CID.hash(b'x'))!r})], "
                     "infra=InfraFunction(merge='concat'))\n")
    cli("mesh", "submit", str(order), "--federate").error_line("--federate", "'directory'", "'concat'")
    cli("mesh", "submit", str(order)).error_line("--to URL|auto or --federate")


@pytest.mark.slow
def test_inputs_all_on_one_node_go_there_whole(fed: Fed) -> None:
    a = fed.a
    one = _home(fed, "s-one", a)
    res = one.cli("mesh", "submit", str(_order(fed, "federated_one", fed.left)), "--federate", "--json",
                  "--timeout", "180")
    assert res.code == 0, res.err
    result = json.loads(res.out)
    (part,) = result["parts"]
    assert part["did"] == a.did and part["inputs"] == [0]
    assert result["bom"] == part["bom"] and result["order"] == part["order"]  # A's own BOM of the whole Order
    bom = load_bom(one.store, CID.parse(result["bom"]))
    assert bom.invoice.federation is None and bom.inputs == [fed.left] and result["data"] == 0
    logged = json.loads(one.cli("log", "--json").out)
    assert [(e["bom"], e["node"], e["url"]) for e in logged] == [(result["bom"], a.did, a.url)]
    again = one.cli("mesh", "submit", str(_order(fed, "federated_one", fed.left)), "--federate", "--timeout", "180")
    assert again.code == 0, again.err
    assert again.out.strip() == result["bom"]  # the same sealed Order: A answers with the BOM it has
    assert f"part on {a.url} ({a.did}): input(s) 0, BOM {result['bom']}" in again.err and "0 B of data" in again.err
