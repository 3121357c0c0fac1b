"""User code by CID: laid out as files once per machine, imported from there and nowhere else.

Workers load the Function, the driver a user split, egress a user merge: all through `load`.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cats.cas import reader
from cats.cas.cid import CID
from cats.cas.store import BlockStore
from cats.config import home
from cats.factory import guard
from cats.order.function import Function

_loaded: dict[tuple[str, str], Callable[..., Any]] = {}


def code_folder(store: BlockStore, code: CID, root: Path | None = None) -> Path:
    """The code DAG as files in `<root>/<cid>` (default `CATS_HOME/code`: a worker's is its machine's),
    fetched once per machine, by `reader.get`: code whose symlinks lead outside its folder, or whose
    names are unsafe, is refused and leaves nothing."""
    folder = (root if root is not None else home() / "code") / str(code)
    if not folder.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=folder.parent)) / "code"
        try:
            reader.get(store, code, staging)
            # another worker on this machine may have got there first: same CID, same files
            with contextlib.suppress(OSError):
                os.replace(staging, folder)
        finally:
            shutil.rmtree(staging.parent, ignore_errors=True)
    return folder


def load(store: BlockStore, fn: Function, purpose: str, root: Path | None = None) -> Callable[..., Any]:
    """Import the entry point from its code folder (under `root`, see `code_folder`), never from
    whatever else shares its name. `purpose` (e.g. "to run slice 3 in a worker") tells a Factory
    run the import starts why it is refused."""
    assert fn.code is not None
    key = (str(fn.code), fn.entry)
    if key in _loaded:
        return _loaded[key]
    folder = str(code_folder(store, fn.code, root))
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
