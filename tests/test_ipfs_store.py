"""The IPFS-daemon block store against a real daemon: kubo, offline on loopback.

The daemon is the session fixture `ipfs_api` (tests/conftest.py, `kubo_daemon` of tests/kubo.py): it
fails, never skips, when $CATS_TEST_KUBO is not a kubo that runs.

js-ipfs 0.66 (`js_ipfs_api`, tests/ipfsd) runs only the tests of what the store does for daemons that
are not kubo and kubo never shows: `block/put` that knows only the deprecated `format` (the store says
it again in those words) and `pin/add` that waits on the network for a missing block (the store's
timeout). Without node or its packages those skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
import pytest
from kubo import Kubo, KuboDaemon, kubo  # noqa: F401 - the fixture
from servers import free_port

from cats.cas import dagcbor, dagpb, multihash, reader, unixfs
from cats.cas.car import Sections, import_car
from cats.cas.cid import CID, DAG_CBOR, DAG_PB, RAW
from cats.cas.dag import walk
from cats.cas.importer import CHUNK_SIZE, Importer
from cats.cas.pins import Pins, gc
from cats.cas.store import open_store
from cats.cas.store.ipfs import IPFSStore, api_url
from cats.cas.store.memory import MemoryStore
from cats.errors import BlockNotFound, CatsError


@pytest.fixture
def ipfs(ipfs_api: str) -> Iterator[IPFSStore]:
    store = IPFSStore(ipfs_api)
    yield store
    store.close()


@pytest.fixture(params=["kubo", "js-ipfs"])
def any_api(request: pytest.FixtureRequest) -> str:
    """kubo's API, then js-ipfs's, for what the store does differently for each."""
    return request.getfixturevalue("ipfs_api" if request.param == "kubo" else "js_ipfs_api")


def _rpc(api: str, command: str, params: dict[str, str] | None = None, **kwargs: object) -> httpx.Response:
    r = httpx.post(f"{api}/api/v0/{command}", params=params, timeout=60, **kwargs)  # type: ignore[arg-type]
    assert r.status_code == 200, (command, r.status_code, r.text)
    return r


def _daemon_pins(api: str) -> set[CID]:
    """The daemon's recursive pins as its own pin/ls lists them (as CIDv1)."""
    return {CID.parse(k).to_v1() for k in json.loads(_rpc(api, "pin/ls", {"type": "recursive"}).text)["Keys"]}


def _daemon_gc(api: str) -> set[bytes]:
    """Run the daemon's own gc, as its owner would; the multihashes of the blocks it removed."""
    lines = _rpc(api, "repo/gc").text.splitlines()
    return {CID.parse(json.loads(line)["Key"]["/"]).multihash for line in lines if line.strip()}


def _hashes(cids: Iterable[CID]) -> set[bytes]:
    """A daemon keys blocks by multihash, and names removed blocks with the raw codec."""
    return {c.multihash for c in cids}


def _tree(store: IPFSStore, root: Path) -> tuple[CID, set[CID]]:
    """A folder with a multi-block file and a nested small file, imported; its root and every block."""
    (root / "nested").mkdir(parents=True)
    (root / "big.bin").write_bytes(os.urandom(CHUNK_SIZE * 2 + 100))
    (root / "nested" / "small.txt").write_bytes(os.urandom(16))
    with Importer(store) as importer:
        cid = list(importer.add_path(root))[-1].cid
    return cid, {c.to_v1() for c in walk(store, cid)}


def _loose(store: IPFSStore) -> CID:
    data = b"loose " + os.urandom(16)
    store.put(cid := CID.hash(data, RAW), data)
    return cid


def _blocks() -> list[tuple[CID, bytes]]:
    raw = b"raw bytes for the daemon"
    pb = dagpb.encode([], unixfs.encode(unixfs.Kind.FILE, b"dag-pb text", 11))
    cbor = dagcbor.encode({"kind": "bom", "inputs": [CID.hash(raw)], "n": 3})
    return [(CID.hash(raw, RAW), raw), (CID.hash(pb, DAG_PB, version=0), pb),
            (CID.hash(pb, DAG_PB, version=1), pb), (CID.hash(cbor, DAG_CBOR), cbor)]


# -- without a daemon -------------------------------------------------------------------------
def test_api_addresses() -> None:
    assert api_url("/ip4/127.0.0.1/tcp/5001") == "http://127.0.0.1:5001"
    assert api_url("/dns/ipfs.example/tcp/443/https") == "https://ipfs.example:443"
    assert api_url("ipfs+http://localhost:5001") == "http://localhost:5001"
    assert api_url("http://127.0.0.1:5001/") == "http://127.0.0.1:5001"
    with pytest.raises(CatsError, match="/unix/x"):
        api_url("/unix/x")


def test_open_store_picks_the_daemon(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CATS_STORE", raising=False)
    monkeypatch.setenv("CATS_HOME", str(tmp_path))
    monkeypatch.delenv("CATS_IPFS_API", raising=False)
    assert not isinstance(open_store(), IPFSStore)
    monkeypatch.setenv("CATS_IPFS_API", "/ip4/127.0.0.1/tcp/5999")
    store = open_store()
    assert isinstance(store, IPFSStore) and store.api == "http://127.0.0.1:5999"
    named = open_store("ipfs+http://127.0.0.1:6001")
    assert isinstance(named, IPFSStore) and named.api == "http://127.0.0.1:6001"
    monkeypatch.setenv("CATS_STORE", "mem://ipfs-test")
    assert isinstance(open_store(), MemoryStore)  # an explicit store URL wins


def test_unreachable_daemon_is_a_clear_error() -> None:
    api = f"http://127.0.0.1:{free_port()}"
    store = IPFSStore(api, timeout=5)
    cid = CID.hash(b"x")
    for call in (lambda: store.has(cid), lambda: store.get(cid), lambda: store.put(cid, b"x"), lambda: list(store)):
        with pytest.raises(CatsError, match=api):
            call()


# -- against the daemon -----------------------------------------------------------------------
def test_the_daemon_is_kubo_offline_on_loopback(kubo_daemon: KuboDaemon) -> None:  # noqa: F811
    api = kubo_daemon.api
    number = kubo_daemon.cli.text("version", "--number")
    assert json.loads(_rpc(api, "version").text)["Version"] == number
    offline = httpx.post(f"{api}/api/v0/swarm/peers", timeout=30)  # --offline: no libp2p host at all
    assert offline.status_code == 500 and "online mode" in offline.text
    assert json.loads(_rpc(api, "id").text)["Addresses"] in (None, [])
    assert json.loads(_rpc(api, "config", {"arg": "Addresses.Swarm"}).text)["Value"] == []
    assert json.loads(_rpc(api, "bootstrap/list").text)["Peers"] in (None, [])
    assert json.loads(_rpc(api, "config", {"arg": "Routing.Type"}).text)["Value"] == "none"
    assert api.startswith("http://127.0.0.1:") and kubo_daemon.gateway.startswith("http://127.0.0.1:")
    block = b"served by kubo's gateway " + os.urandom(8)
    _rpc(api, "block/put", {"cid-codec": "raw"}, files={"data": ("b", block)})
    served = httpx.get(f"{kubo_daemon.gateway}/ipfs/{CID.hash(block, RAW)}?format=raw", timeout=30)
    assert served.status_code == 200 and served.content == block


def test_cats_blocks_read_by_the_daemon(any_api: str, request: pytest.FixtureRequest) -> None:
    ipfs_api, ipfs = any_api, IPFSStore(any_api)
    for cid, data in _blocks():
        ipfs.put(cid, data)
        assert ipfs.has(cid)
        assert _rpc(ipfs_api, "block/get", {"arg": str(cid)}).content == data
        key = json.loads(_rpc(ipfs_api, "block/stat", {"arg": str(cid)}).text)["Key"]
        assert CID.parse(key).to_v1() == cid.to_v1()
        assert ipfs.get(cid) == data
    listed = {c.multihash for c in ipfs}
    assert {cid.multihash for cid, _ in _blocks()} <= listed
    # kubo takes `cid-codec`; js-ipfs ignores it, and the store said it again with `format`
    assert ipfs._legacy_format == (request.node.callspec.params["any_api"] == "js-ipfs")
    ipfs.close()


def test_daemon_blocks_read_by_cats(ipfs: IPFSStore, ipfs_api: str) -> None:
    data = b"added by the daemon itself\n" * 10
    r = _rpc(ipfs_api, "add", {"cid-version": "1", "raw-leaves": "true"}, files={"file": ("f.txt", data)})
    root = CID.parse(json.loads(r.text.splitlines()[-1])["Hash"])
    assert b"".join(reader.read(ipfs, root)) == data
    block = b"\xa1ablock put by the daemon"
    r = _rpc(ipfs_api, "block/put", {"cid-codec": "raw"}, files={"data": ("b", block)})
    cid = CID.parse(json.loads(r.text)["Key"])
    assert cid.multihash == multihash.digest(block)
    assert ipfs.get(cid) == block


def test_importer_matches_the_daemons_add(ipfs: IPFSStore, ipfs_api: str) -> None:
    data = os.urandom(3 * 262144 + 1234)
    with Importer(ipfs, cid_version=1, raw_leaves=True) as importer:
        root = importer.add_bytes(data).cid
    assert b"".join(reader.read(ipfs, root)) == data
    assert b"".join(reader.read(ipfs, root, 262140, 10)) == data[262140:262150]
    r = _rpc(ipfs_api, "add", {"cid-version": "1", "raw-leaves": "true", "chunker": "size-262144",
                               "only-hash": "true"}, files={"file": ("big.bin", data)})
    assert CID.parse(json.loads(r.text.splitlines()[-1])["Hash"]) == root
    assert _rpc(ipfs_api, "cat", {"arg": str(root)}).content == data


def test_missing_block(ipfs: IPFSStore) -> None:
    cid = CID.hash(b"never stored anywhere " + os.urandom(8))
    assert not ipfs.has(cid)
    with pytest.raises(BlockNotFound, match=str(cid)) as caught:
        ipfs.get(cid)
    assert caught.value.cid == cid
    ipfs.delete(cid)  # absent: not an error
    ipfs.put(cid := CID.hash(b"to delete"), b"to delete")
    assert ipfs.has(cid)
    ipfs.delete(cid)
    assert not ipfs.has(cid)


def test_bom_like_dag_read_by_the_daemon(ipfs: IPFSStore, ipfs_api: str) -> None:
    leaf = b"an output slice"
    leaf_cid = CID.hash(leaf)
    slices = dagcbor.encode([{"slice": 0, "output": leaf_cid, "seconds": 0.25}])
    slices_cid = CID.hash(slices, DAG_CBOR)
    bom = dagcbor.encode({"version": 1, "order": {"function": "m:f"}, "outputs": [leaf_cid], "slices": slices_cid,
                          "parents": [], "invoice": {"cpu_seconds": 1.5}})
    bom_cid = CID.hash(bom, DAG_CBOR)
    for cid, block in ((leaf_cid, leaf), (slices_cid, slices), (bom_cid, bom)):
        ipfs.put(cid, block)
    # the daemon decodes the DAG-CBOR and follows its links by path
    whole = json.loads(_rpc(ipfs_api, "dag/get", {"arg": str(bom_cid)}).text)
    assert whole["outputs"] == [{"/": str(leaf_cid)}] and whole["slices"] == {"/": str(slices_cid)}
    assert json.loads(_rpc(ipfs_api, "dag/get", {"arg": f"{bom_cid}/order"}).text) == {"function": "m:f"}
    assert json.loads(_rpc(ipfs_api, "dag/get", {"arg": f"{bom_cid}/slices/0/seconds"}).text) == 0.25
    assert json.loads(_rpc(ipfs_api, "dag/get", {"arg": f"{bom_cid}/invoice/cpu_seconds"}).text) == 1.5
    car = _rpc(ipfs_api, "dag/export", {"arg": str(bom_cid)}).content
    into = MemoryStore()
    roots, count = import_car(into, io.BytesIO(car))
    assert roots == [bom_cid] and count == 3
    assert into.get(bom_cid) == bom and into.get(slices_cid) == slices and into.get(leaf_cid) == leaf


def test_an_order_runs_with_its_blocks_in_the_daemon(ray_session: str, cats_home: Path, tmp_path: Path,
                                                     ipfs: IPFSStore, ipfs_api: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """CATS_IPFS_API makes the daemon the store: Ray workers open it by URL, read slices from it and
    write results into it, and the daemon serves the output; verification re-executes from it."""
    import jobs

    from cats import factory
    from cats.order import Function, Order
    from cats.verification.audit import verify

    monkeypatch.setenv("CATS_IPFS_API", ipfs_api)
    src = jobs.module(tmp_path, "fipfs_order", "def shout(data):\n    return data.upper()\n")
    inputs = jobs.folder(tmp_path, {"a.txt": b"alpha\n", "b.txt": b"bravo\n"})

    run = factory.run(Order(function=Function(entry="fipfs_order:shout", source=src), inputs=[inputs]))

    assert ipfs.has(run.bom) and ipfs.has(run.output)
    # every block of the BOM's DAG (order, code, inputs, slices, outputs) is in the daemon, by its own
    # accounts: block/stat of each, and dag/stat's walk of the whole DAG, which fails offline on a gap
    dag = {c.to_v1() for c in walk(ipfs, run.bom, read_leaves=True)}
    for cid in dag:
        assert CID.parse(json.loads(_rpc(ipfs_api, "block/stat", {"arg": str(cid)}).text)["Key"]).to_v1() == cid
    stat = json.loads(_rpc(ipfs_api, "dag/stat", {"arg": str(run.bom), "progress": "false", "offline": "true"}).text)
    assert stat["UniqueBlocks"] == len(dag) > 10
    for name, want in (("a.txt", b"ALPHA\n"), ("b.txt", b"BRAVO\n")):
        served = _rpc(ipfs_api, "cat", {"arg": f"/ipfs/{run.output}/{name}"})
        assert served.status_code == 200 and served.content == want
    assert not (cats_home / "blocks").exists() or not any((cats_home / "blocks").iterdir())  # nothing local
    assert run.bom.to_v1() in _daemon_pins(ipfs_api)  # the daemon keeps what the Factory pinned
    loose = _loose(ipfs)
    assert loose.multihash in _daemon_gc(ipfs_api)
    report = verify(ipfs, run.bom)  # after the daemon's gc: every block it needs was kept
    assert report.verified, report.problems


def _car_blocks(car: bytes) -> tuple[list[CID], list[tuple[CID, bytes]]]:
    """A CAR's roots and its (CID, block) sections in file order, each block hashed against its CID."""
    sections = Sections(verify=True)
    blocks = [(cid, bytes(block)) for cid, block in sections.feed(car)]
    assert sections.roots is not None
    return sections.roots, blocks


def test_cars_between_kubo_and_cats_block_for_block(ray_session: str, cli, cats_home: Path, tmp_path: Path,
                                                    ipfs: IPFSStore, ipfs_api: str, kubo: Kubo,  # noqa: F811
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An Order's DAG (DAG-CBOR BOM, UnixFS folders, raw leaves) goes kubo -> `cats import`, then
    `cats export` -> `ipfs dag import` of a kubo that never saw it: the same blocks at every step, and
    that kubo exports a CAR byte for byte the daemon's."""
    import jobs

    from cats import factory
    from cats.order import Function, Order

    monkeypatch.setenv("CATS_IPFS_API", ipfs_api)
    src = jobs.module(tmp_path, "fipfs_car", "def rev(data):\n    return data[::-1]\n")
    big = os.urandom(CHUNK_SIZE * 2 + 7)
    inputs = jobs.folder(tmp_path, {"a.bin": big, "b.txt": b"bravo\n"})
    run = factory.run(Order(function=Function(entry="fipfs_car:rev", source=src), inputs=[inputs]))
    monkeypatch.delenv("CATS_IPFS_API")

    from_kubo = _rpc(ipfs_api, "dag/export", {"arg": str(run.bom)}).content
    roots, kubo_blocks = _car_blocks(from_kubo)
    assert roots == [run.bom]
    dag = {c.to_v1() for c in walk(ipfs, run.bom)}
    assert {c.to_v1() for c, _ in kubo_blocks} == dag and len(kubo_blocks) == len(dag)
    assert {c.codec for c, _ in kubo_blocks} == {DAG_CBOR, DAG_PB, RAW}

    (tmp_path / "kubo.car").write_bytes(from_kubo)
    res = cli("import", tmp_path / "kubo.car")
    assert res.code == 0, res.err
    local = open_store(f"file://{cats_home / 'blocks'}")
    for cid, block in kubo_blocks:
        assert local.get(cid) == block

    assert cli("export", str(run.bom), "-o", tmp_path / "cats.car").code == 0
    from_cats = (tmp_path / "cats.car").read_bytes()
    roots, cats_blocks = _car_blocks(from_cats)
    assert roots == [run.bom]
    assert sorted(cats_blocks) == sorted(kubo_blocks)  # the same CIDs, codecs included, and bytes

    imported = json.loads(kubo("dag", "import", "--stats", "--enc=json", tmp_path / "cats.car").splitlines()[-1])
    assert imported["Stats"]["BlockCount"] == len(dag)
    for cid, block in cats_blocks:
        assert kubo("block", "get", str(cid)) == block
    assert kubo("dag", "export", str(run.bom)) == from_kubo
    kubo("dag", "stat", "--offline", "--progress=false", str(run.bom))


def test_a_store_workers_cannot_open_is_refused(cats_home: Path, tmp_path: Path) -> None:
    import jobs

    from cats import factory
    from cats.cas.store.memory import MemoryStore
    from cats.order import Function, Order

    src = jobs.module(tmp_path, "fipfs_mem", "def f(data):\n    return data\n")
    with pytest.raises(CatsError, match="MemoryStore lives in this process only"):
        factory.run(Order(function=Function(entry="fipfs_mem:f", source=src), inputs=[tmp_path]),
                    store=MemoryStore())


# -- pins and gc in the daemon ----------------------------------------------------------------
def test_pins_are_pinned_in_the_daemon_and_its_gc_keeps_them(ipfs: IPFSStore, ipfs_api: str,
                                                             tmp_path: Path) -> None:
    pins = Pins(tmp_path / "pins")
    root, dag = _tree(ipfs, tmp_path / "a")
    assert len(dag) >= 5
    assert pins.add(ipfs, root) == len(dag)
    assert root in pins and root.to_v1() in _daemon_pins(ipfs_api) and root in ipfs.pins()
    loose = _loose(ipfs)

    removed = _daemon_gc(ipfs_api)  # the daemon's gc, run behind CATs' back
    assert loose.multihash in removed and not removed & _hashes(dag)
    assert not ipfs.has(loose) and all(ipfs.has(c) for c in dag)
    assert {c.to_v1() for c in walk(ipfs, root, read_leaves=True)} == dag

    pins.rm(ipfs, root)
    assert root not in pins and root.to_v1() not in _daemon_pins(ipfs_api)
    with pytest.raises(CatsError, match=str(root)):
        pins.rm(ipfs, root)
    assert _hashes(gc(ipfs, pins)) >= _hashes(dag)  # CATs' gc is the daemon's: the unpinned DAG goes
    assert not _hashes(dag) & _hashes(ipfs)  # (refs/local: has() of an absent block costs 1 s)


def test_gc_keeps_what_the_daemon_pins_for_others(ipfs: IPFSStore, ipfs_api: str, tmp_path: Path) -> None:
    """The daemon may hold others' pinned data that CATs' pins do not know: its gc keeps them, and a
    CATs pin unpinned in the daemon behind CATs' back is pinned again before it runs."""
    pins = Pins(tmp_path / "pins")
    ours, our_dag = _tree(ipfs, tmp_path / "ours")
    theirs, their_dag = _tree(ipfs, tmp_path / "theirs")
    pins.add(ipfs, ours)
    _rpc(ipfs_api, "pin/rm", {"arg": str(ours)})
    _rpc(ipfs_api, "pin/add", {"arg": str(theirs)})
    loose = _loose(ipfs)

    removed = _hashes(gc(ipfs, pins))
    assert loose.multihash in removed and not removed & _hashes(our_dag | their_dag)
    assert all(ipfs.has(c) for c in our_dag | their_dag)
    assert {ours.to_v1(), theirs.to_v1()} <= _daemon_pins(ipfs_api)
    assert {ours, theirs} <= set(ipfs.pins())

    pins.rm(ipfs, theirs)  # listed by `cats pin ls` on a daemon store, so it can be unpinned too
    assert theirs.to_v1() not in _daemon_pins(ipfs_api)


def test_pin_of_an_incomplete_dag_names_the_missing_block(any_api: str, tmp_path: Path) -> None:
    ipfs_api = any_api
    ipfs = IPFSStore(ipfs_api, timeout=2)  # the daemon waits this long for the missing block
    pins = Pins(tmp_path / "pins")
    root, dag = _tree(ipfs, tmp_path / "a")
    gone = sorted(c for c in dag if c.codec == RAW)[0]
    ipfs.delete(gone)

    with pytest.raises(BlockNotFound, match=str(gone)):
        pins.add(ipfs, root)
    with pytest.raises(CatsError, match=f"cannot pin {root}.*every block of its DAG"):
        ipfs.pin(root)  # the daemon alone: it names no block, so its message names the root
    time.sleep(1)  # a pin the daemon went on with would show by now
    assert list(pins) == [] and root.to_v1() not in _daemon_pins(ipfs_api)

    pins.folder.joinpath(str(root.to_v1())).touch()  # a pin from before, of a DAG since broken
    with pytest.raises(CatsError, match=f"pinned DAG {root}.*gc removed nothing"):
        gc(ipfs, pins)
    assert ipfs.has(root)
    ipfs.close()


def test_cli_pins_and_gc_on_the_daemon(cli, ipfs: IPFSStore, ipfs_api: str, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATS_IPFS_API", ipfs_api)
    f = tmp_path / "f.bin"
    f.write_bytes(os.urandom(CHUNK_SIZE + 10))
    root = CID.parse(cli("add", "-q", f).out.strip())
    dag = {c.to_v1() for c in walk(ipfs, root)}
    assert str(root) in cli("pin", "ls").out.split()
    assert root.to_v1() in _daemon_pins(ipfs_api)

    res = cli("gc", "--json")
    assert res.code == 0, res.err
    assert not _hashes(CID.parse(c) for c in json.loads(res.out)["removed"]) & _hashes(dag)
    assert cli("pin", "rm", str(root)).out.strip() == f"unpinned {root}"
    assert str(root) not in cli("pin", "ls", "--json").out
    res = cli("gc", "--json")
    assert _hashes(CID.parse(c) for c in json.loads(res.out)["removed"]) >= _hashes(dag)
    cli("pin", "rm", str(root)).error_line(str(root))
