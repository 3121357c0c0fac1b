"""Nonces of signed requests already accepted, in SQLite, so a replay is refused even across a restart.

A nonce is kept until its request's signature window closes (`expires`); after that the date check
alone refuses the request, so the row can go. Expired rows are swept now and then, not on every call.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from cats._sqlite import connect

_SWEEP_EVERY_S = 60.0


class Nonces:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = connect(path, "CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, expires REAL NOT NULL)",
                           check_same_thread=False)
        self._lock = threading.Lock()
        self._swept = 0.0

    def seen(self, nonce: str, expires: float) -> bool:
        """Record nonce until `expires`; True if it was recorded already (the request is a replay)."""
        now = time.time()
        with self._lock:
            if now - self._swept > _SWEEP_EVERY_S:
                self._db.execute("DELETE FROM nonces WHERE expires < ?", (now,))
                self._swept = now
            inserted = self._db.execute("INSERT OR IGNORE INTO nonces (nonce, expires) VALUES (?, ?)",
                                        (nonce, expires)).rowcount
        return inserted == 0

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM nonces").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
