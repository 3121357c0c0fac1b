"""Checks that gate a run (`Order.check_on_run`): the Order's checks run on the merged output before its
BOM is recorded; one that fails fails the run, with nothing indexed, pinned or signed, and a re-run
merges and checks again without executing the slices.

Functions that run in Ray workers are captured by their source file, so each job is a module of its own
(prefix cr_, a name no other test uses: the session's workers keep the modules they imported).
"""

from __future__ import annotations

import io
import json
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import jobs
import numpy as np
import pytest
from pydantic import ValidationError

from cats import factory
from cats.bom import load as load_bom
from cats.bom.home import Home
from cats.cas import dagcbor
from cats.cas.cid import CID, RAW
from cats.errors import CheckFailed
from cats.factory import outputs
from cats.order import Function, InfraFunction, Order
from cats.order.checks import Check

# c = a @ b, merged on a worker from the slices a.npy and b.npy; wrong by one entry while the file
# `poison` names exists (outside the Order: the same Order fails, then passes once the file is gone)
MATMUL = """
    import io
    import os

    import numpy as np

    def same(data):
        return data

    def product(parts, poison=None):
        a, b = (np.load(io.BytesIO(value)) for value, _ in parts)
        c = a @ b
        if poison is not None and os.path.exists(poison):
            c[3, 7] += 1
        return c
"""

# Each input file holds x; the slice's name says which result it gives: the sums of PARTS contiguous
# ranges of x (the partials a reduction check samples), or the total (off by one when `poison`).
SUMS = """
    import numpy as np

    PARTS = 8

    def sums(path, poison=False):
        x = np.load(path)
        if path.name == "parts.npy":
            return np.array([part.sum() for part in np.array_split(x.ravel(), PARTS)])
        return np.array(x.sum() + (1 if poison else 0))
"""

FREIVALDS = Check(kind="freivalds", a="input:0/a.npy", b="input:0/b.npy", c="output", rounds=20)
FREIVALDS_NAME = "freivalds(a=input:0/a.npy, b=input:0/b.npy, c=output)"
NOTHING = "nothing was recorded (no BOM indexed, pinned or signed)"


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@pytest.fixture
def home(cats_home: Path) -> Iterator[Home]:
    opened = Home.open(cats_home)
    yield opened
    opened.close()


def _matrices(tmp_path: Path, cats_home: Path) -> tuple[CID, np.ndarray]:
    rng = np.random.default_rng(7)
    a, b = rng.integers(-9, 10, (40, 30)), rng.integers(-9, 10, (30, 20))
    inputs = jobs.add(jobs.home_store(cats_home), jobs.folder(tmp_path, {"a.npy": _npy(a), "b.npy": _npy(b)}))
    return inputs, a @ b


def _matmul_order(src: Path, module: str, inputs: CID, poison: Path | None = None,
                  checks: list[Check] | None = None) -> Order:
    merge = Function(entry=f"{module}:product", source=src, params={"poison": str(poison)} if poison else {})
    return Order(function=Function(entry=f"{module}:same", source=src), inputs=[inputs],
                 infra=InfraFunction(split="files", merge=merge), checks=checks or [FREIVALDS], check_on_run=True,
                 name="gated product")


def _recorded_nothing(home: Home) -> None:
    """No run is indexed, no pin kept, no signature made: the home holds no BOM as anyone's result."""
    assert home.index.recent(limit=None) == []
    assert list(home.pins) == []
    assert not home.signatures.folder.exists() or list(home.signatures.folder.iterdir()) == []


# -- the Order's field --------------------------------------------------------------------------------

def test_check_on_run_without_checks_is_refused() -> None:
    code = CID.hash(b"code", RAW)
    with pytest.raises(ValidationError) as info:
        Order(function=Function(entry="m:f", code=code), inputs=[CID.hash(b"in", RAW)], check_on_run=True)
    assert info.value.error_count() == 1
    error = info.value.errors()[0]
    assert error["loc"] == ("check_on_run",) and "no checks to run" in error["msg"]


def test_check_on_run_left_out_at_its_default_keeps_every_cid() -> None:
    code, data = CID.hash(b"code", RAW), CID.hash(b"in", RAW)
    for checks in ([], [FREIVALDS]):
        before = Order(function=Function(entry="m:f", code=code), inputs=[data], checks=checks)
        explicit = Order(function=Function(entry="m:f", code=code), inputs=[data], checks=checks, check_on_run=False)
        assert explicit.block() == before.block() and explicit.cid == before.cid
        assert "check_on_run" not in dagcbor.decode(before.block())
    # the encoding of an Order without the field, as it always was: no key of a field this build added
    assert set(dagcbor.decode(before.block())) == {"function", "inputs", "infra", "structure", "plant", "checks"}
    gated = Order(function=Function(entry="m:f", code=code), inputs=[data], checks=[FREIVALDS], check_on_run=True)
    assert dagcbor.decode(gated.block())["check_on_run"] is True
    assert gated.cid != before.cid  # a gated Order is another job: it never records an unchecked output
    assert Order.model_validate(dagcbor.decode(gated.block())).cid == gated.cid


# -- gated runs -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_correct_product_passes_its_gate(ray_session: str, cats_home: Path, home: Home, tmp_path: Path) -> None:
    src = jobs.module(tmp_path, "cr_matmul_ok", MATMUL)
    inputs, product = _matrices(tmp_path, cats_home)

    run = factory.run(_matmul_order(src, "cr_matmul_ok", inputs), quiet=True)

    assert run.checks is not None and len(run.checks) == 1
    report = run.checks[0]
    assert report.kind == "freivalds" and report.passed and report.bytes_fetched > 0
    assert report.false_accept_probability == 2.0 ** -20 and report.seed is not None
    assert "0 of 20 random projections differ" in report.detail
    np.testing.assert_array_equal(outputs.read(run.bom, store=home.store), product)
    summary = run.summary()
    assert [c["kind"] for c in summary["checks"]] == ["freivalds"] and summary["checks"][0]["passed"] is True
    # recorded as today: indexed as the Order's result, pinned, signed
    assert home.index.bom_for(str(run.order)) == str(run.bom)
    assert run.bom in home.pins
    assert home.signatures.get(run.bom) is not None
    assert load_bom(home.store, run.bom).outputs == [run.output]
    again = factory.run(_matmul_order(src, "cr_matmul_ok", inputs), quiet=True)
    assert again.reused and again.bom == run.bom and again.checks is None


@pytest.mark.slow
def test_a_wrong_product_fails_its_gate_and_records_nothing(ray_session: str, cats_home: Path, home: Home,
                                                           tmp_path: Path) -> None:
    src = jobs.module(tmp_path, "cr_matmul_bad", MATMUL)
    inputs, product = _matrices(tmp_path, cats_home)
    poison = tmp_path / "poison"
    poison.touch()
    order = _matmul_order(src, "cr_matmul_bad", inputs, poison)

    for _ in range(2):  # a re-run is not `reused`: it merges and checks again, and fails again
        with pytest.raises(CheckFailed) as info:
            factory.run(order, quiet=True)
        message = str(info.value)
        assert "\n" not in message
        assert f"check 1 of 1, {FREIVALDS_NAME}, failed on output" in message
        assert re.search(r" [1-9][0-9]* of 20 random projections differ", message)
        assert NOTHING in message and "a re-run merges and checks again without executing them" in message
        _recorded_nothing(home)

    # the finished slices are kept: once the merge is right, a re-run executes none and records the BOM
    poison.unlink()
    run = factory.run(order, quiet=True)
    assert not run.reused and run.executed == 0 and run.slices == 2
    assert f"order {run.order}:" in message
    assert run.checks is not None and run.checks[0].passed
    np.testing.assert_array_equal(outputs.read(run.bom, store=home.store), product)
    assert home.index.bom_for(str(run.order)) == str(run.bom) and run.bom in home.pins
    assert factory.run(order, quiet=True).reused


@pytest.mark.slow
def test_a_check_that_cannot_run_fails_the_gate(ray_session: str, cats_home: Path, home: Home,
                                                tmp_path: Path) -> None:
    src = jobs.module(tmp_path, "cr_matmul_missing", MATMUL)
    inputs, _ = _matrices(tmp_path, cats_home)
    missing = Check(kind="freivalds", a="input:0/a.npy", b="input:0/nope.npy", c="output")
    order = _matmul_order(src, "cr_matmul_missing", inputs, checks=[FREIVALDS, missing])

    with pytest.raises(CheckFailed) as info:
        factory.run(order, quiet=True)

    message = str(info.value)
    assert "\n" not in message
    assert "check 2 of 2, freivalds(a=input:0/a.npy, b=input:0/nope.npy, c=output), could not run" in message
    assert "nope.npy" in message.split("could not run", 1)[1] and NOTHING in message
    _recorded_nothing(home)


@pytest.mark.slow
@pytest.mark.parametrize("poison", [False, True])
def test_a_sum_gates_its_run(poison: bool, ray_session: str, cats_home: Path, home: Home, tmp_path: Path) -> None:
    x = np.arange(1000, dtype=np.int64).reshape(40, 25)
    src = jobs.module(tmp_path, "cr_sums", SUMS)
    inputs = jobs.add(jobs.home_store(cats_home), jobs.folder(tmp_path, {"parts.npy": _npy(x), "total.npy": _npy(x)}))
    check = Check(kind="reduction", a="input:0/parts.npy", b="output/parts.npy", c="output/total.npy",
                  partitions=8, sampled=3)
    order = Order(function=Function(entry="cr_sums:sums", source=src, takes="path", params={"poison": poison}),
                  inputs=[inputs], checks=[check], check_on_run=True)

    if not poison:
        run = factory.run(order, quiet=True)
        assert run.checks is not None and [(c.kind, c.passed) for c in run.checks] == [("reduction", True)]
        assert "total equals the sum of its 8 partials" in run.checks[0].detail
        assert home.index.bom_for(str(run.order)) == str(run.bom)
        return
    with pytest.raises(CheckFailed) as info:
        factory.run(order, quiet=True)
    message = str(info.value)
    assert "\n" not in message
    assert ("check 1 of 1, reduction(a=input:0/parts.npy, b=output/parts.npy, c=output/total.npy), failed on output"
            in message)
    assert "total DIFFERS from the sum of its 8 partials" in message and NOTHING in message
    _recorded_nothing(home)


# -- the CLI ----------------------------------------------------------------------------------------------

def _order_file(tmp_path: Path, name: str, src: Path, module: str, inputs: CID, poison: Path | None) -> Path:
    path = tmp_path / f"{name}.py"
    params = {"poison": str(poison)} if poison else {}
    path.write_text(textwrap.dedent(f"""
        from pathlib import Path

        from cats.order import Function, InfraFunction, Order
        from cats.order.checks import Check

        merge = Function(entry="{module}:product", source=Path({str(src)!r}), params={params!r})
        order = Order(function=Function(entry="{module}:same", source=Path({str(src)!r})), inputs=["{inputs}"],
                      infra=InfraFunction(split="files", merge=merge),
                      checks=[Check(kind="freivalds", a="input:0/a.npy", b="input:0/b.npy", c="output")],
                      check_on_run=True)
    """))
    return path


@pytest.mark.slow
def test_cli_run_shows_the_checks_and_fails_on_one(ray_session: str, cli, cats_home: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_session)
    src = jobs.module(tmp_path, "cr_cli_matmul", MATMUL)
    inputs, _ = _matrices(tmp_path, cats_home)
    poison = tmp_path / "poison"

    good = _order_file(tmp_path, "cr_cli_good", src, "cr_cli_matmul", inputs, None)
    res = cli("run", good, "--json", cwd=tmp_path)
    assert res.code == 0, res.err
    summary = json.loads(res.out)
    assert summary["reused"] is False
    [check] = summary["checks"]
    assert check["kind"] == "freivalds" and check["passed"] is True and check["bytes_fetched"] > 0
    assert check["false_accept_probability"] == 2.0 ** -20 and isinstance(check["seed"], int)

    poison.touch()
    bad = _order_file(tmp_path, "cr_cli_bad", src, "cr_cli_matmul", inputs, poison)
    for _ in range(2):  # not reused the second time: it fails again, the same way
        line = cli("run", bad, cwd=tmp_path).error_line(
            "Error: order ", f"check 1 of 1, {FREIVALDS_NAME}, failed on output", "random projections differ",
            NOTHING)
        assert "Traceback" not in line and "reused" not in line
    home = Home.open(cats_home)
    try:
        assert [r["bom"] for r in home.index.recent(limit=None)] == [summary["bom"]]  # only the good one
        assert list(home.pins) == [CID.parse(summary["bom"])]
    finally:
        home.close()

    human = cli("run", good, "--force", cwd=tmp_path)
    assert human.code == 0, human.err
    assert "checks passed: freivalds (false accept <= 9.54e-07)" in human.err
