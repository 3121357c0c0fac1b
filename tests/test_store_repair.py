"""Repair: put replaces a bad stored block, `cats repair` restores from CARs, files and peers; staging
and leases leave nothing behind when their process dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cats.cas.cid import CID
from cats.cas.dag import walk
from cats.cas.pins import Pins, gc
from cats.cas.store.local import LocalStore
from cats.errors import IntegrityError


def _corrupt(store: LocalStore, cid: CID, data: bytes) -> None:
    path = store.path(cid)
    path.chmod(0o644)
    path.write_bytes(data)


# -- put and restore ---------------------------------------------------------------------------
def test_put_replaces_a_block_of_another_size(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "blocks")
    data = os.urandom(300_000)
    cid = CID.hash(data)
    store.put(cid, data)
    _corrupt(store, cid, data[:1000])
    assert store.check(cid) == "corrupt"
    store.put(cid, data)
    assert store.check(cid) == "ok"


def test_put_with_a_sample_replaces_a_block_with_a_flipped_byte(tmp_path: Path) -> None:
    """By default a same-size corruption survives a put (only the size is compared: `cats repair` finds
    it); with a sample, blocks up to the sample size are compared in full and it is replaced."""
    data = b"hello block" * 300
    cid = CID.hash(data)
    plain = LocalStore(tmp_path / "blocks")
    plain.put(cid, data)
    _corrupt(plain, cid, b"X" + data[1:])
    plain.put(cid, data)
    assert plain.check(cid) == "corrupt"
    LocalStore(tmp_path / "blocks", sample=4096).put(cid, data)
    assert plain.get(cid) == data


def test_put_keeps_a_good_block_and_refreshes_its_time(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "blocks")
    data = os.urandom(5000)
    cid = CID.hash(data)
    store.put(cid, data)
    inode = store.path(cid).stat().st_ino
    os.utime(store.path(cid), (1000, 1000))
    store.put(cid, data)
    assert store.path(cid).stat().st_ino == inode  # not rewritten
    assert store.mtime(cid) > time.time() - 60


def test_restore_refuses_bytes_that_do_not_match(store) -> None:  # the memory/local fixture
    data = b"good bytes"
    cid = CID.hash(data)
    store.put(cid, data)
    with pytest.raises(IntegrityError, match=str(cid)):
        store.restore(cid, b"evil bytes")
    assert store.get(cid) == data
    store.delete(cid)
    assert store.check(cid) == "missing"
    store.restore(cid, data)
    assert store.check(cid) == "ok"


# -- leases ------------------------------------------------------------------------------------
_HOLD = """
import sys, time
from cats.cas.store.local import LocalStore
with LocalStore(sys.argv[1]).lease():
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_live_lease_holds_gc_back_and_a_dead_one_does_not(tmp_path: Path) -> None:
    store, pins = LocalStore(tmp_path / "blocks"), Pins(tmp_path / "pins")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(store.root)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        data = b"written under someone's lease"
        cid = CID.hash(data)
        store.put(cid, data)  # after the lease began: spared while it lives
        assert gc(store, pins) == []
        assert len(list((store.root / ".leases").iterdir())) == 1
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    time.sleep(0.1)  # the block is older than the next gc, by more than its clock slack
    assert [c.to_v1() for c in gc(store, pins)] == [cid.to_v1()]  # the crashed writer's lease holds nothing
    assert list((store.root / ".leases").iterdir()) == []


def test_open_removes_dead_writers_temporary_files_and_puts_back_a_block_gc_moved_aside(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "blocks")
    data = b"a block a killed gc had moved aside"
    cid = CID.hash(data)
    store.put(cid, data)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    key = str(cid.to_v1())[1:]
    os.rename(store.path(cid), store.root / ".tmp" / f"{pid}.gc.{key}")
    (store.root / ".tmp" / f"{pid}.1.2.tmp").write_bytes(b"half a block")
    (store.root / ".tmp" / f"{os.getpid()}.1.2.tmp").write_bytes(b"a live writer's")
    reopened = LocalStore(store.root)
    assert sorted(p.name for p in (store.root / ".tmp").iterdir()) == [f"{os.getpid()}.1.2.tmp"]
    assert reopened.get(cid) == data


# -- cats repair ---------------------------------------------------------------------------------
@pytest.fixture
def added(cli, cats_home: Path, tmp_path: Path) -> tuple[Path, CID, LocalStore]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(700_000))
    (src / "b.txt").write_bytes(b"small file\n")
    result = cli("add", "-r", "-q", src)
    assert result.code == 0, result.err
    return src, CID.parse(result.out.strip()), LocalStore(cats_home / "blocks")


def test_repair_from_files_restores_corrupt_and_missing_blocks(cli, added) -> None:
    src, root, store = added
    blocks = list(walk(store, root))
    leaf = next(c for c in blocks if c.codec == 0x55 and len(store.get(c)) == 262_144)
    _corrupt(store, leaf, b"\0" * 262_144)  # same size: only a full check sees it
    gone = next(c for c in blocks if c != root and c != leaf)
    store.delete(gone)

    checked = cli("repair", "--json")
    assert checked.code == 1
    report = json.loads(checked.out)
    assert report["bad"] == {str(leaf): "corrupt", str(gone): "missing"}
    assert sorted(report["still_bad"]) == sorted([str(leaf), str(gone)])
    assert "still bad or missing" in checked.error_line(str(report["still_bad"][0]))

    fixed = cli("repair", str(root), "--from", src)
    assert fixed.code == 0, fixed.err
    assert f"corrupt {leaf}: repaired (from {src})" in fixed.out
    assert f"missing {gone}: repaired (from {src})" in fixed.out
    assert all(store.check(c) == "ok" for c in blocks)
    assert list((store.root / ".tmp").iterdir()) == []  # the re-import's scratch store is gone


def test_repair_from_files_added_otherwise_finds_nothing(cli, added, tmp_path: Path) -> None:
    src, root, store = added
    leaf = next(c for c in walk(store, root) if c.codec == 0x55)
    store.delete(leaf)
    result = cli("repair", str(root), "--from", src, "--cid-version", "0")  # other CIDs: nothing matches
    result.error_line(str(leaf), "still bad")
    assert store.check(leaf) == "missing"


def test_repair_from_a_car_uses_only_blocks_that_match(cli, added, tmp_path: Path) -> None:
    _, root, store = added
    good = tmp_path / "good.car"
    assert cli("export", str(root), "-o", good).code == 0
    parent = next(c for c in walk(store, root) if c != root and c.codec != 0x55)  # a file node: its leaves too
    below = list(walk(store, parent))
    for c in below:
        store.delete(c)
    # a CAR whose copy of that node is wrong bytes under its CID does not get it written
    raw = good.read_bytes()
    wrong = raw.replace(_block_bytes(good, parent), b"\xff" * len(_block_bytes(good, parent)))
    bad = tmp_path / "bad.car"
    bad.write_bytes(wrong)
    refused = cli("repair", str(root), "--car", bad)
    assert refused.code == 1
    assert store.check(parent) == "missing"
    result = cli("repair", str(root), "--car", bad, "--car", good, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert set(report["repaired"]) == {str(c) for c in below}  # the leaves found once the node was back
    assert report["repaired"][str(parent)] == f"car {good}"  # bad.car's copy did not hash to its CID
    assert {report["repaired"][str(c)] for c in below[1:]} == {f"car {bad}"}  # its good blocks do help
    assert report["still_bad"] == [] and all(store.check(c) == "ok" for c in below)


def _block_bytes(car: Path, cid: CID) -> bytes:
    from cats.cas.repair import car_source

    with car_source(car) as source:
        data = source(cid)
    assert data is not None
    return data


# -- staging -------------------------------------------------------------------------------------
def _staging_size(pid: int, folder: Path) -> int | None:
    """The size of the import's staging file (open, unnamed, in folder), or None before it exists."""
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith(str(folder) + "/"):
                return os.stat(f"/proc/{pid}/fd/{fd}").st_size
    except (FileNotFoundError, ProcessLookupError):
        pass
    return None


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads the import's open files in /proc")
def test_killed_import_leaves_no_staging_and_stages_at_most_the_car(cli, cats_home: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(b"".join(i.to_bytes(8, "little") + os.urandom(4088) for i in range(24 << 8)))  # 24 MiB
    assert cli("add", "-q", "--no-pin", data).code == 0
    root = CID.parse(cli("add", "-q", "-n", data).out.strip())
    car = tmp_path / "data.car"
    assert cli("export", str(root), "-o", car).code == 0
    assert cli("gc").code == 0  # the store is empty again: the import has everything to stage
    store = LocalStore(cats_home / "blocks")
    assert list(store) == []

    env = {**os.environ, "CATS_HOME": str(cats_home)}
    importing = subprocess.Popen([sys.executable, "-m", "cats", "import", str(car)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = 0
    deadline = time.monotonic() + 60
    while importing.poll() is None and time.monotonic() < deadline:
        size = _staging_size(importing.pid, store.root / ".tmp")
        if size is not None:
            seen = max(seen, size)
            assert size <= car.stat().st_size  # one copy of each block, nothing more
            if size > car.stat().st_size // 4:
                break
        time.sleep(0.002)
    importing.send_signal(signal.SIGKILL)
    importing.wait()
    assert seen > 0, "the import was not caught staging"
    assert list((store.root / ".tmp").iterdir()) == []  # the staging file had no name: gone with its process
    assert list(store) == []  # all or nothing
    assert cli("gc").code == 0
    assert [p for p in store.root.rglob("*") if p.is_file()] == []
    finished = cli("import", car)
    assert finished.code == 0, finished.err
    assert sum(1 for _ in walk(store, root)) == len(list(store))


def test_repair_from_peers_takes_only_matching_bytes(cli, added, tmp_path: Path, http_server) -> None:
    """A lying peer (a server answering as a node, with other bytes) repairs nothing; a real node holding
    the DAG restores the corrupt and the missing block."""
    from test_mesh_node import NodeProc

    _, root, store = added
    blocks = list(walk(store, root))
    node = NodeProc(tmp_path / "peer")
    node.base.mkdir()
    node.home.mkdir()
    theirs = LocalStore(node.home / "blocks")
    for cid in blocks:
        theirs.put(cid, store.get(cid))
    leaf = next(c for c in blocks if c.codec == 0x55 and len(store.get(c)) == 262_144)
    _corrupt(store, leaf, b"\0" * 262_144)
    gone = next(c for c in blocks if c != root and c != leaf)
    store.delete(gone)

    http_server.put("/id", json.dumps({"did": "did:key:z6MkliarliarliarliarliarliarliarliarliarliarliarLIAR"}).encode())
    for cid in (leaf, gone):
        http_server.put(f"/ipfs/{cid}?format=raw", b"\0" * 262_144)
    lied = cli("repair", str(root), "--peer", http_server.url, "--json")
    assert lied.code == 1 and json.loads(lied.out)["repaired"] == {}
    asked = {served.path for served in http_server.log}
    assert f"/ipfs/{gone}?format=raw" in asked  # it was asked, and not believed
    assert store.check(leaf) == "corrupt" and store.check(gone) == "missing"

    node.start()
    try:
        fixed = cli("repair", str(root), "--peer", node.url)
    finally:
        node.stop()
    assert fixed.code == 0, fixed.err
    assert f"corrupt {leaf}: repaired (peer {node.url})" in fixed.out
    assert f"missing {gone}: repaired (peer {node.url})" in fixed.out
    assert all(store.check(c) == "ok" for c in blocks)
