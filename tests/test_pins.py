"""Pins and garbage collection."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from wrapping import Forwarding

from cats.cas.cid import CID, DAG_PB, RAW
from cats.cas.dag import put_cbor, walk
from cats.cas.importer import CHUNK_SIZE, Importer
from cats.cas.pins import Pins, gc
from cats.cas.store import BlockStore
from cats.cas.store.local import LocalStore
from cats.cas.store.memory import MemoryStore
from cats.errors import BlockNotFound, CatsError


@pytest.fixture
def pins(tmp_path: Path) -> Pins:
    return Pins(tmp_path / "pins")


def _tree(store: BlockStore, root: Path, seed: int, version: int = 1) -> CID:
    """Import a folder with a multi-block file, a nested folder and small files; return its root."""
    rng = random.Random(seed)
    (root / "nested").mkdir(parents=True)
    (root / "big.bin").write_bytes(rng.randbytes(CHUNK_SIZE * 2 + seed))
    (root / "nested" / "small.txt").write_bytes(f"small {seed}".encode())
    (root / "top.txt").write_bytes(f"top {seed}".encode())
    with Importer(store, cid_version=version) as imp:
        return list(imp.add_path(root))[-1].cid


def _dag(store: BlockStore, root: CID) -> set[CID]:
    return {c.to_v1() for c in walk(store, root)}


def _loose(store: BlockStore, n: int, tag: str = "loose") -> set[CID]:
    out = set()
    for i in range(n):
        data = f"{tag} {i}".encode()
        cid = CID.hash(data, RAW)
        store.put(cid, data)
        out.add(cid)
    return out


def _settle() -> None:
    """Let the clock move past the blocks just written, so gc sees them as older than its start."""
    time.sleep(0.1)


# -- pins -------------------------------------------------------------------------------------
def test_pin_add_rm_ls(store: BlockStore, pins: Pins, tmp_path: Path) -> None:
    a = _tree(store, tmp_path / "a", 1)
    b = _tree(store, tmp_path / "b", 2, version=0)
    assert list(pins) == []
    assert pins.add(store, a) == len(_dag(store, a))
    assert pins.add(store, b) == len(_dag(store, b))
    assert a in pins and b in pins and b.to_v1() in pins
    assert set(pins) == {a, b.to_v1()}
    assert pins.add(store, a) == len(_dag(store, a))  # pinning twice is fine
    assert len(list(pins)) == 2

    pins.rm(store, b)
    assert b not in pins
    assert list(pins) == [a]
    with pytest.raises(CatsError) as e:
        pins.rm(store, b)
    assert str(b) in str(e.value)
    # Pins live on disk: another Pins over the same folder sees them.
    assert list(Pins(tmp_path / "pins")) == [a]


def _a_block(store: BlockStore, root: CID, codec: str) -> CID:
    """A block of root's DAG other than root: a raw leaf, or a dag-pb node (a folder or file node)."""
    want = RAW if codec == "raw" else DAG_PB
    return sorted(c for c in _dag(store, root) - {root.to_v1()} if c.codec == want)[0]


@pytest.mark.parametrize("codec", ["raw", "dag-pb"])
def test_pin_add_of_an_incomplete_dag_names_the_missing_cid(store: BlockStore, pins: Pins,
                                                             tmp_path: Path, codec: str) -> None:
    root = _tree(store, tmp_path / "a", 3)
    missing = _a_block(store, root, codec)
    store.delete(missing)
    with pytest.raises(BlockNotFound) as e:
        pins.add(store, root)
    assert str(missing) in str(e.value)
    assert root not in pins
    assert list(pins) == []


def test_pin_add_of_an_absent_root(store: BlockStore, pins: Pins) -> None:
    absent = CID.hash(b"never stored", RAW)
    with pytest.raises(BlockNotFound) as e:
        pins.add(store, absent)
    assert str(absent) in str(e.value)
    assert list(pins) == []


# -- gc ---------------------------------------------------------------------------------------
def test_gc_keeps_pinned_dags_and_removes_the_rest(store: BlockStore, pins: Pins, tmp_path: Path) -> None:
    kept_v1 = _tree(store, tmp_path / "kept1", 10)
    kept_v0 = _tree(store, tmp_path / "kept0", 11, version=0)
    dropped = _tree(store, tmp_path / "dropped", 12)
    loose = _loose(store, 7)
    pins.add(store, kept_v1)
    pins.add(store, kept_v0)
    keep = _dag(store, kept_v1) | _dag(store, kept_v0)
    drop = (_dag(store, dropped) - keep) | loose
    assert len(drop) > 7 and not keep & loose
    contents = {c: store.get(c) for c in keep}
    _settle()

    removed = gc(store, pins)
    assert {c.to_v1() for c in removed} == drop
    assert len(removed) == len(drop)
    assert set(store) == keep
    for cid, data in contents.items():
        assert store.get(cid) == data
    for cid in drop:
        assert not store.has(cid)

    assert gc(store, pins) == []  # nothing more to do
    assert set(store) == keep


def test_gc_keeps_blocks_shared_with_an_unpinned_dag(store: BlockStore, pins: Pins, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "shared.txt").write_bytes(b"the same bytes in both")
    (b / "only-b.txt").write_bytes(b"only in b")
    with Importer(store) as imp:
        root_a = list(imp.add_path(a))[-1].cid
        root_b = list(imp.add_path(b))[-1].cid
    pins.add(store, root_a)
    _settle()
    gc(store, pins)
    assert set(store) == _dag(store, root_a)
    assert store.has(CID.hash(b"the same bytes in both", RAW))
    assert not store.has(CID.hash(b"only in b", RAW))
    assert not store.has(root_b)


def test_gc_after_unpin(store: BlockStore, pins: Pins, tmp_path: Path) -> None:
    root = _tree(store, tmp_path / "a", 20)
    pins.add(store, root)
    dag = _dag(store, root)
    _settle()
    assert gc(store, pins) == []
    assert set(store) == dag
    pins.rm(store, root)
    removed = gc(store, pins)
    assert set(removed) == dag and len(removed) == len(dag)
    assert list(store) == []


def test_gc_with_no_pins_empties_the_store(store: BlockStore, pins: Pins, tmp_path: Path) -> None:
    _tree(store, tmp_path / "a", 21)
    n = len(list(store))
    _settle()
    assert len(gc(store, pins)) == n
    assert list(store) == []


class _WriterDuringGC(Forwarding):
    """A store where another writer adds blocks while gc is listing it (after gc has started)."""

    def __init__(self, inner: BlockStore, late: list[tuple[CID, bytes]]) -> None:
        super().__init__(inner)
        self.late = late

    def __iter__(self) -> Iterator[CID]:
        listed = list(self.inner)
        for cid, data in self.late:  # written by "someone else" once gc is under way
            self.inner.put(cid, data)
        return iter(listed + [c for c, _ in self.late])


def test_gc_spares_blocks_newer_than_its_start(store: BlockStore, pins: Pins, tmp_path: Path) -> None:
    root = _tree(store, tmp_path / "a", 30)
    pins.add(store, root)
    old = _loose(store, 5, "old")
    _settle()
    late = [(CID.hash(f"late {i}".encode(), RAW), f"late {i}".encode()) for i in range(5)]
    racing = _WriterDuringGC(store, late)
    removed = gc(racing, pins)
    assert set(removed) == old
    for cid, data in late:
        assert store.get(cid) == data, f"gc removed {cid}, written after it started"
    assert set(store) == _dag(store, root) | {c for c, _ in late}


def test_gc_spares_recent_local_blocks(local_store: LocalStore, pins: Pins) -> None:
    """The on-disk store dates blocks by file mtime: a block dated in the future is spared."""
    old = _loose(local_store, 3, "old")
    new = _loose(local_store, 3, "new")
    future = time.time() + 60
    for cid in new:
        os.utime(local_store.path(cid), (future, future))
    _settle()
    assert set(gc(local_store, pins)) == old
    assert set(local_store) == new


@pytest.mark.parametrize("codec", ["raw", "dag-pb"])
def test_gc_with_an_incomplete_pinned_dag_removes_nothing(store: BlockStore, pins: Pins, tmp_path: Path,
                                                          codec: str) -> None:
    root = _tree(store, tmp_path / "a", 40)
    pins.add(store, root)
    _tree(store, tmp_path / "b", 41)  # unpinned: would go
    _loose(store, 4)
    missing = _a_block(store, root, codec)
    store.delete(missing)
    before = set(store)
    _settle()
    with pytest.raises(CatsError) as e:
        gc(store, pins)
    assert str(root) in str(e.value)
    assert str(missing) in str(e.value)
    assert set(store) == before
    assert root in pins


# -- pins that walk only what is new --------------------------------------------------------------
def _linking(store: BlockStore, *roots: CID, tag: str = "new") -> CID:
    """A new dag-cbor block (with a new raw leaf) linking `roots`, as a BOM links earlier inputs and results."""
    leaf = CID.hash(tag.encode(), RAW)
    store.put(leaf, tag.encode())
    return put_cbor(store, {"tag": tag, "links": [leaf, *roots]})


class _Reading(LocalStore):
    """A local store that notes every block a walk reads or checks."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.touched: set[CID] = set()

    def _has(self, cid: CID) -> bool:
        self.touched.add(cid.to_v1())
        return super()._has(cid)

    def _get_unverified(self, cid: CID) -> bytes:
        self.touched.add(cid.to_v1())
        return super()._get_unverified(cid)


def test_a_pin_of_what_is_new_stops_at_what_pins_reached(pins: Pins, tmp_path: Path) -> None:
    store = _Reading(tmp_path / "blocks")
    old = _tree(store, tmp_path / "a", 50)
    assert pins.add(store, old) == len(_dag(store, old))
    on_top = _linking(store, old)
    store.touched.clear()
    assert pins.add(store, on_top, whole=False) == 2  # the new block and its new leaf
    assert store.touched == {on_top, CID.hash(b"new", RAW)}  # nothing of the old DAG was read
    assert on_top in pins
    assert pins.add(store, on_top, whole=False) == 0  # pinned again: all of it reached already
    assert pins.add(store, on_top) == len(_dag(store, on_top))  # a whole pin still walks and counts it all


def test_a_pin_of_what_is_new_in_memory_walks_everything(pins: Pins, tmp_path: Path) -> None:
    store = MemoryStore()  # nothing outlives the process: no block is taken as reached
    old = _tree(store, tmp_path / "a", 51)
    pins.add(store, old)
    on_top = _linking(store, old)
    assert pins.add(store, on_top, whole=False) == len(_dag(store, on_top))


def test_gc_keeps_all_a_pin_of_what_is_new_reaches(local_store: LocalStore, pins: Pins, tmp_path: Path) -> None:
    old = _tree(local_store, tmp_path / "a", 52)
    pins.add(local_store, old)
    on_top = _linking(local_store, old)
    pins.add(local_store, on_top, whole=False)
    pins.rm(local_store, old)
    _loose(local_store, 3)
    _settle()
    removed = gc(local_store, pins)
    assert len(removed) == 3
    assert set(local_store) == _dag(local_store, on_top)  # gc walked on_top to its leaves


def test_after_gc_a_pin_of_what_is_new_finds_a_removed_block_missing(local_store: LocalStore, pins: Pins,
                                                                      tmp_path: Path) -> None:
    """gc forgets what the pins reached before it removes anything, so a block it removed is never
    taken as reached: a later pin linking it fails, naming it, and pins nothing."""
    old = _tree(local_store, tmp_path / "a", 53)
    pins.add(local_store, old)
    dag = _dag(local_store, old)
    pins.rm(local_store, old)
    _settle()
    assert set(gc(local_store, pins)) == dag
    on_top = _linking(local_store, old)
    with pytest.raises(BlockNotFound) as e:
        pins.add(local_store, on_top, whole=False)
    assert str(old) in str(e.value)
    assert on_top not in pins


def test_gc_remembers_what_it_kept(pins: Pins, tmp_path: Path) -> None:
    store = _Reading(tmp_path / "blocks")
    old = _tree(store, tmp_path / "a", 54)
    pins.add(store, old)
    for made in pins.folder.glob(".reached.sqlite*"):  # pins from before the reached blocks were kept
        made.unlink()
    _settle()
    gc(store, pins)
    on_top = _linking(store, old)
    store.touched.clear()
    assert pins.add(store, on_top, whole=False) == 2
    assert old not in store.touched
