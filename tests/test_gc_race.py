"""gc beside writers: an add running while gc runs again and again ends with its whole DAG stored.

Each round starts from the worst case for gc: the file's blocks are already in the store, unpinned and
old (an earlier `--no-pin` add, aged), so the add only de-duplicates them; gc would take every one that
the add does not refresh under its lease. Half the rounds start from an empty store instead (new blocks
written while gc runs). In-process rounds (threads, a 4 KiB chunk: 259 blocks a file) race hardest;
the CLI rounds run the real `cats add` and `cats gc` as separate processes.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cats.cas import importer as importer_module
from cats.cas.cid import CID, RAW
from cats.cas.dag import walk
from cats.cas.importer import Importer
from cats.cas.pins import Pins, gc
from cats.cas.store.local import LocalStore


def _age(store: LocalStore, seconds: float = 3600) -> None:
    """Date every stored block as written `seconds` ago: older than any gc that starts now."""
    past = time.time() - seconds
    for cid in store:
        os.utime(store.path(cid), (past, past))


def _complete(store: LocalStore, root: CID) -> int:
    """Every block of root's DAG is stored and hashes to its CID (walk reads and verifies each)."""
    return sum(1 for _ in walk(store, root))


def _file(path: Path, size: int, seed: int) -> Path:
    path.write_bytes(b"".join(seed.to_bytes(4, "little") + i.to_bytes(4, "little") + bytes(4088)
                              for i in range(size // 4096)))
    return path


class _Signalling(LocalStore):
    """A LocalStore that tells, once `after` blocks were put, that the add is under way."""

    def __init__(self, root: Path, after: int) -> None:
        super().__init__(root)
        self.puts, self.after, self.under_way = 0, after, threading.Event()

    def put(self, cid: CID, data: bytes | memoryview) -> None:
        super().put(cid, data)
        self.puts += 1
        if self.puts == self.after:
            self.under_way.set()


def _round(tmp: Path, data: Path, prestored: bool) -> None:
    """gc runs in a loop from the moment the add has put 50 blocks (de-duplicated, when prestored)."""
    store, pins = _Signalling(tmp / "blocks", 50), Pins(tmp / "pins")
    if prestored:
        with Importer(LocalStore(tmp / "blocks")) as imp, open(data, "rb") as f:
            imp.add_file(f)
        _age(store)
    done = threading.Event()
    errors: list[BaseException] = []
    collections = 0

    def collect() -> None:
        nonlocal collections
        try:
            store.under_way.wait()
            while not done.is_set() or not collections:
                gc(LocalStore(tmp / "blocks"), pins)  # its own handle, as another process has
                collections += 1
        except BaseException as e:  # reported by the test
            errors.append(e)

    collector = threading.Thread(target=collect)
    collector.start()
    try:
        with store.lease():
            with open(data, "rb") as f, Importer(store) as imp:
                root = imp.add_file(f).cid
            pins.add(store, root)
    finally:
        done.set()
        store.under_way.set()
        collector.join()
    assert not errors, errors
    assert collections >= 1
    assert _complete(store, root) == 259
    gc(store, pins)
    assert _complete(store, root) == 259  # pinned now: kept for good


def _rounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(importer_module, "CHUNK_SIZE", 4096)
    for i in range(count):
        work = tmp_path / str(i)
        work.mkdir()
        _round(work, _file(work / "data.bin", 1 << 20, i), prestored=i % 2 == 0)


def test_add_beside_gc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _rounds(tmp_path, monkeypatch, 4)


@pytest.mark.slow
def test_add_beside_gc_many(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _rounds(tmp_path, monkeypatch, 50)


_COLLECTOR = """
import sys, pathlib
from cats.cas.pins import Pins, gc
from cats.cas.store import open_store
stop, home = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
gc(open_store(), Pins(home / "pins"))
print("collecting", flush=True)
count = 1
while not stop.exists():
    gc(open_store(), Pins(home / "pins"))
    count += 1
print(count)
"""


def _cli_rounds(tmp_path: Path, count: int) -> None:
    """`cats add` in one process while another collects in a loop, as `cats gc` does, over and over."""
    home = tmp_path / "home"
    env = {**os.environ, "CATS_HOME": str(home)}
    env.pop("CATS_STORE", None)
    env.pop("CATS_IPFS_API", None)

    def cats(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "cats", *args], env=env, capture_output=True, timeout=120)

    assert cats("gc").returncode == 0  # the store exists before the collector opens it
    for i in range(count):
        data = _file(tmp_path / f"data{i}.bin", 16 << 20, i)  # 64 chunks of 256 KiB
        if i % 2 == 0:
            assert cats("add", "-q", "--no-pin", str(data)).returncode == 0
            _age(LocalStore(home / "blocks"))
        stop = tmp_path / f"stop{i}"
        collector = subprocess.Popen([sys.executable, "-c", _COLLECTOR, str(stop), str(home)], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert collector.stdout is not None and collector.stdout.readline() == b"collecting\n"
            added = cats("add", "-q", str(data))
        finally:
            stop.touch()
            out, err = collector.communicate(timeout=120)
        assert collector.returncode == 0, err.decode()
        assert int(out) >= 2
        assert added.returncode == 0, added.stderr.decode()
        root = CID.parse(added.stdout.decode().strip())
        store = LocalStore(home / "blocks")
        assert _complete(store, root) == 65
        assert cats("gc").returncode == 0
        assert _complete(store, root) == 65
        data.unlink()


def test_cli_add_beside_gc(tmp_path: Path) -> None:
    _cli_rounds(tmp_path, 2)


@pytest.mark.slow
def test_cli_add_beside_gc_many(tmp_path: Path) -> None:
    _cli_rounds(tmp_path, 50)


def _plant(leases: Path, what: str) -> int | None:
    """Something in the leases folder the store did not make; returns a descriptor to close, if one."""
    if what == "fifo":
        os.mkfifo(leases / "planted")
    elif what == "folder":
        (leases / "planted").mkdir()
    elif what == "symlink":
        (leases / "planted").symlink_to("/dev/zero")
    else:  # a held lease whose text is not a time ("nan" would make min() ignore it)
        fd = os.open(leases / "planted", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, what.encode())
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd
    return None


@pytest.mark.parametrize("what", ["fifo", "folder", "symlink", "not a time", "nan", "inf"])
def test_gc_stops_in_one_line_at_a_lease_it_did_not_make(cli, cats_home: Path, what: str) -> None:
    """gc never hangs on, follows, or guesses around a planted lease: one line naming it, nothing removed."""
    store = LocalStore(cats_home / "blocks")
    loose = CID.hash(b"unpinned, old", RAW)
    store.put(loose, b"unpinned, old")
    _age(store)
    leases = cats_home / "blocks" / ".leases"
    leases.mkdir(exist_ok=True)
    fd = _plant(leases, what)
    try:
        cli("gc").error_line(str(leases / "planted"))
    finally:
        if fd is not None:
            os.close(fd)
    assert store.has(loose)
