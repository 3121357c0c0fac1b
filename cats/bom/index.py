"""The run index, an embedded SQLite file in CATS_HOME: Order -> BOM (memoization), output ->
the BOM that made it (lineage parents), slice result -> its encoding (reading a result back
without its BOM at hand), finished slices of unfinished runs (resume), evaluation key -> the
slice's outcome (reuse across Orders), and the runs this node asked other nodes for (its log, never
memoization: their outputs need not be here). A run's evaluations wait in `pending` until its BOM is
recorded, and then replace whatever its Order offered before: an Order run again (forced, or its BOM
lost) offers what its new BOM records, never what an earlier run of it computed differently.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cats._sqlite import connect, in_batches, transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (order_cid TEXT PRIMARY KEY, bom TEXT NOT NULL, output TEXT NOT NULL,
                                 name TEXT, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outputs (cid TEXT PRIMARY KEY, bom TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (cid TEXT PRIMARY KEY, encoding TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS slices (order_cid TEXT NOT NULL, idx INTEGER NOT NULL, record TEXT NOT NULL,
                                   PRIMARY KEY (order_cid, idx));
CREATE TABLE IF NOT EXISTS evaluations (key TEXT PRIMARY KEY, order_cid TEXT NOT NULL, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pending (order_cid TEXT NOT NULL, key TEXT NOT NULL, record TEXT NOT NULL,
                                    PRIMARY KEY (order_cid, key));
CREATE TABLE IF NOT EXISTS remote_runs (bom TEXT PRIMARY KEY, order_cid TEXT NOT NULL, output TEXT NOT NULL,
                                        name TEXT, node TEXT NOT NULL, url TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS runs_created ON runs (created);
"""


class Index:
    def __init__(self, path: str | Path) -> None:
        # No fsync per commit (the Factory commits once per finished batch: 20 ms each on a plain disk): in
        # WAL mode a commit still survives the process being killed; a power loss can lose the last few,
        # which only means a resumed run executes those slices again.
        self.db = connect(path, _SCHEMA)

    def close(self) -> None:
        self.db.close()

    def bom_for(self, order_cid: str) -> str | None:
        row = self.db.execute("SELECT bom FROM runs WHERE order_cid = ?", (order_cid,)).fetchone()
        return row[0] if row else None

    def output_of(self, bom: str) -> str:
        return self.db.execute("SELECT output FROM runs WHERE bom = ?", (bom,)).fetchone()[0]

    def producer(self, cid: str) -> str | None:
        row = self.db.execute("SELECT bom FROM outputs WHERE cid = ?", (cid,)).fetchone()
        return row[0] if row else None

    def encoding(self, result: str) -> str | None:
        """How a slice result is encoded, as the record of the run that made it says."""
        row = self.db.execute("SELECT encoding FROM results WHERE cid = ?", (result,)).fetchone()
        return row[0] if row else None

    def learn_outputs(self, bom: str, outputs: list[str], results: Iterable[tuple[str, str]] = ()) -> None:
        """Record another node's BOM as the producer of its outputs (pulled lineage), so a local Order
        reading one names it as parent, and its slice results' encodings; what this node produced
        itself stays as it is."""
        with transaction(self.db):
            self.db.executemany("INSERT OR IGNORE INTO outputs VALUES (?, ?)", [(o, bom) for o in outputs])
            self.db.executemany("INSERT OR IGNORE INTO results VALUES (?, ?)", results)

    def boms(self) -> list[str]:
        """Every BOM known here: those run here, newest first, then those run elsewhere for this node,
        then those pulled from or pushed by other nodes."""
        ran = [row[0] for row in self.db.execute("SELECT bom FROM runs ORDER BY created DESC")]
        asked = [row[0] for row in self.db.execute("SELECT bom FROM remote_runs ORDER BY created DESC")]
        learned = [row[0] for row in self.db.execute("SELECT DISTINCT bom FROM outputs ORDER BY bom")]
        return list(dict.fromkeys([*ran, *asked, *learned]))

    def save_slices(self, order_cid: str, records: list[dict[str, Any]],
                    evaluations: Iterable[tuple[str, dict[str, Any]]] = ()) -> None:
        """Slices an Order's run finished, and (key, outcome) of the evaluations it offers to others once
        its BOM is recorded."""
        with transaction(self.db):
            self.db.executemany("INSERT OR REPLACE INTO slices VALUES (?, ?, ?)",
                                [(order_cid, r["index"], json.dumps(r)) for r in records])
            self.db.executemany("INSERT OR REPLACE INTO pending VALUES (?, ?, ?)",
                                [(order_cid, key, json.dumps(r)) for key, r in evaluations])

    def evaluations(self, keys: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        """key -> (the BOM of the finished run that computed it, the slice's outcome), for the keys known."""
        found: dict[str, tuple[str, dict[str, Any]]] = {}
        for marks, batch in in_batches(keys):
            rows = self.db.execute("SELECT e.key, r.bom, e.record FROM evaluations e JOIN runs r "
                                   f"ON r.order_cid = e.order_cid WHERE e.key IN ({marks})", batch)
            found.update((key, (bom, json.loads(record))) for key, bom, record in rows)
        return found

    def done_slices(self, order_cid: str) -> dict[int, dict[str, Any]]:
        rows = self.db.execute("SELECT idx, record FROM slices WHERE order_cid = ?", (order_cid,))
        return {idx: json.loads(record) for idx, record in rows}

    def record_run(self, order_cid: str, bom: str, outputs: list[str], name: str | None,
                   results: Iterable[tuple[str, str]] = ()) -> None:
        """A finished run: its BOM, its outputs, and (result CID, encoding) of each slice."""
        with transaction(self.db):
            self.db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?)",
                            (order_cid, bom, outputs[0], name, time.time()))
            self.db.executemany("INSERT OR REPLACE INTO outputs VALUES (?, ?)", [(o, bom) for o in outputs])
            self.db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?)", results)
            self.db.execute("DELETE FROM slices WHERE order_cid = ?", (order_cid,))
            self.db.execute("DELETE FROM evaluations WHERE order_cid = ?", (order_cid,))
            self.db.execute("INSERT OR REPLACE INTO evaluations SELECT key, order_cid, record FROM pending "
                            "WHERE order_cid = ?", (order_cid,))
            self.db.execute("DELETE FROM pending WHERE order_cid = ?", (order_cid,))

    def record_remote_run(self, order_cid: str, bom: str, output: str, name: str | None, node: str,
                          url: str) -> None:
        """A run this node asked another for: the DID of the node that ran it (and signed its BOM) and its
        URL. Its outputs are learned as another node's (`learn_outputs`), not as this node's own."""
        with transaction(self.db):
            self.db.execute("INSERT OR REPLACE INTO remote_runs VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (bom, order_cid, output, name, node, url, time.time()))

    def recent(self, limit: int | None = 20) -> list[dict[str, Any]]:
        """Runs, newest first, those run here and those asked of other nodes (with the `node` that ran
        them and its `url`; None for a run here); all of them with limit=None."""
        rows = self.db.execute("SELECT order_cid, bom, output, name, created, NULL, NULL FROM runs UNION ALL "
                               "SELECT order_cid, bom, output, name, created, node, url FROM remote_runs "
                               "ORDER BY created DESC LIMIT ?", (-1 if limit is None else limit,))
        keys = ("order", "bom", "output", "name", "created", "node", "url")
        return [dict(zip(keys, row, strict=True)) for row in rows]
