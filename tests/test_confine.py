"""Confined runs: the same results as unconfined ones, what the code sees inside, what is refused
before anything runs, and how a sandbox that misbehaves fails its slice and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import jobs
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import WorkerEnv

from cats import factory
from cats.bom import load as load_bom
from cats.errors import CatsError, SliceFailed
from cats.factory.confine import Policy
from cats.order import Function, InfraFunction, Order
from cats.plant import Plant
from cats.verification.audit import verify

pytestmark = pytest.mark.usefixtures("ray_session")

JOB = """
import json, os

def upper(data):
    return data.upper()

def size(path):
    return path.name + " " + str(path.stat().st_size) + " " + str(path.parent == __import__("pathlib").Path("/scratch"))

def rows(table):
    return table.num_rows

def seen(data, seed=None):
    return json.dumps({"uid": os.getuid(), "pid": os.getpid(), "cwd": os.getcwd(), "env": dict(os.environ),
                       "procs": sorted(p for p in os.listdir("/proc") if p.isdigit()),
                       "root": sorted(os.listdir("/")), "seed": seed})

def leave(data):
    with open("/scratch/left", "wb") as f:
        f.write(data)
    return str(sorted(os.listdir("/scratch")))

def dies(data):
    if data.startswith(b"die"):
        os._exit(3)
    return data

def big(data):
    return b"x" * 5_000_000

def outlive(data):
    import subprocess
    from cats.factory import _confined
    _confined._sweep = lambda: None  # the sweep inside runs in this very process
    subprocess.Popen(["sleep", "1000"], start_new_session=True)
    return open("/proc/1/cmdline", "rb").read()

def needs(data):
    import inflection  # installed by Ray from the Order's requirements only
    return inflection.__version__ + " " + __import__("sys").prefix

def frame(table):
    return table.to_pandas()  # the index a DataFrame was written with comes back from the schema's metadata

def peek(data, path):
    try:
        return open(path, "rb").read()
    except OSError as e:
        return type(e).__name__

def hang(data):
    import subprocess, time
    subprocess.Popen(["sleep", "1000"], start_new_session=True)  # a background process of its own session
    time.sleep(1000)
"""


def _order(tmp_path: Path, entry: str, inputs: list, **plant: object) -> Order:
    module = jobs.module(tmp_path, "confjob", JOB)
    return Order(function=Function.of(getattr(_load(module), entry), **({"takes": "path"} if entry == "size" else {})
                                      | ({"takes": "table"} if entry in ("rows", "frame") else {})),
                 inputs=inputs, plant=Plant(**plant))


def _load(module: Path) -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location(module.stem, module)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _files(tmp_path: Path) -> Path:
    return jobs.folder(tmp_path, {"a.txt": b"alpha\n", "b.txt": b"beta\n", "c.txt": b"gamma\n"})


def test_confined_results_match_unconfined_for_bytes_paths_and_tables(cats_home: Path, tmp_path: Path) -> None:
    folder = _files(tmp_path)
    free = factory.run(_order(tmp_path, "upper", [folder]), force=True)
    boxed = factory.run(_order(tmp_path, "upper", [folder], confined=True), force=True)
    assert free.output == boxed.output
    assert jobs.outputs(cats_home, boxed.output)["a.txt"] == b"ALPHA\n"
    assert load_bom(jobs.home_store(cats_home), boxed.bom).invoice.confined is True
    assert load_bom(jobs.home_store(cats_home), free.bom).invoice.confined is None
    boxed = factory.run(_order(tmp_path, "size", [folder], confined=True), force=True)
    assert jobs.outputs(cats_home, boxed.output)["a.txt"] == b"a.txt 6 True"  # a file in its own scratch
    pq.write_table(pa.table({"x": list(range(10))}), tmp_path / "t.parquet", row_group_size=4)
    table = [tmp_path / "t.parquet"]
    split = InfraFunction(split="row-groups", merge="list")
    free = factory.run(_order(tmp_path, "rows", table).model_copy(update={"infra": split}), force=True)
    boxed = factory.run(_order(tmp_path, "rows", table, confined=True).model_copy(update={"infra": split}),
                        force=True)
    assert free.output == boxed.output


def test_a_table_reaches_confined_code_with_its_schema_metadata(cats_home: Path, tmp_path: Path) -> None:
    """A table is handed over as it was read, metadata and all: pandas keeps a DataFrame's index there,
    so without it `to_pandas()` gave other columns than unconfined, and another output."""
    import pandas as pd

    df = pd.DataFrame({"x": [3, 1, 2]}, index=pd.Index([10, 20, 30], name="key"))
    df.to_parquet(tmp_path / "f.parquet")
    table = [tmp_path / "f.parquet"]
    free = factory.run(_order(tmp_path, "frame", table), force=True)
    boxed = factory.run(_order(tmp_path, "frame", table, confined=True), force=True)
    assert free.output == boxed.output


def test_the_declared_environment_adds_no_option_of_the_sandbox(cats_home: Path, tmp_path: Path) -> None:
    """bubblewrap reads its options NUL-separated: a NUL in Plant.env added options of its own (binding
    the host's root, where confined code read any file). Such a Plant is refused, as an Order block a
    node decodes too."""
    from pydantic import ValidationError

    secret = tmp_path / "secret"
    secret.write_bytes(b"the node's key")
    folder = jobs.folder(tmp_path, {"a": b"a"})
    module = _load(jobs.module(tmp_path, "confpeek", JOB))
    order = Order(function=Function.of(module.peek, path=f"/tmp/host{secret}"), inputs=[folder],
                  plant=Plant(confined=True))
    for env in ({"A": "x\0--ro-bind\0/\0/tmp/host"}, {"A\0--ro-bind\0/\0/tmp/host\0--setenv\0B": "x"},
                {"A=B": "x"}, {"": "x"}):
        with pytest.raises(ValidationError, match=r"env .*NUL"):
            Plant(confined=True, env=env)
        with pytest.raises(ValidationError, match=r"env .*NUL"):
            Order.model_validate({**order.model_dump(), "plant": {"confined": True, "env": env}})
    run = factory.run(order.model_copy(update={"plant": Plant(confined=True, env={"A": "x --ro-bind / /tmp/host"})}),
                      force=True)
    assert jobs.outputs(cats_home, run.output)["a"] == b"FileNotFoundError"  # a value with spaces is one value


def test_inside_the_code_sees_itself_its_scratch_and_the_declared_environment(cats_home: Path,
                                                                              tmp_path: Path) -> None:
    folder = jobs.folder(tmp_path, {"one": b"1"})
    run = factory.run(_order(tmp_path, "seen", [folder], confined=True, env={"MODE": "fast"}), force=True)
    seen = json.loads(jobs.outputs(cats_home, run.output)["one"])
    assert seen["uid"] == 65534 and seen["pid"] == 2 and seen["procs"] == ["1", "2"]
    assert seen["cwd"] == "/scratch" and seen["seed"] is not None
    assert set(seen["env"]) == {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "PWD", "MODE", "CATS_MAX_OUTPUT"}
    assert seen["env"]["MODE"] == "fast" and seen["env"]["HOME"] == "/scratch"
    assert "tmp" in seen["root"] and "scratch" in seen["root"] and "code" in seen["root"]


def test_scratch_is_emptied_between_slices(cats_home: Path, tmp_path: Path) -> None:
    folder = jobs.folder(tmp_path, {f"f{i}": b"x" for i in range(4)})
    run = factory.run(_order(tmp_path, "leave", [folder], confined=True, batch=4), force=True)
    assert set(jobs.outputs(cats_home, run.output).values()) == {b"['left']"}


def test_a_sandbox_that_dies_fails_its_slice_and_the_next_one_starts_afresh(cats_home: Path, tmp_path: Path) -> None:
    folder = jobs.folder(tmp_path, {"a": b"ok-a", "b": b"die now", "c": b"ok-c"})
    with pytest.raises(SliceFailed) as failed:
        factory.run(_order(tmp_path, "dies", [folder], confined=True, batch=3, retries=0), force=True)
    message = str(failed.value)
    assert "slice 1 (b)" in message and "the sandbox running slice 1 broke off" in message
    assert "more slices failed" not in message  # a, before it, and c, in a new sandbox after it, ran


def test_a_result_over_the_policy_fails_naming_the_limit(cats_home: Path, tmp_path: Path) -> None:
    folder = jobs.folder(tmp_path, {"a": b"a"})
    with pytest.raises(SliceFailed, match=r"over this machine's limit of 1000000 bytes per slice"):
        factory.run(_order(tmp_path, "big", [folder]), force=True, confine=Policy(max_output=1_000_000))


def test_what_cannot_run_confined_is_refused_before_anything_runs(cats_home: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _files(tmp_path)
    with pytest.raises(CatsError, match=r"asks for network access .* does not give"):
        factory.run(_order(tmp_path, "upper", [folder], network=True), confine=Policy(network=False))
    slice_fn = _order(tmp_path, "upper", [folder], confined=True)
    slice_fn = slice_fn.model_copy(update={"function": slice_fn.function.model_copy(update={"takes": "slice"})})
    with pytest.raises(CatsError, match=r"takes its Slice"):
        factory.run(slice_fn)
    monkeypatch.setenv("CATS_BWRAP", str(tmp_path / "no-bwrap"))
    with pytest.raises(CatsError, match=r"cannot confine code on this machine: bubblewrap \(.*no-bwrap\) does not run"):
        factory.run(_order(tmp_path, "upper", [folder], confined=True))


def test_plant_defaults_keep_the_encoding(tmp_path: Path) -> None:
    """Orders written before confinement keep their CIDs: its fields are left out at their defaults."""
    assert set(Plant().model_dump()) == {"address", "num_cpus", "resources", "retries", "timeout_s", "batch"}
    assert Plant(confined=True, network=True, env={"A": "1"}).model_dump()["env"] == {"A": "1"}


def test_verification_re_executes_a_confined_run_confined(cats_home: Path, tmp_path: Path) -> None:
    folder = _files(tmp_path)
    run = factory.run(_order(tmp_path, "seen", [folder], confined=True), force=True)
    report = verify(jobs.home_store(cats_home), run.bom)
    assert report.verified and report.mode == "reexecute"  # "seen" reports pid 2 and uid 65534 only in a sandbox


def test_a_slice_over_its_time_is_killed_with_everything_it_started(cats_home: Path, tmp_path: Path) -> None:
    import time

    before = set(jobs.live("sleep 1000"))
    folder = jobs.folder(tmp_path, {"a": b"a"})
    started = time.monotonic()
    with pytest.raises(SliceFailed, match=r"timed out after 2(\.0)? s per slice"):
        factory.run(_order(tmp_path, "hang", [folder], confined=True, timeout_s=2, retries=0), force=True)
    assert time.monotonic() - started < 30
    deadline = time.monotonic() + 10
    while set(jobs.live("sleep 1000")) - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not set(jobs.live("sleep 1000")) - before  # the sleep it left in the background died with the sandbox


def test_a_slice_that_disables_the_sweep_inside_still_loses_what_it_started(cats_home: Path, tmp_path: Path) -> None:
    """The worker kills every process of the sandbox but its own two from outside after each slice, and
    bubblewrap's command line (pid 1's, readable inside) names neither CATS_HOME nor the store."""
    import time

    before = set(jobs.live("sleep 1000"))
    folder = jobs.folder(tmp_path, {"a": b"a"})
    run = factory.run(_order(tmp_path, "outlive", [folder], confined=True), force=True)
    deadline = time.monotonic() + 10
    while set(jobs.live("sleep 1000")) - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not set(jobs.live("sleep 1000")) - before
    cmdline = jobs.outputs(cats_home, run.output)["a"]
    assert b"bwrap\0--args\0" in cmdline
    assert str(cats_home).encode() not in cmdline and b"/blocks" not in cmdline


@pytest.mark.slow
def test_a_confined_order_with_requirements_runs_in_the_virtualenv_ray_made(cats_home: Path, tmp_path: Path) -> None:
    """Ray installs an Order's requirements in a virtualenv under its temporary folder: the sandbox shows
    that virtualenv (under a /tmp of its own) and nothing else of the host's /tmp."""
    from cats.order import Structure

    folder = jobs.folder(tmp_path, {"a": b"a"})
    order = _order(tmp_path, "needs", [folder], confined=True, timeout_s=240)
    run = factory.run(order.model_copy(update={"structure": Structure(requirements=["inflection==0.5.1"])}),
                      quiet=True, force=True)
    version, prefix = jobs.outputs(cats_home, run.output)["a"].decode().split(" ", 1)
    assert version == "0.5.1" and prefix.startswith("/tmp/")


def test_replicas_and_results_written_to_a_uri_run_confined(cats_home: Path, tmp_path: Path,
                                                             worker_env: WorkerEnv) -> None:
    """Replicas (actors, each with a sandbox of its own) agree, and a result written to a URI is the
    confined result's bytes, the same as unconfined."""
    folder = _files(tmp_path)
    free = factory.run(_order(tmp_path, "upper", [folder]), force=True)
    boxed = factory.run(_order(tmp_path, "upper", [folder], confined=True, replicas=2), force=True)
    assert boxed.output == free.output and boxed.replicas == 2 and boxed.disagreed == 0
    out = worker_env.data_root / "confined-out"
    run = factory.run(_order(tmp_path, "upper", [folder], confined=True).model_copy(
        update={"output_uri": f"file://{out}"}), force=True)
    assert load_bom(jobs.home_store(cats_home), run.bom).invoice.confined is True
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {"a.txt": b"ALPHA\n", "b.txt": b"BETA\n",
                                                              "c.txt": b"GAMMA\n"}
