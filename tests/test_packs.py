"""Packs in the local store: blocks a pull writes end to end in one file, found through an index.

Everything the store does with a block file it does with a packed block: has/get/size/read_into,
iteration, the de-duplicated put's refresh, delete, gc (its time protocol and what pins keep),
repair's restore; a writer that dies leaves nothing visible and nothing behind once the store is
opened again; and a pull from a real node lands in a pack that gc, pins and `cats cat` work with.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from pathlib import Path

import pytest
from nodes import RealNode, run_cli, start_all

from cats.cas.cid import CID, RAW
from cats.cas.dag import walk
from cats.cas.importer import Importer
from cats.cas.pins import Pins, gc
from cats.cas.store.local import LocalStore
from cats.cas.store.memory import MemoryStore
from cats.errors import BlockNotFound, IntegrityError


def _blocks(n: int, seed: int = 1) -> list[tuple[CID, bytes]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        data = rng.randbytes(rng.randrange(1, 5000))
        out.append((CID.hash(data, RAW), data))
    return out


def _packs(store: LocalStore) -> list[str]:
    return sorted(p.name for p in (store.root / ".packs").glob("*.pack"))


def test_packed_blocks_read_like_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "blocks")
    blocks = _blocks(50)
    with store.writing() as put:
        assert all(put(cid, data) for cid, data in blocks)
        assert not put(*blocks[0])  # here already (in this pack): refreshed, not written twice
    assert len(_packs(store)) == 1 and not any(store.path(cid).exists() for cid, _ in blocks)
    for cid, data in blocks:
        assert store.has(cid) and store.get(cid) == data and store.size(cid) == len(data)
        buffer = memoryview(bytearray(len(data)))
        store.read_into(cid, buffer)
        assert buffer == data
        assert store.check(cid) == "ok"
    assert sorted(store) == sorted(cid.to_v1() for cid, _ in blocks)
    # another process (a Ray worker, the node) opening the same folder sees them too
    assert LocalStore(tmp_path / "blocks").get(blocks[7][0]) == blocks[7][1]


def test_a_block_stored_already_is_refreshed_not_packed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "blocks")
    (cid, data), (other, more) = _blocks(2)
    store.put(cid, data)
    os.utime(store.path(cid), (1, 1))
    with store.writing() as put:
        assert not put(cid, data)
        assert put(other, more)
    assert store.mtime(cid) > time.time() - 60  # refreshed for gc's protocol
    assert store.path(cid).exists() and not store.path(other).exists()
    store.put(other, more)  # a put of a packed block refreshes the row, and writes no file
    assert not store.path(other).exists() and store.get(other) == more


def test_delete_and_the_pack_going_with_its_last_block(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "blocks")
    blocks = _blocks(5)
    with store.writing() as put:
        for cid, data in blocks:
            put(cid, data)
    for i, (cid, _) in enumerate(blocks):
        assert _packs(store), "the pack stays while a block in it does"
        store.delete(cid)
        assert not store.has(cid)
        with pytest.raises(BlockNotFound):
            store.get(cid)
        assert len(list(store)) == len(blocks) - i - 1
    assert _packs(store) == []


def test_gc_removes_unpinned_packed_blocks_and_keeps_pinned_and_fresh_ones(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "blocks")
    source = MemoryStore()
    with Importer(source, cid_version=1) as importer:
        kept = importer.add_bytes(random.Random(3).randbytes(600_000)).cid
        dropped = importer.add_bytes(random.Random(4).randbytes(600_000)).cid
    with store.writing() as put:
        for cid in source:
            put(cid, source.get(cid))
    pins = Pins(tmp_path / "pins")
    pins.add(store, kept)
    time.sleep(0.1)
    removed = gc(store, pins)
    assert {c.to_v1() for c in removed} == {c.to_v1() for c in walk(source, dropped)}
    assert [c for c in walk(store, kept, read_leaves=True)]  # whole, every block read and hashed
    assert not store.has(dropped)
    # a block refreshed after gc started is kept: discard compares the row's time in one statement
    (cid, data), = _blocks(1, seed=9)
    with store.writing() as put:
        put(cid, data)
    assert not store.discard(cid, time.time() - 3600)
    assert store.discard(cid, time.time() + 1) and not store.has(cid)


def test_restore_replaces_a_corrupt_packed_block(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "blocks")
    (cid, data), = _blocks(1)
    with store.writing() as put:
        put(cid, data)
    (pack,) = _packs(store)
    path = store.root / ".packs" / pack
    os.chmod(path, 0o644)
    raw = bytearray(path.read_bytes())
    raw[0] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        store.get(cid)
    assert store.check(cid) == "corrupt"
    store.restore(cid, data)
    assert store.get(cid) == data and store.path(cid).exists()


def _die_while_writing(root: str, blocks: list[tuple[CID, bytes]]) -> None:
    store = LocalStore(root)
    with store.writing() as put:
        for cid, data in blocks:
            put(cid, data)
        os._exit(9)  # killed before the end of the block: nothing was made visible


def test_a_writer_that_dies_leaves_nothing_visible_and_nothing_behind(tmp_path: Path) -> None:
    root = tmp_path / "blocks"
    blocks = _blocks(20)
    proc = multiprocessing.get_context("fork").Process(target=_die_while_writing, args=(str(root), blocks))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 9
    assert len(list((root / ".packs").glob("*.pack"))) == 1  # its bytes are there, named by no row
    store = LocalStore(root)  # opening the store removes them
    assert _packs(store) == [] and list(store) == []
    assert not any(store.has(cid) for cid, _ in blocks)


@pytest.mark.slow
def test_a_pull_lands_in_a_pack_that_pins_gc_and_cat_use(tmp_path: Path, ray_session: str) -> None:
    node = RealNode(tmp_path / "node", ray_session)
    data = random.Random(5).randbytes(3 << 20)
    with Importer(node.store, cid_version=1) as importer:
        root = importer.add_bytes(data).cid
    start_all(node)
    try:
        home = tmp_path / "client"
        pulled = run_cli(home, "mesh", "pull", str(root), "--from", node.url, "--json")
        assert pulled.code == 0, pulled.err
    finally:
        node.stop()
    store = LocalStore(home / "blocks")
    assert len(_packs(store)) == 1 and not any(store.path(c).exists() for c in walk(store, root))
    assert run_cli(home, "cat", str(root)).stdout_bytes == data
    gc_run = run_cli(home, "gc")
    assert gc_run.code == 0, gc_run.err
    assert run_cli(home, "cat", str(root)).stdout_bytes == data  # pinned by the pull: kept
    assert run_cli(home, "pin", "rm", str(root)).code == 0
    assert run_cli(home, "gc").code == 0
    assert _packs(LocalStore(home / "blocks")) == []
