"""Find bad or missing blocks and put them right from sources that hold good copies.

A source is any callable giving the bytes it claims for a CID (or None): a CAR file, a file or folder
imported again with the settings it was first added with, a peer's node. Nothing a source gives is
trusted: every block is hashed against its CID before `BlockStore.restore` writes it (which checks
again), so a wrong or malicious source can only fail to help.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cats.cas import car
from cats.cas.cid import CID, RAW
from cats.cas.dag import links
from cats.cas.store import BlockStore
from cats.errors import CarError, CatsError

Source = Callable[[CID], bytes | None]


@dataclass
class RepairReport:
    checked: int = 0
    bad: dict[str, str] = field(default_factory=dict)  # CID -> "missing" or "corrupt"
    repaired: dict[str, str] = field(default_factory=dict)  # CID -> the source that gave it
    still_bad: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {"checked": self.checked, "bad": self.bad, "repaired": self.repaired, "still_bad": self.still_bad}


def repair(store: BlockStore, roots: Iterable[CID], sources: list[tuple[str, Source]],
           every_block: bool = False) -> RepairReport:
    """Check the DAGs under roots (and, with every_block, every stored block too); restore each bad or
    missing block from the first source whose bytes match its CID, then go on into its links."""
    report = RepairReport()
    seen: set[CID] = set()

    def visit(cid: CID) -> bytes | None:
        """The block's good bytes (when it links anything), after repairing it if need be."""
        report.checked += 1
        state = store.check(cid)
        if state != "ok":
            report.bad[str(cid)] = state
            for name, source in sources:
                data = _quietly(source, cid)
                if data is not None and cid.verify(data):
                    store.restore(cid, data)
                    report.repaired[str(cid)] = name
                    return data
            report.still_bad.append(str(cid))
            return None
        return None if cid.codec == RAW else store.get(cid)

    stack = list(roots)
    while stack:
        cid = stack.pop()
        if cid.to_v1() in seen:
            continue
        seen.add(cid.to_v1())
        block = visit(cid)
        if block is not None:
            stack.extend(reversed(links(cid, block)))
    if every_block:
        for cid in list(store):
            if cid not in seen:
                seen.add(cid)
                visit(cid)
    return report


def _quietly(source: Source, cid: CID) -> bytes | None:
    """A source that fails for one block (a peer that lacks it, a CAR read error) just does not help."""
    try:
        return source(cid)
    except CatsError:
        return None


@contextlib.contextmanager
def car_source(path: str | os.PathLike[str]) -> Iterator[Source]:
    """The blocks of a CAR file, found by an index of where each section's block lies."""
    with open(path, "rb") as f:
        try:
            index = car.index(f)
        except CatsError as e:
            raise CarError(f"cannot read CAR {path}: {e}") from None
        yield lambda cid: (os.pread(f.fileno(), index[cid.to_v1()][1], index[cid.to_v1()][0])
                           if cid.to_v1() in index else None)


@contextlib.contextmanager
def path_source(store: BlockStore, path: str | os.PathLike[str], cid_version: int = 1, hashfn: str = "sha2-256",
                hidden: bool = False) -> Iterator[Source]:
    """A file or folder imported again, with the settings it was added with, into a scratch store in the
    store's temporary area (removed afterwards): its blocks are the ones whose CIDs the import gives."""
    from cats.cas.importer import Importer
    from cats.cas.store.local import LocalStore

    if not Path(path).exists():
        raise CatsError(f"--from {path}: no such file or folder")
    scratch = tempfile.mkdtemp(prefix=f"{os.getpid()}.repair.", dir=store.temp_dir())
    try:
        staged = LocalStore(scratch)
        with Importer(staged, cid_version, hashfn, hidden=hidden) as importer:
            for _ in importer.add_path(path, recursive=True):
                pass
        yield lambda cid: staged.get(cid, verify=False) if staged.has(cid) else None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
