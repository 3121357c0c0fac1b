"""Orders over data URIs: inputs pinned at job start, workers reading their own ranges
through their cache, results written straight to a URI, verification of both.

Sources are real: the loopback HTTP server of `servers.py`, moto's S3 server and file:// inside the
session workers' data root (`worker_env`), which the driver is given too.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import boto3
import jobs
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import WorkerEnv
from servers import FileServer

from cats import data, factory
from cats.bom import load as load_bom
from cats.bom import records as bom_records
from cats.bom.ref import load_ref
from cats.cas import reader
from cats.cas.importer import Importer
from cats.data import Info
from cats.errors import CatsError, DataError, DataNotFound, SliceFailed
from cats.order import Function, InfraFunction, Order, Plant
from cats.verification.audit import verify


@pytest.fixture
def env(worker_env: WorkerEnv, monkeypatch: pytest.MonkeyPatch, cats_home: Path) -> WorkerEnv:
    worker_env.apply(monkeypatch)
    return worker_env


def _lines(n: int) -> bytes:
    return b"".join(b"row %05d %s\n" % (i, hashlib.sha256(b"%d" % i).hexdigest().encode()) for i in range(n))


def test_http_lines_read_by_range_with_cache_in_invoice(ray_session: str, env: WorkerEnv, cats_home: Path,
                                                         tmp_path: Path, http_server: FileServer) -> None:
    src = jobs.module(tmp_path, "fu_count", """
        def count(data):
            return b"%d\\n" % data.count(b"\\n")
    """)
    content = _lines(3000)  # ~220 KB
    uri = http_server.put("/logs.txt", content)
    order = Order(function=Function(entry="fu_count:count", source=src), inputs=[uri],
                  infra=InfraFunction(split="lines", merge="concat", chunk_bytes=16 * 1024))

    run = factory.run(order)

    store = jobs.home_store(cats_home)
    bom = load_bom(store, run.bom)
    assert bom.inputs == [Info(uri, len(content), data.stat(uri).version)]  # pinned at its version
    recs = list(bom_records(store, bom))
    assert len(recs) == run.slices > 10
    assert all(r.input.source == bom.inputs[0] and r.input.cid is None for r in recs)
    pieces = [content[r.input.offset:r.input.offset + r.input.length] for r in recs]
    assert b"".join(pieces) == content
    assert b"".join(reader.read(store, run.output)) == b"".join(b"%d\n" % p.count(b"\n") for p in pieces)
    # workers fetched exactly their own ranges: each byte once, plus the driver's newline probes
    worker_gets = [s for s in http_server.log if s.range and s.status == 206]
    assert sum(s.sent for s in worker_gets) >= len(content)
    assert http_server.bytes_sent < len(content) + len(recs) * 64 * 1024 + 4096
    use = bom.invoice.data
    assert use is not None
    assert use.misses == len(recs) and use.hits == 0  # a fresh cache per machine and range
    assert use.bytes_in == use.bytes_out == len(content)
    assert 0 < use.mean_fetch_s < 5


def test_parquet_row_groups_from_s3_and_verification(ray_session: str, env: WorkerEnv, cats_home: Path,
                                                     tmp_path: Path) -> None:
    src = jobs.module(tmp_path, "fu_rows", """
        import pyarrow.compute as pc

        def total(table):
            return {"rows": table.num_rows, "sum": pc.sum(table["v"]).as_py()}
    """)
    table = pa.table({"k": pa.array(range(4000), pa.int64()), "v": pa.array([i * 0.5 for i in range(4000)])})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=1000)
    boto3.client("s3", endpoint_url=env.s3_endpoint).create_bucket(Bucket="fu-rows")
    uri = "s3://fu-rows/t.parquet"
    data.write(uri, (tmp_path / "t.parquet").read_bytes())
    order = Order(function=Function(entry="fu_rows:total", source=src, takes="table"), inputs=[uri],
                  infra=InfraFunction(split="row-groups", merge="list"))

    run = factory.run(order)

    store = jobs.home_store(cats_home)
    recs = list(bom_records(store, load_bom(store, run.bom)))
    assert [r.input.row_group for r in recs] == [0, 1, 2, 3]
    report = verify(store, run.bom)
    assert report.verified, report.problems
    assert [s.ok for s in report.slices] == [True] * 4
    # the object is replaced under the same key: verification now names the URI as altered
    changed = pa.table({"k": table["k"], "v": pa.array([1.0] * 4000)})
    pq.write_table(changed, tmp_path / "t2.parquet", row_group_size=1000)
    data.write(uri, (tmp_path / "t2.parquet").read_bytes())
    report = verify(store, run.bom)
    assert not report.verified
    assert {p.reason for p in report.problems} == {"input-altered"}
    assert all(p.cid == uri for p in report.problems)
    integrity = verify(store, run.bom, integrity=True)
    assert [(p.reason, p.cid) for p in integrity.problems] == [("input-altered", uri)]


def test_source_changed_during_the_job_fails_it_naming_the_uri(ray_session: str, env: WorkerEnv,
                                                                tmp_path: Path) -> None:
    # the function itself rewrites its input after the first slice: every later slice must refuse it
    path = env.data_root / "moving.txt"
    path.write_bytes(_lines(400))
    src = jobs.module(tmp_path, "fu_moving", f"""
        def touch(data):
            with open({str(path)!r}, "ab") as f:
                f.write(b"appended while the job runs\\n")
            return data
    """)
    uri = f"file://{path}"
    order = Order(function=Function(entry="fu_moving:touch", source=src), inputs=[uri],
                  infra=InfraFunction(split="lines", merge="concat", chunk_bytes=2048),
                  plant=Plant(batch=100, retries=0))

    with pytest.raises(SliceFailed) as failed:
        factory.run(order)
    message = str(failed.value)
    assert "DataIntegrityError" in message and uri in message and "changed since it was pinned" in message


def test_pinned_info_input_must_still_be_that_version(env: WorkerEnv, tmp_path: Path) -> None:
    path = env.data_root / "pinned.txt"
    path.write_bytes(b"one\n")
    info = data.pin(f"file://{path}")
    path.write_bytes(b"two, longer\n")
    src = jobs.module(tmp_path, "fu_pinned", "def f(data):\n    return data\n")
    with pytest.raises(DataError, match="changed since it was pinned"):
        factory.run(Order(function=Function(entry="fu_pinned:f", source=src), inputs=[info]))


def test_outputs_written_to_a_uri_carry_only_references(ray_session: str, env: WorkerEnv, cats_home: Path,
                                                        tmp_path: Path) -> None:
    src = jobs.module(tmp_path, "fu_out", """
        def shout(data):
            return data.upper() * 1000
    """)
    store = jobs.home_store(cats_home)
    inputs = jobs.folder(tmp_path, {"a.txt": b"alpha\n", "b.txt": b"bravo\n", "c.txt": b"charlie\n"})
    out_root = env.data_root / "results"
    order = Order(function=Function(entry="fu_out:shout", source=src), inputs=[inputs],
                  output_uri=f"file://{out_root}/run1")

    run = factory.run(order)

    bom = load_bom(store, run.bom)
    assert bom.output_encoding == "dag-cbor-list"
    recs = list(bom_records(store, bom))
    assert [r.encoding for r in recs] == ["ref"] * 3
    for rec in recs:
        ref = load_ref(store, rec.output)
        expected = (inputs / rec.input.name).read_bytes().upper() * 1000
        assert ref.uri == f"file://{out_root}/run1/{rec.input.name}"
        assert (out_root / "run1" / rec.input.name).read_bytes() == expected
        assert ref.size == len(expected) and ref.version == data.stat(ref.uri).version
        with Importer(None, cid_version=1) as hashing:
            assert ref.content == str(hashing.add_bytes(expected).cid)
        assert not store.has(hashing.add_bytes(expected).cid)  # the bytes are not in the store
    report = verify(store, run.bom)
    assert report.verified, report.problems
    assert len(report.slices) == 3 and all(s.recomputed != str(recs[0].output) for s in report.slices)
    assert verify(store, run.bom, integrity=True).verified
    # an output rewritten at its URI is caught by integrity mode, naming the slice and the URI
    (out_root / "run1" / "b.txt").write_bytes(b"forged")
    report = verify(store, run.bom, integrity=True)
    assert [(p.reason, p.slice) for p in report.problems] == [("output-differs", 1)]
    assert "b.txt" in report.problems[0].detail


def test_bad_uri_inputs_fail_clearly(env: WorkerEnv, tmp_path: Path, http_server: FileServer) -> None:
    src = jobs.module(tmp_path, "fu_bad", "def f(data):\n    return data\n")

    def order(uri: str, **kw: object) -> Order:
        return Order(function=Function(entry="fu_bad:f", source=src), inputs=[uri], **kw)  # type: ignore[arg-type]

    with pytest.raises(DataNotFound, match=r"/nothing\.txt"):
        factory.run(order(http_server.url + "/nothing.txt"))
    with pytest.raises(DataError, match="gs:// is not supported yet"):
        factory.run(order("gs://bucket/x"))
    with pytest.raises(DataError, match="outside"):
        factory.run(order(f"file://{env.data_root}/../escape.txt"))
    with pytest.raises(ValueError, match="output_uri"):
        order(http_server.url + "/x", output_uri="file:///tmp/o", infra=InfraFunction(merge="concat"))
    with pytest.raises(ValueError, match="replicas"):
        order(http_server.url + "/x", output_uri="file:///tmp/o", plant=Plant(replicas=3))
    same = [http_server.put("/a/data.txt", b"1\n"), http_server.put("/b/data.txt", b"2\n")]
    out = env.data_root / "clash"
    with pytest.raises(CatsError, match="same URI.*data.txt.*nothing was run"):
        factory.run(Order(function=Function(entry="fu_bad:f", source=src), inputs=same, output_uri=f"file://{out}"))
    assert not out.exists()


def test_cli_submit_a_uri_with_output_uri(ray_session: str, env: WorkerEnv, cli, cats_home: Path,
                                          tmp_path: Path, http_server: FileServer,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_session)
    uri = http_server.put("/words.txt", b"one two three\n")
    job = jobs.module(tmp_path, "fu_cli", """
        def count(path):
            return f"{path.name}: {len(path.read_bytes().split())} words"
    """)
    out = f"file://{env.data_root}/cli-out"

    res = cli("submit", "-f", job, "-c", uri, "--entry", "count", "-o", out, "--json", cwd=tmp_path)

    assert res.code == 0, res.err
    assert (env.data_root / "cli-out" / "words.txt").read_text() == "words.txt: 3 words"
    bad = cli("submit", "-f", job, "-c", "gs://b/k", "--entry", "count", cwd=tmp_path)
    bad.error_line("gs://", "not supported yet")


def test_an_order_reading_a_written_uri_names_its_producer(ray_session: str, env: WorkerEnv, cats_home: Path,
                                                            tmp_path: Path) -> None:
    src = jobs.module(tmp_path, "fu_chain", """
        def double(data):
            return data + data
    """)
    store = jobs.home_store(cats_home)
    first = factory.run(Order(function=Function(entry="fu_chain:double", source=src),
                              inputs=[jobs.folder(tmp_path, {"x.txt": b"x\n"})],
                              output_uri=f"file://{env.data_root}/chain"))
    second = factory.run(Order(function=Function(entry="fu_chain:double", source=src),
                               inputs=[f"file://{env.data_root}/chain/x.txt"]))
    assert load_bom(store, second.bom).parents == [first.bom]
    assert [(name, b"".join(reader.read(store, cid))) for name, cid, _ in reader.entries(store, second.output)] \
        == [("x.txt", b"x\nx\nx\nx\n")]
    report = verify(store, second.bom, recursive=True)
    assert report.verified and [a.bom for a in report.ancestors] == [str(first.bom)]


def test_views_as_inputs_read_only_their_column_chunks(ray_session: str, env: WorkerEnv, cats_home: Path,
                                                       tmp_path: Path, http_server: FileServer) -> None:
    import numpy as np
    import pyarrow.compute as pc

    from cats.data.views import view

    src = jobs.module(tmp_path, "fu_views", """
        import pyarrow.compute as pc

        def scaled(table):
            return table.append_column("twice", pc.multiply(table["b"], 2))
    """)
    n = 40_000
    rng = np.random.default_rng(5)
    table = pa.table({name: rng.random(n) for name in "abcdefgh"})
    pq.write_table(table, tmp_path / "wide.parquet", row_group_size=10_000)
    blob = (tmp_path / "wide.parquet").read_bytes()
    uri = http_server.put("/wide.parquet", blob)
    picked = view(uri).columns("a", "b").rows(5_000, 35_000)  # 4 row groups touched, 2 of 8 columns
    order = Order(function=Function(entry="fu_views:scaled", source=src, takes="table"), inputs=[picked],
                  infra=InfraFunction(split="row-groups", merge="table"))
    http_server.log.clear()

    run = factory.run(order)

    store = jobs.home_store(cats_home)
    out = pa.ipc.open_stream(b"".join(reader.read(store, run.output))).read_all()
    want = table.select(["a", "b"]).slice(5_000, 30_000)
    assert out.equals(want.append_column("twice", pc.multiply(want["b"], 2)))
    bom = load_bom(store, run.bom)
    assert bom.inputs == [picked]
    recs = list(bom_records(store, bom))
    assert [r.input.view.ops[-1].model_dump(exclude_none=True) for r in recs] == [  # type: ignore[union-attr]
        {"op": "rows", "start": a, "stop": b} for a, b in ((0, 5_000), (5_000, 15_000), (15_000, 25_000),
                                                          (25_000, 30_000))]
    meta = pq.ParquetFile(tmp_path / "wide.parquet").metadata
    chunks = sum(meta.row_group(g).column(c).total_compressed_size for g in range(4) for c in range(2))
    # the driver's partitions and the workers read the footer and the 8 column chunks; nothing else
    assert http_server.bytes_sent < chunks + 4 * len(blob) // 100, (http_server.bytes_sent, chunks, len(blob))
    assert http_server.bytes_sent < len(blob) * 0.3
    report = verify(store, run.bom)
    assert report.verified, report.problems
    assert bom.invoice.data is not None and bom.invoice.data.bytes_in >= chunks


def test_npy_view_partitions_and_a_whole_view_slice(ray_session: str, env: WorkerEnv, cats_home: Path,
                                                     tmp_path: Path) -> None:
    import io

    import numpy as np

    from cats.data.views import view

    src = jobs.module(tmp_path, "fu_npy", """
        def colsum(a):
            return a.sum(axis=0)
    """)
    a = np.arange(1_200_000, dtype=np.int32).reshape(400_000, 3)  # 4.8 MB: ~1 MiB partitions
    buf = io.BytesIO()
    np.save(buf, a)
    (env.data_root / "a.npy").write_bytes(buf.getvalue())
    v = view(f"file://{env.data_root}/a.npy").rows(10, 390_010).cast("int64")
    store = jobs.home_store(cats_home)

    parts = factory.run(Order(function=Function(entry="fu_npy:colsum", source=src, takes="table"), inputs=[v],
                              infra=InfraFunction(split="row-groups", merge="list")))
    whole = factory.run(Order(function=Function(entry="fu_npy:colsum", source=src, takes="table"), inputs=[v],
                              infra=InfraFunction(split="files", merge="list")))

    recs = list(bom_records(store, load_bom(store, parts.bom)))
    assert len(recs) >= 4
    sums = [np.load(io.BytesIO(b"".join(reader.read(store, r.output)))) for r in recs]
    assert sums[0].dtype == np.int64
    assert (sum(sums) == a[10:390_010].astype(np.int64).sum(axis=0)).all()
    (only,) = list(bom_records(store, load_bom(store, whole.bom)))
    assert only.input.view == v
    assert (np.load(io.BytesIO(b"".join(reader.read(store, only.output)))) == sum(sums)).all()
    with pytest.raises(Exception, match="split by rows"):
        factory.run(Order(function=Function(entry="fu_npy:colsum", source=src), inputs=[v],
                          infra=InfraFunction(split="lines")))
