"""Strict DAG-CBOR: spec vectors, canonical ordering, every rejection the spec's strictness section lists."""

from __future__ import annotations

import enum
import math
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cats.cas import dagcbor
from cats.cas.cid import CID, DAG_CBOR, DAG_PB, RAW
from cats.errors import DecodeError, EncodeError

# Vectors below are from the IPLD codec-fixtures repository (github.com/ipld/codec-fixtures) unless noted.
CIDV1 = CID.parse("bafkreiebzrnroamgos2adnbpgw5apo3z4iishhbdx77gldnbk57d4zdio4")
CIDV1_CBOR = "d82a5825000155122081cc5b17018674b401b42f35ba07bb79e211239c23bffe658da1577e3e646877"
CIDV0 = CID.parse("QmQg1v4o9xdT3Q14wh4S7dxZkDjyZ9ssFzFzyep1YrVJBY")
CIDV0_CBOR = "d82a582300122022ad631c69ee983095b5b8acd029ff94aff1dc6c48837878589a92b90dfea317"
KEYSORT = {"aaaaaa": 6, "aaaaab": 7, "aaaaac": 8, "aaaabb": 9, "bbbbb": 5, "cccc": 4, "ddd": 3, "ee": 2, "f": 1}
KEYSORT_CBOR = ("a96166016265650263646464036463636363046562626262620566616161616161066661616161616207"
                "66616161616163086661616161626209")

cids = st.builds(CID.hash, st.binary(max_size=8), st.sampled_from([RAW, DAG_CBOR])) | st.builds(
    lambda d: CID.hash(d, DAG_PB, 0), st.binary(max_size=8))
scalars = (st.none() | st.booleans() | st.integers(min_value=dagcbor.INT_MIN, max_value=dagcbor.INT_MAX)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text() | st.binary() | cids)
values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(), kids, max_size=5),
                      max_leaves=25)


def h(s: str) -> bytes:
    return bytes.fromhex(s)


def decode_error(hexdata: str) -> str:
    with pytest.raises(DecodeError) as info:
        dagcbor.decode(h(hexdata))
    return str(info.value)


def encode_error(value: Any) -> str:
    with pytest.raises(EncodeError) as info:
        dagcbor.encode(value)
    return str(info.value)


# -- known bytes ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "hexdata"), [
    ({"a": 1, "b": [1, 2]}, "a26161016162820102"),  # RFC 8949 appendix A
    (CIDV1, CIDV1_CBOR),
    (CIDV0, CIDV0_CBOR),
    (KEYSORT, KEYSORT_CBOR),
    ({"1": "a"}, "a161316161"),
    (b"\xa1", "41a1"),
    ("", "60"),
    ([], "80"),
    ({}, "a0"),
    (None, "f6"),
    (True, "f5"),
    (False, "f4"),
    (-1.1, "fbbff199999999999a"),
    (1e-323, "fb0000000000000002"),
    ([1, True, False, None, -1], "8501f5f4f620"),
])
def test_known_vectors(value: Any, hexdata: str) -> None:
    assert dagcbor.encode(value).hex() == hexdata
    assert dagcbor.encode(dagcbor.decode(h(hexdata))) == h(hexdata)
    assert dagcbor.decode(h(hexdata)) == value


@pytest.mark.parametrize(("n", "hexdata"), [
    (0, "00"), (23, "17"), (24, "1818"), (255, "18ff"), (256, "190100"), (65535, "19ffff"),
    (65536, "1a00010000"), (2**32 - 1, "1affffffff"), (2**32, "1b0000000100000000"),
    (2**64 - 1, "1bffffffffffffffff"), (-1, "20"), (-24, "37"), (-25, "3818"), (-256, "38ff"), (-257, "390100"),
    (-11959030306112471732, "3ba5f702b3a5f702b3"), (-(2**64), "3bffffffffffffffff"),
])
def test_integers_use_the_shortest_header(n: int, hexdata: str) -> None:
    assert dagcbor.encode(n).hex() == hexdata
    assert dagcbor.decode(h(hexdata)) == n


def test_integers_beyond_64_bits_are_rejected() -> None:
    assert "above the DAG-CBOR maximum" in encode_error(2**64)
    assert "below the DAG-CBOR minimum" in encode_error(-(2**64) - 1)


@pytest.mark.parametrize("x", [0.0, -0.0, 1.0, 0.5, 1.5, 65504.0, 1e300, 5e-324])
def test_floats_are_always_nine_bytes(x: float) -> None:
    out = dagcbor.encode(x)
    assert len(out) == 9 and out[0] == 0xFB
    back = dagcbor.decode(out)
    assert type(back) is float and back == x and math.copysign(1, back) == math.copysign(1, x)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_any_finite_float_is_nine_bytes(x: float) -> None:
    assert len(dagcbor.encode(x)) == 9


@pytest.mark.parametrize("x", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_cannot_be_encoded(x: float) -> None:
    assert "not in the IPLD data model" in encode_error(x)


def test_key_order_is_length_first() -> None:
    assert dagcbor.encode({"aa": 1, "b": 2}).hex() == "a261620262616101"
    assert list(dagcbor.decode(dagcbor.encode({"aa": 1, "b": 2, "a": 3}))) == ["a", "b", "aa"]
    # Bytewise on UTF-8 among equal lengths: "é" (c3 a9) is two bytes, so it sorts after "z" and "aa" alike.
    assert list(dagcbor.decode(dagcbor.encode({"é": 1, "zz": 2, "z": 3}))) == ["z", "zz", "é"]


def test_long_key_headers_sort_after_short_ones() -> None:
    keys = ["k" * 23, "k" * 24, "k" * 255, "k" * 256, "a" * 24]
    assert list(dagcbor.decode(dagcbor.encode(dict.fromkeys(keys, 0)))) == sorted(keys, key=lambda k: (len(k), k))


def test_container_kinds() -> None:
    assert dagcbor.encode((1, 2)) == dagcbor.encode([1, 2])
    assert dagcbor.encode(bytearray(b"ab")) == dagcbor.encode(memoryview(b"ab")) == h("426162")
    assert dagcbor.encode(memoryview(b"abcd")[::2]) == h("426163")  # non-contiguous views are copied
    assert dagcbor.encode("é") == h("62c3a9")
    assert dagcbor.encode(b"x" * 24) == h("5818") + b"x" * 24


def test_subclasses_encode_as_their_base() -> None:
    class Colour(enum.IntEnum):
        RED = 1

    assert dagcbor.encode(OrderedDict([("b", Colour.RED), ("a", 2)])) == dagcbor.encode({"a": 2, "b": 1})


# -- round trips ----------------------------------------------------------------------------------
@given(values)
def test_round_trip(value: Any) -> None:
    data = dagcbor.encode(value)
    back = dagcbor.decode(data)
    assert back == value
    assert dagcbor.encode(back) == data  # also catches int/float/bool confusion, which == hides


@given(st.dictionaries(st.text(), st.integers(0, 2**64 - 1), min_size=2))
def test_encoding_ignores_insertion_order(d: dict[str, int]) -> None:
    assert dagcbor.encode(dict(reversed(d.items()))) == dagcbor.encode(d)


@given(st.binary(max_size=64))
def test_decode_accepts_only_canonical_bytes(data: bytes) -> None:
    try:
        value = dagcbor.decode(data)
    except DecodeError:
        return
    assert dagcbor.encode(value) == data


@given(values, st.data())
def test_corrupted_blocks_are_rejected_or_still_canonical(value: Any, data: st.DataObject) -> None:
    block = bytearray(dagcbor.encode(value))
    i = data.draw(st.integers(0, len(block) - 1))
    block[i] = data.draw(st.integers(0, 255))
    try:
        decoded = dagcbor.decode(block)
    except DecodeError:
        return
    assert dagcbor.encode(decoded) == block


# -- encode errors --------------------------------------------------------------------------------
def test_encode_error_names_type_and_path() -> None:
    doc = {"outputs": [{"size": 1}, {"size": 2}, {"size": 3}, {"size": {1, 2}}]}
    assert encode_error(doc) == "cannot encode a value of type set at outputs[3].size"
    assert encode_error(object()) == "cannot encode a value of type object at the top level"
    assert encode_error({"a b": [1, complex(1, 2)]}) == "cannot encode a value of type complex at ['a b'][1]"


def test_encode_error_path_finds_the_failing_duplicate() -> None:
    bad = {1.5}
    assert encode_error([1, bad, bad]).endswith("at [1]")
    assert encode_error({"z": bad, "a": bad}).endswith("at a")


def test_map_keys_must_be_strings() -> None:
    message = encode_error({"x": {1: "one"}})
    assert "map key 1 (int) is not a string" in message and message.endswith("at x")
    assert "map key b'k' (bytes)" in encode_error({b"k": 1})


def test_lone_surrogates_cannot_be_encoded() -> None:
    assert "lone surrogate" in encode_error({"k": "a\ud800"})
    assert "lone surrogate" in encode_error({"\udfff": 1})


def test_cycles_and_deep_nesting_hit_the_depth_limit() -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    assert "nested deeper than" in encode_error(cyclic)
    deep: Any = 0
    for _ in range(dagcbor.MAX_DEPTH):
        deep = [deep]
    assert dagcbor.decode(dagcbor.encode(deep)) == deep  # exactly MAX_DEPTH levels work both ways
    assert "nested deeper than" in encode_error([deep])
    assert "nesting deeper than" in decode_error("81" * (dagcbor.MAX_DEPTH + 1) + "00")


# -- decode rejections ----------------------------------------------------------------------------
@pytest.mark.parametrize(("hexdata", "expected"), [
    ("", "expected a data item at byte offset 0"),
    ("8201", "array of 2 items at byte offset 0"),
    ("82626161", "expected a data item at byte offset 4"),
    ("6261", "2-byte string at byte offset 0 runs past the end"),
    ("1901", "header at byte offset 0 runs past the end"),
    ("fb3ff0", "float at byte offset 0 runs past the end"),
    ("a16161", "expected a data item at byte offset 3"),
    ("9bffffffffffffffff", "array of 18446744073709551615 items"),
    ("a2616101", "map of 2 entries"),
])
def test_truncated_input(hexdata: str, expected: str) -> None:
    message = decode_error(hexdata)
    assert "truncated" in message and expected in message


def test_trailing_bytes() -> None:
    assert decode_error("0102") == "1 trailing bytes after the top-level item at byte offset 1"
    assert "3 trailing bytes" in decode_error("a0f6f6f6")


@pytest.mark.parametrize("hexdata", ["9f01ff", "5f4101ff", "7f6161ff", "bf616101ff"])
def test_indefinite_lengths(hexdata: str) -> None:
    assert decode_error(hexdata) == "indefinite-length item at byte offset 0 is not allowed in DAG-CBOR"


def test_bare_break() -> None:
    assert "unexpected break at byte offset 1" in decode_error("81ff")


@pytest.mark.parametrize(("hexdata", "offset"), [
    ("1817", 0), ("190017", 0), ("1900ff", 0), ("1a0000ffff", 0), ("1b00000000ffffffff", 0),
    ("3800", 0),  # -1 with a one-byte argument
    ("58010a", 0),  # byte string length
    ("780161", 0),  # text string length
    ("8198010a", 1),  # array length, nested
    ("b801616101", 0),  # map length
    ("d9002a4100", 0),  # tag 42 spelled with two bytes
])
def test_non_minimal_encodings(hexdata: str, offset: int) -> None:
    assert f"non-minimal encoding at byte offset {offset}" in decode_error(hexdata)


@pytest.mark.parametrize(("hexdata", "kind"), [("a10101", "major type 0"), ("a1416101", "major type 2"),
                                                ("a1f601", "major type 7"), ("a1a00101", "major type 5")])
def test_map_keys_must_be_strings_on_decode(hexdata: str, kind: str) -> None:
    assert decode_error(hexdata) == f"map key at byte offset 1 is not a string ({kind})"


def test_duplicate_keys() -> None:
    # From codec-fixtures' negative fixtures: {"bar": 3, "foo": 1, "foo": 2}
    assert decode_error("a3636261720363666f6f0163666f6f02") == "duplicate map key 'foo' at byte offset 11"


@pytest.mark.parametrize(("hexdata", "key", "offset", "prev"), [
    ("a2616202616101", "a", 4, "b"),  # bytewise order broken
    ("a262626201616101", "a", 5, "bb"),  # length-first order broken: "a" is shorter than "bb"
])
def test_keys_out_of_canonical_order(hexdata: str, key: str, offset: int, prev: str) -> None:
    message = decode_error(hexdata)
    assert f"map key {key!r} at byte offset {offset} is out of order" in message
    assert f"sort after {prev!r}" in message


@pytest.mark.parametrize(("hexdata", "tag"), [("c074323031332d30332d32315432303a30343a30305a", 0),
                                              ("c24101", 2), ("d82b4100", 43), ("d9d9f700", 55799)])
def test_tags_other_than_42(hexdata: str, tag: int) -> None:
    assert decode_error(hexdata) == f"tag {tag} at byte offset 0 is not allowed; DAG-CBOR only has tag 42 (CID)"


@pytest.mark.parametrize(("hexdata", "expected"), [
    ("d82a6161", "tag 42 at byte offset 0 must wrap a byte string"),
    ("d82a", "tag 42 at byte offset 0 must wrap a byte string"),
    ("d82a40", "CID at byte offset 2 lacks the 0x00 multibase prefix"),
    ("d82a5824" + CIDV1_CBOR[10:], "CID at byte offset 2 lacks the 0x00 multibase prefix"),
    ("d82a4100", "invalid CID in tag 42 at byte offset 2"),
    ("d82a4400015512", "invalid CID in tag 42 at byte offset 2"),  # truncated multihash
    ("d82a45000201551200", "invalid CID in tag 42 at byte offset 2: unsupported CID version 2"),
    (CIDV1_CBOR[:4] + "5826" + CIDV1_CBOR[8:] + "00", "invalid CID in tag 42 at byte offset 2: 1 trailing"),
])
def test_bad_links(hexdata: str, expected: str) -> None:
    assert expected in decode_error(hexdata)


@pytest.mark.parametrize(("hexdata", "expected"), [
    ("f7", "undefined at byte offset 0 is not allowed"),
    ("f0", "simple value (additional information 16) at byte offset 0 is not allowed"),
    ("f820", "simple value (additional information 24) at byte offset 0 is not allowed"),
    ("f93c00", "16-bit float at byte offset 0; DAG-CBOR floats must be 64-bit"),
    ("f97e00", "16-bit float"),  # a half-precision NaN is rejected for its width first
    ("fa3f800000", "32-bit float at byte offset 0; DAG-CBOR floats must be 64-bit"),
    ("fb7ff8000000000000", "float nan at byte offset 0 is not allowed"),
    ("fb7ff0000000000001", "float nan at byte offset 0 is not allowed"),  # a NaN with a payload
    ("fb7ff0000000000000", "float inf at byte offset 0 is not allowed"),
    ("81fbfff0000000000000", "float -inf at byte offset 1 is not allowed"),
    ("1c", "reserved additional information 28 at byte offset 0"),
])
def test_disallowed_simple_values_and_floats(hexdata: str, expected: str) -> None:
    assert expected in decode_error(hexdata)


@pytest.mark.parametrize(("hexdata", "offset"), [("62c328", 1), ("81636162ff", 4), ("a161ff01", 2),
                                                 ("63eda080", 1)])  # the last one is an encoded surrogate
def test_invalid_utf8(hexdata: str, offset: int) -> None:
    assert decode_error(hexdata) == f"invalid UTF-8 in text string at byte offset {offset}"


def test_decode_accepts_bytes_like_input() -> None:
    assert dagcbor.decode(bytearray(h("820102"))) == dagcbor.decode(memoryview(h("820102"))) == [1, 2]


def test_decoded_types() -> None:
    value = dagcbor.decode(dagcbor.encode({"b": b"x", "l": [CIDV1], "f": 1.0, "i": 1, "t": True}))
    assert [type(value[k]) for k in ("b", "l", "f", "i", "t")] == [bytes, list, float, int, bool]
    assert type(value["l"][0]) is CID


# -- links ----------------------------------------------------------------------------------------
def test_links_depth_first_in_order() -> None:
    other = CID.hash(b"other", DAG_CBOR)
    doc = {"z": CIDV0, "a": [CIDV1, {"n": other}], "m": "not a link", "b": b"\x00\x01"}
    block = dagcbor.encode(doc)
    assert dagcbor.block_links(block) == [CIDV1, other, CIDV0]  # canonical key order: a, z
    assert list(dagcbor.links(doc)) == [CIDV0, CIDV1, other]  # an unencoded dict walks in its own order
    assert list(dagcbor.links(CIDV1)) == [CIDV1]
    assert dagcbor.block_links(dagcbor.encode({"x": [1, "y", None]})) == []


@given(values)
def test_links_finds_every_cid(value: Any) -> None:
    found = dagcbor.block_links(dagcbor.encode(value))
    assert sorted(found) == sorted(dagcbor.links(value))  # same CIDs; only map order may differ
    assert list(dagcbor.links([value, value])) == [*dagcbor.links(value), *dagcbor.links(value)]
