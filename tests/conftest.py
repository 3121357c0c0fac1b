"""Shared fixtures: an isolated CATS_HOME per test, stores, and a runner for the real `cats` command."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cats.cas.store.local import LocalStore
from cats.cas.store.memory import MemoryStore


@pytest.fixture
def cats_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "cats-home"
    monkeypatch.setenv("CATS_HOME", str(home))
    monkeypatch.delenv("CATS_STORE", raising=False)
    return home


@pytest.fixture
def local_store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "blocks")


@pytest.fixture(params=["memory", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MemoryStore | LocalStore]:
    yield MemoryStore() if request.param == "memory" else LocalStore(tmp_path / "blocks")


@dataclass
class Result:
    code: int
    out: str
    err: str
    stdout_bytes: bytes

    def error_line(self, *culprits: str) -> str:
        """Assert the command failed the way bad input should: exit 1, one stderr line naming culprits."""
        assert self.code == 1, (self.code, self.out, self.err)
        lines = self.err.strip().splitlines()
        assert len(lines) == 1, self.err
        for text in culprits:
            assert text in lines[0], (text, lines[0])
        return lines[0]


@pytest.fixture
def cli(cats_home: Path):
    """Run the installed `cats` entry point in a subprocess, exactly as a user would."""

    def run(*args: str | os.PathLike[str], cwd: Path | None = None, input: bytes | None = None) -> Result:
        proc = subprocess.run([sys.executable, "-m", "cats", *map(str, args)], capture_output=True,
                              cwd=cwd, input=input, env={**os.environ, "CATS_HOME": str(cats_home)}, timeout=300)
        return Result(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"),
                      proc.stdout)

    return run


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real local Ray for the whole test session (ray.init costs seconds); yields its address.

    Workers are started with a session CATS_HOME (they keep their code cache there); each test's
    own CATS_HOME still decides the driver's store and index, which the Factory hands to workers.
    Subprocesses (the CLI) join this Ray through RAY_ADDRESS instead of starting their own.
    """
    import ray

    session_home = tmp_path_factory.mktemp("ray-session-home")
    saved = os.environ.get("CATS_HOME")
    os.environ["CATS_HOME"] = str(session_home)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    finally:
        if saved is None:
            os.environ.pop("CATS_HOME", None)
        else:
            os.environ["CATS_HOME"] = saved
    address = ray.get_runtime_context().gcs_address
    yield address
    ray.shutdown()
