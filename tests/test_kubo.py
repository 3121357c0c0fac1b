"""CATs against kubo itself (the `ipfs` binary at $CATS_TEST_KUBO): the same CIDs for the same files and folders
(every vector also checked against the JS importer: chunk and link boundaries, CIDv0 and CIDv1 with raw leaves,
the HAMT threshold, names that are not UTF-8), and folders that either one wrote read back by the other."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from kubo import Kubo, kubo  # noqa: F401 - the fixture
from test_unixfs_compat import FILE_SIZES, build_tree, payload

from cats.cas import dagpb, unixfs
from cats.cas.cid import CID
from cats.cas.importer import CHUNK_SIZE, MAX_LINKS, Importer
from cats.cas.store.local import LocalStore

# Names as the file system holds them: not UTF-8 (b"\xff\xfe", latin-1 "café", a lone continuation byte),
# UTF-8, and plain ASCII, in nested folders, one of which has a non-UTF-8 name itself.
TREE = {
    b"\xff\xfe": b"two bytes that start no UTF-8 sequence\n",
    b"caf\xe9": b"latin-1\n",
    "déjà-vu.txt".encode(): b"utf-8\n",
    b"plain.txt": b"ascii\n",
    b"sub\xff/inner\x80.bin": bytes(range(256)) * 1100,  # two chunks
    b"sub\xff/caf\xe9/deeper": b"three levels down\n",
}


def _make(root: Path, tree: dict[bytes, bytes]) -> Path:
    for rel, data in tree.items():
        path = os.path.join(os.fsencode(root), rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return root


def _read_tree(root: Path) -> dict[bytes, bytes]:
    """Every file under root by its path in bytes, as the file system holds it."""
    out = {}
    base = os.fsencode(root)
    for folder, _, files in os.walk(base):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, base)] = f.read()
    return out


def _kubo_added(kubo: Kubo, path: Path, *flags: str) -> dict[bytes, str]:  # noqa: F811
    """`ipfs add -r` as path bytes -> CID, from its `added CID PATH` lines (kubo prints the raw bytes)."""
    out = {}
    for line in kubo("add", "-r", *flags, path.name, cwd=path.parent).splitlines():
        word, cid, name = line.split(b" ", 2)
        assert word == b"added"
        out[name] = cid.decode()
    return out


def _cats_added(cli, path: Path, *flags: str) -> dict[bytes, str]:
    """`cats add -r --json` as path bytes -> CID; path_base64 carries the exact bytes of names that are not UTF-8."""
    res = cli("add", "-r", "--json", *flags, path.name, cwd=path.parent)
    assert res.code == 0, res.err
    out = {}
    for e in json.loads(res.out):
        raw = base64.b64decode(e["path_base64"]) if "path_base64" in e else e["path"].encode()
        assert ("path_base64" in e) == (not _is_utf8(raw)), e
        out[raw] = e["cid"]
    return out


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def _kind(store: LocalStore, cid: CID) -> unixfs.Kind:
    return unixfs.decode(dagpb.decode(store.get(cid)).data).kind


def _kubo_only_hash(kubo: Kubo, path: Path, version: int, *flags: str) -> dict[str, str]:  # noqa: F811
    """`ipfs add -r --only-hash` of path (CIDv1 implies raw leaves in kubo, as in CATs): entry path -> CID."""
    return {os.fsdecode(name): cid for name, cid in _kubo_added(kubo, path, "--only-hash",
                                                                f"--cid-version={version}", *flags).items()}


def _ours(path: Path, version: int, **options: object) -> dict[str, str]:
    with Importer(None, cid_version=version, **options) as importer:  # type: ignore[arg-type]
        return {a.path: str(a.cid) for a in importer.add_path(path)}


# the single-file vectors of the JS comparison, and one past a full first level of links (a second level)
SIZES = {**FILE_SIZES, "two-levels": (MAX_LINKS + 1) * CHUNK_SIZE + 12_345}


@pytest.mark.parametrize("version", [0, 1])
def test_files_at_chunk_and_link_boundaries_get_kubos_cids(kubo: Kubo, tmp_path: Path, version: int) -> None:  # noqa: F811
    for name, size in SIZES.items():
        f = tmp_path / name
        f.write_bytes(payload(size, seed=len(name)))
        theirs = _kubo_only_hash(kubo, f, version)
        assert _ours(f, version) == theirs, name
        f.unlink()


@pytest.mark.parametrize("version", [0, 1])
def test_folders_get_kubos_cids(kubo: Kubo, tmp_path: Path, version: int) -> None:  # noqa: F811
    """Nested and empty folders, names in several scripts, an empty file, a symlink; hidden names left out by
    default and added with --hidden; every entry's CID, not only the root's."""
    root = tmp_path / "tree"
    build_tree(root)
    theirs = _kubo_only_hash(kubo, root, version)
    assert "tree/ünïcödé ☃/深い/more/notes.txt" in theirs and "tree/.hidden" not in theirs
    assert _ours(root, version) == theirs
    with_hidden = _kubo_only_hash(kubo, root, version, "--hidden")
    assert "tree/.hidden" in with_hidden
    assert _ours(root, version, hidden=True) == with_hidden


@pytest.mark.parametrize("version", [0, 1])
def test_folders_past_a_lowered_hamt_threshold_get_kubos_cids(kubo: Kubo, tmp_path: Path, version: int) -> None:  # noqa: F811
    """kubo's Import.UnixFSHAMTDirectorySizeThreshold lowered to 1000 bytes shards nested folders too."""
    root = tmp_path / "tree"
    build_tree(root)
    for i in range(300):
        (root / "a-b" / f"entry-{i}-ü").write_text(str(i))
    kubo("config", "Import.UnixFSHAMTDirectorySizeThreshold", "1000B")
    theirs = _kubo_only_hash(kubo, root, version)
    assert _ours(root, version, shard_threshold=1000) == theirs
    store = LocalStore(tmp_path / "blocks")
    with Importer(store, cid_version=version, shard_threshold=1000) as importer:
        entries = {a.path: a.cid for a in importer.add_path(root)}
    assert _kind(store, entries["tree/a-b"]) == unixfs.Kind.HAMT_SHARD


@pytest.mark.parametrize("flags", [["--cid-version=1", "--raw-leaves"], []], ids=["cidv1", "cidv0"])
def test_names_that_are_not_utf8_get_kubos_cids(kubo: Kubo, cli, tmp_path: Path, flags: list[str]) -> None:  # noqa: F811
    src = _make(tmp_path / "src", TREE)
    theirs = _kubo_added(kubo, src, *flags)
    ours = _cats_added(cli, src, *([] if flags else ["--cid-version", "0"]))
    assert b"src/sub\xff/caf\xe9/deeper" in theirs and b"src/\xff\xfe" in theirs
    assert ours == theirs  # every file and folder, by its exact name bytes
    assert CID.parse(ours[b"src"]).version == (1 if flags else 0)


def test_a_sharded_folder_of_names_that_are_not_utf8_gets_kubos_cid(kubo: Kubo, cli, cats_home: Path,  # noqa: F811
                                                                    tmp_path: Path) -> None:
    """2,100 links of ~140 bytes pass kubo's 256 KiB sharding threshold; the HAMT places each entry by the
    murmur3 of its name bytes, so a name read as any other bytes would land in another bucket."""
    tree = {b"entry-%05d-" % i + b"x" * 90 + (b"\xff\xfe" if i % 7 == 0 else b"") +
            (b"caf\xe9" if i % 11 == 0 else b""): b"%d\n" % i for i in range(2100)}
    src = _make(tmp_path / "many", tree)
    store = LocalStore(cats_home / "blocks")
    for flags, cats_flags in ((["--cid-version=1", "--raw-leaves"], []), ([], ["--cid-version", "0"])):
        theirs = kubo.text("add", "-r", "-Q", "--only-hash", *flags, src)
        res = cli("add", "-r", "-q", *cats_flags, src)
        assert res.code == 0, res.err
        assert res.out.strip() == theirs
        assert _kind(store, CID.parse(theirs)) == unixfs.Kind.HAMT_SHARD
    out = tmp_path / "back"
    assert cli("get", theirs, "-o", out).code == 0
    assert _read_tree(out) == tree


def test_kubo_and_cats_read_each_others_folders(kubo: Kubo, cli, cats_home: Path, tmp_path: Path) -> None:  # noqa: F811
    src = _make(tmp_path / "src", TREE)
    # kubo adds the folder and exports its DAG; cats, which never saw the folder, imports and reads it
    root = kubo.text("add", "-r", "-Q", "--cid-version=1", "--raw-leaves", src)
    car = tmp_path / "kubo.car"
    car.write_bytes(kubo("dag", "export", root))
    assert cli("import", car).code == 0
    store = LocalStore(cats_home / "blocks")
    assert _kind(store, CID.parse(root)) == unixfs.Kind.DIRECTORY

    kubo_ls = [line.split(None, 1)[::-1] for line in kubo("ls", "--size=false", root).splitlines()]
    res = cli("ls", "--json", root)
    assert res.code == 0, res.err
    listed = [[base64.b64decode(i["name_base64"]) if "name_base64" in i else i["name"].encode(), i["cid"].encode()]
              for i in json.loads(res.out)]
    assert listed == [[name.rstrip(b"/"), cid] for name, cid in kubo_ls]  # same names, same order
    res = cli("ls", root)
    assert res.code == 0, res.err
    assert [line.split(maxsplit=2)[2] for line in res.out.splitlines()] == [
        "caf\\xe9", "déjà-vu.txt", "plain.txt", "sub\\xff/", "\\xff\\xfe"]

    ours = tmp_path / "cats-get"
    assert cli("get", root, "-o", ours).code == 0
    assert _read_tree(ours) == TREE
    inner = os.fsdecode(b"sub\xff/caf\xe9/deeper")
    assert cli("cat", f"{root}/{inner}").stdout_bytes == TREE[b"sub\xff/caf\xe9/deeper"]

    # cats adds the folder and exports it; a kubo that never saw it imports the CAR and gets the same files
    assert cli("add", "-r", "-q", src).out.strip() == root
    export = tmp_path / "cats.car"
    assert cli("export", root, "-o", export).code == 0
    other = Kubo(kubo.binary, tmp_path / "kubo-repo-2")
    other("init", "--profile", "test", "--empty-repo")
    other("dag", "import", export)
    theirs = tmp_path / "kubo-get"
    other("get", root, "-o", theirs)
    assert _read_tree(theirs) == TREE
