"""Pipelines: an Order whose inputs are Orders runs them first, each stage an Order with its own BOM
naming its upstream BOM as parent; unchanged stages are reused, changed ones reuse the slices they can."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jobs
import pytest

import cats
from cats import factory
from cats.bom import load as load_bom
from cats.bom.home import Home
from cats.cas import dagcbor
from cats.cas.cid import CID, RAW
from cats.cas.store.memory import MemoryStore
from cats.errors import CatsError, StageFailed
from cats.factory import pipeline
from cats.mesh.node.orders import OrderRejected, load_order
from cats.order import Function, InfraFunction, Order
from cats.order.seal import seal

pytestmark = pytest.mark.usefixtures("ray_session")

STAGES = """
from pathlib import Path

import cats

here = Path(__file__).parent

def upper(data):
    return data.upper()

def size(data):
    if data.startswith(b"BOOM"):
        raise ValueError("this stage refuses BOOM")
    return str(len(data)).encode()

def number(data):
    return int(data)

def fn(entry):
    return cats.Function(entry=f"pipeline_job:{entry}", source=Path(__file__))

clean = cats.Order(name="clean", function=fn("upper"), inputs=[here / "data"])
sizes = cats.Order(name="sizes", function=fn("size"), inputs=[clean])
order = cats.Order(name="report", function=fn("number"), inputs=[sizes], infra=cats.InfraFunction(merge="list"))
"""


def _project(tmp_path: Path, files: dict[str, bytes], name: str = "proj") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    jobs.folder(folder, files, name="data")
    return jobs.module(folder, "pipeline_job", STAGES)


def _run(script: Path, home: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "cats", "run", "--json", str(script)], capture_output=True,
                          env={**os.environ, "CATS_HOME": str(home)}, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout.decode().splitlines()[-1])


def test_a_pipeline_runs_its_stages_in_order_and_links_them_as_parents(cli, cats_home: Path, tmp_path: Path) -> None:
    files = {f"f{i}.txt": b"line\n" * (i + 1) for i in range(4)}
    script = _project(tmp_path, files)
    first = _run(script, cats_home)
    stages = first["stages"]
    assert [s["executed"] for s in stages] == [4, 4, 4] and not any(s["reused"] for s in stages)
    assert (stages[-1]["bom"], stages[-1]["output"], stages[-1]["order"]) == \
        (first["bom"], first["output"], first["order"])
    home = Home.open(cats_home)
    try:
        boms = [load_bom(home.store, CID.parse(s["bom"])) for s in stages]
        assert boms[1].inputs == [CID.parse(stages[0]["output"])]  # each stage reads its upstream's output
        assert boms[1].parents == [CID.parse(stages[0]["bom"])]  # and names the BOM that made it
        assert boms[2].parents == [CID.parse(stages[1]["bom"])]
        assert [cats.read(c, home=home) for c in cats.read(first["bom"], home=home)] == [5 * (i + 1) for i in range(4)]
    finally:
        home.close()
    verified = cli("verify", "--recursive", "--json", first["bom"])
    assert verified.code == 0, verified.err
    assert json.loads(verified.out)["verified"] is True

    again = _run(script, cats_home)  # nothing changed: every stage is reused, nothing executes
    assert [(s["bom"], s["executed"], s["reused"]) for s in again["stages"]] == [(s["bom"], 0, True) for s in stages]
    assert again["bom"] == first["bom"]
    plan = cli("dag", script)
    assert plan.code == 0 and "every stage is current" in plan.out, plan.out


def test_a_changed_input_reruns_its_stages_reusing_every_unchanged_slice(cli, cats_home: Path,
                                                                       tmp_path: Path) -> None:
    files = {f"f{i}.txt": f"line {i}\n".encode() for i in range(5)}
    script = _project(tmp_path, files)
    first = _run(script, cats_home)
    (script.parent / "data" / "f2.txt").write_bytes(b"a longer line now\n")

    plan = cli("dag", "--json", script)
    assert plan.code == 0, plan.err
    assert [(s["state"], s["upstream"]) for s in json.loads(plan.out)] == \
        [("run", []), ("waits", [0]), ("waits", [1])]
    assert "bom" not in json.loads(plan.out)[0]

    second = _run(script, cats_home)
    assert [(s["executed"], s.get("reused_slices", 0)) for s in second["stages"]] == [(1, 4), (1, 4), (1, 4)]
    assert second["bom"] != first["bom"]
    # exactly the output of a run from scratch, in a home that never saw the first run
    scratch = _run(_project(tmp_path, {**files, "f2.txt": b"a longer line now\n"}, name="scratch"),
                   tmp_path / "fresh-home")
    assert [s["executed"] for s in scratch["stages"]] == [5, 5, 5]
    assert scratch["output"] == second["output"] and scratch["bom"] != second["bom"]


def test_a_failing_stage_is_named_and_the_stages_before_it_are_kept(cli, cats_home: Path, tmp_path: Path) -> None:
    script = _project(tmp_path, {"a.txt": b"fine\n", "b.txt": b"boom\n"})
    failed = cli("run", script)
    assert failed.code == 1
    line = failed.err.strip().splitlines()[0]  # the line, then the slice's remote traceback
    for culprit in ("Error: stage 2 of 3 (sizes): slice 1 (b.txt)", "stage 1 is recorded"):
        assert culprit in line, line
    assert "ValueError: this stage refuses BOOM" in failed.err
    (script.parent / "data" / "b.txt").write_bytes(b"quiet\n")
    (script.parent / "data" / "a.txt").write_bytes(b"fine\n")
    fixed = _run(script, cats_home)
    # stage 1 reuses the slice that did not change; stage 2's failed run has no BOM a slice could name as
    # its source, so its new Order executes both
    assert [(s["executed"], s.get("reused_slices", 0)) for s in fixed["stages"]] == [(1, 1), (2, 0), (2, 0)]


def test_a_stage_read_by_two_stages_runs_once(cats_home: Path, tmp_path: Path) -> None:
    jobs.module(tmp_path, "diamond_job", "def twice(data):\n    return data * 2\n")
    fn = Function(entry="diamond_job:twice", source=tmp_path / "diamond_job.py")
    base = Order(name="base", function=fn, inputs=[jobs.folder(tmp_path, {"x.txt": b"x"})])
    left = Order(name="left", function=fn, inputs=[base])
    right = Order(name="right", function=fn, inputs=[base, jobs.folder(tmp_path, {"y.txt": b"y"}, "more")])
    top = Order(name="top", function=fn, inputs=[left, right], infra=InfraFunction(merge="list"))
    done = factory.run(top)
    assert done.stages is not None
    # right's slice of base's x.txt is left's (the same function on the same bytes): computed once
    assert [(s.executed, s.reused_slices) for s in done.stages] == [(1, 0), (1, 0), (1, 1), (3, 0)]
    assert [st.name for st in factory.dag(top)] == ["base", "left", "right", "top"]
    assert [st.upstream for st in factory.dag(top)] == [[], [0], [0], [1, 2]]
    assert all(st.state == "current" for st in factory.dag(top))


def test_an_order_input_is_never_sealed_or_admitted_as_it_is(tmp_path: Path) -> None:
    jobs.module(tmp_path, "sealjob", "def f(data):\n    return data\n")
    fn = Function(entry="sealjob:f", source=tmp_path / "sealjob.py")
    upstream = Order(name="up", function=fn, inputs=[tmp_path / "sealjob.py"])
    downstream = Order(function=fn, inputs=[upstream])
    store = MemoryStore()
    with pytest.raises(CatsError, match="input up is an Order"):
        seal(downstream, store)
    with pytest.raises(CatsError, match=r"inputs up \(an Order\)"):
        _ = downstream.sources
    # a node is sent a block whose input is an Order reading a file of the node's: refused before anything runs
    sealed_fn = seal(Order(function=fn, inputs=[tmp_path / "sealjob.py"]), store).function
    hostile = {**Order(function=sealed_fn, inputs=[CID.parse("bafkqaaa")]).model_dump(exclude_none=True),
               "inputs": [Order(function=sealed_fn, inputs=["file:///etc/shadow"]).model_dump(exclude_none=True)]}
    block = dagcbor.encode(hostile)
    cid = CID.hash(block, 0x71)
    store.put(cid, block)
    with pytest.raises(OrderRejected, match="input 0 \\(an Order"):
        load_order(store, cid)


def test_a_failing_stage_raises_stage_failed_from_the_api(cats_home: Path, tmp_path: Path) -> None:
    jobs.module(tmp_path, "failjob", "def f(data):\n    raise RuntimeError('no')\n")
    fn = Function(entry="failjob:f", source=tmp_path / "failjob.py")
    top = Order(name="second", function=fn, inputs=[Order(name="first", function=fn,
                                                          inputs=[jobs.folder(tmp_path, {"a": b"a"})])])
    with pytest.raises(StageFailed, match=r"stage 1 of 2 \(first\)") as raised:
        factory.run(top)
    assert "recorded" not in str(raised.value)


def _chain(n: int) -> list[Order]:
    fn = Function(entry="chain_job:f", code=CID.hash(b"code", RAW))
    chain = [Order(name="stage 0", function=fn, inputs=[CID.hash(b"input", RAW)])]
    for k in range(1, n):
        chain.append(Order(name=f"stage {k}", function=fn, inputs=[chain[-1], chain[-1]]))
    return chain


def test_a_long_chain_and_an_upstream_read_twice_are_ordered_once_each() -> None:
    """Thousands of stages deep is a loop, not a recursion; a stage read twice by one Order is one stage."""
    chain = _chain(5000)
    assert pipeline.stages(chain[-1]) == chain
    made = pipeline.each(chain[-1], lambda stage: stage.model_copy(update={"name": f"{stage.name}!"}))
    assert [s.name for s in pipeline.stages(made)][:2] == ["stage 0!", "stage 1!"]


def test_stages_reading_each_other_in_a_loop_are_refused_naming_them() -> None:
    """Frozen as an Order is, its input list is a list: code can make one read itself, through others."""
    first, second, third = _chain(3)
    first.inputs.append(third)
    with pytest.raises(CatsError, match="read each other in a loop: stage 2 reads stage 1 reads stage 0 reads stage 2"):
        pipeline.stages(third)
