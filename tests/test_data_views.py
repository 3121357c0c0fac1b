"""Lazy views over real Parquet, Arrow IPC and .npy files, through mem://, file:// and a real
loopback HTTP server whose log of bytes sent proves what each view fetched.

Every result is compared with pyarrow, pandas or numpy computing the same thing on the whole data.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from servers import FileServer

from cats import data
from cats.cas import dagcbor
from cats.data import Cache
from cats.data.resolvers import Info
from cats.data.resolvers.mem import MemResolver
from cats.data.views import Meter, View, forget, view
from cats.errors import DataError, DataIntegrityError, ViewError

ROWS, GROUP = 40_000, 5_000
RNG = np.random.default_rng(5)
TABLE = pa.table({
    "f0": RNG.random(ROWS), "f1": RNG.normal(size=ROWS), "f2": RNG.random(ROWS).astype(np.float32),
    "i0": RNG.integers(-(10**12), 10**12, ROWS), "i1": RNG.integers(0, 1000, ROWS).astype(np.int32),
    "u8": RNG.integers(0, 255, ROWS).astype(np.uint8), "b": RNG.random(ROWS) < 0.5,
    "s": pa.array([f"k{i % 97}" for i in range(ROWS)]),
})
ARRAY = RNG.random((3_000, 12))
CUBE = np.arange(4 * 6 * 5, dtype=np.int32).reshape(4, 6, 5)


def parquet_bytes(table: pa.Table = TABLE, group: int = GROUP) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=group)
    return sink.getvalue()


def arrow_bytes(table: pa.Table = TABLE, batch: int = 6_000) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_file(sink, table.schema) as writer:
        for b in table.to_batches(max_chunksize=batch):
            writer.write_batch(b)
    return sink.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    sink = io.BytesIO()
    np.save(sink, array)
    return sink.getvalue()


PARQUET, ARROW = parquet_bytes(), arrow_bytes()
META = pq.read_metadata(pa.BufferReader(PARQUET))  # pyarrow's own reading of the footer, for expected byte counts


def chunk_bytes(groups: list[int], names: list[str]) -> int:
    """Total compressed size of the named columns' chunks in the given row groups, as the footer says."""
    index = {META.schema.column(j).name: j for j in range(META.num_columns)}
    return sum(META.row_group(g).column(index[n]).total_compressed_size for g in groups for n in names)


def group_span(g: int) -> tuple[int, int]:
    """The bytes [start, end) a row group's column chunks occupy."""
    columns = [META.row_group(g).column(j) for j in range(META.num_columns)]
    start = min(c.dictionary_page_offset or c.data_page_offset for c in columns)
    return start, max(c.data_page_offset + c.total_compressed_size for c in columns)


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATS_DATA_TIMEOUT", "5")
    monkeypatch.setenv("CATS_DATA_RETRIES", "2")
    monkeypatch.delenv("CATS_DATA_MAX_FETCH", raising=False)


def put(name: str, blob: bytes) -> str:
    uri = f"mem://views/{name}"
    data.write(uri, blob)
    return uri


# -- every op against pyarrow / pandas / numpy on the whole data -----------------------------------------

TABLE_CASES = [
    ([], lambda t: t),
    ([("rows", 7_000, 23_456)], lambda t: t.slice(7_000, 16_456)),
    ([("rows", 39_990)], lambda t: t.slice(39_990)),
    ([("rows", 5, 5)], lambda t: t.slice(5, 0)),
    ([("window", 100, 39_000, 977)], lambda t: t.take(np.arange(100, 39_000, 977))),
    ([("window", 0, 40_000, 12_000)], lambda t: t.take(np.arange(0, 40_000, 12_000))),  # skips whole groups
    ([("columns", "s", "f1")], lambda t: t.select(["s", "f1"])),
    ([("columns", 3, 0)], lambda t: t.select(["i0", "f0"])),
    ([("columns", "i1", "u8", "f2"), ("cast", "float64")],
     lambda t: t.select(["i1", "u8", "f2"]).cast(pa.schema([(n, pa.float64()) for n in ("i1", "u8", "f2")]))),
    ([("rows", 1_000, 30_000), ("columns", "i1", "f0"), ("window", 10, 20_000, 3), ("rows", 2, 50),
      ("columns", "f0")], lambda t: t.slice(1_000, 29_000).select(["i1", "f0"]).take(np.arange(10, 20_000, 3))
     .slice(2, 48).select(["f0"])),
    ([("columns", "u8"), ("cast", "int16"), ("cast", "int64"), ("window", 4_999, 15_001, 2)],
     lambda t: t.select(["u8"]).take(np.arange(4_999, 15_001, 2)).cast(pa.schema([("u8", pa.int64())]))),
    ([("columns", "s"), ("cast", "large_string"), ("rows", 3, 9)],
     lambda t: t.select(["s"]).slice(3, 6).cast(pa.schema([("s", pa.large_string())]))),
]


def apply(v: View, ops: list[tuple]) -> View:
    for name, *args in ops:
        v = getattr(v, name)(*args)
    return v


@pytest.mark.parametrize(("ops", "expect"), TABLE_CASES, ids=lambda c: repr(c) if isinstance(c, list) else "")
@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_table_ops_match_pyarrow(fmt: str, ops: list[tuple], expect) -> None:
    uri = put(f"t.{fmt}", PARQUET if fmt == "parquet" else ARROW)
    v = apply(view(uri), ops)
    got = v.materialize()
    want = expect(TABLE)
    assert got.schema.remove_metadata() == want.schema.remove_metadata() == v.schema.remove_metadata()
    assert got.equals(want.cast(got.schema)) and v.shape == want.shape and v.num_rows == want.num_rows


def test_table_ops_match_pandas() -> None:
    frame = TABLE.to_pandas()
    v = view(put("p.parquet", PARQUET))
    got = v.columns("i0", "f1", "s").window(1_234, 31_000, 5).rows(10, 4_000).materialize().to_pandas()
    want = frame[["i0", "f1", "s"]].iloc[1_234:31_000:5].iloc[10:4_000].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want)
    assert v.columns("i1").cast("float64").materialize().to_pandas()["i1"].sum() == frame["i1"].astype("float64").sum()


ARRAY_CASES = [
    ([], lambda a: a),
    ([("rows", 100, 2_345)], lambda a: a[100:2_345]),
    ([("window", 7, 2_900, 13)], lambda a: a[7:2_900:13]),
    ([("window", 0, 3_000, 1_400)], lambda a: a[0:3_000:1_400]),  # rows far apart: one range each
    ([("columns", 11, 0, 5)], lambda a: a[:, [11, 0, 5]]),
    ([("rows", 10, 900), ("columns", 3, 4), ("window", 1, 800, 7), ("columns", 1)],
     lambda a: a[10:900][:, [3, 4]][1:800:7][:, [1]]),
    ([("transpose",)], lambda a: a.T),
    ([("rows", 40, 90), ("transpose",), ("rows", 2, 9), ("columns", 5, 1)], lambda a: a[40:90].T[2:9][:, [5, 1]]),
    ([("reshape", 6_000, 6)], lambda a: a.reshape(6_000, 6)),
    ([("reshape", -1), ("rows", 1_001, 20_002)], lambda a: a.reshape(-1)[1_001:20_002]),
    ([("rows", 500, 1_500), ("reshape", 250, -1), ("rows", 3, 77), ("cast", "float64"), ("transpose",)],
     lambda a: a[500:1_500].reshape(250, -1)[3:77].T),
    ([("reshape", 12, 3_000), ("window", 2, 11, 4), ("transpose",), ("reshape", 3, 3, 1_000)],
     lambda a: a.reshape(12, 3_000)[2:11:4].T.reshape(3, 3, 1_000)),
    ([("cast", "complex128"), ("rows", 5, 6)], lambda a: a[5:6].astype("complex128")),
]


@pytest.mark.parametrize(("ops", "expect"), ARRAY_CASES, ids=lambda c: repr(c) if isinstance(c, list) else "")
@pytest.mark.parametrize("order", ["C", "F"])
def test_npy_ops_match_numpy(order: str, ops: list[tuple], expect) -> None:
    source = np.asfortranarray(ARRAY) if order == "F" else ARRAY
    v = apply(view(put(f"a-{order}.npy", npy_bytes(source))), ops)
    got, want = v.materialize(), expect(ARRAY)
    assert got.shape == want.shape == v.shape and got.dtype == want.dtype == v.dtype
    assert np.array_equal(got, want)


@pytest.mark.parametrize("order", ["C", "F"])
def test_npy_more_dimensions_and_small_types(order: str) -> None:
    cube = np.asfortranarray(CUBE) if order == "F" else CUBE
    v = view(put(f"cube-{order}.npy", npy_bytes(cube)))
    for built, want in [(v.rows(1, 3).columns(5, 2), CUBE[1:3][:, [5, 2]]), (v.transpose(), CUBE.T),
                        (v.window(0, 4, 3).cast("int64"), CUBE[0:4:3].astype("int64")),
                        (v.reshape(24, 5).rows(7, 19), CUBE.reshape(24, 5)[7:19])]:
        got = built.materialize()
        assert got.shape == want.shape and got.dtype == want.dtype and np.array_equal(got, want)
    one = view(put("one.npy", npy_bytes(np.arange(10, dtype=">i2"))))
    assert np.array_equal(one.window(1, 10, 4).materialize(), np.arange(10, dtype=">i2")[1:10:4])
    scalar = view(put("scalar.npy", npy_bytes(np.float64(2.5))))
    assert scalar.shape == () and scalar.materialize() == 2.5 and scalar.reshape(1).materialize().tolist() == [2.5]


# -- what crosses the wire ------------------------------------------------------------------------------

def test_parquet_column_view_fetches_only_that_columns_chunks(http_server: FileServer) -> None:
    uri = http_server.put("/t.parquet", PARQUET)
    v = view(uri)
    http_server.log.clear()
    got = v.columns("f1").materialize()
    assert got.equals(TABLE.select(["f1"]))
    chunks = chunk_bytes(list(range(META.num_row_groups)), ["f1"])
    assert chunks <= http_server.bytes_sent <= chunks + 64  # the footer is parsed already; nothing else
    assert http_server.bytes_sent < len(PARQUET) * 0.3  # f1 is incompressible: a quarter of the file
    forget()  # a fresh process: the footer is read too, in one request
    http_server.log.clear()
    assert v.columns("f1").materialize().equals(got)
    footer = int.from_bytes(PARQUET[-8:-4], "little") + 8
    assert http_server.bytes_sent <= chunks + max(footer, 16 << 10) + 64
    assert len(http_server.log) == 1 + META.num_row_groups  # footer, then one chunk per row group


def test_a_footer_bigger_than_the_first_read_is_fetched_once(http_server: FileServer) -> None:
    wide = pa.table({f"c{i}": np.arange(2_000) for i in range(60)})
    blob = parquet_bytes(wide, group=100)
    footer = int.from_bytes(blob[-8:-4], "little") + 8
    assert footer > 64 << 10  # more than the first read of the end of the file
    v = view(http_server.put("/wide.parquet", blob)).columns("c7").rows(150, 420)
    forget()
    http_server.log.clear()
    assert v.materialize().equals(wide.select(["c7"]).slice(150, 270))
    meta = pq.read_metadata(pa.BufferReader(blob))
    chunks = sum(meta.row_group(g).column(7).total_compressed_size for g in (1, 2, 3, 4))
    assert http_server.bytes_sent == footer + chunks  # the footer's bytes once, then the chunks of groups 1-4


def test_parquet_row_slice_fetches_only_overlapping_row_groups(http_server: FileServer) -> None:
    uri = http_server.put("/t.parquet", PARQUET)
    v = view(uri)
    http_server.log.clear()
    meter = Meter()
    got = v.rows(12_000, 17_000).columns("f0", "i0", "s").materialize(meter=meter)  # row groups 2 and 3
    assert got.equals(TABLE.slice(12_000, 5_000).select(["f0", "i0", "s"]))
    chunks = chunk_bytes([2, 3], ["f0", "i0", "s"])
    assert http_server.bytes_sent == chunks == meter.bytes and len(http_server.log) == meter.requests
    lo, hi = group_span(2)[0], group_span(3)[1]
    assert hi - lo < len(PARQUET) / 3
    for served in http_server.log:  # every range lies inside row groups 2..3
        first, last = map(int, served.range.split("=")[1].split("-"))
        assert lo <= first <= last < hi
    http_server.log.clear()
    v.rows(10_000, 20_000).materialize()  # all columns of two adjacent row groups: one contiguous range
    assert len(http_server.log) == 1 and http_server.bytes_sent == chunk_bytes([2, 3], TABLE.column_names)


def test_arrow_row_slice_fetches_only_overlapping_batches(http_server: FileServer) -> None:
    uri = http_server.put("/t.arrow", ARROW)
    v = view(uri)
    assert [p.ops[-1].stop for p in v.partitions()] == [6_000 * k for k in range(1, 7)] + [40_000]
    http_server.log.clear()
    assert v.rows(13_000, 17_000).materialize().equals(TABLE.slice(13_000, 4_000))  # inside batch 2 of 7
    per_row = (len(ARROW) - 0.0) / ROWS
    assert 6_000 * per_row * 0.9 < http_server.bytes_sent < 6_000 * per_row * 1.1
    assert len(http_server.log) == 1


def test_npy_row_slice_fetches_rows_times_row_bytes(http_server: FileServer) -> None:
    blob = npy_bytes(ARRAY)
    uri = http_server.put("/a.npy", blob)
    v = view(uri)
    row = ARRAY.shape[1] * 8
    http_server.log.clear()
    assert np.array_equal(v.rows(1_000, 1_250).materialize(), ARRAY[1_000:1_250])
    assert http_server.bytes_sent == 250 * row and len(http_server.log) == 1
    forget()
    http_server.log.clear()
    assert np.array_equal(v.rows(2_000, 2_010).transpose().materialize(), ARRAY[2_000:2_010].T)
    assert http_server.bytes_sent <= 10 * row + 4096  # the header, then the rows: never the whole file
    http_server.log.clear()
    assert np.array_equal(v.reshape(-1).rows(6_000, 6_024).materialize(), ARRAY.reshape(-1)[6_000:6_024])
    assert http_server.bytes_sent == 2 * row  # 24 elements = rows 500 and 501
    fortran = view(http_server.put("/f.npy", npy_bytes(np.asfortranarray(ARRAY))))
    http_server.log.clear()
    assert np.array_equal(fortran.columns(7).rows(100, 600).materialize(), ARRAY[100:600, [7]])
    assert http_server.bytes_sent == 500 * 8  # Fortran order: a column's rows are contiguous


def test_cached_materialize_transfers_nothing_the_second_time(http_server: FileServer,
                                                              tmp_path: Path) -> None:
    uri = http_server.put("/t.parquet", PARQUET)
    cache = Cache(tmp_path / "cache")
    v = view(uri).columns("i0", "s").window(3, 33_000, 4)
    forget()  # as in a fresh process: the footer too is read through the cache
    first = v.materialize(cache=cache)
    assert http_server.bytes_sent > 0
    requests = len(http_server.log)
    forget()  # even the footer comes from the cache
    meter = Meter()
    assert v.materialize(cache=cache, meter=meter).equals(first)
    assert len(http_server.log) == requests and meter.requests > 0  # read through the cache, none reached the server
    assert cache.stats()["hits"] == meter.requests


# -- serialization --------------------------------------------------------------------------------------

def test_views_round_trip_through_json_and_dag_cbor() -> None:
    uri = put("rt.parquet", PARQUET)
    v = view(uri).columns("f0", 3).window(10, 30_000, 7).cast("float64").rows(2, 100)
    as_json = v.model_dump(mode="json")
    assert json.loads(json.dumps(as_json)) == as_json
    assert View.model_validate(as_json) == v == View.model_validate_json(v.model_dump_json())
    assert View.model_validate(dagcbor.decode(dagcbor.encode(as_json))) == v
    assert View.model_validate(as_json).materialize().equals(v.materialize())
    a = view(put("rt.npy", npy_bytes(ARRAY))).rows(3, 80).transpose().reshape(-1, 7).cast("complex128")
    back = View.model_validate(dagcbor.decode(dagcbor.encode(a.model_dump(mode="json"))))
    assert back == a and np.array_equal(back.materialize(), ARRAY[3:80].T.reshape(-1, 7))
    with pytest.raises(ValueError, match="extra"):
        View.model_validate({**as_json, "surprise": 1})
    with pytest.raises(ValueError, match="frozen"):
        v.uri = "mem://elsewhere/x"  # type: ignore[misc]
    assert v.ops[0] == View.model_validate(as_json).ops[0] and v.ops[0].op == "columns"


# -- partitions -----------------------------------------------------------------------------------------

def test_partitions_follow_storage_units_and_cover_rows_once() -> None:
    v = view(put("parts.parquet", PARQUET)).rows(3_000, 37_500).columns("i0")
    parts = v.partitions()
    assert [len(p.materialize()) for p in parts] == [2_000] + [5_000] * 6 + [2_500]  # cut at row group bounds
    assert pa.concat_tables(p.materialize() for p in parts).equals(v.materialize())
    finer = v.partitions(rows=2_000)
    assert max(p.num_rows for p in finer) == 2_000 and sum(p.num_rows for p in finer) == v.num_rows
    assert pa.concat_tables(p.materialize() for p in finer).equals(v.materialize())
    windowed = view(put("parts.arrow", ARROW)).window(5, 40_000, 11)
    assert sum(p.num_rows for p in windowed.partitions()) == len(range(5, 40_000, 11))
    assert pa.concat_tables(p.materialize() for p in windowed.partitions()).equals(windowed.materialize())
    a = view(put("parts.npy", npy_bytes(ARRAY))).rows(250, 2_750)
    chunks = a.partitions(rows=1_000)
    assert [c.shape[0] for c in chunks] == [750, 1_000, 750]  # aligned to source rows 1000 and 2000
    assert np.array_equal(np.concatenate([c.materialize() for c in chunks]), ARRAY[250:2_750])
    assert [c.shape[0] for c in a.partitions()] == [2_500]  # ~1 MiB of rows by default: 10,922 of 96 bytes
    flipped = a.transpose().partitions(rows=5)  # rows of its own after a transpose
    assert [c.shape for c in flipped] == [(5, 2_500), (5, 2_500), (2, 2_500)]
    assert np.array_equal(np.concatenate([c.materialize() for c in flipped]), ARRAY[250:2_750].T)


# -- refusals -------------------------------------------------------------------------------------------

def test_unsafe_casts_are_refused_naming_column_and_dtype() -> None:
    t = view(put("cast.parquet", PARQUET))
    with pytest.raises(ViewError, match=r"column 'f0'.*double to int64") as caught:
        t.columns("i1", "f0").cast("int64")
    assert caught.value.uri == t.uri
    with pytest.raises(ViewError, match="'i0'.*int64 to int32"):
        t.columns("i1", "i0").cast("int32")
    with pytest.raises(ViewError, match="not an Arrow type"):
        t.cast("no-such-type")
    a = view(put("cast.npy", npy_bytes(ARRAY)))
    with pytest.raises(ViewError, match="float64 to float32"):
        a.cast("float32")
    with pytest.raises(ViewError, match="float64 to int64"):
        a.rows(0, 2).transpose().cast("int64")
    big = view(put("big.parquet", parquet_bytes(pa.table({"x": [1, 2**53 + 1]}), group=10)))
    lossy = big.cast("float64")  # numpy calls int64 -> float64 safe; Arrow's safe cast checks the values
    with pytest.raises(ViewError, match=r"column 'x'.*would change values"):
        lossy.materialize()
    assert big.rows(0, 1).cast("float64").materialize().column("x").to_pylist() == [1.0]


def test_shape_and_op_refusals_name_the_view() -> None:
    t = view(put("refuse.parquet", PARQUET))
    with pytest.raises(ViewError, match=r"transpose\(\) is for .npy arrays.*refuse.parquet"):
        t.transpose()
    with pytest.raises(ViewError, match="reshape"):
        t.reshape(10, -1)
    with pytest.raises(ViewError, match=r"rows\(0, 40001\) is out of range.*refuse.parquet.*40000 rows"):
        t.rows(0, 40_001)
    with pytest.raises(ViewError, match=r"out of range.*\[rows\(10, 20\)\] has 10 rows"):
        t.rows(10, 20).window(0, 11)
    with pytest.raises(ViewError, match="no column 'nope'.*f0, f1"):
        t.columns("nope")
    with pytest.raises(ViewError, match="column 8 is out of range"):
        t.columns(8)
    with pytest.raises(ViewError, match="twice"):
        t.columns("f0", 0)
    with pytest.raises(ViewError, match="start"):
        t.rows(-1)
    with pytest.raises(ViewError, match="step"):
        t.window(0, 10, 0)
    a = view(put("refuse.npy", npy_bytes(ARRAY)))
    with pytest.raises(ViewError, match=r"reshape\(7, 7\) cannot reshape shape \(3000, 12\).*into \(7, 7\)"):
        a.reshape(7, 7)
    with pytest.raises(ViewError, match=r"shape \(20, 12\).*into \(7, -1\)"):
        a.rows(0, 20).reshape(7, -1)
    with pytest.raises(ViewError, match="positions"):
        a.columns("x")
    with pytest.raises(ViewError, match="only 2-D"):
        a.reshape(-1).transpose()
    with pytest.raises(ViewError, match="columns are axis 1"):
        a.reshape(-1).columns(0)
    with pytest.raises(ViewError, match="0-d"):
        view(put("zero.npy", npy_bytes(np.float64(1)))).rows(0, 1)


def test_unknown_or_mismatched_format_is_a_clear_error() -> None:
    uri = put("notes.txt", b"just some text, no magic")
    with pytest.raises(ViewError, match="cannot tell the format of mem://views/notes.txt") as caught:
        view(uri)
    assert caught.value.uri == uri
    with pytest.raises(ViewError, match="not a Parquet file"):
        view(put("fake.parquet", b"not parquet at all"))
    with pytest.raises(ViewError, match="starts like a npy file, not parquet"):
        view(put("x.npy", npy_bytes(ARRAY)), format="parquet")
    with pytest.raises(ViewError, match="formats are"):
        view(uri, format="csv")
    with pytest.raises(ViewError, match="malformed .npy header"):
        view(put("bad.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': <f8}  \n" + bytes(64)))
    with pytest.raises(ViewError, match="Python objects"):
        view(put("obj.npy", npy_bytes(np.array([{"a": 1}], dtype=object))))
    assert view(put("named.npy", npy_bytes(ARRAY))).format == "npy"  # the magic decides
    stream = io.BytesIO()
    with pa.ipc.new_stream(stream, TABLE.schema) as w:
        w.write_table(TABLE.slice(0, 10))
    with pytest.raises(ViewError, match="streaming format"):
        view(put("s.arrow", stream.getvalue()), format="arrow")


def test_source_changed_after_view_raises_integrity_error(http_server: FileServer, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    uri = http_server.put("/t.parquet", PARQUET)
    v = view(uri).columns("f0")
    http_server.put("/t.parquet", parquet_bytes(TABLE.slice(1)))  # new bytes, new ETag
    with pytest.raises(DataIntegrityError) as caught:
        v.materialize()
    assert caught.value.uri == uri
    forget()  # not even the footer is read from the new version
    with pytest.raises(DataIntegrityError):
        v.materialize()
    m = put("changing.npy", npy_bytes(ARRAY))
    a = view(m).rows(0, 10)
    data.write(m, npy_bytes(ARRAY + 1))
    with pytest.raises(DataIntegrityError):
        a.materialize()
    monkeypatch.setenv("CATS_DATA_ROOTS", str(tmp_path))
    path = tmp_path / "t.arrow"
    path.write_bytes(ARROW)
    f = view(path.as_uri())
    assert f.rows(5, 9).materialize().equals(TABLE.slice(5, 4))
    path.write_bytes(arrow_bytes(batch=1_000))
    os.utime(path, ns=(1, 1))  # a different mtime, whatever the clock did
    with pytest.raises(DataIntegrityError):
        f.rows(5, 9).materialize()


def test_view_made_by_hand_without_a_version_reads_unpinned(monkeypatch: pytest.MonkeyPatch) -> None:
    blob = npy_bytes(ARRAY)
    uri = put("unpinned.npy", blob)
    v = View(uri=uri, format="npy", size=len(blob)).rows(7, 9)
    assert v.version is None and np.array_equal(v.materialize(), ARRAY[7:9])

    class NoVersion(MemResolver):
        def stat(self, uri: str) -> Info:
            return Info(uri, super().stat(uri).size, None)

    monkeypatch.setitem(data.SCHEMES, "mem", lambda uri, reach: NoVersion())
    with pytest.raises(DataError, match="cannot be pinned"):  # view() insists on a version token
        view(uri)


def test_meter_counts_what_the_server_sent(http_server: FileServer) -> None:
    v = view(http_server.put("/t.arrow", ARROW)).window(0, 40_000, 9_000).columns("b")
    http_server.log.clear()
    meter = Meter()
    got = v.materialize(meter=meter)
    assert got.column("b").to_pylist() == TABLE.column("b").to_pylist()[0:40_000:9_000]
    assert (meter.requests, meter.bytes) == (len(http_server.log), http_server.bytes_sent) and meter.bytes > 0
    assert sum(e - s for s, e in v.byte_ranges()) == meter.bytes
