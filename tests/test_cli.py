"""The `cats` store commands, run as real subprocesses, as a user would."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from cats import __version__
from cats.cas import car, dagpb, multihash, unixfs
from cats.cas.cid import CID, DAG_PB, RAW
from cats.cas.importer import CHUNK_SIZE, Importer
from cats.cas.store.local import LocalStore
from cats.cas.store.memory import MemoryStore

BIG = CHUNK_SIZE * 2 + 1234


def _tree(root: Path) -> Path:
    (root / "sub" / "déjà").mkdir(parents=True)
    (root / "hello.txt").write_bytes(b"hello, cats\n")
    (root / "sub" / "big.bin").write_bytes(random.Random(5).randbytes(BIG))
    (root / "sub" / "déjà" / "vu.txt").write_text("encore\n", encoding="utf-8")
    return root


def _expected(path: Path, version: int = 1) -> list[tuple[str, str]]:
    """(path, cid) as `cats add -r` should print them, computed in-process without a store."""
    with Importer(None, cid_version=version) as imp:
        return [(a.path, str(a.cid)) for a in imp.add_path(path)]


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def _run_in(home: Path, *args: object) -> subprocess.CompletedProcess[bytes]:
    """Like the `cli` fixture, with a second CATS_HOME."""
    return subprocess.run([sys.executable, "-m", "cats", *map(str, args)], capture_output=True, timeout=300,
                          env={**os.environ, "CATS_HOME": str(home)})



def _add(cli, path: Path, *extra: str) -> str:
    res = cli("add", "-r", "--quiet", *extra, path)
    assert res.code == 0, res.err
    return res.out.strip()


# -- basics -----------------------------------------------------------------------------------
def test_version(cli) -> None:
    res = cli("--version")
    assert res.code == 0
    assert res.out.strip() == f"cats {__version__}"


def test_version_loads_neither_models_nor_ray() -> None:
    """`cats --version` (and every command's start) stays light: models load with the commands that use them."""
    probe = ("import json, sys; sys.argv = ['cats', '--version']\nfrom cats.cli import main\ntry:\n    main()\n"
             "except SystemExit:\n    print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60).stdout
    version, modules = out.splitlines()
    assert version == f"cats {__version__}"
    heavy = set(json.loads(modules)) & {"pydantic", "ray", "rich", "cryptography", "pyarrow", "numpy", "httpx"}
    assert not heavy, sorted(heavy)


def test_add_prints_every_entry_root_last(cli, tmp_path: Path, cats_home: Path) -> None:
    src = _tree(tmp_path / "src")
    res = cli("add", "-r", src)
    assert res.code == 0, res.err
    lines = res.out.strip().splitlines()
    want = _expected(src)
    assert lines == [f"added {cid} {path}" for path, cid in want]
    assert lines[-1] == f"added {want[-1][1]} src"
    assert {p for p, _ in want} == {"src", "src/hello.txt", "src/sub", "src/sub/big.bin", "src/sub/déjà",
                                     "src/sub/déjà/vu.txt"}
    root = CID.parse(want[-1][1])
    assert LocalStore(cats_home / "blocks").has(root)

    quiet = cli("add", "-r", "--quiet", src)
    assert quiet.code == 0
    assert quiet.out == f"{root}\n"


def test_add_a_folder_needs_r(cli, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    res = cli("add", src)
    res.error_line(str(src))


def test_only_hash_writes_nothing(cli, tmp_path: Path, cats_home: Path) -> None:
    src = _tree(tmp_path / "src")
    res = cli("add", "-r", "--only-hash", src)
    assert res.code == 0, res.err
    assert _files(cats_home) == []
    hashed = res.out.strip().splitlines()
    real = cli("add", "-r", src)
    assert real.code == 0
    assert real.out.strip().splitlines() == hashed
    assert len(_files(cats_home / "blocks")) > 3


def test_cid_version_0(cli, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    root = _add(cli, src, "--cid-version", "0")
    assert root.startswith("Qm") and len(root) == 46
    assert root == _expected(src, 0)[-1][1]
    res = cli("cat", f"{root}/sub/déjà/vu.txt")
    assert res.code == 0 and res.stdout_bytes == b"encore\n"


def test_add_a_single_file(cli, tmp_path: Path) -> None:
    f = tmp_path / "one.txt"
    f.write_bytes(b"just one file")
    res = cli("add", f)
    assert res.code == 0
    assert res.out == f"added {CID.hash(b'just one file', RAW)} one.txt\n"


# -- reading ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_cat_paths_and_ranges(cli, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    root = _add(cli, src)
    big = (src / "sub" / "big.bin").read_bytes()

    assert cli("cat", f"{root}/hello.txt").stdout_bytes == b"hello, cats\n"
    assert cli("cat", f"/ipfs/{root}/sub/déjà/vu.txt").stdout_bytes == b"encore\n"
    whole = cli("cat", f"{root}/sub/big.bin")
    assert whole.code == 0 and whole.stdout_bytes == big
    file_cid = dict(_expected(src))["src/sub/big.bin"]
    for offset, length in [(0, 10), (CHUNK_SIZE - 5, 10), (BIG - 3, 100), (BIG, 5), (7, 0)]:
        res = cli("cat", "--offset", offset, "--length", length, file_cid)
        assert res.code == 0, res.err
        assert res.stdout_bytes == big[offset:offset + length], (offset, length)
    res = cli("cat", "--offset", BIG - 1000, f"{root}/sub/big.bin")
    assert res.stdout_bytes == big[-1000:]


def test_get(cli, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    root = _add(cli, src)
    dest = tmp_path / "out" / "copy"
    res = cli("get", root, "-o", dest)
    assert res.code == 0, res.err
    got = sorted(p.relative_to(dest) for p in dest.rglob("*"))
    assert got == sorted(p.relative_to(src) for p in src.rglob("*"))
    for p in src.rglob("*"):
        if p.is_file():
            assert (dest / p.relative_to(src)).read_bytes() == p.read_bytes()
    assert os.listdir(dest.parent) == ["copy"]

    one = tmp_path / "vu.txt"
    res = cli("get", f"{root}/sub/déjà/vu.txt", "-o", one)
    assert res.code == 0 and one.read_text(encoding="utf-8") == "encore\n"


def test_ls(cli, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    root = _add(cli, src)
    want = dict(_expected(src))
    res = cli("ls", root)
    assert res.code == 0
    lines = [line.split() for line in res.out.strip().splitlines()]
    assert lines == [[want["src/hello.txt"], "12", "hello.txt"], [want["src/sub"], lines[1][1], "sub/"]]

    res = cli("ls", "--json", f"{root}/sub")
    assert res.code == 0
    items = json.loads(res.out)
    assert items == [
        {"name": "big.bin", "cid": want["src/sub/big.bin"], "kind": "file", "size": BIG},
        {"name": "déjà", "cid": want["src/sub/déjà"], "kind": "dir", "size": items[1]["size"]},
    ]
    assert items[1]["size"] > 0


def test_names_that_are_not_utf8(cli, tmp_path: Path) -> None:
    """Names whose bytes are not UTF-8 are added, listed and written back: shown with \\xNN escapes for those
    bytes, given exactly in base64 under --json, and restored byte for byte by get."""
    caf, sub, fffe = os.fsdecode(b"caf\xe9"), os.fsdecode(b"sub\xff"), os.fsdecode(b"\xff\xfe")
    src = tmp_path / "src"
    (src / sub).mkdir(parents=True)
    (src / caf).write_bytes(b"latin-1\n")
    (src / sub / fffe).write_bytes(b"ff fe\n")
    (src / "été").write_bytes(b"utf-8\n")
    res = cli("add", "-r", src.name, cwd=tmp_path)
    assert res.code == 0, res.err
    want = dict(_expected(src))
    shown = {f"src/{caf}": "src/caf\\xe9", f"src/{sub}/{fffe}": "src/sub\\xff/\\xff\\xfe",
             f"src/{sub}": "src/sub\\xff", "src/été": "src/été", "src": "src"}
    assert res.out.splitlines() == [f"added {want[path]} {text}" for path, text in shown.items()]
    root = want["src"]

    res = cli("ls", root)
    assert res.code == 0, res.err
    assert [line.split()[2] for line in res.out.splitlines()] == ["caf\\xe9", "sub\\xff/", "été"]
    res = cli("ls", "--json", root)
    assert [{k: v for k, v in i.items() if k.startswith("name")} for i in json.loads(res.out)] == [
        {"name": "caf\\xe9", "name_base64": "Y2Fm6Q=="}, {"name": "sub\\xff", "name_base64": "c3Vi/w=="},
        {"name": "été"}]

    assert cli("cat", f"{root}/{sub}/{fffe}").stdout_bytes == b"ff fe\n"
    res = cli("get", f"{root}/{sub}", cwd=tmp_path)  # the destination defaults to the last path part
    assert res.code == 0, res.err
    assert res.out.strip() == f"saved {want['src/' + sub]} to sub\\xff"
    assert os.listdir(os.path.join(os.fsencode(tmp_path), b"sub\xff")) == [b"\xff\xfe"]
    cli("cat", f"{root}/{sub}/nope{fffe}").error_line("no entry 'nope\\xff\\xfe' in", f"{root}/sub\\xff")
    res = cli("cat", "--decode", root)  # the folder as name -> CID, names shown as ls shows them
    assert res.code == 0, res.err
    assert json.loads(res.out) == {"caf\\xe9": {"/": want[f"src/{caf}"]}, "sub\\xff": {"/": want[f"src/{sub}"]},
                                   "été": {"/": want["src/été"]}}


def test_export_import_round_trip(cli, tmp_path: Path, cats_home: Path) -> None:
    src = _tree(tmp_path / "src")
    root = _add(cli, src)
    out = tmp_path / "dag.car"
    res = cli("export", root, "-o", out)
    assert res.code == 0, res.err
    n_blocks = len(_files(cats_home / "blocks"))
    assert res.out.strip() == f"exported {n_blocks} blocks of {root} to {out}"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    home2 = tmp_path / "home2"
    imp = _run_in(home2, "import", out)
    assert imp.returncode == 0, imp.stderr
    assert imp.stdout.decode().splitlines() == [f"imported {root}", f"{n_blocks} blocks"]
    assert len(_files(home2 / "blocks")) == n_blocks
    cat = _run_in(home2, "cat", f"{root}/sub/big.bin")
    assert cat.stdout == (src / "sub" / "big.bin").read_bytes()
    pins = _run_in(home2, "pin", "ls")
    assert pins.stdout.decode().split() == [root]


@pytest.mark.slow
def test_pin_rm_and_gc(cli, tmp_path: Path, cats_home: Path) -> None:
    keep = _add(cli, _tree(tmp_path / "keep"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "gone.txt").write_bytes(b"collect me")
    drop = _add(cli, other)
    gone = str(CID.hash(b"collect me", RAW))

    res = cli("pin", "ls")
    assert res.code == 0 and sorted(res.out.split()) == sorted([keep, drop])
    res = cli("pin", "ls", "--json")
    assert sorted(json.loads(res.out)) == sorted([keep, drop])

    res = cli("pin", "rm", drop)
    assert res.code == 0 and res.out.strip() == f"unpinned {drop}"
    assert cli("pin", "ls").out.split() == [keep]
    cli("pin", "rm", drop).error_line(drop)  # not pinned any more

    res = cli("gc", "--json")
    assert res.code == 0, res.err
    assert sorted(json.loads(res.out)["removed"]) == sorted([drop, gone])

    res = cli("cat", f"{drop}/gone.txt")
    res.error_line(drop)
    res = cli("cat", gone)
    res.error_line(gone)
    assert cli("cat", f"{keep}/hello.txt").stdout_bytes == b"hello, cats\n"
    assert cli("gc").out.strip() == "removed 0 blocks"


def test_pin_add(cli, tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    f.write_bytes(b"pin me later")
    cid = _add(cli, f, "--no-pin")
    assert cli("pin", "ls").out == ""
    res = cli("pin", "add", cid)
    assert res.code == 0 and res.out.strip() == f"pinned {cid} (1 blocks)"
    assert cli("pin", "ls").out.split() == [cid]


# -- bad input: one line on stderr naming the culprit, exit 1 ---------------------------------
def test_malformed_cid(cli) -> None:
    res = cli("cat", "notacid")
    res.error_line("notacid")
    assert res.out == ""


def test_a_cid_with_padding_bits_set_is_refused_by_every_command(cli, tmp_path: Path) -> None:
    """The last base32 character of a 36-byte CIDv1 carries 2 unused bits: setting them writes the same bytes
    as another text. Every command refuses it rather than reading the object under a second name."""
    root = _add(cli, _tree(tmp_path / "src"))
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    mistyped = root[:-1] + alphabet[alphabet.index(root[-1]) | 1]
    assert mistyped != root and CID.parse(root).encode("base32") == root
    for args in (["cat", f"{mistyped}/hello.txt"], ["ls", mistyped], ["get", mistyped, "-o", tmp_path / "out"],
                 ["verify", mistyped], ["pin", "add", mistyped], ["export", mistyped, "-o", tmp_path / "x.car"],
                 ["lineage", mistyped]):
        res = cli(*args)
        line = res.error_line(repr(mistyped), "not the canonical base32 encoding", "last character")
        assert res.out == "", (args, line)
    assert not (tmp_path / "out").exists() and not (tmp_path / "x.car").exists()
    assert cli("cat", f"{root}/hello.txt").out == "hello, cats\n"


def test_unknown_codec(cli) -> None:
    cid = CID(1, 0x78, multihash.digest(b"a git object"))  # git-raw
    res = cli("cat", str(cid))
    res.error_line(str(cid))
    assert res.stdout_bytes == b""


def test_missing_block(cli) -> None:
    cid = str(CID.hash(b"never added", RAW))
    res = cli("cat", cid)
    res.error_line(cid)
    assert res.stdout_bytes == b""


def test_corrupted_block(cli, tmp_path: Path, cats_home: Path) -> None:
    src = _tree(tmp_path / "src")
    root = _add(cli, src)
    leaf = CID.hash((src / "hello.txt").read_bytes(), RAW)
    path = LocalStore(cats_home / "blocks").path(leaf)
    assert path.is_file() and path.is_relative_to(cats_home / "blocks")
    os.chmod(path, 0o644)
    path.write_bytes(b"HELLO, CATS\n")
    res = cli("cat", f"{root}/hello.txt")
    res.error_line(str(leaf))
    assert res.stdout_bytes == b""
    dest = tmp_path / "dest"
    res = cli("get", root, "-o", dest)
    res.error_line(str(leaf))
    assert not dest.exists()


def _car_bytes(tmp_path: Path) -> tuple[bytes, CID, MemoryStore]:
    src = _tree(tmp_path / "car-src")
    store = MemoryStore()
    with Importer(store) as imp:
        root = list(imp.add_path(src))[-1].cid
    path = tmp_path / "src.car"
    with open(path, "wb") as f:
        car.export(store, [root], f)
    return path.read_bytes(), root, store


def test_truncated_car(cli, tmp_path: Path, cats_home: Path) -> None:
    data, root, _ = _car_bytes(tmp_path)
    bad = tmp_path / "truncated.car"
    bad.write_bytes(data[:len(data) // 2])
    res = cli("import", bad)
    line = res.error_line()
    assert "truncated" in line
    assert _files(cats_home / "blocks") == []
    assert _files(cats_home / "pins") == []


def test_forged_car(cli, tmp_path: Path, cats_home: Path) -> None:
    data, root, store = _car_bytes(tmp_path)
    victim = CID.hash(b"hello, cats\n", RAW)
    assert store.has(victim) and data.count(b"hello, cats\n") == 1
    path = tmp_path / "forged.car"
    path.write_bytes(data.replace(b"hello, cats\n", b"jello, cats\n"))  # same length, CID kept
    res = cli("import", path)
    res.error_line(str(victim))
    assert _files(cats_home / "blocks") == []
    assert _files(cats_home / "pins") == []


def test_get_into_an_existing_destination(cli, tmp_path: Path) -> None:
    root = _add(cli, _tree(tmp_path / "src"))
    dest = tmp_path / "taken"
    dest.mkdir()
    (dest / "mine.txt").write_bytes(b"keep")
    res = cli("get", root, "-o", dest)
    res.error_line(str(dest))
    assert os.listdir(dest) == ["mine.txt"]
    assert (dest / "mine.txt").read_bytes() == b"keep"


def test_dot_dot_entry(cli, tmp_path: Path, cats_home: Path) -> None:
    store = LocalStore(cats_home / "blocks")
    payload = b"would land beside the destination"
    file_cid = CID.hash(payload, RAW)
    store.put(file_cid, payload)
    block = dagpb.encode([dagpb.Link(file_cid, "..", len(payload))], unixfs.encode(unixfs.Kind.DIRECTORY))
    folder = CID.hash(block, DAG_PB)
    store.put(folder, block)

    work = tmp_path / "work"
    work.mkdir()
    res = cli("get", folder, "-o", work / "dest")
    res.error_line("'..'")
    assert os.listdir(work) == []
    assert not (tmp_path / "dest").exists()
    res = cli("ls", folder)
    res.error_line("'..'")


def test_get_a_missing_block_leaves_nothing(cli, tmp_path: Path, cats_home: Path) -> None:
    src = _tree(tmp_path / "src")
    root = _add(cli, src)
    leaf = CID.hash(b"encore\n", RAW)
    LocalStore(cats_home / "blocks").delete(leaf)
    work = tmp_path / "work"
    work.mkdir()
    res = cli("get", root, "-o", work / "dest")
    res.error_line(str(leaf))
    assert os.listdir(work) == []


def test_path_not_found(cli, tmp_path: Path) -> None:
    root = _add(cli, _tree(tmp_path / "src"))
    res = cli("cat", f"{root}/sub/nope.txt")
    res.error_line("nope.txt")


# -- cat --decode -----------------------------------------------------------------------------
def test_cat_decode_prints_dag_cbor_as_dag_json(cli, tmp_path: Path, cats_home: Path) -> None:
    import base64

    from cats.cas.dag import put_cbor

    store = LocalStore(cats_home / "blocks")
    leaf = CID.hash(b"a leaf", RAW)
    store.put(leaf, b"a leaf")
    cid = put_cbor(store, {"name": "olá", "n": -3, "ratio": 0.25, "ok": True, "none": None,
                           "raw": b"\x00\xffcats", "link": leaf, "nested": [1, [leaf]], "two\nlines": 2})
    res = cli("cat", "--decode", cid)
    assert res.code == 0, res.err
    assert json.loads(res.out) == {"name": "olá", "n": -3, "ratio": 0.25, "ok": True, "none": None, "two\nlines": 2,
                                   "raw": {"/": {"bytes": base64.b64encode(b"\x00\xffcats").decode().rstrip("=")}},
                                   "link": {"/": str(leaf)}, "nested": [1, [{"/": str(leaf)}]]}
    cli("cat", cid).error_line(str(cid), "dag-cbor")  # without --decode: no UnixFS file, no bytes to write

    root = _add(cli, _tree(tmp_path / "src"))  # a folder that no run made: its entries
    listed = cli("cat", "--decode", root)
    assert listed.code == 0, listed.err
    assert json.loads(listed.out) == {name: {"/": str(c)} for name, c in _entries(cats_home, root).items()}
    assert cli("cat", "--decode", f"{root}/hello.txt").stdout_bytes == b"hello, cats\n"  # a file: its bytes


def _entries(cats_home: Path, root: str) -> dict[str, CID]:
    from cats.cas import reader

    return {name: c for name, c, _ in reader.entries(LocalStore(cats_home / "blocks"), CID.parse(root))}


def test_cat_decode_bad_input(cli, cats_home: Path) -> None:
    from cats.cas.dag import put_cbor

    cid = str(put_cbor(LocalStore(cats_home / "blocks"), [1, 2]))
    res = cli("cat", "--decode", "--offset", "1", cid)
    res.error_line("--decode", "--offset")
    assert res.out == ""
    missing = str(CID.hash(b"never added", DAG_PB))
    cli("cat", "--decode", missing).error_line(missing)
