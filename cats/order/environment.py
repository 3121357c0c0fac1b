"""The environment lock: the name and version of every distribution this interpreter has installed.

The lock feeds the Order's CID, so it is read from the installation alone, never from this
process's `sys.path`: that holds whatever the process added on the way (Ray puts its vendored
packages there once imported; a script's folder or the working directory may hold stray package
metadata). The same installation gives the same lock in every process and from every folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from cats.cas.cid import CID
from cats.cas.dag import put_cbor
from cats.cas.store import BlockStore
from cats.config import home
from cats.errors import CatsError

# Run by a fresh interpreter with -P (no script or working folder on its path): its sys.path is the
# installation's (PYTHONPATH, the standard library, site-packages and what their .pth files add, the
# user's site-packages). It writes to a file, as site customisations may print.
_SCAN = ("import importlib.metadata as m, json, sys\n"
         "dists = [[d.metadata['Name'], d.version] for d in m.distributions()]\n"
         "json.dump({'path': sys.path, 'dists': dists}, open(sys.argv[1], 'w'))")
# What decides that interpreter's path, besides the interpreter itself.
_PATH_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYTHONNOUSERSITE", "PYTHONUSERBASE", "PYTHONPLATLIBDIR")
_METADATA = (".dist-info", ".egg-info", ".egg-link", ".pth")


def _normalize(name: str) -> str:
    """A distribution's canonical name (PEP 503), so `Foo_Bar` and `foo.bar` are one entry."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _scan() -> tuple[dict[str, str], list[str]]:
    """The lock (name -> version, first found winning as at import time, sorted by name) and the path
    it was read from."""
    with tempfile.TemporaryDirectory(prefix="cats-lock-") as tmp:
        out = Path(tmp) / "scan.json"
        try:
            proc = subprocess.run([sys.executable, "-P", "-c", _SCAN, str(out)], capture_output=True, text=True,
                                  cwd=sys.prefix, timeout=120)
            found = json.loads(out.read_text()) if proc.returncode == 0 else None
        except (OSError, ValueError, subprocess.TimeoutExpired) as e:
            raise CatsError(f"could not list the installed distributions with {sys.executable or 'python'}: "
                            f"{e}") from None
    if found is None:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise CatsError(f"could not list the installed distributions with {sys.executable}: {last}")
    lock: dict[str, str] = {}
    for name, version in found["dists"]:
        if name:
            lock.setdefault(_normalize(name), version)
    return dict(sorted(lock.items())), found["path"]


def _stamp(path: list[str]) -> str:
    """Changes whenever a distribution is installed, upgraded or removed in a folder of `path`: the
    folders' times, and those of the metadata (and .pth files) they hold."""
    parts = []
    for entry in path:
        try:
            parts.append(f"{entry}:{os.stat(entry).st_mtime_ns}")
            with os.scandir(entry) as children:
                for child in children:
                    if child.name.endswith(_METADATA):
                        parts.append(f"{child.name}:{child.stat().st_mtime_ns}")
                        for meta in ("METADATA", "PKG-INFO"):
                            with contextlib.suppress(OSError):
                                parts.append(f"{meta}:{os.stat(os.path.join(child.path, meta)).st_mtime_ns}")
        except OSError:  # absent, or a zip archive: its own time is all there is
            continue
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def environment_lock(store: BlockStore) -> CID:
    """The lock block of this environment. Listing every distribution in a fresh interpreter costs
    ~0.2 s, so its CID is cached per interpreter and path settings, with the path it was read from
    and a stamp of that path's metadata (a few ms to check), which any install, upgrade or removal
    there changes."""
    settings = [sys.executable, sys.version, *(f"{v}={os.environ.get(v, '')}" for v in _PATH_VARIABLES)]
    key = hashlib.sha256("\n".join(settings).encode()).hexdigest()
    cache = home() / "cache" / "locks" / key
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, CatsError):
        cached = json.loads(cache.read_text())
        lock = CID.parse(cached["lock"])
        if cached["stamp"] == _stamp(cached["path"]) and store.has(lock):
            return lock
    dists, path = _scan()
    lock = put_cbor(store, dists)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{key}.{os.getpid()}")
    tmp.write_text(json.dumps({"lock": str(lock), "path": path, "stamp": _stamp(path)}))
    os.replace(tmp, cache)
    return lock
