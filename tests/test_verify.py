"""`cats verify`: re-execution from the store alone, each kind of tampering with its own reason,
sampled audits and their odds, recursive lineage, integrity-only checks and environment drift.

Functions that run in Ray workers are captured by their source file, so each job is written into
its own module (prefix vf_, a name no other test uses: workers live for the whole session and keep
the modules they imported) in a temporary folder.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import jobs
import pytest

from cats import factory
from cats.bom import BOM, SliceRecord, write_records
from cats.bom import load as load_bom
from cats.bom import records as bom_records
from cats.cas import dagcbor
from cats.cas.cid import CID, DAG_CBOR, RAW
from cats.cas.dag import put_cbor, walk
from cats.cas.store.local import LocalStore
from cats.errors import CatsError
from cats.factory import execution
from cats.identity import Identity
from cats.order import Function, Order
from cats.verification import drift, sampling
from cats.verification.audit import verify
from cats.verification.report import Drift, Report

FILES = {"a.txt": b"alpha\n", "b.txt": b"bravo bravo\n", "c.txt": b"charlie\n", "d.txt": b"delta\n",
         "e.txt": b"echo echo echo\n"}


# -- helpers (small copies of test_factory's) ------------------------------------------------------
def _copy(store: LocalStore, dest: Path) -> LocalStore:
    shutil.copytree(store.root, dest)
    return LocalStore(dest)


def _reasons(report: Report) -> set[str]:
    return {p.reason for p in report.problems}


def _json(text: str) -> dict:
    """`--json` prints the report and nothing else on stdout."""
    return json.loads(text)


# A deterministic job: the output depends on the data and the recorded seed only.
DETERMINISTIC = """
    def stamp(data, seed):
        return data.upper() + b"#%d" % seed
"""


@dataclass
class Base:
    store: LocalStore
    run: factory.Run
    bom: BOM
    recs: list[SliceRecord]


@pytest.fixture(scope="module")
def base(ray_session: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Base]:
    """One clean 5-slice run shared by the tampering, integrity and drift tests; each copies its store."""
    root = tmp_path_factory.mktemp("vf-base")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CATS_HOME", str(root / "home"))
        mp.delenv("CATS_STORE", raising=False)
        src = jobs.module(root, "vf_base", DETERMINISTIC)
        store = jobs.home_store(root / "home")
        inputs = jobs.add(store, jobs.folder(root, FILES))
        run = factory.run(Order(function=Function(entry="vf_base:stamp", source=src), inputs=[inputs],
                                name="vf-base"), quiet=True)
    bom = load_bom(store, run.bom)
    yield Base(store, run, bom, list(bom_records(store, bom)))


# -- 1. a deterministic job verifies ---------------------------------------------------------------
@pytest.mark.slow
def test_deterministic_job_verifies(ray_session: str, cli, cats_home: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_session)
    src = jobs.module(tmp_path, "vf_det", DETERMINISTIC)
    store = jobs.home_store(cats_home)
    inputs = jobs.add(store, jobs.folder(tmp_path, FILES))
    run = factory.run(Order(function=Function(entry="vf_det:stamp", source=src), inputs=[inputs], name="det"),
                      quiet=True)
    recs = list(bom_records(store, load_bom(store, run.bom)))

    report = verify(store, run.bom)

    assert report.verified, report.problems
    assert report.mode == "reexecute" and report.name == "det" and report.bom == str(run.bom)
    assert report.problems == [] and report.drift == [] and report.sample is None
    assert [s.index for s in report.slices] == list(range(5))
    assert [s.name for s in report.slices] == sorted(FILES)
    for s, rec in zip(report.slices, recs, strict=True):
        assert s.ok and s.reason is None
        assert s.recorded == str(rec.output)
        assert s.recomputed == s.recorded

    text = cli("verify", str(run.bom))
    assert text.code == 0, (text.out, text.err)
    assert "NOT VERIFIED" not in text.out and "VERIFIED" in text.out
    assert "5 of 5 slices" in text.out
    assert f"signed by {Identity.load().did}" in text.out  # the DID as it is (rich once drew ":key:" as an emoji)
    assert str(run.bom) in text.out.splitlines()[0]  # never wrapped when piped

    res = cli("verify", str(run.bom), "--json")
    assert res.code == 0, (res.out, res.err)
    data = _json(res.out)
    assert data["verified"] is True and data["bom"] == str(run.bom)
    assert data["problems"] == []
    assert [(s["recorded"], s["recomputed"], s["ok"]) for s in data["slices"]] == \
        [(str(r.output), str(r.output), True) for r in recs]


# -- 2. non-deterministic code is caught, slice by slice -------------------------------------------
@pytest.mark.slow
def test_random_job_fails_naming_slices(ray_session: str, cli, cats_home: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_session)
    src = jobs.module(tmp_path, "vf_random", """
        import os

        def noise(data):
            return data + os.urandom(16)
    """)
    store = jobs.home_store(cats_home)
    files = {"r1.txt": b"one\n", "r2.txt": b"two\n", "r3.txt": b"three\n"}
    inputs = jobs.add(store, jobs.folder(tmp_path, files))
    run = factory.run(Order(function=Function(entry="vf_random:noise", source=src), inputs=[inputs]), quiet=True)
    recs = list(bom_records(store, load_bom(store, run.bom)))

    report = verify(store, run.bom)

    assert not report.verified
    assert [s.index for s in report.slices] == [0, 1, 2]
    for s, rec in zip(report.slices, recs, strict=True):
        assert not s.ok and s.reason == "output-differs"
        assert s.recorded == str(rec.output) and s.recomputed and s.recomputed != s.recorded
    assert sorted(p.slice for p in report.problems) == [0, 1, 2]
    assert _reasons(report) == {"output-differs"}
    assert {p.cid for p in report.problems} == {str(r.output) for r in recs}

    res = cli("verify", str(run.bom))
    assert res.code == 1, (res.out, res.err)
    assert "NOT VERIFIED" in res.out and "output-differs" in res.out


# -- 3. each kind of tampering has its own reason --------------------------------------------------
Tamper = Callable[[LocalStore, Base], tuple[CID, set[str], int | None]]


def _alter_output(store: LocalStore, b: Base) -> tuple[CID, set[str], int | None]:
    jobs.tamper(store, b.recs[1].output)
    return b.run.bom, {str(b.recs[1].output)}, 1


def _alter_bom(store: LocalStore, b: Base) -> tuple[CID, set[str], int | None]:
    jobs.tamper(store, b.run.bom)
    return b.run.bom, {str(b.run.bom)}, None


def _alter_code(store: LocalStore, b: Base) -> tuple[CID, set[str], int | None]:
    blocks = list(walk(store, b.bom.code))
    leaves = [c for c in blocks if c != b.bom.code]  # the wrapped source file (raw leaves: read, not just has)
    assert leaves and all(c.codec == RAW for c in leaves)
    for cid in leaves:
        jobs.tamper(store, cid)
    return b.run.bom, {str(c) for c in leaves}, None


def _alter_input(store: LocalStore, b: Base) -> tuple[CID, set[str], int | None]:
    jobs.tamper(store, b.recs[2].input.cid)
    return b.run.bom, {str(b.recs[2].input.cid)}, 2


def _alter_input_root(store: LocalStore, b: Base) -> tuple[CID, set[str], int | None]:
    """The input folder's own block: no slice reads it, but re-splitting the inputs does."""
    jobs.tamper(store, b.bom.inputs[0])
    return b.run.bom, {str(b.bom.inputs[0])}, None


def _forge_records(store: LocalStore, b: Base) -> tuple[CID, set[str], int | None]:
    """A new BOM whose records drop a slice: they no longer match the split of the inputs."""
    bom = b.bom.model_copy(update={"slices": write_records(store, b.recs[:-1])})
    block = bom.block()
    cid = CID.hash(block, DAG_CBOR)
    store.put(cid, block)
    return cid, {str(b.bom.inputs[0])}, None


def _delete_block(store: LocalStore, b: Base) -> tuple[CID, set[str], int | None]:
    store.delete(b.recs[3].output)
    assert not store.has(b.recs[3].output)
    return b.run.bom, {str(b.recs[3].output)}, 3


def _forge_bom(store: LocalStore, b: Base) -> tuple[CID, set[str], int | None]:
    """A valid BOM block under a new CID whose record for slice 0 claims another output."""
    forged = b"forged output\n"
    forged_cid = CID.hash(forged, RAW)
    store.put(forged_cid, forged)
    recs = [b.recs[0].model_copy(update={"output": forged_cid}), *b.recs[1:]]
    bom = b.bom.model_copy(update={"slices": write_records(store, recs)})
    block = bom.block()
    cid = CID.hash(block, DAG_CBOR)
    store.put(cid, block)
    assert cid != b.run.bom
    return cid, {str(forged_cid)}, 0


CASES: dict[str, tuple[Tamper, str]] = {
    "output-block-altered": (_alter_output, "output-differs"),
    "bom-block-altered": (_alter_bom, "bom-altered"),
    "code-block-altered": (_alter_code, "code-altered"),
    "input-block-altered": (_alter_input, "input-altered"),
    "input-root-altered": (_alter_input_root, "input-altered"),
    "records-forged": (_forge_records, "bom-altered"),
    "block-deleted": (_delete_block, "block-missing"),
    "forged-bom": (_forge_bom, "output-differs"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_tampering_has_its_own_reason(case: str, base: Base, cats_home: Path, tmp_path: Path) -> None:
    store = _copy(base.store, tmp_path / "blocks")
    assert verify(store, base.run.bom).verified  # the copy is clean before the tampering
    tamper, reason = CASES[case]
    target, culprits, slice_index = tamper(store, base)

    report = verify(store, target)

    assert not report.verified
    assert _reasons(report) == {reason}, report.problems
    named = [p for p in report.problems if p.cid in culprits]
    assert named, (culprits, report.problems)
    assert all(p.reason == reason for p in named)
    if slice_index is not None:
        assert any(p.slice == slice_index for p in named)
        bad = {s.index: s.reason for s in report.slices if not s.ok}
        assert bad == {slice_index: reason}, report.slices
    if reason == "code-altered":
        assert len(report.slices) == 5 and all(s.reason == "code-altered" and not s.ok for s in report.slices)
    if reason == "bom-altered" or case == "input-root-altered":
        assert report.slices == []


# -- 4. sampled audits -----------------------------------------------------------------------------
def _hypergeometric(total: int, checked: int, corrupted: int) -> float:
    """P(at least one of `corrupted` slices in a uniform sample of `checked` of `total`)."""
    if checked + corrupted > total:
        return 1.0
    return 1 - math.comb(total - corrupted, checked) / math.comb(total, checked)


def test_detection_table_is_hypergeometric() -> None:
    table = sampling.detection_table(200, 10)
    assert set(table) == {"1", "2", "10", "20"}  # one bad slice, 1%, 5%, 10%
    for m, p in table.items():
        assert p == pytest.approx(_hypergeometric(200, 10, int(m)), abs=1e-6)
    assert sampling.detection(10, 10, 1) == 1.0 and sampling.detection(10, 3, 0) == 0.0
    assert sampling.detection(10, 2, 9) == 1.0  # any 2 of 10 hit one of 9 bad ones


def test_choose_is_seeded_and_validated() -> None:
    first, seed = sampling.choose(10, 2, None, 7)
    assert seed == 7 and len(first) == 2 and first == sorted(first) and set(first) <= set(range(10))
    assert sampling.choose(10, 2, None, 7) == (first, 7)
    assert len({tuple(sampling.choose(10, 2, None, s)[0]) for s in range(8)}) > 1  # the seed matters
    assert sampling.choose(10, None, None, None) == (list(range(10)), None)
    assert sampling.choose(3, 5, None, 1)[0] == [0, 1, 2]
    with pytest.raises(CatsError, match="not both"):
        sampling.choose(10, 2, 0.5, None)
    with pytest.raises(CatsError, match="fraction"):
        sampling.choose(10, None, 1.5, None)


@pytest.mark.slow
def test_sampled_audit(ray_session: str, cli, cats_home: Path, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_session)
    src = jobs.module(tmp_path, "vf_sample", DETERMINISTIC)
    store = jobs.home_store(cats_home)
    inputs = jobs.add(store, jobs.folder(tmp_path, {f"s{i}.txt": b"slice %d\n" % i for i in range(10)}))
    run = factory.run(Order(function=Function(entry="vf_sample:stamp", source=src), inputs=[inputs]), quiet=True)

    report = verify(store, run.bom, sample=2, seed=7)
    assert report.verified, report.problems
    assert report.sample is not None
    assert (report.sample.total, report.sample.checked, report.sample.seed) == (10, 2, 7)
    picked = [s.index for s in report.slices]
    assert len(picked) == 2 and all(s.ok for s in report.slices)
    assert report.sample.detection == {"1": pytest.approx(_hypergeometric(10, 2, 1), abs=1e-6)}
    assert report.sample.detection["1"] == pytest.approx(0.2, abs=1e-6)  # 1 - C(9,2)/C(10,2) = 1 - 36/45
    assert [s.index for s in verify(store, run.bom, sample=2, seed=7).slices] == picked

    # without a seed one is drawn and reported; giving it back reproduces the sample
    drawn = verify(store, run.bom, sample=3)
    assert drawn.sample is not None and isinstance(drawn.sample.seed, int)
    again = verify(store, run.bom, sample=3, seed=drawn.sample.seed)
    assert [s.index for s in again.slices] == [s.index for s in drawn.slices]

    # --fraction: ceil(10 * 0.25) = 3 slices
    part = verify(store, run.bom, fraction=0.25, seed=1)
    assert part.verified and part.sample is not None
    assert part.sample.checked == len(part.slices) == 3
    assert part.sample.detection["1"] == pytest.approx(_hypergeometric(10, 3, 1), abs=1e-6)

    # the CLI draws the same sample in another process
    res = cli("verify", str(run.bom), "--sample", "2", "--seed", "7", "--json")
    assert res.code == 0, (res.out, res.err)
    data = _json(res.out)
    assert data["sample"]["checked"] == 2 and data["sample"]["seed"] == 7 and data["sample"]["total"] == 10
    assert [s["index"] for s in data["slices"]] == picked

    text = cli("verify", str(run.bom), "--fraction", "0.25", "--seed", "1")
    assert text.code == 0, (text.out, text.err)
    assert "sampled 3 of 10 slices (seed 1)" in text.out

    cli("verify", str(run.bom), "--sample", "2", "--fraction", "0.5").error_line("--sample", "--fraction")


# -- 5. recursive verification over a lineage ------------------------------------------------------
@pytest.mark.slow
def test_recursive_chain(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    src = jobs.module(tmp_path, "vf_chain", """
        def upper(data):
            return data.upper()

        def flip(data):
            return data[::-1]

        def double(data):
            return data * 2
    """)
    store = jobs.home_store(cats_home)
    inputs = jobs.add(store, jobs.folder(tmp_path, {"x.txt": b"one\n", "y.txt": b"two\n"}))
    a = factory.run(Order(function=Function(entry="vf_chain:upper", source=src), inputs=[inputs], name="A"),
                    quiet=True)
    b = factory.run(Order(function=Function(entry="vf_chain:flip", source=src), inputs=[a.output], name="B"),
                    quiet=True)
    c = factory.run(Order(function=Function(entry="vf_chain:double", source=src), inputs=[b.output], name="C"),
                    quiet=True)

    report = verify(store, c.bom, recursive=True)

    assert report.verified, report
    assert [x.bom for x in report.ancestors] == [str(b.bom)]
    parent = report.ancestors[0]
    assert parent.verified and parent.name == "B" and len(parent.slices) == 2
    assert [x.bom for x in parent.ancestors] == [str(a.bom)]
    grand = parent.ancestors[0]
    assert grand.verified and grand.name == "A" and grand.ancestors == [] and len(grand.slices) == 2
    assert verify(store, c.bom).ancestors == []  # only when asked

    store.delete(a.bom)
    report = verify(store, c.bom, recursive=True)

    assert not report.verified
    assert report.problems == []  # C itself is fine
    parent = report.ancestors[0]
    assert not parent.verified and parent.problems == [] and all(s.ok for s in parent.slices)
    grand = parent.ancestors[0]
    assert grand.bom == str(a.bom) and not grand.verified
    assert [(p.reason, p.cid) for p in grand.problems] == [("block-missing", str(a.bom))]


# -- 6. integrity only: no Ray ---------------------------------------------------------------------
@pytest.mark.slow
def test_integrity_needs_no_ray(base: Base, cli, cats_home: Path, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    def no_ray(*args: object, **kwargs: object) -> None:
        raise AssertionError("an integrity check must not touch Ray")

    monkeypatch.setattr(execution, "connect", no_ray)  # re-execution joins Ray through the Factory
    store = _copy(base.store, cats_home / "blocks")  # the CLI's default store too
    with pytest.raises(AssertionError, match="must not touch Ray"):
        verify(store, base.run.bom)  # proves the patch is on the re-execution path

    report = verify(store, base.run.bom, integrity=True)

    assert report.verified, report.problems
    assert report.mode == "integrity" and report.slices == []
    reachable = {*walk(store, base.bom.code), *walk(store, base.bom.inputs[0]), *walk(store, base.bom.outputs[0])}
    assert report.blocks_checked >= len(reachable) > 0

    altered = base.recs[0].input.cid
    jobs.tamper(store, altered)
    report = verify(store, base.run.bom, integrity=True)

    assert not report.verified
    assert [(p.reason, p.cid) for p in report.problems] == [("input-altered", str(altered))]

    res = cli("verify", str(base.run.bom), "--integrity")  # no RAY_ADDRESS: it would start a Ray if it tried
    assert res.code == 1, (res.out, res.err)
    assert "input-altered" in res.out and "blocks checked" in res.out


# -- 7. environment drift is reported, never a failure ---------------------------------------------
@pytest.mark.slow
def test_environment_drift(base: Base, cats_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _copy(base.store, tmp_path / "blocks")
    recorded = dagcbor.decode(store.get(base.bom.structure.lock))
    assert "pydantic" in recorded and "vf-not-a-package" not in recorded
    current = {**recorded, "pydantic": "0.0.0+vf", "vf-not-a-package": "1.2.3"}
    current_cid = put_cbor(store, dict(sorted(current.items())))
    assert current_cid != base.bom.structure.lock
    monkeypatch.setattr(drift, "environment_lock", lambda _store: current_cid)

    expected = [Drift(package="pydantic", recorded=recorded["pydantic"], current="0.0.0+vf"),
                Drift(package="vf-not-a-package", recorded=None, current="1.2.3")]
    for integrity in (True, False):
        report = verify(store, base.run.bom, integrity=integrity)
        assert report.drift == expected
        assert report.verified and report.problems == []

    # the same lock is no drift
    monkeypatch.setattr(drift, "environment_lock", lambda _store: base.bom.structure.lock)
    assert verify(store, base.run.bom, integrity=True).drift == []

    # a recorded lock that is gone or altered is a problem of the lineage, not a crash of the drift report
    monkeypatch.setattr(drift, "environment_lock", lambda _store: current_cid)
    lock = base.bom.structure.lock
    jobs.tamper(store, lock)
    for integrity in (True, False):
        report = verify(store, base.run.bom, integrity=integrity)
        assert not report.verified and report.drift == []
        assert [(p.reason, p.cid) for p in report.problems] == [("bom-altered", str(lock))]
    store.delete(lock)
    for integrity in (True, False):
        report = verify(store, base.run.bom, integrity=integrity)
        assert not report.verified
        assert [(p.reason, p.cid) for p in report.problems] == [("block-missing", str(lock))]



# -- 8. the Order's cheap validators run with verification ---------------------------------------------
MATMUL = """
    import io

    import numpy as np

    def same(data):
        return data

    def product(parts, poison=False):
        a, b = (np.load(io.BytesIO(value)) for value, _ in parts)
        c = a @ b
        if poison:
            c[3, 7] += 1.0
        return c
"""


@pytest.mark.slow
@pytest.mark.parametrize("poison", [False, True])
def test_freivalds_check_runs_with_verify(poison: bool, ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    """A deterministic but wrong product re-executes to the same CIDs; only the check can catch it."""
    import io

    import numpy as np

    from cats.order import InfraFunction
    from cats.order.checks import Check

    name = f"vf_matmul_{int(poison)}"
    src = jobs.module(tmp_path, name, MATMUL)
    rng = np.random.default_rng(1)
    arrays = {}
    for key in ("a", "b"):
        buf = io.BytesIO()
        np.save(buf, rng.random((40, 40)))
        arrays[f"{key}.npy"] = buf.getvalue()
    store = jobs.home_store(cats_home)
    inputs = jobs.add(store, jobs.folder(tmp_path, arrays))
    merge = Function(entry=f"{name}:product", source=src, params={"poison": poison})
    order = Order(function=Function(entry=f"{name}:same", source=src), inputs=[inputs],
                  infra=InfraFunction(split="files", merge=merge),
                  checks=[Check(kind="freivalds", a="input:0/a.npy", b="input:0/b.npy", c="output", rounds=20)])
    result = factory.run(order)

    report = verify(store, result.bom, seed=5)

    assert len(report.checks) == 1
    check = report.checks[0]
    assert check["kind"] == "freivalds" and check["bytes_fetched"] > 0
    assert check["false_accept_probability"] <= 2.0 ** -20
    assert all(s.ok for s in report.slices)  # re-execution alone sees nothing wrong
    assert check["passed"] is (not poison)
    assert report.verified is (not poison)
    if poison:
        assert _reasons(report) == {"check-failed"}
