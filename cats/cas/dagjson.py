"""DAG-JSON (IPLD codec 0x0129): the IPLD data model as JSON, for people and tools that read text.

Links are `{"/": "<cid>"}` and bytes `{"/": {"bytes": "<base64>"}}`. Encoding is canonical (keys
sorted bytewise on UTF-8, no whitespace) so a value has one DAG-JSON block and one CID. Decoding
follows the spec in tolerating key order and whitespace, because hand-written JSON rarely has
either right; pass `strict=True` when the input must already be canonical.

Floats are written the way JavaScript prints numbers (the form the published IPLD fixtures use),
plus a `.0` on whole values so they read back as floats and integers stay integers.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable
from typing import Any

from cats.cas.cid import CID
from cats.cas.dagcbor import (
    INT_MAX,
    INT_MIN,
    Unencodable,
    check_depth,
    links,
    nearest_encoder,
    utf8,
)
from cats.errors import CatsError, DecodeError, EncodeError

__all__ = ["encode", "decode", "links"]

_isfinite = math.isfinite
_json_str: Callable[[str], str] = json.JSONEncoder(ensure_ascii=False).encode


# -- encoding -------------------------------------------------------------------------------------
def _float_text(v: float) -> str:
    """Shortest text that reads back as exactly v, laid out like ECMAScript's Number#toString."""
    if not _isfinite(v):
        raise Unencodable(f"float {v} is not in the IPLD data model")
    if v == 0.0:
        return "-0.0" if math.copysign(1.0, v) < 0 else "0.0"
    sign = "-" if v < 0 else ""
    mantissa, _, exp = repr(abs(v)).partition("e")  # repr gives the shortest round-trip digits
    whole, _, frac = mantissa.partition(".")
    all_digits = whole + frac
    digits = all_digits.lstrip("0")
    # v == 0.<digits> * 10**point
    point = len(whole) + int(exp or 0) - (len(all_digits) - len(digits))
    digits = digits.rstrip("0")
    k = len(digits)
    if k <= point <= 21:
        return f"{sign}{digits}{'0' * (point - k)}.0"
    if 0 < point <= 21:
        return f"{sign}{digits[:point]}.{digits[point:]}"
    if -6 < point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    e = point - 1
    lead = digits[0] + (f".{digits[1:]}" if k > 1 else "")
    return f"{sign}{lead}e{'+' if e > 0 else '-'}{abs(e)}"


def _enc_none(_: None, out: list[str], depth: int) -> None:
    out.append("null")


def _enc_bool(v: bool, out: list[str], depth: int) -> None:
    out.append("true" if v else "false")


def _enc_int(v: int, out: list[str], depth: int) -> None:
    if not INT_MIN <= v <= INT_MAX:
        raise Unencodable(f"integer {v} is outside the data-model range -2**64 .. 2**64-1")
    out.append(str(int(v)))  # int() so IntEnum members print as numbers


def _enc_float(v: float, out: list[str], depth: int) -> None:
    out.append(_float_text(v))


def _enc_str(v: str, out: list[str], depth: int) -> None:
    if not v.isascii():
        utf8(v)  # rejects lone surrogates, which have no UTF-8 form
    out.append(_json_str(str(v)))


def _enc_bytes(v: bytes | bytearray | memoryview, out: list[str], depth: int) -> None:
    if isinstance(v, memoryview):
        v = v.tobytes()  # base64 needs a contiguous buffer of bytes
    text = base64.b64encode(v).rstrip(b"=").decode("ascii")
    out.append(f'{{"/":{{"bytes":"{text}"}}}}')


def _enc_cid(v: CID, out: list[str], depth: int) -> None:
    out.append(f'{{"/":"{v}"}}')  # str(CID) is base32 for v1 and base58 for v0, as the spec asks


def _enc_list(v: list[Any] | tuple[Any, ...], out: list[str], depth: int) -> None:
    check_depth(depth)
    out.append("[")
    item = None
    try:
        for i, item in enumerate(v):
            if i:
                out.append(",")
            (_ENCODERS.get(type(item)) or nearest_encoder(_ENCODERS, item))(item, out, depth + 1)
    except Unencodable as e:
        # Encoding is deterministic, so the first element that is this object is the one that failed.
        e.path.append(next(i for i, x in enumerate(v) if x is item))
        raise
    out.append("]")


def _first_key(d: dict[Any, Any]) -> object:
    return min((k for k in d if isinstance(k, str)), default=None)


def _enc_dict(v: dict[Any, Any], out: list[str], depth: int) -> None:
    check_depth(depth)
    for k in v:
        if not isinstance(k, str):
            raise Unencodable(f"map key {k!r} ({type(k).__name__}) is not a string")
        if not k.isascii():
            utf8(k)
    # For valid strings, code-point order is UTF-8 byte order, so plain sorting is the spec's order.
    keys = sorted(v)
    if keys and keys[0] == "/":
        _check_reserved(v)
    out.append("{")
    key = ""
    try:
        for i, key in enumerate(keys):
            if i:
                out.append(",")
            out.append(_json_str(str(key)))
            out.append(":")
            val = v[key]
            (_ENCODERS.get(type(val)) or nearest_encoder(_ENCODERS, val))(val, out, depth + 1)
    except Unencodable as e:
        e.path.append(key)
        raise
    out.append("}")


def _check_reserved(v: dict[str, Any]) -> None:
    """A map that would read back as a link or bytes cannot be written: DAG-JSON has no escape."""
    slash = v["/"]
    if isinstance(slash, str):
        raise Unencodable('a map whose first key is "/" with a string value is reserved for links')
    if isinstance(slash, dict) and _first_key(slash) == "bytes" and isinstance(slash["bytes"], str):
        raise Unencodable('a map {"/": {"bytes": <string>, ...}} is reserved for bytes')


_Encoder = Callable[[Any, list[str], int], None]
_ENCODERS: dict[type, _Encoder] = {
    type(None): _enc_none,
    bool: _enc_bool,
    int: _enc_int,
    float: _enc_float,
    str: _enc_str,
    bytes: _enc_bytes,
    bytearray: _enc_bytes,
    memoryview: _enc_bytes,
    list: _enc_list,
    tuple: _enc_list,
    dict: _enc_dict,
    CID: _enc_cid,
}


def encode(obj: Any) -> bytes:
    """Canonical DAG-JSON bytes of a data-model value; EncodeError names the offending path."""
    out: list[str] = []
    try:
        (_ENCODERS.get(type(obj)) or nearest_encoder(_ENCODERS, obj))(obj, out, 0)
    except Unencodable as e:
        raise e.to_error() from None
    return "".join(out).encode()


# -- decoding -------------------------------------------------------------------------------------
# A \uD800-\uDFFF escape may be half of a valid pair or a lone surrogate; only then do we check.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _parse_int(text: str) -> int:
    # 2**64 has 20 digits; refusing longer text first also keeps int() away from huge inputs.
    n = int(text) if len(text) <= 21 else None
    if n is None or not INT_MIN <= n <= INT_MAX:
        raise DecodeError(f"integer {text[:40]} is outside the data-model range -2**64 .. 2**64-1")
    return n


def _parse_float(text: str) -> float:
    v = float(text)
    if not _isfinite(v):
        raise DecodeError(f"number {text[:40]} does not fit a 64-bit float")
    return v


def _parse_constant(name: str) -> float:
    raise DecodeError(f"{name} is not allowed: NaN and Infinity are not in the data model")


def _parse_link(text: str) -> CID:
    try:
        cid = CID.parse(text)
    except CatsError as e:
        raise DecodeError(f"invalid link {{\"/\": {text!r}}}: {e}") from None
    if str(cid) != text:
        raise DecodeError(f"link {text!r} must be a CIDv1 in base32 or a CIDv0 in base58 (expected {cid})")
    return cid


def _parse_bytes(text: str) -> bytes:
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as e:
        raise DecodeError(f"invalid base64 in bytes {text[:40]!r}: {e}") from None
    if base64.b64encode(raw).rstrip(b"=").decode() != text:
        raise DecodeError(f"bytes {text[:40]!r} must be unpadded standard base64 in canonical form")
    return raw


def _object(pairs: list[tuple[str, Any]]) -> Any:
    """Build a map, turning the reserved `"/"` forms into links and bytes or rejecting them."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise DecodeError(f"duplicate map key {k!r}")
            seen.add(k)
    if "/" not in obj or min(obj) != "/":
        return obj
    slash = obj["/"]
    if isinstance(slash, str):
        if len(obj) > 1:
            raise DecodeError(f'a map whose first key is "/" with a string value must be a link alone, '
                              f"but it also has {sorted(obj)[1]!r}")
        return _parse_link(slash)
    if isinstance(slash, dict) and _first_key(slash) == "bytes" and isinstance(slash["bytes"], str):
        if len(slash) > 1 or len(obj) > 1:
            raise DecodeError('a bytes form {"/": {"bytes": <string>}} must have no other keys, inner or outer')
        return _parse_bytes(slash["bytes"])
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_int=_parse_int, parse_float=_parse_float,
                            parse_constant=_parse_constant)


def decode(data: bytes | bytearray | memoryview, *, strict: bool = False) -> Any:
    """Decode a DAG-JSON block into data-model values (dict, list, str, int, float, bytes, CID...).

    With strict=True the input must also be exactly the canonical encoding of what it decodes to.
    """
    raw = bytes(data)
    try:
        text = raw.decode()
    except UnicodeDecodeError as e:
        raise DecodeError(f"invalid UTF-8 at byte offset {e.start}") from None
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as e:
        raise DecodeError(f"invalid JSON at byte offset {len(text[:e.pos].encode())}: {e.msg}") from None
    except RecursionError:
        raise DecodeError("JSON nested too deeply") from None
    if strict or _SURROGATE_ESCAPE.search(text):
        try:
            canonical = encode(value)
        except EncodeError as e:
            raise DecodeError(f"not representable in the data model: {e}") from None
        if strict and canonical != raw:
            at = next((i for i, (a, b) in enumerate(zip(raw, canonical, strict=False)) if a != b),
                      min(len(raw), len(canonical)))
            raise DecodeError(f"not canonical DAG-JSON: differs from the canonical encoding at byte offset {at}")
    return value
