"""The CAT Node (`cats node start`) as a real process on loopback, with its own CATS_HOME.

One public node serves the module (`node`): before it starts, a folder DAG is added to its store and
an Order is run by the Factory in its CATS_HOME (so the BOM is signed by the node's DID). Requests are
signed as a peer (a second Identity on the node's trust list) or as an outsider (not on it). The
private node, the restart and the Order submitted over HTTP get nodes of their own.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import select
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from unittest import mock

import httpx
import jobs
import jsref
import pytest

from cats import factory
from cats.bom import load as load_bom
from cats.bom.signatures import PAYLOAD_TYPE, Envelope, Signature, pae, sign
from cats.cas import car, dagcbor, reader, varint
from cats.cas.cid import CID, DAG_CBOR, RAW
from cats.cas.dag import links, put_cbor, walk
from cats.cas.importer import Importer
from cats.cas.store.local import LocalStore
from cats.cas.store.memory import MemoryStore
from cats.identity import Identity
from cats.identity import requests as signed_requests
from cats.identity.requests import sign_request
from cats.identity.trust import Trust
from cats.mesh.node.orders import STOPPED
from cats.order import Function, Order
from cats.order.seal import seal

MAX_BODY = 4 << 20  # the module node's CATS_NODE_MAX_BODY
CAR_TYPE = "application/vnd.ipld.car"
RAW_TYPE = "application/vnd.ipld.raw"


# -- a node process ----------------------------------------------------------------------------------
@dataclass
class NodeProc:
    """`cats node start --port 0` in a subprocess; the URL and DID come from the line it prints when ready."""

    base: Path
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None  # the folder the node is started in
    python: tuple[str, ...] = ()  # interpreter options, before -m cats
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    did: str = ""

    @property
    def home(self) -> Path:
        return self.base / "home"

    @property
    def store(self) -> LocalStore:
        return LocalStore(self.home / "blocks")

    def start(self) -> NodeProc:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CATS_HOME": str(self.home), **self.env}
        env.pop("CATS_STORE", None)
        with open(self.base / "node.err", "ab") as err:
            self.proc = subprocess.Popen([sys.executable, *self.python, "-m", "cats", "node", "start", "--port", "0",
                                          *self.args],
                                         stdout=subprocess.PIPE, stderr=err, env=env, cwd=self.cwd)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline().decode() if ready else ""
        assert line.startswith("cats node did:key:"), (line, (self.base / "node.err").read_text())
        words = line.split()
        assert words[3:5] == ["listening", "on"], line
        self.did, self.url = words[2], words[5]
        assert self.did == Identity.load(self.home / "identity").did
        return self

    def stop(self, how: signal.Signals = signal.SIGTERM) -> None:
        """SIGTERM (or SIGINT); the node must exit 0 without a traceback."""
        assert self.proc is not None
        self.proc.send_signal(how)
        code = self.proc.wait(timeout=30)
        err = (self.base / "node.err").read_text()
        assert code == 0, err
        assert "Traceback" not in err, err
        assert "cats node stopped" in err
        self.proc = None

    def request(self, method: str, path: str, *, who: Identity | None = None, body: bytes = b"",
                headers: dict[str, str] | None = None) -> httpx.Response:
        """A request, signed by `who` over exactly this method, path (with query) and body."""
        sent = dict(headers or {})
        if who is not None:
            sent.update(sign_request(who, self.did, method, path, body))
        return httpx.request(method, self.url + path, content=body or None, headers=sent, timeout=60)

    def get(self, path: str, **kw: object) -> httpx.Response:
        return self.request("GET", path, **kw)  # type: ignore[arg-type]


def parse_car(data: bytes) -> tuple[list[CID], list[tuple[CID, bytes]]]:
    stream = io.BytesIO(data)
    roots = car.read_header(stream)
    blocks = []
    while (n := varint.read(stream)) is not None:
        section = stream.read(n)
        assert len(section) == n, "truncated CAR section"
        cid, start = CID.read(section, 0)
        blocks.append((cid, section[start:]))
    return roots, blocks


def car_of(store: LocalStore | MemoryStore, *roots: CID) -> bytes:
    out = io.BytesIO()
    car.export(store, roots, out)
    return out.getvalue()


def raw_car(roots: list[CID], sections: list[tuple[CID, bytes]]) -> bytes:
    """A CAR written without checks, so it can carry what a real export never would."""
    return b"".join([car.header(roots), *(car.section(cid, block) for cid, block in sections)])


def detail(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str), body
    return body["detail"]


def wait_done(node: NodeProc, job: str, who: Identity, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        response = node.get(f"/orders/{job}", who=who)
        assert response.status_code == 200, response.text
        state = response.json()
        if state["status"] in ("done", "failed", "cancelled"):
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.2)


# -- the module's node -------------------------------------------------------------------------------
FILES = {"a.txt": b"alpha\n", "b.txt": b"bravo bravo\n", "big.bin": random.Random(6).randbytes(700_000)}


@dataclass
class Served:
    node: NodeProc
    peer: Identity
    outsider: Identity
    folder: CID  # a UnixFS folder with a multi-block file
    big: CID  # a 4 MiB file (16 leaves) for the concurrent pulls
    bom: CID
    output: CID
    cut: CID  # a dag-cbor block linking a block the node does not have


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, ray_session: str) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("node")
    node = NodeProc(base, env={"CATS_NODE_MAX_BODY": str(MAX_BODY), "RAY_ADDRESS": ray_session})
    peer, outsider = Identity.load(base / "peer"), Identity.load(base / "outsider")
    Trust(node.home / "trust.json").add(peer.did, name="peer")
    store = node.store
    folder = jobs.add(store, jobs.folder(base, FILES))
    with Importer(store, cid_version=1) as importer:
        big = importer.add_bytes(random.Random(7).randbytes(4 << 20)).cid
    absent = CID.hash(b"never stored", RAW)
    cut = put_cbor(store, {"first": CID.hash(b"stored", RAW), "second": absent})
    store.put(CID.hash(b"stored", RAW), b"stored")

    # a real run in the node's CATS_HOME before it starts: its BOM is signed with the node's key
    src = jobs.module(base, "mesh_node_upper", """
        def upper(data):
            return data.upper()
    """)
    saved = os.environ.get("CATS_HOME")
    os.environ["CATS_HOME"] = str(node.home)
    try:
        run = factory.run(Order(function=Function(entry="mesh_node_upper:upper", source=src), inputs=[folder],
                                name="upper"), quiet=True)
    finally:
        if saved is None:
            os.environ.pop("CATS_HOME")
        else:
            os.environ["CATS_HOME"] = saved
    node.start()
    try:
        yield Served(node, peer, outsider, folder, big, run.bom, run.output, cut)
    finally:
        node.stop()


# -- reads -------------------------------------------------------------------------------------------
def test_id(served: Served) -> None:
    response = served.node.get("/id")
    assert response.status_code == 200
    assert response.json() == {"did": served.node.did, "version": "0.1.0", "private": False}


def test_raw_block_and_car_of_a_dag(served: Served) -> None:
    node, root = served.node, served.folder
    raw = node.get(f"/ipfs/{root}?format=raw")
    assert raw.status_code == 200 and raw.headers["content-type"] == RAW_TYPE
    assert raw.content == node.store.get(root) and root.verify(raw.content)
    by_accept = node.get(f"/ipfs/{root}", headers={"Accept": RAW_TYPE})
    assert by_accept.status_code == 200 and by_accept.content == raw.content

    response = node.get(f"/ipfs/{root}?format=car")
    assert response.status_code == 200 and response.headers["content-type"].startswith(CAR_TYPE)
    roots, blocks = parse_car(response.content)
    assert roots == [root]
    cids = [cid for cid, _ in blocks]
    assert all(cid.verify(block) for cid, block in blocks)
    assert len(set(cids)) == len(cids), "each block once"
    assert set(cids) == set(walk(node.store, root)) and len(cids) > len(FILES) + 1  # big.bin has several leaves
    position = {cid: i for i, cid in enumerate(cids)}
    for cid, block in blocks:  # parents before children
        for child in links(cid, block):
            assert position[child] > position[cid]
    # the whole DAG reads back: the folder's files from the CAR alone
    mem = MemoryStore()
    for cid, block in blocks:
        mem.put(cid, block)
    assert {name: b"".join(reader.read(mem, cid)) for name, cid, _ in reader.entries(mem, root)} == FILES

    by_accept = node.get(f"/ipfs/{root}", headers={"Accept": f"{CAR_TYPE}; version=1"})
    assert by_accept.content == response.content
    single = node.get(f"/ipfs/{root}?format=car&dag-scope=block")
    assert single.status_code == 200
    assert parse_car(single.content) == ([root], [(root, raw.content)])


def test_car_read_by_ipld_car(served: Served, tmp_path: Path) -> None:
    """The independent JS implementation (@ipld/car) reads the node's CAR and checks every block."""
    jsref.require()
    path = tmp_path / "folder.car"
    path.write_bytes(served.node.get(f"/ipfs/{served.folder}?format=car").content)
    read = jsref.car_read(path)
    assert read["roots"] == [str(served.folder)] and not read["unverified"]
    assert {CID.parse(b["cid"]) for b in read["blocks"]} == set(walk(served.node.store, served.folder))


def test_read_errors(served: Served) -> None:
    node, root = served.node, served.folder
    neither = node.get(f"/ipfs/{root}")
    assert neither.status_code == 406
    assert "format=raw" in detail(neither) and "format=car" in detail(neither)
    assert node.get(f"/ipfs/{root}", headers={"Accept": "*/*"}).status_code == 406
    assert node.get(f"/ipfs/{root}?format=tar").status_code == 406
    scope = node.get(f"/ipfs/{root}?format=car&dag-scope=everything")
    assert scope.status_code == 400 and "everything" in detail(scope)
    malformed = node.get("/ipfs/not-a-cid?format=raw")
    assert malformed.status_code == 400 and "not-a-cid" in detail(malformed)
    text = str(root.to_v1())  # 36 bytes in base32: the last character has 2 unused bits; setting one mistypes it
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    mistyped = text[:-1] + alphabet[alphabet.index(text[-1]) | 1]
    assert mistyped != text and node.get(f"/ipfs/{text}?format=raw").status_code == 200
    for path in (f"/ipfs/{mistyped}?format=raw", f"/bom/{mistyped}", f"/lineage/{mistyped}"):
        refused = node.get(path)
        assert refused.status_code == 400 and mistyped in detail(refused) and "not the canonical" in detail(refused)
    unknown = CID.hash(b"nobody stored this", RAW)
    for fmt in ("raw", "car"):
        missing = node.get(f"/ipfs/{unknown}?format={fmt}")
        assert missing.status_code == 404 and str(unknown) in detail(missing)
    assert node.get(f"/bom/{unknown}").status_code == 404
    assert node.get(f"/lineage/{unknown}").status_code == 404
    assert node.get(f"/bom/{unknown}/signatures").status_code == 404
    assert node.get("/bom/zzz").status_code == 400
    not_bom = node.get(f"/bom/{root}")
    assert not_bom.status_code == 422 and str(root) in detail(not_bom)


def test_car_cut_short_when_a_deeper_block_is_missing(served: Served) -> None:
    """The root is here, so the answer starts (200); the missing block ends the transfer incomplete."""
    node = served.node
    with httpx.stream("GET", f"{node.url}/ipfs/{served.cut}?format=car", timeout=30) as response:
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            response.read()
    assert node.get("/id").status_code == 200  # and the node carries on


def test_has_answers_for_whole_dags_in_one_request(served: Served) -> None:
    """A root without the rest of its DAG is missing; a whole DAG is present, however it is spelled."""
    node = served.node
    absent = CID.hash(b"nobody stored this", RAW)
    leaf = next(c for c in walk(node.store, served.big) if c.codec == RAW)
    asked = [served.folder, served.cut, absent, served.bom, served.big.to_v0(), leaf, served.folder]
    answer = node.request("POST", "/has", body=json.dumps({"cids": [str(c) for c in asked]}).encode())
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"present": [str(asked[0]), str(asked[3]), str(asked[4]), str(leaf), str(asked[0])],
                             "missing": [str(served.cut), str(absent)]}
    from cats.mesh.client import Node

    with Node(node.url) as client:  # the client's view: v1 CIDs of what is present, of what it asked
        assert client.has(asked) == {served.folder.to_v1(), served.bom.to_v1(), served.big.to_v1(), leaf.to_v1()}
        assert client.has([]) == set()


def test_bom_signatures_and_lineage(served: Served) -> None:
    node, bom = served.node, served.bom
    answer = node.get(f"/bom/{bom}")
    assert answer.status_code == 200
    assert answer.json() == load_bom(node.store, bom).model_dump(mode="json")
    assert answer.json()["outputs"] == [str(served.output)]

    envelope = Envelope.model_validate(node.get(f"/bom/{bom}/signatures").json())
    assert envelope.bom == bom and envelope.signers() == [node.did]

    lineage = node.get(f"/lineage/{bom}")
    assert lineage.status_code == 200
    graph = lineage.json()
    assert graph["root"] == str(bom)
    assert [n["cid"] for n in graph["nodes"]] == [str(bom)] and graph["nodes"][0]["name"] == "upper"


# -- writes ------------------------------------------------------------------------------------------
def test_writes_need_a_trusted_fresh_untampered_signature(served: Served) -> None:
    node, peer = served.node, served.peer
    block = b"a block to push"
    body = raw_car([CID.hash(block, RAW)], [(CID.hash(block, RAW), block)])

    unsigned = node.request("POST", "/blocks", body=body)
    assert unsigned.status_code == 401 and "unsigned" in detail(unsigned)
    untrusted = node.request("POST", "/blocks", who=served.outsider, body=body)
    assert untrusted.status_code == 403 and served.outsider.did in detail(untrusted)

    headers = sign_request(peer, node.did, "POST", "/blocks", body)
    first = httpx.post(node.url + "/blocks", content=body, headers=headers)
    assert first.status_code == 200, first.text
    replayed = httpx.post(node.url + "/blocks", content=body, headers=headers)
    assert replayed.status_code == 401 and "replay" in detail(replayed)

    tampered = body[:-1] + b"!"
    forged = httpx.post(node.url + "/blocks", content=tampered,
                        headers=sign_request(peer, node.did, "POST", "/blocks", body))
    assert forged.status_code == 401 and "digest" in detail(forged).lower()
    elsewhere = httpx.post(node.url + f"/pins/{served.folder}", headers=sign_request(peer, node.did, "POST", "/blocks"))
    assert elsewhere.status_code == 401

    with mock.patch.object(signed_requests.time, "time", return_value=time.time() - 3600):
        stale = sign_request(peer, node.did, "POST", "/blocks", body)
    old = httpx.post(node.url + "/blocks", content=body, headers=stale)
    assert old.status_code == 401 and "window" in detail(old)


def test_push_blocks_and_pin(served: Served) -> None:
    node, peer = served.node, served.peer
    mem = MemoryStore()
    with Importer(mem, cid_version=1) as importer:
        top = importer.add_bytes(random.Random(11).randbytes(600_000)).cid
    body = car_of(mem, top)
    pushed = node.request("POST", "/blocks", who=peer, body=body, headers={"Content-Type": CAR_TYPE})
    assert pushed.status_code == 200, pushed.text
    assert pushed.json() == {"roots": [str(top)], "blocks": len(list(mem))}
    assert node.get(f"/ipfs/{top}?format=car").content == body  # read back, byte for byte

    pinned = node.request("POST", f"/pins/{top}", who=peer)
    assert pinned.status_code == 200 and pinned.json() == {"pinned": str(top), "blocks": len(list(mem))}
    assert (node.home / "pins" / str(top)).exists()

    # a DAG whose second block is not there: 404 naming that block
    absent = CID.hash(b"not pushed", RAW)
    partial = CID.hash(dagcbor.encode({"link": absent}), DAG_CBOR)
    body = raw_car([partial], [(partial, dagcbor.encode({"link": absent}))])
    assert node.request("POST", "/blocks", who=peer, body=body).status_code == 200
    refused = node.request("POST", f"/pins/{partial}", who=peer)
    assert refused.status_code == 404 and str(absent) in detail(refused)


def test_push_refuses_bad_blocks_and_malformed_cars(served: Served) -> None:
    node, peer = served.node, served.peer
    good, other = b"an honest block", b"what the CID says"
    good_cid, lying = CID.hash(good, RAW), CID.hash(other, RAW)
    body = raw_car([good_cid], [(good_cid, good), (lying, b"something else entirely")])
    refused = node.request("POST", "/blocks", who=peer, body=body)
    assert refused.status_code == 400 and str(lying) in detail(refused)
    assert not node.store.has(good_cid) and not node.store.has(lying), "all or nothing"

    for junk in (b"not a car at all", body[:-5], b""):
        malformed = node.request("POST", "/blocks", who=peer, body=junk)
        assert malformed.status_code == 400, (junk, malformed.text)
        assert "CAR" in detail(malformed)


def _oversize(node: NodeProc, head: bytes, first_part: bytes) -> bytes:
    """Send the head and part of a body over a raw socket, then read what the node answers (without ever
    finishing the body)."""
    host, port = node.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + first_part)
        answer = b""
        while True:
            head, _, body = answer.partition(b"\r\n\r\n")
            length = [int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                      if line.startswith(b"content-length:")]
            if length and len(body) >= length[0]:
                return answer
            chunk = sock.recv(65536)
            if not chunk:
                return answer
            answer += chunk


def test_oversize_body_refused_before_it_is_read(served: Served) -> None:
    node = served.node
    # a Content-Length over the limit: answered 413 before any byte of the body is sent
    declared = (f"POST /blocks HTTP/1.1\r\nHost: node\r\nContent-Type: {CAR_TYPE}\r\n"
                f"Content-Length: {MAX_BODY * 4}\r\n\r\n").encode()
    answer = _oversize(node, declared, b"")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"CATS_NODE_MAX_BODY" in answer
    # chunked, no length, from the trusted peer (unsigned, it is refused before any byte is read): refused once
    # the bytes received pass the limit, before the body ends
    signature = "".join(f"{k}: {v}\r\n" for k, v in sign_request(served.peer, node.did, "POST", "/blocks").items())
    chunked = f"POST /blocks HTTP/1.1\r\nHost: node\r\nTransfer-Encoding: chunked\r\n{signature}\r\n".encode()
    pieces = [b"y" * (1 << 20)] * (MAX_BODY >> 20) + [b"z"]  # one byte more than the limit, no last chunk
    answer = _oversize(node, chunked, b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert node.get("/id").status_code == 200


def test_countersignatures_merge_and_forgeries_are_refused(served: Served) -> None:
    node, peer, bom = served.node, served.peer, served.bom
    envelope = sign(peer, bom)
    body = envelope.model_dump_json().encode()
    merged = node.request("POST", f"/bom/{bom}/signatures", who=peer, body=body,
                          headers={"Content-Type": "application/json"})
    assert merged.status_code == 200, merged.text
    assert Envelope.model_validate(merged.json()).signers() == [node.did, peer.did]
    assert Envelope.model_validate(node.get(f"/bom/{bom}/signatures").json()).signers() == [node.did, peer.did]

    # the outsider's DID with the peer's signature: no valid signature, refused
    forged = envelope.model_copy(update={"signatures": [Signature(keyid=served.outsider.did,
                                                                  sig=envelope.signatures[0].sig)]})
    refused = node.request("POST", f"/bom/{bom}/signatures", who=peer, body=forged.model_dump_json().encode())
    assert refused.status_code == 400 and "no valid signature" in detail(refused)
    # a valid signature and a forged one: the forged one is dropped
    mixed = sign(peer, bom, forged)
    kept = node.request("POST", f"/bom/{bom}/signatures", who=peer, body=mixed.model_dump_json().encode())
    assert kept.status_code == 200
    assert {s.keyid for s in Envelope.model_validate(kept.json()).signatures} == {node.did, peer.did}

    over_other = sign(peer, served.output).model_dump_json().encode()
    elsewhere = node.request("POST", f"/bom/{bom}/signatures", who=peer, body=over_other)
    assert elsewhere.status_code == 400 and str(served.output) in detail(elsewhere)
    # the peer's genuine signature over another spelling of the same CID: kept beside the node's, it
    # would sign other bytes than the envelope's payload, so it is refused and the envelope stays whole
    text = str(bom).upper().encode()
    sig = base64.b64encode(peer.sign(pae(PAYLOAD_TYPE, text))).decode()
    upper = Envelope(payload=base64.b64encode(text).decode(), signatures=[Signature(keyid=peer.did, sig=sig)])
    respelled = node.request("POST", f"/bom/{bom}/signatures", who=peer,
                             body=upper.model_dump_json().encode())
    assert respelled.status_code == 400 and "canonical" in detail(respelled)
    assert Envelope.model_validate(node.get(f"/bom/{bom}/signatures").json()).check(bom) == ([node.did, peer.did], [])
    for junk in (b"{not json", b'{"payload": 3}', b"[]"):
        malformed = node.request("POST", f"/bom/{bom}/signatures", who=peer, body=junk)
        assert malformed.status_code == 400, malformed.text
        assert "envelope" in detail(malformed)


def test_orders_refused_when_not_runnable(served: Served) -> None:
    node, peer = served.node, served.peer
    absent = CID.hash(b"no such order", DAG_CBOR)
    missing = node.request("POST", "/orders", who=peer, body=json.dumps({"order": str(absent)}).encode())
    assert missing.status_code == 400 and str(absent) in detail(missing)
    not_order = node.request("POST", "/orders", who=peer, body=json.dumps({"order": str(served.bom)}).encode())
    assert not_order.status_code == 422 and "not an Order" in detail(not_order)
    # an Order whose input DAG was never pushed: 400 naming the missing block
    bom = load_bom(node.store, served.bom)
    order = dagcbor.decode(node.store.get(bom.order))
    gone = CID.hash(b"an input nobody pushed", RAW)
    order["inputs"] = [gone]
    block = dagcbor.encode(order)
    cid = CID.hash(block, DAG_CBOR)
    assert node.request("POST", "/blocks", who=peer, body=raw_car([cid], [(cid, block)])).status_code == 200
    lacking = node.request("POST", "/orders", who=peer, body=json.dumps({"order": str(cid)}).encode())
    assert lacking.status_code == 400 and str(gone) in detail(lacking)
    assert node.request("POST", "/orders", who=peer, body=b"{oops").status_code == 400
    wrong = node.request("POST", "/orders", who=peer, body=b'{"cid": "x"}')
    assert wrong.status_code == 422 and "order" in detail(wrong)
    assert node.get("/orders/0123456789abcdef", who=peer).status_code == 404
    assert node.get("/orders/0123456789abcdef").status_code == 401
    too_long = node.get("/orders/0123456789abcdef?wait=21", who=peer)
    assert too_long.status_code == 422 and "wait" in detail(too_long)


# -- signals ----------------------------------------------------------------------------------------
def test_sigint_right_after_the_ready_line_stops_cleanly(tmp_path: Path) -> None:
    node = NodeProc(tmp_path).start()
    node.stop(signal.SIGINT)  # exit 0, "cats node stopped", no traceback


# -- a private node ----------------------------------------------------------------------------------
def test_private_node_reads_need_a_trusted_signature(tmp_path: Path) -> None:
    node = NodeProc(tmp_path, args=("--private",))
    peer, outsider = Identity.load(tmp_path / "peer"), Identity.load(tmp_path / "outsider")
    Trust(node.home / "trust.json").add(peer.did)
    block = b"private bytes"
    cid = CID.hash(block, RAW)
    node.store.put(cid, block)
    node.start()
    try:
        assert node.get("/id").status_code == 401
        assert node.get(f"/ipfs/{cid}?format=raw").status_code == 401
        refused = node.get(f"/ipfs/{cid}?format=raw", who=outsider)
        assert refused.status_code == 403 and outsider.did in detail(refused)
        ident = node.get("/id", who=peer)
        assert ident.status_code == 200 and ident.json()["private"] is True
        read = node.get(f"/ipfs/{cid}?format=raw", who=peer)
        assert read.status_code == 200 and read.content == block
        spec = node.get("/openapi.json", who=peer).json()
        assert spec["paths"]["/ipfs/{cid}"]["get"]["security"] == [{"CatsSignature": []}]
    finally:
        node.stop(signal.SIGINT)


# -- Orders over HTTP, and a restart -----------------------------------------------------------------
@pytest.mark.slow
def test_order_runs_and_everything_survives_a_restart(tmp_path: Path, ray_session: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    node = NodeProc(tmp_path / "node", env={"RAY_ADDRESS": ray_session})
    (tmp_path / "node").mkdir()
    peer_home = tmp_path / "peer-home"
    peer = Identity.load(peer_home / "identity")
    Trust(node.home / "trust.json").add(peer.did)

    # the peer seals two Orders in its own store (one quick, one that naps) and pushes their DAGs
    monkeypatch.setenv("CATS_HOME", str(peer_home))
    peer_store = LocalStore(peer_home / "blocks")
    src = jobs.module(tmp_path, "mesh_node_shout", """
        import time

        def shout(data):
            return data.upper() + b"!"

        def nap(data):
            time.sleep(120)
            return data
    """)
    inputs = jobs.add(peer_store, jobs.folder(tmp_path, {"x.txt": b"ex\n", "y.txt": b"why\n"}))
    cids, blocks = [], {}
    for entry in ("shout", "nap"):
        sealed = seal(Order(function=Function(entry=f"mesh_node_shout:{entry}", source=src), inputs=[inputs]),
                      peer_store)
        cids.append(CID.hash(sealed.block(), DAG_CBOR))
        blocks[cids[-1]] = sealed.block()
        peer_store.put(cids[-1], sealed.block())
    order_cid, napping = cids
    body = car_of(peer_store, *cids)

    node.start()
    try:
        pushed = node.request("POST", "/blocks", who=peer, body=body, headers={"Content-Type": CAR_TYPE})
        assert pushed.status_code == 200, pushed.text
        submit_body = json.dumps({"order": str(order_cid)}).encode()
        submit_headers = sign_request(peer, node.did, "POST", "/orders", submit_body)
        accepted = httpx.post(node.url + "/orders", content=submit_body, headers=submit_headers)
        assert accepted.status_code == 202, accepted.text
        job = accepted.json()["id"]
        assert accepted.json() == {"id": job, "status": "queued", "order": str(order_cid)}
        state = wait_done(node, job, peer)
        assert state["status"] == "done", state
        bom = CID.parse(state["bom"])
        answer = node.get(f"/bom/{bom}").json()
        assert answer["order"] == str(order_cid) and answer["outputs"] == [state["output"]]
        envelope = Envelope.model_validate(node.get(f"/bom/{bom}/signatures").json())
        assert node.did in envelope.signers()
        _, pulled = parse_car(node.get(f"/ipfs/{state['output']}?format=car").content)
        mem = MemoryStore()
        for cid, block in pulled:
            mem.put(cid, block)
        out = CID.parse(state["output"])
        assert {n: b"".join(reader.read(mem, c)) for n, c, _ in reader.entries(mem, out)} == \
            {"x.txt": b"EX\n!", "y.txt": b"WHY\n!"}
        other = Identity.load(tmp_path / "other")
        Trust(node.home / "trust.json").add(other.did)
        assert node.get(f"/orders/{job}", who=other).status_code == 403  # trusted, but not the submitter

        # the napping Order is running when the node is stopped
        nap = node.request("POST", "/orders", who=peer, body=json.dumps({"order": str(napping)}).encode()).json()
        deadline = time.monotonic() + 60
        while node.get(f"/orders/{nap['id']}", who=peer).json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(1)  # into the run
    finally:
        node.stop()  # exit status 0, no traceback, although an order was running

    node.start()
    try:
        assert node.get(f"/orders/{job}", who=peer).json() == state
        stopped = node.get(f"/orders/{nap['id']}", who=peer).json()
        assert stopped["status"] == "cancelled" and stopped["error"] == STOPPED
        assert node.get(f"/ipfs/{order_cid}?format=raw").content == blocks[order_cid]
        replayed = httpx.post(node.url + "/orders", content=submit_body, headers=submit_headers)
        assert replayed.status_code == 401 and "replay" in detail(replayed)
    finally:
        node.stop()
    with sqlite3.connect(node.home / "node" / "nonces.sqlite") as db:
        assert db.execute("SELECT count(*) FROM nonces").fetchone()[0] > 0


# -- fuzzing and load --------------------------------------------------------------------------------
@contextmanager
def signing_proxy(node: NodeProc, who: Identity) -> Iterator[str]:
    """A loopback HTTP proxy that signs every request it forwards to the node as `who`, so a fuzzer that knows
    nothing of signatures reaches the handlers behind them."""

    class Handler(BaseHTTPRequestHandler):
        def forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k: v for k, v in self.headers.items()  # its own X-Cats-* are replaced by a real signature
                       if k.lower() not in ("host", "content-length", "connection", "accept-encoding")
                       and not k.lower().startswith("x-cats-")}
            request = client.build_request(self.command, node.url + self.path, content=body, headers=headers)
            request.headers.update(sign_request(who, node.did, self.command, request.url.raw_path.decode(), body))
            response = client.send(request)
            self.send_response(response.status_code)
            for name, value in response.headers.multi_items():
                if name.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.content)))
            self.end_headers()
            self.wfile.write(response.content)

        def __getattr__(self, name: str) -> object:  # do_GET, do_POST, ... and any method a fuzzer makes up
            if name.startswith("do_"):
                return self.forward
            raise AttributeError(name)

        def log_message(self, *args: object) -> None:
            pass

    with httpx.Client(timeout=60) as client:
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_or_schema_violation(served: Served, tmp_path: Path) -> None:
    """Schemathesis fuzzes every operation from the live /openapi.json, through a proxy that signs as the
    trusted peer (so the write handlers see its bodies, not just 401s): no 5xx, nothing off the schema."""
    checks = ("not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
              "response_headers_conformance")
    with signing_proxy(served.node, served.peer) as url:
        proc = subprocess.run(
            [shutil.which("schemathesis") or "schemathesis", "run", f"{url}/openapi.json", "--checks", checks,
             "--max-examples", "10", "--seed", "1", "--phases", "examples,coverage,fuzzing", "--no-shrink",
             "--request-timeout", "20", "--suppress-health-check", "all"],
            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-12000:] + proc.stderr[-3000:]
    assert "Selected: 19/19" in proc.stdout and "Tested: 19" in proc.stdout, proc.stdout[-3000:]
    assert "401 Unauthorized" not in proc.stdout, "the proxy's signatures were refused"
    assert served.node.get("/id").status_code == 200


@pytest.mark.slow
def test_fifty_concurrent_car_pulls_while_id_answers(served: Served) -> None:
    """50 clients pull a CAR at once, reading it slowly (so the node holds 50 open streams), while /id is
    asked every few milliseconds: every CAR arrives whole and /id stays quick."""
    node, root = served.node, served.big
    expected = car_of(node.store, root)
    results: list[bytes | BaseException] = []
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(51)

    def pull() -> None:
        barrier.wait()
        started = time.monotonic()
        try:
            with httpx.Client(timeout=120) as client, \
                    client.stream("GET", f"{node.url}/ipfs/{root}?format=car") as response:
                parts = []
                for part in response.iter_raw(64 << 10):
                    parts.append(part)
                    time.sleep(0.005)
                data: bytes | BaseException = b"".join(parts)
        except BaseException as e:  # reported by the assertion below
            data = e
        with lock:
            results.append(data)
            spans.append((started, time.monotonic()))

    threads = [threading.Thread(target=pull) for _ in range(50)]
    for t in threads:
        t.start()
    latencies = []
    with httpx.Client(timeout=30) as client:
        barrier.wait()
        while any(t.is_alive() for t in threads):
            started = time.perf_counter()
            assert client.get(f"{node.url}/id").status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.01)
    for t in threads:
        t.join()
    assert len(results) == 50
    assert all(r == expected for r in results), [repr(r)[:200] for r in results if r != expected]
    overlap = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert overlap >= 40, f"only {overlap} pulls ran at once"
    assert len(latencies) >= 10, latencies
    assert max(latencies) < 2.0 and statistics.median(latencies) < 0.3, latencies
