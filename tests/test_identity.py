"""Node identity (did:key), trust lists, signed requests and DSSE envelopes over BOM CIDs."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
from pathlib import Path

import jobs
import jsref
import pytest

from cats import factory
from cats.bom.signatures import PAYLOAD_TYPE, Envelope, Signature, Signatures, pae, sign
from cats.cas.cid import CID
from cats.errors import CatsError
from cats.identity import Identity, public_key, verify
from cats.identity.requests import RequestRejected, sign_request, verify_request
from cats.identity.trust import Trust
from cats.order import Function, Order


@pytest.fixture
def me(tmp_path: Path) -> Identity:
    return Identity.load(tmp_path / "me")


def _raw_public(identity: Identity) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return identity._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_did_key_and_signature_agree_with_node(me: Identity) -> None:
    """multiformats' base58btc names the key as we do; node's own Ed25519 verifies our signature."""
    jsref.require()
    raw = _raw_public(me)
    message = b"a BOM CID, say"
    script = """
        import { base58btc } from 'multiformats/bases/base58';
        import { createPublicKey, verify } from 'node:crypto';
        const [raw, msg, sig] = process.argv.slice(1).map(h => Buffer.from(h, 'hex'));
        const did = 'did:key:' + base58btc.encode(Uint8Array.from([0xed, 0x01, ...raw]));
        const jwk = { kty: 'OKP', crv: 'Ed25519', x: raw.toString('base64url') };
        const key = createPublicKey({ key: jwk, format: 'jwk' });
        console.log(JSON.stringify({ did, ok: verify(null, msg, key, sig) }));
    """
    args = [raw.hex(), message.hex(), me.sign(message).hex()]
    out = subprocess.run(["node", "--input-type=module", "-e", script, *args], cwd=jsref.JS_DIR, capture_output=True,
                         text=True, check=True, timeout=60)
    got = json.loads(out.stdout)
    assert got == {"did": me.did, "ok": True}
    assert me.did.startswith("did:key:z6Mk")


def test_identity_is_kept_private_and_stable(tmp_path: Path) -> None:
    first = Identity.load(tmp_path / "id")
    key = tmp_path / "id" / "ed25519.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert Identity.load(tmp_path / "id").did == first.did
    assert Identity.load(tmp_path / "other").did != first.did
    key.chmod(0o644)
    with pytest.raises(CatsError, match="readable by others"):
        Identity.load(tmp_path / "id")


def test_verify_needs_only_the_did(me: Identity, tmp_path: Path) -> None:
    other = Identity.load(tmp_path / "other")
    sig = me.sign(b"x")
    assert verify(me.did, b"x", sig)
    assert not verify(me.did, b"y", sig)
    assert not verify(other.did, b"x", sig)
    for bad in ("did:web:example.org", "did:key:zzz", "did:key:z" + "1" * 40, 42):
        with pytest.raises(CatsError, match="did:key"):
            public_key(bad)  # type: ignore[arg-type]


def test_trust_list(tmp_path: Path, me: Identity) -> None:
    trust = Trust(tmp_path / "trust.json")
    assert trust.peers() == [] and me.did not in trust
    trust.add(me.did, name="org-a", url="http://127.0.0.1:8480/")
    assert me.did in trust and trust.get(me.did).url == "http://127.0.0.1:8480"  # type: ignore[union-attr]
    trust.add(me.did, name="renamed")
    assert [p.name for p in Trust(tmp_path / "trust.json").peers()] == ["renamed"]
    trust.rm(me.did)
    assert me.did not in trust
    with pytest.raises(CatsError, match="not trusted"):
        trust.rm(me.did)
    with pytest.raises(CatsError, match="did:key"):
        trust.add("did:key:nonsense")
    (tmp_path / "trust.json").write_text("{broken")
    with pytest.raises(CatsError, match="not a trust list"):
        trust.peers()


class _Nonces:
    def __init__(self) -> None:
        self.kept: set[str] = set()

    def seen(self, nonce: str, expires: float) -> bool:
        if nonce in self.kept:
            return True
        self.kept.add(nonce)
        return False


def test_signed_requests(me: Identity, tmp_path: Path) -> None:
    node = Identity.load(tmp_path / "node").did  # the node the requests are meant for
    body = b'{"order": "bafy..."}'
    headers = sign_request(me, node, "POST", "/orders?x=1", body)
    nonces = _Nonces()
    signed = verify_request(headers, "POST", "/orders?x=1", node=node, seen=nonces.seen)
    assert signed.did == me.did
    check = signed.body()
    check.update(body[:5])
    check.update(body[5:])
    check.done()  # the body streamed in pieces is the one signed

    def rejected(why: str, h: dict[str, str] = headers, method: str = "POST", path: str = "/orders?x=1",
                 at: str = node, **kw: float) -> None:
        with pytest.raises(RequestRejected, match=why) as caught:
            verify_request(h, method, path, node=at, seen=_Nonces().seen, **kw)  # type: ignore[arg-type]
        assert caught.value.status == 401

    with pytest.raises(RequestRejected, match="replayed"):
        verify_request(headers, "POST", "/orders?x=1", node=node, seen=nonces.seen)
    altered = signed.body()
    altered.update(body + b" ")
    with pytest.raises(RequestRejected, match="body does not match") as caught:
        altered.done()
    assert caught.value.status == 401
    rejected("signature is not", path="/orders?x=2")
    rejected("signature is not", method="PUT")
    rejected("outside the 300 s window", now=float(headers["X-Cats-Date"]) + 301)
    rejected("missing x-cats-signature", h={k: v for k, v in headers.items() if k != "X-Cats-Signature"})
    rejected("missing x-cats-node", h={k: v for k, v in headers.items() if k != "X-Cats-Node"})
    other = Identity.load(tmp_path / "other")
    rejected("signature is not", h={**headers, "X-Cats-Key": other.did})  # someone else's name on it
    rejected("bad signature", h={**headers, "X-Cats-Signature": "***"})
    # meant for another node: refused there, whether or not the header is changed to name it
    rejected(f"signed for node '{node}', not this node \\({other.did}\\)", at=other.did)
    rejected("signature is not", h={**headers, "X-Cats-Node": other.did}, at=other.did)
    for date in ("nan", "NaN", "inf", "-inf", "1e9", "-1", "", "1_700_000_000", " 1700000000", "0x10"):
        rejected("invalid X-Cats-Date", h={**headers, "X-Cats-Date": date})
    rejected("malformed X-Cats-Digest", h={**headers, "X-Cats-Digest": "md5=abc"})
    rejected("malformed X-Cats-Nonce", h={**headers, "X-Cats-Nonce": "x"})


def test_envelopes_countersign_and_drop_forgeries(me: Identity, tmp_path: Path) -> None:
    other = Identity.load(tmp_path / "other")
    bom = CID.hash(b"a bom", 0x71)
    envelope = sign(me, bom)
    assert envelope.payloadType == PAYLOAD_TYPE and envelope.bom == bom
    assert envelope.signers() == [me.did]
    both = sign(other, bom, envelope)
    assert both.signers() == [me.did, other.did]
    assert sign(other, bom, both) == both  # signing twice adds nothing
    with pytest.raises(CatsError, match="not"):
        sign(me, CID.hash(b"another", 0x71), envelope)
    # the signature covers DSSE's PAE, not the bare CID: a raw signature over the CID text does not count
    raw = Signature(keyid=other.did, sig=base64.b64encode(other.sign(str(bom).encode())).decode())
    forged = envelope.model_copy(update={"signatures": [*envelope.signatures, raw]})
    assert forged.signers() == [me.did]
    assert other.sign(pae(PAYLOAD_TYPE, str(bom).encode())) != base64.b64decode(raw.sig)
    store = Signatures(tmp_path / "sigs")
    assert store.get(bom) is None
    store.add(forged)
    assert store.get(bom).signers() == [me.did]  # type: ignore[union-attr]
    assert [s.keyid for s in store.get(bom).signatures] == [me.did]  # type: ignore[union-attr]  # forgery not kept
    store.add(sign(other, bom))
    assert store.get(bom).signers() == [me.did, other.did]  # type: ignore[union-attr]
    with pytest.raises(CatsError, match="no valid signature"):
        store.add(Envelope(payload=envelope.payload, signatures=[raw]))
    with pytest.raises(CatsError, match="not a BOM CID"):
        _ = Envelope(payload=base64.b64encode(b"not a cid").decode()).bom


def test_concurrent_countersignatures_are_all_kept(tmp_path: Path) -> None:
    bom = CID.hash(b"shared", 0x71)
    signers = [Identity.load(tmp_path / f"s{i}") for i in range(8)]
    store = Signatures(tmp_path / "sigs")
    threads = [threading.Thread(target=lambda s=s: Signatures(tmp_path / "sigs").add(sign(s, bom))) for s in signers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(store.get(bom).signers()) == sorted(s.did for s in signers)  # type: ignore[union-attr]


def test_the_factory_signs_its_boms(ray_session: str, cats_home: Path, tmp_path: Path, cli) -> None:
    src = jobs.module(tmp_path, "fid_sign", "def f(data):\n    return data[::-1]\n")
    run = factory.run(Order(function=Function(entry="fid_sign:f", source=src),
                            inputs=[jobs.folder(tmp_path, {"a.txt": b"abc"})]))
    envelope = Signatures().get(run.bom)
    assert envelope is not None and envelope.bom == run.bom
    assert envelope.signers() == [Identity.load().did]
    shown = cli("bom", "show", str(run.bom), "--json")
    assert shown.code == 0, shown.err
    assert json.loads(shown.out)["signers"] == [Identity.load().did]
    assert f"signed by    {Identity.load().did}" in cli("bom", "show", str(run.bom)).out


def test_trust_is_decided_after_the_signature_and_before_the_nonce(me: Identity, tmp_path: Path) -> None:
    """A forged request is a 401 whatever the trust list says (it learns nothing of it); a genuine one from
    an untrusted DID is a 403 that records no nonce (anyone can make a did:key: it must cost no row)."""
    node = Identity.load(tmp_path / "node").did
    stranger = Identity.load(tmp_path / "stranger")
    headers = sign_request(stranger, node, "GET", "/id", b"")
    nonces = _Nonces()
    with pytest.raises(RequestRejected, match="not trusted") as caught:
        verify_request(headers, "GET", "/id", node=node, seen=nonces.seen, trusted={me.did})
    assert caught.value.status == 403 and nonces.kept == set()
    forged = {**headers, "X-Cats-Signature": sign_request(me, node, "GET", "/id", b"")["X-Cats-Signature"]}
    with pytest.raises(RequestRejected, match="signature is not") as caught:
        verify_request(forged, "GET", "/id", node=node, seen=nonces.seen, trusted={me.did})
    assert caught.value.status == 401 and nonces.kept == set()
    accepted = verify_request(headers, "GET", "/id", node=node, seen=nonces.seen, trusted={stranger.did})
    assert accepted.did == stranger.did
    assert len(nonces.kept) == 1
