"""The node as an IPFS trustless gateway and routing v1 endpoint, against real node processes on loopback.

Conformance to the trustless gateway spec (HEAD, the probe CID, Accept negotiation with the CAR's
parameters, dag-scope=entity, entity-bytes ranges, dups), attacker requests for the new parameters,
and clients no one here wrote: kubo imports the node's CARs (whole and ranged) and reads the file
back from them alone, and kubo's delegated routing client finds the node through its routing v1
answer.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from nodes import RealNode, run_cli, start_all
from test_mesh_node import parse_car

from cats.cas import car, dagpb, unixfs
from cats.cas.cid import CID, DAG_PB, RAW
from cats.cas.dag import put_cbor, walk
from cats.cas.importer import CHUNK_SIZE, Importer
from cats.identity import Identity
from cats.identity.requests import sign_request
from cats.identity.trust import Trust
from cats.mesh import routing

CAR = "application/vnd.ipld.car"
RAW_TYPE = "application/vnd.ipld.raw"
PROBE = "bafkqaaa"  # the empty identity CID
BIG = random.Random(11).randbytes(16 * CHUNK_SIZE)  # 16 raw leaves under one dag-pb root
CHUNK = random.Random(12).randbytes(CHUNK_SIZE)


@dataclass
class Gate:
    node: RealNode
    peer: Identity
    big: CID
    repeated: CID  # four identical leaves: one block, linked four times
    folder: CID
    file_in_folder: CID
    cbor: CID

    def get(self, path: str, **headers: str) -> httpx.Response:
        return httpx.get(self.node.url + path, headers=headers, timeout=60)

    def head(self, path: str, **headers: str) -> httpx.Response:
        return httpx.head(self.node.url + path, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory, ray_session: str) -> Iterator[Gate]:
    base = tmp_path_factory.mktemp("gateway")
    node = RealNode(base, ray_session)
    store = node.store
    with Importer(store, cid_version=1) as importer:
        big = importer.add_bytes(BIG).cid
        repeated = importer.add_bytes(CHUNK * 4).cid
    folder_path = base / "folder"
    folder_path.mkdir()
    (folder_path / "a.txt").write_bytes(b"alpha\n")
    (folder_path / "b.bin").write_bytes(BIG[:3 * CHUNK_SIZE])
    with Importer(store, cid_version=1) as importer:
        added = list(importer.add_path(folder_path))
    folder = added[-1].cid
    file_in_folder = next(a.cid for a in added if str(a.path).endswith("b.bin"))
    cbor = put_cbor(store, {"big": big, "note": "a dag-cbor block linking a file"})
    peer = Identity.load(base / "peer")
    Trust(node.home / "trust.json").add(peer.did, name="peer", url="http://127.0.0.1:9")
    start_all(node)
    try:
        yield Gate(node, peer, big, repeated, folder, file_in_folder, cbor)
    finally:
        node.stop()


def car_cids(response: httpx.Response, root: CID) -> list[CID]:
    assert response.status_code == 200, response.text
    roots, blocks = parse_car(response.content)
    assert roots == [root]
    assert all(cid.verify(block) for cid, block in blocks)
    return [cid for cid, _ in blocks]


def leaves(gate: Gate) -> list[CID]:
    return [c for c in walk(gate.node.store, gate.big) if c.codec == RAW]


# -- HEAD, the probe, negotiation ------------------------------------------------------------------------
def test_head_answers_as_get_without_a_body(gate: Gate) -> None:
    raw = gate.head(f"/ipfs/{gate.big}?format=raw")
    assert raw.status_code == 200 and raw.content == b""
    assert raw.headers["content-type"] == RAW_TYPE
    assert int(raw.headers["content-length"]) == len(gate.node.store.get(gate.big))
    whole = gate.head(f"/ipfs/{gate.big}", accept=CAR)
    assert whole.status_code == 200 and whole.content == b""
    assert whole.headers["content-type"] == f"{CAR}; version=1; order=dfs; dups=n"
    assert whole.headers["etag"] == gate.get(f"/ipfs/{gate.big}?format=car").headers["etag"]
    absent = CID.hash(b"not on the node", RAW)
    assert gate.head(f"/ipfs/{absent}?format=raw").status_code == 404
    assert gate.head(f"/ipfs/{absent}?format=car").status_code == 404


def test_probe_cid(gate: Gate) -> None:
    """The spec's probe: bafkqaaa answers 200 with an empty block, and a CAR naming it with no block."""
    raw = gate.get(f"/ipfs/{PROBE}?format=raw", accept=RAW_TYPE)
    assert raw.status_code == 200 and raw.content == b""
    assert gate.head(f"/ipfs/{PROBE}?format=raw").status_code == 200
    probe = CID.parse(PROBE)
    assert car_cids(gate.get(f"/ipfs/{PROBE}?format=car", accept=CAR), probe) == []


def test_accept_negotiation(gate: Gate) -> None:
    path = f"/ipfs/{gate.big}"
    prefer_raw = gate.get(path, accept=f"{CAR};q=0.5, {RAW_TYPE}")
    assert prefer_raw.headers["content-type"] == RAW_TYPE
    assert prefer_raw.headers["content-location"] == f"{path}?format=raw"
    assert prefer_raw.headers["content-disposition"] == f'attachment; filename="{gate.big}.bin"'
    not_raw = gate.get(path, accept=f"{RAW_TYPE};q=0, {CAR}")
    assert not_raw.headers["content-type"].startswith(CAR)
    assert not_raw.headers["content-disposition"] == f'attachment; filename="{gate.big}.car"'
    # a CAR variant this gateway does not write is passed over for the next acceptable one, else 406
    assert gate.get(path, accept=f"{CAR}; version=2, {RAW_TYPE};q=0.1").headers["content-type"] == RAW_TYPE
    for accept in (f"{CAR}; version=2", f"{CAR}; order=foo", f"{CAR}; dups=maybe", "text/html", "*/*"):
        assert gate.get(path, accept=accept).status_code == 406, accept
    assert gate.get(f"{path}?format=car&car-order=foo").status_code == 406
    # format wins over Accept, and takes the CAR parameters Accept gives
    both = gate.get(f"{path}?format=car", accept=f"{RAW_TYPE}, {CAR}; version=1; order=dfs; dups=y")
    assert both.headers["content-type"] == f"{CAR}; version=1; order=dfs; dups=y"
    assert "content-location" not in both.headers


def test_dups(gate: Gate) -> None:
    """A file of four identical chunks: its leaf is sent once with dups=n, every time it occurs with dups=y."""
    (leaf,) = {c for c in walk(gate.node.store, gate.repeated) if c.codec == RAW}
    once = car_cids(gate.get(f"/ipfs/{gate.repeated}?format=car"), gate.repeated)
    assert once == [gate.repeated, leaf]
    dups = gate.get(f"/ipfs/{gate.repeated}", accept=f"{CAR}; version=1; order=dfs; dups=y")
    assert dups.headers["content-type"].endswith("dups=y")
    assert car_cids(dups, gate.repeated) == [gate.repeated, leaf, leaf, leaf, leaf]
    by_query = gate.get(f"/ipfs/{gate.repeated}?format=car&car-dups=y")
    assert by_query.content == dups.content
    assert by_query.headers["etag"] != gate.get(f"/ipfs/{gate.repeated}?format=car").headers["etag"]


# -- scopes ----------------------------------------------------------------------------------------------
def test_dag_scope_entity(gate: Gate) -> None:
    store = gate.node.store
    whole = set(walk(store, gate.folder))
    assert set(car_cids(gate.get(f"/ipfs/{gate.folder}?format=car"), gate.folder)) == whole
    # a directory: its own block only, not its entries
    assert car_cids(gate.get(f"/ipfs/{gate.folder}?format=car&dag-scope=entity"), gate.folder) == [gate.folder]
    # a file: every block needed to read it, parents first
    entity = car_cids(gate.get(f"/ipfs/{gate.big}?format=car&dag-scope=entity"), gate.big)
    assert entity == list(walk(store, gate.big)) and len(entity) == 17
    # anything else: the block alone
    assert car_cids(gate.get(f"/ipfs/{gate.cbor}?format=car&dag-scope=entity"), gate.cbor) == [gate.cbor]
    assert len(car_cids(gate.get(f"/ipfs/{gate.cbor}?format=car"), gate.cbor)) == 18  # all: the file too
    block = gate.get(f"/ipfs/{gate.big}?format=car&dag-scope=block")
    assert car_cids(block, gate.big) == [gate.big]
    etags = {gate.get(f"/ipfs/{gate.big}?format=car&dag-scope={s}").headers["etag"] for s in ("all", "entity", "block")}
    assert len(etags) == 3


@pytest.mark.parametrize(("span", "first", "last"), [
    ("0:0", 0, 0),
    (f"{CHUNK_SIZE}:{2 * CHUNK_SIZE - 1}", 1, 1),  # exactly the second leaf
    (f"{CHUNK_SIZE - 1}:{CHUNK_SIZE}", 0, 1),  # one byte either side of a boundary
    ("-10:*", 15, 15),
    (f"{3 * CHUNK_SIZE}:-{CHUNK_SIZE + 1}", 3, 14),
    ("0:*", 0, 15),
    (f"{16 * CHUNK_SIZE - 5}:{10 * 16 * CHUNK_SIZE}", 15, 15),  # partly past the end: what is inside
])
def test_entity_bytes_sends_only_the_leaves_of_the_range(gate: Gate, span: str, first: int, last: int) -> None:
    got = car_cids(gate.get(f"/ipfs/{gate.big}?format=car&entity-bytes={span}"), gate.big)
    assert got == [gate.big, *leaves(gate)[first:last + 1]]


def test_entity_bytes_edge_cases(gate: Gate) -> None:
    # an empty range (499 to 1000 from the end of a smaller span): the root alone, which says why
    empty = gate.get(f"/ipfs/{gate.big}?format=car&entity-bytes=100:-{16 * CHUNK_SIZE - 50}")
    assert car_cids(empty, gate.big) == [gate.big]
    # a range that starts past the end is known up front: 400
    past = gate.get(f"/ipfs/{gate.big}?format=car&entity-bytes={16 * CHUNK_SIZE}:*")
    assert past.status_code == 400 and "past the end" in past.json()["detail"]
    # entity-bytes on what is not a file is ignored (dag-scope=entity): the folder's block, the cbor block
    assert car_cids(gate.get(f"/ipfs/{gate.folder}?format=car&entity-bytes=0:10"), gate.folder) == [gate.folder]
    assert car_cids(gate.get(f"/ipfs/{gate.cbor}?format=car&entity-bytes=0:10"), gate.cbor) == [gate.cbor]


# -- attackers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("span", ["abc", "1:", ":5", "1:2:3", "5:1", "1:x", "--1:*", "1 :2", "0x10:*",
                                  "99999999999999999999:*", "1:" + "9" * 400, "*:*"])
def test_malformed_entity_bytes_is_400(gate: Gate, span: str) -> None:
    answer = gate.get(f"/ipfs/{gate.big}?format=car&entity-bytes={span}")
    assert answer.status_code == 400 and "entity-bytes" in answer.json()["detail"]


@pytest.mark.parametrize("scope", ["", "ALL", "all;block", "entity,all", "x" * 5000, "%00"])
def test_junk_dag_scope_is_400(gate: Gate, scope: str) -> None:
    answer = gate.get(f"/ipfs/{gate.big}?format=car&dag-scope={scope}")
    assert answer.status_code == 400 and "dag-scope" in answer.json()["detail"]
    assert len(answer.content) < 600  # the junk is not echoed back whole


def test_entity_bytes_with_another_scope_is_400(gate: Gate) -> None:
    answer = gate.get(f"/ipfs/{gate.big}?format=car&dag-scope=all&entity-bytes=0:10")
    assert answer.status_code == 400 and "dag-scope=entity" in answer.json()["detail"]


def test_huge_accept_headers(gate: Gate) -> None:
    """Thousands of media ranges, or one enormous one: answered at once (406: only the first 64 ranges
    are looked at), and the node goes on answering."""
    many = ", ".join(["application/x-nothing"] * 1500 + [RAW_TYPE])  # ~36 KiB: over h11's header limit
    started = time.monotonic()
    try:
        answer = httpx.get(f"{gate.node.url}/ipfs/{gate.big}", headers={"Accept": many}, timeout=30)
        assert answer.status_code in (406, 431, 400)
    except httpx.RemoteProtocolError:
        pass  # the server may drop a request whose headers are too large
    fits = ", ".join(["application/x-nothing"] * 500 + [RAW_TYPE])  # ~12 KiB: read, 64 ranges looked at
    assert gate.get(f"/ipfs/{gate.big}", accept=fits).status_code == 406
    params = f"{CAR}" + "; p=v" * 2000
    assert gate.get(f"/ipfs/{gate.big}", accept=params).status_code in (200, 406)
    assert gate.get(f"/ipfs/{gate.big}", accept="q=" + "9" * 5000).status_code == 406
    assert time.monotonic() - started < 20
    assert gate.get("/id").status_code == 200


def test_a_cid_the_node_lacks_is_404_before_any_body_byte(gate: Gate) -> None:
    absent = CID.hash(b"nobody has this", RAW)
    for fmt, scope in (("car", "all"), ("car", "entity"), ("car", "block"), ("raw", "all")):
        with httpx.stream("GET", f"{gate.node.url}/ipfs/{absent}?format={fmt}&dag-scope={scope}",
                          timeout=30) as answer:
            assert answer.status_code == 404
            assert answer.headers["content-type"] == "application/json"
            body = answer.read()
        assert str(absent) in body.decode() and not body.startswith(car.header([absent])[:4])
    with httpx.stream("GET", f"{gate.node.url}/ipfs/{absent}?format=car&entity-bytes=0:10", timeout=30) as answer:
        assert answer.status_code == 404


# -- routing v1 ------------------------------------------------------------------------------------------
def test_routing_v1_providers(gate: Gate) -> None:
    node = gate.node
    answer = gate.get(f"/routing/v1/providers/{gate.big}", accept="application/json")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert answer.headers["access-control-allow-origin"] == "*"
    (me,) = answer.json()["Providers"]
    assert me["Schema"] == "peer" and me["ID"] == routing.peer_id(node.did) and me["ID"].startswith("12D3KooW")
    assert me["Addrs"] == [f"/ip4/127.0.0.1/tcp/{node.port}/http"]
    assert me["Protocols"] == ["transport-ipfs-gateway-http"]
    assert me["cats"]["did"] == node.did and me["cats"]["bytes"] >= len(BIG)
    ndjson = gate.get(f"/routing/v1/providers/{gate.big}", accept="application/x-ndjson")
    assert ndjson.headers["content-type"] == "application/x-ndjson"
    assert [line for line in ndjson.text.splitlines() if line] == [answer.text[len('{"Providers": ['):-2]]
    absent = gate.get(f"/routing/v1/providers/{CID.hash(b'nobody', RAW)}")
    assert absent.status_code == 404
    assert gate.get("/routing/v1/providers/not-a-cid").status_code == 400


def test_routing_v1_names_the_trusted_peer_that_pinned_a_dag(gate: Gate) -> None:
    """A peer that pinned a DAG here holds it (it pushed it): the node names it, at its trusted URL."""
    node, peer = gate.node, gate.peer
    with Importer(node.store, cid_version=1) as importer:
        theirs = importer.add_bytes(b"pushed by the peer\n" * 1000).cid
    path = f"/pins/{theirs}"
    pinned = httpx.post(node.url + path, headers=sign_request(peer, node.did, "POST", path, b""), timeout=30)
    assert pinned.status_code == 200, pinned.text
    found = gate.get(f"/routing/v1/providers/{theirs}").json()["Providers"]
    assert [p["cats"]["did"] for p in found] == [node.did, peer.did]
    assert found[1]["ID"] == routing.peer_id(peer.did) and found[1]["Addrs"] == ["/ip4/127.0.0.1/tcp/9/http"]


# -- clients no one here wrote ---------------------------------------------------------------------------
def _kubo(binary: str, repo: Path, *args: str, timeout: float = 120) -> bytes:
    proc = subprocess.run([binary, *args], capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          env={**os.environ, "IPFS_PATH": str(repo)})
    assert proc.returncode == 0, f"ipfs {' '.join(args)}: {proc.stderr.decode(errors='replace')}"
    return proc.stdout


@pytest.fixture
def kubo_bin() -> str:
    binary = os.environ.get("CATS_TEST_KUBO", "")
    if not binary or not os.access(binary, os.X_OK):
        pytest.skip("kubo is not available: set CATS_TEST_KUBO to its `ipfs` binary (scripts/build-kubo builds it)")
    return binary


def test_kubo_reads_the_file_back_from_the_nodes_cars(gate: Gate, kubo_bin: str, tmp_path: Path) -> None:
    """kubo imports the node's CAR of the file and cats it; and from an entity-bytes CAR alone it reads
    that range (so the CAR holds every block the range needs), but not bytes outside it."""
    ranged = f"format=car&entity-bytes={CHUNK_SIZE}:{3 * CHUNK_SIZE - 1}"
    for name, query in (("whole", "format=car"), ("range", ranged)):
        repo = tmp_path / name
        _kubo(kubo_bin, repo, "init", "--profile", "test", "--empty-repo")
        path = tmp_path / f"{name}.car"
        path.write_bytes(gate.get(f"/ipfs/{gate.big}?{query}").content)
        _kubo(kubo_bin, repo, "dag", "import", "--pin-roots=false", str(path))
        if name == "whole":
            assert _kubo(kubo_bin, repo, "cat", "--offline", str(gate.big)) == BIG
            continue
        got = _kubo(kubo_bin, repo, "cat", "--offline", "--offset", str(CHUNK_SIZE), "--length", str(2 * CHUNK_SIZE),
                    str(gate.big))
        assert got == BIG[CHUNK_SIZE:3 * CHUNK_SIZE]
        outside = subprocess.run([kubo_bin, "cat", "--offline", "--length", "10", str(gate.big)], capture_output=True,
                                 timeout=60, env={**os.environ, "IPFS_PATH": str(repo)})
        assert outside.returncode != 0  # the first leaf was not sent


def test_kubo_finds_the_node_by_routing_v1(gate: Gate, kubo_bin: str, tmp_path: Path) -> None:
    """kubo's delegated routing client (Routing.Type=delegated) asks the node and names it by its peer ID."""
    repo = tmp_path / "kubo"
    _kubo(kubo_bin, repo, "init", "--profile", "test", "--empty-repo")
    _kubo(kubo_bin, repo, "config", "Routing.Type", "delegated")
    _kubo(kubo_bin, repo, "config", "--json", "Routing.DelegatedRouters", f'["{gate.node.url}"]')
    _kubo(kubo_bin, repo, "config", "--json", "Provide.Enabled", "false")
    daemon = subprocess.Popen([kubo_bin, "daemon"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env={**os.environ, "IPFS_PATH": str(repo)})
    try:
        assert daemon.stdout is not None
        deadline = time.monotonic() + 60
        while b"Daemon is ready" not in (line := daemon.stdout.readline()):
            assert line and time.monotonic() < deadline, "kubo's daemon did not start"
        found = _kubo(kubo_bin, repo, "routing", "findprovs", "--num-providers", "1", str(gate.big), timeout=60)
        assert found.decode().split() == [routing.peer_id(gate.node.did)]
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


# -- cats mesh submit --to auto --------------------------------------------------------------------------
@pytest.mark.slow
def test_submit_to_auto_sends_the_order_to_the_peer_holding_most_input_bytes(tmp_path: Path, ray_session: str) -> None:
    """Two trusted peers; Y holds the Order's input (a 2 MiB file), X holds a small part of it only:
    the Order goes to Y, the stderr line and --json say which and why, and Y's node ran it."""
    x, y = RealNode(tmp_path / "x", ray_session), RealNode(tmp_path / "y", ray_session)
    submitter = tmp_path / "submitter"
    data = random.Random(21).randbytes(2 << 20)
    for node in (x, y):
        node.home.mkdir(parents=True)
    from cats.cas.store.local import LocalStore

    with Importer(LocalStore(submitter / "blocks"), cid_version=1) as importer:  # the submitter pushes them
        source = importer.add_bytes(data).cid
        importer.add_bytes(data[:1000])
    with Importer(y.store, cid_version=1) as importer:
        assert importer.add_bytes(data).cid == source
    with Importer(x.store, cid_version=1) as importer:
        small = importer.add_bytes(data[:1000]).cid
    me = Identity.load(submitter / "identity")
    for node in (x, y):
        Trust(node.home / "trust.json").add(me.did, name="submitter")
    start_all(x, y)
    try:
        Trust(submitter / "trust.json").add(x.did, name="x", url=x.url)
        Trust(submitter / "trust.json").add(y.did, name="y", url=y.url)
        order = tmp_path / "auto_order.py"
        order.write_text(f"""
from cats.cas.cid import CID
from cats.order import Function, Order


def size(data: bytes) -> bytes:
    return str(len(data)).encode()


order = Order(function=Function.of(size), inputs=[CID.parse({str(source)!r}), CID.parse({str(small)!r})],
              name="auto")
""")
        res = run_cli(submitter, "mesh", "submit", str(order), "--to", "auto", "--json", "--timeout", "180",
                      RAY_ADDRESS=ray_session)
        assert res.code == 0, res.err
        result = json.loads(res.out)
        placement = result["placement"]
        assert placement["url"] == y.url == result["url"] and placement["did"] == y.did
        held = {h["did"]: h["bytes"] for h in placement["asked"]}
        assert held[y.did] >= len(data) > held[x.did] >= 1000
        assert f"--to auto: {y.url} ({y.did}): it holds {held[y.did]} of the input bytes" in res.err
        assert result["status"] == "done" and y.store.has(CID.parse(result["bom"]))
        assert not x.store.has(CID.parse(result["bom"]))
    finally:
        for node in (x, y):
            node.stop()
    # no trusted peer answers: one line naming them, nothing sent
    res = run_cli(submitter, "mesh", "submit", str(order), "--to", "auto")
    res.error_line("--to auto", x.url, y.url)


# -- paths -----------------------------------------------------------------------------------------------
def test_car_of_a_path(gate: Gate) -> None:
    """/ipfs/{cid}/{path}: the blocks that prove each step, then the scope of what the path names."""
    store = gate.node.store
    got = gate.get(f"/ipfs/{gate.folder}/b.bin?format=car")
    assert car_cids(got, gate.folder) == [gate.folder, *walk(store, gate.file_in_folder)]
    assert got.headers["x-ipfs-roots"] == f"{gate.folder},{gate.file_in_folder}"
    assert got.headers["x-ipfs-path"] == f"/ipfs/{gate.folder}/b.bin"
    assert got.headers["accept-ranges"] == "none"
    assert got.headers["etag"] != gate.get(f"/ipfs/{gate.file_in_folder}?format=car").headers["etag"]
    block = gate.get(f"/ipfs/{gate.folder}/b.bin?dag-scope=block", accept=CAR)
    assert car_cids(block, gate.folder) == [gate.folder, gate.file_in_folder]
    # through a DAG-CBOR block to the file its "big" field links
    via_cbor = gate.get(f"/ipfs/{gate.cbor}/big?format=car&dag-scope=entity&entity-bytes=0:0")
    assert car_cids(via_cbor, gate.cbor) == [gate.cbor, gate.big, leaves(gate)[0]]
    for missing in (f"{gate.folder}/nope", f"{gate.folder}/b.bin/deeper", f"{gate.cbor}/nope", f"{gate.big}/x",
                    f"{gate.cbor}/note"):  # the last names a string inside the block, not a block
        answer = gate.get(f"/ipfs/{missing}?format=car")
        assert answer.status_code == 404 and answer.headers["content-type"] == "application/json", missing
    # a block alone cannot prove the path that led to it
    raw = gate.get(f"/ipfs/{gate.folder}/b.bin?format=raw")
    assert raw.status_code == 400 and "format=car" in raw.json()["detail"]


def test_car_of_a_path_through_a_hamt(gate: Gate, tmp_path: Path) -> None:
    """A sharded folder is looked up by the name's hash: only the shards on the way to the entry are sent."""
    folder = tmp_path / "many"
    folder.mkdir()
    names = [f"{i:03}.txt" for i in range(300)] + ["a b ü.txt"]
    for name in names:
        (folder / name).write_text(f"{name}\n")
    with Importer(gate.node.store, cid_version=1, shard_threshold=1) as importer:
        added = list(importer.add_path(folder))
    root = added[-1].cid
    shards = {c for c in walk(gate.node.store, root) if c.codec == DAG_PB
              and unixfs.decode(dagpb.decode(gate.node.store.get(c)).data or b"").kind == unixfs.Kind.HAMT_SHARD}
    assert len(shards) > 2  # the root and sub-shards: the folder is sharded deeper than one level
    for name in ("017.txt", "a b ü.txt"):
        target = next(a.cid for a in added if a.path.endswith(name))
        cids = car_cids(gate.get(f"/ipfs/{root}/{quote(name)}?format=car"), root)
        assert cids[0] == root and cids[-1] == target, name
        assert set(cids[:-1]) <= shards and len(cids) - 1 < len(shards), name
    assert gate.get(f"/ipfs/{root}/999.txt?format=car").status_code == 404


def test_filename(gate: Gate) -> None:
    raw = gate.get(f"/ipfs/{gate.big}?format=raw&filename=big.bin")
    assert raw.headers["content-disposition"] == 'attachment; filename="big.bin"'
    odd_name = quote('ü "x".car')
    odd = gate.get(f"/ipfs/{gate.big}?format=car&filename={odd_name}")
    assert odd.headers["content-disposition"] == (
        "attachment; filename=\"_ _x_.car\"; filename*=UTF-8''%C3%BC%20%22x%22.car")
