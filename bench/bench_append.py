"""Benchmark an incremental run over a growing log: a text file split by `lines`, run, then run
again after 1% more lines are appended to it, on a warm Ray.

Target (the README's spec): appending 1% to a 1 GiB log split by `lines` re-executes <= 2% of its
slices. Counted strictly: every slice the second run executes, the new ones included, over all its
slices. Slices are `chunk_bytes` (1 MiB) of lines; the function counts them.

    python bench/bench_append.py [--json bench/results/append.json] [--mib 1024] [--append 0.01]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from common import machine, save, spin_workspace

TARGETS = {"executed_share_max": 0.02}
BLOCK = 1 << 20  # the log is written about this many bytes of lines at a time
LINE = b"2026-12-05T20:00:00.000Z INFO request served path=/api/v1/items/%07d status=200 ms=12 block=00000000\n"


def write_log(path: Path, first: int, count: int) -> None:
    """Append `count` blocks of whole lines (just under 1 MiB each), numbered from `first`; each line
    names its block, so no two blocks are alike (a store keeps one copy of repeated bytes, and no log
    repeats itself), and they do not line up with the store's 256 KiB leaves, as a real log's do not."""
    template = b"".join(LINE % i for i in range(BLOCK // len(LINE % 0)))
    with open(path, "ab") as f:
        for k in range(first, first + count):
            f.write(template.replace(b"block=00000000", b"block=%08d" % k))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "append.json")
    parser.add_argument("--mib", type=int, default=1024, help="the log's size before the append (default 1 GiB)")
    parser.add_argument("--append", type=float, default=0.01, help="what is appended, as a share of the log")
    args = parser.parse_args()
    work = spin_workspace("cats-bench-append-")
    try:
        import ray

        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        import bench_job

        from cats.factory import run
        from cats.order import Function, InfraFunction, Order

        def timed(inputs: list[object]) -> tuple[float, object]:
            order = Order(function=Function.of(bench_job.count_lines), inputs=inputs,
                          infra=InfraFunction(split="lines", merge="concat"))
            start = time.perf_counter()
            result = run(order, quiet=True)
            return time.perf_counter() - start, result

        warm = work / "warm.log"
        write_log(warm, 10**7, 2)  # blocks the log never has
        timed([warm])
        log = work / "app.log"
        start = time.perf_counter()
        write_log(log, 0, args.mib)
        write_s = time.perf_counter() - start
        size = log.stat().st_size
        first_s, first = timed([log])
        added = max(1, round(args.mib * args.append))
        write_log(log, args.mib, added)
        grown = log.stat().st_size - size
        second_s, second = timed([log])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    new = second.slices - first.slices
    share = second.executed / second.slices
    rows = [(f"first run, {size / 2**20:.0f} MiB", first_s, first.slices, first.executed, first.reused_slices),
            (f"{grown / 2**20:.1f} MiB appended", second_s, second.slices, second.executed, second.reused_slices)]
    print(f"log of {size:,} bytes written in {write_s:.1f} s; {grown:,} bytes appended ({grown / size:.2%})")
    print(f"{'run':<24} {'s':>8} {'slices':>7} {'executed':>9} {'reused':>7}")
    for name, s, slices, executed, reused in rows:
        print(f"{name:<24} {s:8.2f} {slices:7d} {executed:9d} {reused:7d}")
    print(f"executed {second.executed} of {second.slices} slices ({share:.2%}): {new} new, "
          f"{second.executed - new} of the first run's again")
    met = {"executed_share_max": share <= TARGETS["executed_share_max"]}
    for name, ok in met.items():
        print(f"{'met' if ok else 'MISSED':<6} {name}")
    save({"machine": machine(), "targets": TARGETS, "met": met, "log_bytes": size, "appended_bytes": grown,
          "first_s": first_s, "first_slices": first.slices, "append_s": second_s, "append_slices": second.slices,
          "append_executed": second.executed, "append_new": new, "append_reused": second.reused_slices,
          "executed_share": share}, args.json)


if __name__ == "__main__":
    main()
