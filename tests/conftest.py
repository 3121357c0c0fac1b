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


@pytest.fixture
def cli(cats_home: Path):
    """Run the installed `cats` entry point in a subprocess, exactly as a user would."""

    def run(*args: str | os.PathLike[str], cwd: Path | None = None, input: bytes | None = None) -> Result:
        proc = subprocess.run([sys.executable, "-m", "cats", *map(str, args)], capture_output=True,
                              cwd=cwd, input=input, env={**os.environ, "CATS_HOME": str(cats_home)}, timeout=300)
        return Result(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"),
                      proc.stdout)

    return run
