"""Orders on a real two-node Ray cluster whose nodes keep their own stores (data locality).

Node `a` is the head and the driver's node (the driver's CATS_HOME is a's), node `b` a second
`ray start --address` with a CATS_HOME of its own. Drivers run as `cats run` subprocesses, since
this test process is already the driver of the session's local Ray.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobs import add
from raycluster import RayCluster

from cats.bom import load as load_bom
from cats.bom import records
from cats.cas import reader
from cats.cas.cid import CID, RAW
from cats.cas.dag import walk
from cats.identity import Identity
from cats.plant.cluster import assign

pytestmark = pytest.mark.slow

FILES = 8
SIZE = 300_000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    c = RayCluster(tmp_path_factory.mktemp("raycluster"))
    try:
        c.add("a")
        c.add("b")
        yield c
    finally:
        c.stop()
    assert c.leftovers() == []


def test_a_node_that_dies_stops_the_cluster_start_at_once_with_its_log(tmp_path: Path) -> None:
    c = RayCluster(tmp_path)
    started = time.monotonic()
    try:
        with pytest.raises(RuntimeError, match="exited with status") as failed:
            c.add("a", options=("--num-cpus=-1",))
    finally:
        c.stop()
    assert time.monotonic() - started < 60  # not the 120 s of waiting for a node that will never come
    assert "Resource quantities must be nonnegative" in str(failed.value)
    assert c.leftovers() == []


@pytest.fixture(scope="module")
def dataset(cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[CID, dict[str, CID]]:
    """A folder of 8 files in a's store (the driver's); b holds a copy of files 4-7 only."""
    folder = tmp_path_factory.mktemp("data") / "parts"
    folder.mkdir()
    rng = random.Random(7)
    for i in range(FILES):
        (folder / f"part-{i}.bin").write_bytes(rng.randbytes(SIZE))
    a, b = (n.store for n in cluster.nodes)
    root = add(a, folder)
    files = {name: cid for name, cid, _ in reader.entries(a, root)}
    for name, cid in files.items():
        if int(name.split("-")[1].split(".")[0]) >= FILES // 2:
            for block in walk(a, cid):
                b.put(block, a.get(block))
    return root, files


def _order(folder: Path, inputs: list[CID], locality: bool = True, name: str = "digest",
           address: str | None = None, replicas: int = 1) -> Path:
    path = folder / f"{name}.py"
    path.write_text(f'''
import hashlib
from cats.cas.cid import CID, RAW
from cats.order import Function, Order, Plant


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


order = Order(function=Function.of(digest), inputs=[CID.parse(c) for c in {[str(c) for c in inputs]!r}],
              plant=Plant(locality={locality!r}, address={address!r}, replicas={replicas!r}))
''')
    return path


def _run(cluster: RayCluster, order: Path, *extra: str) -> dict:
    result = cluster.run(cluster.nodes[0].home, "run", str(order), "--json", *extra)
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_slices_run_next_to_the_store_holding_their_input(cluster: RayCluster, dataset, tmp_path: Path) -> None:
    root, files = dataset
    run = _run(cluster, _order(tmp_path, [root]))
    a = cluster.nodes[0].store
    bom = load_bom(a, CID.parse(run["bom"]))
    moved = bom.invoice.moved
    assert moved is not None and moved.locality
    assert moved.placed == {"a": FILES // 2, "b": FILES // 2}  # b's half went to b, the rest to a
    assert len(bom.invoice.nodes) == 2
    # b fetched only the code (a few KiB), none of the 300 kB inputs
    assert moved.between_nodes < 20_000, moved
    by_name = {r.input.name: r.node for r in records(a, bom)}
    b_nodes = {by_name[f"part-{i}.bin"] for i in range(FILES // 2, FILES)}
    a_nodes = {by_name[f"part-{i}.bin"] for i in range(FILES // 2)}
    assert len(a_nodes) == len(b_nodes) == 1 and a_nodes != b_nodes
    # results made on b were copied into the driver's store: the BOM's whole DAG is there
    assert moved.to_driver > 0
    assert sum(1 for _ in walk(a, CID.parse(run["bom"]), read_leaves=True)) > FILES
    verified = cluster.run(cluster.nodes[0].home, "verify", run["bom"], "--json")
    assert verified.code == 0, verified.err + verified.out


def test_without_locality_inputs_cross_between_nodes(cluster: RayCluster, dataset, tmp_path: Path) -> None:
    root, files = dataset
    run = _run(cluster, _order(tmp_path, [root], locality=False, name="digest_anywhere"))
    bom = load_bom(cluster.nodes[0].store, CID.parse(run["bom"]))
    moved = bom.invoice.moved
    assert moved is not None and not moved.locality
    assert moved.placed == {"a": FILES // 2, "b": FILES // 2}
    # round robin sends parts 1 and 3 (held by a only) to b, which fetches them whole
    assert moved.between_nodes >= 2 * SIZE, moved
    assert moved.blocks >= 2 * (SIZE // 262_144 + 1)


def test_input_held_only_by_the_other_node(cluster: RayCluster, tmp_path: Path) -> None:
    """An input only b holds runs on b; the driver's store then gets it, so its BOM is whole there."""
    a, b = (n.store for n in cluster.nodes)
    lone = tmp_path / "lone.bin"
    lone.write_bytes(random.Random(11).randbytes(SIZE))
    cid = add(b, lone)
    assert not a.has(cid)
    run = _run(cluster, _order(tmp_path, [cid], name="digest_lone"))
    bom = load_bom(a, CID.parse(run["bom"]))
    assert bom.invoice.moved is not None and bom.invoice.moved.placed == {"a": 0, "b": 1}
    assert bom.invoice.moved.between_nodes < 20_000
    assert bom.invoice.moved.to_driver >= SIZE
    assert a.has(cid) and b"".join(reader.read(a, cid)) == lone.read_bytes()
    out = next(records(a, bom)).output
    assert b"".join(reader.read(a, out)).decode() == hashlib.sha256(lone.read_bytes()).hexdigest()


def test_an_input_no_node_holds_is_named(cluster: RayCluster, tmp_path: Path) -> None:
    ghost = CID.hash(b"no node holds this", RAW)
    result = cluster.run(cluster.nodes[0].home, "run", str(_order(tmp_path, [ghost], name="digest_ghost")))
    result.error_line(str(ghost))


@pytest.mark.parametrize("how", ["ray://", "gcs"])
def test_a_plant_names_the_cluster(cluster: RayCluster, dataset, tmp_path: Path, how: str) -> None:
    """Plant.address reaches the cluster without RAY_ADDRESS: through the Ray Client (ray://) or the GCS."""
    root, _ = dataset
    address = cluster.client_address if how == "ray://" else cluster.address
    order = _order(tmp_path, [root], name=f"digest_at_{how.strip(':/')}", address=address)
    result = cluster.run(cluster.nodes[0].home, "run", str(order), "--json", RAY_ADDRESS=None)
    if result.code != 0 and ("Starting Ray client server failed" in result.err
                             or "Initialization failure from server" in result.err):
        # Ray's client proxy starts one server process per client; when that process does not come up, or
        # dies as it starts (both seen on a loaded CI machine, the second as gRPC's "epoll_wait error: Bad
        # file descriptor" after a fork), the reason is only in its log: show it, and try once more.
        warnings.warn(f"the Ray Client server did not start; retrying once:\n{cluster.logs('ray_client_server*')}",
                      stacklevel=1)
        result = cluster.run(cluster.nodes[0].home, "run", str(order), "--json", RAY_ADDRESS=None)
    assert result.code == 0, result.err + "\n" + cluster.logs("ray_client_server*")
    bom = load_bom(cluster.nodes[0].store, CID.parse(json.loads(result.out)["bom"]))
    assert bom.invoice.moved is not None and bom.invoice.moved.placed == {"a": FILES // 2, "b": FILES // 2}
    assert len(bom.invoice.nodes) == 2


def test_sub_orders_run_on_the_node_of_their_slice(cluster: RayCluster, dataset, tmp_path: Path) -> None:
    """A slice on b submits its sub-Order; the child runs on b, with b's store and identity, and the
    parent BOM on a links every child BOM, whole in a's store."""
    root, _ = dataset
    order = tmp_path / "nested_parent.py"
    order.write_text(f'''
import hashlib
from cats import factory
from cats.cas import reader
from cats.cas.cid import CID
from cats.order import Function, InfraFunction, Order


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parent(piece) -> bytes:
    child = Order(function=Function.of(digest), inputs=[piece.cid], infra=InfraFunction(merge="concat"),
                  name="child of " + piece.name)
    run = factory.submit(child, timeout_s=120)
    return b"".join(reader.read(factory.slice_store(), run.output))


order = Order(function=Function.of(parent, takes="slice"), inputs=[CID.parse("{root}")])
''')
    run = _run(cluster, order)
    a = cluster.nodes[0].store
    bom = load_bom(a, CID.parse(run["bom"]))
    assert bom.invoice.moved is not None and bom.invoice.moved.placed == {"a": FILES // 2, "b": FILES // 2}
    assert len(bom.children) == FILES
    # each child was driven, and signed, by the node its parent slice ran on
    signer = {}
    for record in records(a, bom):
        (child,) = record.children
        assert signer.setdefault(record.node, child.executor.did) == child.executor.did
    assert sorted(signer.values()) == sorted(Identity.load(n.home / "identity").did for n in cluster.nodes)
    assert sum(1 for _ in walk(a, CID.parse(run["bom"]))) > 3 * FILES  # children included, all in a's store


def test_replicas_run_next_to_different_stores(cluster: RayCluster, tmp_path: Path) -> None:
    """Two replicas on two node stores: each reads its own store, fetching what it lacks, and they agree."""
    a, b = (n.store for n in cluster.nodes)
    folder = tmp_path / "replicated"
    folder.mkdir()
    for i in range(4):
        (folder / f"r{i}.bin").write_bytes(random.Random(i).randbytes(SIZE))
    root = add(a, folder)  # on a only: b's replica fetches every input
    run = _run(cluster, _order(tmp_path, [root], name="digest_twice", replicas=2))
    bom = load_bom(a, CID.parse(run["bom"]))
    moved = bom.invoice.moved
    assert moved is not None and moved.placed == {"a": 4, "b": 4}
    assert moved.between_nodes >= 4 * SIZE  # b's replica read all four inputs from a
    for record in records(a, bom):
        assert record.agreed is True and record.replicas is not None
        assert len({o.node for o in record.replicas}) == 2
    verified = cluster.run(cluster.nodes[0].home, "verify", run["bom"], "--json")
    assert verified.code == 0, verified.err + verified.out


def test_assign_prefers_holders_and_balances() -> None:
    names = ["a", "b"]
    slots = {"a": 1, "b": 1}
    assert assign([["a"], ["a"], ["a", "b"], ["a", "b"]], names, slots, True) == ["a", "a", "b", "b"]
    assert assign([[], [], [], []], names, slots, True) == ["a", "b", "a", "b"]  # no holder: fetch anywhere
    assert assign([["a"], ["a"], ["a"], ["a"]], names, slots, False) == ["a", "b", "a", "b"]
    # a node with twice the CPUs takes twice the slices that either could run
    assert assign([["a", "b"]] * 6, names, {"a": 2, "b": 1}, True).count("a") == 4
