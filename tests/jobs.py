"""Helpers for tests that run Orders: job modules written to disk, inputs added to the store.

Workers import a job function from its source file, so test jobs live in real module files; give
each a unique name, since the session's Ray workers cache modules by name.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

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
