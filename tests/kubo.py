"""A real kubo (`ipfs`) binary, the Go reference implementation, for tests that compare CATs with it.

The binary is named by the environment variable CATS_TEST_KUBO and never searched for: a test that
asks for the `kubo` fixture fails, rather than skips, when it is not set or does not run, so a
missing binary can never let a comparison pass unseen. Each test gets its own freshly initialised
repository (test profile, no daemon): `ipfs add`, `ls`, `get` and `dag export` all run offline on it.

This module must not import ``cats``: it is the independent side.
"""

from __future__ import annotations

import os
import subprocess
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


@pytest.fixture
def kubo(tmp_path: Path) -> Kubo:
    """kubo at $CATS_TEST_KUBO with a new offline repository."""
    binary = os.environ.get(ENV, "")
    if not binary:
        pytest.fail(f"{ENV} is not set: point it at a kubo `ipfs` binary (v0.43.1) to compare with", pytrace=False)
    try:
        version = subprocess.run([binary, "version", "--number"], capture_output=True, text=True, timeout=60)
    except OSError as e:
        pytest.fail(f"{ENV}={binary} does not run: {e}", pytrace=False)
    if version.returncode != 0:
        pytest.fail(f"{ENV}={binary} does not run: {version.stderr.strip()}", pytrace=False)
    node = Kubo(binary, tmp_path / "kubo-repo")
    node("init", "--profile", "test", "--empty-repo")
    return node
