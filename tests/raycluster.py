"""A real multi-node Ray cluster on loopback: `ray start --head` plus `ray start --address` per extra
node, each node with its own CATS_HOME (so its own block store) advertised as `cats-store:<name>`.

Every node runs `ray start --block` in a process group of its own, so stopping the cluster kills
exactly its processes (never the test session's own Ray). The cluster has its own temp dir, so no
`ray.init()` elsewhere on the machine mistakes it for "the" local cluster, and its own auth token.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from conftest import Result
from servers import free_port

from cats.cas.store.local import LocalStore

RAY = str(Path(sys.executable).with_name("ray"))


@dataclass
class ClusterNode:
    name: str
    home: Path
    cpus: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def store(self) -> LocalStore:
        return LocalStore(self.home / "blocks")


@dataclass
class RayCluster:
    base: Path
    port: int = field(default_factory=free_port)
    client_port: int = field(default_factory=free_port)  # the Ray Client server's (ray://)
    nodes: list[ClusterNode] = field(default_factory=list)
    # short: Ray's unix socket paths live under it and must stay under ~100 characters
    temp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cr")))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def client_address(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    def env(self, home: Path | None = None) -> dict[str, str]:
        """The environment of a process on this cluster: its node's CATS_HOME, the cluster's token."""
        token = self.base / "ray-token"
        if not token.exists():
            token.write_text(secrets.token_hex(32))
            token.chmod(0o600)
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
               "RAY_ADDRESS": self.address, "RAY_USAGE_STATS_ENABLED": "0"}
        if home is not None:
            env["CATS_HOME"] = str(home)
        return env

    def add(self, name: str, cpus: int = 1, options: tuple[str, ...] = ()) -> ClusterNode:
        """Start a node advertising its store as `cats-store:<name>`; the first one is the head. `options`
        go to `ray start` last (so they win over the defaults)."""
        node = ClusterNode(name, self.base / name, cpus)
        node.home.mkdir(parents=True, exist_ok=True)
        head = not self.nodes
        where = ["--head", f"--port={self.port}", f"--temp-dir={self.temp}", "--include-dashboard=false",
                 f"--ray-client-server-port={self.client_port}"] if head else [f"--address={self.address}"]
        log = open(self.base / f"{name}.log", "wb")  # noqa: SIM115 - the process keeps it
        node.proc = subprocess.Popen(
            [RAY, "start", "--block", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", "--num-gpus=0",
             f"--resources={json.dumps({f'cats-store:{name}': 1000})}", "--disable-usage-stats", *where, *options],
            stdout=log, stderr=subprocess.STDOUT, env=self.env(node.home), start_new_session=True)
        self.nodes.append(node)
        self._wait_for(len(self.nodes), name)
        return node

    def _wait_for(self, count: int, name: str) -> None:
        """Until `count` nodes are alive; a node process that exits meanwhile fails at once with its log."""
        script = ("import ray, sys; ray.init(logging_level='ERROR'); "
                  "print(sum(1 for n in ray.nodes() if n['Alive']))")
        deadline = time.time() + 120
        while time.time() < deadline:
            probe = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=self.env())
            while True:
                try:
                    out, _ = probe.communicate(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    if self._dead() is not None or time.time() > deadline:
                        probe.kill()
                        probe.communicate()
                        out = ""
                        break
            if probe.returncode == 0 and out.strip() == str(count):
                return
            if (dead := self._dead()) is not None:
                status = dead.proc.returncode if dead.proc is not None else "?"
                raise RuntimeError(f"ray node {dead.name} exited with status {status} before the cluster was up; "
                                   f"the end of its log:\n{self.log(dead.name)}")
            time.sleep(1)
        raise RuntimeError(f"ray node {name} did not join within 120 s; the end of its log:\n{self.log(name)}")

    def _dead(self) -> ClusterNode | None:
        return next((n for n in self.nodes if n.proc is not None and n.proc.poll() is not None), None)

    def log(self, name: str) -> str:
        return (self.base / f"{name}.log").read_text(errors="replace")[-3000:]

    def run(self, home: Path, *args: str, **env: str | None) -> Result:
        """`cats ARGS` as a driver on this cluster with CATS_HOME `home` (`env`: changes, None unsets)."""
        environment = {**self.env(home), **env}
        proc = subprocess.run([sys.executable, "-m", "cats", *args], capture_output=True, timeout=600,
                              env={k: v for k, v in environment.items() if v is not None})
        return Result(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"),
                      proc.stdout)

    def logs(self, pattern: str, tail: int = 40) -> str:
        """The last lines of the head's Ray logs matching `pattern` (e.g. the Ray Client's servers'), for a
        failure message: Ray reports what went wrong there, not to the driver."""
        out = []
        for log in sorted((self.temp / "session_latest" / "logs").glob(pattern)):
            lines = log.read_text(errors="replace").splitlines()[-tail:]
            out.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(out) or f"(no Ray log matches {pattern})"

    def stop(self) -> None:
        """Stop every node (workers first, the head last); no process of the cluster survives."""
        for node in reversed(self.nodes):
            if node.proc is None or node.proc.poll() is not None:
                continue
            os.killpg(node.proc.pid, signal.SIGTERM)
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(node.proc.pid, signal.SIGKILL)
                node.proc.wait()
        for node in self.nodes:  # anything the raylet started that outlived it
            if node.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.proc.pid, signal.SIGKILL)
        shutil.rmtree(self.temp, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """Processes of this cluster still alive (found by its temp dir on their command lines)."""
        out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
        return [line for line in out.splitlines() if str(self.temp) in line]
