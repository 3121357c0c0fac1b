"""Our importer's CIDs against an independent implementation (npm ipfs-unixfs-importer, set up as kubo).

Every entry of every tree is compared, not only the root: a wrong leaf layout, link order,
Tsize or UnixFS field shows up at the entry that carries it.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import jsref
import pytest

from cats.cas.importer import CHUNK_SIZE, MAX_LINKS, Importer


def ours(path: Path, version: int) -> dict[str, str]:
    with Importer(None, cid_version=version) as imp:
        return {a.path: str(a.cid) for a in imp.add_path(path)}


def theirs(path: Path, version: int) -> dict[str, str]:
    out = jsref.unixfs_cids(path, version)
    return {**out["entries"], path.name: out["root"]}


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


FILE_SIZES = {
    "empty": 0,
    "one-byte": 1,
    "exactly-one-chunk": CHUNK_SIZE,
    "one-chunk-plus-one": CHUNK_SIZE + 1,
    "three-chunks-ragged": 3 * CHUNK_SIZE - 7,
    "full-first-level": MAX_LINKS * CHUNK_SIZE,
}


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("name", list(FILE_SIZES))
def test_single_files_match(tmp_path: Path, name: str, version: int) -> None:
    jsref.require()
    f = tmp_path / name
    f.write_bytes(payload(FILE_SIZES[name], seed=len(name)))
    assert ours(f, version) == theirs(f, version)


@pytest.mark.slow
@pytest.mark.parametrize("version", [0, 1])
def test_two_level_tree_matches(tmp_path: Path, version: int) -> None:
    """More than 174 chunks: the root links inner nodes, the last of them holding a single leaf."""
    jsref.require()
    f = tmp_path / "two-level.bin"
    f.write_bytes(payload((MAX_LINKS + 1) * CHUNK_SIZE + 12_345, seed=7))
    mine = ours(f, version)
    assert mine == theirs(f, version)
    # and the streaming reader path (a pipe, not a regular file) gives the same root
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child writes the file into the pipe
        os.close(r)
        with open(f, "rb") as src, os.fdopen(w, "wb") as dst:
            dst.write(src.read())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as pipe, Importer(None, cid_version=version) as imp:
        assert str(imp.add_file(pipe).cid) == mine["two-level.bin"]
    os.waitpid(pid, 0)


def build_tree(root: Path) -> None:
    (root / "empty").mkdir(parents=True)
    (root / "ünïcödé ☃" / "深い" / "more").mkdir(parents=True)
    (root / "ünïcödé ☃" / "深い" / "more" / "notes.txt").write_text("nested\n")
    (root / "ünïcödé ☃" / "ß.bin").write_bytes(payload(CHUNK_SIZE + 99, seed=1))
    (root / "a.txt").write_text("hello\n")
    (root / "B.txt").write_text("upper case sorts first\n")
    (root / "a-b").mkdir()
    (root / "a-b" / "zero").write_bytes(b"")
    (root / ".hidden").write_text("skipped by default, as kubo does\n")
    (root / "link").symlink_to("a.txt")


@pytest.mark.parametrize("version", [0, 1])
def test_nested_directories_match(tmp_path: Path, version: int) -> None:
    jsref.require()
    root = tmp_path / "tree"
    build_tree(root)
    mine = ours(root, version)
    assert not any(".hidden" in p for p in mine)
    assert mine == theirs(root, version)
    assert mine["tree/empty"] == ("QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn" if version == 0
                                  else "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354")


def test_hidden_files_included_on_request(tmp_path: Path) -> None:
    jsref.require()
    root = tmp_path / "tree"
    build_tree(root)
    with Importer(None, cid_version=1, hidden=True) as imp:
        mine = {a.path: str(a.cid) for a in imp.add_path(root)}
    out = jsref.unixfs_cids(root, 1, hidden=True)
    assert "tree/.hidden" in mine
    assert mine == {**out["entries"], "tree": out["root"]}


# kubo's own sharding vectors (test/sharness/t0260-sharding.sh): the CIDs kubo printed.
def numbered_files(folder: Path, n: int, name) -> Path:
    folder.mkdir()
    for i in range(1, n + 1):
        (folder / name(i)).write_bytes(f"{i}\n".encode())
    return folder


def root_of(path: Path, version: int = 0, **options: int) -> str:
    with Importer(None, cid_version=version, **options) as imp:
        return str(list(imp.add_path(path))[-1].cid)


def test_kubo_vectors_plain_and_forced_shard(tmp_path: Path) -> None:
    folder = numbered_files(tmp_path / "testdata", 2000, lambda i: f"file{i}")
    assert root_of(folder) == "QmavrTrQG4VhoJmantURAYuw3bowq3E2WcvP36NRQDAC1N"
    assert root_of(folder, shard_threshold=1) == "QmSCJD1KYLhVVHqBK3YyXuoEqHt7vggyJhzoFYbT8v1XYL"


@pytest.mark.slow
def test_kubo_vector_sharded_at_default_threshold(tmp_path: Path) -> None:
    assert root_of(numbered_files(tmp_path / "small_dir", 100, lambda i: f"file{i:06d}")) == \
        "QmdBXmm4HRpUhyzzctbFvi2tLai3XFL1YjmE1qfpJe61NX"
    assert root_of(numbered_files(tmp_path / "big_dir", 5960, lambda i: f"file{i:06d}")) == \
        "QmWfjnRWRvdvYezQWnfbvrvY7JjrpevsE9cato1x76UqGr"


@pytest.mark.parametrize("version", [0, 1])
def test_sharded_tree_matches_reference(tmp_path: Path, version: int) -> None:
    """A small threshold shards nested folders too; every entry still agrees with the reference."""
    jsref.require()
    root = tmp_path / "tree"
    build_tree(root)
    for i in range(300):
        (root / "a-b" / f"entry-{i}-ü").write_text(str(i))
    with Importer(None, cid_version=version, shard_threshold=1000) as imp:
        mine = {a.path: str(a.cid) for a in imp.add_path(root)}
    out = jsref.unixfs_cids(root, version, shard_split_threshold_bytes=1000)
    assert mine == {**out["entries"], "tree": out["root"]}


def test_sharded_folder_reads_back(tmp_path: Path) -> None:
    from cats.cas import reader
    from cats.cas.store.memory import MemoryStore

    folder = numbered_files(tmp_path / "many", 500, lambda i: f"f{i}")
    store = MemoryStore()
    with Importer(store, cid_version=1, shard_threshold=1) as imp:
        root = list(imp.add_path(folder))[-1].cid
    names = {item.name for item in reader.ls(store, root)}
    assert names == {f"f{i}" for i in range(1, 501)}
    assert b"".join(reader.read(store, reader.resolve(store, root, "f377"))) == b"377\n"
