"""Benchmark a pipeline with nothing changed: `cats run --json` of a 3-stage pipeline over 100 files,
the whole command, after a first run; against `dvc repro` of the same three stages over the same
files, also with nothing changed, when DVC is at hand (`--dvc PATH`, or `dvc` on PATH).

Target: the no-op `cats run` < 0.5 s (DVC 3.67 `repro` no-op on 100 files here: 0.64 s).

    python bench/bench_pipeline.py [--json bench/results/pipeline.json] [--files 100] [--dvc PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, save, slice_files

TARGETS = {"noop_s_max": 0.5}
REPEATS = 7

PIPELINE = """
from pathlib import Path

import cats

here = Path(__file__).parent


def upper(data):
    return data.upper()


def size(data):
    return str(len(data)).encode()


def number(data):
    return int(data)


def fn(entry):
    return cats.Function(entry=f"pipeline:{entry}", source=Path(__file__))


clean = cats.Order(name="clean", function=fn("upper"), inputs=[here / "data"])
sizes = cats.Order(name="sizes", function=fn("size"), inputs=[clean])
order = cats.Order(name="report", function=fn("number"), inputs=[sizes], infra=cats.InfraFunction(merge="list"))
"""

# The same three stages as DVC commands: each reads the previous stage's folder and writes its own.
STAGE = """
import sys
from pathlib import Path

src, dst, how = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
dst.mkdir(exist_ok=True)
for f in sorted(src.iterdir()):
    data = f.read_bytes()
    (dst / f.name).write_bytes(data.upper() if how == "upper" else str(len(data)).encode())
"""
DVC_YAML = """stages:
  clean: {cmd: python stage.py data clean upper, deps: [stage.py, data], outs: [clean]}
  sizes: {cmd: python stage.py clean sizes size, deps: [stage.py, clean], outs: [sizes]}
  report: {cmd: python stage.py sizes report size, deps: [stage.py, sizes], outs: [report]}
"""


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "pipeline.json")
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--dvc", default=shutil.which("dvc"), help="the dvc program to compare with")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cats-bench-pipeline-"))
    env = {**os.environ, "CATS_HOME": str(work / "home")}
    try:
        project = work / "cats"
        slice_files(project / "data", args.files)
        (project / "pipeline.py").write_text(PIPELINE)
        cats = [sys.executable, "-m", "cats", "run", "--json", "pipeline.py"]
        first_s = timed(cats, project, env)
        noop = [timed(cats, project, env) for _ in range(REPEATS)]
        last = json.loads(subprocess.run(cats, cwd=project, env=env, check=True, capture_output=True).stdout)
        assert [s["executed"] for s in last["stages"]] == [0, 0, 0], last

        dvc_noop: list[float] = []
        if args.dvc:
            repo = work / "dvc"
            slice_files(repo / "data", args.files)
            (repo / "stage.py").write_text(STAGE)
            (repo / "dvc.yaml").write_text(DVC_YAML)
            subprocess.run([args.dvc, "init", "--no-scm", "-q"], cwd=repo, check=True)
            timed([args.dvc, "repro", "-q"], repo, env)
            dvc_noop = [timed([args.dvc, "repro", "-q"], repo, env) for _ in range(REPEATS)]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    cats_s = statistics.median(noop)
    dvc_s = statistics.median(dvc_noop) if dvc_noop else None
    print(f"{'command (3 stages, ' + str(args.files) + ' files)':<40} {'median s':>9}")
    print(f"{'cats run, first run':<40} {first_s:9.2f}")
    print(f"{'cats run, nothing changed':<40} {cats_s:9.3f}")
    if dvc_s is not None:
        print(f"{'dvc repro, nothing changed':<40} {dvc_s:9.3f}   cats/dvc = {cats_s / dvc_s:.2f}")
    met = {"noop_s_max": cats_s < TARGETS["noop_s_max"]}
    for name, ok in met.items():
        print(f"{'met' if ok else 'MISSED':<6} {name}")
    save({"machine": machine(), "targets": TARGETS, "met": met, "files": args.files, "first_s": first_s,
          "noop_s": cats_s, "noop_runs_s": noop, "dvc_noop_s": dvc_s, "dvc_runs_s": dvc_noop}, args.json)


if __name__ == "__main__":
    main()
