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
import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import Result

from cats.bom.signatures import Envelope, Signature, Signatures, sign
from cats.cas import car, dagcbor, varint
from cats.cas.cid import CID
from cats.cas.dag import walk
from cats.cas.importer import Importer
from cats.cas.store.local import LocalStore
from cats.cas.store.memory import MemoryStore
from cats.identity import Identity
from cats.mesh.client import MeshError, pull, read_car


def _random(n: int, seed: int = 5) -> bytes:
    return random.Random(seed).randbytes(n)


def _add(store: LocalStore | MemoryStore, data: bytes) -> CID:
    with Importer(store, cid_version=1) as importer:
        return importer.add_bytes(data).cid


def _cli(home: Path, *args: str, **env: str) -> Result:
    proc = subprocess.run([sys.executable, "-m", "cats", *args], capture_output=True, timeout=300,
                          env={**os.environ, "CATS_HOME": str(home), **env})
    return Result(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"),
                  proc.stdout)


# -- a fake node, for what a real one never does ----------------------------------------------------


@dataclass
class FakeNode:
    """Serves /id, /ipfs/{cid}?format=car|raw and /bom/{cid}/signatures from a store; can corrupt a
    block (`corrupt[cid] = bytes`) or end every CAR stream after `stop_after` blocks."""

    store: MemoryStore = field(default_factory=MemoryStore)
    corrupt: dict[CID, bytes] = field(default_factory=dict)
    envelopes: dict[CID, bytes] = field(default_factory=dict)
    stop_after: int | None = None
    log: list[str] = field(default_factory=list)
    url: str = ""

    def car(self, root: CID) -> Iterator[bytes]:
        header = dagcbor.encode({"roots": [root], "version": 1})
        yield varint.encode(len(header)) + header
        for i, cid in enumerate(walk(self.store, root)):
            if self.stop_after is not None and i >= self.stop_after:
                return
            block = self.corrupt.get(cid, self.store.get(cid))
            yield varint.encode(len(bytes(cid)) + len(block)) + bytes(cid) + block


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
            for piece in state.car(cid):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")

        def _send(self, status: int, body: str | bytes) -> None:
            data = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


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
    _cli(home, "mesh", "pull", str(root), "--from", fake.url, "--json").error_line(str(bad), "does not match")
    assert not LocalStore(home / "blocks").has(bad)
    # a block that is not the one asked for is refused as well (raw route too)
    from cats.mesh.client import Node

    with Node(fake.url) as node, pytest.raises(MeshError, match=f"does not match {bad}"):
        node.block(bad)


def test_a_stream_that_stops_early_is_completed_by_further_requests(fake: FakeNode, tmp_path: Path) -> None:
    root = _add(fake.store, _random(3_000_000, seed=9))
    total = len(list(walk(fake.store, root)))
    fake.stop_after = 4  # the node ends every CAR after 4 blocks, as one missing deeper blocks does
    here = LocalStore(tmp_path / "blocks")
    report = pull(here, root, fake.url, signatures=Signatures(tmp_path / "sigs"))
    assert report.blocks == report.fetched_blocks == total
    assert report.requests > 1 and report.skipped_blocks == 0
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
