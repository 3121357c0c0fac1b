"""CIDs, multibase, multihash and varints, checked against js-multiformats where it can speak."""

from __future__ import annotations

import hashlib
import random

import jsref
import pytest
from hypothesis import given
from hypothesis import strategies as st

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


# -- one text per CID: only the canonical encoding of its bytes in a base parses -------------------------
# The rfc4648 bases written out independently of cats: (alphabet, bits a character carries).
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
RFC4648 = {
    "base16": ("0123456789abcdef", 4), "base16upper": ("0123456789ABCDEF", 4),
    "base32": ("abcdefghijklmnopqrstuvwxyz234567", 5), "base32upper": ("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 5),
    "base64": (_B64 + "+/", 6), "base64url": (_B64 + "-_", 6),
}
# Real CIDs of several codecs and hash functions; the dag-json one is 37 bytes, the others 36 (and 34
# for the CIDv0), so together they leave 0, 2 or 4 unused bits in the last character.
REAL_CIDS = [
    EMPTY_DIR_V0, EMPTY_DIR_V1,
    "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",  # raw, the empty file
    str(CID.hash(b"cats", DAG_CBOR)), str(CID.hash(b'{"a":1}', DAG_JSON)),
    str(CID.hash(b"blake3 leaf", RAW, hashfn=multihash.BLAKE3)),
]


def padding_variants(text: str, base: str) -> list[str]:
    """Every other text of the same bytes that differs only in the unused low bits of the last character."""
    alphabet, bits = RFC4648[base]
    body = text[1:]
    unused = len(body) * bits - len(multibase.decode(text)[1]) * 8
    value = alphabet.index(body[-1])
    assert value & ((1 << unused) - 1) == 0  # the canonical text leaves them zero
    return [text[:-1] + alphabet[value | k] for k in range(1, 1 << unused)]


def test_real_cids_refuse_padding_bits_in_the_last_character() -> None:
    refused = 0
    for text in REAL_CIDS:
        cid = CID.parse(text)
        for base in RFC4648 if cid.version else ():
            for other in padding_variants(cid.encode(base), base):
                with pytest.raises(InvalidCID) as err:
                    CID.parse(other)
                message = str(err.value)
                assert repr(other) in message
                assert f"not the canonical {base} encoding" in message
                assert "mistype the last character" in message
                refused += 1
    # 36 bytes leave 2 unused bits in base32 (3 variants, in both cases), none in base16 and base64;
    # the 37-byte dag-json CID leaves 4 in base32 and in base64 (15 variants each, in both forms)
    assert refused == 4 * 3 * 2 + 15 * 2 * 2


@pytest.mark.parametrize("text", REAL_CIDS)
def test_every_canonical_text_parses_and_round_trips(text: str) -> None:
    cid = CID.parse(text)
    assert str(cid) == text
    assert CID.parse(bytes(cid)) == cid
    for base in multibase.NAMES if cid.version else ("base58btc",):
        written = cid.encode(base)
        assert CID.parse(written) == cid
        assert CID.parse(written).encode(base) == written


_V1 = CID.parse(EMPTY_DIR_V1)
_HEX = _V1.encode("base16")[1:]


@pytest.mark.parametrize("text, base, hint", [
    ("b" + EMPTY_DIR_V1[1:].upper(), "base32", "lower case"),
    ("b" + EMPTY_DIR_V1[1:5].upper() + EMPTY_DIR_V1[5:], "base32", "lower case"),
    ("B" + EMPTY_DIR_V1[1:], "base32upper", "upper case"),
    ("f" + _HEX.upper(), "base16", "lower case"),
    ("F" + _HEX, "base16upper", "upper case"),
    ("k" + _V1.encode("base36")[1:].upper(), "base36", "lower case"),
    ("K" + _V1.encode("base36")[1:], "base36upper", "upper case"),
    (EMPTY_DIR_V1 + "======", "base32", "padding"),
    (CID.hash(b"x", DAG_JSON).encode("base64") + "==", "base64", "padding"),
    (CID.hash(b"x", DAG_JSON).encode("base64url") + "==", "base64url", "padding"),
])
def test_other_case_and_padding_are_refused(text: str, base: str, hint: str) -> None:
    with pytest.raises(InvalidCID) as err:
        CID.parse(text)
    assert f"not the canonical {base} encoding" in str(err.value)
    assert hint in str(err.value)
    assert repr(text) in str(err.value)


@pytest.mark.parametrize("text", [
    " " + EMPTY_DIR_V1, EMPTY_DIR_V1 + "\n", EMPTY_DIR_V0 + " ", "\t" + EMPTY_DIR_V0,
    "f" + " ".join(CID.parse(EMPTY_DIR_V1).encode("base16")[1:][i:i + 2] for i in range(0, 72, 2)),
    "f" + CID.parse(EMPTY_DIR_V1).encode("base16")[1:] + " ",
])
def test_whitespace_is_refused(text: str) -> None:
    with pytest.raises(InvalidCID) as err:
        CID.parse(text)
    assert repr(text) in str(err.value)
    assert "no whitespace" in str(err.value) or "invalid base16" in str(err.value)


def test_cidv0_has_one_text_and_every_base58_text_is_canonical() -> None:
    """base58btc and base36 are big numbers: each leading zero digit is one zero byte and the rest has no
    leading zero, so no second spelling of the same bytes exists to refuse (the property test checks it)."""
    v0 = CID.parse(EMPTY_DIR_V0)
    assert multibase.b58encode(multibase.b58decode(EMPTY_DIR_V0)) == EMPTY_DIR_V0
    assert multibase.decode("z11" + EMPTY_DIR_V0)[1] == b"\0\0" + bytes(v0)  # zero digits are zero bytes
    assert multibase.decode("k00")[1] == b"\0\0"


_ALL_CHARS = "".join(sorted({c for alphabet, _ in RFC4648.values() for c in alphabet + alphabet.swapcase()}
                            | set(multibase.B58_ALPHABET) | set("= \t\nıK")))


@given(st.binary(max_size=80), st.sampled_from(multibase.NAMES))
def test_canonical_text_round_trips(data: bytes, base: str) -> None:
    text = multibase.encode(data, base)
    assert multibase.decode(text) == (base, data)


@given(st.sampled_from(multibase.NAMES), st.text(alphabet=_ALL_CHARS, max_size=60))
def test_only_the_canonical_text_decodes(base: str, body: str) -> None:
    """Any text that decodes at all is the encoding of what it decodes to: no second text names those bytes."""
    text = multibase.encode(b"", base) + body
    try:
        name, data = multibase.decode(text)
    except InvalidCID as e:
        assert "multibase" in str(e) or base in str(e) or "character" in str(e)
        return
    assert name == base
    assert multibase.encode(data, base) == text


@given(st.binary(min_size=1, max_size=80), st.sampled_from(multibase.NAMES), st.data())
def test_texts_of_the_same_bytes_but_the_canonical_are_refused(data: bytes, base: str, draw: st.DataObject) -> None:
    text = multibase.encode(data, base)
    others = {text.swapcase(), text[0] + text[1:].swapcase(), text + "=", text + "==", text + " ", " " + text,
              text[:2] + " " + text[2:]}
    if base in RFC4648:
        others.update(padding_variants(text, base))
    i = draw.draw(st.integers(1, len(text) - 1))
    others.add(text[:i] + text[i].swapcase() + text[i + 1:])
    for other in others - {text}:
        try:
            decoded = multibase.decode(other)
        except (InvalidCID, UnknownCodec):
            continue
        assert decoded != (base, data), (other, text)  # the same bytes in another base (b/B) is fine


def test_canonical_encodings_agree_with_js_multiformats() -> None:
    """The same text for the same bytes in every base; js-multiformats decodes every canonical text to the same
    bytes and refuses the padding-bit variants too. (It is more lenient than cats elsewhere: it takes either
    letter case and '=' padding, which cats refuses as second spellings.)"""
    jsref.require()
    rng = random.Random(11)
    samples = [bytes(CID.parse(t)) for t in REAL_CIDS] + [b"", b"\0", b"\0\0\1"]
    samples += [rng.randbytes(rng.randrange(1, 60)) for _ in range(40)]
    canonical = [multibase.encode(d, base) for d in samples for base in multibase.NAMES]
    variants = [v for d in samples if d for base in RFC4648 for v in padding_variants(multibase.encode(d, base), base)]
    encoded, decoded = jsref.multibase(samples, canonical + variants)
    for data, js in zip(samples, encoded, strict=True):
        assert {base: js[base] for base in multibase.NAMES} == {base: multibase.encode(data, base)
                                                                 for base in multibase.NAMES}
    assert decoded[:len(canonical)] == [multibase.decode(text)[1] for text in canonical]
    assert len(variants) > 100 and decoded[len(canonical):] == [None] * len(variants)


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
