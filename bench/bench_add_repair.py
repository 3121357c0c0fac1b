"""Benchmark what the repairing, lease-holding store costs `cats add`: this checkout against a baseline
ref (default main) of the same repository, on the same file, runs interleaved.

Two adds each: a fresh one (every block written) and a re-add of the same file (every block already
stored: put compares the size, then refreshes the block's time, where the baseline
only looked for the file). hashlib.sha256 over the file gives the scale. Target: at most 5% slower.

    python bench/bench_add_repair.py [--size-mib 1024] [--baseline main] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_add import warm_file
from common import machine, save

TARGET = 1.05  # this checkout's time over the baseline's, at most
REPO = Path(__file__).resolve().parent.parent


def checkout(ref: str, into: Path) -> Path:
    """The baseline's source tree, from git, in a folder of its own."""
    into.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "cats"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def add(source: Path, home: Path, data: Path) -> float:
    env = {**os.environ, "CATS_HOME": str(home), "PYTHONPATH": str(source)}
    env.pop("CATS_STORE", None)
    env.pop("CATS_IPFS_API", None)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cats", "add", "-q", "--no-pin", str(data)], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--baseline", default="main", help="The git ref to compare with.")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "add_repair.json")
    parser.add_argument("--dir", type=Path, default=None, help="Where to put the test file (default: a temp dir).")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cats-bench-", dir=args.dir))
    try:
        size = args.size_mib << 20
        data, base_s = warm_file(work, args.size_mib)
        contenders = {"this checkout": REPO, f"baseline ({args.baseline})": checkout(args.baseline, work / "base")}
        times: dict[str, dict[str, list[float]]] = {n: {"fresh": [], "re-add": []} for n in contenders}
        for _ in range(args.repeat):
            for name, source in contenders.items():  # interleaved: drifts in the machine's load hit both
                home = work / "home"
                shutil.rmtree(home, ignore_errors=True)
                times[name]["fresh"].append(add(source, home, data))
                times[name]["re-add"].append(add(source, home, data))
        rows = {name: {kind: {"seconds": statistics.median(t), "mb_per_s": size / statistics.median(t) / 1e6,
                              "all_s": t} for kind, t in kinds.items()} for name, kinds in times.items()}
        ours, base = rows["this checkout"], rows[f"baseline ({args.baseline})"]
        ratios = {kind: ours[kind]["seconds"] / base[kind]["seconds"] for kind in ("fresh", "re-add")}
        result = {"file_mib": args.size_mib, "machine": machine(), "repeat": args.repeat,
                  "sha256": {"seconds": base_s, "mb_per_s": size / base_s / 1e6}, "runs": rows,
                  "ratio_to_baseline": ratios, "target": TARGET,
                  "met": {kind: r <= TARGET for kind, r in ratios.items()}}
        report(result)
        save(result, args.json)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"cats add of a {result['file_mib']} MiB file, median of {result['repeat']}")
    for col in ("run", "fresh s", "fresh MB/s", "re-add s", "re-add MB/s"):
        table.add_column(col, justify="left" if col == "run" else "right")
    sha = result["sha256"]
    table.add_row("hashlib.sha256", f"{sha['seconds']:.2f}", f"{sha['mb_per_s']:.0f}", "", "")
    for name, r in result["runs"].items():
        table.add_row(name, f"{r['fresh']['seconds']:.2f}", f"{r['fresh']['mb_per_s']:.0f}",
                      f"{r['re-add']['seconds']:.2f}", f"{r['re-add']['mb_per_s']:.0f}")
    Console().print(table)
    for kind, ratio in result["ratio_to_baseline"].items():
        print(f"{'met   ' if result['met'][kind] else 'MISSED'} {kind}: {ratio:.3f}x the baseline (target <= {TARGET})")


if __name__ == "__main__":
    main()
