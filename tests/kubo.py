"""A real kubo (`ipfs`) binary, the Go reference implementation, for tests that compare CATs with it.

The binary is named by the environment variable CATS_TEST_KUBO and never searched for: a test that
asks for the `kubo` or `kubo_daemon` fixture fails, rather than skips, when it is not set or does not
run, so a missing binary can never let a comparison pass unseen. `kubo` gives each test its own freshly
initialised repository (test profile, no daemon): `ipfs add`, `ls`, `get` and `dag export` all run
offline on it. `kubo_daemon` is one daemon for the whole session (a start costs a second or two),
offline on loopback: the IPFS node a user of CATs' IPFS store runs.

This module must not import ``cats``: it is the independent side.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ENV = "CATS_TEST_KUBO"


@dataclass(frozen=True)
class Kubo:
    binary: str
    repo: Path

    def __call__(self, *args: str | bytes | os.PathLike[str], cwd: Path | None = None, timeout: float = 300) -> bytes:
        """Run `ipfs ARGS` on this repository; its stdout as bytes. A failure fails the test with ipfs's stderr."""
        proc = subprocess.run([self.binary, *args], capture_output=True, cwd=cwd, timeout=timeout,
                              env={**os.environ, "IPFS_PATH": str(self.repo)}, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            pytest.fail(f"ipfs {' '.join(map(os.fsdecode, args))} exited with {proc.returncode}:\n"
                        f"{proc.stderr.decode(errors='replace').strip()}", pytrace=False)
        return proc.stdout

    def text(self, *args: str | bytes | os.PathLike[str], cwd: Path | None = None) -> str:
        return self(*args, cwd=cwd).decode().strip()


def _binary() -> str:
    """$CATS_TEST_KUBO, proven to run; a test fails naming what is wrong otherwise."""
    binary = os.environ.get(ENV, "")
    if not binary:
        pytest.fail(f"{ENV} is not set: point it at a kubo `ipfs` binary (v0.43.1) to compare with", pytrace=False)
    try:
        version = subprocess.run([binary, "version", "--number"], capture_output=True, text=True, timeout=60)
    except OSError as e:
        pytest.fail(f"{ENV}={binary} does not run: {e}", pytrace=False)
    if version.returncode != 0:
        pytest.fail(f"{ENV}={binary} does not run: {version.stderr.strip()}", pytrace=False)
    return binary


@pytest.fixture
def kubo(tmp_path: Path) -> Kubo:
    """kubo at $CATS_TEST_KUBO with a new offline repository."""
    node = Kubo(_binary(), tmp_path / "kubo-repo")
    node("init", "--profile", "test", "--empty-repo")
    return node


@dataclass(frozen=True)
class KuboDaemon:
    """A running kubo daemon: its RPC API and gateway URLs, and `cli` (`ipfs` commands sent to the daemon)."""

    api: str
    gateway: str
    cli: Kubo


_LISTENING = re.compile(r"^(RPC API|Gateway) server listening on /ip4/127\.0\.0\.1/tcp/(\d+)", re.M)


@pytest.fixture(scope="session")
def kubo_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KuboDaemon]:
    """`ipfs daemon --offline` on loopback for the whole session: no bootstrap peers, no swarm listener, no
    routing, no MDNS; the API and gateway on ports the kernel picks (read back from the daemon's log, so
    no port can be taken in between). Shut down through its API at the end, as its owner would."""
    repo = tmp_path_factory.mktemp("kubo-daemon") / "repo"
    cli = Kubo(_binary(), repo)
    cli("init", "--profile", "test", "--empty-repo")
    config_file = repo / "config"
    config = json.loads(config_file.read_text())
    config["Addresses"].update({"API": "/ip4/127.0.0.1/tcp/0", "Gateway": "/ip4/127.0.0.1/tcp/0", "Swarm": []})
    config["Bootstrap"] = []
    config["Routing"]["Type"] = "none"
    config_file.write_text(json.dumps(config, indent=2))

    log = repo.parent / "daemon.log"
    with open(log, "wb") as out:  # its own session, so stopping it never touches anything else
        proc = subprocess.Popen([cli.binary, "daemon", "--offline"], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, "IPFS_PATH": str(repo)},
                                start_new_session=True)
    try:
        ports = _wait_listening(proc, log)
        daemon = KuboDaemon(f"http://127.0.0.1:{ports['RPC API']}", f"http://127.0.0.1:{ports['Gateway']}", cli)
        _wait_answering(proc, daemon.api, log)
        yield daemon
        _rpc_post(daemon.api + "/api/v0/shutdown")
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_listening(proc: subprocess.Popen[bytes], log: Path) -> dict[str, str]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if proc.poll() is not None:
            pytest.fail(f"the kubo daemon exited with {proc.returncode}:\n{text}", pytrace=False)
        ports = dict(_LISTENING.findall(text))
        if len(ports) == 2:
            return ports
        time.sleep(0.05)
    pytest.fail(f"the kubo daemon did not listen within 60 s:\n{log.read_text(errors='replace')}", pytrace=False)


def _wait_answering(proc: subprocess.Popen[bytes], api: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the kubo daemon exited with {proc.returncode}:\n{log.read_text(errors='replace')}",
                        pytrace=False)
        with contextlib.suppress(OSError):
            if json.loads(_rpc_post(api + "/api/v0/id")).get("ID"):
                return
        time.sleep(0.05)
    pytest.fail(f"the kubo daemon's API {api} did not answer within 60 s", pytrace=False)


def _rpc_post(url: str) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=30) as r:
        return r.read()
