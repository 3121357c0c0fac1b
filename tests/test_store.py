"""Block stores: the BlockStore contract on both implementations, integrity, and concurrent writers."""

from __future__ import annotations

import multiprocessing
import os
import stat
import time
from pathlib import Path

import pytest

from cats.cas import dagpb, unixfs
from cats.cas.cid import CID, DAG_PB, RAW
from cats.cas.store import BlockStore, open_store
from cats.cas.store.local import LocalStore
from cats.cas.store.memory import MemoryStore
from cats.errors import BlockNotFound, CatsError, IntegrityError


def _raw(data: bytes) -> tuple[CID, bytes]:
    return CID.hash(data, RAW), data


def _pb_block(text: bytes) -> tuple[CID, bytes]:
    """A dag-pb block, so it has both a v0 and a v1 CID."""
    block = dagpb.encode([], unixfs.encode(unixfs.Kind.FILE, text, len(text)))
    return CID.hash(block, DAG_PB, version=0), block


def _corrupt(store: BlockStore, cid: CID, bad: bytes) -> None:
    """Replace the stored bytes of cid behind the store's back."""
    if isinstance(store, LocalStore):
        path = store.path(cid)
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
        path.write_bytes(bad)
    else:
        assert isinstance(store, MemoryStore)
        key = bytes(cid.to_v1())
        assert key in store._blocks
        store._blocks[key] = (bad, store._blocks[key][1])


# -- the basic contract -----------------------------------------------------------------------
def test_put_get_has_delete(store: BlockStore) -> None:
    cid, data = _raw(b"hello blocks")
    other, _ = _raw(b"never stored")
    assert not store.has(cid)
    store.put(cid, data)
    assert store.has(cid)
    assert not store.has(other)
    assert store.get(cid) == data
    assert isinstance(store.get(cid), bytes)
    store.delete(cid)
    assert not store.has(cid)
    with pytest.raises(BlockNotFound):
        store.get(cid)
    store.delete(cid)  # deleting an absent block is not an error
    assert list(store) == []


def test_put_accepts_memoryview_and_is_idempotent(store: BlockStore) -> None:
    cid, data = _raw(b"x" * 1000)
    store.put(cid, memoryview(data))
    store.put(cid, data)
    assert store.get(cid) == data
    assert list(store) == [cid]


def test_empty_block(store: BlockStore) -> None:
    cid, data = _raw(b"")
    store.put(cid, data)
    assert store.has(cid)
    assert store.get(cid) == b""


def test_iterate_yields_every_block_once_as_v1(store: BlockStore) -> None:
    cids = set()
    for i in range(50):
        cid, data = _raw(f"block {i}".encode())
        store.put(cid, data)
        cids.add(cid)
    pb, block = _pb_block(b"a dag-pb one")
    store.put(pb, block)
    cids.add(pb.to_v1())
    listed = list(store)
    assert len(listed) == len(cids) == 51
    assert set(listed) == cids
    assert all(c.version == 1 for c in listed)


def test_v0_and_v1_are_one_entry(store: BlockStore) -> None:
    v0, block = _pb_block(b"same block, two names")
    v1 = v0.to_v1()
    assert v0.version == 0 and v1.version == 1 and v0 != v1
    store.put(v0, block)
    assert store.has(v1)
    assert store.get(v1) == block
    store.put(v1, block)
    assert list(store) == [v1]
    store.delete(v1)
    assert not store.has(v0)
    assert list(store) == []


def test_mtime(store: BlockStore) -> None:
    cid, data = _raw(b"timed")
    before = time.time()
    store.put(cid, data)
    assert store.mtime(cid) >= before - 2  # filesystems may round timestamps down
    assert store.mtime(CID.hash(b"absent")) == 0.0


# -- integrity --------------------------------------------------------------------------------
def test_missing_block_names_the_cid(store: BlockStore) -> None:
    cid, _ = _raw(b"not here")
    with pytest.raises(BlockNotFound) as e:
        store.get(cid)
    assert str(cid) in str(e.value)
    with pytest.raises(BlockNotFound) as e:
        store.get(cid, verify=False)
    assert str(cid) in str(e.value)


def test_corrupted_block_raises_integrity_error(store: BlockStore) -> None:
    cid, data = _raw(b"the good bytes" * 100)
    store.put(cid, data)
    bad = b"the BAD bytes!" * 100
    _corrupt(store, cid, bad)
    with pytest.raises(IntegrityError) as e:
        store.get(cid)
    assert str(cid) in str(e.value)
    # Only an explicit verify=False hands out the bad bytes.
    assert store.get(cid, verify=False) == bad
    with pytest.raises(IntegrityError):
        store.get(cid, verify=True)


def test_corrupted_v0_block_names_the_cid_asked_for(store: BlockStore) -> None:
    v0, block = _pb_block(b"v0 block")
    store.put(v0, block)
    _corrupt(store, v0, block + b"\x00")
    for cid in (v0, v0.to_v1()):
        with pytest.raises(IntegrityError) as e:
            store.get(cid)
        assert str(cid) in str(e.value)


def test_truncated_block_is_corrupt(store: BlockStore) -> None:
    cid, data = _raw(b"0123456789" * 10)
    store.put(cid, data)
    _corrupt(store, cid, data[:-1])
    with pytest.raises(IntegrityError):
        store.get(cid)


def test_put_verified_refuses_mismatch_and_stores_nothing(store: BlockStore) -> None:
    cid, data = _raw(b"genuine")
    with pytest.raises(IntegrityError) as e:
        store.put_verified(cid, b"forged")
    assert str(cid) in str(e.value)
    assert not store.has(cid)
    assert list(store) == []
    store.put_verified(cid, data)
    assert store.get(cid) == data


def test_local_store_layout_is_read_only_and_sharded(local_store: LocalStore) -> None:
    cid, data = _raw(b"on disk")
    local_store.put(cid, data)
    path = local_store.path(cid)
    assert path.is_file()
    assert path.parent.parent == local_store.root
    assert path.read_bytes() == data
    assert not os.stat(path).st_mode & 0o222, "blocks are written read-only"
    # A second LocalStore on the same root sees the block.
    assert LocalStore(local_store.root).get(cid) == data


def test_local_store_ignores_temp_files(local_store: LocalStore) -> None:
    cid, data = _raw(b"real")
    local_store.put(cid, data)
    (local_store.path(cid).parent / ".leftover.tmp").write_bytes(b"junk")
    (local_store.root / ".hidden-shard").mkdir()
    assert list(local_store) == [cid]


# -- many writers -----------------------------------------------------------------------------
SHARED = 200
DISTINCT = 200
WRITERS = 4


def _shared_block(i: int) -> bytes:
    return f"shared block {i} ".encode() * (1 + i % 40)


def _distinct_block(writer: int, i: int) -> bytes:
    return f"writer {writer} block {i} ".encode() * (1 + i % 40)


def _writer(root: str, writer: int, start: float) -> int:
    """Runs in a spawned process: write the shared blocks and this writer's own, interleaved."""
    while time.time() < start:  # all four start together
        time.sleep(0.001)
    store = LocalStore(root)
    order = list(range(SHARED))
    if writer % 2:
        order.reverse()
    for n, i in enumerate(order):
        data = _shared_block(i)
        store.put(CID.hash(data), data)
        own = _distinct_block(writer, n)
        store.put(CID.hash(own), own)
    return writer


@pytest.mark.slow
def test_parallel_writers(tmp_path: Path) -> None:
    root = tmp_path / "blocks"
    LocalStore(root)
    ctx = multiprocessing.get_context("spawn")
    start = time.time() + 2.0
    with ctx.Pool(WRITERS) as pool:
        done = pool.starmap(_writer, [(str(root), w, start) for w in range(WRITERS)], chunksize=1)
    assert sorted(done) == list(range(WRITERS))

    store = LocalStore(root)
    expected = {CID.hash(_shared_block(i)): _shared_block(i) for i in range(SHARED)}
    for w in range(WRITERS):
        for i in range(DISTINCT):
            expected[CID.hash(_distinct_block(w, i))] = _distinct_block(w, i)
    assert len(expected) == SHARED + WRITERS * DISTINCT == 1000

    listed = list(store)
    assert len(listed) == 1000
    assert set(listed) == set(expected)
    for cid, data in expected.items():
        assert store.get(cid) == data  # verified read
    leftovers = [p for p in root.rglob(".*") if p not in (root / ".tmp", root / ".leases")]
    leftovers += [p for folder in (root / ".tmp", root / ".leases") if folder.exists()
                  for p in folder.iterdir()]  # no temporary file, no lease
    assert leftovers == []


# -- opening by URL ---------------------------------------------------------------------------
def test_open_store_mem_is_shared() -> None:
    a = open_store("mem://test-store-shared")
    b = open_store("mem://test-store-shared")
    assert a is b
    assert isinstance(a, MemoryStore)
    assert open_store("mem://test-store-other") is not a
    cid, data = _raw(b"shared via mem://")
    a.put(cid, data)
    assert b.get(cid) == data


def test_open_store_file_url(tmp_path: Path) -> None:
    root = tmp_path / "via-url"
    s = open_store(root.as_uri())
    assert isinstance(s, LocalStore)
    assert s.root == root
    cid, data = _raw(b"file url")
    s.put(cid, data)
    assert LocalStore(root).get(cid) == data


def test_open_store_default_is_cats_home(cats_home: Path) -> None:
    s = open_store()
    assert isinstance(s, LocalStore)
    assert s.root == cats_home / "blocks"


def test_open_store_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATS_STORE", "mem://from-env")
    assert open_store() is open_store("mem://from-env")


def test_open_store_unknown_scheme_names_the_url() -> None:
    url = "s3://bucket/some/prefix"
    with pytest.raises(CatsError) as e:
        open_store(url)
    assert url in str(e.value)


def test_identity_cids_carry_their_block(store: BlockStore, tmp_path: Path) -> None:
    """As in IPFS, a block under an identity CID is the CID's own digest: every store has it, none keeps
    it, and a folder linking one (as `ipfs add --inline` makes) reads and extracts like any other."""
    from cats.cas import multihash, reader

    small = CID.hash(b"inline me", RAW, hashfn=multihash.IDENTITY)
    assert store.has(small) and store.get(small) == b"inline me"
    assert small.to_v1() not in set(store)
    folder = dagpb.encode([dagpb.Link(small, "small.txt", 0)], unixfs.encode(unixfs.Kind.DIRECTORY))
    root = CID.hash(folder, DAG_PB)
    store.put(root, folder)
    assert b"".join(reader.read(store, reader.resolve(store, root, "small.txt"))) == b"inline me"
    assert (reader.get(store, root, tmp_path / "out") / "small.txt").read_bytes() == b"inline me"
