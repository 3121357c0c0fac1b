"""Identity does not depend on the process: the environment lock and the Order CID come out the same
in fresh interpreters that import differently, put other folders on their path or start elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cats.cas import dagcbor
from cats.cas.cid import CID
from cats.cas.store.local import LocalStore
from cats.order.environment import _scan

# Seals the Order file argv[1] into the home's store and prints its CID and lock as JSON.
# argv[2] says what the interpreter does first: import Ray, put a folder of stray package
# metadata on sys.path (as Ray does with its vendored packages), or nothing.
SEAL = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    if sys.argv[2] == "ray":
        import ray  # puts ray/thirdparty_files, which holds colorama and psutil, first on sys.path
    elif sys.argv[2] != "plain":
        sys.path.insert(0, sys.argv[2])
    from cats.cas.store import open_store
    from cats.cli.run import _load_order
    from cats.order.seal import seal
    sealed = seal(_load_order(Path(sys.argv[1])), open_store())
    print(json.dumps({"order": str(sealed.cid), "lock": str(sealed.structure.lock)}))
""")


def _stray_metadata(folder: Path) -> Path:
    """A folder that looks like an installation of a package nobody installed."""
    info = folder / "stray_pkg-6.6.6.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: stray-pkg\nVersion: 6.6.6\n")
    return folder


def _seal(order_file: Path, home: Path, first: str, cwd: Path) -> dict[str, str]:
    env = {**os.environ, "CATS_HOME": str(home)}
    env.pop("CATS_STORE", None)
    env.pop("CATS_IPFS_API", None)
    proc = subprocess.run([sys.executable, "-c", SEAL, str(order_file), first], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_same_order_same_cid_however_the_process_started(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "texts").mkdir()
    (project / "texts" / "a.txt").write_bytes(b"alpha\n")
    order_file = project / "env_order.py"
    order_file.write_text(textwrap.dedent("""
        from pathlib import Path
        from cats.order import Function, Order

        def shout(data):
            return data.upper()

        order = Order(function=Function.of(shout), inputs=[Path(__file__).parent / "texts"])
    """))
    stray = _stray_metadata(tmp_path / "stray")
    elsewhere = _stray_metadata(tmp_path / "elsewhere")  # a working folder holding package metadata too
    runs = {
        "plain, in the project": _seal(order_file, tmp_path / "h1", "plain", project),
        "Ray imported first": _seal(order_file, tmp_path / "h2", "ray", project),
        "stray metadata first on sys.path": _seal(order_file, tmp_path / "h3", str(stray), project),
        "started in another folder": _seal(order_file, tmp_path / "h4", "plain", elsewhere),
    }
    assert len({r["order"] for r in runs.values()}) == 1, runs
    assert len({r["lock"] for r in runs.values()}) == 1, runs
    lock = dagcbor.decode(LocalStore(tmp_path / "h1" / "blocks").get(CID.parse(runs["plain, in the project"]["lock"])))
    assert "stray-pkg" not in lock
    assert lock["cats"] and lock["ray"] and lock["pydantic"]


def test_lock_names_are_canonical_and_sorted() -> None:
    lock, path = _scan()
    assert path and all(Path(p).is_absolute() for p in path)
    assert list(lock) == sorted(lock)
    assert all(name == name.lower() and "_" not in name and "." not in name for name in lock), lock
    import pydantic

    assert lock["pydantic"] == pydantic.VERSION


LOCK = textwrap.dedent("""
    from cats.cas import dagcbor
    from cats.cas.store import open_store
    from cats.order.environment import environment_lock
    store = open_store()
    print(dagcbor.decode(store.get(environment_lock(store))).get("stray-pkg"))
""")


def test_the_cached_lock_follows_the_installation(tmp_path: Path) -> None:
    """One home, one cache: a folder put on the path, a distribution upgraded in place in it and the
    folder taken off again each give the lock a fresh scan would."""
    extra = _stray_metadata(tmp_path / "extra")
    env = {**os.environ, "CATS_HOME": str(tmp_path / "home")}
    env.pop("PYTHONPATH", None)

    def version(**changes: str) -> str:
        proc = subprocess.run([sys.executable, "-c", LOCK], capture_output=True, text=True, env={**env, **changes},
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    assert version() == "None"
    assert version(PYTHONPATH=str(extra)) == "6.6.6"
    metadata = extra / "stray_pkg-6.6.6.dist-info" / "METADATA"
    metadata.write_text(metadata.read_text().replace("6.6.6", "7.0.0"))  # edited in place: no folder changes
    os.utime(metadata, ns=(metadata.stat().st_atime_ns, metadata.stat().st_mtime_ns + 1_000_000_000))
    assert version(PYTHONPATH=str(extra)) == "7.0.0"
    assert version() == "None"
    assert len(list((tmp_path / "home" / "cache" / "locks").iterdir())) == 2  # one per path setting, reused


def test_site_customisation_that_prints_does_not_break_the_lock(tmp_path: Path) -> None:
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "sitecustomize.py").write_text("print('hello from sitecustomize')\n")
    proc = subprocess.run([sys.executable, "-c", LOCK], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CATS_HOME": str(tmp_path / "home"), "PYTHONPATH": str(custom)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "None"
