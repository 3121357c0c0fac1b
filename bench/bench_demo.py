"""Benchmark `cats demo`: the whole command from a fresh home, again (reused), `--mesh`, and each
scenario's Order against plain Python doing the same work over the same files in one process.

Target: `cats demo` finishes in under two minutes here, from a fresh home. The
command runs on the embedded default (its own local Ray: RAY_ADDRESS is removed).

    python bench/bench_demo.py [--json bench/results/demo.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, save

TARGET_S = 120.0


def command(home: Path, *args: str) -> tuple[float, dict]:
    """`cats demo ARGS --json` in a subprocess with this home: (wall seconds, its JSON)."""
    env = {**os.environ, "CATS_HOME": str(home)}
    env.pop("RAY_ADDRESS", None)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cats", "demo", *args, "--json"], env=env, capture_output=True,
                          timeout=600)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"cats demo {' '.join(args)} failed:\n{proc.stderr.decode()[-3000:]}")
    return wall, json.loads(proc.stdout.decode().strip().splitlines()[-1])


def plain(home: Path) -> dict[str, float]:
    """The same functions over the same files, one after another in this process (no Ray, no store)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cats.demo import SCENARIOS, column_stats, data_path, sensor_logs, thumbnails

    os.environ["CATS_HOME"] = str(home)  # where the command built the data
    folders = {key: data_path(scenario) for key, scenario in SCENARIOS.items()}
    took = {}
    start = time.perf_counter()
    for photo in sorted(folders["thumbnails"].iterdir()):
        thumbnails.thumbnail(photo.read_bytes())
    took["thumbnails"] = time.perf_counter() - start
    start = time.perf_counter()
    pa.concat_tables([sensor_logs.near(f.read_bytes()) for f in sorted(folders["sensor-logs"].iterdir())])
    took["sensor-logs"] = time.perf_counter() - start
    start = time.perf_counter()
    parts = []
    for shard in sorted(folders["column-stats"].iterdir()):
        f = pq.ParquetFile(shard)
        parts += [(column_stats.partial(f.read_row_group(i)), {}) for i in range(f.num_row_groups)]
    column_stats.combine(parts)
    took["column-stats"] = time.perf_counter() - start
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="cats-bench-demo-"))
    try:
        cold_s, cold = command(home)
        warm_s, warm = command(home)
        mesh_s, mesh = command(home, "--mesh")
        baseline = plain(home)
    finally:
        shutil.rmtree(home, ignore_errors=True)

    import PIL
    import pyarrow
    import ray

    rows = []
    for r in cold["scenarios"]:
        key = r["scenario"]
        rows.append({"scenario": key, "slices": r["slices"], "cats_run_s": r["run_s"], "plain_python_s":
                     round(baseline[key], 3), "ratio": round(r["run_s"] / baseline[key], 2),
                     "verify_s": r["verify_s"], "scenario_s": r["seconds"]})
    result = {
        "machine": machine(ray=ray.__version__, pyarrow=pyarrow.__version__, pillow=PIL.__version__),
        "target_s": TARGET_S,
        "cold_wall_s": round(cold_s, 2), "cold_inside_s": cold["seconds"], "ray_start_s": cold["ray_start_s"],
        "met": cold_s < TARGET_S,
        "warm_wall_s": round(warm_s, 2), "warm_reused": all(r["reused"] for r in warm["scenarios"]),
        "mesh_wall_s": round(mesh_s, 2), "mesh_verified": mesh["verified"],
        "scenarios": rows, "verified": cold["verified"] and warm["verified"],
    }
    print(f"{'scenario':<14}{'slices':>7}{'CATs run s':>12}{'plain s':>9}{'ratio':>7}{'verify s':>10}")
    for r in rows:
        print(f"{r['scenario']:<14}{r['slices']:>7}{r['cats_run_s']:>12.2f}{r['plain_python_s']:>9.2f}"
              f"{r['ratio']:>7.2f}{r['verify_s']:>10.2f}")
    print(f"cats demo from a fresh home: {cold_s:.1f} s wall, Ray start {cold['ray_start_s']:.1f} s "
          f"(target < {TARGET_S:.0f} s: "
          f"{'met' if result['met'] else 'MISSED'}); again, reused: {warm_s:.1f} s; --mesh: {mesh_s:.1f} s")
    save(result, args.json)


if __name__ == "__main__":
    main()
