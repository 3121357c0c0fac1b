"""Benchmark sampled verification against the run it checks, on the same Ray in the same script.

Targets: verifying a 1% sample of a 1,000-slice job costs <= 3% of the original run, verifying every
slice <= 1.05x the run (Ray start-up excluded: Ray is started before either is timed).

    python bench/bench_verify.py [--slices 1000] [--fraction 0.01] [--json bench/results/verify.json]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from common import machine, save, slice_files, spin_workspace

TARGET = 0.03
FULL_TARGET = 1.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=1000)
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "verify.json")
    args = parser.parse_args()

    work = spin_workspace("cats-bench-verify-", "bench_vjob")
    try:
        import bench_vjob
        import ray

        from cats.cas.importer import Importer
        from cats.cas.store import open_store
        from cats.factory import run
        from cats.order import Function, Order
        from cats.verification.audit import verify

        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        folder = slice_files(work / "inputs", args.slices)
        store = open_store()
        with Importer(store, cid_version=1) as imp:
            *_, root = imp.add_path(folder)
        order = Order(function=Function.of(bench_vjob.spin, ms=10.0), inputs=[root.cid])
        run(Order(function=Function.of(bench_vjob.spin, ms=0.0), inputs=[root.cid]), quiet=True)  # warm workers
        start = time.perf_counter()
        result = run(order, quiet=True, force=True)
        run_s = time.perf_counter() - start
        timings = []
        for seed in range(3):
            start = time.perf_counter()
            report = verify(store, result.bom, fraction=args.fraction, seed=seed)
            timings.append(time.perf_counter() - start)
            assert report.verified, report.problems
        start = time.perf_counter()
        full = verify(store, result.bom)
        full_s = time.perf_counter() - start
        assert full.verified
        verify_s = min(timings)
        out = {
            "machine": machine(ray=ray.__version__),
            "slices": args.slices, "fraction": args.fraction, "checked": report.sample.checked if report.sample else 0,
            "run_s": run_s, "sampled_verify_s": verify_s, "ratio": verify_s / run_s,
            "full_verify_s": full_s, "full_ratio": full_s / run_s, "target": TARGET,
            "met": verify_s / run_s <= TARGET, "full_target": FULL_TARGET, "full_met": full_s / run_s <= FULL_TARGET,
        }
        ray.shutdown()
        print(f"run of {args.slices} slices x 10 ms: {run_s:.2f} s")
        print(f"verify {args.fraction:.0%} sample ({out['checked']} slices): {verify_s:.3f} s "
              f"= {out['ratio']:.1%} of the run (target <= {TARGET:.0%}: {'met' if out['met'] else 'MISSED'})")
        print(f"verify every slice: {full_s:.2f} s = {out['full_ratio']:.2f}x the run "
              f"(target <= {FULL_TARGET}x: {'met' if out['full_met'] else 'MISSED'})")
        save(out, args.json)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
