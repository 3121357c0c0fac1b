"""A node's home: the folder that keeps its store, run index, pins, signatures and identity.

The Factory, verification and reading results back take a `Home` instead of reaching for
`CATS_HOME` themselves, so two homes can live in one process and nothing a run keeps lands
anywhere its caller did not name. It lives here, in `bom`, because `bom` is the lowest layer
that sees every part (the store and pins from `cas`, the index and signatures of `bom`, the
identity that signs BOMs), and everything that keeps or checks BOMs sits above it.

Each part is opened once, on first use: a memoized re-run touches only the index, never the key.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cats.bom.index import Index
from cats.bom.jobs import JobTable
from cats.bom.signatures import Signatures
from cats.cas.pins import Pins
from cats.cas.store import BlockStore, open_store
from cats.config import home
from cats.identity import Identity


@dataclass(frozen=True, eq=False)
class Home:
    """A home folder and the block store its runs write to. Use it from one thread (its index is a
    SQLite connection); `close` closes what it opened."""

    folder: Path
    store: BlockStore

    @classmethod
    def open(cls, root: Path | None = None, store: BlockStore | None = None) -> Home:
        """`root` (default `CATS_HOME`) with `store`; without one, `CATS_HOME`'s default store
        (`CATS_STORE`, `CATS_IPFS_API` or its blocks folder), or `root/blocks` for another root."""
        if root is None:
            folder = home()
            store = store if store is not None else open_store()  # an empty store is falsy (len 0), not absent
        else:
            folder = Path(root).expanduser()
            folder.mkdir(parents=True, exist_ok=True)
            store = store if store is not None else open_store((folder / "blocks").resolve().as_uri())
        return cls(folder, store)

    @staticmethod
    @contextmanager
    def given(home: Home | None, store: BlockStore | None = None) -> Iterator[Home]:
        """`home` as it is, or else `CATS_HOME`'s with `store` (see `open`), closed when done."""
        if home is not None:
            yield home
            return
        opened = Home.open(store=store)
        try:
            yield opened
        finally:
            opened.close()

    @cached_property
    def index(self) -> Index:
        """The run index: memoization, lineage parents, result encodings, finished slices of unfinished runs."""
        return Index(self.folder / "index.sqlite")

    @property
    def has_index(self) -> bool:
        """Whether any run was ever indexed here (reading it would create it)."""
        return "index" in self.__dict__ or (self.folder / "index.sqlite").exists()

    @cached_property
    def jobs(self) -> JobTable:
        """Every Order run here or submitted elsewhere from here, with its status and its slices' logs."""
        return JobTable(self.folder / "jobs.sqlite")

    @cached_property
    def pins(self) -> Pins:
        return Pins(self.folder / "pins")

    @cached_property
    def signatures(self) -> Signatures:
        return Signatures(self.folder / "signatures")

    @cached_property
    def identity(self) -> Identity:
        """This node's signing key, made on first use."""
        return Identity.load(self.folder / "identity")

    @property
    def runs(self) -> Path:
        """Where a run keeps what its workers share while it runs (attempt counts)."""
        return self.folder / "runs"

    def close(self) -> None:
        if "index" in self.__dict__:
            self.index.close()
            del self.__dict__["index"]
        if "jobs" in self.__dict__:
            self.jobs.close()
            del self.__dict__["jobs"]
