"""Hostile folders against `cats get` and the worker's code layout: nothing may land outside the destination.

Every tree here is built block by block, as an adversary would, not by the importer (which never makes
these): duplicate names, names that are paths, symlinks that look inside by their text but resolve
outside through the tree's other symlinks, a symlink named like a later file that would be written
through it. The sentinel around the destination (a folder beside it, a file above it) must stay as it was,
and a refused tree must leave neither the destination nor its staging folder.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wrapping import Forwarding

from cats.cas import dagpb, hamt, names, reader, unixfs
from cats.cas.cid import CID, DAG_PB, RAW
from cats.cas.importer import Importer
from cats.cas.store import BlockStore
from cats.cas.store.local import LocalStore
from cats.cas.store.memory import MemoryStore
from cats.errors import CatsError, UnsafePath
from cats.factory.code import _process_root as code_root
from cats.factory.code import code_folder
from cats.order import Order
from cats.order.function import Function
from cats.order.seal import seal

# A tree as data: ("file", bytes), ("link", target) or ("dir", [(name, tree), ...]) in block order,
# ("hamt", [...]) for the same folder sharded (every entry in a bucket of its own).
Tree = tuple[str, Any]


def _put(store: BlockStore, block: bytes, codec: int = DAG_PB) -> CID:
    cid = CID.hash(block, codec)
    store.put(cid, block)
    return cid


def build(store: BlockStore, tree: Tree) -> CID:
    kind, body = tree
    if kind == "file":
        return _put(store, body, RAW)
    if kind == "link":
        return _put(store, dagpb.encode([], unixfs.encode(unixfs.Kind.SYMLINK, names.encode(body))))
    links = [dagpb.Link(build(store, child), name, 1) for name, child in body]
    if kind == "dir":
        return _put(store, dagpb.encode(links, unixfs.encode(unixfs.Kind.DIRECTORY)))
    shard = [dagpb.Link(link.cid, f"{i:02X}{link.name}", 1) for i, link in enumerate(links)]
    field = (sum(1 << i for i in range(len(links)))).to_bytes(max(1, (len(links) + 7) // 8), "big")
    return _put(store, dagpb.encode(shard, unixfs.encode(unixfs.Kind.HAMT_SHARD, field,
                                                         hash_type=hamt.MURMUR3_X64_64, fanout=256)))


def snapshot(base: Path, skip: Path) -> dict[str, object]:
    """Every entry under base but `skip` (the destination): kind and bytes or target, links not followed."""
    seen: dict[str, object] = {}
    for top, dirs, files in os.walk(base):
        dirs[:] = [d for d in dirs if Path(top, d) != skip]
        for name in dirs + files:
            path = Path(top, name)
            if path == skip:
                continue
            rel = str(path.relative_to(base))
            seen[rel] = ("link", os.readlink(path)) if path.is_symlink() else \
                ("dir",) if path.is_dir() else ("file", path.read_bytes())
    return seen


class Scene:
    """base/a/b (a file an escape would aim at), base/victim, base/work/ (dest's folder, empty), dest."""

    def __init__(self, base: Path) -> None:
        self.base = base
        (base / "a").mkdir(parents=True)
        (base / "a" / "b").write_bytes(b"sentinel")
        (base / "victim").write_bytes(b"untouched")
        self.work = base / "work"
        self.work.mkdir()
        self.dest = self.work / "dest"
        self.before = snapshot(base, self.dest)

    def untouched(self) -> None:
        """Nothing outside dest changed, appeared or went (no staging folder left either)."""
        assert snapshot(self.base, self.dest) == self.before

    def nothing_left(self) -> None:
        assert not self.dest.exists() and not self.dest.is_symlink()
        assert os.listdir(self.work) == []
        self.untouched()


@pytest.fixture
def scene(tmp_path: Path) -> Scene:
    return Scene(tmp_path / "scene")


def _file(data: bytes = b"payload") -> Tree:
    return ("file", data)


# Each attack: the tree, then what the one-line error must name besides the folder's CID.
ATTACKS: dict[str, tuple[Tree, str]] = {
    "dot-dot": (("dir", [("..", _file())]), "'..'"),
    "dot": (("dir", [(".", _file())]), "'.'"),
    "empty": (("dir", [("", _file())]), "''"),
    "slash": (("dir", [("a/b", _file())]), "'a/b'"),
    "nul": (("dir", [("x\0y", _file())]), "'x\\x00y'"),
    "duplicate files": (("dir", [("f", _file(b"one")), ("f", _file(b"two"))]), "duplicate entry name 'f'"),
    # the old write-through: x -> . makes x/x/x/../../.. three levels above the root, though its text
    # normalises to something inside; a later *file* b is then opened through the link b
    "link then file of its name": (("dir", [("x", ("link", ".")),
                                            ("b", ("link", "x/x/x/../../../victim")),
                                            ("b", _file(b"overwritten"))]), "duplicate entry name 'b'"),
    "folder through a link of its name": (("dir", [("x", ("link", ".")), ("d", ("link", "x/x/..")),
                                                   ("d", ("dir", [("evil", _file())]))]), "duplicate entry name 'd'"),
    "chain climbs out": (("dir", [("x", ("link", ".")), ("y", ("link", "x/.."))]), "symlink 'y'"),
    "chain hidden in a subfolder": (("dir", [("x", ("link", ".")),
                                             ("sub", ("dir", [("up", ("link", "../x/x/../../a/b"))]))]),
                                    "symlink 'sub/up'"),
    "absolute": (("dir", [("etc", ("link", "/etc"))]), "'/etc'"),
    "plainly out": (("dir", [("out", ("link", "../../victim"))]), "'../../victim'"),
    # a: by its text a sibling inside; that sibling points out
    "link to a sibling link that points out": (("dir", [("a", ("link", "b")), ("b", ("link", "/etc/passwd"))]),
                                               "symlink 'a'"),
    "loop": (("dir", [("p", ("link", "q")), ("q", ("link", "p"))]), "symlink 'p'"),
    "empty target": (("dir", [("e", ("link", ""))]), "unusable target"),
    "hamt duplicate": (("hamt", [("same", _file(b"one")), ("same", _file(b"two"))]), "duplicate entry name 'same'"),
    "hamt dot-dot": (("hamt", [("ok", _file()), ("..", _file())]), "'..'"),
}


@pytest.mark.parametrize("attack", ["nul", "duplicate files", "link then file of its name",
                                    "chain hidden in a subfolder", "link to a sibling link that points out",
                                    "hamt duplicate"])
def test_attack_refused_by_cats_get(cli, cats_home: Path, scene: Scene, attack: str) -> None:
    tree, culprit = ATTACKS[attack]
    root = build(LocalStore(cats_home / "blocks"), tree)
    res = cli("get", root, "-o", scene.dest)
    line = res.error_line(culprit)
    assert line.startswith("Error: ") and str(root) in line, line
    scene.nothing_left()


@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_refused_by_the_python_function(scene: Scene, attack: str) -> None:
    tree, culprit = ATTACKS[attack]
    store = MemoryStore()
    root = build(store, tree)
    with pytest.raises(UnsafePath) as e:
        reader.get(store, root, scene.dest)
    assert culprit in str(e.value) and str(root) in str(e.value) and "\n" not in str(e.value)
    scene.nothing_left()


def test_hamt_duplicate_across_sub_shards(scene: Scene) -> None:
    """The same name once in a top bucket and once inside a sub-shard: checked across the whole folder,
    and named with the folder's CID, not the sub-shard's."""
    store = MemoryStore()
    data = unixfs.encode(unixfs.Kind.HAMT_SHARD, b"\x07", hash_type=hamt.MURMUR3_X64_64, fanout=256)
    sub = _put(store, dagpb.encode([dagpb.Link(build(store, _file(b"two")), "00twin", 3)], data))
    top = _put(store, dagpb.encode([dagpb.Link(build(store, _file(b"one")), "00twin", 3),
                                    dagpb.Link(sub, "01", 50)], data))
    with pytest.raises(UnsafePath) as e:
        reader.get(store, top, scene.dest)
    assert "duplicate entry name 'twin'" in str(e.value) and str(top) in str(e.value) and str(sub) not in str(e.value)
    with pytest.raises(UnsafePath):
        reader.ls(store, top)
    scene.nothing_left()


def test_names_checked_where_a_folder_is_made(store: BlockStore) -> None:
    """The importer's one door for folders refuses what a file system cannot give but other callers might."""
    leaf = build(store, _file())
    with Importer(store) as imp:
        for bad in ("..", "", "a/b"):
            with pytest.raises(UnsafePath, match=re.escape(f"'{bad}' in the output folder")):
                imp.directory([dagpb.Link(leaf, bad, 7)], where="the output folder")
        with pytest.raises(UnsafePath, match="duplicate entry name 'f'"):
            imp.directory([dagpb.Link(leaf, "f", 7), dagpb.Link(leaf, "f", 7)])


def test_wrapping_a_path_named_dot_dot_is_refused(store: BlockStore, tmp_path: Path) -> None:
    """`add_wrapped("..")` would make a folder whose one entry is `..`."""
    (tmp_path / "inner").mkdir()
    with Importer(store) as imp, pytest.raises(UnsafePath, match="'..'"):
        imp.add_wrapped(tmp_path / "inner" / "..")


def test_allow_outside_links_writes_them_with_a_warning(cli, cats_home: Path, scene: Scene) -> None:
    tree: Tree = ("dir", [("f", _file(b"kept")), ("x", ("link", ".")), ("y", ("link", "x/x/../../a/b")),
                          ("z", ("link", "/etc"))])
    root = build(LocalStore(cats_home / "blocks"), tree)
    res = cli("get", root, "-o", scene.dest, "--allow-outside-links")
    assert res.code == 0, res.err
    warned = res.err.strip().splitlines()
    assert len(warned) == 2 and all(w.startswith("warning: ") for w in warned), res.err
    assert "symlink 'y'" in warned[0] and "'x/x/../../a/b'" in warned[0]
    assert "symlink 'z'" in warned[1] and "'/etc'" in warned[1]
    assert os.readlink(scene.dest / "y") == "x/x/../../a/b" and os.readlink(scene.dest / "z") == "/etc"
    assert (scene.dest / "f").read_bytes() == b"kept"
    assert os.path.realpath(scene.dest / "y") == os.path.realpath(scene.base / "a" / "b")  # the sentinel, unwritten
    scene.untouched()

    # duplicates stay refused: the flag is about where links point, never about writing through them
    dup = build(LocalStore(cats_home / "blocks"), ATTACKS["link then file of its name"][0])
    res = cli("get", dup, "-o", scene.work / "again", "--allow-outside-links")
    res.error_line("duplicate entry name 'b'", str(dup))
    assert not (scene.work / "again").exists() and sorted(os.listdir(scene.work)) == ["dest"]


def test_allow_outside_links_in_python_warns_per_link(scene: Scene) -> None:
    store = MemoryStore()
    root = build(store, ("dir", [("abs", ("link", "/etc")), ("ok", ("link", "abs"))]))
    with pytest.warns(UserWarning) as caught:
        reader.get(store, root, scene.dest, allow_outside_links=True)
    assert sorted(str(w.message).split("'")[1] for w in caught) == ["abs", "ok"]
    assert os.readlink(scene.dest / "ok") == "abs"


def test_an_inside_tree_of_links_is_written(scene: Scene) -> None:
    """Links that climb and hop but stay inside are written as they are, and resolve where they say."""
    store = MemoryStore()
    tree: Tree = ("dir", [("d", ("dir", [("f", _file(b"deep")), ("up", ("link", ".."))])),
                          ("hop", ("link", "d/up/d/up/d/f")), ("dangling", ("link", "nothing/here")),
                          ("self", ("link", "."))])
    root = build(store, tree)
    reader.get(store, root, scene.dest)
    assert (scene.dest / "hop").read_bytes() == b"deep"
    assert os.readlink(scene.dest / "d" / "up") == ".."
    assert os.path.realpath(scene.dest / "self") == os.path.realpath(scene.dest)
    scene.untouched()


def test_a_single_symlink_cid_is_refused(scene: Scene) -> None:
    """A tree that is one symlink would sit beside dest's siblings: any target of it is outside."""
    store = MemoryStore()
    link = build(store, ("link", "victim"))
    with pytest.raises(UnsafePath, match=f"symlink {link} points outside"):
        reader.get(store, link, scene.dest)
    scene.nothing_left()


class _Interrupting(Forwarding):
    """Raises KeyboardInterrupt when the given block is read: Ctrl-C in the middle of writing."""

    def __init__(self, inner: BlockStore, at: CID) -> None:
        super().__init__(inner)
        self.at = at

    def _get_unverified(self, cid: CID) -> bytes:
        if cid == self.at:
            raise KeyboardInterrupt
        return super()._get_unverified(cid)


def test_an_interrupt_leaves_nothing(scene: Scene) -> None:
    store = MemoryStore()
    late = build(store, _file(b"written last"))
    root = build(store, ("dir", [("a", _file(b"first")), ("sub", ("dir", [("b", _file(b"second"))])),
                                 ("z", ("file", b"written last")), ("l", ("link", "a"))]))
    with pytest.raises(KeyboardInterrupt):
        reader.get(_Interrupting(store, late), root, scene.dest)
    scene.nothing_left()


def test_code_with_an_outside_link_is_refused_at_sealing_and_on_workers(store: BlockStore, cats_home: Path,
                                                                         tmp_path: Path) -> None:
    """A code folder's symlinks stay symlinks; one leading out of the code is refused when the Order is
    sealed (before anything runs), and code made elsewhere (a peer's Order) is refused again where every
    worker lays it out (through `get`), its process's code folder keeping nothing of it."""
    src = tmp_path / "proj"
    src.mkdir()
    (src / "job.py").write_text("def run(x):\n    return x\n")
    (tmp_path / "secret.txt").write_text("not for workers")
    os.symlink("../../secret.txt", src / "secret")
    with pytest.raises(UnsafePath, match=r"function proj.job:run's code .* symlink 'proj/secret' in \S+ points out"):
        seal(Order(function=Function(entry="proj.job:run", source=src), inputs=[build(store, _file())]), store)
    with Importer(store, cid_version=1) as importer:
        code = importer.add_wrapped(src).cid
    with pytest.raises(UnsafePath, match=r"symlink 'proj/secret' in \S+ points outside the destination"):
        code_folder(store, code)
    assert not (code_root() / str(code)).exists()
    assert not (cats_home / "code").exists()


# -- random trees --------------------------------------------------------------------------------
# names drawn mostly safe, so most trees get as far as their links; now and then unsafe or empty ones
_NAMES = st.sampled_from(["a", "b", "c", "d"] * 20 + ["", ".", "..", "a/b", "n\0l"])
_TARGETS = st.lists(st.sampled_from(["..", ".", "a", "b", "c", "d", "victim"]), min_size=1, max_size=6).map("/".join)
# relative, absolute, or (one in ten) empty
_LINKS = st.tuples(st.sampled_from([""] * 6 + ["/"] * 3 + [None]), _TARGETS).map(
    lambda p: ("link", "" if p[0] is None else p[0] + p[1]))
_LEAVES = st.one_of(st.binary(max_size=8).map(lambda b: ("file", b)), _LINKS)


def _folders(children: st.SearchStrategy[Tree]) -> st.SearchStrategy[Tree]:
    """Folders of distinct names, a quarter of them with the first name again over another entry (a
    duplicate, an attack), a third of them sharded."""

    def folder(kind: str, entries: list[tuple[str, Tree]], again: Tree | None) -> Tree:
        return kind, entries + [(entries[0][0], again)] if entries and again is not None else entries

    again = st.one_of(st.none(), st.none(), st.none(), children)
    return st.builds(folder, st.sampled_from(["dir", "dir", "hamt"]),
                     st.lists(st.tuples(_NAMES, children), max_size=4, unique_by=lambda e: e[0]), again)


# every root holds links of its own (named apart from the rest), to resolve through whatever else is there
_TREES = st.builds(lambda root, links: (root[0], root[1] + list(zip("yz", links, strict=False))),
                   _folders(st.recursive(_LEAVES, _folders, max_leaves=10)), st.lists(_LINKS, min_size=1, max_size=2))


def _entries(tree: Tree) -> list[tuple[str, Tree]]:
    """A folder's entries as a reader sees them: in a HAMT, an entry with no name is a sub-shard's link
    (its bucket prefix alone), so a sharded child there is part of the same folder."""
    kind, body = tree
    if kind == "dir":
        return body
    return [e for name, child in body for e in (_entries(child) if name == "" and child[0] == "hamt"
                                                 else [(name, child)])]


def _well_formed(tree: Tree) -> bool:
    """Whether every folder's names are safe and distinct and every link has a target: what get accepts
    (with the flag) when nothing else is wrong."""
    kind, body = tree
    if kind == "link":
        return body != ""
    if kind == "file":
        return True
    body = _entries(tree)
    names_here = [name for name, _ in body]
    return (len(set(names_here)) == len(names_here)
            and all(n not in ("", ".", "..") and "/" not in n and "\0" not in n for n in names_here)
            and all(_well_formed(child) for _, child in body))


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top + os.sep)


def _links_on_disk(dest: Path) -> dict[str, Path]:
    found = {}
    for top, dirs, files in os.walk(dest):
        for name in dirs + files:
            path = Path(top, name)
            if path.is_symlink():
                found[str(path.relative_to(dest))] = path
    return found


def _leads_nowhere(path: Path) -> bool:
    """Whether the kernel cannot follow the link: a loop, or a name missing on the way. The check takes
    a missing name by its text and goes on, so it may refuse such a link where realpath stops inside."""
    try:
        os.stat(path)
    except OSError as e:
        return e.errno in (errno.ELOOP, errno.ENOENT, errno.ENOTDIR)
    return False


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=_TREES)
def test_random_trees_never_escape(tree: Tree) -> None:
    """With the flag, a tree whose names are fine is written and the links it warns about are exactly those
    realpath finds outside (or that lead nowhere); without it, the tree is refused, leaving nothing, if there is any
    such link, else every path under dest resolves inside it. Nothing outside dest ever changes. (The
    generator never draws the names of the folders above dest, so no link leaves the tree and comes back
    in by name, the one case where the check is stricter than realpath.)"""
    store = MemoryStore()
    root = build(store, tree)
    with tempfile.TemporaryDirectory() as tmp:
        flagged, plain = Scene(Path(os.path.realpath(tmp)) / "flagged"), Scene(Path(os.path.realpath(tmp)) / "plain")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                reader.get(store, root, flagged.dest, allow_outside_links=True)
            except CatsError as e:
                assert not _well_formed(tree), e
                assert "\n" not in str(e)
                flagged.nothing_left()
                with pytest.raises(CatsError):
                    reader.get(store, root, plain.dest)
                plain.nothing_left()
                return
        assert _well_formed(tree)
        flagged.untouched()
        warned = {re.match(r"symlink '([^']*)' in ", str(w.message)).group(1)  # type: ignore[union-attr]
                  for w in caught}
        for rel, path in _links_on_disk(flagged.dest).items():
            out = not _inside(os.path.realpath(path), str(flagged.dest))
            assert out <= (rel in warned), (rel, os.readlink(path))
            assert (rel in warned) <= (out or _leads_nowhere(path)), (rel, os.readlink(path))

        try:
            reader.get(store, root, plain.dest)
        except UnsafePath as e:
            assert warned, e
            plain.nothing_left()
        else:
            assert not warned
            real = os.path.realpath(plain.dest)
            for top, dirs, files in os.walk(plain.dest):
                for name in dirs + files:
                    assert _inside(os.path.realpath(Path(top, name)), real), Path(top, name)
            plain.untouched()
