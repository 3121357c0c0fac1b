"""The service's state: one SQLite file (WAL) holding principals, datasets, their URIs and readers, and the access log.

Each change is one transaction, so a failure leaves nothing half-written; the CLI (`cats data token
add`) may write principals while the service runs, since WAL lets both at it. Expired datasets stay
(answered 410); deleted ones go with their URIs and readers, while their log entries stay.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cats.errors import CatsError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS principals (
    name TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS datasets (
    handle TEXT PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES principals(name),
    meta TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL
);
CREATE TABLE IF NOT EXISTS uris (
    handle TEXT NOT NULL REFERENCES datasets(handle) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    uri TEXT NOT NULL,
    PRIMARY KEY (handle, idx)
);
CREATE TABLE IF NOT EXISTS readers (
    handle TEXT NOT NULL REFERENCES datasets(handle) ON DELETE CASCADE,
    principal TEXT NOT NULL REFERENCES principals(name),
    PRIMARY KEY (handle, principal)
);
CREATE TABLE IF NOT EXISTS access_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    principal TEXT,
    handle TEXT,
    action TEXT NOT NULL,
    status INTEGER NOT NULL,
    bytes INTEGER NOT NULL DEFAULT 0,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS access_log_by_handle ON access_log (handle, id);
"""


@dataclass(frozen=True, slots=True)
class DatasetRow:
    handle: str
    owner: str
    uris: list[str]
    readers: list[str]
    meta: dict
    created: float
    expires: float | None

    def may_read(self, principal: str) -> bool:
        return principal == self.owner or principal in self.readers


@dataclass(frozen=True, slots=True)
class LogRow:
    time: float
    principal: str | None
    handle: str | None
    action: str
    status: int
    bytes: int
    detail: str | None


class ServiceDB:
    """One connection shared by the service's threads under a lock; every write in one transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a committed registration survives a power cut
            self._db.execute("PRAGMA foreign_keys=ON")
            with self._tx() as db:  # not executescript: it would commit outside this transaction
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
        except sqlite3.Error as e:
            raise CatsError(f"cannot open the data service database {path}: {e}") from None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- principals ------------------------------------------------------------------------------

    def add_principal(self, name: str, token_sha256: str, now: float, rotate: bool = False) -> None:
        """Record a principal with its token's digest; an existing name is refused unless `rotate`."""
        with self._tx() as db:
            exists = db.execute("SELECT 1 FROM principals WHERE name = ?", (name,)).fetchone()
            if exists and not rotate:
                raise CatsError(f"principal {name} exists already; use --rotate to give it a new token")
            db.execute("INSERT INTO principals (name, token_sha256, created) VALUES (?, ?, ?) ON CONFLICT(name) "
                       "DO UPDATE SET token_sha256 = excluded.token_sha256", (name, token_sha256, now))

    def principal(self, token_sha256: str) -> str | None:
        rows = self._read("SELECT name FROM principals WHERE token_sha256 = ?", (token_sha256,))
        return rows[0][0] if rows else None

    def known(self, names: list[str]) -> set[str]:
        return {name for name in names if self._read("SELECT 1 FROM principals WHERE name = ?", (name,))}

    def principals(self) -> int:
        return self._read("SELECT count(*) FROM principals")[0][0]

    # -- datasets --------------------------------------------------------------------------------

    def create(self, row: DatasetRow) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO datasets (handle, owner, meta, created, expires) VALUES (?, ?, ?, ?, ?)",
                       (row.handle, row.owner, json.dumps(row.meta, sort_keys=True), row.created, row.expires))
            db.executemany("INSERT INTO uris (handle, idx, uri) VALUES (?, ?, ?)",
                           [(row.handle, i, uri) for i, uri in enumerate(row.uris)])
            db.executemany("INSERT INTO readers (handle, principal) VALUES (?, ?)",
                           [(row.handle, name) for name in row.readers])

    def dataset(self, handle: str) -> DatasetRow | None:
        with self._lock:  # one consistent view of the three tables
            found = self._db.execute("SELECT owner, meta, created, expires FROM datasets WHERE handle = ?",
                                     (handle,)).fetchone()
            if found is None:
                return None
            uris = [u for (u,) in self._db.execute("SELECT uri FROM uris WHERE handle = ? ORDER BY idx", (handle,))]
            readers = [r for (r,) in self._db.execute("SELECT principal FROM readers WHERE handle = ? "
                                                      "ORDER BY principal", (handle,))]
        owner, meta, created, expires = found
        return DatasetRow(handle, owner, uris, readers, json.loads(meta), created, expires)

    def delete(self, handle: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM datasets WHERE handle = ?", (handle,))

    # -- access log ------------------------------------------------------------------------------

    def log(self, entry: LogRow) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO access_log (time, principal, handle, action, status, bytes, detail) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (entry.time, entry.principal, entry.handle, entry.action, entry.status, entry.bytes,
                        entry.detail))

    def entries(self, handle: str, limit: int) -> list[LogRow]:
        """The newest `limit` entries for the handle, oldest first."""
        rows = self._read("SELECT time, principal, handle, action, status, bytes, detail FROM access_log "
                          "WHERE handle = ? ORDER BY id DESC LIMIT ?", (handle, limit))
        return [LogRow(*row) for row in reversed(rows)]
