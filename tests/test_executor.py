"""One plan, one executor: a run and a verification run slices the same way, under the Order's Plant.

Verification re-executes through the executor the run used, with the plan built for the run: the
Order's time limit per slice, retries, resources and pip requirements hold when re-executing too.
Job modules are named ex_* (workers keep the modules they imported for the whole session).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from pathlib import Path

import jobs
import pytest
from pydantic import ValidationError

from cats import factory
from cats.bom import load as load_bom
from cats.bom import records as bom_records
from cats.cas import dagcbor, reader
from cats.cas.importer import Importer
from cats.factory import SliceOutcome
from cats.factory._execute import execute
from cats.factory.execution import reexecution_plan
from cats.order import Function, Order, Plant, Structure
from cats.plant import connect
from cats.verification.audit import verify


def test_slice_outcome_is_typed_and_reads_saved_records() -> None:
    """Workers' outcomes refuse unknown fields and cannot be changed; an outcome saved by an
    interrupted run (JSON in the run index) reads back as it was, so a resumed run keeps it."""
    with pytest.raises(ValidationError, match="bogus"):
        SliceOutcome(index=0, bogus=1)
    with Importer(None, cid_version=1) as importer:
        out = importer.add_bytes(b"result").cid
    outcome = SliceOutcome(index=3, output=out, encoding="bytes", size=6, tsize=6, node="n/abc", worker=7,
                           attempts=1, duration_s=0.5, bytes_in=4,
                           data={"hits": 1, "misses": 2, "bytes_in": 3, "bytes_out": 4, "fetch_s": 0.25},
                           moved={"bytes": 10, "blocks": 1})
    with pytest.raises(ValidationError):
        outcome.index = 4  # type: ignore[misc]  # frozen
    saved = json.loads(json.dumps(outcome.model_dump(mode="json", exclude_none=True)))
    assert saved["output"] == str(out)  # the index keeps text, as it always did
    assert SliceOutcome.model_validate(saved) == outcome
    assert not outcome.failed and SliceOutcome(index=1, error="boom").failed
    with pytest.raises(ValidationError, match="kind"):
        SliceOutcome(index=1, error="boom", kind="gremlins")


HANGS_WHEN_MARKED = """
    import os
    import time

    def work(data, marker):
        if data.startswith(b"hang") and os.path.exists(marker):
            time.sleep(3600)
        return data.upper()
"""


@pytest.mark.slow
def test_hanging_reexecution_ends_verify_within_the_timeout(ray_session: str, cli, cats_home: Path,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run finishes; re-executed, one slice hangs: `cats verify` stops it at the Order's
    timeout_s and reports it reexecution-failed, naming the slice, while the other verifies."""
    monkeypatch.setenv("RAY_ADDRESS", ray_session)
    src = jobs.module(tmp_path, "ex_hang", HANGS_WHEN_MARKED)
    marker = tmp_path / "hang-now"
    store = jobs.home_store(cats_home)
    inputs = jobs.add(store, jobs.folder(tmp_path, {"a.txt": b"fine\n", "h.txt": b"hang\n"}))
    timeout = 5.0
    run = factory.run(Order(function=Function(entry="ex_hang:work", source=src, params={"marker": str(marker)}),
                            inputs=[inputs], plant=Plant(timeout_s=timeout)), quiet=True)
    assert run.executed == 2

    marker.touch()
    started = time.perf_counter()
    res = cli("verify", str(run.bom), "--json")
    elapsed = time.perf_counter() - started

    assert res.code == 1, (res.out, res.err)
    report = json.loads(res.out)
    assert report["verified"] is False
    assert [(p["reason"], p["slice"]) for p in report["problems"]] == [("reexecution-failed", 1)]
    assert report["problems"][0]["detail"] == f"slice 1: timed out after {timeout} s per slice"
    assert [(s["name"], s["ok"]) for s in report["slices"]] == [("a.txt", True), ("h.txt", False)]
    # the CLI starts, joins Ray, re-executes both slices and kills the hanging one at 5 s
    assert elapsed < timeout + 15, elapsed


NEEDS_A_REQUIREMENT = """
    def version(data):
        import inflection  # installed by Ray from the Order's requirements only

        return inflection.__version__.encode() + b" " + data
"""


@pytest.mark.slow
def test_verify_reexecutes_with_the_orders_requirements(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    """An Order whose function imports a pip requirement the workers' Python lacks verifies: the
    re-execution's plan carries the Order's runtime_env and Plant as the run's did, and Ray installs
    the requirement for it. Without them the import fails and the slice would not re-execute."""
    # the test's premise: only the Order's virtualenv has it
    assert importlib.util.find_spec("inflection") is None
    src = jobs.module(tmp_path, "ex_requirement", NEEDS_A_REQUIREMENT)
    store = jobs.home_store(cats_home)
    inputs = jobs.add(store, jobs.folder(tmp_path, {"x.txt": b"x", "y.txt": b"y"}))
    plant = Plant(timeout_s=240, retries=1, batch=1)
    run = factory.run(Order(function=Function(entry="ex_requirement:version", source=src), inputs=[inputs],
                            structure=Structure(requirements=["inflection==0.5.1"]), plant=plant), quiet=True)
    bom = load_bom(store, run.bom)
    recs = list(bom_records(store, bom))
    assert [b"".join(reader.read(store, r.output)) for r in recs] == [b"0.5.1 x", b"0.5.1 y"]

    sealed = Order.model_validate(dagcbor.decode(store.get(run.order)))
    plan = reexecution_plan(connect(sealed.plant), sealed, store, recs)
    assert plan.runtime_env == {"pip": ["inflection==0.5.1"]}
    assert (plan.timeout_s, plan.retries, plan.num_cpus, plan.replicas, plan.write) == (240, 1, 1.0, 1, False)
    assert [[i for i, _, _ in b.items] for b in plan.batches] == [[0], [1]]  # the Plant's batch size
    assert [item[2] for b in plan.batches for item in b.items] == [r.seed for r in recs]

    report = verify(store, run.bom)
    assert report.verified, report.problems
    assert [s.recomputed for s in report.slices] == [str(r.output) for r in recs]


EXECUTOR_ENV = """
    import os

    def env(data):
        return os.environ.get("EX_FROM_PLAN", "unset").encode()
"""


@pytest.mark.slow
def test_executor_runs_a_plan_with_its_runtime_env_without_writing(ray_session: str, cats_home: Path,
                                                                   tmp_path: Path) -> None:
    """The executor hands the plan's runtime_env to Ray (the worker sees it) and, with write=False,
    computes the outputs' CIDs without storing them; each finished batch is reported as it ends."""
    src = jobs.module(tmp_path, "ex_env", EXECUTOR_ENV)
    store = jobs.home_store(cats_home)
    inputs = jobs.add(store, jobs.folder(tmp_path, {"p.txt": b"p", "q.txt": b"q"}))
    run = factory.run(Order(function=Function(entry="ex_env:env", source=src), inputs=[inputs]), quiet=True)
    recs = list(bom_records(store, load_bom(store, run.bom)))
    assert [b"".join(reader.read(store, r.output)) for r in recs] == [b"unset", b"unset"]

    sealed = Order.model_validate(dagcbor.decode(store.get(run.order)))
    ray = connect(sealed.plant)
    plan = reexecution_plan(ray, sealed, store, recs)
    assert plan.runtime_env is None
    with Importer(None, cid_version=1) as importer:
        expected = importer.add_bytes(b"from the plan").cid
    assert not store.has(expected)
    planned = dataclasses.replace(plan, runtime_env={"env_vars": {"EX_FROM_PLAN": "from the plan"}})
    reported: list[list[SliceOutcome]] = []
    failures = execute(ray, planned, str(tmp_path / "run"), reported.append)
    assert failures == []
    assert len(reported) == len(plan.batches)
    assert sorted(o.index for batch in reported for o in batch) == [0, 1]
    assert {o.output for batch in reported for o in batch} == {expected}
    assert not store.has(expected)  # write=False: computed, not stored
