"""Benchmark CATs beside kubo (the `ipfs` binary at $CATS_TEST_KUBO, or --kubo): adding the same file, and
fetching the same DAG from a CAT node; whole commands, on loopback, on the same machine, in one run.

A file of --mib random MiB. Each round, interleaved so a slow moment of the machine hits every kind alike:
- `cats add -n -q FILE` and `ipfs add --only-hash -Q --cid-version=1 --chunker=size-262144 FILE`: CIDs only;
- `cats add -q FILE` into an empty CATS_HOME and `ipfs add -Q ...` into an empty repository (offline, no
  daemon): every block written and the root pinned, by both;
- `cats mesh pull CID --from NODE` into an empty CATS_HOME, and kubo fetching the same DAG from the same
  `cats node start`: `curl` of the node's CAR (its trustless gateway) piped into `ipfs dag import` of an
  empty repository. kubo's own HTTP retrieval finds providers through routing, which an offline kubo has
  none of, so the CAR stream is how it reads from a node here.
Every add must give the same root CID (CIDv1, raw 256 KiB leaves, dag-pb nodes: CATs' defaults); every
fetch is checked whole afterwards (the pull's report; `ipfs dag stat --offline` of kubo's repository).
Before each run the previous output of its kind is removed and os.sync() writes dirty pages back.

    python bench/bench_kubo.py [--mib 1024] [--repeat 3] [--kubo PATH] [--json bench/results/kubo.json]
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
from pathlib import Path

from bench_pull import free_port, settle, stats, timed, wait_http
from common import machine, save, stop

REPO = Path(__file__).resolve().parent.parent
KUBO_FLAGS = ["--cid-version=1", "--chunker=size-262144", "-Q"]
ROWS = {
    "cats_hash": "cats add -n (only hash)",
    "kubo_hash": "ipfs add --only-hash",
    "cats_add": "cats add (into an empty store)",
    "kubo_add": "ipfs add (into an empty repo)",
    "cats_pull": "cats mesh pull CID --from NODE",
    "kubo_fetch": "curl NODE CAR | ipfs dag import",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="MiB of the file (default 1024)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--kubo", default=os.environ.get("CATS_TEST_KUBO", ""),
                        help="the kubo `ipfs` binary (default: $CATS_TEST_KUBO)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "kubo.json")
    args = parser.parse_args()
    if not args.kubo:
        raise SystemExit("name kubo's `ipfs` binary with --kubo or CATS_TEST_KUBO (scripts/build-kubo builds it)")
    for tool in ("curl", "bash"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed")
    kubo_version = subprocess.run([args.kubo, "version", "--number"], capture_output=True, text=True, check=True)

    work = Path(tempfile.mkdtemp(prefix="bench-kubo-"))
    base_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get(
        "PYTHONPATH")])])}
    for name in ("CATS_STORE", "CATS_IPFS_API", "IPFS_PATH"):
        base_env.pop(name, None)
    cats = [sys.executable, "-m", "cats"]

    def ipfs(repo: Path, *argv: str) -> list[str]:
        return [args.kubo, "--repo-dir", str(repo), *argv]

    def fresh_repo(repo: Path) -> Path:
        settle(repo)
        timed(ipfs(repo, "init", "--profile", "test", "--empty-repo"))
        return repo

    node: subprocess.Popen[bytes] | None = None
    try:
        data = work / "data.bin"
        print(f"writing {args.mib} MiB …", file=sys.stderr)
        with open(data, "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(1 << 20))
        size = data.stat().st_size

        node_env = {**base_env, "CATS_HOME": str(work / "node-home")}
        _, out = timed([*cats, "add", "-q", str(data)], env=node_env)
        cid = out.decode().strip()
        port = free_port()
        log = open(work / "node.log", "wb")  # noqa: SIM115 - the node writes here for its whole life
        node = subprocess.Popen([*cats, "node", "start", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                env=node_env, cwd=REPO)
        node_url = f"http://127.0.0.1:{port}"
        wait_http(node_url + "/id", node, "cats node start")

        runs: dict[str, list[float]] = {key: [] for key in ROWS}
        cats_home, hash_home, repo = work / "cats-home", work / "hash-home", work / "kubo-repo"
        pulls = []
        for round_ in range(args.repeat):
            print(f"round {round_ + 1} of {args.repeat} …", file=sys.stderr)
            roots = {}
            settle(hash_home)
            elapsed, out = timed([*cats, "add", "-n", "-q", str(data)], env={**base_env, "CATS_HOME": str(hash_home)})
            runs["cats_hash"].append(elapsed)
            roots["cats_hash"] = out.decode().strip()
            fresh_repo(repo)
            elapsed, out = timed(ipfs(repo, "add", "--only-hash", *KUBO_FLAGS, str(data)))
            runs["kubo_hash"].append(elapsed)
            roots["kubo_hash"] = out.decode().strip()

            settle(cats_home)
            elapsed, out = timed([*cats, "add", "-q", str(data)], env={**base_env, "CATS_HOME": str(cats_home)})
            runs["cats_add"].append(elapsed)
            roots["cats_add"] = out.decode().strip()
            fresh_repo(repo)
            elapsed, out = timed(ipfs(repo, "add", *KUBO_FLAGS, str(data)))
            runs["kubo_add"].append(elapsed)
            roots["kubo_add"] = out.decode().strip()
            if set(roots.values()) != {cid}:
                raise SystemExit(f"the adds disagree on the root CID: {roots} (the node has {cid})")

            settle(cats_home)
            elapsed, out = timed([*cats, "mesh", "pull", cid, "--from", node_url, "--json"],
                                 env={**base_env, "CATS_HOME": str(cats_home)})
            runs["cats_pull"].append(elapsed)
            pulls.append(json.loads(out))
            fresh_repo(repo)
            os.sync()
            car_url = f"{node_url}/ipfs/{cid}?format=car"
            elapsed, _ = timed(["bash", "-o", "pipefail", "-c",
                                f"curl -sSf '{car_url}' | {' '.join(ipfs(repo, 'dag', 'import', '--stats'))}"])
            runs["kubo_fetch"].append(elapsed)
            _, out = timed(ipfs(repo, "dag", "stat", "--offline", "--progress=false", "--enc=json", cid))
            kubo_stat = json.loads(out)
            if kubo_stat["UniqueBlocks"] != pulls[-1]["blocks"] or pulls[-1]["fetched_blocks"] != pulls[-1]["blocks"]:
                raise SystemExit(f"a fetch was not whole: kubo {kubo_stat}, cats {pulls[-1]}")

        result = {
            "cid": cid, "file_bytes": size, "dag_blocks": pulls[-1]["blocks"], "repeat": args.repeat,
            "kubo_flags": KUBO_FLAGS, "kubo_fetch": "curl of the node's CAR piped into `ipfs dag import`",
            "machine": machine(kubo=kubo_version.stdout.strip()),
            "runs": {ROWS[k]: stats(v, size) for k, v in runs.items()},
            "cats_vs_kubo": {
                "only_hash": round(statistics.median(runs["kubo_hash"]) / statistics.median(runs["cats_hash"]), 3),
                "add": round(statistics.median(runs["kubo_add"]) / statistics.median(runs["cats_add"]), 3),
                "fetch": round(statistics.median(runs["kubo_fetch"]) / statistics.median(runs["cats_pull"]), 3),
            },
        }
        print(f"\n{args.mib} MiB file: {result['dag_blocks']} blocks ({cid}); kubo {result['machine']['kubo']}\n")
        print(f"{'':36} {'median s':>9} {'MB/s':>8}")
        for name, row in result["runs"].items():
            print(f"{name:36} {row['median_s']:9.3f} {row['mb_per_s']:8.1f}")
        print("\nCATs' speed as a multiple of kubo's: " +
              ", ".join(f"{k} {v:.2f}x" for k, v in result["cats_vs_kubo"].items()))
        save(result, args.json)
    finally:
        if node is not None:
            stop([node], timeout=20)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
