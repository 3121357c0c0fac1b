"""Every SQLite file CATs keeps is opened through one function that survives processes opening a new file
at once (the first to switch it to WAL holds a lock SQLite's busy timeout does not cover)."""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path

from cats._sqlite import connect
from cats.bom.index import Index
from cats.data.cache import Cache


def _open_index(path: str, start) -> None:  # a multiprocessing Event
    start.wait()
    try:
        Index(path).close()
    except Exception:  # the exit code carries the failure to the parent
        sys.exit(1)


def _open_cache(root: str, start) -> None:
    start.wait()
    try:
        cache = Cache(Path(root))
        cache._count(hits=1)
        cache.close()
    except Exception:
        sys.exit(1)


def _race(target, paths: list[str]) -> int:
    """Open each fresh path from 8 processes released together; how many rounds had a failure."""
    ctx = multiprocessing.get_context("fork")
    failed = 0
    for path in paths:
        start = ctx.Event()
        procs = [ctx.Process(target=target, args=(path, start)) for _ in range(8)]
        for p in procs:
            p.start()
        start.set()
        for p in procs:
            p.join()
        failed += any(p.exitcode for p in procs)
    return failed


def test_processes_opening_a_new_index_at_once_all_succeed(tmp_path: Path) -> None:
    assert _race(_open_index, [str(tmp_path / f"index-{i}.sqlite") for i in range(15)]) == 0


def test_processes_counting_in_a_new_cache_at_once_all_succeed(tmp_path: Path) -> None:
    roots = [tmp_path / f"cache-{i}" for i in range(15)]
    assert _race(_open_cache, [str(r) for r in roots]) == 0
    assert Cache(roots[0]).stats()["hits"] == 8


def test_connect_runs_the_schema_and_pragmas(tmp_path: Path) -> None:
    db = connect(tmp_path / "x.sqlite", "CREATE TABLE a (x); CREATE TABLE b (y)", pragmas=("synchronous=FULL",))
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert {r[0] for r in db.execute("SELECT name FROM sqlite_master")} == {"a", "b"}
