"""What every benchmark script shares: the machine it ran on, and writing its result as JSON."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def machine(**versions: str) -> dict[str, Any]:
    """CPUs, Python and platform, plus the versions of whatever else the figures depend on."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(), **versions}


def save(result: dict[str, Any], path: Path | None) -> None:
    """Write the result as indented JSON (creating its folder) and say where; nothing if path is None."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


def spin_workspace(prefix: str, module: str = "bench_job") -> Path:
    """A temporary folder for a Factory benchmark: its CATS_HOME, and the 10 ms job (spinjob.py) as the
    module `module`, which this process imports to make the Function (workers import it by code CID)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["CATS_HOME"] = str(work / "home")
    (work / f"{module}.py").write_text((Path(__file__).parent / "spinjob.py").read_text())
    sys.path.insert(0, str(work))
    return work


def slice_files(folder: Path, n: int) -> Path:
    """`n` small files in a new folder, one slice each: the inputs the Factory benchmarks share."""
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"f{i:05d}.txt").write_bytes(f"slice {i} ".encode() * 8)
    return folder


def stop(procs: list[subprocess.Popen[bytes]], timeout: float = 30) -> None:
    """Stop servers a benchmark started as an operator would (SIGTERM), killing one not gone in `timeout` s."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
