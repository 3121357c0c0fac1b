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
import site
import subprocess
import sys
from pathlib import Path

from cats.cas.cid import CID
from cats.cas.dag import put_cbor
from cats.cas.store import BlockStore
from cats.config import home
from cats.errors import CatsError

# Run by a fresh interpreter with -P (no script or working folder on its path) and no site
# customisation of ours: its sys.path is the installation's (PYTHONPATH, the standard library,
# site-packages and what their .pth files add, the user's site-packages).
_SCAN = ("import importlib.metadata as m, json, sys\n"
         "json.dump([[d.metadata['Name'], d.version] for d in m.distributions()], sys.stdout)")


def _normalize(name: str) -> str:
    """A distribution's canonical name (PEP 503), so `Foo_Bar` and `foo.bar` are one entry."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_distributions() -> dict[str, str]:
    """name -> version of every distribution the interpreter finds on its own path, first one
    winning as at import time; sorted by name."""
    proc = subprocess.run([sys.executable, "-P", "-c", _SCAN], capture_output=True, text=True,
                          cwd=Path(sys.prefix), timeout=120)
    if proc.returncode != 0:
        raise CatsError(f"could not list the installed distributions with {sys.executable}: "
                        f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    lock: dict[str, str] = {}
    for name, version in json.loads(proc.stdout):
        if name:
            lock.setdefault(_normalize(name), version)
    return dict(sorted(lock.items()))


def _install_folders() -> list[str]:
    """The folders whose contents make the lock: site-packages (the interpreter's, the user's) and PYTHONPATH."""
    folders = [*site.getsitepackages(), site.getusersitepackages()]
    folders += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if os.path.isabs(p)]
    return folders


def environment_lock(store: BlockStore) -> CID:
    """The lock block of this environment. Listing every distribution costs ~0.2 s, so its CID is
    cached under a key of the interpreter and the modification times of the folders distributions
    are installed in, which change whenever one is installed, upgraded or removed there."""
    stamp = [sys.executable, sys.version, os.environ.get("PYTHONPATH", "")]
    for folder in _install_folders():
        with contextlib.suppress(OSError):
            stamp.append(f"{folder}:{os.stat(folder).st_mtime_ns}")
    key = hashlib.sha256("\n".join(stamp).encode()).hexdigest()
    cache = home() / "cache" / "locks" / key
    with contextlib.suppress(OSError, CatsError):
        cached = CID.parse(cache.read_text())
        if store.has(cached):
            return cached
    lock = put_cbor(store, installed_distributions())
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{key}.{os.getpid()}")
    tmp.write_text(str(lock))
    os.replace(tmp, cache)
    return lock
