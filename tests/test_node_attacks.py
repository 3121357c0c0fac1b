"""A CAT Node under attack, as a real process on loopback: what it must refuse, and refuse before it costs anything.

Two nodes share the module (`nodes`): a public one with the default body limit and a private one, both trusting
one peer. Each test plays someone the node must not obey: a node replaying a request it received, an anonymous
sender of huge bodies, a sender of malformed CARs and headers (fuzzed with hypothesis), an outsider at a private
node's door, a clock that says `nan`, and a folder of look-alike modules the node is started in.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jobs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_mesh_node import NodeProc, detail, parse_car, raw_car

import cats
from cats.bom.signatures import sign
from cats.cas import dagcbor, multihash, reader, varint
from cats.cas.cid import CID, DAG_CBOR, DAG_PB, RAW
from cats.cas.store.local import LocalStore
from cats.errors import MeshError
from cats.identity import Identity
from cats.identity.requests import sign_request
from cats.identity.trust import Trust
from cats.mesh.client import Node, submit
from cats.order import Function, Order

CAR_TYPE = "application/vnd.ipld.car"
HUGE = 200 << 20  # under the default CATS_NODE_MAX_BODY (256 MiB): only the signature can refuse it


@dataclass
class Nodes:
    public: NodeProc
    private: NodeProc
    peer: Identity
    outsider: Identity


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    base = tmp_path_factory.mktemp("attacks")
    peer, outsider = Identity.load(base / "peer"), Identity.load(base / "outsider")
    public, private = NodeProc(base / "public"), NodeProc(base / "private", args=("--private",))
    for node in (public, private):
        node.base.mkdir()
        node.home.mkdir()
        Trust(node.home / "trust.json").add(peer.did, name="peer")
        node.start()
    try:
        yield Nodes(public, private, peer, outsider)
    finally:
        public.stop()
        private.stop()


def _send_raw(node: NodeProc, head: bytes, body_part: bytes, timeout: float = 5.0) -> tuple[bytes, float]:
    """Send a request's head and the first part of its body over a socket, never the rest; the answer's
    head and body, and how long it took to come."""
    host, port = node.url.removeprefix("http://").rsplit(":", 1)
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head + body_part)
        answer = b""
        while b"\r\n\r\n" not in answer or not _complete(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer, time.monotonic() - started


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    lengths = [int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
    return bool(lengths) and len(body) >= lengths[0]


def _head(path: str, length: int, headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return f"POST {path} HTTP/1.1\r\nHost: node\r\nContent-Length: {length}\r\n{extra}\r\n".encode()


def _server_paths(node: NodeProc) -> list[str]:
    """Where this machine keeps the node and CATs: none may show in an answer."""
    return [str(node.base), str(node.home), str(Path(cats.__file__).parent), sys.prefix, "site-packages",
            "Traceback"]


def _no_server_path(node: NodeProc, response: httpx.Response) -> None:
    for path in _server_paths(node):
        assert path not in response.text, (path, response.text[:500])


# -- 1. a signed request is good only at the node it was signed for ------------------------------------
def test_a_request_signed_for_one_node_is_refused_by_another(nodes: Nodes) -> None:
    """B receives the peer's signed push and replays it, within its window, to A (which trusts the peer too):
    A refuses it, naming both nodes; the same request was good at B."""
    a, b, peer = nodes.public, nodes.private, nodes.peer
    block = f"for B only {uuid.uuid4()}".encode()
    cid = CID.hash(block, RAW)
    body = raw_car([cid], [(cid, block)])
    for_b = sign_request(peer, b.did, "POST", "/blocks", body)
    replayed = httpx.post(a.url + "/blocks", content=body, headers=for_b)
    assert replayed.status_code == 401
    assert f"signed for node '{b.did}', not this node ({a.did})" in detail(replayed)
    assert not a.store.has(cid)
    accepted = httpx.post(b.url + "/blocks", content=body, headers=for_b)
    assert accepted.status_code == 200, accepted.text
    assert b.store.has(cid)
    # naming A in the header instead does not help: the signature covers the node it was made for
    renamed = httpx.post(a.url + "/blocks", content=body, headers={**sign_request(peer, b.did, "POST", "/blocks", body),
                                                                   "X-Cats-Node": a.did})
    assert renamed.status_code == 401 and "signature is not" in detail(renamed)


def test_the_client_signs_for_the_node_it_reaches(nodes: Nodes) -> None:
    """The mesh client learns a public node's DID from /id and a private one's from its 401 challenge, and its
    signed writes and reads are accepted; told a wrong DID, it is refused."""
    block = f"pushed by the client {uuid.uuid4()}".encode()
    cid = CID.hash(block, RAW)
    body = raw_car([cid], [(cid, block)])
    for node in (nodes.public, nodes.private):
        with Node(node.url, nodes.peer) as client:
            assert client.put_blocks(body) == {"roots": [str(cid)], "blocks": 1}
            assert client.did == node.did
            assert client.block(cid) == block
            assert client.id()["did"] == node.did
    with Node(nodes.public.url, nodes.peer, did=nodes.private.did) as wrong, \
            pytest.raises(MeshError, match="not this node") as refused:
        wrong.pin(cid)
    assert refused.value.status == 401
    challenge = httpx.get(nodes.private.url + "/id").headers["www-authenticate"]
    assert f'node="{nodes.private.did}"' in challenge


# -- 2. who sends a request is decided before its body is read -----------------------------------------
def test_unsigned_and_badly_signed_large_posts_are_refused_before_the_body(nodes: Nodes) -> None:
    node, peer = nodes.public, nodes.peer
    part = b"x" * (64 << 10)
    bad_date = {**sign_request(peer, node.did, "POST", "/blocks"), "X-Cats-Date": "nan"}
    for_other = sign_request(peer, nodes.private.did, "POST", "/blocks")
    forged = {**sign_request(peer, node.did, "POST", "/blocks"), "X-Cats-Key": nodes.outsider.did}
    for headers, status, why in ((None, 401, b"unsigned request"), (bad_date, 401, b"invalid X-Cats-Date"),
                                 (for_other, 401, b"not this node"), (forged, 401, b"signature is not"),
                                 (sign_request(nodes.outsider, node.did, "POST", "/blocks"), 403, b"not trusted")):
        answer, took = _send_raw(node, _head("/blocks", HUGE, headers), part)
        assert answer.startswith(b"HTTP/1.1 %d" % status), answer[:300]
        assert why in answer, answer[:500]
        assert took < 2.0, f"{took:.1f} s: the node waited for a body it should not read"
    assert node.get("/id").status_code == 200


def _rss_peak(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) << 10


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the node's peak RSS from /proc")
def test_concurrent_anonymous_large_posts_leave_the_node_small(nodes: Nodes) -> None:
    """Four anonymous 200 MiB POSTs at once, each sent in full as fast as the node takes it: its peak RSS
    barely moves (it grew by over 1 GB when bodies were read before the signature)."""
    node = nodes.public
    assert node.proc is not None
    before = _rss_peak(node.proc.pid)
    statuses: list[bytes] = []
    host, port = node.url.removeprefix("http://").rsplit(":", 1)

    def flood() -> None:
        chunk = b"y" * (1 << 20)
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(_head("/blocks", HUGE))
            try:
                for _ in range(HUGE >> 20):
                    sock.sendall(chunk)
            except OSError:
                pass  # the node answered and closed: the rest of the body is never read
            answer = b""
            try:
                while not _complete(answer) and (piece := sock.recv(65536)):
                    answer += piece
            except OSError:
                pass
        statuses.append(answer[:12])

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert statuses == [b"HTTP/1.1 401"] * 4, statuses
    grown = _rss_peak(node.proc.pid) - before
    assert grown < 64 << 20, f"the node's peak RSS grew by {grown >> 20} MiB"


def test_each_route_caps_its_body(nodes: Nodes) -> None:
    node, peer = nodes.public, nodes.peer
    big_json = json.dumps({"order": "x" * (2 << 20)}).encode()
    too_big = node.request("POST", "/orders", who=peer, body=big_json)
    assert too_big.status_code == 413 and "POST /orders takes (1048576 bytes)" in detail(too_big)
    cid = CID.hash(b"anything", RAW)
    pin_body = node.request("POST", f"/pins/{cid}", who=peer, body=b"{}")
    assert pin_body.status_code == 413 and "takes (0 bytes)" in detail(pin_body)
    # the body that comes is not the one signed: refused once it is in, before anything is done with it
    block = b"the block that was signed"
    signed = raw_car([CID.hash(block, RAW)], [(CID.hash(block, RAW), block)])
    swapped = signed.replace(b"signed", b"SIGNED")
    answer = httpx.post(node.url + "/blocks", content=swapped, headers=sign_request(peer, node.did, "POST", "/blocks",
                                                                                   signed))
    assert answer.status_code == 401 and "does not match X-Cats-Digest" in detail(answer)
    assert not node.store.has(CID.hash(block, RAW))


# -- 3. bad input is a 4xx with one line, never a 500, never a path of the server ----------------------
def test_unknown_hash_functions_and_identity_cids(nodes: Nodes) -> None:
    node, peer = nodes.public, nodes.peer
    unknown = varint.encode(1) + varint.encode(RAW) + varint.encode(0x1234) + varint.encode(32) + b"\x01" * 32
    body = car_header([CID.hash(b"x", RAW)]) + varint.encode(len(unknown) + 3) + unknown + b"abc"
    refused = node.request("POST", "/blocks", who=peer, body=body)
    assert refused.status_code == 400, refused.text
    assert "unsupported multihash function 0x1234" in detail(refused) and "\n" not in detail(refused)

    # an identity CID is its own block: served inline, accepted in a CAR (and not stored), never sent as a
    # block of a CAR (the trustless gateway spec: its bytes are in the CID), refused where a stored BOM,
    # pin or Order is looked up
    inline = b"hello, inline world"
    ident = CID(1, RAW, multihash.digest(inline, multihash.IDENTITY))
    raw = node.get(f"/ipfs/{ident}?format=raw")
    assert raw.status_code == 200 and raw.content == inline
    assert parse_car(node.get(f"/ipfs/{ident}?format=car").content) == ([ident], [])
    holder = dagcbor.encode({"inline": ident})
    holder_cid = CID.hash(holder, DAG_CBOR)
    pushed = node.request("POST", "/blocks", who=peer, body=raw_car([ident, holder_cid],
                                                                    [(ident, inline), (holder_cid, holder)]))
    assert pushed.status_code == 200 and pushed.json() == {"roots": [str(ident), str(holder_cid)], "blocks": 2}
    assert parse_car(node.get(f"/ipfs/{holder_cid}?format=car").content) == ([holder_cid], [(holder_cid, holder)])
    for path in (f"/bom/{ident}", f"/lineage/{ident}", f"/bom/{ident}/signatures"):
        answer = node.get(path)
        assert answer.status_code == 400 and "identity CID" in detail(answer), (path, answer.text)
    order = node.request("POST", "/orders", who=peer, body=json.dumps({"order": str(ident)}).encode())
    assert order.status_code == 400 and "identity CID" in detail(order)
    assert node.request("POST", f"/pins/{ident}", who=peer).status_code == 400
    # one that holds more than an identity CID may: 400 in a path and in a CAR, never a file name too long
    long = CID(1, RAW, multihash.digest(b"z" * 300, multihash.IDENTITY))
    assert node.get(f"/ipfs/{long}?format=raw").status_code == 400
    answer = node.request("POST", "/blocks", who=peer, body=raw_car([long], [(long, b"z" * 300)]))
    assert answer.status_code == 400 and "more than the 128" in detail(answer)


def car_header(roots: list[CID]) -> bytes:
    head = dagcbor.encode({"roots": roots, "version": 1})
    return varint.encode(len(head)) + head


def test_an_unexpected_failure_is_a_500_that_names_no_file(tmp_path: Path) -> None:
    """A block whose file in the store is a folder fails deep inside the store: the answer says only that
    the node failed, not what the operating system said (with the store's path); the node's log has it."""
    node = NodeProc(tmp_path)
    cid = CID.hash(b"a block that is a folder", RAW)
    node.store.path(cid).parent.mkdir(parents=True, exist_ok=True)
    node.store.path(cid).mkdir()
    node.start()
    try:
        failed = node.get(f"/ipfs/{cid}?format=raw")
        assert node.get("/id").status_code == 200  # and it carries on
    finally:
        assert node.proc is not None
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(timeout=30) == 0
    assert failed.status_code == 500
    assert detail(failed) == "internal error; the node's log has the details"
    _no_server_path(node, failed)
    log = (tmp_path / "node.err").read_text()
    assert "IsADirectoryError" in log and str(node.store.path(cid)) in log


_CODECS = st.sampled_from([RAW, DAG_CBOR, DAG_PB, 0x0129, 0x00]) | st.integers(0, 1 << 20)
_HASHES = st.sampled_from([multihash.IDENTITY, multihash.SHA2_256, multihash.SHA2_512, multihash.BLAKE3]) \
    | st.integers(0, 1 << 63)


@st.composite
def _sections(draw: st.DrawFn) -> bytes:
    codec, code = draw(_CODECS), draw(_HASHES)
    block = draw(st.binary(max_size=300))
    if draw(st.booleans()) and code in (multihash.IDENTITY, multihash.SHA2_256, multihash.SHA2_512):
        mh = multihash.digest(block, code)  # a block that matches its CID
    else:
        digest = draw(st.binary(max_size=200))
        mh = varint.encode(code) + varint.encode(draw(st.sampled_from([len(digest)]) | st.integers(0, 1 << 20))) \
            + digest
    cid = varint.encode(1) + varint.encode(codec) + mh
    if draw(st.booleans()):
        cid = bytes([draw(st.sampled_from([0, 1, 2, 0x12, 0xFF]))]) + cid[1:]
    section = cid + block
    length = draw(st.sampled_from([len(section), len(section) + 1, max(0, len(section) - 1)])
                  | st.integers(0, 1 << 40))
    return varint.encode(length) + section


@st.composite
def _cars(draw: st.DrawFn) -> bytes:
    roots = draw(st.lists(st.builds(lambda c, h, d: CID(1, c, varint.encode(h) + varint.encode(len(d)) + d),
                                    _CODECS, _HASHES, st.binary(max_size=150)), max_size=3))
    head = draw(st.sampled_from([dagcbor.encode({"roots": roots, "version": 1}),
                                 dagcbor.encode({"roots": roots, "version": 2}), dagcbor.encode({"roots": 1}),
                                 dagcbor.encode([1, 2])]) | st.binary(max_size=40))
    length = draw(st.sampled_from([len(head)]) | st.integers(0, 1 << 40))
    body = varint.encode(length) + head + b"".join(draw(st.lists(_sections(), max_size=4)))
    return body[:draw(st.integers(0, len(body)))] if draw(st.booleans()) else body


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=_cars())
def test_fuzzed_cars_are_refused_cleanly(nodes: Nodes, body: bytes) -> None:
    """Structurally plausible CARs (real and made-up codecs and hash functions, lengths that lie, identity
    digests of any size, roots that are absent) pushed by the trusted peer: 200 or 400, never a 5xx, and
    never a path of the server's machine in the answer."""
    node = nodes.public
    answer = node.request("POST", "/blocks", who=nodes.peer, body=body, headers={"Content-Type": CAR_TYPE})
    assert answer.status_code in (200, 400), (answer.status_code, answer.text[:500])
    if answer.status_code == 400:
        assert "\n" not in detail(answer)
    _no_server_path(node, answer)


_HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=120)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(field=st.sampled_from(["X-Cats-Key", "X-Cats-Node", "X-Cats-Date", "X-Cats-Nonce", "X-Cats-Digest",
                              "X-Cats-Signature", "Content-Length"]),
       value=_HEADER_TEXT | st.sampled_from(["nan", "inf", "-inf", "1e400", "NaN", "-0", "did:key:z", "sha-256="]),
       private=st.booleans(), method=st.sampled_from(["GET", "POST"]))
def test_fuzzed_signature_headers_are_a_clean_401(nodes: Nodes, field: str, value: str, private: bool,
                                                  method: str) -> None:
    """One header of a valid signed request replaced by anything: refused (4xx, never a 5xx), with one line
    and no path of the server's machine."""
    node = nodes.private if private else nodes.public
    path = "/id" if method == "GET" else f"/pins/{CID.hash(b'never there', RAW)}"
    headers = {**sign_request(nodes.peer, node.did, method, path), field: value.strip()}
    try:
        answer = httpx.request(method, node.url + path, headers=headers, timeout=30)
    except httpx.HTTPError:
        assert field == "Content-Length", "only a lying Content-Length may leave the node waiting for a body"
        return
    assert answer.status_code < 500, (field, value, answer.text[:300])
    _no_server_path(node, answer)
    if answer.status_code == 401:
        assert "\n" not in detail(answer)


# -- 4. a private node answers nothing unsigned --------------------------------------------------------
def test_a_private_node_answers_nothing_unsigned(nodes: Nodes) -> None:
    node, peer = nodes.private, nodes.peer
    for method, path in (("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/redoc"), ("GET", "/id"),
                         ("GET", "/no/such/route"), ("GET", f"/ipfs/{CID.hash(b'x', RAW)}?format=raw"),
                         ("POST", "/blocks"), ("OPTIONS", "/id"), ("HEAD", "/docs")):
        answer = httpx.request(method, node.url + path, timeout=30)
        assert answer.status_code == 401, (method, path, answer.status_code)
        assert "CatsSignature" in answer.headers["www-authenticate"]
        if method != "HEAD":
            assert "unsigned request" in detail(answer)
        assert b"openapi" not in answer.content and b"swagger" not in answer.content.lower()
    outsider = node.get("/openapi.json", who=nodes.outsider)
    assert outsider.status_code == 403
    spec = node.get("/openapi.json", who=peer)
    assert spec.status_code == 200 and "/ipfs/{cid}" in spec.json()["paths"]
    docs = node.get("/docs", who=peer)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


# -- 5. a date that is no time is an invalid date ------------------------------------------------------
@pytest.mark.parametrize("date", ["nan", "inf", "-inf", "Infinity", "1e9", "+1700000000", "1700000000.", "", "x"])
def test_a_non_finite_or_unparseable_date_is_a_401_saying_so(nodes: Nodes, date: str) -> None:
    for node, method, path in ((nodes.public, "POST", f"/pins/{CID.hash(b'x', RAW)}"),
                               (nodes.private, "GET", "/id")):
        headers = {**sign_request(nodes.peer, node.did, method, path), "X-Cats-Date": date}
        answer = httpx.request(method, node.url + path, headers=headers, timeout=30)
        assert answer.status_code == 401, (date, answer.text)
        assert detail(answer).startswith("invalid X-Cats-Date"), detail(answer)


# -- 6. the node imports nothing from the folder it was started in -------------------------------------
@pytest.mark.slow
def test_orders_import_nothing_from_the_nodes_working_folder(tmp_path: Path, ray_session: str, cats_home: Path) -> None:
    """The node is started in a folder holding a module the Order's code imports, one named like the Order's
    entry module and one shadowing a standard module (colorsys) the code imports; each would leave a trace if
    imported. The Order runs on the node (submitted by the client): none is imported by the run or its Ray
    workers, and the real ones are."""
    helper = f"nodecwd_helper_{uuid.uuid4().hex[:8]}"
    entry = f"nodecwd_job_{uuid.uuid4().hex[:8]}"
    cwd = tmp_path / "started-here"
    cwd.mkdir()
    traces = tmp_path / "traces"
    traces.mkdir()
    for name in (helper, entry, "colorsys"):
        (cwd / f"{name}.py").write_text(f"open({str(traces / name)!r}, 'w').close()\n"
                                        "def run(data):\n    return b'SHADOW'\n"
                                        "def rgb_to_hsv(*a):\n    return 'SHADOW'\n")
    src = jobs.module(tmp_path, entry, f"""
        def run(data):
            import colorsys
            try:
                __import__({helper!r})
                found = b"present"
            except ModuleNotFoundError:
                found = b"absent"
            return repr(colorsys.rgb_to_hsv(1.0, 0.0, 0.0)).encode() + b" " + found
    """)
    # -P: started as the `cats` command starts it, without its working folder on its own path (which
    # `python -m` would put first, before any of CATs' code could take it off)
    node = NodeProc(tmp_path / "node", env={"RAY_ADDRESS": ray_session}, cwd=cwd, python=("-P",))
    node.base.mkdir()
    me = Identity.load()
    Trust(node.home / "trust.json").add(me.did)
    store = LocalStore(cats_home / "blocks")
    inputs = jobs.add(store, jobs.folder(tmp_path, {"a.txt": b"a"}))
    node.start()
    try:
        done = submit(Order(function=Function(entry=f"{entry}:run", source=src), inputs=[inputs]), node.url, me,
                      store=store, timeout=240, fetch_output=True)
    finally:
        node.stop()
    assert sorted(os.listdir(traces)) == [], "the node imported from the folder it was started in"
    assert done.output is not None
    results = {name: b"".join(reader.read(store, cid)) for name, cid, _ in reader.entries(store,
                                                                                          CID.parse(done.output))}
    assert results == {"a.txt": b"(0.0, 1.0, 1.0) absent"}


def test_a_broken_envelope_kept_on_the_node_is_a_409_naming_no_file(nodes: Nodes) -> None:
    """The node's own signature file for a BOM is garbage: reading or countersigning it says so, names
    the BOM and not the file, and adds nothing."""
    node, peer = nodes.public, nodes.peer
    bom = CID.hash(f"a bom {uuid.uuid4()}".encode(), DAG_CBOR)
    kept = node.home / "signatures" / f"{bom.to_v1()}.json"
    kept.parent.mkdir(exist_ok=True)
    kept.write_text('{"payload": 7, "signatures": "')
    read = httpx.get(f"{node.url}/bom/{bom}/signatures")
    assert read.status_code == 409 and str(bom) in detail(read)
    _no_server_path(node, read)
    body = sign(peer, bom).model_dump_json().encode()
    added = httpx.post(f"{node.url}/bom/{bom}/signatures", content=body,
                       headers=sign_request(peer, node.did, "POST", f"/bom/{bom}/signatures", body))
    assert added.status_code == 409 and "nothing was added" in detail(added)
    _no_server_path(node, added)
    assert kept.read_text() == '{"payload": 7, "signatures": "'


def test_a_root_that_does_not_decode_is_a_422_before_the_car_starts(nodes: Nodes) -> None:
    """The root of a CAR is read and decoded before the answer starts: one whose bytes are not its codec
    (an identity CID of garbage here; a stored block alike) is a one-line 422, not a 200 cut short."""
    bad = CID.hash(b"\xff\xff\xff", DAG_CBOR, hashfn=multihash.IDENTITY)
    answer = httpx.get(f"{nodes.public.url}/ipfs/{bad}?format=car")
    assert answer.status_code == 422 and str(bad) in detail(answer) and "dag-scope=block" in detail(answer)
    assert httpx.get(f"{nodes.public.url}/ipfs/{bad}?format=car&dag-scope=block").status_code == 200


def test_an_untrusted_signer_costs_the_node_no_nonce(nodes: Nodes) -> None:
    """Anyone can make a did:key: its genuine signed requests are 403 and leave no row in the nonce table,
    and a request forged in a trusted peer's name stays a 401 (the trust list is not probed that way)."""
    node, outsider = nodes.public, nodes.outsider
    table = next(node.home.rglob("nonces.sqlite"))
    count = "SELECT count(*) FROM nonces"
    before = sqlite3.connect(table).execute(count).fetchone()[0]
    for _ in range(20):
        refused = node.get("/id", who=outsider)
        assert refused.status_code == 403 and "not trusted" in detail(refused)
    assert sqlite3.connect(table).execute(count).fetchone()[0] == before
    forged = sign_request(outsider, node.did, "GET", "/id", b"")
    forged["X-Cats-Key"] = nodes.peer.did
    assert httpx.get(f"{node.url}/id", headers=forged).status_code == 401


# -- 7. POST /has: a read, bounded, of CIDs only -------------------------------------------------------
def test_has_takes_a_bounded_list_of_cids_and_nothing_else(nodes: Nodes) -> None:
    node, peer = nodes.public, nodes.peer
    cid = str(CID.hash(b"anything", RAW))

    def ask(body: bytes, **kw: object) -> httpx.Response:
        return node.request("POST", "/has", body=body, **kw)  # type: ignore[arg-type]

    many = ask(json.dumps({"cids": [cid] * 1001}).encode())
    assert many.status_code == 422 and "cids" in detail(many) and "1000" in detail(many)
    assert ask(json.dumps({"cids": [cid] * 1000}).encode()).json()["missing"] == [cid] * 1000
    huge = ask(json.dumps({"cids": ["b" * 100] * 20_000}).encode())  # 2 MB: refused before it is read
    assert huge.status_code == 413 and "POST /has takes (1048576 bytes)" in detail(huge)
    bad = ask(json.dumps({"cids": [cid, "bafy-not-a-cid"]}).encode())
    assert bad.status_code == 400 and "'bafy-not-a-cid' is not a CID" in detail(bad)
    inline = b"hello, inline world"
    ident = CID(1, RAW, multihash.digest(inline, multihash.IDENTITY))  # its block is the CID: present
    assert ask(json.dumps({"cids": [str(ident)]}).encode()).json() == {"present": [str(ident)], "missing": []}
    long = CID(1, RAW, multihash.digest(b"z" * 300, multihash.IDENTITY))  # more than an identity CID may hold
    answer = ask(json.dumps({"cids": [str(long)]}).encode())
    assert answer.status_code == 400 and "more than the 128" in detail(answer)
    assert ask(b"{not json").status_code == 400
    for body in (b'["a", "list"]', b'{"cids": "bafy"}', b'{"cids": [1]}', b'{"cids": [], "more": 1}'):
        answer = ask(body)
        assert answer.status_code == 422, (body, answer.status_code)
        detail(answer)
    # a signature is checked wherever one is given: an untrusted signer is refused, a trusted one answered
    assert ask(b'{"cids": []}', who=nodes.outsider).status_code == 403
    assert ask(b'{"cids": []}', who=peer).json() == {"present": [], "missing": []}
    # on a private node it is a read like any other: signed by a trusted peer, or nothing
    private = nodes.private
    assert httpx.post(private.url + "/has", content=b'{"cids": []}', timeout=30).status_code == 401
    assert private.request("POST", "/has", who=nodes.outsider, body=b'{"cids": []}').status_code == 403
    assert private.request("POST", "/has", who=peer, body=b'{"cids": []}').status_code == 200
    # the client signs for a private node once it asks
    with Node(private.url, peer) as client:
        assert client.has([CID.parse(cid)]) == set()
    with Node(private.url, nodes.outsider) as client, pytest.raises(MeshError, match="403"):
        client.has([CID.parse(cid)])


def test_an_untrusted_submitter_sends_nothing_but_questions(nodes: Nodes, tmp_path: Path, cats_home: Path) -> None:
    from cats.cas.importer import Importer

    node = nodes.public
    stranger = Identity.load()
    store = LocalStore(cats_home / "blocks")
    with Importer(store, cid_version=1) as importer:
        data = importer.add_bytes(b"the stranger's data").cid
    src = tmp_path / "stranger_job.py"
    src.write_text("def run(data):\n    return data\n")
    with pytest.raises(MeshError, match=f"403.*{stranger.did}"):
        submit(Order(function=Function(entry="stranger_job:run", source=src), inputs=[data]), node.url, stranger,
               store=store, timeout=30)
    assert not node.store.has(data)
    assert not [r for r in _orders(node) if r["submitter"] == stranger.did]


def _orders(node: NodeProc) -> list[dict]:
    """Every order on the node, as its operator sees them."""
    operator = Identity.load(node.home / "identity")
    return node.get("/orders", who=operator).json()
