"""Benchmark the cheap validators against recomputation, on the same arrays in the same run.

Freivalds' check of C == A @ B (n x n float64, 20 rounds) against recomputing A @ B, best of
`--repeat` each: first on arrays in memory (target: recompute / Freivalds >= 20), then with both
sides reading their inputs from a block store (recompute reads A and B; Freivalds reads A, B and C,
verifying every block's hash). The recompute side is timed without comparing its result with C, so
the ratio is a lower bound. Then the elementwise check's bytes fetched against the whole arrays.

    python bench/bench_checks.py [--n 2000] [--rounds 20] [--json bench/results/checks.json]
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from common import machine, save

from cats.cas.cid import CID
from cats.cas.importer import CHUNK_SIZE, Importer
from cats.cas.store import BlockStore
from cats.cas.store.local import LocalStore
from cats.cas.store.memory import MemoryStore
from cats.order import checking
from cats.order.checking import CountingStore, NpyFile
from cats.order.checks import CheckReport

TARGETS = {"freivalds_ratio": 20.0}


def best(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def put(store: BlockStore, arr: np.ndarray) -> CID:
    buf = io.BytesIO()
    np.save(buf, arr)
    return Importer(store).add_bytes(buf.getvalue()).cid


def in_memory(A: np.ndarray, B: np.ndarray, C: np.ndarray, rounds: int, repeat: int) -> dict[str, float]:
    def check() -> None:
        bad, _ = checking.freivalds_arrays(A, B, C, rounds, seed=1)
        assert bad == 0, "Freivalds rejected a correct product"

    recompute = best(lambda: A @ B, repeat)
    freivalds = best(check, repeat)
    return {"recompute_s": recompute, "freivalds_s": freivalds, "ratio": recompute / freivalds}


def from_store(store: BlockStore, A: np.ndarray, B: np.ndarray, C: np.ndarray, rounds: int,
               repeat: int) -> dict[str, float]:
    a, b, c = put(store, A), put(store, B), put(store, C)
    fetched: list[int] = []

    def recompute() -> None:
        counting = CountingStore(store)
        NpyFile.open(counting, a).array() @ NpyFile.open(counting, b).array()
        fetched.append(counting.fetched)

    def check() -> None:
        report = checking.freivalds(store, a, b, c, rounds=rounds, seed=1)
        assert report.passed, report.detail
        fetched.append(report.bytes_fetched)

    recompute_s = best(recompute, repeat)
    recompute_bytes = fetched[-1]
    freivalds_s = best(check, repeat)
    return {"recompute_s": recompute_s, "freivalds_s": freivalds_s, "ratio": recompute_s / freivalds_s,
            "recompute_bytes": recompute_bytes, "freivalds_bytes": fetched[-1]}


def elementwise(store: BlockStore, A: np.ndarray, B: np.ndarray, samples: int, repeat: int) -> dict[str, float]:
    a, b, c = put(store, A), put(store, B), put(store, A + B)
    reports: list[CheckReport] = []

    def check() -> None:
        reports.append(checking.elementwise(store, "add", a, b, c, samples=samples, seed=2))
        assert reports[-1].passed, reports[-1].detail

    secs = best(check, repeat)
    r = reports[-1]
    leaves = -(-r.total_bytes // 3 // CHUNK_SIZE)
    return {"samples": samples, "seconds": secs, "bytes_fetched": r.bytes_fetched, "total_bytes": r.total_bytes,
            "fraction": r.bytes_fetched / r.total_bytes, "leaves_per_array": leaves,
            "false_accept_one_wrong": r.false_accept_probability}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "checks.json")
    parser.add_argument("--dir", type=Path, default=None, help="Where to put the local store (default: a temp dir).")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((args.n, args.n)), rng.standard_normal((args.n, args.n))
    C = A @ B
    work = Path(tempfile.mkdtemp(prefix="cats-bench-checks-", dir=args.dir))
    try:
        runs = {"in memory": in_memory(A, B, C, args.rounds, args.repeat)}
        stores: dict[str, BlockStore] = {"memory store": MemoryStore(), "local store": LocalStore(work / "blocks")}
        for name, store in stores.items():
            runs[name] = from_store(store, A, B, C, args.rounds, args.repeat)
        sampled = elementwise(stores["local store"], A, B, args.samples, args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    result = {
        "n": args.n, "rounds": args.rounds, "repeat": args.repeat,
        "machine": machine(numpy=np.__version__, blas=f"{blas.get('name', '?')} {blas.get('version', '')}".strip()),
        "freivalds": runs,
        "elementwise": sampled,
        "targets": TARGETS,
        "met": {"freivalds_ratio": runs["in memory"]["ratio"] >= TARGETS["freivalds_ratio"]},
        "reported": {f"freivalds_ratio ({name})": runs[name]["ratio"] >= TARGETS["freivalds_ratio"]
                     for name in stores},
    }
    report(result)
    save(result, args.json)


def report(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    n = result["n"]
    table = Table(title=f"Freivalds ({result['rounds']} rounds) vs recomputing A @ B, {n} x {n} float64, "
                        f"best of {result['repeat']}")
    for col in ("data", "recompute s", "freivalds s", "ratio", "recompute MB read", "freivalds MB read"):
        table.add_column(col, justify="left" if col == "data" else "right")
    for name, r in result["freivalds"].items():
        table.add_row(name, f"{r['recompute_s']:.4f}", f"{r['freivalds_s']:.4f}", f"{r['ratio']:.1f}",
                      f"{r['recompute_bytes'] / 1e6:.1f}" if "recompute_bytes" in r else "",
                      f"{r['freivalds_bytes'] / 1e6:.1f}" if "freivalds_bytes" in r else "")
    console.print(table)
    e = result["elementwise"]
    table = Table(title=f"elementwise add, {e['samples']} samples, c = a + b ({n} x {n} float64, local store)")
    for col in ("bytes fetched", "bytes of a, b, c", "fraction", "leaves per array", "seconds",
                "false accept (1 wrong)"):
        table.add_column(col, justify="right")
    table.add_row(f"{e['bytes_fetched']:,}", f"{e['total_bytes']:,}", f"{e['fraction']:.1%}",
                  str(e["leaves_per_array"]), f"{e['seconds']:.4f}", f"{e['false_accept_one_wrong']:.6f}")
    console.print(table)
    for key, ok in result["met"].items():
        print(f"{'met   ' if ok else 'MISSED'} {key} in memory (target >= {result['targets'][key]})")
    for key, ok in result["reported"].items():
        print(f"{'met   ' if ok else 'MISSED'} {key} (same target, reported)")


if __name__ == "__main__":
    main()
