"""Evaluation keys and reuse: a slice that any finished run computed (same code, entry, parameters,
input and environment) is taken from it instead of executed, and the run's output is exactly what a
run from scratch gives."""

from __future__ import annotations

from pathlib import Path

import jobs
import pytest

from cats import api, factory
from cats.bom import load as load_bom
from cats.bom import records as bom_records
from cats.bom.home import Home
from cats.cas import dagcbor
from cats.cas.cid import CID, DAG_CBOR, RAW
from cats.cas.dag import put_cbor, walk
from cats.cas.store.local import LocalStore
from cats.factory import evaluation
from cats.order import Function, InfraFunction, Order, Plant, Structure
from cats.order.infra import Slice
from cats.verification.audit import verify

pytestmark = pytest.mark.usefixtures("ray_session")

JOB = """
import os

def shout(data, times=1):
    return data.upper() * times

def noisy(data, seed):
    return data + b" " + str(seed).encode()

def mode(data):
    return os.environ.get("MODE", "unset").encode()

def fresh(data):
    return os.urandom(8)

def counted(data, marker, x=0):
    with open(marker, "ab") as f:  # one line per execution
        f.write(data + b"\\n")
    return data[::-1]
"""


def _fn(tmp_path: Path, entry: str, **params: object) -> Function:
    jobs.module(tmp_path, "evaljob", JOB)
    return Function(entry=f"evaljob:{entry}", source=tmp_path / "evaljob.py", params=params)


def _folder(tmp_path: Path, name: str, n: int) -> Path:
    return jobs.folder(tmp_path, {f"f{i:03}.txt": f"line {i}\n".encode() for i in range(n)}, name=name)


def test_a_folder_with_one_file_more_executes_one_slice(cats_home: Path, tmp_path: Path) -> None:
    store = jobs.home_store(cats_home)
    first = factory.run(Order(function=_fn(tmp_path, "shout"), inputs=[_folder(tmp_path, "v1", 30)]))
    second = factory.run(Order(function=_fn(tmp_path, "shout"), inputs=[_folder(tmp_path, "v2", 31)]))
    assert (first.executed, second.executed, second.reused_slices) == (30, 1, 30)
    assert second.summary()["reused_slices"] == 30
    bom = load_bom(store, second.bom)
    assert bom.invoice.reused == 30 and bom.invoice.executed == 1
    recs = list(bom_records(store, bom))
    assert [r.reused_from for r in recs] == [first.bom] * 30 + [None]
    # exactly what a run from scratch gives, in a home that never saw the first run
    fresh = Home.open(tmp_path / "fresh")
    try:
        scratch = factory.run(Order(function=_fn(tmp_path, "shout"), inputs=[_folder(tmp_path, "v3", 31)]),
                              home=fresh)
        assert scratch.executed == 31 and scratch.output == second.output
        assert [r.seed for r in bom_records(fresh.store, load_bom(fresh.store, scratch.bom))] == \
            [r.seed for r in recs]
    finally:
        fresh.close()
    report = verify(store, second.bom)  # a reused slice is re-executed like any other
    assert report.verified and len(report.slices) == 31 and all(s.ok for s in report.slices)


def test_code_parameters_inputs_and_environment_change_the_key(cats_home: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran.log"
    folder = _folder(tmp_path, "in", 3)
    base = Order(function=_fn(tmp_path, "counted", marker=str(marker)), inputs=[folder])
    assert factory.run(base).executed == 3
    assert factory.run(base.model_copy(update={"name": "another name, another Order"})).executed == 0
    assert factory.run(Order(function=_fn(tmp_path, "counted", marker=str(marker), x=1), inputs=[folder])).executed == 3
    assert factory.run(base, force=True).executed == 3  # force executes everything
    (tmp_path / "evaljob.py").write_text((tmp_path / "evaljob.py").read_text() + "\n# changed\n")
    changed = Order(function=Function(entry="evaljob:counted", source=tmp_path / "evaljob.py",
                                      params={"marker": str(marker)}), inputs=[folder])
    assert factory.run(changed).executed == 3
    assert marker.read_bytes().count(b"line") == 12  # 3 + 3 + 3 + 3 executions, none for the renamed Order
    # the environment: the lock and the requirements are in the key
    sealed = Order.model_validate(dagcbor.decode(jobs.home_store(cats_home).get(factory.run(base).order)))
    piece = Slice(cid=CID.parse(str(jobs.add(jobs.home_store(cats_home), folder / "f000.txt"))))
    keys = {evaluation.key(sealed, piece),
            evaluation.key(sealed.model_copy(update={"structure": sealed.structure.model_copy(
                update={"requirements": ["inflection==0.5.1"]})}), piece),
            evaluation.key(sealed.model_copy(update={"structure": sealed.structure.model_copy(
                update={"lock": piece.cid})}), piece),
            evaluation.key(sealed.model_copy(update={"plant": Plant(timeout_s=5, batch=2, confined=True)}), piece)}
    assert len(keys) == 3  # how a slice runs (time limit, batching, confinement) is not in the key


def test_seeds_come_from_the_key_so_seeded_functions_reuse(cats_home: Path, tmp_path: Path) -> None:
    a = factory.run(Order(function=_fn(tmp_path, "noisy"), inputs=[_folder(tmp_path, "a", 4)]))
    b = factory.run(Order(function=_fn(tmp_path, "noisy"), inputs=[_folder(tmp_path, "b", 5)]))
    assert (a.executed, b.executed) == (4, 1)
    store = jobs.home_store(cats_home)
    fresh = Home.open(tmp_path / "fresh")
    try:
        scratch = factory.run(Order(function=_fn(tmp_path, "noisy"), inputs=[_folder(tmp_path, "c", 5)]),
                              home=fresh)
    finally:
        fresh.close()
    assert scratch.output == b.output
    assert len({r.seed for r in bom_records(store, load_bom(store, b.bom))}) == 5


def test_replicated_runs_and_unfinished_runs_offer_and_take_nothing(cats_home: Path, tmp_path: Path) -> None:
    folder = _folder(tmp_path, "r", 3)
    factory.run(Order(function=_fn(tmp_path, "shout", times=2), inputs=[folder]))
    replicated = factory.run(Order(function=_fn(tmp_path, "shout", times=2), inputs=[folder],
                                   plant=Plant(replicas=2)))
    assert replicated.executed == 3 and replicated.reused_slices == 0
    structure = Structure(requirements=[])
    assert factory.run(Order(function=_fn(tmp_path, "shout", times=2), inputs=[folder], structure=structure,
                             name="same evaluations")).executed == 0


def test_a_parquet_shard_more_executes_only_its_row_groups(cats_home: Path, tmp_path: Path) -> None:
    """A new shard in a folder split by `row-groups`, sorting between the others so their slices move:
    a slice's key names its shard and row group, not its place, so only the new row groups execute."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    jobs.module(tmp_path, "rowjob", """
        def rows(table):
            return table.num_rows
    """)
    count = Function(entry="rowjob:rows", source=tmp_path / "rowjob.py", takes="table")
    shards = tmp_path / "shards"
    shards.mkdir()
    for name, rows in (("part-0.parquet", 30), ("part-1.parquet", 12)):
        pq.write_table(pa.table({"v": list(range(rows))}), shards / name, row_group_size=10)
    infra = InfraFunction(split="row-groups", merge="list")
    first = factory.run(Order(function=count, inputs=[shards], infra=infra))
    pq.write_table(pa.table({"v": list(range(15))}), shards / "part-0a.parquet", row_group_size=10)
    second = factory.run(Order(function=count, inputs=[shards], infra=infra))
    assert (first.executed, second.slices, second.executed, second.reused_slices) == (5, 7, 2, 5)
    store = jobs.home_store(cats_home)
    recs = list(bom_records(store, load_bom(store, second.bom)))
    assert [(r.input.name, r.input.row_group, r.reused_from) for r in recs] == [
        ("part-0.parquet", 0, first.bom), ("part-0.parquet", 1, first.bom), ("part-0.parquet", 2, first.bom),
        ("part-0a.parquet", 0, None), ("part-0a.parquet", 1, None),
        ("part-1.parquet", 0, first.bom), ("part-1.parquet", 1, first.bom)]
    fresh = Home.open(tmp_path / "fresh")
    try:
        scratch = factory.run(Order(function=count, inputs=[shards], infra=infra), home=fresh)
    finally:
        fresh.close()
    assert scratch.executed == 7 and scratch.output == second.output


def test_a_file_more_in_the_same_folder_executes_only_it(cats_home: Path, tmp_path: Path) -> None:
    """The folder split by `files` grows in place, the new file sorting first, so every other slice moves."""
    marker = tmp_path / "ran.log"
    folder = _folder(tmp_path, "grows", 6)
    order = Order(function=_fn(tmp_path, "counted", marker=str(marker)), inputs=[folder])
    first = factory.run(order)
    ran = marker.stat().st_size
    (folder / "a-first.txt").write_bytes(b"new file\n")
    second = factory.run(order)
    assert (first.executed, second.slices, second.executed, second.reused_slices) == (6, 7, 1, 6)
    assert marker.read_bytes()[ran:] == b"new file\n\n"  # the second run's one execution


def test_appending_to_a_file_split_by_lines_executes_only_its_last_slices(cats_home: Path, tmp_path: Path) -> None:
    """A range of a stored file is keyed by the leaves that hold it: bytes appended to the file change
    only the slices whose bytes reach its last (partial) leaf, at most two of slices a leaf long."""
    log = tmp_path / "app.log"
    log.write_bytes(b"".join(b"%08d some log line with words\n" % i for i in range(100_000)))  # 3.7 MB
    infra = InfraFunction(split="lines", merge="concat", chunk_bytes=256 * 1024)  # one leaf's bytes
    first = factory.run(Order(function=_fn(tmp_path, "shout"), inputs=[log], infra=infra))
    with open(log, "ab") as f:
        f.write(b"".join(b"%08d appended line\n" % i for i in range(1_000)))  # +0.5%
    second = factory.run(Order(function=_fn(tmp_path, "shout"), inputs=[log], infra=infra))
    assert first.slices >= 12 and second.slices >= first.slices
    assert second.executed <= 2 + (second.slices - first.slices) and second.reused_slices >= first.slices - 2
    fresh = Home.open(tmp_path / "fresh")
    try:
        scratch = factory.run(Order(function=_fn(tmp_path, "shout"), inputs=[log], infra=infra), home=fresh)
    finally:
        fresh.close()
    assert scratch.output == second.output and scratch.executed == scratch.slices


def _other_lock(store: LocalStore, sealed: Order) -> CID:
    """A lock block this machine did not make: the sealed one with one distribution at another version,
    as a run under another environment would record."""
    assert sealed.structure.lock is not None
    dists = dagcbor.decode(store.get(sealed.structure.lock))
    return put_cbor(store, {**dists, "pydantic": "0.0.1"})


def test_a_different_environment_reexecutes_unless_the_order_keys_on_code(cats_home: Path, tmp_path: Path,
                                                                           cli) -> None:
    marker = tmp_path / "ran.log"
    store = jobs.home_store(cats_home)
    folder = _folder(tmp_path, "env", 3)

    def order(**structure: object) -> Order:
        return Order(function=_fn(tmp_path, "counted", marker=str(marker)), inputs=[folder],
                     structure=Structure(**structure))

    first = factory.run(order())
    sealed = Order.model_validate(dagcbor.decode(store.get(first.order)))
    other = _other_lock(store, sealed)
    # by default the environment is in the key: another lock, or another Python, executes every slice
    assert factory.run(order(lock=other)).executed == 3
    assert factory.run(order(python="3.0.1")).executed == 3
    assert marker.read_bytes().count(b"line") == 9
    # keyed on code: the first such run executes (environment-keyed results are not its evaluations) ...
    coded = factory.run(order(reuse="code"))
    assert coded.executed == 3
    # ... and a run under another lock and Python takes its results, naming its BOM
    moved = factory.run(order(reuse="code", lock=other, python="3.0.1"))
    assert (moved.executed, moved.reused_slices) == (0, 3)
    recs = list(bom_records(store, load_bom(store, moved.bom)))
    assert [r.reused_from for r in recs] == [coded.bom] * 3
    assert load_bom(store, moved.bom).structure.lock == other  # the BOM records the environment it ran under
    shown = cli("bom", "show", str(moved.bom))
    assert shown.code == 0 and "keyed on code only" in shown.out, (shown.out, shown.err)
    assert "keyed on code only" not in cli("bom", "show", str(first.bom)).out
    assert marker.read_bytes().count(b"line") == 12
    # requirements are declared, not the machine's: they stay in a code-only key
    assert factory.run(order(reuse="code", requirements=["inflection==0.5.1"])).executed == 3


def test_code_only_keys_leave_out_the_environment_and_differ_from_environment_keys() -> None:
    piece = Slice(cid=CID.hash(b"input", RAW), name="a.txt")

    def sealed(**structure: object) -> Order:
        return Order(function=Function(entry="job:f", code=CID.hash(b"code", RAW)), inputs=[CID.hash(b"in", RAW)],
                     structure=Structure(**{"python": "3.11.9", "lock": CID.hash(b"lock", RAW), **structure}))

    environments = [{}, {"lock": CID.hash(b"another lock", RAW)}, {"python": "3.12.0"}, {"tools": {"grep": "3.11"}}]
    by_environment = {evaluation.key(sealed(**e), piece) for e in environments}
    by_code = {evaluation.key(sealed(reuse="code", **e), piece) for e in environments}
    assert len(by_environment) == 4 and len(by_code) == 1 and not by_code & by_environment
    assert evaluation.key(sealed(reuse="code", requirements=["x==1"]), piece) not in by_code


def test_the_default_reuse_is_left_out_of_the_encoding() -> None:
    """Orders and BOMs made before an Order could key on code keep their CIDs."""
    order = Order(function=Function(entry="job:f", code=CID.hash(b"code", RAW)), inputs=[CID.hash(b"input", RAW)],
                  structure=Structure(python="3.11.9", lock=CID.hash(b"lock", RAW)))
    assert "reuse" not in dagcbor.decode(order.block())["structure"]
    assert str(CID.hash(order.block(), DAG_CBOR)) == "bafyreicbbnr43c3fypztkeadioskj4lxwwvxfxng3at4asmieeyqtaxy6e"
    coded = order.model_copy(update={"structure": order.structure.model_copy(update={"reuse": "code"})})
    assert dagcbor.decode(coded.block())["structure"]["reuse"] == "code"
    assert CID.hash(coded.block(), DAG_CBOR) != CID.hash(order.block(), DAG_CBOR)
    with pytest.raises(ValueError, match="reuse"):
        Structure(reuse="anything")  # type: ignore[arg-type]


def test_the_environment_confined_code_is_given_is_in_the_key(cats_home: Path, tmp_path: Path) -> None:
    """`Plant.env` is what confined code reads as its environment: a result made under one value is not
    another value's, so it must not be taken for it."""
    folder = _folder(tmp_path, "modes", 2)

    def order(env: dict[str, str]) -> Order:
        return Order(function=_fn(tmp_path, "mode"), inputs=[folder], plant=Plant(confined=True, env=env))

    fast = factory.run(order({"MODE": "fast"}))
    slow = factory.run(order({"MODE": "slow"}))
    assert (slow.executed, slow.reused_slices) == (2, 0)
    assert set(jobs.outputs(cats_home, fast.output).values()) == {b"fast"}
    assert set(jobs.outputs(cats_home, slow.output).values()) == {b"slow"}
    again = factory.run(order({"MODE": "fast"}).model_copy(update={"name": "fast again"}))
    assert (again.executed, again.reused_slices, again.output) == (0, 2, fast.output)


def test_a_forced_rerun_offers_its_own_results_not_those_its_bom_does_not_record(cats_home: Path,
                                                                                   tmp_path: Path) -> None:
    """A forced re-run of a function whose results differ each time replaces the Order's BOM: the
    evaluations offered afterwards are that BOM's, so a run taking one names a BOM that records it."""
    folder = _folder(tmp_path, "fresh", 3)
    store = jobs.home_store(cats_home)
    order = Order(function=_fn(tmp_path, "fresh"), inputs=[folder])
    first = factory.run(order)
    second = factory.run(order, force=True)
    assert first.output != second.output
    taking = factory.run(order.model_copy(update={"name": "taking"}))
    assert taking.reused_slices == 3
    recs = list(bom_records(store, load_bom(store, taking.bom)))
    source = {r.index: r.output for r in bom_records(store, load_bom(store, second.bom))}
    assert [r.reused_from for r in recs] == [second.bom] * 3
    assert [r.output for r in recs] == [source[r.index] for r in recs]
    assert taking.output == second.output
    report = api.verify(taking.bom, integrity=True)  # the BOM it names vouches for what it took
    assert report.verified, report.problems


def test_a_result_whose_blocks_are_not_all_here_is_computed_again(cats_home: Path, tmp_path: Path) -> None:
    """A finished run's result is taken only if its whole DAG is in the store: one whose root is here but
    a leaf was lost (a repaired store, a deleted block) is executed again, not linked into a new BOM."""
    big = jobs.folder(tmp_path, {"big.txt": b"0123456789abcdef" * 40_000, "small.txt": b"tiny\n"}, name="big")
    store = jobs.home_store(cats_home)
    first = factory.run(Order(function=_fn(tmp_path, "shout"), inputs=[big]))
    recs = list(bom_records(store, load_bom(store, first.bom)))
    large = next(r for r in recs if r.input.name == "big.txt")
    assert large.output.codec != RAW  # a file of several blocks
    leaves = [c for c in walk(store, large.output) if c.codec == RAW]
    store.delete(leaves[-1])
    second = factory.run(Order(function=_fn(tmp_path, "shout"), inputs=[big], name="after the loss"))
    assert (second.executed, second.reused_slices) == (1, 1)
    assert second.output == first.output
    assert all(store.has(c) for c in walk(store, second.output))
