"""Benchmark the worker-local data cache against the loopback HTTP range fetch it saves, in the same run.

The same 1 MiB range is read N times straight from a loopback HTTP server (tests/servers.py, real
sockets, real Range handling) and N times from a warm cache. Loopback is the cheapest remote a
cache can ever stand in for, so the ratio here is a floor. Target: a pinned hit (no
request at all, digest-verified) >= 20x faster than the uncached fetch. An unpinned hit, which asks
the source for its version first, is reported for scale but has no target.

    python bench/bench_cache.py [--reads 50] [--range-mib 1] [--json bench/results/cache.json]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import machine, save

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import serving  # the tests' loopback server, reused
from xxhash import xxh3_128_digest

from cats import data

TARGETS = {"pinned_hit_speedup": 20.0}


def timed(fn: Callable[[], bytes], n: int, expect: bytes) -> list[float]:
    """Seconds of each of n calls; every result is checked, so a fast wrong answer cannot win."""
    out = []
    for _ in range(n):
        start = time.perf_counter()
        got = fn()
        out.append(time.perf_counter() - start)
        if got != expect:
            raise SystemExit("a read returned the wrong bytes")
    return out


def row(samples: list[float], size: int) -> dict[str, float]:
    med = statistics.median(samples)
    return {"median_ms": med * 1e3, "mean_ms": statistics.fmean(samples) * 1e3,
            "min_ms": min(samples) * 1e3, "mb_per_s": size / med / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=50)
    parser.add_argument("--range-mib", type=float, default=1.0)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "cache.json")
    parser.add_argument("--dir", type=Path, default=None, help="Where to put the cache (default: a temp dir).")
    args = parser.parse_args()

    size = int(args.range_mib * (1 << 20))
    blob = os.urandom(4 * size)
    offset = size // 2  # an unaligned range inside a larger object, as a Parquet column chunk would be
    work = Path(tempfile.mkdtemp(prefix="cats-bench-", dir=args.dir))
    try:
        with serving() as state:
            uri = state.put("/table.bin", blob)
            want = blob[offset:offset + size]
            info = data.pin(uri)
            cache = data.Cache(work / "cache", max_bytes=8 * size + (1 << 20))
            timed(lambda: data.read(uri, offset, size, expect=info), 3, want)  # warm the connection pool
            rows: dict[str, dict[str, float]] = {}
            uncached = timed(lambda: data.read(uri, offset, size, expect=info), args.reads, want)
            rows["uncached http fetch"] = row(uncached, size)
            misses = []
            for i in range(min(args.reads, 8)):  # cold: fetch + verify-hash + atomic write, each a new key
                start = time.perf_counter()
                cache.read(uri, offset + i, size - 8, expect=info)
                misses.append(time.perf_counter() - start)
            rows["cache miss (fetch + store)"] = row(misses, size)
            cache.read(uri, offset, size, expect=info)
            rows["cache hit, pinned"] = row(timed(lambda: cache.read(uri, offset, size, expect=info), args.reads, want),
                                            size)
            rows["cache hit, unpinned (revalidates)"] = row(timed(lambda: cache.read(uri, offset, size), args.reads,
                                                                  want), size)
            hashed = []
            for _ in range(args.reads):  # the verify step alone: the floor of any checked hit
                start = time.perf_counter()
                xxh3_128_digest(want)  # what Cache checks each hit with
                hashed.append(time.perf_counter() - start)
            rows["floor: XXH3-128 of the range alone"] = row(hashed, size)
            base = rows["uncached http fetch"]["median_ms"]
            for r in rows.values():
                r["speedup"] = base / r["median_ms"]
            stats = cache.stats()
            result = {
                "range_bytes": size,
                "reads": args.reads,
                "machine": machine(),
                "runs": rows,
                "cache_stats": stats,
                "targets": TARGETS,
                "met": {"pinned_hit_speedup": rows["cache hit, pinned"]["speedup"] >= TARGETS["pinned_hit_speedup"]},
            }
            report(result)
            save(result, args.json)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['range_bytes'] / (1 << 20):g} MiB range, {result['reads']} reads "
                        "(baseline: uncached loopback HTTP in this run)")
    for col in ("run", "median ms", "mean ms", "min ms", "MB/s", "speedup"):
        table.add_column(col, justify="right" if col != "run" else "left")
    for name, r in result["runs"].items():
        table.add_row(name, f"{r['median_ms']:.3f}", f"{r['mean_ms']:.3f}", f"{r['min_ms']:.3f}",
                      f"{r['mb_per_s']:.0f}", f"{r['speedup']:.1f}x")
    Console().print(table)
    s = result["cache_stats"]
    print(f"cache: hits={s['hits']} misses={s['misses']} bytes_in={s['bytes_in']} bytes_out={s['bytes_out']} "
          f"mean_fetch_ms={float(s['mean_fetch_s']) * 1e3:.3f}")
    for key, ok in result["met"].items():
        print(f"{'met   ' if ok else 'MISSED'} {key} (target >= {result['targets'][key]}x)")


if __name__ == "__main__":
    main()
