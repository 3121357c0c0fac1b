"""Cheap validators: Check references, the .npy range reader, Freivalds, sampled elementwise maps and
sums, what each fetches, and Orders carrying checks."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from cats.cas import dagcbor
from cats.cas import importer as importer_mod
from cats.cas.cid import CID, RAW
from cats.cas.importer import CHUNK_SIZE, Importer
from cats.cas.store import BlockStore
from cats.cas.store.memory import MemoryStore
from cats.data.views import npy as npy_views
from cats.errors import CatsError, PathNotFound, ViewError
from cats.order import Function, Order, checking
from cats.order.checking import CountingStore, NpyFile
from cats.order.checks import Check, parse_ref


def npy(arr: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buf = io.BytesIO()
    if version is None:
        np.save(buf, arr, allow_pickle=arr.dtype.hasobject)
    else:
        np.lib.format.write_array(buf, arr, version=version)
    return buf.getvalue()


def put(store: BlockStore, arr: np.ndarray, version: tuple[int, int] | None = None) -> CID:
    return Importer(store).add_bytes(npy(arr, version)).cid


@pytest.fixture
def mem() -> MemoryStore:
    return MemoryStore()


# -- references and the Check model ---------------------------------------------------------------

@pytest.mark.parametrize(("ref", "parsed"), [
    ("input:0", (0, "")), ("input:12/dir/a.npy", (12, "dir/a.npy")), ("output", (None, "")),
    ("output/c.npy", (None, "c.npy")),
])
def test_parse_ref(ref: str, parsed: tuple[int | None, str]) -> None:
    assert parse_ref(ref) == parsed


@pytest.mark.parametrize("ref", ["inputs:0", "input:", "input:01", "input:-1", "Output", "output/", "output//x",
                                 "input:0/../x", "input:0/./x", "", "bafkqaaa", "output x"])
def test_bad_refs_are_refused_by_name(ref: str) -> None:
    with pytest.raises(ValidationError) as info:
        Check(kind="freivalds", a=ref, b="input:1")
    assert repr(ref) in str(info.value)


@pytest.mark.parametrize(("fields", "message"), [
    ({"kind": "freivalds", "a": "input:0"}, "needs b"),
    ({"kind": "freivalds", "a": "input:0", "b": "input:1", "op": "add"}, "takes no op"),
    ({"kind": "elementwise", "a": "input:0"}, "needs op"),
    ({"kind": "elementwise", "a": "input:0", "op": "add"}, "binary: give b"),
    ({"kind": "elementwise", "a": "input:0", "b": "input:1", "op": "sqrt"}, "unary"),
    ({"kind": "elementwise", "a": "input:0", "op": "sum"}, "needs op"),
    ({"kind": "reduction", "a": "input:0"}, "claimed per-partition"),
    ({"kind": "reduction", "a": "input:0", "b": "output/p.npy", "op": "add"}, "op must be one of sum"),
    ({"kind": "reduction", "a": "input:0", "b": "output/p.npy", "sampled": 5, "partitions": 4}, "cannot exceed"),
    ({"kind": "freivalds", "a": "input:0", "b": "input:1", "rounds": 0}, "rounds"),
    ({"kind": "freivalds", "a": "input:0", "b": "input:1", "seed": 3}, "seed"),
    ({"kind": "matmul", "a": "input:0", "b": "input:1"}, "kind"),
])
def test_check_fields_fit_the_kind(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Check(**fields)


def _order(checks_: list[Check]) -> Order:
    code = CID.hash(b"code", RAW)
    return Order(function=Function(entry="m:f", code=code), inputs=[CID.hash(b"in", RAW)], checks=checks_)


def test_order_with_checks_round_trips() -> None:
    order = _order([Check(kind="freivalds", a="input:0/a.npy", b="input:0/b.npy", c="output/c.npy", rounds=30),
                    Check(kind="elementwise", op="sqrt", a="input:0", samples=10, rtol=1e-3),
                    Check(kind="reduction", a="input:0", b="output/parts.npy", c="output/total.npy")])
    again = Order.model_validate(order.model_dump())
    assert again == order and again.checks[0].rounds == 30 and again.checks[1].rtol == 1e-3
    from_block = Order.model_validate(dagcbor.decode(order.block()))
    assert from_block.cid == order.cid
    assert Order.model_validate(order.model_dump(mode="json")).cid == order.cid


def test_orders_without_checks_keep_their_encoding() -> None:
    plain = _order([])
    assert "checks" not in dagcbor.decode(plain.block())
    assert _order([Check(kind="elementwise", op="neg", a="input:0")]).cid != plain.cid


# -- the .npy reader --------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [None, (1, 0), (2, 0), (3, 0)])
def test_npy_reader_matches_numpy(mem: MemoryStore, version: tuple[int, int] | None) -> None:
    arr = np.arange(3 * 5 * 7, dtype="<i4").reshape(3, 5, 7)
    f = NpyFile.open(mem, put(mem, arr, version))
    assert (f.shape, f.dtype, f.fortran_order) == ((3, 5, 7), np.dtype("<i4"), False)
    np.testing.assert_array_equal(f.array(), arr)
    np.testing.assert_array_equal(f.rows(1, 3), arr[1:3])
    idx = np.array([104, 0, 17, 17, 50])
    np.testing.assert_array_equal(f.take(idx), arr.ravel()[idx])


def test_npy_reader_handles_fortran_order_and_big_endian(mem: MemoryStore) -> None:
    arr = np.asfortranarray(np.arange(24, dtype=">f8").reshape(4, 6))
    f = NpyFile.open(mem, put(mem, arr))
    assert f.fortran_order
    np.testing.assert_array_equal(f.array(), arr)
    idx = np.array([0, 1, 5, 6, 23, 7])
    np.testing.assert_array_equal(f.take(idx), arr.ravel()[idx])  # C-order indices of the logical array
    with pytest.raises(CatsError, match="Fortran order"):
        f.rows(0, 1)


def test_npy_reader_refuses_what_it_cannot_read(mem: MemoryStore) -> None:
    with pytest.raises(CatsError, match="Python objects"):
        NpyFile.open(mem, put(mem, np.array([{"a": 1}, None], dtype=object)))
    with pytest.raises(CatsError, match="not a .npy"):
        NpyFile.open(mem, Importer(mem).add_bytes(b"just some bytes, not numpy").cid)
    truncated = npy(np.zeros(100))[:-8]
    with pytest.raises(CatsError, match="says 800"):
        NpyFile.open(mem, Importer(mem).add_bytes(truncated).cid)
    bad = bytearray(npy(np.zeros(3)))
    bad[6] = 9
    with pytest.raises(CatsError, match="version 9"):
        NpyFile.open(mem, Importer(mem).add_bytes(bytes(bad)).cid)
    text = NpyFile.open(mem, put(mem, np.array(["a", "b"])))
    with pytest.raises(CatsError, match="numeric"):
        text.numeric("a")


def _header(meta: str, hlen: int | None = None, data: bytes = b"") -> bytes:
    text = meta.encode("latin1").ljust(hlen or 0)
    return b"\x93NUMPY\x02\x00" + len(text).to_bytes(4, "little") + text + data


@pytest.mark.parametrize(("raw", "message"), [
    (_header("{'descr': '<f8', 'fortran_order': False, 'shape': ()}", npy_views.MAX_HEADER + 1, bytes(8)),
     "65537 bytes runs past the end"),
    (_header("{'descr': '<f8', 'fortran_order': False, 'shape': [3]}", data=bytes(24)), "not a tuple of sizes"),
    (_header("{'descr': '<f8', 'fortran_order': 0, 'shape': (3,)}", data=bytes(24)), "not True or False"),
    (_header("{'descr': '|O', 'fortran_order': False, 'shape': (1,)}", data=bytes(8)), "Python objects"),
    (_header("{'descr': '<f8', 'fortran_order': False, 'shape': (3,)}", data=bytes(16)), "says 24 bytes"),
], ids=["over-the-limit", "list-shape", "int-order", "objects", "short-data"])
def test_checks_and_views_read_npy_headers_alike(mem: MemoryStore, raw: bytes, message: str) -> None:
    """One header reader, one set of limits: a header checks refuse is refused by views in the same words."""
    cid = Importer(mem).add_bytes(raw).cid
    with pytest.raises(ViewError, match=message) as in_checks:
        NpyFile.open(mem, cid)
    with pytest.raises(ViewError) as in_views:
        npy_views.header(lambda n: raw[:n], len(raw), str(cid))
    assert str(in_checks.value) == str(in_views.value)


@pytest.mark.parametrize("version", [0, 1])
def test_npy_take_across_odd_blocks_and_deep_trees(mem: MemoryStore, monkeypatch: pytest.MonkeyPatch,
                                                   version: int) -> None:
    """Entries straddling 100-byte blocks, three links a node, dag-pb (v0) or raw (v1) leaves."""
    monkeypatch.setattr(importer_mod, "CHUNK_SIZE", 100)
    monkeypatch.setattr(importer_mod, "MAX_LINKS", 3)
    arr = np.random.default_rng(0).standard_normal((37, 11))
    f = NpyFile.open(mem, Importer(mem, cid_version=version).add_bytes(npy(arr)).cid)
    np.testing.assert_array_equal(f.take(np.arange(arr.size)), arr.ravel())
    idx = np.random.default_rng(1).integers(0, arr.size, 50)
    np.testing.assert_array_equal(f.take(idx), arr.ravel()[idx])
    np.testing.assert_array_equal(f.array(), arr)


def test_npy_header_costs_one_block(mem: MemoryStore) -> None:
    cid = put(mem, np.zeros(1 << 20))  # 8 MiB: 32 leaves
    counting = CountingStore(mem)
    NpyFile.open(counting, cid)
    assert counting.blocks == 2  # the root and the first leaf
    assert counting.fetched <= len(mem.get(cid)) + CHUNK_SIZE


# -- Freivalds --------------------------------------------------------------------------------------

def _product(store: BlockStore, n: int = 120, m: int = 80, p: int = 100) -> tuple[CID, CID, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    A, B = rng.standard_normal((n, m)), rng.standard_normal((m, p))
    return put(store, A), put(store, B), A, B


def test_freivalds_passes_a_correct_product(store: BlockStore) -> None:
    a, b, A, B = _product(store)
    report = checking.freivalds(store, a, b, put(store, A @ B), rounds=20, seed=1)
    assert report.passed, report.detail
    assert report.false_accept_probability == 2.0 ** -20
    assert report.total_bytes == sum(len(npy(x)) for x in (A, B, A @ B))
    assert report.bytes_fetched >= report.total_bytes  # it reads a, b and c in full


@pytest.mark.parametrize("seed", range(5))
def test_freivalds_catches_one_wrong_entry(mem: MemoryStore, seed: int) -> None:
    a, b, A, B = _product(mem)
    C = A @ B
    C[int(seed * 17 % 120), int(seed * 31 % 100)] += 1e-3
    report = checking.freivalds(mem, a, b, put(mem, C), rounds=20, seed=seed)
    assert not report.passed
    assert "of 20 random projections differ" in report.detail


def test_freivalds_on_integers_is_exact(mem: MemoryStore) -> None:
    rng = np.random.default_rng(3)
    A, B = rng.integers(-1000, 1000, (40, 30)), rng.integers(-1000, 1000, (30, 50))
    C = A @ B
    assert checking.freivalds(mem, put(mem, A), put(mem, B), put(mem, C), seed=0).passed
    C[3, 4] += 1
    report = checking.freivalds(mem, put(mem, A), put(mem, B), put(mem, C), seed=0)
    assert not report.passed and "exactly" in report.detail


def test_freivalds_wrong_shapes(mem: MemoryStore) -> None:
    a, b, A, B = _product(mem)
    report = checking.freivalds(mem, a, b, put(mem, (A @ B)[:-1]), seed=0)
    assert not report.passed and "shape" in report.detail
    with pytest.raises(CatsError, match="do not multiply"):
        checking.freivalds(mem, b, b, put(mem, A @ B), seed=0)


# -- elementwise ------------------------------------------------------------------------------------

def _vectors(store: BlockStore, n: int) -> tuple[np.ndarray, np.ndarray, CID, CID]:
    rng = np.random.default_rng(11)
    x, y = rng.standard_normal(n), rng.standard_normal(n)
    return x, y, put(store, x), put(store, y)


def test_elementwise_add_passes(store: BlockStore) -> None:
    x, y, a, b = _vectors(store, 10_000)
    report = checking.elementwise(store, "add", a, b, put(store, x + y), samples=64, seed=5)
    assert report.passed, report.detail
    assert report.false_accept_probability == pytest.approx((1 - 1 / 10_000) ** 64)
    assert "(1 - w/N)**64" in report.detail


def test_elementwise_catches_five_percent_wrong(mem: MemoryStore) -> None:
    x, y, a, b = _vectors(mem, 10_000)
    z = x + y
    z[np.random.default_rng(2).choice(z.size, z.size // 20, replace=False)] += 0.5
    report = checking.elementwise(mem, "add", a, b, put(mem, z), samples=64, seed=5)
    assert not report.passed and "wrong (flat index" in report.detail


def test_elementwise_unary_and_scalar_operand(mem: MemoryStore) -> None:
    x, _, a, _ = _vectors(mem, 5_000)
    assert checking.elementwise(mem, "exp", a, None, put(mem, np.exp(x)), seed=1).passed
    two = put(mem, np.array(2.0))
    assert checking.elementwise(mem, "mul", a, two, put(mem, 2 * x), seed=1).passed
    assert not checking.elementwise(mem, "mul", a, two, put(mem, 3 * x), seed=1).passed
    ints = np.arange(1000)
    wrong = ints.copy()
    wrong[::2] += 1
    assert not checking.elementwise(mem, "neg", put(mem, ints), None, put(mem, -wrong), seed=1).passed


def test_elementwise_checks_everything_when_samples_cover_it(mem: MemoryStore) -> None:
    x, y, a, b = _vectors(mem, 50)
    z = x - y
    z[49] = 0.0
    report = checking.elementwise(mem, "sub", a, b, put(mem, z), samples=64, seed=0)
    assert not report.passed and report.false_accept_probability == 0.0 and "(all)" in report.detail


def test_elementwise_fetches_only_the_covering_blocks(mem: MemoryStore) -> None:
    """With kubo's 256 KiB chunks: exactly the root, the header's leaf and the leaves holding samples."""
    n = 1 << 19  # 4 MiB of float64
    x, y, a, b = _vectors(mem, n)
    c = put(mem, x * y)
    samples, seed = 2, 9
    report = checking.elementwise(mem, "mul", a, b, c, samples=samples, seed=seed)
    assert report.passed
    header = len(npy(x)) - x.nbytes
    idx = np.random.default_rng(seed).integers(0, n, size=samples)  # the draw the check makes
    leaves = {0} | {(header + int(i) * 8) // CHUNK_SIZE for i in idx}
    expected = sum(len(mem.get(cid)) + CHUNK_SIZE * len(leaves) for cid in (a, b, c))
    assert report.bytes_fetched == expected
    assert report.bytes_fetched < 0.25 * report.total_bytes


def test_elementwise_on_4_mib_fetches_a_fraction(mem: MemoryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """64 samples touch at most 64 leaves per array; with 4 KiB chunks (`--chunker=size-4096`) that is
    a small part of 4 MiB. With 256 KiB chunks a 4 MiB array has only 16 leaves and 64 samples touch
    nearly all of them: sampling saves bytes once an array has many more leaves than samples."""
    monkeypatch.setattr(importer_mod, "CHUNK_SIZE", 4096)
    x, y, a, b = _vectors(mem, 1 << 19)
    report = checking.elementwise(mem, "add", a, b, put(mem, x + y), samples=64, seed=4)
    assert report.passed
    assert report.total_bytes > 3 * (4 << 20)
    assert report.bytes_fetched < 0.25 * report.total_bytes, (report.bytes_fetched, report.total_bytes)


# -- reduction --------------------------------------------------------------------------------------

def _sums(store: BlockStore, x: np.ndarray, partitions: int) -> tuple[CID, np.ndarray]:
    n = x.size
    parts = np.array([x[i * n // partitions:(i + 1) * n // partitions].sum() for i in range(partitions)])
    return put(store, x), parts


def test_reduction_passes_and_reads_only_the_sampled_partitions(mem: MemoryStore) -> None:
    x = np.random.default_rng(1).standard_normal(1 << 20)  # 8 MiB, 32 leaves
    a, parts = _sums(mem, x, 16)
    report = checking.reduction(mem, a, put(mem, parts), put(mem, np.array(x.sum())), partitions=16, sampled=4,
                              seed=3)
    assert report.passed, report.detail
    assert report.false_accept_probability == 1 - 4 / 16
    # 4 of 16 partitions is a quarter of a; each range may straddle one extra leaf at either end
    assert report.bytes_fetched < x.nbytes / 4 + 9 * CHUNK_SIZE


def test_reduction_always_catches_a_total_that_disagrees_with_its_partials(mem: MemoryStore) -> None:
    x = np.random.default_rng(2).standard_normal(10_000)
    a, parts = _sums(mem, x, 16)
    b, c = put(mem, parts), put(mem, np.array([x.sum() + 0.01]))
    for seed in range(20):
        report = checking.reduction(mem, a, b, c, seed=seed)
        assert not report.passed and "DIFFERS" in report.detail


def test_reduction_catches_a_wrong_partial_when_sampled(mem: MemoryStore) -> None:
    x = np.arange(16_000, dtype=np.int64)
    a, parts = _sums(mem, x, 16)
    parts[5] += 1  # consistent lie: the total follows the wrong partial
    b, c = put(mem, parts), put(mem, np.array(parts.sum()))
    everything = checking.reduction(mem, a, b, c, partitions=16, sampled=16, seed=0)
    assert not everything.passed and everything.false_accept_probability == 0.0 and "[5] wrong" in everything.detail
    caught = [not checking.reduction(mem, a, b, c, partitions=16, sampled=4, seed=s).passed for s in range(400)]
    # caught exactly when partition 5 is among the 4 sampled: probability 1/4 (sd ~0.022 over 400 seeds)
    assert 0.17 < sum(caught) / len(caught) < 0.33


def test_reduction_wrong_counts(mem: MemoryStore) -> None:
    x = np.ones(100)
    a, parts = _sums(mem, x, 16)
    report = checking.reduction(mem, a, put(mem, parts[:8]), put(mem, np.array(100.0)), seed=0)
    assert not report.passed and "partitions=16" in report.detail
    report = checking.reduction(mem, a, put(mem, parts), put(mem, np.array([100.0, 0.0])), seed=0)
    assert not report.passed and "a total is one" in report.detail


# -- by reference -----------------------------------------------------------------------------------

def test_run_resolves_references(mem: MemoryStore, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((50, 40)), rng.standard_normal((40, 30))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.npy").write_bytes(npy(A))
    (tmp_path / "in" / "b.npy").write_bytes(npy(B))
    with Importer(mem) as imp:
        added = {Path(e.path).name: e.cid for e in imp.add_path(tmp_path / "in")}
    folder = added["in"]
    output = put(mem, A @ B)
    order = _order([Check(kind="freivalds", a="input:0/a.npy", b="input:0/b.npy"),
                    Check(kind="elementwise", op="neg", a="input:0/a.npy", c="input:0/a.npy")])
    reports = checking.run_order(mem, order.checks, [folder], output, seed=1)
    assert [r.passed for r in reports] == [True, False]
    direct = checking.freivalds(mem, added["a.npy"], added["b.npy"], output, seed=1)
    assert direct.passed
    assert reports[0].bytes_fetched > direct.bytes_fetched  # resolving walked the folder node too
    with pytest.raises(CatsError, match="names input 1"):
        checking.run(mem, Check(kind="elementwise", op="abs", a="input:1"), [folder], output)
    with pytest.raises(PathNotFound):
        checking.run(mem, Check(kind="elementwise", op="abs", a="input:0/nope.npy"), [folder], output)


def test_counting_store_counts_what_it_fetches(mem: MemoryStore) -> None:
    cid = Importer(mem).add_bytes(b"x" * (3 * CHUNK_SIZE)).cid
    counting = CountingStore(mem)
    first = counting.get(cid)
    counting.get(cid)  # cached: not fetched again
    assert counting.fetched == len(first) and counting.blocks == 1
    assert math.isclose(counting.fetched, len(mem.get(cid)))
