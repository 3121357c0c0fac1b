"""Benchmark the README's quickstart end to end: `cats run --force demo/quickstart.py` against a plain Ray
script running the same 3 trivial tasks over the same files, each a whole fresh process, interleaved.

Targets: cats / plain Ray <= 1.1 cold (each process starts its own local Ray) and <= 1.2 joining a
running Ray (one `ray start --head` this script starts on a free port with its own temp dir, and
ends by its process group; RAY_ADDRESS names it to both contenders). Medians of --repeat runs, after
one untimed run of each per case (imports compiled, the store filled). Bytecode is cached as an
installed package has it: this script's processes write it under their own scratch folder.

    python bench/bench_quickstart.py [--repeat 3] [--json bench/results/quickstart.json]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, save

TARGETS = {"cold": 1.1, "joined": 1.2}
ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "demo" / "quickstart.py"

PLAIN = '''
"""The quickstart's work as a Ray user writes it: one task per file, results gathered here."""
import sys
from pathlib import Path

import ray


def count(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace")
    return f"{len(text.splitlines())} lines, {len(text.split())} words, {len(data)} bytes\\n"


@ray.remote
def task(path: str) -> str:
    return count(Path(path).read_bytes())


files = sorted(str(p) for p in Path(sys.argv[1]).rglob("*") if p.is_file() and not p.name.startswith("."))
ray.init(include_dashboard=False, logging_level="WARNING")  # as CATs starts its embedded Ray
print("".join(ray.get([task.remote(f) for f in files])), end="")
'''


def timed(cmd: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one whole process, from start to exit; its failure ends the benchmark."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, timeout=300)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.decode()[-3000:]}")
    return took


def rounds(contenders: dict[str, list[str]], env: dict[str, str], repeat: int) -> dict[str, list[float]]:
    """One untimed run of each, then `repeat` timed rounds, taking turns at going first."""
    for cmd in contenders.values():
        timed(cmd, env)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for i in range(repeat):
        names = list(contenders) if i % 2 == 0 else list(reversed(contenders))
        for name in names:
            times[name].append(timed(contenders[name], env))
    return times


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_head(env: dict[str, str], temp_dir: Path) -> tuple[subprocess.Popen[str], str]:
    """`ray start --head --block` on loopback in a process group of its own, with its own temp dir (so no
    `ray.init()` elsewhere mistakes it for the machine's cluster) and the auth token `env` names;
    returns it and its address once Ray is up."""
    port = free_port()
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={port}", f"--temp-dir={temp_dir}", "--include-dashboard=false", "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    assert head.stdout is not None
    for line in head.stdout:
        seen.append(line)
        if "Ray runtime started" in line:
            return head, f"127.0.0.1:{port}"
    raise SystemExit("ray start --head failed:\n" + "".join(seen[-40:]))


def stop_head(head: subprocess.Popen[str]) -> None:
    """End the head this script started and every process of its group, which `start_new_session` made
    its own (never `ray stop`: that ends every Ray on the machine)."""
    group = head.pid
    os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        head.poll()
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(group, signal.SIGKILL)
    head.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each contender per case (median)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "quickstart.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cq"))  # short: Ray's socket paths under its temp dir must stay short
    (work / "plain_quickstart.py").write_text(PLAIN)
    token = work / "ray-token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {**os.environ, "CATS_HOME": str(work / "home"), "PYTHONPYCACHEPREFIX": str(work / "pycache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("RAY_ADDRESS", None)
    contenders = {
        "cats": [sys.executable, "-m", "cats", "run", "--force", str(QUICKSTART)],
        "plain": [sys.executable, str(work / "plain_quickstart.py"), str(QUICKSTART.parent / "sample")],
    }
    import ray

    cases: dict[str, dict[str, list[float]]] = {}
    head = None
    try:
        cases["cold"] = rounds(contenders, env, args.repeat)
        joined = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"}
        head, address = start_head(joined, work / "ray")
        cases["joined"] = rounds(contenders, {**joined, "RAY_ADDRESS": address}, args.repeat)
    finally:
        if head is not None:
            stop_head(head)
        shutil.rmtree(work, ignore_errors=True)

    rows = {}
    for case, times in cases.items():
        cats_s, plain_s = statistics.median(times["cats"]), statistics.median(times["plain"])
        rows[case] = {"cats_s": cats_s, "plain_ray_s": plain_s, "ratio": cats_s / plain_s, "target": TARGETS[case],
                      "met": cats_s / plain_s <= TARGETS[case], "cats_runs_s": times["cats"],
                      "plain_ray_runs_s": times["plain"]}
    result = {"machine": machine(ray=ray.__version__), "repeat": args.repeat, "cases": rows}
    print(f"{'case':<8}{'cats run --force s':>20}{'plain Ray s':>13}{'ratio':>8}  target     every run (cats | plain)")
    for case, r in rows.items():
        runs = " | ".join(" ".join(f"{t:.2f}" for t in r[key]) for key in ("cats_runs_s", "plain_ray_runs_s"))
        print(f"{case:<8}{r['cats_s']:>20.2f}{r['plain_ray_s']:>13.2f}{r['ratio']:>8.2f}  <= {r['target']} "
              f"{'met   ' if r['met'] else 'MISSED'}  {runs}")
    save(result, args.json)


if __name__ == "__main__":
    main()
