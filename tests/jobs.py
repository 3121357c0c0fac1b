"""Helpers for tests that run Orders: job modules written to disk, inputs added to the store, the
results read back, and the processes a run left behind.

Workers import a job function from its source file, so test jobs live in real module files; give
each a unique name, since the session's Ray workers cache modules by name.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from cats.cas import reader
from cats.cas.cid import CID
from cats.cas.importer import Importer
from cats.cas.store.local import LocalStore


def module(folder: Path, name: str, source: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


def home_store(cats_home: Path) -> LocalStore:
    """The store `factory.run` uses by default: CATS_HOME/blocks."""
    return LocalStore(cats_home / "blocks")


def add(store: LocalStore, path: Path) -> CID:
    with Importer(store, cid_version=1) as importer:
        *_, top = importer.add_path(path)
    return top.cid


def folder(parent: Path, files: dict[str, bytes], name: str = "inputs") -> Path:
    path = parent / name
    path.mkdir()
    for fname, data in files.items():
        (path / fname).write_bytes(data)
    return path


def outputs(cats_home: Path, output: CID | str) -> dict[str, bytes]:
    """The bytes of each entry of a folder output, by name, from the home's store."""
    store = home_store(cats_home)
    return {name: b"".join(reader.read(store, cid)) for name, cid, _ in reader.entries(store, CID.parse(str(output)))}


def live(word: str) -> list[int]:
    """Live (not zombie) processes on this machine whose command line holds `word`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if word.encode() in cmdline and state != "Z":
            found.append(int(proc.name))
    return found


def tamper(store: LocalStore, cid: CID) -> None:
    """Change a stored block's bytes in place (blocks are written read-only), as an attacker with the disk would."""
    path = store.path(cid)
    assert path.exists(), cid
    path.chmod(0o644)
    path.write_bytes(path.read_bytes() + b"\x00tampered")
    path.chmod(0o444)
