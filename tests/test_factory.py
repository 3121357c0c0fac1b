"""The Factory on a real local Ray: outputs, BOMs, determinism, lineage, user and built-in
split/merge, failures and resume, worker deaths, memoization, timeouts, and the `cats run` and
`cats submit` commands.

Functions that run in Ray workers are captured by their source file, so each test writes its
own module (under a name no other test uses: workers live for the whole session and keep the
modules they imported) into tmp_path.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jobs
import pytest

from cats import bom as bom_module
from cats import factory
from cats.bom import RecordBlocks, SliceRecord, write_records
from cats.bom import load as load_bom
from cats.bom import records as bom_records
from cats.bom.home import Home
from cats.bom.index import Index
from cats.cas import dagcbor, reader
from cats.cas.cid import CID, DAG_CBOR, RAW
from cats.cas.dag import put_cbor, walk
from cats.cas.importer import Importer
from cats.cas.pins import Pins, gc
from cats.cas.store.local import LocalStore
from cats.errors import CatsError, SliceFailed
from cats.factory import evaluation, execution, results
from cats.factory.outputs import read
from cats.order import Function, InfraFunction, Order, Plant, Structure
from cats.order.infra import Slice
from cats.order.seal import seal
from cats.verification import audit

FILES = {"a.txt": b"alpha\n", "b.txt": b"bravo bravo\n", "c.txt": b"charlie\n", "d.txt": b"delta\n",
         "e.txt": b"echo echo echo\n"}


# -- helpers ---------------------------------------------------------------------------------------
def _cat(store: LocalStore, cid: CID) -> bytes:
    return b"".join(reader.read(store, cid))


def _tree(store: LocalStore, cid: CID) -> dict[str, bytes]:
    return {name: _cat(store, child) for name, child, _ in reader.entries(store, cid)}


def _seed(store: LocalStore, order: CID, piece: Slice) -> int:
    """The documented seed: the first 4 bytes of sha256 of the slice's evaluation key (its CID's bytes)."""
    sealed = Order.model_validate(dagcbor.decode(store.get(order)))
    return int.from_bytes(hashlib.sha256(bytes(evaluation.key(sealed, piece))).digest()[:4], "big")


# -- 1. files -> directory, and the BOM ------------------------------------------------------------
@pytest.mark.slow
def test_files_to_directory_and_bom(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    src = jobs.module(tmp_path, "fx_upper_bom", """
        def shout(data):
            return data.upper() + b"!"
    """)
    store = jobs.home_store(cats_home)
    inputs = jobs.add(store, jobs.folder(tmp_path, FILES))
    order = Order(function=Function(entry="fx_upper_bom:shout", source=src), inputs=[inputs], name="shout")

    result = factory.run(order)

    assert not result.reused and result.slices == 5 and result.executed == 5
    assert _tree(store, result.output) == {name: data.upper() + b"!" for name, data in FILES.items()}

    bom = load_bom(store, result.bom)
    assert result.bom.codec == DAG_CBOR
    assert bom.name == "shout"
    assert bom.order == result.order and store.has(bom.order)
    with Importer(None, cid_version=1) as importer:
        assert bom.code == importer.add_wrapped(src).cid
    lock = dagcbor.decode(store.get(bom.structure.lock))
    assert "ray" in lock and "pydantic" in lock
    assert bom.inputs == [inputs]
    assert bom.outputs == [result.output]
    assert bom.output_encoding == "unixfs-directory"
    assert bom.parents == []
    assert bom.invoice.slices == 5 and bom.invoice.executed == 5 and bom.invoice.resumed == 0
    assert bom.invoice.bytes_in == sum(map(len, FILES.values()))

    recs = list(bom_records(store, bom))
    assert [r.index for r in recs] == list(range(5))
    assert [r.input.name for r in recs] == sorted(FILES)
    outputs = {name: child for name, child, _ in reader.entries(store, result.output)}
    for r in recs:
        assert r.output == outputs[r.input.name]
        assert r.seed == _seed(store, result.order, r.input)
        assert r.node and r.node in bom.invoice.nodes
        assert 0 <= r.duration_s < 60
        assert r.attempts == 1
        assert r.encoding == "bytes"
        assert r.assembly == {"input": 0, "name": r.input.name}
    assert len({r.seed for r in recs}) == 5

    # every link of the BOM resolves, and the BOM block is the last one written
    dag = list(walk(store, result.bom))
    assert {bom.order, bom.code, bom.structure.lock, inputs, result.output, *bom.slices} <= set(dag)
    assert store.mtime(result.bom) >= max(store.mtime(c) for c in dag if c != result.bom)

    # the BOM is pinned recursively: gc removes nothing its DAG needs
    pins = Pins(cats_home / "pins")
    assert result.bom in pins
    store.put(CID.hash(b"unpinned junk", 0x55), b"unpinned junk")
    time.sleep(0.1)  # gc spares blocks written after it started
    removed = gc(store, pins)
    assert CID.hash(b"unpinned junk", 0x55) in removed
    assert not set(removed) & set(dag)
    assert list(walk(store, result.bom)) == dag


# -- 2. determinism --------------------------------------------------------------------------------
@pytest.mark.slow
def test_determinism(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    from cats.cli.run import _load_order

    store = jobs.home_store(cats_home)
    inputs = jobs.add(store, jobs.folder(tmp_path, FILES))
    order_file = tmp_path / "fx_det_order.py"
    order_file.write_text(textwrap.dedent(f"""
        from cats.order import Function, Order

        def stamp(data, seed):
            return data[::-1] + b"#%d" % seed

        order = Order(function=Function.of(stamp), inputs=["{inputs}"], name="det")
    """))
    order = _load_order(order_file)

    first = factory.run(order)
    second = factory.run(order, force=True)

    assert not second.reused and second.executed == 5
    assert second.order == first.order
    assert second.output == first.output
    seeds = [[r.seed for r in bom_records(store, load_bom(store, run.bom))] for run in (first, second)]
    recs = list(bom_records(store, load_bom(store, first.bom)))
    assert seeds[0] == seeds[1] == [_seed(store, first.order, r.input) for r in recs]
    tree = _tree(store, first.output)
    assert tree["a.txt"] == b"\nahpla#%d" % seeds[0][0]

    # the same Order file sealed by a fresh interpreter has the same CID
    script = ("import sys\nfrom pathlib import Path\nfrom cats.cli.run import _load_order\n"
              "from cats.order.seal import seal\nfrom cats.cas.store.memory import MemoryStore\n"
              "print(seal(_load_order(Path(sys.argv[1])), MemoryStore()).cid)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(order_file)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(first.order)
    assert seal(order, store).cid == first.order


# -- 3. chained Orders -----------------------------------------------------------------------------
@pytest.mark.slow
def test_chained_orders_record_parents(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    src = jobs.module(tmp_path, "fx_chain", """
        def upper(data):
            return data.upper()

        def flip(data):
            return data[::-1]
    """)
    store = jobs.home_store(cats_home)
    inputs = jobs.add(store, jobs.folder(tmp_path, {"x.txt": b"one\n", "y.txt": b"two\n"}))
    first = factory.run(Order(function=Function(entry="fx_chain:upper", source=src), inputs=[inputs]))
    second = factory.run(Order(function=Function(entry="fx_chain:flip", source=src), inputs=[first.output]))

    assert _tree(store, second.output) == {"x.txt": b"\nENO", "y.txt": b"\nOWT"}
    bom2 = load_bom(store, second.bom)
    assert bom2.inputs == [first.output]
    assert bom2.parents == [first.bom]
    assert load_bom(store, first.bom).parents == []
    walked = set(walk(store, second.bom))
    assert first.bom in walked  # lineage is a real link: the parent's whole DAG hangs off the child


# -- 4. user split and merge -----------------------------------------------------------------------
@pytest.mark.slow
def test_user_split_and_merge(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    src = jobs.module(tmp_path, "fx_user_infra", """
        from cats.cas import reader
        from cats.order import Slice

        def split(inputs, store, width):
            # fixed-width ranges, deliberately yielded last-first: the merge must see this order
            for i, cid in enumerate(inputs):
                size = reader.stat(store, cid).size
                for k, start in enumerate(reversed(range(0, size, width))):
                    yield Slice(cid=cid, offset=start, length=min(width, size - start)), {"input": i, "k": k}

        def measure(data):
            return {"n": len(data), "text": data.decode()}

        def merge(pairs, sep):
            return {"ks": [a["k"] for _, a in pairs], "ns": [v["n"] for v, _ in pairs],
                    "text": sep.join(v["text"] for v, _ in pairs)}
    """)
    store = jobs.home_store(cats_home)
    text = b"abcdefghijklmnopqrstuvw"  # 23 bytes -> ranges of 5: 0, 5, 10, 15, 20
    (tmp_path / "letters.txt").write_bytes(text)
    cid = jobs.add(store, tmp_path / "letters.txt")
    order = Order(
        function=Function(entry="fx_user_infra:measure", source=src),
        infra=InfraFunction(split=Function(entry="fx_user_infra:split", source=src, params={"width": 5}),
                            merge=Function(entry="fx_user_infra:merge", source=src, params={"sep": "|"})),
        inputs=[cid])

    result = factory.run(order)

    bom = load_bom(store, result.bom)
    assert bom.output_encoding == "dag-cbor"
    value = results.decode(_cat(store, result.output), bom.output_encoding)
    assert value == {"ks": [0, 1, 2, 3, 4], "ns": [3, 5, 5, 5, 5], "text": "uvw|pqrst|klmno|fghij|abcde"}
    recs = list(bom_records(store, bom))
    assert [(r.input.offset, r.input.length) for r in recs] == [(20, 3), (15, 5), (10, 5), (5, 5), (0, 5)]
    assert [r.assembly for r in recs] == [{"input": 0, "k": k} for k in range(5)]
    assert all(r.encoding == "dag-cbor" for r in recs)


# -- 5. built-in splits, merges and result encodings -----------------------------------------------
@pytest.mark.slow
def test_lines_split_concat_merge(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    src = jobs.module(tmp_path, "fx_lines", """
        def tag(data):
            return b"[%d]" % data.count(b"\\n") + data.upper()
    """)
    store = jobs.home_store(cats_home)
    content = b"".join(b"line %d %s\n" % (i, b"x" * (i * 7 % 23)) for i in range(40)) + b"no newline at the end"
    (tmp_path / "many.txt").write_bytes(content)
    cid = jobs.add(store, tmp_path / "many.txt")
    chunk = 64
    order = Order(function=Function(entry="fx_lines:tag", source=src), inputs=[cid],
                  infra=InfraFunction(split="lines", merge="concat", chunk_bytes=chunk))

    result = factory.run(order)

    bom = load_bom(store, result.bom)
    recs = list(bom_records(store, bom))
    ranges = [(r.input.offset, r.input.offset + r.input.length) for r in recs]
    assert len(ranges) > 5
    assert ranges[0][0] == 0 and ranges[-1][1] == len(content)
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))  # contiguous, no gaps
    pieces = [content[s:e] for s, e in ranges]
    for piece in pieces[:-1]:
        assert piece.endswith(b"\n"), piece  # no range splits a line
        assert len(piece) >= chunk  # about chunk_bytes each, never cut short
    assert pieces[-1].endswith(b"no newline at the end")
    assert _cat(store, result.output) == b"".join(b"[%d]" % p.count(b"\n") + p.upper() for p in pieces)
    assert bom.output_encoding == "bytes"


@pytest.mark.slow
def test_row_groups_split_table_merge(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    src = jobs.module(tmp_path, "fx_rowgroups", """
        import pyarrow.compute as pc

        def enrich(table):
            table = table.filter(pc.equal(pc.bit_wise_and(table["id"], 1), 0))
            return table.append_column("double", pc.multiply(table["value"], 2.0))
    """)
    store = jobs.home_store(cats_home)
    table = pa.table({"id": pa.array(range(40), pa.int64()), "value": pa.array([i / 4 for i in range(40)])})
    pq.write_table(table, tmp_path / "data.parquet", row_group_size=10)
    assert pq.ParquetFile(tmp_path / "data.parquet").metadata.num_row_groups == 4
    cid = jobs.add(store, tmp_path / "data.parquet")
    order = Order(function=Function(entry="fx_rowgroups:enrich", source=src, takes="table"), inputs=[cid],
                  infra=InfraFunction(split="row-groups", merge="table"))

    result = factory.run(order)

    bom = load_bom(store, result.bom)
    recs = list(bom_records(store, bom))
    assert [r.input.row_group for r in recs] == [0, 1, 2, 3]
    assert [r.input.meta for r in recs] == [{"rows": 10}] * 4
    assert bom.output_encoding == "arrow"
    out = results.decode(_cat(store, result.output), "arrow")
    evens = table.filter(pc.equal(pc.bit_wise_and(table["id"], 1), 0))
    expected = evens.append_column("double", pc.multiply(evens["value"], 2.0))
    assert out.num_rows == 20
    assert out.equals(expected), out


@pytest.mark.slow
def test_row_groups_of_a_folder_of_shards(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = jobs.module(tmp_path, "fx_shards", """
        def rows(table):
            return table.num_rows
    """)
    store = jobs.home_store(cats_home)
    shards = tmp_path / "shards"
    shards.mkdir()
    for k, rows in enumerate((30, 12)):
        pq.write_table(pa.table({"v": list(range(rows))}), shards / f"part-{k}.parquet", row_group_size=10)
    order = Order(function=Function(entry="fx_shards:rows", source=src, takes="table"), inputs=[shards],
                  infra=InfraFunction(split="row-groups", merge="list"))

    result = factory.run(order)

    recs = list(bom_records(store, load_bom(store, result.bom)))
    assert [(r.input.name, r.input.row_group, r.input.meta["rows"]) for r in recs] == [
        ("part-0.parquet", 0, 10), ("part-0.parquet", 1, 10), ("part-0.parquet", 2, 10),
        ("part-1.parquet", 0, 10), ("part-1.parquet", 1, 2)]
    outputs = dagcbor.decode(store.get(result.output))
    assert [results.decode(_cat(store, c), "dag-cbor") for c in outputs] == [10, 10, 10, 10, 2]

    (shards / "notes.txt").write_text("not parquet")
    with pytest.raises(CatsError, match="notes.txt in .* is not a Parquet file"):
        factory.run(order)


@pytest.mark.slow
def test_result_encodings_round_trip(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    import numpy as np
    import pandas as pd

    src = jobs.module(tmp_path, "fx_encodings", """
        import numpy as np
        import pandas as pd

        def typed(path):
            words = path.read_text().split()
            if path.stem == "df":
                return pd.DataFrame({"word": words, "n": [len(w) for w in words]})
            if path.stem == "arr":
                return np.array([[len(w), i] for i, w in enumerate(words)], dtype=np.int32)
            return {"name": path.name, "words": words, "count": len(words)}
    """)
    store = jobs.home_store(cats_home)
    files = {"arr.txt": b"to be or not\n", "df.txt": b"ray cats ipfs\n", "map.txt": b"merkle dag\n"}
    inputs = jobs.add(store, jobs.folder(tmp_path, files))
    order = Order(function=Function(entry="fx_encodings:typed", source=src, takes="path"), inputs=[inputs],
                  infra=InfraFunction(merge="list"))

    result = factory.run(order)

    bom = load_bom(store, result.bom)
    assert bom.output_encoding == "dag-cbor-list"
    outputs = dagcbor.decode(store.get(result.output))
    recs = {r.input.name: r for r in bom_records(store, bom)}
    assert outputs == [recs[name].output for name in sorted(files)]
    assert {name: r.encoding for name, r in recs.items()} == {"arr.txt": "npy", "df.txt": "arrow",
                                                              "map.txt": "dag-cbor"}
    value = {name: results.decode(_cat(store, r.output), r.encoding) for name, r in recs.items()}
    pd.testing.assert_frame_equal(value["df.txt"].to_pandas(),
                                  pd.DataFrame({"word": ["ray", "cats", "ipfs"], "n": [3, 4, 4]}))
    assert value["arr.txt"].dtype == np.int32
    np.testing.assert_array_equal(value["arr.txt"], np.array([[2, 0], [2, 1], [2, 2], [3, 3]], dtype=np.int32))
    assert value["map.txt"] == {"name": "map.txt", "words": ["merkle", "dag"], "count": 2}


# -- 6. a failing slice, then resume ---------------------------------------------------------------
@pytest.mark.slow
def test_failed_slice_then_resume(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    src = jobs.module(tmp_path, "fx_picky", """
        import os

        def picky(path, marker):
            if path.name == "c.txt" and not os.path.exists(marker):
                raise ValueError(f"refusing {path.name} until the marker exists")
            return path.read_bytes()[::-1]
    """)
    store = jobs.home_store(cats_home)
    marker = tmp_path / "fixed"
    inputs = jobs.add(store, jobs.folder(tmp_path, FILES))
    order = Order(function=Function(entry="fx_picky:picky", source=src, takes="path",
                                    params={"marker": str(marker)}), inputs=[inputs])
    order_cid = seal(order, store).cid

    with pytest.raises(SliceFailed) as failed:
        factory.run(order)

    message = str(failed.value)
    assert "slice 2 (c.txt)" in message
    assert str(order_cid) in message
    assert "ValueError: refusing c.txt until the marker exists" in message
    assert "Traceback" in message
    index = Index(cats_home / "index.sqlite")
    try:
        done = index.done_slices(str(order_cid))
        assert index.bom_for(str(order_cid)) is None
    finally:
        index.close()
    assert sorted(done) == [0, 1, 3, 4]
    for i, name in zip([0, 1, 3, 4], ["a.txt", "b.txt", "d.txt", "e.txt"], strict=True):
        assert _cat(store, CID.parse(done[i]["output"])) == FILES[name][::-1]

    marker.touch()
    result = factory.run(order)

    assert result.order == order_cid
    assert result.executed == 1 and result.slices == 5 and not result.reused
    assert _tree(store, result.output) == {name: data[::-1] for name, data in FILES.items()}
    bom = load_bom(store, result.bom)
    assert bom.invoice.executed == 1 and bom.invoice.resumed == 4
    recs = list(bom_records(store, bom))
    assert [r.input.name for r in recs] == sorted(FILES)
    assert all(r.attempts == 1 for r in recs), [r.attempts for r in recs]  # nobody died: no retries
    index = Index(cats_home / "index.sqlite")
    try:
        assert index.done_slices(str(order_cid)) == {}  # a finished run drops its partial records
        assert index.bom_for(str(order_cid)) == str(result.bom)
    finally:
        index.close()


# -- 7. a worker killed mid-slice ------------------------------------------------------------------
@pytest.mark.slow
def test_killed_worker_is_retried(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    src = jobs.module(tmp_path, "fx_fragile", """
        import os
        import signal

        def fragile(path, marker):
            if path.name == "b.txt":
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    pass
                else:
                    os.close(fd)
                    os.kill(os.getpid(), signal.SIGKILL)
            return path.read_bytes().upper()
    """)
    store = jobs.home_store(cats_home)
    marker = tmp_path / "killed-once"
    files = {"a.txt": b"alpha\n", "b.txt": b"bravo\n", "c.txt": b"charlie\n"}
    inputs = jobs.add(store, jobs.folder(tmp_path, files))
    order = Order(function=Function(entry="fx_fragile:fragile", source=src, takes="path",
                                    params={"marker": str(marker)}),
                  inputs=[inputs], plant=Plant(retries=2, batch=1))

    result = factory.run(order)

    assert marker.exists()  # the worker really died once
    assert _tree(store, result.output) == {name: data.upper() for name, data in files.items()}
    attempts = {r.input.name: r.attempts for r in bom_records(store, load_bom(store, result.bom))}
    assert attempts["b.txt"] >= 2
    assert attempts["a.txt"] == attempts["c.txt"] == 1


# -- 8. memoization --------------------------------------------------------------------------------
@pytest.mark.slow
def test_memoized_rerun_skips_ray(ray_session: str, cats_home: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    src = jobs.module(tmp_path, "fx_memo", """
        def twice(data):
            return data * 2
    """)
    store = jobs.home_store(cats_home)
    inputs = jobs.add(store, jobs.folder(tmp_path, {"m.txt": b"memo\n", "n.txt": b"nemo\n"}))
    order = Order(function=Function(entry="fx_memo:twice", source=src), inputs=[inputs])
    first = factory.run(order)
    assert not first.reused and first.executed == 2

    def no_ray(*args: object, **kwargs: object) -> None:
        raise AssertionError("a memoized run must not touch Ray")

    monkeypatch.setattr(execution, "connect", no_ray)
    monkeypatch.setattr(factory.worker, "run_batch", no_ray)
    started = time.perf_counter()
    again = factory.run(order)
    elapsed = time.perf_counter() - started

    assert again.reused
    assert again.bom == first.bom and again.output == first.output and again.order == first.order
    assert again.executed == 0
    assert elapsed < 1.0, elapsed

    # force does run again, and so needs Ray: proves the patch above is really on the path
    with pytest.raises(AssertionError, match="must not touch Ray"):
        factory.run(order, force=True)


# -- 8b. homes: each run keeps its BOM in the Home it was given -------------------------------------
@pytest.mark.slow
def test_two_homes_in_one_process(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    src = jobs.module(tmp_path, "fx_two_homes", """
        def rev(data):
            return data[::-1]
    """)
    inputs_folder = jobs.folder(tmp_path, FILES)
    homes = [Home.open(tmp_path / "home-a"), Home.open(tmp_path / "home-b")]
    runs = []
    for h in homes:
        assert h.store.url == (h.folder / "blocks").resolve().as_uri()  # a root's default store is its own
        inputs = jobs.add(h.store, inputs_folder)
        runs.append(factory.run(Order(function=Function(entry="fx_two_homes:rev", source=src), inputs=[inputs]),
                                home=h))
    assert runs[0].order == runs[1].order and runs[0].bom != runs[1].bom  # one Order, two runs (two invoices)

    for mine, other in ((0, 1), (1, 0)):
        h, run, elsewhere = homes[mine], runs[mine], homes[other]
        assert _tree(h.store, run.output) == {name: data[::-1] for name, data in FILES.items()}
        assert h.index.bom_for(str(run.order)) == str(run.bom)  # indexed here ...
        assert run.bom in h.pins and run.bom not in elsewhere.pins  # ... pinned here only ...
        envelope = h.signatures.get(run.bom)
        assert envelope is not None and envelope.signers() == [h.identity.did]  # ... signed here only
        assert elsewhere.signatures.get(run.bom) is None
        assert not elsewhere.store.has(run.bom)
        assert read(run.output, home=h) == {n: c for n, c, _ in reader.entries(h.store, run.output)}
        assert audit.verify(h.store, run.bom, integrity=True, trusted={h.identity.did}, home=h).signers == \
            [h.identity.did]
        assert audit.verify(h.store, run.bom, integrity=True, home=elsewhere).signers == []
    assert homes[0].identity.did != homes[1].identity.did
    # nothing of either run in the CATS_HOME this process has
    assert not [p.name for p in [cats_home / n for n in ("index.sqlite", "pins", "signatures", "identity", "blocks",
                                                          "runs")] if p.exists()]

    # a memoized re-run in a fresh Home on the same folder reads the index only: no key is loaded (or made)
    shutil.rmtree(homes[0].folder / "identity")
    again = Home.open(tmp_path / "home-a")
    inputs = jobs.add(again.store, inputs_folder)
    order = Order(function=Function(entry="fx_two_homes:rev", source=src), inputs=[inputs])
    started = time.perf_counter()
    memo = factory.run(order, home=again)
    assert memo.reused and memo.bom == runs[0].bom
    assert time.perf_counter() - started < 0.5
    assert not (homes[0].folder / "identity").exists()
    for h in (*homes, again):
        h.close()


# -- 8c. record blocks: written as their slices finish, the same blocks as writing them all at the end ---
def test_record_blocks_stream_in_any_order(local_store: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store = local_store
    monkeypatch.setattr(bom_module, "RECORDS_PER_BLOCK", 3)
    recs = [SliceRecord(index=i, input=Slice(cid=CID.hash(b"%d" % i, RAW), name=f"f{i}"),
                        output=CID.hash(b"o%d" % i, RAW), encoding="bytes", size=2, tsize=2, seed=i, node="n",
                        duration_s=0.1, attempts=1, bytes_in=1)
            for i in range(10)]
    at_end = [put_cbor(store, [r.model_dump(exclude_none=True) for r in recs[i:i + 3]]) for i in range(0, 10, 3)]
    writer = RecordBlocks(store, 10)
    for i in (4, 9, 0, 3, 5, 1, 8, 7, 2):
        writer.add(recs[i])
    with pytest.raises(CatsError, match="slices 6 to 8 have 2 records of 3"):
        writer.blocks()
    writer.add(recs[6])
    assert writer.blocks() == at_end
    assert write_records(store, recs) == at_end


@pytest.mark.slow
def test_streamed_bom_equals_one_written_at_the_end(ray_session: str, cats_home: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """10 slices in blocks of 3, run one slice a task (batches finish in any order), one failing
    until fixed: the resumed run folds the earlier slices in, and its BOM is, block for block and
    total for total, the BOM made from the whole list of records at the end."""
    monkeypatch.setattr(bom_module, "RECORDS_PER_BLOCK", 3)
    src = jobs.module(tmp_path, "fx_picky_blocks", """
        import os

        def picky(path, marker):
            if path.name == "f07.txt" and not os.path.exists(marker):
                raise ValueError("not yet")
            return path.read_bytes()[::-1]
    """)
    store = jobs.home_store(cats_home)
    marker = tmp_path / "fixed"
    files = {f"f{i:02d}.txt": f"slice {i}\n".encode() * (i + 1) for i in range(10)}
    inputs = jobs.add(store, jobs.folder(tmp_path, files))
    order = Order(function=Function(entry="fx_picky_blocks:picky", source=src, takes="path",
                                    params={"marker": str(marker)}), inputs=[inputs], plant=Plant(batch=1))
    with pytest.raises(SliceFailed, match="slice 7"):
        factory.run(order)
    marker.touch()
    result = factory.run(order)

    bom = load_bom(store, result.bom)
    assert bom.invoice.resumed == 9 and bom.invoice.executed == 1
    recs = list(bom_records(store, bom))
    assert [r.index for r in recs] == list(range(10))
    # the BOM as it was made when every record was kept until the end
    at_end = bom.model_copy(update={
        "slices": [put_cbor(store, [r.model_dump(exclude_none=True) for r in recs[i:i + 3]]) for i in range(0, 10, 3)],
        "children": sorted({c.bom for r in recs for c in r.children or ()}),
        "invoice": bom.invoice.model_copy(update={
            "slices": len(recs), "bytes_in": sum(r.bytes_in for r in recs), "bytes_out": sum(r.size for r in recs),
            "nodes": sorted({r.node for r in recs} | {o.node for r in recs for o in r.replicas or ()})})})
    assert len(bom.slices) == 4
    assert CID.hash(at_end.block(), DAG_CBOR) == result.bom
    assert bom.invoice.bytes_in == sum(len(data) for data in files.values())


# -- 9. timeouts -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_slice_timeout(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    src = jobs.module(tmp_path, "fx_sleepy", """
        import time

        def sleepy(data):
            time.sleep(120)
            return data
    """)
    store = jobs.home_store(cats_home)
    inputs = jobs.add(store, jobs.folder(tmp_path, {"slow.txt": b"zzz\n"}))
    order = Order(function=Function(entry="fx_sleepy:sleepy", source=src), inputs=[inputs],
                  plant=Plant(timeout_s=2))

    started = time.perf_counter()
    with pytest.raises(SliceFailed) as failed:
        factory.run(order)
    elapsed = time.perf_counter() - started

    message = str(failed.value)
    assert "slice 0 (slow.txt)" in message
    assert "timed out after 2.0 s" in message
    assert elapsed < 60, elapsed


@pytest.mark.slow
def test_structure_iac_and_local_inputs_are_sealed(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    """An IaC folder and local-path inputs become CIDs in the BOM; changing the IaC changes the Order."""
    src = jobs.module(tmp_path, "fx_iac", """
        def same(data):
            return data
    """)
    iac = tmp_path / "terraform"
    iac.mkdir()
    (iac / "main.tf").write_text('variable "workers" { default = 2 }\n')
    folder = jobs.folder(tmp_path, FILES)
    order = Order(function=Function(entry="fx_iac:same", source=src), inputs=[folder],
                  structure=Structure(iac_path=iac))
    result = factory.run(order)
    store = jobs.home_store(cats_home)
    bom = load_bom(store, result.bom)
    assert bom.structure.iac == jobs.add(store, iac)
    assert bom.inputs == [jobs.add(store, folder)]
    (iac / "main.tf").write_text('variable "workers" { default = 3 }\n')
    assert factory.run(order).order != result.order


@pytest.mark.slow
def test_queued_batches_do_not_time_out(ray_session: str, cats_home: Path, tmp_path: Path) -> None:
    """Six 0.6 s slices, one per batch, on 2 CPUs, 1.5 s each: fine, since a batch's clock runs
    only while it runs (batches wait on the driver, not in Ray's queue)."""
    src = jobs.module(tmp_path, "fx_napper", """
        import time

        def nap(data):
            time.sleep(0.6)
            return data
    """)
    store = jobs.home_store(cats_home)
    files = {f"{i}.txt": f"{i}\n".encode() for i in range(6)}
    inputs = jobs.add(store, jobs.folder(tmp_path, files))
    order = Order(function=Function(entry="fx_napper:nap", source=src), inputs=[inputs],
                  plant=Plant(timeout_s=1.5, batch=1))
    result = factory.run(order)
    assert result.executed == 6
    assert {item.name for item in reader.ls(store, result.output)} == set(files)


# -- 10. the CLI -----------------------------------------------------------------------------------
def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert lines, "no output"
    return lines[-1]


@pytest.mark.slow
def test_cli_run(ray_session: str, cli, cats_home: Path, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_session)
    store = jobs.home_store(cats_home)
    inputs = jobs.add(store, jobs.folder(tmp_path, {"p.txt": b"papa\n", "q.txt": b"quebec\n"}))
    order_file = tmp_path / "fx_cli_order.py"
    order_file.write_text(textwrap.dedent(f"""
        from cats.order import Function, Order

        def shout(data):
            return data.upper()

        order = Order(function=Function.of(shout), inputs=["{inputs}"], name="cli")
    """))

    res = cli("run", order_file, "--json", cwd=tmp_path)
    assert res.code == 0, res.err
    summary = json.loads(_last_line(res.out))
    bom, output = CID.parse(summary["bom"]), CID.parse(summary["output"])
    assert summary["reused"] is False and summary["slices"] == 2 and summary["executed"] == 2
    assert _tree(store, output) == {"p.txt": b"PAPA\n", "q.txt": b"QUEBEC\n"}
    assert load_bom(store, bom).outputs == [output]

    again = cli("run", order_file, cwd=tmp_path)
    assert again.code == 0, again.err
    assert again.out == f"bom    {bom}\n"  # labelled; stdout carries nothing else
    assert "reused" in again.err
    assert f"next: cats cat --decode {bom} · cats lineage {bom} · cats verify {bom}" in again.err

    as_json = cli("run", order_file, "--json", cwd=tmp_path)
    assert as_json.code == 0, as_json.err
    assert json.loads(_last_line(as_json.out))["reused"] is True


@pytest.mark.slow
def test_cli_submit(ray_session: str, cli, cats_home: Path, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_session)
    store = jobs.home_store(cats_home)
    files = {"one.txt": b"a b c\n", "two.txt": b"d e\n", "three.txt": b"f\n"}
    inputs = jobs.add(store, jobs.folder(tmp_path, files))
    job = jobs.module(tmp_path, "fx_cli_job", """
        from pathlib import Path

        def count(path):
            assert isinstance(path, Path) and path.is_file()
            return f"{path.name}: {len(path.read_bytes().split())} words"
    """)

    res = cli("submit", "-f", job, "-c", str(inputs), "--entry", "count", "--json", cwd=tmp_path)

    assert res.code == 0, res.err
    summary = json.loads(_last_line(res.out))
    output = CID.parse(summary["output"])
    assert _tree(store, output) == {"one.txt": b"one.txt: 3 words", "two.txt": b"two.txt: 2 words",
                                    "three.txt": b"three.txt: 1 words"}
    bom = load_bom(store, CID.parse(summary["bom"]))
    assert bom.inputs == [inputs] and bom.name == "submit fx_cli_job.py:count"



def test_cli_bad_inputs(cli, cats_home: Path, tmp_path: Path) -> None:
    no_order = tmp_path / "fx_no_order.py"
    no_order.write_text("x = 1\n")
    cli("run", no_order).error_line("fx_no_order.py", "order")

    job = jobs.module(tmp_path, "fx_cli_bad", """
        def f(path):
            return b""
    """)
    some_cid = str(CID.hash(b"x", 0x55))
    missing = cli("submit", "-f", tmp_path / "missing.py", "-c", some_cid, "--entry", "f")
    missing.error_line("missing.py", "does not exist")
    cli("submit", "-f", job, "-c", "not-a-cid", "--entry", "f").error_line("not-a-cid")
