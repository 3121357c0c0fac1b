"""Reuse across organizations: a home asks a trusted peer's CAT Node for the evaluations of its slices
(`Plant(reuse_from=[URL])`, `cats run --reuse-from URL`) and takes an answer only when the peer proves it.

Peer A is a real `cats node start` on loopback whose home ran an Order before it started. Each test's home
is fresh. What a real node never does (answer with another output, another BOM, another slice's
evaluation, a forged or untrusted signature, corrupted blocks) is played by a fake node built from A's own
index, store and signatures, so every forgery starts from genuine, signed material.
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jobs
import pytest
from nodes import RealNode, run_cli
from servers import free_port, loopback

from cats import api, factory
from cats.bom import Vouched, write_records
from cats.bom import load as load_bom
from cats.bom import records as bom_records
from cats.bom.home import Home
from cats.bom.index import Index
from cats.bom.signatures import Envelope, Signature, Signatures, sign
from cats.cas import car
from cats.cas.cid import CID, DAG_CBOR
from cats.cas.dag import put_cbor, walk
from cats.cas.importer import Importer
from cats.cas.store.local import LocalStore
from cats.cas.store.memory import MemoryStore
from cats.factory import peers
from cats.identity import Identity
from cats.identity.requests import sign_request
from cats.identity.trust import Trust
from cats.order import Function, Order, Plant
from cats.verification.report import Report, SourceBOM

JOB = "peerreuse_job"
FILES = 3


@dataclass
class Peer:
    node: RealNode
    work: Path
    source: Path  # the job module
    inputs: Path  # the input folder
    bom: CID  # A's run of the Order
    output: CID
    order_cid: CID

    def order(self, *reuse_from: str, name: str = "reverse") -> Order:
        return Order(function=Function(entry=f"{JOB}:rev", source=self.source), inputs=[self.inputs], name=name,
                     plant=Plant(reuse_from=list(reuse_from)))

    def keys(self) -> dict[str, dict[str, Any]]:
        """A's evaluations: key -> the outcome its index keeps."""
        index = Index(self.node.home / "index.sqlite")
        try:
            return {key: json.loads(r) for key, r in index.db.execute("SELECT key, record FROM evaluations")}
        finally:
            index.close()


@pytest.fixture(scope="module")
def peer(ray_session: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    work = tmp_path_factory.mktemp("reuse-peers")
    a = RealNode(work / "a", ray_session)
    a.home.mkdir(parents=True)
    source = jobs.module(work, JOB, "def rev(data):\n    return data[::-1] * 50\n")
    inputs = jobs.folder(work, {f"part-{i}.txt": f"slice {i} of the peer's run\n".encode() * 400
                                for i in range(FILES)})
    found = Peer(a, work, source, inputs, *[CID.hash(b"", DAG_CBOR)] * 3)
    with pytest.MonkeyPatch.context() as env:  # A computes, in its own home, from scratch
        env.setenv("CATS_HOME", str(a.home))
        env.delenv("CATS_STORE", raising=False)
        run = factory.run(found.order(), quiet=True)
    assert run.executed == FILES
    found.bom, found.output, found.order_cid = run.bom, run.output, run.order
    a.start()
    try:
        yield found
    finally:
        a.stop()


def _home(path: Path, trusts: list[str], trusted_by: RealNode | None) -> Home:
    """A fresh home trusting `trusts`, and trusted by the node `trusted_by` (so it answers this home)."""
    home = Home.open(path)
    for did in trusts:
        Trust(path / "trust.json").add(did, name="peer")
    if trusted_by is not None:
        Trust(trusted_by.home / "trust.json").add(home.identity.did, name=path.name)
    return home


def _records(home: Home, bom: CID) -> list[Any]:
    return list(bom_records(home.store, load_bom(home.store, bom)))


# -- the trusted peer's evaluations are taken ---------------------------------------------------------------


@pytest.mark.slow
def test_a_trusted_peers_evaluations_are_taken_and_only_the_outputs_fetched(peer: Peer, tmp_path: Path) -> None:
    a = peer.node
    home = _home(tmp_path / "b", [a.did], a)
    try:
        order = peer.order(a.url)
        run = factory.run(order, home=home, quiet=True)
        assert run.order == peer.order_cid  # where results may come from is not part of the Order
        assert (run.executed, run.reused_slices, run.slices) == (0, FILES, FILES)
        assert run.output == peer.output  # exactly the output of A's run from scratch in a fresh home
        bom = load_bom(home.store, run.bom)
        assert bom.invoice.reused == FILES and bom.invoice.executed == 0
        recs = _records(home, run.bom)
        assert [(r.vouched.bom, r.vouched.signer) for r in recs if r.vouched] == [(str(peer.bom), a.did)] * FILES
        assert all(r.reused_from is None for r in recs)
        theirs = list(bom_records(a.store, load_bom(a.store, peer.bom)))
        assert [(r.output, r.seed) for r in recs] == [(r.output, r.seed) for r in theirs]
        # the outputs' blocks are here, whole; and A's BOM block, with A's signature kept beside it
        for r in recs:
            assert all(home.store.get(c) == a.store.get(c) for c in walk(home.store, r.output, read_leaves=True))
        assert home.store.get(peer.bom) == a.store.get(peer.bom)
        envelope = Signatures(home.folder / "signatures").get(peer.bom)
        assert envelope is not None and envelope.signers() == [a.did]
        # and the record block that proved the answers, for `cats verify --integrity` to check again
        (held,) = load_bom(a.store, peer.bom).slices
        assert home.store.get(held) == a.store.get(held)
        # this home's BOM walks whole here, and not into A's: the peer's BOM is named, not linked
        reached = set(walk(home.store, run.bom))
        assert run.bom in reached and peer.bom not in reached and held not in reached
        again = factory.run(order, home=home, quiet=True)
        assert again.reused and again.bom == run.bom
    finally:
        home.close()


@pytest.mark.slow
def test_cats_run_reuse_from_then_cats_verify_reexecutes(peer: Peer, tmp_path: Path) -> None:
    a = peer.node
    home = tmp_path / "cli-home"
    _home(home, [a.did], a).close()
    order_file = tmp_path / "peer_order.py"
    order_file.write_text(
        "from pathlib import Path\nfrom cats.order import Function, Order\n"
        f"order = Order(function=Function(entry='{JOB}:rev', source=Path({str(peer.source)!r})), "
        f"inputs=[Path({str(peer.inputs)!r})], name='reverse')\n")
    env = {"RAY_ADDRESS": a.ray}
    ran = run_cli(home, "run", str(order_file), "--reuse-from", a.url, "--json", **env)
    assert ran.code == 0, ran.err
    summary = json.loads(ran.out)
    assert (summary["executed"], summary["reused_slices"], summary["output"]) == (0, FILES, str(peer.output))
    verified = run_cli(home, "verify", summary["bom"], "--json", **env)
    assert verified.code == 0, verified.out + verified.err
    verdict = json.loads(verified.out)
    assert verdict["verified"] and len(verdict["slices"]) == FILES and all(s["ok"] for s in verdict["slices"])
    # a peer URL that is not one is the Plant's error, in one line
    run_cli(home, "run", str(order_file), "--reuse-from", "acme", "--json", **env).error_line(
        "reuse_from", "'acme'", "http://")


# -- what is not taken: the slices run here, the run succeeds, stderr says why ---------------------------------


def _runs_everything(peer: Peer, home: Home, url: str) -> Any:
    run = factory.run(peer.order(url), home=home, quiet=True)
    assert (run.executed, run.reused_slices) == (FILES, 0)
    assert run.output == peer.output
    assert all(r.vouched is None and r.reused_from is None for r in _records(home, run.bom))
    return run


@pytest.mark.slow
def test_a_peer_this_home_does_not_trust_is_not_taken(peer: Peer, tmp_path: Path,
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    a = peer.node
    someone = Identity.load(tmp_path / "someone").did
    home = _home(tmp_path / "b", [someone], a)  # A answers this home, but this home trusts someone else
    try:
        _runs_everything(peer, home, a.url)
        err = capfd.readouterr().err
        assert f"refused the answer of {a.url}" in err and f"signed by {a.did}, no peer this home trusts" in err
        assert not home.store.has(peer.bom)
        assert Signatures(home.folder / "signatures").get(peer.bom) is None
    finally:
        home.close()
    lonely = _home(tmp_path / "c", [], a)  # trusts nobody: nobody is even asked
    try:
        _runs_everything(peer, lonely, a.url)
        assert "this home trusts no peer" in capfd.readouterr().err
    finally:
        lonely.close()


@pytest.mark.slow
def test_a_peer_that_does_not_trust_this_home_or_is_down(peer: Peer, tmp_path: Path,
                                                        capfd: pytest.CaptureFixture[str]) -> None:
    a = peer.node
    home = _home(tmp_path / "b", [a.did], None)  # A does not trust this home: it answers 403
    try:
        _runs_everything(peer, home, a.url)
        err = capfd.readouterr().err
        assert f"stopped asking {a.url}: it refuses this home (403" in err
        down = f"http://127.0.0.1:{free_port()}"
        fresh = _home(tmp_path / "c", [a.did], a)
        try:
            _runs_everything(peer, fresh, down)
            assert f"not reusing from {down}: cannot reach it" in capfd.readouterr().err
        finally:
            fresh.close()
    finally:
        home.close()


# -- a fake node with genuine material, forging answers -------------------------------------------------------


@dataclass
class Fake:
    """Serves /id, /evaluations/{key}, /ipfs/{cid} (raw and car) from A's index, store and signatures, with
    blocks of its own (`extra`), blocks served corrupted (`corrupt`), extra blocks slipped into every CAR
    (`slipped`), and every answer passed through `forge(key, answer)`."""

    peer: Peer
    did: str
    extra: MemoryStore = field(default_factory=MemoryStore)
    corrupt: dict[CID, bytes] = field(default_factory=dict)
    slipped: list[tuple[CID, bytes]] = field(default_factory=list)
    forge: Callable[[str, dict[str, Any]], dict[str, Any]] = lambda key, answer: answer
    url: str = ""
    # answers a request itself (True) instead of the fake's usual answer: a hostile server's own behaviour
    serve: Callable[[BaseHTTPRequestHandler, str], bool] = lambda handler, path: False

    def block(self, cid: CID) -> bytes | None:
        if cid in self.corrupt:
            return self.corrupt[cid]
        for store in (self.extra, self.peer.node.store):
            if store.has(cid):
                return store.get(cid)
        return None

    def answer(self, key: str) -> dict[str, Any] | None:
        record = self.peer.keys().get(key)
        if record is None:
            return None
        envelope = Signatures(self.peer.node.home / "signatures").get(self.peer.bom)
        assert envelope is not None
        return self.forge(key, {"key": key, "bom": str(self.peer.bom), "record": record,
                                "envelope": envelope.model_dump()})

    def car(self, root: CID) -> bytes:
        union = MemoryStore()
        for store in (self.peer.node.store, self.extra):
            for cid in store:
                union.put(cid, store.get(cid))
        sections = [car.section(cid, self.block(cid) or b"") for cid in walk(union, root)]
        sections[1:1] = [car.section(cid, block) for cid, block in self.slipped]
        return car.header([root]) + b"".join(sections)


@pytest.fixture
def fake(peer: Peer, tmp_path: Path) -> Iterator[Fake]:
    state = Fake(peer, Identity.load(tmp_path / "fake-node").did)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if state.serve(self, self.path):
                return None
            if parts.path == "/id":
                return self._send(200, json.dumps({"did": state.did, "version": "0", "private": False}).encode())
            if parts.path.startswith("/evaluations/"):
                answer = state.answer(parts.path.split("/")[2])
                return self._send(200, json.dumps(answer).encode()) if answer else self._send(404, b"{}")
            if parts.path.startswith("/ipfs/"):
                cid = CID.parse(parts.path[len("/ipfs/"):])
                block = state.block(cid)
                if block is None:
                    return self._send(404, b"{}")
                car_asked = parse_qs(parts.query).get("format") == ["car"]
                return self._send(200, state.car(cid) if car_asked else block)
            return self._send(404, b"{}")

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with loopback(Handler) as state.url:
        yield state


def _evil(store: MemoryStore) -> CID:
    with Importer(store, cid_version=1) as importer:
        return importer.add_bytes(b"the attacker's result\n").cid


def _forged_bom(fake: Fake, evil: CID) -> CID:
    """A's BOM with every slice's output replaced by `evil`, stored in the fake's own blocks."""
    a = fake.peer.node.store
    bom = load_bom(a, fake.peer.bom)
    recs = [r.model_copy(update={"output": evil}) for r in bom_records(a, bom)]
    forged = bom.model_copy(update={"slices": write_records(fake.extra, recs), "outputs": [evil]})
    return put_cbor(fake.extra, forged.model_dump(exclude_none=True))


def _wrong_output(fake: Fake) -> str:
    evil = _evil(fake.extra)  # A's genuine signed BOM does not record this output
    fake.forge = lambda key, answer: {**answer, "record": {**answer["record"], "output": str(evil)}}
    return f"not {evil}"


def _signature_over_another_bom(fake: Fake) -> str:
    forged = _forged_bom(fake, _evil(fake.extra))  # A's genuine envelope, over A's BOM, sent for this one
    fake.forge = lambda key, answer: {**answer, "bom": str(forged),
                                      "record": {**answer["record"], "output": str(_evil(fake.extra))}}
    return f"the payload is BOM {fake.peer.bom}, not this one"


def _another_slices_evaluation(fake: Fake) -> str:
    keys = sorted(fake.peer.keys())  # each key answered with the next one's genuine, signed evaluation

    def forge(key: str, answer: dict[str, Any]) -> dict[str, Any]:
        other = keys[(keys.index(key) + 1) % len(keys)]
        return {**answer, "record": fake.peer.keys()[other]}

    fake.forge = forge
    return "is evaluation"


def _signed_by_an_untrusted_key(fake: Fake, tmp_path: Path) -> str:
    evil = _evil(fake.extra)
    forged = _forged_bom(fake, evil)
    envelope = sign(Identity.load(tmp_path / "attacker"), forged).model_dump()
    fake.forge = lambda key, answer: {**answer, "bom": str(forged), "envelope": envelope,
                                      "record": {**answer["record"], "output": str(evil)}}
    return "no peer this home trusts"


def _trusted_key_id_forged_signature(fake: Fake, tmp_path: Path) -> str:
    evil = _evil(fake.extra)
    forged = _forged_bom(fake, evil)  # claims A's key id; signed by the attacker's key
    made = sign(Identity.load(tmp_path / "attacker"), forged)
    envelope = made.model_copy(update={"signatures": [Signature(keyid=fake.peer.node.did,
                                                                sig=made.signatures[0].sig)]}).model_dump()
    fake.forge = lambda key, answer: {**answer, "bom": str(forged), "envelope": envelope,
                                      "record": {**answer["record"], "output": str(evil)}}
    return "does not hold"


def _corrupted_bom_block(fake: Fake) -> str:
    genuine = fake.peer.node.store.get(fake.peer.bom)
    fake.corrupt[fake.peer.bom] = genuine.replace(b"reverse", b"REVERSE")
    return f"the block it sent for {fake.peer.bom} does not match"


def _corrupted_output_block(fake: Fake) -> str:
    for r in bom_records(fake.peer.node.store, load_bom(fake.peer.node.store, fake.peer.bom)):
        block = fake.peer.node.store.get(r.output)
        fake.corrupt[r.output] = bytes([block[0] ^ 1]) + block[1:]
    return "does not match its CID"


FORGERIES: dict[str, Callable[..., str]] = {
    "wrong output": _wrong_output, "signature over another BOM": _signature_over_another_bom,
    "another slice's evaluation": _another_slices_evaluation, "untrusted signer": _signed_by_an_untrusted_key,
    "trusted key id, forged signature": _trusted_key_id_forged_signature,
    "corrupted BOM block": _corrupted_bom_block, "corrupted output block": _corrupted_output_block,
}


@pytest.mark.slow
@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_a_forged_answer_is_refused_and_the_slice_runs_here(peer: Peer, fake: Fake, tmp_path: Path, forgery: str,
                                                             capfd: pytest.CaptureFixture[str]) -> None:
    make = FORGERIES[forgery]
    why = make(fake, tmp_path) if "tmp_path" in make.__code__.co_varnames else make(fake)
    home = _home(tmp_path / "victim", [peer.node.did], None)
    try:
        _runs_everything(peer, home, fake.url)
        err = capfd.readouterr().err
        assert f"refused the answer of {fake.url}" in err and why in err, err
        assert "(and 2 more)" in err  # one line for the peer, however many answers fell
        assert not any(home.store.has(c) for c in fake.extra)  # nothing of the attacker's was kept
        assert not home.store.has(peer.bom)
        assert Signatures(home.folder / "signatures").get(peer.bom) is None
    finally:
        home.close()


@pytest.mark.slow
def test_blocks_slipped_into_a_car_are_not_kept(peer: Peer, fake: Fake, tmp_path: Path) -> None:
    stray = MemoryStore()
    with Importer(stray, cid_version=1) as importer:
        cid = importer.add_bytes(b"not part of any output\n").cid
    fake.slipped.append((cid, stray.get(cid)))
    home = _home(tmp_path / "b", [peer.node.did], None)
    try:
        run = factory.run(peer.order(fake.url), home=home, quiet=True)
        assert (run.executed, run.reused_slices, run.output) == (0, FILES, peer.output)
        assert not home.store.has(cid)
    finally:
        home.close()


def _dribble(handler: BaseHTTPRequestHandler, declared: int, seconds: float) -> None:
    """A body that never ends in time: one byte every 0.2 s (each within any read timeout)."""
    handler.send_response(200)
    handler.send_header("Content-Length", str(declared))
    handler.end_headers()
    stop = time.monotonic() + seconds
    try:
        while time.monotonic() < stop:
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.2)
    except OSError:
        pass  # the client hung up: what it should do


def _endless(handler: BaseHTTPRequestHandler, head: bytes, piece: bytes, seconds: float, pause: float = 0.0) -> None:
    """`head`, then `piece` again and again, `pause` between two (chunked: no length)."""
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    stop = time.monotonic() + seconds
    try:
        for chunk in itertools.chain([head] if head else [], itertools.repeat(piece)):
            if time.monotonic() > stop:
                break
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            time.sleep(pause)
        handler.wfile.write(b"0\r\n\r\n")
    except OSError:
        pass


def _slow_answer(fake: Fake) -> Callable[[BaseHTTPRequestHandler, str], bool]:
    return lambda h, path: path.startswith("/evaluations/") and (_dribble(h, 1 << 20, 40) or True)


def _huge_answer(fake: Fake) -> Callable[[BaseHTTPRequestHandler, str], bool]:
    return lambda h, path: path.startswith("/evaluations/") and (_endless(h, b"", b" " * 65536, 40, 0.02) or True)


def _endless_car(fake: Fake) -> Callable[[BaseHTTPRequestHandler, str], bool]:
    """The output's genuine CAR, then tiny blocks nobody asked for, without end."""
    stray = MemoryStore()
    with Importer(stray, cid_version=1) as importer:
        cid = importer.add_bytes(b"x").cid
    tiny = car.section(cid, stray.get(cid)) * 4096

    def serve(h: BaseHTTPRequestHandler, path: str) -> bool:
        if not (path.startswith("/ipfs/") and "format=car" in path):
            return False
        genuine = fake.car(CID.parse(urlsplit(path).path[len("/ipfs/"):]))
        _endless(h, genuine, tiny, 40)
        return True

    return serve


HOSTILE: dict[str, tuple[Callable[[Fake], Callable[[BaseHTTPRequestHandler, str], bool]], str]] = {
    "an answer dribbled a byte at a time": (_slow_answer, "stopped asking {url}: no answer within 3 s"),
    "an endless answer": (_huge_answer, "answered more than 1048576 bytes"),
    "an endless CAR of blocks nobody asked for": (_endless_car, "is larger than"),
}


@pytest.mark.slow
@pytest.mark.parametrize("hostile", list(HOSTILE))
def test_a_hostile_peer_costs_a_bounded_time_and_the_slices_run_here(
        peer: Peer, fake: Fake, tmp_path: Path, hostile: str, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    """However slowly or endlessly a peer answers, asking it costs at most the budget (each byte in time
    for the read timeout does not keep it going) and the bytes an answer may take, never the run."""
    monkeypatch.setattr(peers, "BUDGET_S", 3.0)
    make, why = HOSTILE[hostile]
    fake.serve = make(fake)
    home = _home(tmp_path / "victim", [peer.node.did], None)
    try:
        started = time.monotonic()
        _runs_everything(peer, home, fake.url)
        assert time.monotonic() - started < 25
        err = capfd.readouterr().err
        assert why.format(url=fake.url) in err, err
    finally:
        home.close()


# -- cats verify --integrity: a slice taken from a peer stands on the peer's BOM kept here ----------------------


@dataclass
class Taken:
    """A fresh home whose run took every slice from A: its BOM, records and blocks folder."""

    home: Home
    bom: CID
    recs: list[Any]
    held: CID  # A's record block, kept here

    @property
    def blocks(self) -> LocalStore:
        return LocalStore(self.home.folder / "blocks")

    def forge(self, index: int, **changes: Any) -> CID:
        """This home's BOM with slice `index`'s record changed, written straight into the store and signed
        by this home (an attacker holding this home's key)."""
        recs = [r.model_copy(update=changes) if r.index == index else r for r in self.recs]
        bom = load_bom(self.home.store, self.bom).model_copy(update={"slices": write_records(self.home.store, recs)})
        cid = put_cbor(self.home.store, bom.model_dump(exclude_none=True))
        self.home.signatures.add(sign(self.home.identity, cid))
        return cid


@pytest.fixture
def taken(peer: Peer, tmp_path: Path) -> Iterator[Taken]:
    home = _home(tmp_path / "b", [peer.node.did], peer.node)
    try:
        run = factory.run(peer.order(peer.node.url), home=home, quiet=True)
        assert run.reused_slices == FILES
        (held,) = load_bom(home.store, peer.bom).slices
        yield Taken(home, run.bom, _records(home, run.bom), held)
    finally:
        home.close()


def _integrity(taken: Taken, bom: CID) -> Report:
    return api.verify(bom, integrity=True, home=taken.home)


@pytest.mark.slow
def test_integrity_checks_the_peer_bom_a_slice_was_taken_from(peer: Peer, taken: Taken) -> None:
    a = peer.node
    report = _integrity(taken, taken.bom)
    assert report.verified, report.problems
    assert report.reused_from == [SourceBOM(bom=str(peer.bom), slices=FILES, signers=[a.did], verified=True,
                                            peer=True)]
    res = run_cli(taken.home.folder, "verify", str(taken.bom), "--integrity", "--json")
    assert res.code == 0, res.out + res.err
    assert json.loads(res.out)["reused_from"] == [{"bom": str(peer.bom), "slices": FILES, "signers": [a.did],
                                                  "verified": True, "peer": True}]
    res = run_cli(taken.home.folder, "verify", str(taken.bom), "--integrity")
    assert res.code == 0, res.out + res.err
    assert f"{FILES} slice(s) taken from the peer BOM {peer.bom}: signed by {a.did}" in res.out



def _untrusted(peer: Peer, taken: Taken) -> str:
    Trust(taken.home.folder / "trust.json").rm(peer.node.did)
    return f"signed by neither this node nor a trusted peer (only by {peer.node.did})"


def _bom_deleted(peer: Peer, taken: Taken) -> str:
    taken.blocks.delete(peer.bom)  # as a gc would: nothing this home pins links it
    return "the source BOM is not in the store"


def _records_deleted(peer: Peer, taken: Taken) -> str:
    taken.blocks.delete(taken.held)
    return "none of its 1 record blocks is in the store"


def _bom_altered(peer: Peer, taken: Taken) -> str:
    jobs.tamper(taken.blocks, peer.bom)
    return "the source BOM is not intact"


def _records_altered(peer: Peer, taken: Taken) -> str:
    jobs.tamper(taken.blocks, taken.held)
    return "the source BOM is not intact"


def _signature_forged(peer: Peer, taken: Taken) -> str:
    """This home's envelope over its own BOM, filed as A's: it names A's BOM's file but is over another CID."""
    envelope = taken.home.signatures.get(taken.bom)
    assert envelope is not None
    (taken.home.folder / "signatures" / f"{peer.bom}.json").write_text(json.dumps(envelope.model_dump()))
    return f"the payload is BOM {taken.bom}, not this one"


VOUCHING_FAULTS: dict[str, tuple[Callable[[Peer, Taken], str], str]] = {
    "peer no longer trusted": (_untrusted, "source-unsigned"),
    "peer BOM deleted": (_bom_deleted, "block-missing"),
    "record block deleted": (_records_deleted, "block-missing"),
    "peer BOM altered": (_bom_altered, "bom-altered"),
    "record block altered": (_records_altered, "bom-altered"),
    "signature forged": (_signature_forged, "signature-invalid"),
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(VOUCHING_FAULTS))
def test_a_peer_bom_that_does_not_vouch_fails_integrity(peer: Peer, taken: Taken, fault: str) -> None:
    spoil, reason = VOUCHING_FAULTS[fault]
    said = spoil(peer, taken)

    report = _integrity(taken, taken.bom)

    assert not report.verified
    # one problem per slice, naming the slice and the peer's BOM
    assert [(p.reason, p.slice, p.cid) for p in report.problems] == [(reason, i, str(peer.bom)) for i in range(FILES)]
    for i, problem in enumerate(report.problems):
        assert problem.detail.startswith(f"slice {i} taken from the peer BOM {peer.bom}: "), problem.detail
        assert said in problem.detail and "\n" not in problem.detail, problem.detail
    assert [(s.bom, s.peer, s.verified) for s in report.reused_from] == [(str(peer.bom), True, False)]
    res = run_cli(taken.home.folder, "verify", str(taken.bom), "--integrity", "--json")
    assert res.code == 1, res.out + res.err
    assert [p["reason"] for p in json.loads(res.out)["problems"]] == [reason] * FILES


@pytest.mark.slow
def test_a_forged_vouched_claim_fails_integrity(peer: Peer, taken: Taken) -> None:
    kept = MemoryStore()
    evil = _evil(kept)
    taken.home.store.put(evil, kept.get(evil))  # the attacker's output is here, whole: only the claim is false
    vouched = taken.recs[0].vouched
    assert vouched is not None
    # slice 0 says A's BOM computed an output A never computed
    forged = taken.forge(0, output=evil)
    report = _integrity(taken, forged)
    assert not report.verified
    assert [(p.reason, p.slice, p.cid) for p in report.problems] == [("bom-altered", 0, str(peer.bom))]
    assert report.problems[0].detail == (f"slice 0 taken from the peer BOM {peer.bom}: it never computed output "
                                         f"{evil} ({taken.recs[0].encoding})")
    assert [(s.slices, s.verified) for s in report.reused_from] == [(FILES, False)]

    # slice 1 names this home as the peer that signed A's BOM: it did not
    me = taken.home.identity.did
    forged = taken.forge(1, vouched=vouched.model_copy(update={"signer": me}))
    report = _integrity(taken, forged)
    assert [(p.reason, p.slice) for p in report.problems] == [("source-unsigned", 1)]
    assert f"no signature by {me}, the signer its record names, is kept for it" in report.problems[0].detail

    # slice 2 says this home's own BOM, signed by this home, computed it: that run took it from A, it never ran it
    relay = taken.forge(2, vouched=Vouched(bom=str(taken.bom), signer=me))
    report = _integrity(taken, relay)
    assert [(p.reason, p.slice, p.cid) for p in report.problems] == [("bom-altered", 2, str(taken.bom))]
    assert "it never computed output" in report.problems[0].detail


# -- the node's route ----------------------------------------------------------------------------------------


def _get(node: RealNode, path: str, signer: Identity | None) -> httpx.Response:
    headers = sign_request(signer, node.did, "GET", path) if signer is not None else {}
    return httpx.get(node.url + path, headers=headers, timeout=30)


@pytest.mark.slow
def test_the_node_answers_signed_requests_of_trusted_peers_with_what_it_signed(peer: Peer, tmp_path: Path) -> None:
    a = peer.node
    friend, stranger = Identity.load(tmp_path / "friend"), Identity.load(tmp_path / "stranger")
    Trust(a.home / "trust.json").add(friend.did, name="friend")
    key, record = next(iter(peer.keys().items()))
    ok = _get(a, f"/evaluations/{key}", friend)
    assert ok.status_code == 200, ok.text
    answer = ok.json()
    assert (answer["key"], answer["bom"], answer["record"]["output"]) == (key, str(peer.bom), record["output"])
    envelope = Envelope.model_validate(answer["envelope"])
    assert envelope.bom == peer.bom and envelope.signers() == [a.did]
    assert _get(a, f"/evaluations/{key}", None).status_code == 401  # reads are open, evaluations are not
    assert _get(a, f"/evaluations/{key}", stranger).status_code == 403
    bad = _get(a, "/evaluations/not-a-cid", friend)
    assert bad.status_code == 400 and "'not-a-cid' is not a CID" in bad.json()["detail"]
    unknown = CID.hash(b"no such evaluation", DAG_CBOR)
    missing = _get(a, f"/evaluations/{unknown}", friend)
    assert missing.status_code == 404 and str(unknown) in missing.json()["detail"]
    # an evaluation whose BOM this node has not signed is not offered
    kept = Signatures(a.home / "signatures")._path(peer.bom)
    aside = tmp_path / "envelope.json"
    shutil.move(kept, aside)
    try:
        unsigned = _get(a, f"/evaluations/{key}", friend)
        assert unsigned.status_code == 404 and "not signed by this node" in unsigned.json()["detail"]
    finally:
        shutil.move(aside, kept)
    schema = httpx.get(a.url + "/openapi.json", timeout=30).json()
    assert "/evaluations/{key}" in schema["paths"]


def test_reuse_from_never_changes_an_order_cid(tmp_path: Path) -> None:
    source = jobs.module(tmp_path, "reuse_cid_job", "def f(data):\n    return data\n")
    plain = Order(function=Function(entry="reuse_cid_job:f", source=source), inputs=[tmp_path])
    asking = plain.model_copy(update={"plant": Plant(reuse_from=["http://peer:8480/", "https://other"])})
    assert asking.plant.reuse_from == ["http://peer:8480", "https://other"]
    assert asking.model_dump() == plain.model_dump()  # what block() encodes, once sealed
    assert "\"reuse_from\"" not in asking.model_dump_json()
    with pytest.raises(ValueError, match="'peer:8480' is not a node URL"):
        Plant(reuse_from=["peer:8480"])
