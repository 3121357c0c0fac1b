"""Benchmark incremental runs: a folder of 10,000 one-file slices, then the same folder with one file
more, on a warm Ray; and what keying and looking up slices costs a 1,000-slice run that finds nothing.

The run with one file more is timed in this process, and as the `cats run ORDER.py --json` command
joining this process's Ray (a whole process: start-up, imports, the run, leaving Ray), twice, each
time with one file more again; the second command's time is the figure (the first writes bytecode).

Targets:
  the second run executes 1 slice and takes <= 3 s end to end as the command (against the first run's time)
  keys + lookups for 1,000 slices with no hits <= 2% of the run of 1,000 slices x 10 ms

    python bench/bench_evaluation.py [--json bench/results/evaluation.json] [--files N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import machine, save, slice_files, spin_workspace

TARGETS = {"append_s_max": 3.0, "lookup_share_max": 0.02}

ORDER = """
from pathlib import Path
from cats.order import Function, Order
from bench_job import spin
order = Order(function=Function.of(spin, ms=0.0), inputs=[Path({folder!r})])
"""


def cats_run(work: Path, folder: Path, address: str) -> tuple[float, dict[str, object]]:
    """`cats run --json` of the Order over `folder`, joining the Ray at `address`: its time and result."""
    order = work / f"order_{folder.name}.py"
    order.write_text(ORDER.format(folder=str(folder)))
    # the job's module, then whichever `cats` this script imports (a checkout's, when PYTHONPATH names it)
    path = os.pathsep.join([str(work), *filter(None, [os.environ.get("PYTHONPATH")])])
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cats", "run", str(order), "--json"], check=True, capture_output=True,
                          env={**os.environ, "PYTHONPATH": path, "RAY_ADDRESS": address})
    return time.perf_counter() - start, json.loads(done.stdout.decode().splitlines()[-1])


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
        address = ray.get_runtime_context().gcs_address
        commands = [cats_run(work, folder(f"v{k}", args.files + k - 1), address) for k in (3, 4)]
        command_s, command = commands[-1]

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
            ("one file more, cats run --json", command_s, command["executed"], command["reused_slices"]),
            ("1,000 x 10 ms, no hits", work_s, 1000, 0)]
    print(f"{'run':<32} {'s':>8} {'executed':>9} {'reused':>7}")
    for name, s, executed, reused in rows:
        print(f"{name:<32} {s:8.2f} {executed:9d} {reused:7d}")
    share = lookup_s / work_s
    print(f"keys + lookups for 1,000 slices: {lookup_s * 1000:.1f} ms = {share:.2%} of the run")
    met = {"append_s_max": command_s <= TARGETS["append_s_max"] and command["executed"] == second.executed == 1,
           "lookup_share_max": share <= TARGETS["lookup_share_max"]}
    for name, ok in met.items():
        print(f"{'met' if ok else 'MISSED':<6} {name}")
    save({"machine": machine(), "targets": TARGETS, "met": met, "files": args.files,
          "first_s": first_s, "append_s": second_s, "append_executed": second.executed,
          "append_reused": second.reused_slices, "append_command_s": command_s,
          "append_command_run_s": command["duration_s"], "append_commands_s": [c[0] for c in commands],
          "work_s": work_s, "lookup_s": lookup_s, "lookup_share": share},
         args.json)


if __name__ == "__main__":
    main()
