"""The mesh client (`cats.mesh.client`, `cats mesh …`) against real CAT Nodes on loopback.

Three `cats node start` processes, each with its own CATS_HOME: A produces lineage, B pulls it and
verifies it by re-execution from the pulled blocks alone, C is a stranger A does not trust. What a
real node would never do (serve a corrupted block, stop a CAR stream early) is played by a tiny
fake node on http.server.
"""

from __future__ import annotations

import base64
import io
import json
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import jobs
import pytest
from conftest import Result
from nodes import RealNode, run_cli, start_all
from servers import free_port, loopback

from cats.bom.signatures import Envelope, Signature, Signatures, sign
from cats.cas import car
from cats.cas.cid import CID
from cats.cas.dag import put_cbor, walk
from cats.cas.importer import Importer
from cats.cas.store.local import LocalStore
from cats.cas.store.memory import MemoryStore
from cats.errors import MeshError
from cats.identity import Identity
from cats.mesh.client import pull, read_car


def _random(n: int, seed: int = 5) -> bytes:
    return random.Random(seed).randbytes(n)


def _add(store: LocalStore | MemoryStore, data: bytes) -> CID:
    with Importer(store, cid_version=1) as importer:
        return importer.add_bytes(data).cid


# -- a fake node, for what a real one never does ----------------------------------------------------


@dataclass
class FakeNode:
    """Serves /id, /ipfs/{cid}?format=car|raw and /bom/{cid}/signatures from a store; can corrupt a
    block (`corrupt[cid] = bytes`), end every CAR stream cleanly after `stop_after` blocks, or cut it
    (half a section, then the connection closes without the final chunk) after `cut_after` blocks."""

    store: MemoryStore = field(default_factory=MemoryStore)
    corrupt: dict[CID, bytes] = field(default_factory=dict)
    envelopes: dict[CID, bytes] = field(default_factory=dict)
    stop_after: int | None = None
    cut_after: int | None = None
    log: list[str] = field(default_factory=list)
    url: str = ""

    def car(self, root: CID) -> Iterator[bytes]:
        yield car.header([root])
        for i, cid in enumerate(walk(self.store, root)):
            if self.stop_after is not None and i >= self.stop_after:
                return
            block = self.corrupt.get(cid, self.store.get(cid))
            yield car.section(cid, block)


@pytest.fixture
def fake() -> Iterator[FakeNode]:
    state = FakeNode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            state.log.append(self.path)
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            if parts.path == "/id":
                return self._send(200, json.dumps({"did": "did:key:z6Mkfake", "version": "0", "private": False}))
            if parts.path.startswith("/bom/") and parts.path.endswith("/signatures"):
                envelope = state.envelopes.get(CID.parse(parts.path.split("/")[2]))
                return self._send(200, envelope) if envelope else self._send(404, '{"detail": "no signatures"}')
            if not parts.path.startswith("/ipfs/"):
                return self._send(404, '{"detail": "no such route"}')
            cid = CID.parse(parts.path[len("/ipfs/"):])
            if not state.store.has(cid):
                return self._send(404, json.dumps({"detail": f"{cid} not found"}))
            if query.get("format") == ["raw"]:
                return self._send(200, state.corrupt.get(cid, state.store.get(cid)))
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.ipld.car")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i, piece in enumerate(state.car(cid)):
                if state.cut_after is not None and i > state.cut_after:
                    half = piece[:len(piece) // 2]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(half), half))
                    self.close_connection = True
                    return
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")

        def _send(self, status: int, body: str | bytes) -> None:
            data = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    with loopback(Handler) as state.url:
        yield state


# -- the client alone -------------------------------------------------------------------------------


def test_read_car_parses_any_chunking_and_refuses_a_cut_stream() -> None:
    store = MemoryStore()
    root = _add(store, _random(700_000))  # three 256 KiB leaves and a root
    out = io.BytesIO()
    car.export(store, [root], out)
    stream = out.getvalue()
    expected = [(cid, store.get(cid)) for cid in walk(store, root)]
    for size in (1, 7, 4096, 65_536, len(stream)):
        chunks = [stream[i:i + size] for i in range(0, len(stream), size)]
        assert list(read_car(iter(chunks), "test", root=root)) == expected
    with pytest.raises(MeshError, match="ended inside a section"):
        list(read_car(iter([stream[:-10]]), "test"))
    other = _add(store, b"another")
    with pytest.raises(MeshError, match=f"do not include {other}"):
        list(read_car(iter([stream]), "test", root=other))
    with pytest.raises(MeshError, match="not a CAR"):
        list(read_car(iter([b""]), "test"))
    with pytest.raises(MeshError, match="varint is not minimally encoded"):  # the one varint, as strict as import's
        list(read_car(iter([car.header([root]), b"\x85", b"\x00"]), "test"))


def test_a_corrupted_block_is_refused_naming_its_cid(fake: FakeNode, tmp_path: Path) -> None:
    root = _add(fake.store, _random(1_000_000, seed=8))
    leaves = list(walk(fake.store, root))[1:]
    bad = leaves[2]
    fake.corrupt[bad] = b"x" * len(fake.store.get(bad))
    here = LocalStore(tmp_path / "blocks")
    with pytest.raises(MeshError, match=f"does not match {bad}; not stored"):
        pull(here, root, fake.url, signatures=Signatures(tmp_path / "sigs"))
    assert not here.has(bad)
    assert all(here.get(cid) for cid in here)  # whatever was stored is whole and verified
    # the CLI: one line naming the CID, exit 1
    home = tmp_path / "cli-home"
    run_cli(home, "mesh", "pull", str(root), "--from", fake.url, "--json").error_line(str(bad), "does not match")
    assert not LocalStore(home / "blocks").has(bad)
    # a block that is not the one asked for is refused as well (raw route too)
    from cats.mesh.client import Node

    with Node(fake.url) as node, pytest.raises(MeshError, match=f"does not match {bad}"):
        node.block(bad)


def test_blocks_as_large_as_a_car_allows_cross_the_reused_receive_buffers_intact(fake: FakeNode,
                                                                                 tmp_path: Path) -> None:
    from cats.cas import dagcbor
    from cats.cas.cid import DAG_CBOR, RAW
    from cats.mesh.client import PIECE

    # Blocks of car.MAX_BLOCK, each placed by a filler before it to start in the last bytes of a piece,
    # so its section spans four pieces: all are held while the fourth is read. The stream is many times
    # the receive buffers, so each buffer is reused while blocks of other pieces are still being stored.
    count = 16
    placeholder = [CID.hash(b"", RAW)] * count
    at = len(car.header([CID.hash(b"", DAG_CBOR)])) + len(car.section(CID.hash(b"", DAG_CBOR),
                                                                     dagcbor.encode({"leaves": placeholder})))
    leaves, spans = [], []
    for i in range(count):
        if i % 2:
            size = car.MAX_BLOCK
        else:  # a filler ending `i` bytes before the end of a piece
            prefix = len(car.section(CID.hash(b"", RAW), b"x" * PIECE)) - PIECE
            size = (-at - prefix - (i + 1)) % PIECE + PIECE
        data = _random(size, seed=100 + i)
        leaves.append(CID.hash(data, RAW))
        fake.store.put(leaves[-1], data)
        section = len(car.section(leaves[-1], data))
        spans.append((at + section - 1) // PIECE - at // PIECE + 1)
        at += section
    assert max(spans) == 4  # the premise: sections as long as a CAR allows span four pieces
    root = put_cbor(fake.store, {"leaves": leaves})
    here = LocalStore(tmp_path / "blocks")
    report = pull(here, root, fake.url, signatures=Signatures(tmp_path / "sigs"))
    assert report.fetched_blocks == count + 1
    assert all(here.get(cid) == fake.store.get(cid) for cid in leaves)  # read back, checked against its CID


@pytest.mark.parametrize("how", ["stop", "cut"])
def test_a_stream_that_stops_early_is_completed_by_further_requests(fake: FakeNode, tmp_path: Path,
                                                                    how: str) -> None:
    root = _add(fake.store, _random(3_000_000, seed=9))
    total = len(list(walk(fake.store, root)))
    if how == "stop":
        fake.stop_after = 4  # every CAR ends cleanly after 4 blocks
    else:
        fake.cut_after = 4  # every CAR breaks off inside its 5th block, as a real node missing it does
    here = LocalStore(tmp_path / "blocks")
    report = pull(here, root, fake.url, signatures=Signatures(tmp_path / "sigs"))
    assert report.blocks == report.fetched_blocks == total
    assert report.requests > 1 and report.skipped_blocks == 0
    assert report.cut == (0 if how == "stop" else 1)  # the later requests are for single leaves
    assert sum(1 for _ in walk(here, root, read_leaves=True)) == total
    # pulling again asks for nothing
    fake.log.clear()
    again = pull(here, root, fake.url, signatures=Signatures(tmp_path / "sigs"))
    assert (again.fetched_blocks, again.present_blocks, again.requests) == (0, total, 0)
    assert again.present_bytes == report.fetched_bytes
    assert not [p for p in fake.log if p.startswith("/ipfs/")]


def test_only_valid_signatures_are_kept(fake: FakeNode, tmp_path: Path) -> None:
    from cats.cas.dag import put_cbor

    signer = Identity.load(tmp_path / "signer")
    forger = Identity.load(tmp_path / "forger")
    bom = put_cbor(fake.store, {"type": "cats.bom", "note": "not a full BOM: the client only looks at type"})
    envelope = sign(signer, bom)
    forged = Signature(keyid=forger.did, sig=base64.b64encode(b"\0" * 64).decode())
    envelope = envelope.model_copy(update={"signatures": [*envelope.signatures, forged]})
    fake.envelopes[bom] = envelope.model_dump_json().encode()
    sigs = Signatures(tmp_path / "sigs")
    report = pull(MemoryStore(), bom, fake.url, signatures=sigs)
    assert report.boms == [str(bom)] and report.signers == {str(bom): [signer.did]}
    kept = sigs.get(bom)
    assert kept is not None and [s.keyid for s in kept.signatures] == [signer.did]
    # an envelope over another BOM is refused
    other = put_cbor(fake.store, {"type": "cats.bom", "note": "another"})
    fake.envelopes[other] = fake.envelopes[bom]
    with pytest.raises(MeshError, match=f"envelope over {bom} for {other}"):
        pull(MemoryStore(), other, fake.url, signatures=sigs)
    assert Envelope.model_validate_json(fake.envelopes[bom]).bom == bom


# -- three real nodes -------------------------------------------------------------------------------


@dataclass
class Mesh:
    a: RealNode
    b: RealNode
    c: RealNode
    bom: CID  # made by A's Factory before A started
    big: CID  # a DAG of a few tens of MB in A's store
    work: Path


BIG = 40 << 20


@pytest.fixture(scope="module")
def mesh(ray_session: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    from cats import factory
    from cats.identity.trust import Trust
    from cats.order import Function, Order

    work = tmp_path_factory.mktemp("mesh")
    a, b = RealNode(work / "a", ray_session), RealNode(work / "b", ray_session)
    c = RealNode(work / "c", ray_session, private=True)
    for node in (a, b, c):
        node.home.mkdir(parents=True)
    # A produces, in its own home, before it starts
    src = jobs.module(work, "mesh_reverse", "def reverse(data):\n    return data[::-1]\n")
    inputs = jobs.folder(work, {f"part-{i}.txt": _random(50_000 + i, seed=i) for i in range(3)})
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CATS_HOME", str(a.home))
        env.delenv("CATS_STORE", raising=False)
        run = factory.run(Order(function=Function(entry="mesh_reverse:reverse", source=src), inputs=[inputs],
                                name="reverse"), quiet=True)
    big = _add(a.store, _random(BIG, seed=42))
    # A trusts B (B may push and submit there); B trusts A; nobody trusts C, whose node is private
    # and trusts B alone (only B may read it)
    Trust(a.home / "trust.json").add(b.did, name="b", url=b.url)
    Trust(b.home / "trust.json").add(a.did, name="a", url=a.url)
    Trust(c.home / "trust.json").add(b.did, name="b", url=b.url)
    start_all(a, b, c)
    try:
        yield Mesh(a, b, c, run.bom, big, work)
    finally:
        for node in (a, b, c):
            if node.proc is not None:
                node.stop()


@pytest.mark.slow
def test_b_pulls_a_lineage_and_verifies_it_by_reexecution(mesh: Mesh) -> None:
    a, b = mesh.a, mesh.b
    res = b.cli("mesh", "pull", str(mesh.bom), "--from", a.url, "--json")
    assert res.code == 0, res.err
    report = json.loads(res.out)
    expected = list(walk(a.store, mesh.bom))
    assert report["blocks"] == report["fetched_blocks"] == len(expected) and report["skipped_blocks"] == 0
    assert report["fetched_bytes"] == sum(len(a.store.get(c)) for c in expected)
    assert report["signers"] == {str(mesh.bom): [a.did]} and report["pinned"]
    assert all(b.store.get(cid) for cid in expected)  # every block of the lineage, verified
    envelope = Signatures(b.home / "signatures").get(mesh.bom)
    assert envelope is not None and envelope.signers() == [a.did]
    # re-execution in B's home from the pulled blocks alone
    verified = b.cli("verify", str(mesh.bom), "--json")
    assert verified.code == 0, verified.out + verified.err
    verdict = json.loads(verified.out)
    assert verdict["verified"] and verdict["signers"] == [a.did]
    assert verdict["slices"] and all(s["ok"] for s in verdict["slices"])
    # again: nothing to fetch
    again = json.loads(b.cli("mesh", "pull", str(mesh.bom), "--from", a.url, "--json").out)
    assert (again["fetched_blocks"], again["present_blocks"], again["requests"]) == (0, len(expected), 0)


@pytest.mark.slow
def test_push_to_a_node_that_trusts_the_pusher(mesh: Mesh) -> None:
    a, b = mesh.a, mesh.b
    fresh = _add(b.store, _random(3_000_000, seed=77))  # in B's home: B's CLI pushes to A, which trusts B
    res = b.cli("mesh", "push", str(fresh), "--to", a.url, "--json")
    assert res.code == 0, res.err
    report = json.loads(res.out)
    blocks = list(walk(b.store, fresh))
    assert (report["blocks"], report["complete_there"]) == (len(blocks), False)
    assert all(a.store.get(cid) == b.store.get(cid) for cid in blocks)
    assert fresh.to_v1() in {p.to_v1() for p in _pins(a)}
    # pushing it again sends nothing
    again = json.loads(b.cli("mesh", "push", str(fresh), "--to", a.url, "--json").out)
    assert (again["blocks"], again["complete_there"]) == (0, True)


def _pins(node: RealNode) -> list[CID]:
    from cats.cas.pins import Pins

    return list(Pins(node.home / "pins"))


@pytest.mark.slow
def test_a_stranger_is_refused(mesh: Mesh, tmp_path: Path) -> None:
    a, c = mesh.a, mesh.c
    mine = _add(c.store, b"c's own data\n")
    c.cli("mesh", "push", str(mine), "--to", a.url).error_line(a.url, "403", c.did, "not trusted")
    assert not a.store.has(mine)
    order = _order_file(tmp_path, "mesh_stranger", "stranger")
    c.cli("mesh", "submit", str(order), "--to", a.url, "--json").error_line(a.url, "403", c.did)
    # reading an open node needs no trust
    res = c.cli("mesh", "pull", str(mesh.bom), "--from", a.url, "--json")
    assert res.code == 0, res.err


@pytest.mark.slow
def test_a_private_node_is_read_by_the_peers_it_trusts_only(mesh: Mesh) -> None:
    a, b, c = mesh.a, mesh.b, mesh.c
    secret = _add(c.store, _random(600_000, seed=13))
    assert httpx.get(f"{c.url}/ipfs/{secret}?format=raw").status_code == 401
    res = b.cli("mesh", "pull", str(secret), "--from", c.url, "--json")  # C trusts B: reads are signed
    assert res.code == 0, res.err
    assert json.loads(res.out)["fetched_blocks"] == len(list(walk(c.store, secret)))
    a.cli("mesh", "pull", str(secret), "--from", c.url).error_line(c.url, "403", a.did)
    assert not a.store.has(secret)


def _order_file(folder: Path, module: str, text: str) -> Path:
    data = folder / f"{module}-inputs"
    data.mkdir()
    for i in range(2):
        (data / f"{i}.txt").write_text(f"{text} {i}\n")
    path = folder / f"{module}.py"
    path.write_text(f"""
from pathlib import Path

from cats.order import Function, Order


def tag(data: bytes) -> bytes:
    return b"[" + data.strip() + b"]"


order = Order(function=Function.of(tag), inputs=[Path({str(data)!r})], name={module!r})
""")
    return path


@pytest.mark.slow
def test_an_order_submitted_from_b_runs_on_a_and_comes_back_signed_by_a(mesh: Mesh, tmp_path: Path) -> None:
    from cats.bom import load

    a, b = mesh.a, mesh.b
    res = b.cli("mesh", "submit", str(_order_file(tmp_path, "mesh_submitted", "from b")), "--to", a.url,
                "--json", "--timeout", "120", "--fetch-output")
    assert res.code == 0, res.err
    result = json.loads(res.out)
    bom = CID.parse(result["bom"])
    assert result["status"] == "done" and result["pulled"]["signers"] == {str(bom): [a.did]}
    envelope = Signatures(b.home / "signatures").get(bom)
    assert envelope is not None and envelope.signers() == [a.did]  # the BOM is A's
    assert a.store.has(bom) and all(b.store.get(cid) for cid in walk(b.store, bom))
    assert str(load(b.store, bom).order) == result["order"]
    from cats.cas import reader

    out = {name: b"".join(reader.read(b.store, cid)) for name, cid, _ in reader.entries(b.store, bom_output(b, bom))}
    assert out == {"0.txt": b"[from b 0]", "1.txt": b"[from b 1]"}


def bom_output(node: RealNode, bom: CID) -> CID:
    from cats.bom import load

    return load(node.store, bom).outputs[0]


@pytest.mark.slow
def test_a_node_killed_mid_pull_loses_nothing_and_the_pull_resumes(mesh: Mesh) -> None:
    a, b = mesh.a, mesh.b
    total = list(walk(a.store, mesh.big))
    here = b.store
    killed = threading.Event()

    def kill_a_third_of_the_way(report) -> None:  # a PullReport
        if not killed.is_set() and report.fetched_bytes > BIG // 3:
            killed.set()
            a.kill()

    with pytest.raises(MeshError) as cut:
        pull(here, mesh.big, a.url, signatures=Signatures(b.home / "signatures"), progress=kill_a_third_of_the_way)
    assert killed.is_set() and a.url in str(cut.value)
    present = [cid for cid in total if here.has(cid)]
    assert 0 < len(present) < len(total)
    assert all(here.get(cid) for cid in present)  # only whole, verified blocks were left behind
    a.start()
    assert all(a.store.get(cid) for cid in total)  # A lost nothing
    res = b.cli("mesh", "pull", str(mesh.big), "--from", a.url, "--json")
    assert res.code == 0, res.err
    report = json.loads(res.out)
    assert report["blocks"] == len(total)
    assert report["present_blocks"] == len(present)  # not asked for again
    assert report["fetched_blocks"] == len(total) - len(present)
    assert report["duplicate_blocks"] == 0
    assert report["present_bytes"] + report["fetched_bytes"] == sum(len(a.store.get(c)) for c in total)
    assert all(here.get(cid) for cid in total)


@pytest.mark.slow
def test_a_block_the_node_lacks_is_named(mesh: Mesh, tmp_path: Path) -> None:
    a = mesh.a
    root = _add(a.store, _random(1_500_000, seed=21))
    lost = list(walk(a.store, root))[3]
    a.store.delete(lost)  # A's CAR of root now breaks off where this block should be
    here = LocalStore(tmp_path / "blocks")
    with pytest.raises(MeshError, match=f"answered 404 to GET /ipfs/{lost}"):
        pull(here, root, a.url, signatures=Signatures(tmp_path / "sigs"))
    assert here.has(root) and not here.has(lost)


@pytest.mark.slow
def test_cli_errors_name_the_cid_and_the_url(mesh: Mesh) -> None:
    a, b = mesh.a, mesh.b
    unknown = CID.hash(b"nobody has this block")
    b.cli("mesh", "pull", str(unknown), "--from", a.url).error_line(str(unknown), a.url, "404")
    down = f"http://127.0.0.1:{free_port()}"
    b.cli("mesh", "pull", str(mesh.bom), "--from", down).error_line("cannot reach node", down)
    b.cli("mesh", "push", str(mesh.bom), "--to", down).error_line("cannot reach node", down)
    b.cli("mesh", "pull", "not-a-cid", "--from", a.url).error_line("not-a-cid")
    b.cli("mesh", "pull", str(mesh.bom), "--from", "ftp://example").error_line("ftp://example")


@pytest.mark.slow
def test_trust_and_peers(mesh: Mesh, tmp_path: Path) -> None:
    a, c = mesh.a, mesh.c
    home = tmp_path / "someone"

    def cli(*args: str) -> Result:
        return run_cli(home, *args)

    me = cli("id").out.strip()
    assert me.startswith("did:key:z6Mk") and json.loads(cli("id", "--json").out) == {"did": me}
    down = f"http://127.0.0.1:{free_port()}"
    assert cli("mesh", "trust", "add", a.did, "--name", "a", "--url", a.url).code == 0
    assert cli("mesh", "trust", "add", c.did, "--name", "c", "--url", a.url).code == 0  # A answers, not C
    assert cli("mesh", "trust", "add", mesh.b.did, "--url", down, "--json").code == 0
    assert cli("mesh", "trust", "add", Identity.load(tmp_path / "x").did).code == 0  # no URL
    listed = json.loads(cli("mesh", "trust", "ls", "--json").out)
    assert [p["did"] for p in listed][:3] == [a.did, c.did, mesh.b.did]
    status = {p["did"]: p["status"] for p in json.loads(cli("mesh", "peers", "--json").out)}
    assert status == {a.did: "reachable", c.did: "wrong did", mesh.b.did: "down",
                      Identity.load(tmp_path / "x").did: "no url"}
    table = cli("mesh", "peers").out
    assert "reachable" in table and "wrong did" in table and a.did in table
    assert cli("mesh", "trust", "rm", c.did).code == 0
    assert c.did not in cli("mesh", "trust", "ls").out
    cli("mesh", "trust", "rm", c.did).error_line(c.did, "not trusted")
    cli("mesh", "trust", "add", "did:key:nonsense").error_line("did:key:nonsense")
