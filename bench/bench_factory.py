"""Benchmark the Factory against a plain Ray script doing the same work over the same files.

Both run in this process on the same Ray. Targets:
  1,000 slices of 10 ms work     -> whole-run time ratio cats / plain Ray <= 1.10
  10,000 trivial slices          -> cats slices/s >= 0.5 x plain Ray tasks/s
  memoized re-run of an Order    -> < 0.5 s end to end (in-process call, and the `cats run` command: the
                                    median of 5 whole processes, bytecode cached as an installed package has it)

    python bench/bench_factory.py [--json bench/results/factory.json] [--small N] [--trivial N]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import machine, save, slice_files, spin_workspace

TARGETS = {"work_ratio_max": 1.10, "trivial_rate_ratio_min": 0.5, "memo_s_max": 0.5}
MEMO_CLI_RUNS = 5  # the command's figure is their median, after a first run that compiles the bytecode


ORDER = '''
from cats.order import Function, Order
from bench_job import spin
order = Order(function=Function.of(spin, ms={ms}), inputs=["{cid}"])
'''


def plain_ray(ray, paths: list[str], ms: float) -> float:
    """The baseline: one Ray task per file, reading it from disk, returning the result."""
    import bench_job

    @ray.remote(num_cpus=1)
    def task(path: str) -> bytes:
        with open(path, "rb") as f:
            return bench_job.spin(f.read(), ms)

    start = time.perf_counter()
    ray.get([task.remote(p) for p in paths])
    return time.perf_counter() - start


def cats_run(folder_cid: str, ms: float, force: bool = True) -> tuple[float, object]:
    import bench_job

    from cats.factory import run
    from cats.order import Function, Order

    order = Order(function=Function.of(bench_job.spin, ms=ms), inputs=[folder_cid])
    start = time.perf_counter()
    result = run(order, force=force, quiet=True)
    return time.perf_counter() - start, result


def add_folder(folder: Path) -> str:
    from cats.cas.importer import Importer
    from cats.cas.store import open_store

    with Importer(open_store(), cid_version=1) as imp:
        *_, root = imp.add_path(folder)
    return str(root.cid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "factory.json")
    parser.add_argument("--small", type=int, default=1000, help="slices of 10 ms work")
    parser.add_argument("--trivial", type=int, default=10000, help="trivial slices")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each contender; the best counts")
    args = parser.parse_args()

    work = spin_workspace("cats-bench-factory-")
    # the job's module, then whichever `cats` this script imports (a checkout's, when PYTHONPATH names it)
    path = os.pathsep.join([str(work), *filter(None, [os.environ.get("PYTHONPATH")])])
    try:
        import ray

        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 runtime_env={"env_vars": {"PYTHONPATH": path}})
        rows: dict[str, dict[str, float]] = {}
        for label, n, ms in (("work", args.small, 10.0), ("trivial", args.trivial, 0.0)):
            folder = work / label
            slice_files(folder, n)
            cid = add_folder(folder)
            paths = sorted(str(p) for p in folder.iterdir())
            plain_ray(ray, paths[:50], ms)  # warm the workers
            cats_run(cid, ms)
            plain = min(plain_ray(ray, paths, ms) for _ in range(args.repeat))
            ours = min(cats_run(cid, ms)[0] for _ in range(args.repeat))
            # the driver's peak so far (this process runs both contenders; the larger case comes last)
            rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            rows[label] = {"slices": n, "ms_per_slice": ms, "plain_ray_s": plain, "cats_s": ours, "peak_rss_mb": rss_mb,
                           "time_ratio": ours / plain, "plain_ray_per_s": n / plain, "cats_per_s": n / ours,
                           "rate_ratio": plain / ours}
        # memoized re-run: the Order of the "work" case, already run above
        cid = add_folder(work / "work")
        memo_s, memo = cats_run(cid, 10.0, force=False)
        assert getattr(memo, "reused", False), "the re-run was not memoized"
        order_file = work / "memo_order.py"
        order_file.write_text(ORDER.format(ms=10.0, cid=cid))
        # as an installed package runs: bytecode cached (here under the scratch folder), written by the first run
        env = {**os.environ, "PYTHONPATH": path, "PYTHONPYCACHEPREFIX": str(work / "pycache")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        cli_runs = []
        for _ in range(1 + MEMO_CLI_RUNS):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "cats", "run", str(order_file), "--json"], check=True,
                           capture_output=True, env=env)
            cli_runs.append(time.perf_counter() - start)
        memo_cli_s = statistics.median(cli_runs[1:])
        rows["memo"] = {"in_process_s": memo_s, "cli_s": memo_cli_s, "cli_first_s": cli_runs[0],
                        "cli_runs_s": cli_runs[1:]}
        result = {
            "machine": machine(ray=ray.__version__),
            "runs": rows, "targets": TARGETS,
            "met": {
                "work_ratio_max": rows["work"]["time_ratio"] <= TARGETS["work_ratio_max"],
                "trivial_rate_ratio_min": rows["trivial"]["rate_ratio"] >= TARGETS["trivial_rate_ratio_min"],
                "memo_s_max (in-process)": memo_s < TARGETS["memo_s_max"],
                "memo_s_max (cats run)": memo_cli_s < TARGETS["memo_s_max"],
            },
        }
        ray.shutdown()
        report(result)
        save(result, args.json)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Factory vs plain Ray, same files, same Ray, this run")
    for col in ("case", "slices", "plain Ray s", "cats s", "cats/plain time", "plain tasks/s", "cats slices/s",
                "driver peak MB"):
        table.add_column(col, justify="left" if col == "case" else "right")
    for name in ("work", "trivial"):
        r = result["runs"][name]
        table.add_row(f"{name} ({r['ms_per_slice']:g} ms)", str(r["slices"]), f"{r['plain_ray_s']:.2f}",
                      f"{r['cats_s']:.2f}", f"{r['time_ratio']:.2f}", f"{r['plain_ray_per_s']:.0f}",
                      f"{r['cats_per_s']:.0f}", f"{r['peak_rss_mb']:.0f}")
    memo = result["runs"]["memo"]
    table.add_row("memoized re-run", "", "", f"{memo['in_process_s']:.3f} / cli {memo['cli_s']:.3f}", "", "", "", "")
    table.add_row("  first cli run (compiling all bytecode)", "", "", f"{memo['cli_first_s']:.3f}", "", "", "", "")
    Console(width=120).print(table)
    for key, ok in result["met"].items():
        print(f"{'met   ' if ok else 'MISSED'} {key}")


if __name__ == "__main__":
    main()
