"""Benchmark `cats add` against hashlib.sha256 over the same file, in the same run.

sha256 over the file is the physical limit of a sha2-256 content address, so every rate is
reported as a ratio to it. Targets: only-hash >= 0.7, add-to-store >= 0.5,
`cats --version` < 0.3 s, peak RSS < 200 MB whatever the file size.

    python bench/bench_add.py [--size-mib 1024] [--json bench/results/add.json]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, save

TARGETS = {"only_hash_ratio": 0.7, "add_to_store_ratio": 0.5, "startup_s": 0.3, "peak_rss_mb": 200.0}


def make_file(path: Path, size: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(size >> 20):
            # vary each MiB so no two chunks share a CID (a real file has no such luck)
            f.write(i.to_bytes(8, "little") + block[8:])


def sha256_rate(path: Path) -> tuple[float, str]:
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return time.perf_counter() - start, h.hexdigest()


def warm_file(work: Path, size_mib: int) -> tuple[Path, float]:
    """A file of size_mib MiB in work, read once so every contender reads it from the page cache;
    returns it and sha256's time over it (the physical limit for a sha2-256 address)."""
    data = work / "data.bin"
    make_file(data, size_mib << 20)
    sha256_rate(data)
    return data, sha256_rate(data)[0]


def run_cats(args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run the CLI; return wall seconds, peak RSS in MB and stdout."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "cats", *args], stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"cats {' '.join(args)} failed with {proc.returncode}")
    return elapsed, usage.ru_maxrss / 1024, out.strip()


def js_importer_seconds(path: Path) -> float | None:
    """The npm reference importer (installed by scripts/test) on the same file, for scale; None if absent."""
    script = Path(__file__).resolve().parent.parent / "tests" / "js" / "unixfs.mjs"
    if not (script.parent / "node_modules").is_dir() or shutil.which("node") is None:
        return None
    start = time.perf_counter()
    subprocess.run(["node", str(script), "--cid-version", "1", str(path)], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "add.json")
    parser.add_argument("--dir", type=Path, default=None, help="Where to put the test file (default: a temp dir).")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cats-bench-", dir=args.dir))
    try:
        size = args.size_mib << 20
        data, base_s = warm_file(work, args.size_mib)
        env = {**os.environ, "CATS_HOME": str(work / "home")}
        rows: dict[str, dict[str, float | str]] = {}
        for name, extra in (("only-hash v1", ["--only-hash"]), ("only-hash v0", ["--only-hash", "--cid-version", "0"]),
                            ("add-to-store v1", ["--no-pin"])):
            shutil.rmtree(work / "home", ignore_errors=True)
            secs, rss, cid = run_cats(["add", "--quiet", *extra, str(data)], env)
            rows[name] = {"seconds": secs, "mb_per_s": size / secs / 1e6, "ratio": base_s / secs,
                          "peak_rss_mb": rss, "cid": cid}
        peer = js_importer_seconds(data)
        if peer is not None:
            rows["peer: js ipfs-unixfs-importer v1"] = {"seconds": peer, "mb_per_s": size / peer / 1e6,
                                                        "ratio": base_s / peer, "peak_rss_mb": 0.0, "cid": ""}
        startups = [run_cats(["--version"], env)[0] for _ in range(10)]
        startup = statistics.median(startups)
        peak = max(float(r["peak_rss_mb"]) for r in rows.values())  # the peer's 0.0 never wins
        result = {
            "file_mib": args.size_mib,
            "machine": machine(),
            "baseline_sha256": {"seconds": base_s, "mb_per_s": size / base_s / 1e6},
            "runs": rows,
            "startup_s": startup,
            "targets": TARGETS,
            "met": {
                "only_hash_ratio": rows["only-hash v1"]["ratio"] >= TARGETS["only_hash_ratio"],
                "add_to_store_ratio": rows["add-to-store v1"]["ratio"] >= TARGETS["add_to_store_ratio"],
                "startup_s": startup < TARGETS["startup_s"],
                "peak_rss_mb": peak < TARGETS["peak_rss_mb"],
            },
        }
        if rows["only-hash v1"]["cid"] != rows["add-to-store v1"]["cid"]:
            raise SystemExit("only-hash and add-to-store disagree on the CID")
        report(result)
        save(result, args.json)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    base = result["baseline_sha256"]
    table = Table(title=f"cats add on a {result['file_mib']} MiB file (baseline: hashlib.sha256 in this run)")
    for col in ("run", "seconds", "MB/s", "ratio to sha256", "peak RSS MB"):
        table.add_column(col, justify="right" if col != "run" else "left")
    table.add_row("hashlib.sha256", f"{base['seconds']:.2f}", f"{base['mb_per_s']:.0f}", "1.00", "")
    for name, r in result["runs"].items():
        table.add_row(name, f"{r['seconds']:.2f}", f"{r['mb_per_s']:.0f}", f"{r['ratio']:.2f}",
                      f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] else "")
    table.add_row("cats --version", f"{result['startup_s']:.3f}", "", "", "")
    Console().print(table)
    for key, ok in result["met"].items():
        print(f"{'met   ' if ok else 'MISSED'} {key} (target {result['targets'][key]})")


if __name__ == "__main__":
    main()
