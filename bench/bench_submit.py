"""Benchmark `cats mesh submit` of an Order over data only the node holds, against running the same Order
on the node's machine with `cats run`, both whole commands, on loopback, in the same run.

The data: --mib of random bytes in --files files, imported into the node's home (and pinned), its
blocks hard-linked into a second home on the same disk for the local run. The Order hashes every file
(sha-256), one slice per file, confined (`Plant(confined=True)`), as the node runs every peer's Order;
its input is the folder's CID. The submitter's home holds none of the data. One Ray serves the node's
runs and the local ones (RAY_ADDRESS), so neither pays for starting Ray and the comparison is of
everything else.

Bytes the submitter sends are counted on the wire: `cats mesh submit` talks to the node through a TCP
relay in this process that counts every byte each way (HTTP heads, signatures, the has question, the
CAR of what was pushed, the polls and the BOM coming back); the client's own count of block bytes it
pushed is reported beside it. Each round writes the job under a new module name with a new salt, so
no run is memoized or reuses another's slices; local and remote runs alternate, and both produce the
same output CID, which is checked. Targets: bytes sent <= 1 MiB, submit time <= 1.2x the local run.

    python bench/bench_submit.py [--mib 256] [--files 8] [--repeat 3] [--json bench/results/submit.json]
    python bench/bench_submit.py --gib                  # the 1 GiB figure (about 4x as long)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import machine, save, stop

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's cats, in this process and (below) in its children
BYTES_TARGET = 1 << 20
TIME_TARGET = 1.2
LOCAL = "cats run on the node's machine (local)"
SUBMIT = "cats mesh submit from a home without the data"


class Relay:
    """A TCP relay on loopback to `port` counting the bytes of every connection each way."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.up = self.down = self.connections = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.up = self.down = self.connections = 0

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, server, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, "down"), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, way: str) -> None:
        try:
            while data := source.recv(1 << 20):
                sink.sendall(data)
                with self._lock:
                    setattr(self, way, getattr(self, way) + len(data))
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._server.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(home: Path, ray_address: str) -> dict[str, str]:
    path = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "CATS_HOME": str(home), "RAY_ADDRESS": ray_address, "PYTHONPATH": path}
    env.pop("CATS_STORE", None)
    return env


def make_data(home: Path, work: Path, mib: int, files: int, seed: int = 11, prefix: str = "part") -> tuple[str, int]:
    """The input folder, imported into `home`'s store and pinned there; its CID and its bytes."""
    from cats.cas.importer import Importer
    from cats.cas.pins import Pins
    from cats.cas.store.local import LocalStore

    folder = work / "inputs"
    folder.mkdir()
    rng = random.Random(seed)
    each = (mib << 20) // files
    for i in range(files):
        with open(folder / f"{prefix}-{i:02d}.bin", "wb") as f:
            left = each
            while left:
                n = min(left, 16 << 20)
                f.write(rng.randbytes(n))
                left -= n
    store = LocalStore(home / "blocks")
    with Importer(store, cid_version=1) as importer:
        *_, top = importer.add_path(folder)
    Pins(home / "pins").add(store, top.cid)
    shutil.rmtree(folder)
    return str(top.cid), each * files


def link_tree(source: Path, target: Path) -> None:
    """Hard-link every file of source under target: the same blocks in a second home, no copy."""
    for root, _, names in os.walk(source):
        dest = target / Path(root).relative_to(source)
        dest.mkdir(parents=True, exist_ok=True)
        for name in names:
            os.link(Path(root) / name, dest / name)


def write_order(work: Path, round_: int, data: str) -> Path:
    """The job (a new module and salt each round: nothing memoized, no slice reused) and its Order file."""
    module = f"bench_submit_job_{round_}"
    (work / f"{module}.py").write_text(f"""import hashlib

SALT = {round_}


def digest(data):
    return hashlib.sha256(data).hexdigest().encode() + b"\\n"
""")
    order = work / f"order_{round_}.py"
    order.write_text(f"""from pathlib import Path

from cats.cas.cid import CID
from cats.order import Function, Order
from cats.plant import Plant

order = Order(function=Function(entry="{module}:digest", source=Path({str(work / f"{module}.py")!r})),
              inputs=[CID.parse({data!r})], plant=Plant(confined=True), name="bench submit {round_}")
""")
    return order


def cats(args: list[str], env: dict[str, str]) -> tuple[float, dict]:
    """Run `python -m cats ARGS --json` (whole command, timed); its JSON answer."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cats", *args, "--json"], capture_output=True, text=True, env=env,
                          timeout=7200)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"cats {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
    return elapsed, json.loads(proc.stdout.strip().splitlines()[-1])


def invoice(home: Path, bom: str) -> float:
    """The run's own duration, from its BOM's invoice: the Factory's time, without the command around it."""
    from cats.bom import load
    from cats.cas.cid import CID
    from cats.cas.store.local import LocalStore

    return load(LocalStore(home / "blocks"), CID.parse(bom)).invoice.duration_s


def start_node(home: Path, ray_address: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    import httpx

    port = free_port()
    out = open(log, "wb")  # noqa: SIM115 - the node writes here for its whole life
    proc = subprocess.Popen([sys.executable, "-m", "cats", "node", "start", "--port", str(port)], stdout=out,
                            stderr=subprocess.STDOUT, env=env_for(home, ray_address))
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/id", timeout=2)
            return proc, port
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"cats node start did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="MiB of input (default 256).")
    parser.add_argument("--gib", action="store_true", help="1 GiB of input (overrides --mib).")
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "submit.json")
    args = parser.parse_args()
    mib = 1024 if args.gib else args.mib

    import ray

    work = Path(tempfile.mkdtemp(prefix="bench-submit-"))
    node_home, local_home, submitter = work / "node-home", work / "local-home", work / "submitter-home"
    procs: list[subprocess.Popen[bytes]] = []
    relay = None
    try:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
        ray_address = ray.get_runtime_context().gcs_address
        print(f"importing {mib} MiB in {args.files} files into the node's home …", file=sys.stderr)
        data, size = make_data(node_home, work, mib, args.files)
        link_tree(node_home / "blocks", local_home / "blocks")
        from cats.identity import Identity
        from cats.identity.trust import Trust

        Trust(node_home / "trust.json").add(Identity.load(submitter / "identity").did, name="submitter")
        node, port = start_node(node_home, ray_address, work / "node.log")
        procs.append(node)
        relay = Relay(port)
        url = f"http://127.0.0.1:{relay.port}"

        runs: dict[str, list[float]] = {LOCAL: [], SUBMIT: []}
        factory_s: dict[str, list[float]] = {"local": [], "submit": []}
        wire: list[dict[str, int]] = []
        for i in range(args.repeat):
            order = write_order(work, i, data)
            jobs = [("local", order), ("submit", order)]
            if i % 2:
                jobs.reverse()  # alternate which goes first
            outputs = {}
            for kind, path in jobs:
                if kind == "local":
                    elapsed, answer = cats(["run", str(path)], env_for(local_home, ray_address))
                    runs[LOCAL].append(elapsed)
                else:
                    relay.reset()
                    elapsed, answer = cats(["mesh", "submit", str(path), "--to", url, "--timeout", "7200"],
                                           env_for(submitter, ray_address))
                    runs[SUBMIT].append(elapsed)
                    wire.append({"sent": relay.up, "received": relay.down, "connections": relay.connections,
                                 "pushed_block_bytes": answer["pushed"]["bytes"],
                                 "pushed_blocks": answer["pushed"]["blocks"],
                                 "bom_bytes_pulled": answer["pulled"]["fetched_bytes"]})
                outputs[kind] = answer["output"]
                home = local_home if kind == "local" else node_home
                factory_s[kind].append(invoice(home, answer["bom"]))
            if outputs["local"] != outputs["submit"]:
                raise SystemExit(f"round {i}: the local run made {outputs['local']}, the node {outputs['submit']}")
            print(f"round {i}: local {runs[LOCAL][-1]:.2f} s (the Factory's run {factory_s['local'][-1]:.2f} s), "
                  f"submit {runs[SUBMIT][-1]:.2f} s (on the node {factory_s['submit'][-1]:.2f} s), "
                  f"sent {wire[-1]['sent']} bytes", file=sys.stderr)

        local, remote = statistics.median(runs[LOCAL]), statistics.median(runs[SUBMIT])
        sent = max(w["sent"] for w in wire)
        ratio = remote / local
        result = {
            "input": data, "input_bytes": size, "input_mib": mib, "input_files": args.files, "repeat": args.repeat,
            "machine": machine(),
            "runs": {k: {"median_s": statistics.median(v), "min_s": min(v), "samples_s": [round(s, 3) for s in v]}
                     for k, v in runs.items()},
            "factory_run_s": {k: [round(s, 3) for s in v] for k, v in factory_s.items()},
            "wire": wire,
            "bytes_sent_max": sent,
            "submit_vs_local": ratio,
            "submit_vs_local_by_round": [round(r / l_, 3) for r, l_ in zip(runs[SUBMIT], runs[LOCAL], strict=True)],
            "targets": {"bytes_sent": BYTES_TARGET, "submit_vs_local": TIME_TARGET},
            "met": {"bytes_sent": sent <= BYTES_TARGET, "submit_vs_local": ratio <= TIME_TARGET},
        }
        print(f"\nOrder over {size / (1 << 20):.0f} MiB in {args.files} files held only by the node ({data})\n")
        print(f"{'':50} {'median s':>9} {'min s':>8}")
        for name, row in result["runs"].items():
            print(f"{name:50} {row['median_s']:9.2f} {row['min_s']:8.2f}")
        print(f"\nsubmit / local: {ratio:.2f}x of the medians (target <= {TIME_TARGET}: "
              f"{'met' if result['met']['submit_vs_local'] else 'MISSED'}); by round "
              + ", ".join(f"{r:.2f}x" for r in result["submit_vs_local_by_round"]))
        last = wire[-1]
        print(f"bytes the submitter sent: {sent} at most over {args.repeat} rounds (target <= {BYTES_TARGET}: "
              f"{'met' if result['met']['bytes_sent'] else 'MISSED'}); of which block bytes pushed "
              f"{last['pushed_block_bytes']} in {last['pushed_blocks']} blocks; received {last['received']} "
              f"(the BOM's blocks: {last['bom_bytes_pulled']}) over {last['connections']} connection(s)")
        save(result, args.json)
    finally:
        stop(procs)
        if relay is not None:
            relay.close()
        with contextlib.suppress(Exception):  # best effort at exit
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
