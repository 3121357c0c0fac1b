"""User code by CID: laid out as files afresh in each process, read-only, imported from there and nowhere else.

Workers load the Function, the driver a user split, egress a user merge: all through `load`. No
folder of code is shared between processes or kept between them, so nothing edited on disk after
sealing ever runs under the sealed CID: every file comes from the store's blocks, each checked
against its CID as it is read.
"""

from __future__ import annotations

import atexit
import contextlib
import filecmp
import importlib
import itertools
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cats.cas import reader
from cats.cas.cid import CID
from cats.cas.store import BlockStore
from cats.factory import guard
from cats.order.function import Function

_loaded: dict[tuple[str, str], Callable[..., Any]] = {}
_PREFIX = "cats-code-"
_root: Path | None = None


def _process_root() -> Path:
    """This process's own folder for code (mode 0700), removed when it exits; folders left by
    processes that died without removing theirs go when the next one starts."""
    global _root
    if _root is None or not _root.is_dir():
        base = Path(tempfile.gettempdir())
        for old in base.glob(f"{_PREFIX}*-*"):
            with contextlib.suppress(ValueError, OSError):
                pid = int(old.name[len(_PREFIX):].split("-")[0])
                if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
                    _remove(old)
        _root = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-"))
        atexit.register(_remove, _root)
    return _root


def laid_out_here(path: str) -> bool:
    """Whether `path` is in this process's folder of code: what an unconfined run in this worker
    imported, which a sandbox must neither see nor import."""
    if _root is None:
        return False
    real, root = os.path.realpath(path), os.path.realpath(_root)
    return real == root or real.startswith(root + os.sep)


def _remove(folder: Path) -> None:
    """Remove a read-only tree: its folders are made writable first."""
    for parent, dirs, _ in os.walk(folder):
        for d in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(parent, d), 0o700, follow_symlinks=False)
    with contextlib.suppress(OSError):
        os.chmod(folder, 0o700)
    shutil.rmtree(folder, ignore_errors=True)


def _read_only(folder: Path) -> None:
    for parent, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            path = os.path.join(parent, name)
            if not os.path.islink(path):
                mode = os.stat(path).st_mode
                os.chmod(path, stat.S_IMODE(mode) & 0o555)
        for name in dirs:
            if not os.path.islink(os.path.join(parent, name)):
                os.chmod(os.path.join(parent, name), 0o555)
    os.chmod(folder, 0o555)


def code_folder(store: BlockStore, code: CID) -> Path:
    """The code DAG as read-only files in a folder of this process's own, laid out from the store by
    `reader.get` (code whose symlinks lead outside its folder, or whose names are unsafe, is refused
    and leaves nothing; a block that does not match its CID is an IntegrityError naming it). Read-only
    stops no process of the same user: each use lays the code out again and compares, and a folder
    changed on disk is set aside and replaced, so only the sealed code is ever handed out."""
    folder = _process_root() / str(code)
    fresh = _process_root() / f".{code}.{next(_layouts)}"
    reader.get(store, code, fresh)
    if folder.exists() and _same_tree(folder, fresh):
        _remove(fresh)
        return folder
    if folder.exists():  # a sandbox may still have it mounted: moved aside, removed with the process's folder
        folder.rename(_process_root() / f".{code}.altered.{next(_layouts)}")
    _read_only(fresh)
    fresh.rename(folder)
    return folder


_layouts = itertools.count()


def _same_tree(a: Path, b: Path) -> bool:
    """Whether two folders hold the same names, symlinks and bytes."""
    def listing(root: Path) -> dict[str, tuple[str, str]]:
        found = {}
        for parent, dirs, files in os.walk(root):
            for name in dirs + files:
                path = os.path.join(parent, name)
                kind = "link" if os.path.islink(path) else "dir" if os.path.isdir(path) else "file"
                found[os.path.relpath(path, root)] = (kind, os.readlink(path) if kind == "link" else "")
        return found

    names = listing(a)
    if names != listing(b):
        return False
    return all(filecmp.cmp(a / rel, b / rel, shallow=False) for rel, (kind, _) in names.items() if kind == "file")


def load(store: BlockStore, fn: Function, purpose: str) -> Callable[..., Any]:
    """Import the entry point from its code folder (see `code_folder`), never from whatever else
    shares its name. `purpose` (e.g. "to run slice 3 in a worker") tells a Factory
    run the import starts why it is refused."""
    assert fn.code is not None
    key = (str(fn.code), fn.entry)
    if key in _loaded:
        return _loaded[key]
    folder = str(code_folder(store, fn.code))
    top = fn.module.split(".")[0]
    for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
        origin = getattr(sys.modules[name], "__file__", None) or ""
        if not origin.startswith(folder + os.sep):
            del sys.modules[name]
    if folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)
    importlib.invalidate_caches()
    with guard.importing(f"importing {fn.module} {purpose}"):
        obj: Any = importlib.import_module(fn.module)
    for part in fn.qualname.split("."):
        obj = getattr(obj, part)
    _loaded[key] = obj
    return obj
