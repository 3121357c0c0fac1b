"""Shared fixtures: an isolated CATS_HOME per test, stores, and a runner for the real `cats` command."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubo import KuboDaemon, kubo_daemon  # noqa: F401 - a fixture shared by every test module
from servers import http_server, js_ipfs_api, moto_endpoint  # noqa: F401 - fixtures shared by every test module

from cats.cas.store.local import LocalStore
from cats.cas.store.memory import MemoryStore


@pytest.fixture
def cats_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "cats-home"
    monkeypatch.setenv("CATS_HOME", str(home))
    monkeypatch.delenv("CATS_STORE", raising=False)
    monkeypatch.delenv("CATS_IPFS_API", raising=False)
    return home


@pytest.fixture(scope="session")
def ipfs_api(kubo_daemon: KuboDaemon) -> str:  # noqa: F811
    """The RPC API URL of the session's IPFS daemon: kubo, offline on loopback."""
    return kubo_daemon.api


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


@pytest.fixture
def quick_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short data-URI timeouts and few retries, so failure paths stay fast; tests needing others override them."""
    monkeypatch.setenv("CATS_DATA_TIMEOUT", "5")
    monkeypatch.setenv("CATS_DATA_RETRIES", "2")
    monkeypatch.delenv("CATS_DATA_MAX_FETCH", raising=False)


@dataclass(frozen=True)
class WorkerEnv:
    """The data settings the session Ray's workers were started with (each node's own policy, as in
    a real cluster: file:// roots and the S3 endpoint come from the worker's environment)."""

    data_root: Path
    s3_endpoint: str

    def apply(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Give this test's driver the same settings."""
        for name, value in self.variables().items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("AWS_PROFILE", raising=False)

    def variables(self) -> dict[str, str]:
        none = str(self.data_root.parent / "no-aws-config")
        return {"CATS_DATA_ROOTS": str(self.data_root), "CATS_S3_ENDPOINT": self.s3_endpoint,
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": none, "AWS_SHARED_CREDENTIALS_FILE": none}


@pytest.fixture(scope="session")
def worker_env(tmp_path_factory: pytest.TempPathFactory, moto_endpoint: str) -> WorkerEnv:  # noqa: F811
    return WorkerEnv(tmp_path_factory.mktemp("worker-data"), moto_endpoint)


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory: pytest.TempPathFactory, worker_env: WorkerEnv) -> Iterator[str]:
    """One real local Ray for the whole test session (ray.init costs seconds); yields its address.

    Workers are started with a session CATS_HOME (they keep their code cache there) and the data
    settings of `worker_env`; each test's own CATS_HOME still decides the driver's store and index,
    which the Factory hands to workers. Subprocesses (the CLI) join this Ray through RAY_ADDRESS
    instead of starting their own.
    """
    import ray

    session_home = tmp_path_factory.mktemp("ray-session-home")
    settings = {"CATS_HOME": str(session_home), **worker_env.variables()}
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        # "local": a Ray of its own, never a cluster some other process started on this machine
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    address = ray.get_runtime_context().gcs_address
    yield address
    ray.shutdown()
