"""Opening the SQLite files CATs keeps (run index, cache metrics, node tables): one way, in WAL mode.

Processes that open a new database at once race to turn it to WAL and create its tables; the first takes a
lock SQLite does not wait for there (its busy timeout does not apply), so the others retry, within the
same timeout.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

TIMEOUT_S = 30


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
