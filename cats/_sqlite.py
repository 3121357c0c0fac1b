"""Opening the SQLite files CATs keeps (run index, cache metrics, node tables): one way, in WAL mode.

Processes that open a new database at once race to turn it to WAL and create its tables; the first takes a
lock SQLite does not wait for there (its busy timeout does not apply), so the others retry, within the
same timeout.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

TIMEOUT_S = 30
_IN_BATCH = 500  # values per `IN (...)`: well under SQLite's limit on a statement's parameters

T = TypeVar("T")


def connect(path: str | Path, schema: str = "", pragmas: Sequence[str] = ("synchronous=NORMAL",),
            check_same_thread: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL journal, `pragmas` set and
    `schema` (statements separated by `;`) run."""
    db = sqlite3.connect(path, timeout=TIMEOUT_S, isolation_level=None, check_same_thread=check_same_thread)
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            for pragma in pragmas:
                db.execute(f"PRAGMA {pragma}")
            if schema:
                db.executescript(schema)
            return db
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                db.close()
                raise
            time.sleep(0.05)


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One transaction: committed if the block finishes, rolled back if it raises. A connection in
    autocommit mode (as `connect` makes) needs it to group statements: `with db:` alone begins no
    transaction there, so each row of an `executemany` would be a commit of its own."""
    db.execute("BEGIN IMMEDIATE")  # the write lock now, not at the first write: no deadlock between two writers
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def in_batches(values: Sequence[T]) -> Iterator[tuple[str, Sequence[T]]]:
    """`values` a batch at a time, each with its `IN` list of placeholders (`?,?,…`), for lookups of
    any number of keys."""
    for start in range(0, len(values), _IN_BATCH):
        batch = values[start:start + _IN_BATCH]
        yield ",".join("?" * len(batch)), batch
