"""Benchmark a federated Order: bytes crossing borders when inputs live on two organizations' nodes.

Nodes A and B (`cats node start`, one Ray between them) each hold half of --mib of random bytes, in
--files files; they trust each other (with URLs, so either could pull from the other) and the
submitter, whose home holds none of the data. Every connection that crosses a border goes through a
TCP relay in this process counting its bytes each way: submitter -> A, submitter -> B, A -> B, B -> A.
The Order hashes every file (sha-256), one slice per file, over both folders.

`cats mesh submit --federate` runs each half on the node holding it; the same job (under another
module name, so no slice is reused) is then sent whole to A (`--to`), which must fetch B's half from
B: the bytes that crossing costs. Both outputs must be the same folder. Both nodes share one Ray, so
the federated run gains no CPUs; the times say what federating costs, not what parallel organizations
would gain. Target: 0 data bytes crossing for the federated Order.

    python bench/bench_federate.py [--mib 128] [--files 8] [--json bench/results/federate.json]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_submit import Relay, cats, env_for, make_data, start_node, write_order
from common import machine, save, stop


def _walk(home: Path, root: str) -> set[str]:
    from cats.cas.cid import CID
    from cats.cas.dag import walk
    from cats.cas.store.local import LocalStore

    return {str(c.to_v1()) for c in walk(LocalStore(home / "blocks"), CID.parse(root))}


def _held(home: Path, blocks: set[str]) -> int:
    from cats.cas.cid import CID
    from cats.cas.store.local import LocalStore

    store = LocalStore(home / "blocks")
    return sum(store.has(CID.parse(c)) for c in blocks)


def _order(work: Path, round_: int, a: str, b: str) -> Path:
    """The Order over both folders, its job under a new module each time: the second run reuses no slice."""
    order = write_order(work, round_, a)
    text = order.read_text().replace(f"inputs=[CID.parse({a!r})]", f"inputs=[CID.parse({a!r}), CID.parse({b!r})]")
    order.write_text(text.replace(f"bench submit {round_}", f"bench federate {round_}"))
    return order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=128, help="MiB of input, half on each node (default 128).")
    parser.add_argument("--files", type=int, default=8, help="files in all, half on each node")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "federate.json")
    args = parser.parse_args()

    import ray

    from cats.identity import Identity
    from cats.identity.trust import Trust

    work = Path(tempfile.mkdtemp(prefix="bench-federate-"))
    homes = {k: work / f"{k}-home" for k in ("a", "b", "s")}
    procs: list[subprocess.Popen[bytes]] = []
    relays: dict[str, Relay] = {}
    try:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
        ray_address = ray.get_runtime_context().gcs_address
        data, size = {}, 0
        for seed, k in enumerate(("a", "b")):
            (work / k).mkdir()
            data[k], n = make_data(homes[k], work / k, args.mib // 2, max(1, args.files // 2), seed, k)
            size += n
        dids = {k: Identity.load(h / "identity").did for k, h in homes.items()}
        ports = {}
        for k in ("a", "b"):
            Trust(homes[k] / "trust.json").add(dids["s"], name="submitter")
            proc, ports[k] = start_node(homes[k], ray_address, work / f"{k}.log")
            procs.append(proc)
        for name, to in (("s->a", "a"), ("s->b", "b"), ("a->b", "b"), ("b->a", "a")):
            relays[name] = Relay(ports[to])
        url = {name: f"http://127.0.0.1:{r.port}" for name, r in relays.items()}
        Trust(homes["s"] / "trust.json").add(dids["a"], name="a", url=url["s->a"])
        Trust(homes["s"] / "trust.json").add(dids["b"], name="b", url=url["s->b"])
        Trust(homes["a"] / "trust.json").add(dids["b"], name="b", url=url["a->b"])
        Trust(homes["b"] / "trust.json").add(dids["a"], name="a", url=url["b->a"])
        inputs = {k: _walk(homes[k], data[k]) for k in ("a", "b")}

        env = env_for(homes["s"], ray_address)
        figures = {}
        for i, (how, extra) in enumerate((("federated", ["--federate"]), ("whole on A", ["--to", url["s->a"]]))):
            order = _order(work, i, data["a"], data["b"])
            for r in relays.values():
                r.reset()
            elapsed, answer = cats(["mesh", "submit", str(order), *extra, "--timeout", "7200"], env)
            figures[how] = {
                "seconds": round(elapsed, 3), "output": answer["output"], "bom": answer["bom"],
                "wire": {name: {"sent": r.up, "received": r.down} for name, r in relays.items()},
                "between_nodes_bytes": sum(relays[n].up + relays[n].down for n in ("a->b", "b->a")),
                "input_blocks_of_a_on_b": _held(homes["b"], inputs["a"]),
                "input_blocks_of_b_on_a": _held(homes["a"], inputs["b"]),
                "input_blocks_on_submitter": _held(homes["s"], inputs["a"] | inputs["b"]),
                **({"invoice": {k: answer[k] for k in ("pushed", "pulled", "data", "folder_blocks")}}
                   if how == "federated" else {}),
            }
            print(f"{how}: {elapsed:.2f} s, {figures[how]['between_nodes_bytes']} bytes between the nodes",
                  file=sys.stderr)
        fed, whole = figures["federated"], figures["whole on A"]
        if fed["output"] != whole["output"]:
            raise SystemExit(f"the federated Order made {fed['output']}, the whole one {whole['output']}")
        crossed = fed["between_nodes_bytes"] + fed["input_blocks_of_a_on_b"] + fed["input_blocks_of_b_on_a"] \
            + fed["input_blocks_on_submitter"]
        result = {"input_bytes": size, "input_mib": args.mib, "input_files": args.files, "inputs": data,
                  "machine": machine(), "runs": figures, "targets": {"data_bytes_crossing": 0},
                  "met": {"data_bytes_crossing": crossed == 0 and fed["invoice"]["data"] == 0}}
        print(f"\nOrder over {size / (1 << 20):.0f} MiB in {args.files} files, half on each of two nodes\n")
        for how, f in figures.items():
            s_bytes = sum(w["sent"] + w["received"] for n, w in f["wire"].items() if n.startswith("s->"))
            print(f"{how:12} {f['seconds']:8.2f} s  between nodes {f['between_nodes_bytes']:>12,} bytes  "
                  f"submitter <-> nodes {s_bytes:>9,} bytes")
        inv = fed["invoice"]
        print(f"\nfederated invoice: {inv['pushed']:,} block bytes sent, {inv['pulled']:,} fetched "
              f"({inv['folder_blocks']} folder blocks), {inv['data']} data bytes crossed (target 0: "
              f"{'met' if result['met']['data_bytes_crossing'] else 'MISSED'})")
        save(result, args.json)
    finally:
        stop(procs)
        for relay in relays.values():
            relay.close()
        with contextlib.suppress(Exception):  # best effort at exit
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
