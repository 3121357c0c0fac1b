"""Benchmark confinement: the same Orders run in the sandbox and unconfined, on the same Ray in the same run.

Targets:
  1,000 slices of 10 ms work  -> whole-run time confined / unconfined <= 1.3
  `cats exec` over 200 files  -> per-file overhead of confinement <= 20 ms (the slice's own time in its
                                 worker, and the run's wall time per file)
and, with no target, what starting one sandbox costs (a run pays it once per worker): bubblewrap alone,
the sandbox's Python, and the sandbox ready to take slices; and one slice's round trip through it.

The work is `spinjob.spin`, a 10 ms busy loop, as in bench_factory: CPU work is what slices do, and
on a 2-core machine a sandbox that costs CPU shows in the wall time (a sleep would let it hide). The
exec command is `wc -c`. Every run is forced (nothing memoized); the contenders alternate, which one
goes first alternating too, and each figure is the median of `--repeat` runs, so load from
elsewhere falls on both. The workers import the job from its sealed code, as any Order's.

    python bench/bench_confine.py [--slices 1000] [--files 200] [--repeat 5] [--json bench/results/confine.json]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import machine, save, slice_files, spin_workspace

TARGETS = {"work_ratio_max": 1.3, "exec_overhead_ms_max": 20.0}
STARTS = 10  # sandboxes started for the start-up figures; their median counts
ROUND_TRIPS = 300  # slices of no work sent through one sandbox


def make_inputs(folder: Path, n: int) -> str:
    from cats.cas.importer import Importer
    from cats.cas.store import open_store

    with Importer(open_store(), cid_version=1) as imp:
        *_, root = imp.add_path(slice_files(folder, n))
    return str(root.cid)


def timed(order: Any) -> dict[str, float]:
    """Run an Order afresh: its wall time and the median of its slices' own times in their workers."""
    from cats.bom import load, records
    from cats.cas.store import open_store
    from cats.factory import run

    start = time.perf_counter()
    done = run(order, force=True, quiet=True)
    wall = time.perf_counter() - start
    store = open_store()
    slices = [r.duration_s for r in records(store, load(store, done.bom))]
    return {"wall_s": wall, "slice_ms": statistics.median(slices) * 1000}


def compare(orders: dict[str, Any], repeat: int) -> dict[str, dict[str, Any]]:
    """Each Order run once to warm up, then `repeat` times, alternating; medians of both figures."""
    for order in orders.values():
        timed(order)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in orders}
    names = list(orders)
    for i in range(repeat):
        for name in names if i % 2 == 0 else names[::-1]:
            runs[name].append(timed(orders[name]))
    return {name: {"wall_s": statistics.median(r["wall_s"] for r in got),
                   "slice_ms": statistics.median(r["slice_ms"] for r in got),
                   "walls_s": [r["wall_s"] for r in got]} for name, got in runs.items()}


def sandbox_costs(store_url: str, code: str, function: dict[str, Any], home: str) -> dict[str, float]:
    """In a worker: starting bubblewrap alone, its Python, a whole sandbox (ready to take slices), and
    one slice's round trip through it (ms, medians)."""
    from cats.cas.cid import CID
    from cats.cas.store import open_store
    from cats.factory import confine
    from cats.factory.code import code_folder

    folder = code_folder(open_store(store_url), CID.parse(code))
    policy = confine.Policy()
    argv = confine.command(folder, policy, False, {}, [home])
    wrapper = argv[:argv.index("--")]

    def median_ms(step: Any) -> float:
        times = []
        for _ in range(STARTS):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000

    figures = {
        "bwrap_ms": median_ms(lambda: subprocess.run([*wrapper, "--", "true"], check=True)),
        "bwrap_python_ms": median_ms(lambda: subprocess.run([*wrapper, "--", sys.executable, "-I", "-c", "pass"],
                                                            check=True)),
        "sandbox_ms": median_ms(lambda: confine.Sandbox(folder, function, policy, False, {}, [home]).close()),
    }
    box = confine.Sandbox(folder, function, policy, False, {}, [home])
    try:
        start = time.perf_counter()
        for i in range(ROUND_TRIPS):
            box.call(i, "bytes", f"f{i}", 0, b"slice", io.BytesIO())
        figures["round_trip_ms"] = (time.perf_counter() - start) / ROUND_TRIPS * 1000
    finally:
        box.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "confine.json")
    parser.add_argument("--slices", type=int, default=1000, help="slices of 10 ms work")
    parser.add_argument("--files", type=int, default=200, help="files for `cats exec`")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each contender; the median counts")
    args = parser.parse_args()

    work = spin_workspace("cats-bench-confine-")
    try:
        import bench_job
        import ray

        from cats.cas.store import open_store
        from cats.factory import confine, shell
        from cats.order import Function, Order
        from cats.order.seal import seal
        from cats.plant import Plant

        confine.require()
        load = os.getloadavg()
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}})
        work_cid = make_inputs(work / "work", args.slices)
        files_cid = make_inputs(work / "files", args.files)

        def spin(confined: bool) -> Order:
            return Order(function=Function.of(bench_job.spin, ms=10.0), inputs=[work_cid],
                         plant=Plant(confined=confined))

        rows: dict[str, Any] = {}
        rows["work"] = compare({"unconfined": spin(False), "confined": spin(True)}, args.repeat)
        rows["exec"] = compare({"unconfined": shell.order("wc -c", [files_cid], confined=False),
                                "confined": shell.order("wc -c", [files_cid], confined=True)}, args.repeat)
        sealed = seal(Order(function=Function.of(bench_job.spin, ms=0.0), inputs=[work_cid]), open_store()).function
        costs = ray.get(ray.remote(sandbox_costs).options(num_cpus=1).remote(
            open_store().url, str(sealed.code), {"module": sealed.module, "qualname": sealed.qualname,
                                                 "params": sealed.params}, os.environ["CATS_HOME"]))
        work_ratio = rows["work"]["confined"]["wall_s"] / rows["work"]["unconfined"]["wall_s"]
        ex = rows["exec"]
        per_file = {name: ex[name]["wall_s"] / args.files * 1000 for name in ex}
        exec_figures = {
            "files": args.files, "command": "wc -c",
            "unconfined_ms_per_file": per_file["unconfined"], "confined_ms_per_file": per_file["confined"],
            "overhead_ms_per_file": per_file["confined"] - per_file["unconfined"],
            "unconfined_slice_ms": ex["unconfined"]["slice_ms"], "confined_slice_ms": ex["confined"]["slice_ms"],
            "slice_overhead_ms": ex["confined"]["slice_ms"] - ex["unconfined"]["slice_ms"]}
        result = {
            "machine": machine(ray=ray.__version__, bwrap=subprocess.run(
                [confine.bwrap() or "bwrap", "--version"], capture_output=True, text=True).stdout.strip()),
            "load_before": list(load), "load_after": list(os.getloadavg()), "repeat": args.repeat,
            "runs": {"work": {"slices": args.slices, "ms_per_slice": 10.0, **rows["work"], "time_ratio": work_ratio},
                     "exec": {**rows["exec"], **exec_figures}, "sandbox": costs},
            "targets": TARGETS,
            "met": {"work_ratio_max": work_ratio <= TARGETS["work_ratio_max"],
                    "exec_overhead_ms_max": max(exec_figures["overhead_ms_per_file"],
                                                exec_figures["slice_overhead_ms"]) <= TARGETS["exec_overhead_ms_max"]},
        }
        ray.shutdown()
        report(result)
        save(result, args.json)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    runs = result["runs"]
    table = Table(title=f"Confined vs unconfined, same Orders, same Ray, this run (median of {result['repeat']})")
    for col in ("case", "unconfined s", "confined s", "confined/unconfined", "unconfined ms/slice",
                "confined ms/slice", "overhead ms/slice"):
        table.add_column(col, justify="left" if col == "case" else "right")
    cases = (("work", f"{runs['work']['slices']} x 10 ms"), ("exec", f"exec `wc -c`, {runs['exec']['files']} files"))
    for name, label in cases:
        r = runs[name]
        un, co = r["unconfined"], r["confined"]
        table.add_row(label, f"{un['wall_s']:.2f}", f"{co['wall_s']:.2f}", f"{co['wall_s'] / un['wall_s']:.2f}",
                      f"{un['slice_ms']:.2f}", f"{co['slice_ms']:.2f}", f"{co['slice_ms'] - un['slice_ms']:.2f}")
    ex = runs["exec"]
    table.add_row("  exec, wall ms per file", f"{ex['unconfined_ms_per_file']:.1f}",
                  f"{ex['confined_ms_per_file']:.1f}", f"+{ex['overhead_ms_per_file']:.1f} ms", "", "", "")
    Console(width=140).print(table)
    box = runs["sandbox"]
    costs = Table(title="One sandbox, in a worker (median ms)")
    for col in ("bubblewrap alone", "+ Python", "sandbox ready", "slice round trip"):
        costs.add_column(col, justify="right")
    costs.add_row(*(f"{box[k]:.1f}" for k in ("bwrap_ms", "bwrap_python_ms", "sandbox_ms")),
                  f"{box['round_trip_ms']:.2f}")
    Console(width=140).print(costs)
    print(f"load average before {result['load_before'][0]:.2f}, after {result['load_after'][0]:.2f}")
    for key, ok in result["met"].items():
        print(f"{'met   ' if ok else 'MISSED'} {key}")


if __name__ == "__main__":
    main()
