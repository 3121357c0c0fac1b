"""Packs: many blocks end to end in one file, for a writer that receives a whole DAG at once (a pull).

A file per block costs a file system a create, a rename and their journal entries per block; a DAG
of a 1 GiB file is 4,000 blocks, and that costs more than receiving and hashing them. A pull writes
them into a pack instead: `<store>/.packs/<pid>.<token>.pack`, where `index.sqlite` says where each
block lies (key, pack, offset, size) and when it was last written or refreshed (`time`, which gc's
protocol reads as a block file's mtime, see `BlockStore.lease`).

A writer appends to a pack of its own and makes its blocks visible in one transaction per batch,
once they are written (and fsynced, where the store syncs): readers never see part of a block, and a
writer that dies leaves only bytes that no row names, which opening the store removes. A block is
in one pack at most; the local store reads a block's file first and its pack second. Deleting a
packed block deletes its row, and the pack goes once no row names it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from cats._sqlite import connect
from cats.errors import IntegrityError

SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (key TEXT PRIMARY KEY, pack TEXT NOT NULL, offset INTEGER NOT NULL,
                                   size INTEGER NOT NULL, time REAL NOT NULL);
CREATE INDEX IF NOT EXISTS blocks_pack ON blocks(pack)
"""
BATCH = 64 << 20  # bytes a writer appends before it makes them visible


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Packs:
    """The packs of one store folder. The index is opened on first use, and created only by a writer:
    a store that never packed anything reads nothing more than a missing file's stat."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._writing: set[str] = set()  # packs this process is still appending to

    def _index(self, create: bool = False) -> sqlite3.Connection | None:
        if self._db is None:
            path = self.folder / "index.sqlite"
            if not create and not path.exists():
                return None
            self.folder.mkdir(exist_ok=True)
            with self._lock:
                if self._db is None:
                    self._db = connect(path, SCHEMA, check_same_thread=False)
        return self._db

    def _query(self, sql: str, args: tuple[object, ...]) -> list[tuple[object, ...]]:
        db = self._index()
        if db is None:
            return []
        with self._lock:
            return db.execute(sql, args).fetchall()

    def _change(self, sql: str, args: tuple[object, ...]) -> int:
        db = self._index()
        if db is None:
            return 0
        with self._lock:
            return db.execute(sql, args).rowcount

    def find(self, key: str) -> tuple[str, int, int, float] | None:
        """(pack, offset, size, time) of a packed block, or None."""
        rows = self._query("SELECT pack, offset, size, time FROM blocks WHERE key = ?", (key,))
        return rows[0] if rows else None  # type: ignore[return-value]

    def read_into(self, key: str, buffer: memoryview | None = None) -> bytes | None:
        """The packed block's bytes (into buffer, when given, which must be its size); None if not packed."""
        found = self.find(key)
        if found is None:
            return None
        pack, offset, size, _ = found
        if buffer is not None and len(buffer) != size:
            raise IntegrityError(f"packed block {key} holds {size} bytes, not the {len(buffer)} expected")
        try:
            fd = os.open(self.folder / pack, os.O_RDONLY)
        except FileNotFoundError:
            return None  # deleted since
        try:
            target = buffer if buffer is not None else memoryview(bytearray(size))
            got = 0
            while got < size and (n := os.preadv(fd, [target[got:]], offset + got)):
                got += n
        finally:
            os.close(fd)
        if got != size:
            raise IntegrityError(f"packed block {key} is cut short in {pack}")
        return b"" if buffer is not None else bytes(target)

    def refresh(self, key: str, size: int) -> bool:
        """Stamp a packed block of this size as written now; False if there is none."""
        found = self.find(key)  # a read first: most blocks a writer brings are new, and a write would lock
        if found is None or found[2] != size:
            return False
        return self._change("UPDATE blocks SET time = ? WHERE key = ? AND size = ?", (time.time(), key, size)) > 0

    def delete(self, key: str) -> None:
        found = self.find(key)
        if found is not None and self._change("DELETE FROM blocks WHERE key = ?", (key,)):
            self._drop_if_empty(found[0])

    def discard(self, key: str, older_than: float) -> bool:
        """Remove the row if its time is before older_than, in one statement (a refresh is never lost)."""
        found = self.find(key)
        if found is None or not self._change("DELETE FROM blocks WHERE key = ? AND time < ?", (key, older_than)):
            return False
        self._drop_if_empty(found[0])
        return True

    def packed(self) -> list[str]:
        """The keys of every packed block."""
        return [str(row[0]) for row in self._query("SELECT key FROM blocks", ())]

    def _drop_if_empty(self, pack: str) -> None:
        """Remove a pack no row names, unless a live writer is still appending to it."""
        pid = pack.partition(".")[0]
        if pack in self._writing or (pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid))):
            return
        if not self._query("SELECT 1 FROM blocks WHERE pack = ? LIMIT 1", (pack,)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.folder / pack)

    def clean(self) -> None:
        """Remove packs of dead writers that no row names (a writer that died before its first batch)."""
        if not self.folder.is_dir():
            return
        for entry in os.scandir(self.folder):
            pid, _, rest = entry.name.partition(".")
            if rest.endswith(".pack") and pid.isdigit() and not _alive(int(pid)):
                self._drop_if_empty(entry.name)

    @contextlib.contextmanager
    def writer(self, sync: bool) -> Iterator[PackWriter]:
        """A pack of this process's own; what was appended is visible once the block ends, however it
        ends (or sooner)."""
        self._index(create=True)
        name = f"{os.getpid()}.{secrets.token_hex(6)}.pack"
        self._writing.add(name)
        fd = os.open(self.folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o444)
        writer = PackWriter(self, name, fd, sync)
        try:
            yield writer
        finally:
            try:
                writer.commit()  # whatever stopped the writer, what it appended is whole
            finally:
                os.close(fd)
                self._writing.discard(name)
            self._drop_if_empty(name)

    def _commit(self, rows: list[tuple[str, str, int, int, float]]) -> None:
        db = self._index(create=True)
        assert db is not None
        with self._lock:
            db.execute("BEGIN IMMEDIATE")
            try:
                # a block another writer packed meanwhile stays where it is, refreshed
                db.executemany("INSERT INTO blocks VALUES (?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                               "time = excluded.time", rows)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise


class PackWriter:
    """Appends blocks to one pack (from many threads at once) and makes them visible every BATCH bytes."""

    def __init__(self, packs: Packs, name: str, fd: int, sync: bool) -> None:
        self.packs, self.name, self.fd, self.sync = packs, name, fd, sync
        self._lock = threading.Lock()
        self._offset = 0
        self._rows: list[tuple[str, str, int, int, float]] = []
        self._pending = 0
        self._keys: set[str] = set()  # appended here already

    def append(self, key: str, data: bytes | memoryview) -> bool:
        """Append a block; False (and nothing written) if this pack has it already."""
        view = memoryview(data)
        with self._lock:
            if key in self._keys:
                return False
            self._keys.add(key)
            at = self._offset
            while view:
                view = view[os.write(self.fd, view):]
            self._offset += len(data)
            self._rows.append((key, self.name, at, len(data), 0.0))
            self._pending += len(data)
            full = self._pending >= BATCH
        if full:
            self.commit()
        return True

    def commit(self) -> None:
        with self._lock:
            rows, self._rows, self._pending = self._rows, [], 0
            if not rows:
                return
            if self.sync:
                os.fsync(self.fd)
            now = time.time()
            self.packs._commit([(key, pack, at, size, now) for key, pack, at, size, _ in rows])
