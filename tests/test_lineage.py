"""Lineage, `cats bom show`, `cats lineage` and `cats log` over hand-built BOMs (no Ray needed).

The BOMs are the real pydantic model, stored with put_cbor in the default LocalStore of the
test's CATS_HOME and recorded in its run index, exactly where a Factory run would leave them.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from cats.bom import BOM, Invoice, SliceRecord, records, write_records
from cats.bom import lineage as lin
from cats.bom.index import Index
from cats.cas.cid import CID, DAG_CBOR, RAW
from cats.cas.dag import put_cbor
from cats.cas.store import BlockStore
from cats.cas.store.local import LocalStore
from cats.errors import BlockNotFound, CatsError, InvalidCID
from cats.order.infra import Slice
from cats.order.structure import Structure


def _raw(store: BlockStore, data: bytes) -> CID:
    cid = CID.hash(data, RAW)
    store.put(cid, data)
    return cid


def _bom(store: BlockStore, name: str | None, inputs: list[CID], parents: list[CID], minute: int) -> BOM:
    """A plausible BOM with one slice: its own code, lock and Order blocks, one raw output."""
    output = _raw(store, f"output of {name}".encode())
    record = SliceRecord(index=0, input=Slice(cid=inputs[0], name="part-0"), output=output, encoding="raw",
                         size=12, tsize=12, seed=7, node="node-1", duration_s=0.25, attempts=1, bytes_in=10)
    started = f"2024-05-01T12:{minute:02d}:00.000+00:00"
    return BOM(
        name=name,
        order=put_cbor(store, {"order": name, "inputs": inputs}),
        code=put_cbor(store, {"source": f"def f(path): return b'{name}'"}),
        structure=Structure(python="3.11.9", lock=put_cbor(store, {"lock": ["numpy==2.0.0"]}),
                              requirements=["numpy==2.0.0"]),
        inputs=inputs, outputs=[output], output_encoding="raw",
        slices=write_records(store, [record]), parents=parents,
        invoice=Invoice(started=started, finished=started.replace(":00.000", ":01.000"), duration_s=1.0,
                        slices=1, executed=1, resumed=0, bytes_in=10, bytes_out=12, executor="host/node-1",
                        nodes=["node-1"], cats_version="0.1.0"),
    )


def _save(store: BlockStore, index: Index, bom: BOM) -> str:
    cid = put_cbor(store, bom.model_dump(exclude_none=True))
    index.record_run(str(bom.order), str(cid), [str(o) for o in bom.outputs], bom.name)
    return str(cid)


@dataclass
class Chain:
    store: LocalStore
    index: Index
    a: str
    b: str
    c: str
    boms: dict[str, BOM]


@pytest.fixture
def chain(cats_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Chain]:
    """A -> B -> C: each BOM's input is its parent's output; recorded at t = 100, 200, 300."""
    clock = iter([100.0, 200.0, 300.0, 400.0, 500.0])
    monkeypatch.setattr("cats.bom.index.time", SimpleNamespace(time=lambda: next(clock), monotonic=time.monotonic,
                                                               sleep=time.sleep))
    store = LocalStore(cats_home / "blocks")
    index = Index(cats_home / "index.sqlite")
    boms: dict[str, BOM] = {}
    parents: list[CID] = []
    inputs = [_raw(store, b"raw input data")]
    cids = []
    for minute, name in enumerate(["alpha", "beta", "gamma"]):
        bom = _bom(store, name, inputs, parents, minute)
        cid = _save(store, index, bom)
        boms[cid] = bom
        cids.append(cid)
        parents, inputs = [CID.parse(cid)], bom.outputs
    yield Chain(store, index, *cids, boms=boms)
    index.close()


# -- the graph --------------------------------------------------------------------------------------------
def test_ancestors_walk_parents_through_the_store(chain: Chain) -> None:
    assert lin.ancestors(chain.store, chain.c) == {chain.a, chain.b}
    assert lin.ancestors(chain.store, chain.b) == {chain.a}
    assert lin.ancestors(chain.store, CID.parse(chain.a)) == set()


def test_descendants_come_from_the_index(chain: Chain) -> None:
    assert lin.descendants(chain.store, chain.index, chain.a) == {chain.b, chain.c}
    assert lin.descendants(chain.store, chain.index, chain.b) == {chain.c}
    assert lin.descendants(chain.store, chain.index, chain.c) == set()


def test_graph_has_edges_parent_to_child_and_node_attributes(chain: Chain) -> None:
    g = lin.graph(chain.store, chain.b, chain.index)
    assert g.graph["root"] == chain.b
    assert set(g.nodes) == {chain.a, chain.b, chain.c}
    assert set(g.edges) == {(chain.a, chain.b), (chain.b, chain.c)}
    bom = chain.boms[chain.b]
    assert g.nodes[chain.b] == {
        "name": "beta", "order": str(bom.order), "inputs": [str(c) for c in bom.inputs],
        "outputs": [str(c) for c in bom.outputs], "started": "2024-05-01T12:01:00.000+00:00", "slices": 1,
        "missing": False, "error": None}
    # B's input is A's output: the edge is what the data says, not just what `parents` says
    assert g.nodes[chain.b]["inputs"] == g.nodes[chain.a]["outputs"]


def test_graph_without_an_index_has_only_ancestors(chain: Chain) -> None:
    g = lin.graph(chain.store, chain.b)
    assert set(g.nodes) == {chain.a, chain.b}


def test_diamond_keeps_every_edge_between_graph_nodes(chain: Chain) -> None:
    """D uses both A's and C's outputs: lineage of B must show A -> D as well as C -> D."""
    a, c = chain.boms[chain.a], chain.boms[chain.c]
    d = _save(chain.store, chain.index,
              _bom(chain.store, "delta", [*a.outputs, *c.outputs], [CID.parse(chain.a), CID.parse(chain.c)], 9))
    g = lin.graph(chain.store, chain.b, chain.index)
    assert set(g.edges) == {(chain.a, chain.b), (chain.b, chain.c), (chain.c, d), (chain.a, d)}
    assert lin.descendants(chain.store, chain.index, chain.a) == {chain.b, chain.c, d}


def test_missing_and_non_bom_parents_become_missing_nodes(chain: Chain) -> None:
    gone = CID.hash(b"a BOM block that was never stored", DAG_CBOR)
    raw = _raw(chain.store, b"raw bytes, not a BOM")
    bom = _bom(chain.store, "orphan", [raw], [gone, raw, CID.parse(chain.a)], 5)
    cid = _save(chain.store, chain.index, bom)
    g = lin.graph(chain.store, cid, chain.index)
    assert g.nodes[str(gone)]["missing"] is True
    assert "not found" in g.nodes[str(gone)]["error"]
    assert g.nodes[str(raw)]["missing"] is True
    assert "not a BOM" in g.nodes[str(raw)]["error"]
    assert g.nodes[chain.a]["missing"] is False
    assert lin.ancestors(chain.store, cid) == {str(gone), str(raw), chain.a}
    doc = json.loads(lin.to_json(g))
    assert {n["cid"]: n["missing"] for n in doc["nodes"]} == {
        str(gone): True, str(raw): True, chain.a: False, cid: False}
    assert f'"{gone}" [label="missing\\n{gone}", style=dashed' in lin.to_dot(g)
    assert re.search(rf"class (\S+,)*n_{gone}\b", lin.to_mermaid(g))
    text = _render(lin.to_tree(g, cid))
    assert f"missing {gone}" in text and "not found in the store" in text


@pytest.mark.parametrize("bad", ["not-a-cid", "bafy"])
def test_graph_rejects_malformed_cids(chain: Chain, bad: str) -> None:
    with pytest.raises(InvalidCID, match=re.escape(bad)):
        lin.graph(chain.store, bad)


def test_graph_root_must_be_a_stored_bom(chain: Chain) -> None:
    unknown = CID.hash(b"never stored", DAG_CBOR)
    with pytest.raises(BlockNotFound, match=str(unknown)):
        lin.graph(chain.store, unknown)
    raw = _raw(chain.store, b"plain data")
    with pytest.raises(CatsError, match=f"{raw} is raw, not a BOM"):
        lin.graph(chain.store, raw)


# -- renderers ------------------------------------------------------------------------------------------
def test_json_lists_nodes_parents_first_and_edges(chain: Chain) -> None:
    doc = json.loads(lin.to_json(lin.graph(chain.store, chain.c, chain.index)))
    assert doc["root"] == chain.c
    assert [n["cid"] for n in doc["nodes"]] == [chain.a, chain.b, chain.c]
    assert [n["name"] for n in doc["nodes"]] == ["alpha", "beta", "gamma"]
    assert {(e["parent"], e["child"]) for e in doc["edges"]} == {(chain.a, chain.b), (chain.b, chain.c)}


_DOT_ID = r'"(?:[^"\\]|\\.)*"'
_DOT_ATTRS = rf"\[(?:\w+=(?:{_DOT_ID}|[\w.]+)(?:, )?)*\]"
_DOT_STATEMENT = re.compile(rf"^  (?:node {_DOT_ATTRS}|{_DOT_ID} {_DOT_ATTRS}|{_DOT_ID} -> {_DOT_ID});$")


def _dot_lines(text: str) -> list[str]:
    """Check the DOT skeleton and that every statement is quoted and escaped; return the statements."""
    lines = text.splitlines()
    assert lines[0] == "digraph lineage {" and lines[-1] == "}"
    for line in lines[1:-1]:
        assert _DOT_STATEMENT.match(line), line
    return lines[1:-1]


def test_dot_is_valid_and_has_one_line_per_edge(chain: Chain) -> None:
    lines = _dot_lines(lin.to_dot(lin.graph(chain.store, chain.a, chain.index)))
    edges = {line for line in lines if "->" in line}
    assert edges == {f'  "{chain.a}" -> "{chain.b}";', f'  "{chain.b}" -> "{chain.c}";'}
    for cid in (chain.a, chain.b, chain.c):
        assert any(line.startswith(f'  "{cid}" [label=') for line in lines), cid


def test_dot_and_mermaid_escape_awkward_names(chain: Chain) -> None:
    name = 'say "hi" \\ <b>#1</b>'
    cid = _save(chain.store, chain.index, _bom(chain.store, name, chain.boms[chain.c].outputs,
                                                [CID.parse(chain.c)], 7))
    g = lin.graph(chain.store, cid, chain.index)
    dot_lines = _dot_lines(lin.to_dot(g))
    assert any('label="say \\"hi\\" \\\\ <b>#1</b>\\n' in line for line in dot_lines)
    mermaid = lin.to_mermaid(g)
    node_line = next(line for line in mermaid.splitlines() if line.startswith(f"  n_{cid}["))
    assert node_line == (f'  n_{cid}["say #quot;hi#quot; \\ #lt;b#gt;#35;1#lt;/b#gt;<br/>{cid}<br/>'
                         f'2024-05-01T12:07:00.000+00:00"]')


def test_mermaid_has_quoted_labels_and_edges(chain: Chain) -> None:
    text = lin.to_mermaid(lin.graph(chain.store, chain.c, chain.index))
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    assert f"  n_{chain.a} --> n_{chain.b}" in lines and f"  n_{chain.b} --> n_{chain.c}" in lines
    assert sum("-->" in line for line in lines) == 2
    for cid in (chain.a, chain.b, chain.c):
        assert any(re.fullmatch(rf'  n_{cid}\["[^"]*{cid}[^"]*"\]', line) for line in lines), cid
    assert f"  class n_{chain.c} root" in lines


def _render(tree: object) -> str:
    console = Console(file=io.StringIO(), width=400, color_system=None)
    console.print(tree)
    return console.file.getvalue()


def test_tree_nests_parents_with_inputs_and_outputs(chain: Chain) -> None:
    g = lin.graph(chain.store, chain.c, chain.index)
    text = _render(lin.to_tree(g, chain.c))
    lines = text.splitlines()
    assert chain.c in lines[0] and "gamma" in lines[0]

    def depth(needle: str) -> int:
        line = next(line for line in lines if needle in line and ("alpha" in line or "beta" in line))
        return len(line) - len(line.lstrip(" │├└─"))

    assert depth(chain.a) > depth(chain.b) > 0  # A is B's parent, nested under it
    a_out = str(chain.boms[chain.a].outputs[0])
    assert "inputs" in text and "outputs" in text and a_out in text


# -- the CLI -------------------------------------------------------------------------------------------
def test_cli_lineage_json(chain: Chain, cli) -> None:
    res = cli("lineage", chain.c, "--format", "json")
    assert res.code == 0, res.err
    doc = json.loads(res.out)
    assert {n["cid"] for n in doc["nodes"]} == {chain.a, chain.b, chain.c}
    assert {(e["parent"], e["child"]) for e in doc["edges"]} == {(chain.a, chain.b), (chain.b, chain.c)}


def test_cli_lineage_of_the_first_run_finds_descendants(chain: Chain, cli) -> None:
    res = cli("lineage", chain.a, "-f", "dot")
    assert res.code == 0, res.err
    lines = _dot_lines(res.out)
    assert f'  "{chain.a}" -> "{chain.b}";' in lines and f'  "{chain.b}" -> "{chain.c}";' in lines
    res = cli("lineage", chain.a, "-f", "mermaid")
    assert res.code == 0, res.err
    assert f"  n_{chain.b} --> n_{chain.c}" in res.out.splitlines()


def test_cli_lineage_tree_is_the_default_and_never_wraps_cids(chain: Chain, cli) -> None:
    res = cli("lineage", chain.b)
    assert res.code == 0, res.err
    lines = res.out.splitlines()
    assert chain.b in lines[0]
    assert any(chain.a in line and "alpha" in line for line in lines)
    assert any(chain.c in line and "gamma" in line for line in lines)  # under "derived"
    assert "derived" in res.out


def test_cli_bom_show_json_round_trips(chain: Chain, cli) -> None:
    res = cli("bom", "show", chain.c, "--json")
    assert res.code == 0, res.err
    data = json.loads(res.out)
    slice_records = data.pop("slice_records")
    assert data.pop("signers") == []  # these BOMs were written by hand, so nobody signed them
    assert data.pop("bad_signatures") == []  # unsigned, not wrongly signed
    bom = BOM.model_validate(data)
    assert bom == chain.boms[chain.c]
    assert str(CID.hash(bom.block(), DAG_CBOR)) == chain.c
    assert data["parents"] == [chain.b] and data["structure"]["lock"] == str(bom.structure.lock)
    assert slice_records == [r.model_dump(mode="json") for r in records(chain.store, bom)]
    assert len(slice_records) == 1 and slice_records[0]["node"] == "node-1"


def test_cli_bom_show_lists_every_field(chain: Chain, cli) -> None:
    res = cli("bom", "show", chain.b)
    assert res.code == 0, res.err
    bom = chain.boms[chain.b]
    fields = {line.split()[0]: line.split(None, 1)[1] for line in res.out.splitlines() if not line.startswith(" ")}
    assert fields["bom"] == chain.b
    assert fields["order"] == str(bom.order) and fields["code"] == str(bom.code)
    assert fields["lock"] == str(bom.structure.lock) and fields["python"] == "3.11.9"
    assert fields["inputs"] == str(bom.inputs[0]) and fields["outputs"] == str(bom.outputs[0])
    assert fields["parents"] == chain.a and fields["encoding"] == "raw" and fields["iac"] == "-"
    assert fields["started"] == "2024-05-01T12:01:00.000+00:00"


def test_cli_log_lists_runs_newest_first(chain: Chain, cli) -> None:
    res = cli("log", "--json")
    assert res.code == 0, res.err
    runs = json.loads(res.out)
    assert [r["bom"] for r in runs] == [chain.c, chain.b, chain.a]
    assert [r["name"] for r in runs] == ["gamma", "beta", "alpha"]
    assert runs[0]["output"] == str(chain.boms[chain.c].outputs[0])
    assert runs[-1]["time"] == "1970-01-01T00:01:40+00:00"  # the fixture's clock: t = 100
    res = cli("log", "--limit", "2")
    assert res.code == 0, res.err
    lines = res.out.splitlines()
    assert len(lines) == 2 and chain.c in lines[0] and chain.b in lines[1] and "gamma" in lines[0]


def test_cli_log_before_any_run_is_empty(cli) -> None:
    res = cli("log", "--json")
    assert res.code == 0, res.err
    assert json.loads(res.out) == []


@pytest.mark.parametrize("command", [["lineage"], ["bom", "show"]])
@pytest.mark.parametrize("kind", ["malformed", "raw", "unknown", "not-a-bom"])
def test_cli_bad_cids_fail_with_one_line(chain: Chain, cli, command: list[str], kind: str) -> None:
    if kind == "malformed":
        target = "bafy-not-a-cid"
    elif kind == "raw":
        target = str(chain.boms[chain.a].outputs[0])
    elif kind == "unknown":
        target = str(CID.hash(b"never stored", DAG_CBOR))
    else:
        target = str(chain.boms[chain.a].code)  # a dag-cbor block, but not a BOM
    res = cli(*command, target)
    assert res.code == 1, (res.out, res.err)
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and target in lines[0], res.err
    assert res.out == ""
