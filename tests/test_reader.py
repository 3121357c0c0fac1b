"""Reading UnixFS back: whole files, byte ranges, listings, paths, and `get` to disk."""

from __future__ import annotations

import filecmp
import os
import random
from pathlib import Path

import mmh3
import pytest
from wrapping import Forwarding

from cats.cas import dagpb, hamt, reader, unixfs
from cats.cas import importer as importer_mod
from cats.cas.cid import CID, DAG_PB, RAW
from cats.cas.dag import walk
from cats.cas.importer import CHUNK_SIZE, Importer
from cats.cas.store import BlockStore
from cats.cas.store.local import LocalStore
from cats.cas.store.memory import MemoryStore
from cats.errors import BlockNotFound, CatsError, EncodeError, IntegrityError, PathNotFound, UnsafePath


class CountingStore(Forwarding):
    """Wraps a store and records every block fetched."""

    def __init__(self, inner: BlockStore) -> None:
        super().__init__(inner)
        self.fetched: list[CID] = []

    def _get_unverified(self, cid: CID) -> bytes:
        self.fetched.append(cid)
        return super()._get_unverified(cid)


def _data(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def _read(store: BlockStore, cid: CID, offset: int = 0, length: int | None = None) -> bytes:
    return b"".join(reader.read(store, cid, offset, length))


def _add_dir(store: BlockStore | None, path: Path, version: int = 1) -> CID:
    with Importer(store, cid_version=version) as imp:
        entries = list(imp.add_path(path))
    return entries[-1].cid


def _same_tree(a: Path, b: Path) -> None:
    """Assert two trees hold the same names, kinds, bytes and symlink targets."""
    names_a = sorted(os.listdir(a))
    names_b = sorted(os.listdir(b))
    assert names_a == names_b, (a, b)
    cmp = filecmp.dircmp(a, b)
    assert not cmp.left_only and not cmp.right_only and not cmp.funny_files
    for name in names_a:
        pa, pb = a / name, b / name
        assert pa.is_symlink() == pb.is_symlink(), name
        if pa.is_symlink():
            assert os.readlink(pa) == os.readlink(pb)
        elif pa.is_dir():
            assert pb.is_dir()
            _same_tree(pa, pb)
        else:
            assert pb.is_file()
            assert filecmp.cmp(pa, pb, shallow=False), name


# -- whole files and ranges -------------------------------------------------------------------
SIZES = [0, 1, 1000, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 12345]


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("size", SIZES)
def test_whole_file_round_trip(store: BlockStore, version: int, size: int) -> None:
    data = _data(size, seed=size)
    with Importer(store, cid_version=version) as imp:
        entry = imp.add_bytes(data)
    assert entry.size == size
    assert entry.cid.version == version or entry.cid.codec == RAW
    assert _read(store, entry.cid) == data
    info = reader.stat(store, entry.cid)
    assert info.kind == "file" and info.size == size


@pytest.mark.parametrize("version", [0, 1])
def test_single_chunk_leaf_kind(version: int) -> None:
    store = MemoryStore()
    with Importer(store, cid_version=version) as imp:
        cid = imp.add_bytes(b"small").cid
    # v1 uses raw leaves, v0 dag-pb UnixFS file leaves (kubo's defaults)
    assert cid.codec == (RAW if version == 1 else DAG_PB)
    assert _read(store, cid) == b"small"
    assert _read(store, cid, 1, 3) == b"mal"


def _range_cases(size: int) -> list[tuple[int, int | None]]:
    rng = random.Random(20240601)
    cases: list[tuple[int, int | None]] = [(rng.randrange(size), rng.randrange(size)) for _ in range(40)]
    cases += [(rng.randrange(size), rng.randrange(1, 50)) for _ in range(20)]
    for k in range(1, size // CHUNK_SIZE + 1):  # across every chunk boundary
        b = k * CHUNK_SIZE
        cases += [(b - 1, 2), (b - 10, 20), (b, 1), (b - 1, 1), (b - 100, CHUNK_SIZE + 200)]
    cases += [
        (0, size), (0, None), (size - 1, 1), (size - 1, None), (size - 5, 100),  # at the very end
        (size, 10), (size, None), (size + 10, 5), (size * 2, None),  # at or beyond the end
        (0, 0), (size // 2, 0), (size, 0),  # zero length
        (0, size * 10),
    ]
    return cases


@pytest.mark.parametrize("version", [0, 1])
def test_ranges(store: BlockStore, version: int) -> None:
    size = 5 * CHUNK_SIZE + 777
    data = _data(size, seed=7)
    with Importer(store, cid_version=version) as imp:
        cid = imp.add_bytes(data).cid
    for offset, length in _range_cases(size):
        want = data[offset:] if length is None else data[offset:offset + length]
        assert _read(store, cid, offset, length) == want, (offset, length)


def test_negative_range_is_refused() -> None:
    store = MemoryStore()
    with Importer(store) as imp:
        cid = imp.add_bytes(b"abc").cid
    with pytest.raises(CatsError):
        _read(store, cid, -1)
    with pytest.raises(CatsError):
        _read(store, cid, 0, -1)


@pytest.mark.parametrize("version", [0, 1])
def test_deep_tree_ranges(monkeypatch: pytest.MonkeyPatch, version: int) -> None:
    """Tiny chunks and fan-out build a four-level tree, so ranges cross inner nodes too."""
    monkeypatch.setattr(importer_mod, "CHUNK_SIZE", 64)
    monkeypatch.setattr(importer_mod, "MAX_LINKS", 3)
    store = MemoryStore()
    data = _data(64 * 27 + 5, seed=3)
    with Importer(store, cid_version=version) as imp:
        cid = imp.add_bytes(data).cid
    assert _read(store, cid) == data
    size = len(data)
    rng = random.Random(99)
    for _ in range(200):
        offset = rng.randrange(size + 3)
        length = rng.randrange(size // 2)
        assert _read(store, cid, offset, length) == data[offset:offset + length], (offset, length)
    for b in range(64, size, 64):  # across every leaf boundary
        assert _read(store, cid, b - 1, 2) == data[b - 1:b + 1]
    for b in range(64 * 3, size, 64 * 3):  # and every inner-node boundary, with a wider span
        assert _read(store, cid, b - 70, 140) == data[b - 70:b + 70]

    # A read inside one leaf walks one path: root, inner nodes, leaf -- one block per level.
    counting = CountingStore(store)
    depth = 1
    node = cid
    while node.codec == DAG_PB and (links := dagpb.decode(store.get(node)).links):
        node, depth = links[0].cid, depth + 1
    assert depth == 5  # 28 leaves at fan-out 3 -> 4 levels above the leaves
    assert _read(counting, cid, 64 * 13 + 10, 10) == data[64 * 13 + 10:64 * 13 + 20]
    assert len(set(counting.fetched)) == depth
    assert len(counting.fetched) == depth  # each block read once


@pytest.mark.parametrize("version", [0, 1])
def test_range_fetches_only_covering_blocks(version: int) -> None:
    inner = MemoryStore()
    size = 3 << 20
    data = _data(size, seed=11)
    with Importer(inner, cid_version=version) as imp:
        cid = imp.add_bytes(data).cid
    assert len(inner) == 13  # 12 leaves and the root

    store = CountingStore(inner)
    middle = size // 2 + 12345
    assert _read(store, cid, middle, 10) == data[middle:middle + 10]
    assert len(store.fetched) == 2, store.fetched  # the root and the one covering leaf, once each
    assert store.fetched[0] == cid

    store.fetched.clear()
    boundary = 6 * CHUNK_SIZE
    assert _read(store, cid, boundary - 5, 10) == data[boundary - 5:boundary + 5]
    assert len(store.fetched) == 3  # the root and the two leaves either side, once each

    store.fetched.clear()
    assert _read(store, cid, size, 10) == b""
    assert len(set(store.fetched)) <= 1  # at most the root, for the size


@pytest.mark.parametrize("version", [0, 1])
def test_file_tree_pieces_cover_many_spans_in_one_walk(monkeypatch: pytest.MonkeyPatch, version: int) -> None:
    """The one file walk: the leaves under several spans at once, each block fetched once, inner nodes
    decoded once per FileTree however many reads it serves (what the Checks' samples and FileReader use)."""
    monkeypatch.setattr(importer_mod, "CHUNK_SIZE", 64)
    monkeypatch.setattr(importer_mod, "MAX_LINKS", 3)
    inner = MemoryStore()
    data = _data(64 * 27 + 5, seed=4)
    with Importer(inner, cid_version=version) as imp:
        cid = imp.add_bytes(data).cid
    store = CountingStore(inner)
    tree = reader.FileTree(store, cid)
    assert tree.size == len(data)
    spans = [(10, 20), (63, 65), (64 * 9 + 1, 64 * 9 + 2), (64 * 26, len(data))]
    got = list(tree.pieces(spans))
    assert [at for at, _ in got] == [0, 0 + 64, 64 * 9, 64 * 26, 64 * 27]  # in file order, leaf by leaf
    for at, piece in got:
        assert piece == data[at:at + len(piece)]
        assert any(lo < at + len(piece) and at < hi for lo, hi in spans)  # only leaves that hold a span
    assert len(store.fetched) == len(set(store.fetched))  # each block once
    first = len(store.fetched)
    assert b"".join(tree.read(64 * 9 + 1, 1)) == data[64 * 9 + 1:64 * 9 + 2]
    assert len(store.fetched) == first + 1  # the leaf alone: its inner nodes were decoded already

    store.fetched.clear()
    f = reader.FileReader(store, cid)
    for offset in (5, 300, 1200, 64 * 27):
        f.seek(offset)
        assert f.read(3) == data[offset:offset + 3]
    assert store.fetched.count(cid) == 1  # the root, for every read


# -- folders ----------------------------------------------------------------------------------
def _tree(root: Path) -> Path:
    """A small tree with unicode names, an empty folder, a big file and an inner symlink."""
    (root / "données" / "日本語").mkdir(parents=True)
    (root / "données" / "日本語" / "ファイル.txt").write_text("こんにちは\n", encoding="utf-8")
    (root / "données" / "café.bin").write_bytes(_data(CHUNK_SIZE * 2 + 3, seed=5))
    (root / "empty").mkdir()
    (root / "a.txt").write_bytes(b"a\n")
    (root / "zero").write_bytes(b"")
    (root / "sub").mkdir()
    (root / "sub" / "b.txt").write_bytes(b"b" * 5000)
    os.symlink("../a.txt", root / "sub" / "link")
    return root


@pytest.mark.parametrize("version", [0, 1])
def test_ls_and_resolve(store: BlockStore, tmp_path: Path, version: int) -> None:
    src = _tree(tmp_path / "src")
    root = _add_dir(store, src, version)
    items = reader.ls(store, root)
    assert [i.name for i in items] == ["a.txt", "données", "empty", "sub", "zero"]
    kinds = {i.name: i.kind for i in items}
    assert kinds == {"a.txt": "file", "données": "dir", "empty": "dir", "sub": "dir", "zero": "file"}
    sizes = {i.name: i.size for i in items}
    assert sizes["a.txt"] == 2 and sizes["zero"] == 0

    sub = reader.ls(store, reader.resolve(store, root, "sub"))
    assert [(i.name, i.kind) for i in sub] == [("b.txt", "file"), ("link", "symlink")]

    deep = reader.resolve(store, root, "données/日本語/ファイル.txt")
    assert _read(store, deep) == "こんにちは\n".encode()
    assert reader.resolve(store, root, "/données//日本語/") == reader.resolve(store, root, "données/日本語")
    assert reader.resolve(store, root, "") == root
    big = reader.resolve(store, root, "données/café.bin")
    assert _read(store, big) == (src / "données" / "café.bin").read_bytes()

    # split_path understands the usual spellings
    for text in (f"{root}/données/日本語/ファイル.txt", f"/ipfs/{root}/données/日本語/ファイル.txt",
                 f"ipfs://{root}/données/日本語/ファイル.txt"):
        cid, path = reader.split_path(text)
        assert reader.resolve(store, cid, path) == deep


def test_names_that_are_not_utf8_round_trip(store: BlockStore, tmp_path: Path) -> None:
    """dag-pb names are bytes: one that is not UTF-8 reads as its surrogateescape str, resolves, re-encodes to
    the same block, hashes into a HAMT by its bytes, and `get` writes the same bytes back as the file name."""
    src = os.fsencode(tmp_path / "src")
    os.makedirs(os.path.join(src, b"sub\xff"))
    for rel, data in ((b"caf\xe9", b"latin-1"), (b"\xff\xfe", b"ff fe"), (b"sub\xff/in\x80", b"deep")):
        with open(os.path.join(src, rel), "wb") as f:
            f.write(data)
    os.symlink(b"caf\xe9", os.path.join(src, b"link\xfe"))
    root = _add_dir(store, Path(os.fsdecode(src)))
    block = store.get(root)
    node = dagpb.decode(block)
    assert [os.fsencode(link.name) for link in node.links] == [b"caf\xe9", b"link\xfe", b"sub\xff", b"\xff\xfe"]
    assert dagpb.encode(node.links, node.data) == block
    assert b"caf\xe9" in block and b"\xff\xfe" in block  # the raw bytes, not an escape of them
    assert _read(store, reader.resolve(store, root, os.fsdecode(b"sub\xff/in\x80"))) == b"deep"
    assert hamt.name_hash(os.fsdecode(b"caf\xe9")) == mmh3.hash64(b"caf\xe9", 0, signed=False)[0].to_bytes(8, "big")

    dest = tmp_path / "out"
    reader.get(store, root, dest)
    assert sorted(os.listdir(os.fsencode(dest))) == [b"caf\xe9", b"link\xfe", b"sub\xff", b"\xff\xfe"]
    assert Path(os.fsdecode(os.path.join(os.fsencode(dest), b"sub\xff/in\x80"))).read_bytes() == b"deep"
    assert os.readlink(os.path.join(os.fsencode(dest), b"link\xfe")) == b"caf\xe9"


def test_a_name_that_stands_for_no_bytes_is_refused() -> None:
    """A lone surrogate outside the surrogateescape range (only a Python caller can make one) has no bytes."""
    with pytest.raises(EncodeError, match="surrogate"):
        dagpb.encode([dagpb.Link(CID.hash(b"x"), "half a pair \ud800", 1)])


def test_path_not_found_names_the_missing_part(store: BlockStore, tmp_path: Path) -> None:
    root = _add_dir(store, _tree(tmp_path / "src"))
    with pytest.raises(PathNotFound) as e:
        reader.resolve(store, root, "données/nope/ファイル.txt")
    assert "nope" in str(e.value)
    assert "données" in str(e.value)
    with pytest.raises(PathNotFound) as e:
        reader.resolve(store, root, "données/日本語/absent.txt")
    assert "absent.txt" in str(e.value)
    with pytest.raises(PathNotFound) as e:
        reader.resolve(store, root, "a.txt/below")
    assert "below" in str(e.value)


def test_ls_of_a_file_and_read_of_a_folder_fail(store: BlockStore, tmp_path: Path) -> None:
    root = _add_dir(store, _tree(tmp_path / "src"))
    with pytest.raises(CatsError):
        reader.ls(store, reader.resolve(store, root, "a.txt"))
    with pytest.raises(CatsError) as e:
        _read(store, root)
    assert str(root) in str(e.value)


# -- get --------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", [0, 1])
def test_get_writes_an_identical_tree(store: BlockStore, tmp_path: Path, version: int) -> None:
    src = _tree(tmp_path / "src")
    root = _add_dir(store, src, version)
    dest = tmp_path / "out" / "copy"
    assert reader.get(store, root, dest) == dest
    _same_tree(src, dest)
    assert os.readlink(dest / "sub" / "link") == "../a.txt"
    assert sorted(os.listdir(dest.parent)) == ["copy"]  # no staging folder left beside it


def test_get_a_single_file(store: BlockStore, tmp_path: Path) -> None:
    data = _data(CHUNK_SIZE + 10, seed=2)
    with Importer(store) as imp:
        cid = imp.add_bytes(data).cid
    dest = tmp_path / "file.bin"
    reader.get(store, cid, dest)
    assert dest.read_bytes() == data


def test_get_refuses_an_existing_destination(store: BlockStore, tmp_path: Path) -> None:
    root = _add_dir(store, _tree(tmp_path / "src"))
    tmp_path = tmp_path / "work"
    tmp_path.mkdir()
    for existing in (tmp_path / "file", tmp_path / "folder", tmp_path / "dangling"):
        if existing.name == "file":
            existing.write_bytes(b"keep me")
        elif existing.name == "folder":
            existing.mkdir()
        else:
            os.symlink("nowhere", existing)
        with pytest.raises(CatsError) as e:
            reader.get(store, root, existing)
        assert str(existing) in str(e.value)
    assert (tmp_path / "file").read_bytes() == b"keep me"
    assert os.listdir(tmp_path / "folder") == []
    assert sorted(os.listdir(tmp_path)) == ["dangling", "file", "folder"]


def _middle_leaf(store: BlockStore, root: CID) -> CID:
    """A leaf of the big file in the middle of the tree (written after other files)."""
    big = reader.resolve(store, root, "données/café.bin")
    leaves = [c for c in walk(store, big) if c != big]
    assert len(leaves) == 3
    return leaves[1]


@pytest.mark.parametrize("damage", ["missing", "corrupted"])
def test_get_leaves_nothing_when_a_block_fails(store: BlockStore, tmp_path: Path, damage: str) -> None:
    src = _tree(tmp_path / "src")
    root = _add_dir(store, src)
    leaf = _middle_leaf(store, root)
    if damage == "missing":
        store.delete(leaf)
        expected: type[Exception] = BlockNotFound
    else:
        good = store.get(leaf)
        if isinstance(store, LocalStore):
            os.chmod(store.path(leaf), 0o600)
            store.path(leaf).write_bytes(b"\x00" + good[1:])
        else:
            assert isinstance(store, MemoryStore)
            key = bytes(leaf.to_v1())
            store._blocks[key] = (b"\x00" + good[1:], store._blocks[key][1])
        expected = IntegrityError
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "copy"
    with pytest.raises(expected) as e:
        reader.get(store, root, dest)
    assert str(leaf) in str(e.value)
    assert not dest.exists() and not dest.is_symlink()
    assert os.listdir(out) == []  # no staging folder either


# -- hostile folders --------------------------------------------------------------------------
def _file_block(store: BlockStore, data: bytes) -> CID:
    cid = CID.hash(data, RAW)
    store.put(cid, data)
    return cid


def _hand_dir(store: BlockStore, entries: list[tuple[str, CID, int]]) -> CID:
    block = dagpb.encode([dagpb.Link(cid, name, size) for name, cid, size in entries],
                         unixfs.encode(unixfs.Kind.DIRECTORY))
    cid = CID.hash(block, DAG_PB)
    store.put(cid, block)
    return cid


@pytest.mark.parametrize("bad", ["..", "a/b", ".", "", "nul\0byte"])
def test_unsafe_entry_names_are_refused(store: BlockStore, tmp_path: Path, bad: str) -> None:
    payload = _file_block(store, b"escaped!")
    fine = _file_block(store, b"fine")
    folder = _hand_dir(store, [("aaa-fine", fine, 4), (bad, payload, 8)])
    with pytest.raises(UnsafePath) as e:
        reader.ls(store, folder)
    assert repr(bad) in str(e.value)

    out = tmp_path / "out" / "inner"
    out.mkdir(parents=True)
    with pytest.raises(UnsafePath) as e:
        reader.get(store, folder, out / "dest")
    assert repr(bad) in str(e.value)
    assert os.listdir(out) == []
    assert os.listdir(out.parent) == ["inner"]  # nothing escaped above the destination either

    # nested one level down: still refused, still nothing written
    outer = _hand_dir(store, [("inner", folder, 100)])
    with pytest.raises(UnsafePath):
        reader.get(store, outer, out / "dest")
    assert os.listdir(out) == []


def test_dot_dot_entry_named(store: BlockStore, tmp_path: Path) -> None:
    folder = _hand_dir(store, [("..", _file_block(store, b"x"), 1)])
    with pytest.raises(UnsafePath) as e:
        reader.get(store, folder, tmp_path / "dest")
    assert "'..'" in str(e.value)
    assert str(folder) in str(e.value)
    assert not (tmp_path / "dest").exists()


def _symlink_node(store: BlockStore, target: str) -> CID:
    block = dagpb.encode([], unixfs.encode(unixfs.Kind.SYMLINK, target.encode()))
    cid = CID.hash(block, DAG_PB)
    store.put(cid, block)
    return cid


@pytest.mark.parametrize("target", ["../../outside", "../sibling", "/etc/passwd", "inner/../../up"])
def test_symlink_pointing_outside_is_refused(store: BlockStore, tmp_path: Path, target: str) -> None:
    link = _symlink_node(store, target)
    folder = _hand_dir(store, [("ok.txt", _file_block(store, b"ok"), 2), ("zlink", link, 10)])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UnsafePath) as e:
        reader.get(store, folder, out / "dest")
    assert repr(target) in str(e.value)
    assert os.listdir(out) == []


def test_symlink_from_the_importer_pointing_outside(store: BlockStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_bytes(b"f")
    os.symlink("../../../escape", src / "sub" / "evil")
    root = _add_dir(store, src)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UnsafePath):
        reader.get(store, root, out / "dest")
    assert os.listdir(out) == []


def test_symlink_inside_is_allowed(store: BlockStore, tmp_path: Path) -> None:
    folder = _hand_dir(store, [("f", _file_block(store, b"ok"), 2), ("link", _symlink_node(store, "f"), 5),
                               ("sub", _hand_dir(store, [("up", _symlink_node(store, "../f"), 5)]), 50)])
    dest = tmp_path / "dest"
    reader.get(store, folder, dest)
    assert os.readlink(dest / "link") == "f"
    assert (dest / "sub" / "up").read_bytes() == b"ok"
