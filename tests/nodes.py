"""Real CAT Nodes for tests: `cats node start` in a subprocess with its own CATS_HOME, on the session's Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from conftest import Result
from servers import free_port

from cats.cas.store.local import LocalStore
from cats.identity import Identity


def run_cli(home: Path, *args: str, **env: str) -> Result:
    proc = subprocess.run([sys.executable, "-m", "cats", *args], capture_output=True, timeout=300,
                          env={**os.environ, "CATS_HOME": str(home), **env})
    return Result(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"),
                  proc.stdout)


@dataclass
class RealNode:
    """`cats node start` in a subprocess with its own CATS_HOME, joined to the session's Ray."""

    base: Path
    ray: str
    private: bool = False
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def home(self) -> Path:
        return self.base / "home"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def did(self) -> str:
        return Identity.load(self.home / "identity").did

    @property
    def store(self) -> LocalStore:
        return LocalStore(self.home / "blocks")

    def env(self) -> dict[str, str]:
        return {"CATS_HOME": str(self.home), "RAY_ADDRESS": self.ray}

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        out, err = self.base / "node.out", self.base / "node.err"
        out.write_bytes(b"")
        with open(out, "ab") as o, open(err, "ab") as e:
            args = ["node", "start", "--port", str(self.port), *(["--private"] if self.private else [])]
            self.proc = subprocess.Popen([sys.executable, "-m", "cats", *args], stdout=o, stderr=e,
                                         env={**os.environ, **self.env()})
        deadline = time.monotonic() + 60
        while "listening on" not in out.read_text():
            assert self.proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, f"cats node start did not get ready: {err.read_text()}"
            time.sleep(0.05)
        line = out.read_text().splitlines()[0]
        assert line == f"cats node {self.did} listening on {self.url}", line

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0, (self.base / "node.err").read_text()
        self.proc = None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def cli(self, *args: str, **env: str) -> Result:
        return run_cli(self.home, *args, **{"RAY_ADDRESS": self.ray, **env})


def start_all(*nodes: RealNode) -> None:
    threads = [threading.Thread(target=n.start) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n in nodes:
        assert n.proc is not None, f"node in {n.base} did not start: {(n.base / 'node.err').read_text()}"
