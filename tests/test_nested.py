"""Nested Orders: a slice submits sub-Orders through the Factory it runs under (`cats.factory.submit`).

Children are attributed to their slices (BOM, Order, executor node and DID, duration, attempts),
fail their slice with a message naming them, are re-run and timed out as asked, never deadlock a
Ray whose every CPU runs a parent slice, and are answered from the BOM when a parent is verified.
Each job lives in a module of its own (prefix nx_): the session's workers keep what they imported.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import jobs
import pytest

from cats import factory
from cats.bom import BOM, Invoice, SliceRecord, records, write_records
from cats.bom import lineage as lin
from cats.bom import load as load_bom
from cats.bom.child import Child, Executor
from cats.bom.signatures import Signatures
from cats.cas import reader
from cats.cas.cid import CID, DAG_CBOR, RAW
from cats.cas.dag import put_cbor
from cats.cas.store.local import LocalStore
from cats.cas.store.memory import MemoryStore
from cats.errors import CatsError, SliceFailed
from cats.order import Function, Order, Plant
from cats.order.infra import Slice
from cats.order.structure import Structure
from cats.verification.audit import verify

FILES = {"a.txt": b"alpha\n", "b.txt": b"bravo bravo\n", "c.txt": b"charlie\n"}

# A parent that hands each of its slices to a child Order and returns the child's output, upper-cased.
PARENT = """
    from cats import factory
    from cats.cas import reader
    from cats.order import Function, InfraFunction, Order, Plant

    def reverse(data):
        return data[::-1]

    def parent(path, timeout_s=None, retries=0, child="reverse", child_params=None):
        child_order = Order(function=Function.of(globals()[child], **(child_params or {})), inputs=[path],
                            infra=InfraFunction(merge="concat"), name=f"child of {path.name}")
        run = factory.submit(child_order, timeout_s=timeout_s, retries=retries)
        return b"".join(reader.read(factory.slice_store(), run.output)).upper()
"""


def _parent_module(tmp_path: Path, name: str, extra: str = "") -> Path:
    return jobs.module(tmp_path, name, PARENT + extra)


def _parent_order(src: Path, inputs: CID, **params: object) -> Order:
    return Order(function=Function(entry=f"{src.stem}:parent", source=src, takes="path", params=params),
                 inputs=[inputs], name="parent")


def _cat(store: LocalStore, cid: CID) -> bytes:
    return b"".join(reader.read(store, cid))


def _tree(store: LocalStore, cid: CID) -> dict[str, bytes]:
    return {name: _cat(store, child) for name, child, _ in reader.entries(store, cid)}


def _worker_did() -> str:
    """The identity of the session's Ray workers: they, not this test's CATS_HOME, run the children
    (a local Ray started by `cats run` shares the caller's CATS_HOME, so there it is the caller's)."""
    import ray

    def did() -> str:
        from cats.identity import Identity

        return Identity.load().did

    return ray.get(ray.remote(did).options(num_cpus=0).remote())



# -- 1. attribution, memoization, verification and lineage ------------------------------------------
@pytest.mark.slow
def test_children_are_attributed_to_their_slices(ray_session: str, cli, cats_home: Path,
                                                 tmp_path: Path) -> None:
    src = _parent_module(tmp_path, "nx_attr")
    store = jobs.home_store(cats_home)
    inputs = jobs.add(store, jobs.folder(tmp_path, FILES))
    order = _parent_order(src, inputs)

    result = factory.run(order, quiet=True)

    assert _tree(store, result.output) == {name: data[::-1].upper() for name, data in FILES.items()}
    bom = load_bom(store, result.bom)
    recs = list(records(store, bom))
    did = _worker_did()
    kids: list[tuple[int, Child]] = [(r.index, c) for r in recs for c in r.children or ()]
    assert [i for i, _ in kids] == [0, 1, 2]  # one child per slice, each attributed to its slice
    assert bom.children == sorted(c.bom for _, c in kids)
    for (i, child), name in zip(kids, sorted(FILES), strict=True):
        child_bom = load_bom(store, child.bom)
        assert child_bom.name == f"child of {name}" and child_bom.order == child.order
        assert _cat(store, child_bom.outputs[0]) == FILES[name][::-1]
        assert child.executor == Executor(node=child_bom.invoice.executor, did=did)
        assert child.attempts == 1 and 0 < child.duration_s < recs[i].duration_s
        envelope = Signatures().get(child.bom)  # brought back to the parent's node with the slice record
        assert envelope is not None and envelope.signers() == [did]
    assert Signatures().get(result.bom).signers() != []

    again = factory.run(order, quiet=True)  # memoized: the same BOM, children and all
    assert again.reused and again.bom == result.bom
    forced = factory.run(order, force=True, quiet=True)  # slices run again; their children are memoized
    assert forced.bom != result.bom and load_bom(store, forced.bom).children == bom.children

    report = verify(store, result.bom)  # re-executes the parent; each submit is answered from the BOM
    assert report.verified, report.problems
    assert [s.ok for s in report.slices] == [True] * 3 and report.children == []
    deep = verify(store, result.bom, recursive=True)
    assert deep.verified and [c.bom for c in deep.children] == [str(c) for c in bom.children]
    assert all(c.verified and c.signers == [did] and len(c.slices) == 1 for c in deep.children)

    g = lin.graph(store, result.bom)
    assert {(p, c) for p, c, nested in g.edges(data="nested") if nested} == \
        {(str(result.bom), str(c)) for c in bom.children}
    assert lin.ancestors(store, result.bom) == set()
    shown = cli("bom", "show", str(result.bom))
    assert shown.code == 0, shown.err
    for i, child in kids:
        assert f"slice {i}: {child.bom} by {child.executor.node} {did}, " in shown.out
    tree = cli("lineage", str(result.bom))
    assert tree.code == 0 and "sub-Orders" in tree.out and all(str(c) in tree.out for c in bom.children)

    child = kids[1][1]
    jobs.tamper(store, load_bom(store, child.bom).outputs[0])
    report = verify(store, result.bom)
    assert not report.verified
    assert [(p.reason, p.slice) for p in report.problems] == [("input-altered", 1)]  # the slice read it
    deep = verify(store, result.bom, recursive=True)
    assert not deep.verified
    assert [c.verified for c in deep.children] == [c != child.bom for c in bom.children]
    bad = next(c for c in deep.children if not c.verified)
    assert {p.reason for p in bad.problems} == {"output-differs"}


# -- 2. failures, retries, timeouts ----------------------------------------------------------------
@pytest.mark.slow
def test_failing_child_fails_its_slice_naming_it(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    src = _parent_module(tmp_path, "nx_fail", """
    def broken(data):
        raise ValueError("the child refuses " + data.decode().strip())
    """)
    store = jobs.home_store(cats_home)
    inputs = jobs.add(store, jobs.folder(tmp_path, {"a.txt": b"alpha\n"}))

    with pytest.raises(SliceFailed) as failed:
        factory.run(_parent_order(src, inputs, child="broken"), quiet=True)

    message = str(failed.value)
    assert re.search(r"ChildFailed: child Order bafyrei\w+ of slice 0 failed on all 1 attempt\(s\); attempt 1 "
                     r"failed: slice 0 \(\w+\) of order bafyrei\w+ failed", message), message
    assert "ValueError: the child refuses alpha" in message


RETRIED = """
    def flaky(data, flag):
        import os

        if data.startswith(b"second") and not os.path.exists(flag):
            open(flag, "w").close()
            raise RuntimeError("the first run of this slice fails")
        return data

    def twice(path, flag, retries):
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "1").write_bytes(b"first " + path.read_bytes())
            (Path(tmp) / "2").write_bytes(b"second " + path.read_bytes())
            child = Order(function=Function.of(flaky, flag=flag), inputs=[Path(tmp)], name="flaky")
            return str(factory.submit(child, retries=retries).output)
"""


@pytest.mark.slow
def test_failed_child_is_rerun_resuming(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    src = _parent_module(tmp_path, "nx_retry", RETRIED)
    store = jobs.home_store(cats_home)
    inputs = jobs.add(store, jobs.folder(tmp_path, {"a.txt": b"alpha\n"}))
    order = Order(function=Function(entry="nx_retry:twice", source=src, takes="path",
                                    params={"flag": str(tmp_path / "flag"), "retries": 1}), inputs=[inputs])

    result = factory.run(order, quiet=True)

    [rec] = records(store, load_bom(store, result.bom))
    [child] = rec.children or []
    assert child.attempts == 2
    invoice = load_bom(store, child.bom).invoice
    assert (invoice.executed, invoice.resumed) == (1, 1)  # the second run ran only the slice that had failed
    assert _tree(store, CID.parse(_cat(store, rec.output).decode())) == {"1": b"first alpha\n",
                                                                         "2": b"second alpha\n"}


@pytest.mark.slow
def test_child_timeout_cancels_it(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    import ray

    src = _parent_module(tmp_path, "nx_slow", """
    def slow(data):
        import time

        time.sleep(120)
        return data
    """)
    store = jobs.home_store(cats_home)
    inputs = jobs.add(store, jobs.folder(tmp_path, {"a.txt": b"alpha\n"}))
    started = time.monotonic()

    with pytest.raises(SliceFailed) as failed:
        factory.run(_parent_order(src, inputs, child="slow", timeout_s=3, retries=2), quiet=True)

    assert time.monotonic() - started < 60
    assert re.search(r"child Order bafyrei\w+ of slice 0 timed out after 3 s \(attempt 1 of 3\)", str(failed.value))
    deadline = time.monotonic() + 30  # the child's driver and its slice were cancelled: every CPU comes back
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]


@pytest.mark.slow
def test_no_deadlock_when_every_cpu_runs_a_parent(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    """Two CPUs, four parent slices in batches of one: both CPUs hold a parent slice waiting for its
    child, whose own slices need a CPU; the waiting slices lend theirs."""
    import ray

    src = _parent_module(tmp_path, "nx_busy", """
    def pause(data):
        import time

        time.sleep(0.5)
        return data[::-1]
    """)
    store = jobs.home_store(cats_home)
    files = {f"{k}.txt": f"file {k}\n".encode() for k in range(4)}
    inputs = jobs.add(store, jobs.folder(tmp_path, files))
    order = _parent_order(src, inputs, child="pause").model_copy(update={"plant": Plant(batch=1, timeout_s=60)})
    assert ray.cluster_resources()["CPU"] == 2

    started = time.monotonic()
    result = factory.run(order, quiet=True)
    took = time.monotonic() - started

    assert _tree(store, result.output) == {name: data[::-1].upper() for name, data in files.items()}
    assert len(load_bom(store, result.bom).children) == 4
    assert took < 60, took  # each parent slice's timeout (60 s) would fail a deadlocked run


PICKY = """
    def picky(path, marker):
        import os

        if path.name == "b.txt" and not os.path.exists(marker):
            raise ValueError("not yet")
        return parent(path)
"""


@pytest.mark.slow
def test_resumed_parent_keeps_children(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    src = _parent_module(tmp_path, "nx_resume", PICKY)
    store = jobs.home_store(cats_home)
    inputs = jobs.add(store, jobs.folder(tmp_path, {"a.txt": b"alpha\n", "b.txt": b"bravo\n"}))
    marker = tmp_path / "marker"
    order = Order(function=Function(entry="nx_resume:picky", source=src, takes="path",
                                    params={"marker": str(marker)}), inputs=[inputs])
    with pytest.raises(SliceFailed, match="not yet"):
        factory.run(order, quiet=True)
    marker.touch()

    result = factory.run(order, quiet=True)

    bom = load_bom(store, result.bom)
    assert (bom.invoice.executed, bom.invoice.resumed) == (1, 1)
    assert [(r.index, len(r.children or [])) for r in records(store, bom)] == [(0, 1), (1, 1)]
    assert len(bom.children) == 2
    assert verify(store, result.bom).verified


# -- 3. verification: a submit answered from the BOM -------------------------------------------------
CHOOSY = """
    def choosy(path, choice, catch=False):
        from pathlib import Path

        from cats.errors import CatsError

        word = Path(choice).read_text()
        child = Order(function=Function.of(reverse), inputs=[path], name=f"child {word}")
        try:
            factory.submit(child)
        except CatsError:
            if not catch:
                raise
        return b"done"
"""


@pytest.mark.slow
def test_verify_fails_on_a_child_order_not_recorded(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    src = _parent_module(tmp_path, "nx_choosy", CHOOSY)
    store = jobs.home_store(cats_home)
    inputs = jobs.add(store, jobs.folder(tmp_path, {"a.txt": b"alpha\n"}))
    choice = tmp_path / "choice"
    choice.write_text("x")
    runs = {catch: factory.run(Order(function=Function(entry="nx_choosy:choosy", source=src, takes="path",
                                                       params={"choice": str(choice), "catch": catch}),
                                     inputs=[inputs]), quiet=True) for catch in (False, True)}
    blocks = len(list(store))
    assert all(verify(store, run.bom).verified for run in runs.values())

    choice.write_text("y")  # the slices now submit another child Order
    raised, caught = (verify(store, runs[catch].bom) for catch in (False, True))

    assert [(p.reason, p.slice) for p in raised.problems] == [("reexecution-failed", 0)]
    assert re.search(r"slice 0 submitted child Order bafyrei\w+, which its BOM does not record "
                     r"\(it records bafyrei\w+\)", raised.problems[0].detail)
    assert [(p.reason, p.slice) for p in caught.problems] == [("child-differs", 0)]  # though it hid the error
    assert len(list(store)) == blocks  # verification wrote nothing


# -- 4. the BOM schema, lineage and listings without Ray --------------------------------------------
def _raw(store: MemoryStore | LocalStore, data: bytes) -> CID:
    cid = CID.hash(data, RAW)
    store.put(cid, data)
    return cid


def _hand_bom(store: MemoryStore | LocalStore, name: str, children: list[Child] | None = None) -> BOM:
    """A one-slice BOM written by hand; with children, its slice submitted them."""
    inp, out = _raw(store, b"input"), _raw(store, f"output of {name}".encode())
    record = SliceRecord(index=0, input=Slice(cid=inp, name="a.txt"), output=out, encoding="bytes", size=6,
                         tsize=6, seed=7, node="host/node", duration_s=0.5, attempts=1, bytes_in=5, children=children)
    return BOM(name=name, order=put_cbor(store, {"order": name}), code=put_cbor(store, {"code": 1}),
               structure=Structure(python="3.11.9", lock=put_cbor(store, {"lock": 1})), inputs=[inp], outputs=[out],
               output_encoding="unixfs-directory", slices=write_records(store, [record]),
               children=sorted({c.bom for c in children or ()}),
               invoice=Invoice(started="2024-05-01T12:00:00.000+00:00", finished="2024-05-01T12:00:01.000+00:00",
                               duration_s=1.0, slices=1, executed=1, resumed=0, bytes_in=5, bytes_out=6,
                               executor="host", nodes=["host/node"], cats_version="0.1.0"))


def test_boms_without_children_keep_their_cids() -> None:
    store = MemoryStore()
    bom = _hand_bom(store, "pinned")
    # computed before sub-Orders existed: neither the BOM nor its records name children when there are none
    assert str(bom.slices[0]) == "bafyreiff4k7auexjyclzwjq5wtkkmyrs2rvmxnglgkqa5usxfgwaex3ipm"
    assert str(CID.hash(bom.block(), DAG_CBOR)) == "bafyreifivakhltte2tu6llxd4hq3uuztky3lgw7gnpaokzq6mozj4t2bs4"
    assert "children" not in bom.model_dump(mode="json")


def test_children_in_the_bom_lineage_and_listings(cats_home: Path, cli) -> None:
    store = jobs.home_store(cats_home)
    child = _hand_bom(store, "kid")
    child_cid = put_cbor(store, child.model_dump(exclude_none=True))
    attributed = Child(bom=child_cid, order=child.order, executor=Executor(node="host-2", did="did:key:z6Mkexample"),
                       duration_s=1.5, attempts=2)
    parent = _hand_bom(store, "mom", [attributed])
    parent_cid = put_cbor(store, parent.model_dump(exclude_none=True))

    assert load_bom(store, parent_cid) == parent and parent.children == [child_cid]
    assert next(records(store, parent)).children == [attributed]
    g = lin.graph(store, parent_cid)
    doc = json.loads(lin.to_json(g))
    assert doc["edges"] == [{"parent": str(parent_cid), "child": str(child_cid), "nested": True}]
    assert lin.ancestors(store, child_cid) == set() and lin.ancestors(store, parent_cid) == set()
    assert f'  "{parent_cid}" -> "{child_cid}" [style=dashed];' in lin.to_dot(g)
    assert f"n_{parent_cid} -.-> n_{child_cid}" in lin.to_mermaid(g)

    shown = cli("bom", "show", str(parent_cid))
    assert shown.code == 0, shown.err
    assert f"sub-Orders   slice 0: {child_cid} by host-2 did:key:z6Mkexample, 1.50 s, 2 attempts" in shown.out
    assert "sub-Orders   -" in cli("bom", "show", str(child_cid)).out
    tree = cli("lineage", str(parent_cid))
    assert tree.code == 0 and "sub-Orders" in tree.out and "kid" in tree.out and "derived" not in tree.out


def test_submit_works_inside_a_slice_only() -> None:
    with pytest.raises(CatsError, match="inside a slice"):
        factory.submit(Order(function=Function(entry="m:f", source=Path("m.py")), inputs=[Path("x")]))
    with pytest.raises(CatsError, match="inside a slice"):
        factory.slice_store()
