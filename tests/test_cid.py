"""CIDs, multibase, multihash and varints, checked against js-multiformats where it can speak."""

from __future__ import annotations

import hashlib
import random

import jsref
import pytest

from cats.cas import multibase, multihash, varint
from cats.cas.cid import CID, DAG_CBOR, DAG_JSON, DAG_PB, RAW
from cats.errors import DecodeError, InvalidCID, UnknownCodec

EMPTY_DIR_V0 = "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"
EMPTY_DIR_V1 = "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"


def test_v0_and_v1_forms_of_one_block() -> None:
    v0 = CID.parse(EMPTY_DIR_V0)
    assert (v0.version, v0.codec) == (0, DAG_PB)
    assert str(v0.to_v1()) == EMPTY_DIR_V1
    assert v0.to_v1().to_v0() == v0
    assert v0 != v0.to_v1()  # different CIDs, same multihash
    assert v0.multihash == v0.to_v1().multihash
    assert bytes(v0) == v0.multihash  # v0's binary form is its bare multihash


@pytest.mark.parametrize("base", multibase.NAMES)
def test_every_multibase_parses_back(base: str) -> None:
    cid = CID.hash(b"hello", DAG_CBOR)
    text = cid.encode(base)
    assert CID.parse(text) == cid
    assert str(CID.parse(text)) == str(cid)  # canonical output is base32 whatever came in


def test_v0_refuses_other_bases_and_v0_multibase_form() -> None:
    v0 = CID.parse(EMPTY_DIR_V0)
    with pytest.raises(InvalidCID, match="base58btc"):
        v0.encode("base32")
    with pytest.raises(InvalidCID):
        CID.parse("z" + EMPTY_DIR_V0)  # a multibase-prefixed v0 is not a valid CID


def test_hash_functions() -> None:
    data = b"content"
    sha = CID.hash(data, RAW)
    assert sha.digest == hashlib.sha256(data).digest()
    assert sha.hashfn == multihash.SHA2_256
    b3 = CID.hash(b"", RAW, hashfn=multihash.BLAKE3)
    # BLAKE3 of the empty input, from the BLAKE3 reference test vectors
    assert b3.digest.hex() == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    assert b3.multihash[:2] == bytes([0x1E, 0x20])
    assert b3.verify(b"") and not b3.verify(b"x")
    assert CID.parse(str(b3)) == b3
    with pytest.raises(InvalidCID, match="sha2-256"):
        CID(0, DAG_PB, b3.multihash)


@pytest.mark.parametrize("text, fragment", [
    ("", "empty"),
    ("bafy!!!", "base32"),
    ("xabc", "multibase prefix"),
    ("Qm" + "1" * 44, "CID"),
    ("bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyk", "malformed CID"),  # truncated digest
    (multibase.encode(b"\x02\x55\x12\x20" + bytes(32)), "version 2"),
    (multibase.encode(b"\x01\x55\x12\x20" + bytes(33)), "trailing"),
])
def test_malformed_cids_are_refused_with_the_text(text: str, fragment: str) -> None:
    with pytest.raises(InvalidCID) as err:
        CID.parse(text)
    assert fragment.lower() in str(err.value).lower()
    assert repr(text) in str(err.value) or not text


def test_unknown_codecs_parse_but_have_no_name() -> None:
    git_raw = CID(1, 0x78, multihash.digest(b"x"))
    assert CID.parse(str(git_raw)) == git_raw
    assert git_raw.codec_name == "0x78"
    with pytest.raises(UnknownCodec):
        multihash.code_of("md5")


def test_cid_is_immutable_hashable_and_picklable() -> None:
    import pickle

    cid = CID.hash(b"a")
    with pytest.raises(AttributeError):
        cid.codec = DAG_JSON  # type: ignore[misc]
    assert {cid: 1}[CID.parse(str(cid))] == 1
    assert pickle.loads(pickle.dumps(cid)) == cid


@pytest.mark.parametrize("n", [0, 1, 127, 128, 255, 300, 16383, 16384, 2**31, 2**63 - 1])
def test_varint_round_trip(n: int) -> None:
    raw = varint.encode(n)
    assert varint.decode(raw) == (n, len(raw))
    assert varint.decode(b"\xff" + raw, 1) == (n, len(raw) + 1)


@pytest.mark.parametrize("raw, message", [
    (b"\x80", "truncated"),
    (b"\x81\x00", "minimally"),
    (b"\xff" * 10, "9 bytes"),
])
def test_varint_rejects(raw: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        varint.decode(raw)


def test_agrees_with_js_multiformats() -> None:
    jsref.require()
    rng = random.Random(3)
    samples = [CID.parse(EMPTY_DIR_V0)]
    for codec in (RAW, DAG_PB, DAG_CBOR, DAG_JSON):
        samples.append(CID.hash(rng.randbytes(rng.randrange(200)), codec))
    for cid in samples:
        for text in {str(cid), cid.encode("base58btc") if cid.version else str(cid)}:
            info = jsref.cid_info(text)
            assert info["version"] == cid.version
            assert info["codec_code"] == cid.codec
            assert bytes.fromhex(info["multihash_hex"]) == cid.multihash
            assert info["base32"] == str(cid.to_v1())
            assert info["v0"] == (str(cid.to_v0()) if cid.codec == DAG_PB else None)
