"""The same 400-slice Order on a one-node and a two-node Ray cluster, and the bytes moved between
nodes with and without data locality.

    python bench/bench_cluster.py [--slices 400] [--kib 64] [--rounds 40] [--json bench/results/cluster.json]

A real cluster on loopback (the one the tests start: `ray start --head` + `ray start --address`,
each node with its own CATS_HOME store, advertised as `cats-store:<name>`, 1 CPU each). Node a
holds every input (the driver sealed them there), node b a copy of the second half. Drivers run as
subprocesses on node a. Each slice hashes its input `--rounds` times, so the work is CPU-bound.

Figures:
- scaling: the Order's time on node a alone / on a + b (target: near 2, the CPUs doubled);
- overhead: CATs on a + b / plain Ray tasks doing the same work on a + b (files read from disk);
- bytes workers fetched across nodes in the first (cold) run, with locality (target: ~0) and with
  round-robin placement.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from common import machine, save

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the loopback cluster the tests use

JOB = '''
import hashlib


def work(data: bytes, rounds: int = 1) -> str:
    digest = data
    for _ in range(rounds):
        digest = hashlib.sha256(digest + data).digest()
    return digest.hex()
'''

# Run on node a as the driver: time a forced CATs run of the Order, or plain Ray tasks over the files.
DRIVER = '''
import json, sys, time
from pathlib import Path

mode, folder, job, rounds, locality, name = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), \
    sys.argv[5], sys.argv[6]
sys.path.insert(0, str(job.parent))
import ray

if mode == "cats":
    from cats import factory
    from cats.bom import load
    from cats.cas.cid import CID
    from cats.cas.store import open_store
    from cats.order import Function, Order, Plant

    order = Order(function=Function(entry="bench_cluster_job:work", source=job, params={"rounds": rounds}),
                  inputs=[CID.parse(folder.read_text())], plant=Plant(locality=locality == "on"),
                  name=name)  # one Order per scenario, so no scenario's first run is another's memoized BOM
    ray.init(logging_level="ERROR", log_to_driver=False)
    # the first run is cold: what it moves is what placement cost (workers keep what they fetch);
    # the forced second run, with workers started and code imported on every node, is timed
    cold = load(open_store(), factory.run(order, quiet=True).bom).invoice.moved
    start = time.perf_counter()
    factory.run(order, force=True, quiet=True)
    took = time.perf_counter() - start
    print(json.dumps({"seconds": took, "moved": cold.model_dump() if cold else None}))
else:
    exec(job.read_text())  # `work` defined here, in __main__, so Ray ships it to the workers by value
    ray.init(logging_level="ERROR", log_to_driver=False)
    files = sorted(folder.iterdir())

    @ray.remote(num_cpus=1)
    def batch(paths):
        return [work(Path(p).read_bytes(), rounds) for p in paths]

    def once():
        size = max(1, len(files) // (int(ray.cluster_resources()["CPU"]) * 32))
        return ray.get([batch.remote([str(p) for p in files[i:i + size]]) for i in range(0, len(files), size)])

    once()
    start = time.perf_counter()
    once()
    print(json.dumps({"seconds": time.perf_counter() - start}))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=400)
    parser.add_argument("--kib", type=int, default=64, help="size of each slice's input")
    parser.add_argument("--rounds", type=int, default=400, help="hash rounds per slice (its CPU work)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from raycluster import RayCluster

    from cats.cas import reader
    from cats.cas.dag import walk
    from cats.cas.importer import Importer

    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        work = Path(tmp)
        job = work / "bench_cluster_job.py"
        job.write_text(textwrap.dedent(JOB))
        driver = work / "driver.py"
        driver.write_text(DRIVER)
        files = work / "inputs"
        files.mkdir()
        rng = random.Random(400)
        for i in range(args.slices):
            (files / f"part-{i:04d}.bin").write_bytes(rng.randbytes(args.kib << 10))
        cluster = RayCluster(work / "cluster")
        cluster.base.mkdir()

        def drive(mode: str, name: str, locality: str = "on") -> dict:
            target = work / "root" if mode == "cats" else files
            argv = [sys.executable, str(driver), mode, str(target), str(job), str(args.rounds), locality, name]
            proc = subprocess.run(argv, capture_output=True, text=True, env=cluster.env(cluster.nodes[0].home),
                                  cwd=work, timeout=1800)
            if proc.returncode != 0:
                raise SystemExit(f"driver ({mode}) failed:\n{proc.stderr[-3000:]}")
            return json.loads(proc.stdout.strip().splitlines()[-1])

        try:
            a = cluster.add("a")
            with Importer(a.store, cid_version=1) as importer:
                *_, top = importer.add_path(files)
            (work / "root").write_text(str(top.cid))
            print(f"{args.slices} slices of {args.kib} KiB, {args.rounds} hash rounds each; node a (1 CPU)")
            one = drive("cats", "one node")
            one_ray = drive("ray", "one node")
            b = cluster.add("b")
            half = [cid for name, cid, _ in reader.entries(a.store, top.cid)][args.slices // 2:]
            for cid in half:
                for block in walk(a.store, cid):
                    b.store.put(block, a.store.get(block))
            print("node b (1 CPU) joined, holding a copy of the second half")
            two = drive("cats", "two nodes")
            two_ray = drive("ray", "two nodes")
            spread = drive("cats", "two nodes, round robin", "off")
        finally:
            cluster.stop()

    data = args.slices * (args.kib << 10)
    rows = [
        ("CATs, node a alone", one["seconds"], None),
        ("plain Ray, node a alone", one_ray["seconds"], None),
        ("CATs, a + b, locality on", two["seconds"], two["moved"]),
        ("plain Ray, a + b", two_ray["seconds"], None),
        ("CATs, a + b, locality off (round robin)", spread["seconds"], spread["moved"]),
    ]
    print(f"\n{'run':<42} {'seconds':>8} {'moved between nodes':>20} {'to driver':>10}")
    for name, seconds, moved in rows:
        between = f"{moved['between_nodes']:,}" if moved else "-"
        to_driver = f"{moved['to_driver']:,}" if moved else "-"
        print(f"{name:<42} {seconds:>8.2f} {between:>20} {to_driver:>10}")
    scaling = one["seconds"] / two["seconds"]
    overhead = two["seconds"] / two_ray["seconds"]
    print(f"\nscaling a -> a + b: {scaling:.2f}x (CATs), {one_ray['seconds'] / two_ray['seconds']:.2f}x (plain Ray)")
    print(f"CATs / plain Ray on a + b: {overhead:.2f}x")
    print(f"inputs moved between nodes: {two['moved']['between_nodes'] / data:.4%} of {data:,} bytes with locality, "
          f"{spread['moved']['between_nodes'] / data:.2%} without")
    save({"benchmark": "cluster", "machine": machine(), "slices": args.slices, "kib": args.kib, "rounds": args.rounds,
          "input_bytes": data, "runs": {name: {"seconds": s, "moved": m} for name, s, m in rows},
          "scaling": scaling, "scaling_plain_ray": one_ray["seconds"] / two_ray["seconds"],
          "overhead_vs_plain_ray": overhead}, args.json)


if __name__ == "__main__":
    main()
