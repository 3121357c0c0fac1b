"""Benchmark incremental runs: a folder of 10,000 one-file slices, then the same folder with one file
more, on a warm Ray; and what keying and looking up slices costs a 1,000-slice run that finds nothing.

Targets:
  the second run executes 1 slice and takes <= 3 s end to end (against the first run's time)
  keys + lookups for 1,000 slices with no hits <= 2% of the run of 1,000 slices x 10 ms

    python bench/bench_evaluation.py [--json bench/results/evaluation.json] [--files N]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from common import machine, save, slice_files, spin_workspace

TARGETS = {"append_s_max": 3.0, "lookup_share_max": 0.02}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "evaluation.json")
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()
    work = spin_workspace("cats-bench-evaluation-")
    try:
        import ray

        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        import bench_job

        from cats.bom.home import Home
        from cats.factory import evaluation, run
        from cats.factory.ingress import split
        from cats.order import Function, Order
        from cats.order.seal import seal

        def folder(name: str, n: int) -> Path:
            return slice_files(work / name, n)

        def timed(order: Order, **kw: object) -> tuple[float, object]:
            start = time.perf_counter()
            result = run(order, quiet=True, **kw)
            return time.perf_counter() - start, result

        warm = folder("warm", 50)
        timed(Order(function=Function.of(bench_job.spin, ms=0.0), inputs=[warm]), force=True)
        first_s, first = timed(Order(function=Function.of(bench_job.spin, ms=0.0), inputs=[folder("v1", args.files)]))
        more = folder("v2", args.files + 1)
        second_s, second = timed(Order(function=Function.of(bench_job.spin, ms=0.0), inputs=[more]))

        # 1,000 slices of 10 ms, no hits (force), and what keying and looking them up costs on its own
        small = folder("small", 1000)
        order = Order(function=Function.of(bench_job.spin, ms=10.0), inputs=[small])
        work_s, _ = timed(order, force=True)
        home = Home.open()
        sealed = seal(order, home.store)
        pieces = split(sealed, home.store)
        start = time.perf_counter()
        keys = [str(evaluation.key(sealed, p)) for p, _ in pieces]
        home.index.evaluations([k + "x" for k in keys])  # keys nobody computed: every lookup misses
        lookup_s = time.perf_counter() - start
        home.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = [(f"first run, {args.files} one-file slices", first_s, first.executed, first.reused_slices),
            ("one file more", second_s, second.executed, second.reused_slices),
            ("1,000 x 10 ms, no hits", work_s, 1000, 0)]
    print(f"{'run':<32} {'s':>8} {'executed':>9} {'reused':>7}")
    for name, s, executed, reused in rows:
        print(f"{name:<32} {s:8.2f} {executed:9d} {reused:7d}")
    share = lookup_s / work_s
    print(f"keys + lookups for 1,000 slices: {lookup_s * 1000:.1f} ms = {share:.2%} of the run")
    met = {"append_s_max": second_s <= TARGETS["append_s_max"] and second.executed == 1,
           "lookup_share_max": share <= TARGETS["lookup_share_max"]}
    for name, ok in met.items():
        print(f"{'met' if ok else 'MISSED':<6} {name}")
    save({"machine": machine(), "targets": TARGETS, "met": met, "files": args.files,
          "first_s": first_s, "append_s": second_s, "append_executed": second.executed,
          "append_reused": second.reused_slices, "work_s": work_s, "lookup_s": lookup_s, "lookup_share": share},
         args.json)


if __name__ == "__main__":
    main()
