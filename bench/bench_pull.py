"""Benchmark `cats.mesh.client.pull` of a ~200 MB lineage from a real CAT Node against a plain HTTP
download of the same number of bytes, on loopback, on the same machine, in the same run.

Lineage: Order 1 digests every file of a folder of random files (--mib in total, in --files files);
Order 2 reads Order 1's output, so its BOM names Order 1's as a parent. Pulling BOM 2 into an
empty store fetches everything: both BOMs, their Orders, code, lock, records, outputs and the input
folder, every block hashed against its CID and written to its own file.

Baseline: one file of exactly the DAG's total block bytes, served by `python -m http.server` and
streamed to a file by httpx and by http.client (the better of the two is the baseline), and by
curl for scale. Runs are interleaved; before each, the previous output of its kind is removed and
os.sync() writes back dirty pages, so every run starts from the same state. Target:
pull throughput >= 0.5x the baseline.

    python bench/bench_pull.py [--mib 200] [--files 8] [--repeat 5] [--json bench/results/pull.json]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
from common import machine, save

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's cats, in this process and (below) in the node's
TARGET = 0.5
PULL = "cats mesh pull (node CAR stream -> verify -> a file per block)"
HTTPX = "plain HTTP download (http.server -> httpx -> file)"
HTTP_CLIENT = "plain HTTP download (http.server -> http.client -> file)"
CURL = "plain HTTP download (http.server -> curl -> file)"
CEILING = "the node's CAR alone (node -> http.client -> nowhere)"
STORE = "the store alone (the DAG's blocks, in memory -> an empty store)"


def free_port() -> int:
    import socket

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


def build_lineage(work: Path, mib: int, files: int) -> tuple[str, str]:
    """Run the two Orders in CATS_HOME (the node's home); return the second BOM's CID and Ray's address."""
    import ray

    from cats import factory
    from cats.order import Function, Order

    inputs = work / "inputs"
    inputs.mkdir()
    rng = random.Random(6)
    each = (mib << 20) // files
    for i in range(files):
        (inputs / f"part-{i:02d}.bin").write_bytes(rng.randbytes(each))
    code = work / "bench_pull_jobs.py"
    code.write_text(textwrap.dedent("""
        import hashlib

        def digest(data):
            return hashlib.sha256(data).hexdigest().encode() + b"\\n"

        def shout(data):
            return data.upper()
    """))
    first = factory.run(Order(function=Function(entry="bench_pull_jobs:digest", source=code), inputs=[inputs],
                              name="bench_pull digest"), quiet=True)
    second = factory.run(Order(function=Function(entry="bench_pull_jobs:shout", source=code), inputs=[first.output],
                               name="bench_pull shout"), quiet=True)
    return str(second.bom), ray.get_runtime_context().gcs_address


def start_node(home: Path, ray_address: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    path = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "CATS_HOME": str(home), "RAY_ADDRESS": ray_address, "PYTHONPATH": path}
    out = open(log, "wb")  # noqa: SIM115 - the node writes here for its whole life
    proc = subprocess.Popen([sys.executable, "-m", "cats", "node", "start", "--port", str(port)], stdout=out,
                            stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/id", proc, "cats node start")
    return proc, url


def dag_bytes(home: Path, bom: str) -> tuple[int, int]:
    from cats.cas.cid import CID
    from cats.cas.dag import walk
    from cats.cas.store.local import LocalStore

    store = LocalStore(home / "blocks")
    sizes = [store.path(c).stat().st_size for c in walk(store, CID.parse(bom))]
    return len(sizes), sum(sizes)


def settle(dest: Path) -> None:
    """Remove what the previous run of this kind wrote and write back what is dirty: every run starts
    with the same files on disk and no dirty pages, so no run pays for another's."""
    if dest.is_dir():
        shutil.rmtree(dest)
    else:
        dest.unlink(missing_ok=True)
    os.sync()
    time.sleep(0.5)


def time_pull(url: str, bom: str, target: Path) -> tuple[float, dict]:
    from cats.bom.signatures import Signatures
    from cats.cas.cid import CID
    from cats.cas.store.local import LocalStore
    from cats.mesh.client import pull

    settle(target)
    start = time.perf_counter()
    report = pull(LocalStore(target / "blocks"), CID.parse(bom), url, signatures=Signatures(target / "signatures"))
    return time.perf_counter() - start, report.summary()


def time_httpx(url: str, dest: Path) -> float:
    settle(dest)
    start = time.perf_counter()
    with httpx.stream("GET", url, timeout=60) as response, open(dest, "wb") as f:
        response.raise_for_status()
        for chunk in response.iter_raw():
            f.write(chunk)
    return time.perf_counter() - start


def time_http_client(url: str, dest: Path) -> float:
    import http.client
    from urllib.parse import urlsplit

    settle(dest)
    parts = urlsplit(url)
    start = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.request("GET", parts.path)
    response = conn.getresponse()
    with open(dest, "wb") as f:
        while piece := response.read1(1 << 20):
            f.write(piece)
    conn.close()
    return time.perf_counter() - start


def time_node_car(url: str, bom: str) -> float:
    """The node's CAR read and dropped: what the node can serve, the most any pull can get."""
    import http.client
    from urllib.parse import urlsplit

    os.sync()
    time.sleep(0.5)
    parts = urlsplit(url)
    start = time.perf_counter()
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.request("GET", f"/ipfs/{bom}?format=car")
    response = conn.getresponse()
    while response.read1(1 << 20):
        pass
    conn.close()
    return time.perf_counter() - start


def time_store(blocks: list[tuple[object, bytes]], target: Path) -> float:
    """Writing the blocks into an empty store, as a pull does (4 threads), without a network or hashing."""
    from concurrent.futures import ThreadPoolExecutor

    from cats.cas.store.local import LocalStore

    settle(target)
    start = time.perf_counter()
    store = LocalStore(target)
    with ThreadPoolExecutor(4) as pool:
        for _ in pool.map(lambda item: store.put(*item), blocks):
            pass
    return time.perf_counter() - start


def time_curl(url: str, dest: Path) -> float | None:
    if shutil.which("curl") is None:
        return None
    settle(dest)
    start = time.perf_counter()
    subprocess.run(["curl", "-sS", "-o", str(dest), url], check=True)
    return time.perf_counter() - start


def stats(samples: list[float], size: int) -> dict[str, float]:
    med = statistics.median(samples)
    return {"median_s": med, "min_s": min(samples), "mb_per_s": size / med / 1e6,
            "samples_s": [round(s, 4) for s in samples]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=200, help="MiB of input files.")
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "pull.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-pull-"))
    home = work / "node-home"
    os.environ["CATS_HOME"] = str(home)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        print(f"building the lineage: two Orders over {args.mib} MiB in {args.files} files …", file=sys.stderr)
        bom, ray_address = build_lineage(work, args.mib, args.files)
        blocks, size = dag_bytes(home, bom)
        node, url = start_node(home, ray_address, work / "node.log")
        procs.append(node)

        static = work / "static"
        static.mkdir()
        with open(static / "same-bytes.bin", "wb") as f:  # the DAG's bytes, as one plain file
            rng = random.Random(7)
            left = size
            while left:
                n = min(left, 8 << 20)
                f.write(rng.randbytes(n))
                left -= n
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port),
                                   "--directory", str(static)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(server)
        file_url = f"http://127.0.0.1:{port}/same-bytes.bin"
        wait_http(file_url, server, "python -m http.server")

        runs: dict[str, list[float]] = {PULL: [], HTTPX: [], HTTP_CLIENT: [], CURL: [], CEILING: [], STORE: []}
        from cats.cas.cid import CID
        from cats.cas.dag import walk
        from cats.cas.store.local import LocalStore

        source = LocalStore(home / "blocks")
        held = [(cid, source.get(cid)) for cid in walk(source, CID.parse(bom))]
        reports = []
        downloads = work / "downloads"
        downloads.mkdir()
        for _ in range(args.repeat):  # interleaved, so a slow moment of the machine hits every kind alike
            elapsed, report = time_pull(url, bom, work / "pulled")
            runs[PULL].append(elapsed)
            reports.append(report)
            runs[HTTPX].append(time_httpx(file_url, downloads / "httpx.bin"))
            runs[HTTP_CLIENT].append(time_http_client(file_url, downloads / "http.client.bin"))
            curl = time_curl(file_url, downloads / "curl.bin")
            if curl is not None:
                runs[CURL].append(curl)
            runs[CEILING].append(time_node_car(url, bom))
            runs[STORE].append(time_store(held, work / "stored"))
            for f in downloads.iterdir():
                if f.stat().st_size != size:
                    raise SystemExit(f"download {f.name} got {f.stat().st_size} bytes, not {size}")
        for r in reports:
            if r["fetched_blocks"] != blocks or r["fetched_bytes"] != size:
                raise SystemExit(f"a pull fetched {r['fetched_blocks']} blocks / {r['fetched_bytes']} bytes, "
                                 f"expected {blocks} / {size}")
        runs = {k: v for k, v in runs.items() if v}

        medians = {k: statistics.median(v) for k, v in runs.items()}
        baseline = min(medians[HTTPX], medians[HTTP_CLIENT])
        ratio = baseline / medians[PULL]
        result = {
            "bom": bom, "blocks": blocks, "bytes": size, "input_mib": args.mib, "input_files": args.files,
            "repeat": args.repeat,
            "machine": machine(),
            "runs": {k: stats(v, size) for k, v in runs.items()},
            "requests_per_pull": reports[-1]["requests"],
            "signers": reports[-1]["signers"],
            "baseline": HTTPX if medians[HTTPX] <= medians[HTTP_CLIENT] else HTTP_CLIENT,
            "pull_vs_plain_http": ratio,
            "pull_vs_httpx": medians[HTTPX] / medians[PULL],
            "pull_vs_http_client": medians[HTTP_CLIENT] / medians[PULL],
            "pull_vs_curl": medians[CURL] / medians[PULL] if CURL in medians else None,
            "pull_vs_node_ceiling": medians[CEILING] / medians[PULL],
            "node_ceiling_vs_plain_http": baseline / medians[CEILING],
            "store_alone_s": medians[STORE],
            "target": TARGET,
            "met": ratio >= TARGET,
        }
        print(f"\n{blocks} blocks, {size / 1e6:.1f} MB (BOM {bom})\n")
        print(f"{'':62} {'median s':>9} {'MB/s':>8} {'pull is':>8}")
        for name, row in result["runs"].items():
            print(f"{name:62} {row['median_s']:9.3f} {row['mb_per_s']:8.1f} "
                  f"{medians[name] / medians[PULL]:7.2f}x")
        print(f"\npull / plain HTTP throughput: {ratio:.2f}x against the better Python download "
              f"(target >= {TARGET}: {'met' if result['met'] else 'MISSED'})")
        print(f"the node's CAR alone reaches {result['node_ceiling_vs_plain_http']:.2f}x of it; the pull gets "
              f"{result['pull_vs_node_ceiling']:.2f}x of what the node serves; storing the blocks alone takes "
              f"{medians[STORE]:.2f} s")
        save(result, args.json)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        try:
            import ray

            ray.shutdown()
        except Exception:  # best effort at exit
            pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
