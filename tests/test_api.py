"""The package root as users meet it: `import cats` stays cheap, every exported name resolves (for
type checkers too), public models say what they are, `cats.read` decodes results as their runs
recorded them, and the split/merge example of the README runs on Ray exactly as written.
"""

from __future__ import annotations

import ast
import base64
import dataclasses
import inspect
import json
import runpy
import subprocess
import sys
import typing
from pathlib import Path

import jobs
import pytest
from pydantic import BaseModel

import cats
from cats import data
from cats.bom import SliceRecord
from cats.bom import load as load_bom
from cats.bom import records as bom_records
from cats.bom.index import Index
from cats.bom.ref import OutputRef
from cats.cas import dagcbor, dagjson, reader
from cats.cas.cid import CID, DAG_CBOR, DAG_JSON, RAW
from cats.cas.dag import put_cbor
from cats.cas.importer import Importer
from cats.cas.store.memory import MemoryStore

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("ray", "pyarrow", "pandas", "numpy", "pydantic", "httpx", "fastapi")


# -- the package root ------------------------------------------------------------------------------
def test_import_cats_is_cheap_and_lists_every_export() -> None:
    probe = ("import json, sys; import cats; "
             "print(json.dumps({'modules': sorted(sys.modules), 'dir': dir(cats)}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, check=True, text=True).stdout
    seen = json.loads(out)
    loaded = {name.split(".")[0] for name in seen["modules"]}
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    assert [m for m in seen["modules"] if m.startswith("cats")] == ["cats"]  # nothing of cats beyond its root
    assert set(cats.__all__) <= set(seen["dir"])  # listed before any of them is loaded


def test_every_export_resolves_from_its_home() -> None:
    for name in cats.__all__:
        value = getattr(cats, name)
        if name != "__version__":
            assert getattr(value, "__module__", cats._EXPORTS[name]) == cats._EXPORTS[name], name
    assert cats.verify.__module__ == "cats.api" and callable(cats.verify)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cats.nope  # noqa: B018


def test_type_checkers_see_what_getattr_exports() -> None:
    """The `if TYPE_CHECKING:` imports are the exports, name for name, module for module."""
    tree = ast.parse((ROOT / "cats" / "__init__.py").read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    imported = {alias.name: node.module for node in block.body if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    assert imported == cats._EXPORTS


def test_errors_live_in_one_module() -> None:
    for name, module in cats._EXPORTS.items():
        value = getattr(cats, name)
        if inspect.isclass(value) and issubclass(value, Exception):
            assert module == "cats.errors" and issubclass(value, cats.CatsError), name
    assert issubclass(cats.SliceFailed, cats.CatsError) and issubclass(cats.MeshError, cats.CatsError)


def _own_doc(cls: type) -> str:
    """The class's own docstring, not an inherited one nor the signature dataclasses write."""
    doc = (cls.__dict__.get("__doc__") or "").strip()
    return "" if doc.startswith(f"{cls.__name__}(") else doc


def _models(annotation: object) -> set[type]:
    if inspect.isclass(annotation) and (issubclass(annotation, BaseModel) or dataclasses.is_dataclass(annotation)):
        return {annotation}
    return {m for arg in typing.get_args(annotation) for m in _models(arg)}


def test_public_models_say_what_they_are() -> None:
    """Every class the root exports, and every model their fields hold, has a docstring of its own."""
    todo = [v for v in (getattr(cats, n) for n in cats.__all__) if inspect.isclass(v)] + [SliceRecord]
    seen: set[type] = set()
    while todo:
        cls = todo.pop()
        if cls in seen or cls.__module__.split(".")[0] != "cats":
            continue
        seen.add(cls)
        assert _own_doc(cls), f"{cls.__module__}.{cls.__qualname__} has no docstring"
        if issubclass(cls, BaseModel):
            todo += [m for f in cls.model_fields.values() for m in _models(f.annotation)]
        elif dataclasses.is_dataclass(cls):
            hints = typing.get_type_hints(cls)
            todo += [m for f in dataclasses.fields(cls) for m in _models(hints[f.name])]
    names = {c.__name__ for c in seen}
    assert {"Order", "Function", "InfraFunction", "Slice", "Structure", "Plant", "Check", "BOM", "SliceRecord",
            "Invoice", "Run", "Report", "Problem", "Child", "Submitted"} <= names, names


# -- cats.read without a run -----------------------------------------------------------------------
def test_read_blocks_folders_and_files(cats_home: Path, tmp_path: Path) -> None:
    store = jobs.home_store(cats_home)
    leaf = CID.hash(b"leaf", RAW)
    store.put(leaf, b"leaf")
    value = {"n": 3, "link": leaf, "raw": b"\x00\x01", "list": [1.5, None, "x"]}
    assert cats.read(put_cbor(store, value)) == value  # the default store: this node's
    block = dagjson.encode({"k": [leaf]})
    as_json = CID.hash(block, DAG_JSON)
    store.put(as_json, block)
    assert cats.read(str(as_json)) == {"k": [leaf]}
    folder = jobs.add(store, jobs.folder(tmp_path, {"a.txt": b"alpha\n", "b.bin": b"\x00\xff"}))
    entries = cats.read(folder)
    assert entries == {name: cid for name, cid, _ in reader.entries(store, folder)}
    assert set(entries) == {"a.txt", "b.bin"}
    assert cats.read(entries["b.bin"]) == b"\x00\xff"

    other = MemoryStore()  # another store: given, it is the one read
    elsewhere = put_cbor(other, ["only", "here"])
    assert cats.read(elsewhere, store=other) == ["only", "here"]
    with pytest.raises(cats.BlockNotFound, match=str(elsewhere)):
        cats.read(elsewhere)
    with pytest.raises(cats.InvalidCID, match="not-a-cid"):
        cats.read("not-a-cid")


def test_read_names_a_result_that_does_not_decode_as_recorded(cats_home: Path) -> None:
    store = jobs.home_store(cats_home)
    with Importer(store, cid_version=1) as importer:
        result = importer.add_bytes(b"not an Arrow stream").cid
    index = Index(cats_home / "index.sqlite")
    index.record_run("order", "bom", ["elsewhere"], None, [(str(result), "arrow")])
    index.close()
    with pytest.raises(cats.CatsError, match=f"{result} does not decode as arrow, its recorded encoding"):
        cats.read(result)


def test_read_a_result_written_to_a_uri() -> None:
    """A reference block: the bytes come from the URI at the pinned version and must hash as recorded."""
    store = MemoryStore()
    payload = dagcbor.encode({"rows": 3})
    written = data.write("mem://api-read/result", payload)
    with Importer(None, cid_version=1) as importer:
        content = str(importer.add_bytes(payload).cid)

    def ref(**fields: object) -> CID:
        block = OutputRef(**{"uri": written.uri, "version": written.version, "size": len(payload),
                             "content": content, "encoding": "dag-cbor", **fields}).block()
        cid = CID.hash(block, DAG_CBOR)
        store.put(cid, block)
        return cid

    assert cats.read(ref(), store=store) == {"rows": 3}
    forged = ref(content=str(CID.hash(b"something else", RAW)))
    with pytest.raises(cats.IntegrityError, match=f"the result {forged} refers to"):
        cats.read(forged, store=store)
    data.write("mem://api-read/result", dagcbor.encode({"rows": 4}))  # changed at the source since
    with pytest.raises(cats.DataIntegrityError, match="mem://api-read/result"):
        cats.read(ref(), store=store)


def test_index_keeps_slice_encodings(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    try:
        index.record_run("o1", "b1", ["out1"], None, [("r1", "npy"), ("r2", "text")])
        index.learn_outputs("b2", ["out2"], [("r2", "bytes"), ("r3", "arrow")])  # pulled: never over our own
        assert [index.encoding(c) for c in ("r1", "r2", "r3", "r4")] == ["npy", "text", "arrow", None]
    finally:
        index.close()


# -- cats.read and `cats cat --decode` over real runs -----------------------------------------------
@pytest.mark.slow
def test_read_results_by_their_recorded_encodings(ray_session: str, cats_home: Path, tmp_path: Path,
                                                  cli) -> None:
    import numpy as np
    import pyarrow as pa

    src = jobs.module(tmp_path, "fx_api_typed", """
        import numpy as np
        import pandas as pd
        import pyarrow as pa

        def typed(path):
            words = path.read_text().split()
            kind = path.stem
            if kind.startswith("table"):
                return pa.table({"word": words, "n": [len(w) for w in words]})
            if kind == "frame":
                return pd.DataFrame({"word": words, "n": [len(w) for w in words]})
            if kind == "array":
                return np.array([len(w) for w in words], dtype=np.int16)
            if kind == "text":
                return " ".join(reversed(words))
            if kind == "raw":
                return path.read_bytes()[::-1]
            return {"words": words, "bytes": path.read_bytes()}
    """)
    store = jobs.home_store(cats_home)
    files = {"array.txt": b"to be or not\n", "frame.txt": b"ray cats\n", "map.txt": b"merkle dag\n",
             "raw.txt": b"\x00\x01abc", "table.txt": b"content addressed\n", "text.txt": b"one two three\n"}
    inputs = jobs.add(store, jobs.folder(tmp_path, files))
    function = cats.Function(entry="fx_api_typed:typed", source=src, takes="path")

    listed = cats.run(cats.Order(function=function, inputs=[inputs], infra=cats.InfraFunction(merge="list")))
    cids = cats.read(listed.bom)
    assert cats.read(listed.output) == cids  # the output of a known BOM decodes as the BOM says
    recs = {r.input.name: r for r in bom_records(store, load_bom(store, listed.bom))}
    assert cids == [recs[name].output for name in sorted(files)]
    value = {name: cats.read(recs[name].output) for name in files}  # slice results: encodings from the index
    expected = pa.table({"word": ["content", "addressed"], "n": [7, 9]})
    assert isinstance(value["table.txt"], pa.Table) and value["table.txt"].equals(expected)
    assert value["frame.txt"].to_pylist() == [{"word": "ray", "n": 3}, {"word": "cats", "n": 4}]
    assert value["array.txt"].dtype == np.int16 and value["array.txt"].tolist() == [2, 2, 2, 3]
    assert value["text.txt"] == "three two one"
    assert value["raw.txt"] == b"cba\x01\x00"
    assert value["map.txt"] == {"words": ["merkle", "dag"], "bytes": b"merkle dag\n"}

    folder = cats.run(cats.Order(function=function, inputs=[inputs]))  # the default: a directory merge
    entries = cats.read(folder.bom)
    assert sorted(entries) == sorted(files)
    assert cats.read(entries["text.txt"]) == "three two one"
    two = {"table-1.txt": b"content addressed\n", "table-2.txt": b"ray cats\n"}
    tables = jobs.add(store, jobs.folder(tmp_path, two, name="tables"))
    merged = cats.run(cats.Order(function=function, inputs=[tables], infra=cats.InfraFunction(merge="table")))
    assert cats.read(merged.bom).equals(pa.concat_tables([expected, pa.table({"word": ["ray", "cats"], "n": [3, 4]})]))

    def decoded(cid: CID) -> str:
        res = cli("cat", "--decode", cid)
        assert res.code == 0, res.err
        return res.out

    rows = [json.loads(line) for line in decoded(merged.bom).splitlines()]
    assert rows == [{"word": "content", "n": 7}, {"word": "addressed", "n": 9}, {"word": "ray", "n": 3},
                    {"word": "cats", "n": 4}]
    assert decoded(recs["text.txt"].output) == "three two one"
    assert json.loads(decoded(recs["array.txt"].output)) == [2, 2, 2, 3]
    assert json.loads(decoded(recs["map.txt"].output)) == {
        "words": ["merkle", "dag"], "bytes": {"/": {"bytes": base64.b64encode(b"merkle dag\n").decode().rstrip("=")}}}
    assert json.loads(decoded(listed.bom)) == [{"/": str(c)} for c in cids]
    assert json.loads(decoded(folder.bom)) == {name: {"/": str(c)} for name, c in entries.items()}
    raw = cli("cat", "--decode", f"{folder.output}/raw.txt")  # a path inside the output
    assert raw.code == 0 and raw.stdout_bytes == b"cba\x01\x00"


# -- the README's split and merge, run as written --------------------------------------------------
@pytest.mark.slow
def test_readme_split_and_merge_example(ray_session: str, cats_home: Path, cli, capsys) -> None:
    example = ROOT / "demo" / "paragraphs.py"
    texts = {path.name: path.read_bytes() for path in (ROOT / "demo" / "texts").iterdir()}
    expected = {name: [len(p.split()) for p in text.split(b"\n\n")] for name, text in texts.items()}

    runpy.run_path(str(example), run_name="__main__")

    bom_line, output_line, verdict = capsys.readouterr().out.splitlines()
    assert output_line.split(maxsplit=1) == ["output", str(expected)]  # the merge's dict, read back from the store
    assert verdict == "verified"
    label, bom_text = bom_line.split()
    assert label == "BOM"
    bom_cid = CID.parse(bom_text)
    assert cats.read(bom_cid) == expected and cats.verify(bom_cid, integrity=True).verified

    store = jobs.home_store(cats_home)
    bom = load_bom(store, bom_cid)
    assert bom.output_encoding == "dag-cbor"
    recs = list(bom_records(store, bom))
    paragraphs = [(name, k) for name in sorted(texts) for k in range(len(expected[name]))]
    assert [r.assembly for r in recs] == [{"text": name, "paragraph": k} for name, k in paragraphs]
    assert [r.input.name for r in recs] == [f"{name}#{k}" for name, k in paragraphs]
    for r in recs:  # each slice read its paragraph's byte range, and its result decodes to the count
        text = texts[str(r.assembly["text"])]
        assert r.input.offset is not None and r.input.length is not None
        paragraph = text[r.input.offset:r.input.offset + r.input.length]
        assert paragraph == text.split(b"\n\n")[int(r.assembly["paragraph"])]
        assert cats.read(r.output) == len(paragraph.split())

    res = cli("cat", "--decode", bom_cid)
    assert res.code == 0, res.err
    assert json.loads(res.out) == expected
