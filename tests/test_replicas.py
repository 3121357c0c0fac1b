"""Redundant execution: each slice on N distinct worker processes, a quorum of output CIDs decides.

The liar is real: the job's function lies only in the one process that first creates a marker
file (O_CREAT | O_EXCL), and writes its pid there, so a test knows which replica lied.
Each test writes its module under its own name (workers keep the modules they imported).
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

import jobs
import pytest

from cats import factory
from cats.bom import ReplicaOutcome, SliceRecord
from cats.bom import load as load_bom
from cats.bom import records as bom_records
from cats.bom.index import Index
from cats.cas import dagcbor, reader
from cats.cas.cid import CID
from cats.cas.dag import walk
from cats.cas.importer import Importer
from cats.cas.store.local import LocalStore
from cats.errors import SliceFailed
from cats.factory._execute import quorum
from cats.factory.outcome import SliceOutcome
from cats.order import Function, Order, Plant, Slice

FILES = {"a.txt": b"alpha\n", "b.txt": b"bravo\n", "c.txt": b"charlie\n", "d.txt": b"delta\n", "e.txt": b"echo\n"}
LIES_ON = ("b.txt", "d.txt")  # slices 1 and 3
GARBAGE = b"garbage"

LIAR = f"""
    import os

    _lying = None  # decided once per process: the process that creates the marker keeps lying

    def work(path, marker):
        global _lying
        if _lying is None:
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                _lying = False
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                _lying = True
        if _lying and path.name in {LIES_ON!r}:
            return {GARBAGE!r}
        return path.read_bytes().upper()
"""


# -- helpers ---------------------------------------------------------------------------------------
def _inputs(store: LocalStore, tmp_path: Path) -> CID:
    return jobs.add(store, jobs.folder(tmp_path, FILES))


def _tree(store: LocalStore, cid: CID) -> dict[str, bytes]:
    return {name: b"".join(reader.read(store, child)) for name, child, _ in reader.entries(store, cid)}


def _cid_of(data: bytes) -> CID:
    """The output CID a worker computes for these bytes."""
    with Importer(None, cid_version=1) as importer:
        return importer.add_bytes(data).cid


def _liar_order(tmp_path: Path, store: LocalStore, name: str, plant: Plant) -> tuple[Order, Path]:
    src = jobs.module(tmp_path, name, LIAR)
    marker = tmp_path / f"{name}.liar"  # fresh per test
    order = Order(function=Function(entry=f"{name}:work", source=src, takes="path",
                                    params={"marker": str(marker)}),
                  inputs=[_inputs(store, tmp_path)], plant=plant)
    return order, marker


def _gone(pid: int, within_s: float = 15.0) -> bool:
    deadline = time.time() + within_s
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


HONEST = {name: data.upper() for name, data in FILES.items()}


# -- without Ray -----------------------------------------------------------------------------------
def test_one_replica_keeps_encodings() -> None:
    """Orders and slice records of unreplicated runs encode exactly as before replication existed."""
    assert set(Plant().model_dump()) == {"address", "num_cpus", "resources", "retries", "timeout_s", "batch"}
    assert Plant(replicas=3).model_dump(exclude_none=True)["replicas"] == 3
    assert Plant(replicas=3, on_disagreement="mark").model_dump()["on_disagreement"] == "mark"
    assert Plant.model_validate(Plant(replicas=3, on_disagreement="mark").model_dump()) == \
        Plant(replicas=3, on_disagreement="mark")
    with pytest.raises(ValueError):
        Plant(replicas=0)
    out = _cid_of(b"x")
    fields = dict(index=0, input=Slice(cid=out), output=out, encoding="bytes", size=1, tsize=1, seed=7,
                  node="n", duration_s=0.1, attempts=1, bytes_in=1)
    plain = SliceRecord(**fields).model_dump(exclude_none=True)
    assert "replicas" not in plain and "agreed" not in plain
    marked = SliceRecord(**fields, replicas=[ReplicaOutcome(node="n", worker=1, output=out)], agreed=True)
    decoded = dagcbor.decode(dagcbor.encode(marked.model_dump(exclude_none=True)))
    assert SliceRecord.model_validate(decoded) == marked


def test_quorum_needs_a_strict_majority() -> None:
    a, b = _cid_of(b"A"), _cid_of(b"B")

    def said(output: CID | None, pid: int) -> SliceOutcome:
        if output is None:
            return SliceOutcome(index=4, error="Traceback ...\nValueError: boom", node="n", worker=pid)
        return SliceOutcome(index=4, output=output, encoding="bytes", node="n", worker=pid)

    kept, failure = quorum([said(a, 1), said(a, 2), said(a, 3)], "fail")
    assert failure is None and kept is not None and kept.agreed is True and kept.output == a
    kept, failure = quorum([said(a, 1), said(b, 2), said(a, 3)], "mark")
    assert failure is None and kept is not None and kept.agreed is False
    assert kept.replicas is not None and [o.output for o in kept.replicas] == [a, b, a]
    kept, failure = quorum([said(a, 1), said(None, 2), said(a, 3)], "fail")
    assert kept is None and failure is not None and failure.disagreement and failure.error is not None
    assert "pid 2" in failure.error and "ValueError: boom" in failure.error
    for tie in ([said(a, 1), said(a, 2), said(b, 3), said(b, 4)], [said(a, 1), said(None, 2)]):
        kept, failure = quorum(tie, "mark")
        assert kept is None and failure is not None and "no majority" in (failure.error or "")
    kept, failure = quorum([said(None, 1), said(None, 2), said(None, 3)], "mark")
    assert kept is None and failure is not None and not failure.disagreement and failure.error is not None
    assert "all 3 replicas failed" in failure.error and "Traceback" in failure.error


# -- on Ray ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_honest_replicas_agree(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    src = jobs.module(tmp_path, "rp_honest", """
        def work(path):
            return path.read_bytes().upper()
    """)
    store = jobs.home_store(cats_home)
    order = Order(function=Function(entry="rp_honest:work", source=src, takes="path"),
                  inputs=[_inputs(store, tmp_path)], plant=Plant(replicas=3))

    result = factory.run(order)

    assert _tree(store, result.output) == HONEST
    assert result.summary()["replicas"] == 3 and result.summary()["disagreed"] == 0
    recs = list(bom_records(store, load_bom(store, result.bom)))
    assert len(recs) == 5
    pids = set()
    for r in recs:
        assert r.agreed is True
        assert r.replicas is not None and len(r.replicas) == 3
        assert [o.output for o in r.replicas] == [r.output] * 3
        assert len({o.worker for o in r.replicas}) == 3  # three distinct processes
        assert r.node in {o.node for o in r.replicas}
        pids |= {o.worker for o in r.replicas}
    assert len(pids) == 3  # the same three actors ran every slice
    assert all(pid is not None and _gone(pid) for pid in pids)  # the actors were killed afterwards

    # the same Order with one replica is a different Order whose records keep their old shape
    single = factory.run(order.model_copy(update={"plant": Plant()}))
    assert single.order != result.order and single.output == result.output
    assert "disagreed" not in single.summary() and single.summary()["replicas"] == 1
    raw = dagcbor.decode(store.get(load_bom(store, single.bom).slices[0]))
    assert all("replicas" not in r and "agreed" not in r for r in raw)
    assert "replicas" not in dagcbor.decode(store.get(single.order))["plant"]


@pytest.mark.slow
def test_liar_fails_the_run(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    store = jobs.home_store(cats_home)
    order, marker = _liar_order(tmp_path, store, "rp_liar_fail", Plant(replicas=3))

    with pytest.raises(SliceFailed) as failed:
        factory.run(order)

    liar = int(marker.read_text())
    message = str(failed.value)
    first = message.splitlines()[0]
    assert "replicas disagreed on 2 slice(s)" in first
    assert "slice 1 (b.txt), slice 3 (d.txt);" in first
    assert "a.txt" not in message and "c.txt" not in message and "e.txt" not in message
    assert f"pid {liar}" in message and str(_cid_of(GARBAGE)) in message
    assert str(_cid_of(b"BRAVO\n")) in message and "2 of 3 replicas agree" in message
    index = Index(cats_home / "index.sqlite")
    try:
        order_cid = CID.parse(message.split("of order ", 1)[1].split(":", 1)[0])
        assert sorted(index.done_slices(str(order_cid))) == [0, 2, 4]  # the agreed slices are kept
        assert index.bom_for(str(order_cid)) is None
    finally:
        index.close()


@pytest.mark.slow
def test_liar_is_marked(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    store = jobs.home_store(cats_home)
    order, marker = _liar_order(tmp_path, store, "rp_liar_mark", Plant(replicas=3, on_disagreement="mark"))

    result = factory.run(order)

    liar = int(marker.read_text())
    assert _tree(store, result.output) == HONEST  # the majority won
    assert result.summary()["disagreed"] == 2
    recs = {r.input.name: r for r in bom_records(store, load_bom(store, result.bom))}
    garbage = _cid_of(GARBAGE)
    for name, r in recs.items():
        assert r.replicas is not None and len({o.worker for o in r.replicas}) == 3
        assert r.output == _cid_of(FILES[name].upper())
        lying = [o for o in r.replicas if o.worker == liar]
        assert len(lying) == 1
        if name in LIES_ON:
            assert r.agreed is False
            assert lying[0].output == garbage
            assert sorted(str(o.output) for o in r.replicas) == sorted([str(r.output)] * 2 + [str(garbage)])
        else:
            assert r.agreed is True and lying[0].output == r.output
    assert garbage in set(walk(store, result.bom))  # the liar's output is evidence the BOM links


@pytest.mark.slow
def test_two_replicas_have_no_majority(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    store = jobs.home_store(cats_home)
    order, marker = _liar_order(tmp_path, store, "rp_liar_two", Plant(replicas=2, on_disagreement="mark"))

    with pytest.raises(SliceFailed) as failed:
        factory.run(order)

    assert marker.exists()
    first = str(failed.value).splitlines()[0]
    assert "replicas disagreed on 2 slice(s)" in first and "slice 1 (b.txt), slice 3 (d.txt);" in first
    assert "no majority among 2 replicas" in str(failed.value)


@pytest.mark.slow
def test_cli_replicas(ray_session: str, cli, cats_home: Path, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_session)
    store = jobs.home_store(cats_home)
    inputs = _inputs(store, tmp_path)
    order_file = tmp_path / "rp_cli_order.py"
    order_file.write_text(textwrap.dedent(f"""
        from cats.order import Function, Order

        def shout(data):
            return data.upper()

        order = Order(function=Function.of(shout), inputs=["{inputs}"], name="replicated")
    """))

    res = cli("run", order_file, "--replicas", "3", "--json", cwd=tmp_path)

    assert res.code == 0, res.err
    summary = json.loads(res.out.strip().splitlines()[-1])
    assert summary["replicas"] == 3 and summary["disagreed"] == 0 and summary["executed"] == 5
    assert _tree(store, CID.parse(summary["output"])) == HONEST
    bom = load_bom(store, CID.parse(summary["bom"]))
    assert dagcbor.decode(store.get(bom.order))["plant"]["replicas"] == 3
    recs = list(bom_records(store, bom))
    assert all(r.agreed and r.replicas and len({o.worker for o in r.replicas}) == 3 for r in recs)

    bad = cli("run", order_file, "--replicas", "0", cwd=tmp_path)
    assert bad.code != 0 and "replicas" in bad.err


@pytest.mark.slow
def test_replica_timeout_kills_and_replaces_actors(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    """An actor task cannot be force-cancelled, so a replica over its time is killed and replaced."""
    src = jobs.module(tmp_path, "rp_sleepy", """
        import time

        def work(path):
            if path.name == "c.txt":
                time.sleep(120)
            return path.read_bytes()
    """)
    store = jobs.home_store(cats_home)
    order = Order(function=Function(entry="rp_sleepy:work", source=src, takes="path"),
                  inputs=[_inputs(store, tmp_path)], plant=Plant(replicas=3, timeout_s=5, batch=1))

    started = time.perf_counter()
    with pytest.raises(SliceFailed) as failed:
        factory.run(order)

    assert time.perf_counter() - started < 60
    message = str(failed.value)
    assert message.startswith("slice 2 (c.txt) of order ")
    assert "all 3 replicas failed" in message and "timed out after 5.0 s per slice" in message
    index = Index(cats_home / "index.sqlite")
    try:
        order_cid = message.split("of order ", 1)[1].split()[0]
        assert sorted(index.done_slices(order_cid)) == [0, 1, 3, 4]  # batches after c.txt ran on new actors
    finally:
        index.close()
