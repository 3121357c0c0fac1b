"""Attacks on a BOM's signature: a real run signed by the Factory, then its kept envelope tampered
with (a flipped byte, another key id, another payload, another key's signature, broken JSON). Each
must make `cats verify` fail with `signature-invalid` naming the claimed signer and why, never read
as an unsigned BOM and never end in a traceback; the untouched envelope still verifies, and a BOM
with no envelope at all stays an unsigned pass that says so.

Functions that run in Ray workers are captured by their source file, so the job is written into its
own module (prefix sga_, a name no other test uses).
"""

from __future__ import annotations

import base64
import copy
import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jobs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cats import factory
from cats.bom.signatures import PAYLOAD_TYPE, Signatures, pae, sign
from cats.cas.cid import CID
from cats.cas.dag import put_cbor
from cats.cas.store.local import LocalStore
from cats.identity import Identity
from cats.order import Function, Order
from cats.verification.audit import verify

FILES = {"a.txt": b"alpha\n", "b.txt": b"bravo\n"}


@dataclass
class Signed:
    home: Path          # CATS_HOME of the run: its store, its identity and the envelope it kept
    bom: CID
    did: str            # the Factory's signer: this home's identity
    other: Identity     # another party, for signatures by a key that is not the signer's
    elsewhere: CID      # another BOM-like block in the same store, for envelopes over another CID

    def envelope_path(self, home: Path) -> Path:
        return home / "signatures" / f"{self.bom.to_v1()}.json"

    def envelope(self) -> dict[str, Any]:
        return json.loads(self.envelope_path(self.home).read_text())


@pytest.fixture(scope="module")
def signed(ray_session: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signed]:
    """One real 2-slice run through the Factory, which signs its BOM; each test copies its home."""
    root = tmp_path_factory.mktemp("sga")
    home = root / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CATS_HOME", str(home))
        mp.delenv("CATS_STORE", raising=False)
        src = jobs.module(root, "sga_upper", "def upper(data):\n    return data.upper()\n")
        store = jobs.home_store(home)
        inputs = jobs.add(store, jobs.folder(root, FILES))
        run = factory.run(Order(function=Function(entry="sga_upper:upper", source=src), inputs=[inputs],
                                name="sga"), quiet=True)
        did = Identity.load().did
    elsewhere = put_cbor(store, {"type": "not this BOM"})
    yield Signed(home, run.bom, did, Identity.load(root / "other"), elsewhere)


@pytest.fixture
def home(signed: Signed, cats_home: Path) -> Path:
    """The signed run's CATS_HOME copied to this test's (the `cli` fixture's) CATS_HOME."""
    shutil.copytree(signed.home, cats_home)
    return cats_home


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _write(signed: Signed, home: Path, envelope: dict[str, Any] | str | bytes) -> None:
    path = signed.envelope_path(home)
    if isinstance(envelope, dict):
        envelope = json.dumps(envelope)
    path.write_bytes(envelope.encode() if isinstance(envelope, str) else envelope)


def _no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text and "ValidationError" not in text, text


# -- the untouched envelope, and none at all -------------------------------------------------------
def test_the_untampered_signature_verifies(signed: Signed, home: Path, cli, ray_session: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", ray_session)
    res = cli("verify", str(signed.bom), "--json")  # re-executes: signatures are checked in every mode
    assert res.code == 0, (res.out, res.err)
    data = json.loads(res.out)
    assert data["verified"] is True and data["mode"] == "reexecute"
    assert data["signature"] == "signed" and data["signers"] == [signed.did] and data["bad_signatures"] == []

    text = cli("verify", str(signed.bom), "--integrity")
    assert text.code == 0, (text.out, text.err)
    assert f"signed by {signed.did}" in text.out and "signature-invalid" not in text.out


def test_unsigned_passes_and_says_so(signed: Signed, home: Path, cli) -> None:
    signed.envelope_path(home).unlink()
    res = cli("verify", str(signed.bom), "--integrity", "--json")
    assert res.code == 0, (res.out, res.err)
    data = json.loads(res.out)
    assert data["verified"] is True and data["signature"] == "unsigned"
    assert data["signers"] == [] and data["bad_signatures"] == [] and data["problems"] == []
    text = cli("verify", str(signed.bom), "--integrity")
    assert text.code == 0 and "unsigned" in text.out and "signed by" not in text.out


# -- tampering: each names signature-invalid, the claimed signer and the reason --------------------
def _flip_byte(s: Signed) -> tuple[dict[str, Any], str, str]:
    env = s.envelope()
    raw = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    raw[7] ^= 0x01
    env["signatures"][0]["sig"] = _b64(bytes(raw))
    return env, s.did, "bad signature"


def _other_key_id(s: Signed) -> tuple[dict[str, Any], str, str]:
    """The signer's signature claimed by another identity: the key that made it is known here (it is
    this node's own), so the reason says whose it really is."""
    env = s.envelope()
    env["signatures"][0]["keyid"] = s.other.did
    return env, s.other.did, f"the key id does not match the key: the signature was made by {s.did}"


def _altered_payload(s: Signed) -> tuple[dict[str, Any], str, str]:
    env = s.envelope()
    env["payload"] = _b64(str(s.elsewhere).encode())
    return env, s.did, f"the payload is BOM {s.elsewhere}, not this one"


def _valid_over_another_cid(s: Signed) -> tuple[dict[str, Any], str, str]:
    """A genuine signature, but over another BOM, kept under this one's name: it vouches for nothing here."""
    return sign(s.other, s.elsewhere).model_dump(), s.other.did, f"the payload is BOM {s.elsewhere}"


def _other_keys_signature(s: Signed) -> tuple[dict[str, Any], str, str]:
    """Another key's genuine signature over the same payload, under the signer's key id."""
    env = s.envelope()
    env["signatures"][0]["sig"] = sign(s.other, s.bom).signatures[0].sig
    return env, s.did, "bad signature: it does not verify under the key id's public key"


def _unknown_algorithm(s: Signed) -> tuple[dict[str, Any], str, str]:
    env = s.envelope()
    env["signatures"][0]["keyid"] = "did:web:example.org"
    return env, "did:web:example.org", "unknown algorithm"


def _payload_type(s: Signed) -> tuple[dict[str, Any], str, str]:
    env = s.envelope()
    env["payloadType"] = "application/vnd.in-toto+json"
    return env, s.did, "payloadType is 'application/vnd.in-toto+json'"


def _another_spelling(s: Signed) -> tuple[dict[str, Any], str, str]:
    """A genuine signature over the BOM's CID spelled another way (base32 upper case, the same CID): kept
    beside the canonical ones it would sign other bytes, so only the canonical text counts."""
    text = str(s.bom).upper().encode()
    env = {"payloadType": PAYLOAD_TYPE, "payload": _b64(text),
           "signatures": [{"keyid": s.other.did, "sig": _b64(s.other.sign(pae(PAYLOAD_TYPE, text)))}]}
    return env, s.other.did, "sign its canonical text"


TAMPERING = [_flip_byte, _other_key_id, _altered_payload, _valid_over_another_cid, _other_keys_signature,
             _unknown_algorithm, _payload_type, _another_spelling]


@pytest.mark.parametrize("tamper", TAMPERING, ids=lambda f: f.__name__.strip("_"))
def test_tampered_signature_fails_naming_signer_and_reason(tamper, signed: Signed, home: Path, cli) -> None:
    envelope, signer, reason = tamper(signed)
    _write(signed, home, envelope)

    res = cli("verify", str(signed.bom), "--integrity", "--json")
    assert res.code == 1, (res.out, res.err)
    _no_traceback(res.out, res.err)
    data = json.loads(res.out)
    assert data["verified"] is False and data["signature"] == "invalid" and data["signers"] == []
    (bad,) = data["bad_signatures"]
    assert bad["signer"] == signer and reason in bad["reason"], bad
    (problem,) = data["problems"]
    assert problem["reason"] == "signature-invalid" and problem["cid"] == str(signed.bom)
    assert signer in problem["detail"] and reason in problem["detail"]

    text = cli("verify", str(signed.bom), "--integrity")
    assert text.code == 1 and "NOT VERIFIED" in text.out
    _no_traceback(text.out, text.err)
    row = next(line for line in text.out.splitlines() if "signature-invalid" in line)
    assert signer in row and reason in row, row
    assert "unsigned" not in text.out


def test_a_forged_countersignature_fails_though_the_first_holds(signed: Signed, home: Path, cli) -> None:
    env = signed.envelope()
    forged = {"keyid": signed.other.did, "sig": env["signatures"][0]["sig"]}
    env["signatures"].append(forged)
    _write(signed, home, env)
    data = json.loads(cli("verify", str(signed.bom), "--integrity", "--json").out)
    assert data["verified"] is False and data["signature"] == "invalid"
    assert data["signers"] == [signed.did]
    assert [b["signer"] for b in data["bad_signatures"]] == [signed.other.did]


def test_no_signature_left_in_the_envelope_is_not_unsigned(signed: Signed, home: Path, cli) -> None:
    env = signed.envelope()
    env["signatures"] = []
    _write(signed, home, env)
    res = cli("verify", str(signed.bom), "--integrity", "--json")
    assert res.code == 1
    data = json.loads(res.out)
    assert data["signature"] == "invalid" and data["bad_signatures"] == [
        {"signer": None, "reason": "the envelope holds no signature"}]


# -- malformed envelopes: one line naming the file and the field, wherever envelopes are read -------
def _malformed(s: Signed) -> list[tuple[str, bytes, str | None, str]]:
    """(name, file bytes, claimed signer or None, what the message must name)."""
    good = json.dumps(s.envelope())

    def edited(change: Any) -> bytes:  # a function of the decoded envelope
        env = s.envelope()
        change(env)
        return json.dumps(env).encode()

    return [
        ("truncated", good[:-12].encode(), s.did, "not JSON"),
        ("sig-not-a-string", edited(lambda e: e["signatures"][0].update(sig=12345)), s.did, "signatures.0.sig"),
        ("no-payload", edited(lambda e: e.pop("payload")), s.did, "payload: Field required"),
        ("signatures-not-a-list", edited(lambda e: e.update(signatures={"keyid": s.did})), None, "signatures"),
        ("sig-not-base64", edited(lambda e: e["signatures"][0].update(sig="!!not*base64!!")), s.did,
         "not base64"),
        ("huge-sig", edited(lambda e: e["signatures"][0].update(sig="A" * 100_000)), s.did,
         "signatures.0.sig: String should have at most"),
        ("keyid-with-newline", edited(lambda e: e["signatures"][0].update(keyid=s.did + "\nforged")), None,
         "signatures.0.keyid"),
        ("deeply-nested", b"[" * 200_000, None, "not JSON"),
        ("oversized", b" " * (2 << 20) + good.encode(), None, "larger than"),
        ("not-utf8", b"\xff\xfe" + good.encode(), s.did, "not JSON"),
    ]


@pytest.mark.parametrize("case", range(10), ids=["truncated", "sig-not-a-string", "no-payload",
                                                 "signatures-not-a-list", "sig-not-base64", "huge-sig",
                                                 "keyid-with-newline", "deeply-nested", "oversized", "not-utf8"])
def test_malformed_envelope_is_one_line_never_a_traceback(case: int, signed: Signed, home: Path, cli) -> None:
    name, data, signer, names = _malformed(signed)[case]
    _write(signed, home, data)
    path = str(signed.envelope_path(home))

    res = cli("verify", str(signed.bom), "--integrity", "--json")
    assert res.code == 1, (name, res.out, res.err)
    _no_traceback(res.out, res.err)
    report = json.loads(res.out)
    assert report["signature"] == "invalid" and report["signers"] == []
    (bad,) = report["bad_signatures"]
    assert bad["signer"] == signer, (name, bad)
    assert names in bad["reason"] and "\n" not in bad["reason"], (name, bad)
    if "base64" not in names:  # an unreadable file is named, with its BOM
        assert path in bad["reason"] and str(signed.bom) in bad["reason"], bad

    shown = cli("bom", "show", str(signed.bom))
    assert shown.code == 0, (name, shown.err)
    _no_traceback(shown.out, shown.err)
    (row,) = [line for line in shown.out.splitlines() if line.startswith("signature-invalid")]
    assert names in row

    page = cli("lineage", str(signed.bom), "-f", "html")
    assert page.code == 0, (name, page.err)
    _no_traceback(page.out, page.err)
    assert "signature-invalid" in page.out


# -- structural mutation: never a traceback, never read as unsigned ---------------------------------
_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40),
                    st.lists(st.integers(), max_size=3),
                    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
                    st.just("A" * 5000))


@st.composite
def _mutations(draw: st.DrawFn) -> list[tuple[str, list[Any], Any]]:
    """A few edits, each (kind, path into the envelope, new value)."""
    paths = [["payloadType"], ["payload"], ["signatures"], ["signatures", 0], ["signatures", 0, "keyid"],
             ["signatures", 0, "sig"], ["extra"], ["signatures", 0, "extra"]]
    edits = st.tuples(st.sampled_from(["delete", "set", "duplicate"]), st.sampled_from(paths), _VALUES)
    return draw(st.lists(edits, min_size=1, max_size=3))


def _apply(envelope: dict[str, Any], edits: list[tuple[str, list[Any], Any]]) -> Any:
    doc: Any = copy.deepcopy(envelope)
    for kind, path, value in edits:
        parent = doc
        for step in path[:-1]:
            try:
                parent = parent[step]
            except (KeyError, IndexError, TypeError):
                parent = None
                break
        if not isinstance(parent, (dict, list)):
            continue
        last = path[-1]
        try:
            if kind == "delete":
                del parent[last]
            elif kind == "set":
                parent[last] = value
            elif isinstance(parent, list):
                parent.append(copy.deepcopy(parent[last]))
            else:
                parent[last] = [parent.get(last), parent.get(last)]
        except (KeyError, IndexError, TypeError):
            continue
    return doc


@pytest.fixture(scope="module")
def mutation_home(signed: Signed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("sga-mutations") / "home"
    shutil.copytree(signed.home, home)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CATS_HOME", str(home))
        yield home


@settings(max_examples=150, deadline=None)
@given(edits=_mutations(), cut=st.one_of(st.none(), st.integers(min_value=0, max_value=400)))
def test_mutated_envelope_is_invalid_or_still_genuine(signed: Signed, mutation_home: Path,
                                                      edits: list[tuple[str, list[Any], Any]], cut: int | None) -> None:
    from rich.console import Console

    from cats.cli.verify import print_report

    original = signed.envelope()
    mutated = _apply(original, edits)
    text = json.dumps(mutated)
    if cut is not None:
        text = text[:cut]
    _write(signed, mutation_home, text)
    report = verify(LocalStore(mutation_home / "blocks"), signed.bom, integrity=True, trusted={signed.did})

    out = io.StringIO()
    print_report(report, out=Console(file=out, emoji=False, width=1 << 12))  # the human report renders too
    assert report.signature != "unsigned" and not (report.verified and not report.signers)
    if report.verified:  # only edits that leave the genuine signature standing and add nothing false
        assert report.signers and set(report.signers) == {signed.did} and report.bad_signatures == []
    else:
        assert report.signature == "invalid" and report.bad_signatures
        assert {p.reason for p in report.problems} == {"signature-invalid"}
        assert all("\n" not in b.reason and b.reason for b in report.bad_signatures)
        assert "signature-invalid" in out.getvalue()


def test_signatures_check_is_the_same_verdict_in_process(signed: Signed, home: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The API the CLI stands on: Signatures.check and the report agree, for the genuine envelope."""
    monkeypatch.setenv("CATS_HOME", str(home))
    assert Signatures().check(signed.bom) == ([signed.did], [])
    report = verify(LocalStore(home / "blocks"), signed.bom, integrity=True)
    assert report.verified and report.signature == "signed" and report.signers == [signed.did]
