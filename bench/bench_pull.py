"""Benchmark `cats mesh pull` of a file's DAG from a real CAT Node against `curl` downloading the same
bytes from `python -m http.server`: both whole commands, on loopback, on the same machine, in one run.

A file of --mib random MiB is added to the node's store (`cats add`: 256 KiB raw leaves under
dag-pb nodes) and served as it is by `http.server`. Each round, interleaved: `curl -o FILE URL`;
`cats mesh pull CID --from NODE` into an empty CATS_HOME (identity made, every block hashed against
its CID and stored, the DAG pinned); and, to tell the node's part from the client's, `curl` of the
node's CAR to /dev/null. Before each run the previous output of its kind is removed and os.sync()
writes dirty pages back, so every run starts from the same state. Target: pull >= 0.7x curl.

    python bench/bench_pull.py [--mib 1024] [--repeat 3] [--checkout PATH] [--json bench/results/pull.json]

--checkout runs another checkout's `cats` (node and CLI), to measure a before and an after in the
same conditions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import machine, save, stop

REPO = Path(__file__).resolve().parent.parent
TARGET = 0.7
PULL = "cats mesh pull CID --from NODE (an empty home)"
CURL = "curl -o FILE (python -m http.server)"
NODE_CAR = "curl -o /dev/null (the node's CAR)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start within {timeout:.0f} s")
        time.sleep(0.1)


def settle(dest: Path) -> None:
    """Remove what the previous run of this kind wrote and write back what is dirty: every run starts
    with the same files on disk and no dirty pages, so no run pays for another's."""
    if dest.is_dir():
        shutil.rmtree(dest)
    else:
        dest.unlink(missing_ok=True)
    os.sync()
    time.sleep(0.5)


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, bytes]:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} … exited {done.returncode}: {done.stderr.decode()[-500:]}")
    return elapsed, done.stdout


def stats(samples: list[float], size: int) -> dict[str, object]:
    med = statistics.median(samples)
    return {"median_s": round(med, 4), "min_s": round(min(samples), 4), "mb_per_s": round(size / med / 1e6, 1),
            "samples_s": [round(s, 4) for s in samples]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="MiB of the file (default 1024)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--checkout", type=Path, default=REPO, help="the checkout whose cats runs (default: this one)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "pull.json")
    args = parser.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("curl is needed: it is the baseline")
    checkout = args.checkout.resolve()

    work = Path(tempfile.mkdtemp(prefix="bench-pull-"))
    base_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(checkout), *filter(None, [os.environ.get(
        "PYTHONPATH")])])}
    base_env.pop("CATS_STORE", None)
    base_env.pop("CATS_IPFS_API", None)
    cats = [sys.executable, "-m", "cats"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        static = work / "static"
        static.mkdir()
        data = static / "data.bin"
        print(f"writing {args.mib} MiB and adding it to the node's store …", file=sys.stderr)
        with open(data, "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(1 << 20))
        node_env = {**base_env, "CATS_HOME": str(work / "node-home")}
        _, out = timed([*cats, "add", str(data)], env=node_env)
        cid = out.decode().split()[-2]

        port = free_port()
        log = open(work / "node.log", "wb")  # noqa: SIM115 - the node writes here for its whole life
        node = subprocess.Popen([*cats, "node", "start", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                env=node_env, cwd=checkout)
        procs.append(node)
        node_url = f"http://127.0.0.1:{port}"
        wait_http(node_url + "/id", node, "cats node start")
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port),
                                   "--directory", str(static)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(server)
        file_url = f"http://127.0.0.1:{port}/data.bin"
        wait_http(file_url, server, "python -m http.server")

        runs: dict[str, list[float]] = {PULL: [], CURL: [], NODE_CAR: []}
        reports = []
        home, download = work / "pulled-home", work / "download.bin"
        for _ in range(args.repeat):  # interleaved, so a slow moment of the machine hits every kind alike
            settle(download)
            elapsed, _ = timed(["curl", "-sS", "-o", str(download), file_url])
            runs[CURL].append(elapsed)
            if download.stat().st_size != args.mib << 20:
                raise SystemExit(f"curl got {download.stat().st_size} bytes")
            settle(home)
            elapsed, out = timed([*cats, "mesh", "pull", cid, "--from", node_url, "--json"],
                                 env={**base_env, "CATS_HOME": str(home)})
            runs[PULL].append(elapsed)
            reports.append(json.loads(out))
            os.sync()
            time.sleep(0.5)
            elapsed, _ = timed(["curl", "-sS", "-o", "/dev/null", f"{node_url}/ipfs/{cid}?format=car"])
            runs[NODE_CAR].append(elapsed)
        size = reports[-1]["fetched_bytes"]
        for r in reports:
            if r["fetched_blocks"] != r["blocks"] or r["fetched_bytes"] != size or not r["pinned"]:
                raise SystemExit(f"a pull did not fetch and pin the whole DAG: {r}")

        medians = {k: statistics.median(v) for k, v in runs.items()}
        ratio = medians[CURL] / medians[PULL]
        result = {
            "cid": cid, "file_bytes": args.mib << 20, "dag_blocks": reports[-1]["blocks"], "dag_bytes": size,
            "repeat": args.repeat, "checkout": str(checkout), "machine": machine(),
            "runs": {k: stats(v, args.mib << 20) for k, v in runs.items()},
            "pull_vs_curl": round(ratio, 3),
            "node_car_vs_curl": round(medians[CURL] / medians[NODE_CAR], 3),
            "target": TARGET,
            "met": ratio >= TARGET,
        }
        print(f"\n{args.mib} MiB file: {result['dag_blocks']} blocks, {size / 1e6:.1f} MB in the DAG ({cid})\n")
        print(f"{'':48} {'median s':>9} {'MB/s':>8}")
        for name, row in result["runs"].items():
            print(f"{name:48} {row['median_s']:9.3f} {row['mb_per_s']:8.1f}")
        print(f"\npull / curl throughput: {ratio:.2f}x (target >= {TARGET}: {'met' if result['met'] else 'MISSED'})")
        save(result, args.json)
    finally:
        stop(procs, timeout=20)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
