"""Strict DAG-CBOR (IPLD codec 0x71): one canonical byte form per value, so equal data hashes equal.

Written by hand instead of wrapping a general CBOR library because DAG-CBOR is a small subset with
extra rules (tag 42 only, 64-bit floats only, length-first key order) that a general library would
need to be configured for and re-checked against anyway. Decoding enforces every rule of the spec's
strictness section, including the ones the spec lets decoders relax, because a block that decodes
must re-encode to the same bytes or its CID stops meaning anything.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from cats.cas.cid import CID
from cats.errors import CatsError, DecodeError, EncodeError

__all__ = ["MAX_DEPTH", "INT_MIN", "INT_MAX", "encode", "decode", "links", "block_links"]

# Nesting limit for both directions: deep enough for any real document, shallow enough to stay
# clear of Python's recursion limit, so hostile input and cyclic values fail with a clean error.
MAX_DEPTH = 256
# CBOR major types 0 and 1 carry a 64-bit argument, hence this range (not the int64 range).
INT_MIN = -(2**64)
INT_MAX = 2**64 - 1

_MAJOR_UINT, _MAJOR_NINT, _MAJOR_BYTES, _MAJOR_TEXT = 0x00, 0x20, 0x40, 0x60
_MAJOR_ARRAY, _MAJOR_MAP = 0x80, 0xA0
_TAG_CID = b"\xd8\x2a"  # tag 42 in its only minimal form
_FALSE, _TRUE, _NULL = 0xF4, 0xF5, 0xF6

_H8 = struct.Struct(">BB").pack
_H16 = struct.Struct(">BH").pack
_H32 = struct.Struct(">BI").pack
_H64 = struct.Struct(">BQ").pack
_F64 = struct.Struct(">Bd").pack
_UNPACK_F64 = struct.Struct(">d").unpack_from
_UNPACK_ARG = {1: struct.Struct(">B").unpack_from, 2: struct.Struct(">H").unpack_from,
               4: struct.Struct(">I").unpack_from, 8: struct.Struct(">Q").unpack_from}
# Smallest value each argument width may carry; anything below fits a shorter header.
_MIN_FOR_WIDTH = {1: 24, 2: 0x100, 4: 0x10000, 8: 0x100000000}
_isfinite = math.isfinite
_E = TypeVar("_E")


# -- errors with a path -------------------------------------------------------------------------
class Unencodable(Exception):
    """Raised deep inside an encoder; each container on the way out adds its key or index.

    Building the path only on failure keeps the happy path free of per-item bookkeeping.
    Shared with the DAG-JSON encoder, which reports errors the same way.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str | int] = []  # innermost first

    def to_error(self) -> EncodeError:
        return EncodeError(f"{self.reason} at {render_path(self.path)}")


def render_path(innermost_first: list[str | int]) -> str:
    """`outputs[3].size` from [`size`, 3, `outputs`]; keys that are not identifiers are quoted."""
    if not innermost_first:
        return "the top level"
    out = []
    for seg in reversed(innermost_first):
        if isinstance(seg, int):
            out.append(f"[{seg}]")
        elif seg.isidentifier():
            out.append(f".{seg}" if out else seg)
        else:
            out.append(f"[{seg!r}]")
    return "".join(out)


def check_depth(depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise Unencodable(f"value nested deeper than {MAX_DEPTH} levels (is it cyclic?)")


def utf8(s: str) -> bytes:
    try:
        return s.encode()
    except UnicodeEncodeError as e:
        raise Unencodable(f"string with a lone surrogate at character {e.start}") from None


def nearest_encoder(table: dict[type, _E], value: object) -> _E:
    """For types not in the table: subclasses (IntEnum, StrEnum, OrderedDict...) encode as their
    nearest supported base; anything else is an error naming the type."""
    for base in type(value).__mro__[1:]:
        fn = table.get(base)
        if fn is not None:
            return fn
    raise Unencodable(f"cannot encode a value of type {type(value).__name__}")


# -- encoding -------------------------------------------------------------------------------------
_Encoder = Callable[[Any, bytearray, int], None]


def _head(out: bytearray, major: int, n: int) -> None:
    """Append a header with the shortest argument encoding, as the spec requires."""
    if n < 24:
        out.append(major | n)
    elif n < 0x100:
        out += _H8(major | 24, n)
    elif n < 0x10000:
        out += _H16(major | 25, n)
    elif n < 0x100000000:
        out += _H32(major | 26, n)
    else:
        out += _H64(major | 27, n)


def _enc_none(_: None, out: bytearray, depth: int) -> None:
    out.append(_NULL)


def _enc_bool(v: bool, out: bytearray, depth: int) -> None:
    out.append(_TRUE if v else _FALSE)


def _enc_int(v: int, out: bytearray, depth: int) -> None:
    if v >= 0:
        if v > INT_MAX:
            raise Unencodable(f"integer {v} is above the DAG-CBOR maximum 2**64-1")
        _head(out, _MAJOR_UINT, v)
    else:
        if v < INT_MIN:
            raise Unencodable(f"integer {v} is below the DAG-CBOR minimum -2**64")
        _head(out, _MAJOR_NINT, -1 - v)


def _enc_float(v: float, out: bytearray, depth: int) -> None:
    if not _isfinite(v):
        raise Unencodable(f"float {v} is not in the IPLD data model")
    out += _F64(0xFB, v)


def _enc_str(v: str, out: bytearray, depth: int) -> None:
    b = utf8(v)
    _head(out, _MAJOR_TEXT, len(b))
    out += b


def _enc_bytes(v: bytes | bytearray, out: bytearray, depth: int) -> None:
    _head(out, _MAJOR_BYTES, len(v))
    out += v


def _enc_memoryview(v: memoryview, out: bytearray, depth: int) -> None:
    _enc_bytes(v.tobytes(), out, depth)


def _enc_cid(v: CID, out: bytearray, depth: int) -> None:
    raw = bytes(v)
    out += _TAG_CID
    _head(out, _MAJOR_BYTES, len(raw) + 1)
    out.append(0)  # the identity-multibase prefix the spec keeps for historical reasons
    out += raw


def _enc_list(v: list[Any] | tuple[Any, ...], out: bytearray, depth: int) -> None:
    check_depth(depth)
    _head(out, _MAJOR_ARRAY, len(v))
    item = None
    try:
        for item in v:
            (_ENCODERS.get(type(item)) or nearest_encoder(_ENCODERS, item))(item, out, depth + 1)
    except Unencodable as e:
        # Encoding is deterministic, so the first element that is this object is the one that failed.
        e.path.append(next(i for i, x in enumerate(v) if x is item))
        raise


_SHORT_TEXT_HEADS = [bytes((_MAJOR_TEXT | n,)) for n in range(24)]


def _long_text(b: bytes) -> bytes:
    """Header plus UTF-8 of a map key too long for the one-byte header table."""
    out = bytearray()
    _head(out, _MAJOR_TEXT, len(b))
    return bytes(out + b)


def _enc_dict(v: dict[Any, Any], out: bytearray, depth: int) -> None:
    check_depth(depth)
    entries = []
    for k, val in v.items():
        if not isinstance(k, str):
            raise Unencodable(f"map key {k!r} ({type(k).__name__}) is not a string")
        kb = utf8(k)
        n = len(kb)
        entries.append((_SHORT_TEXT_HEADS[n] + kb if n < 24 else _long_text(kb), k, val))
    # With minimal headers, bytewise order of the encoded keys is exactly the spec's length-first
    # order. Keys are distinct, so the comparison never reaches the (unorderable) values.
    entries.sort()
    _head(out, _MAJOR_MAP, len(entries))
    val = None
    try:
        for ek, _, val in entries:
            out += ek
            (_ENCODERS.get(type(val)) or nearest_encoder(_ENCODERS, val))(val, out, depth + 1)
    except Unencodable as e:
        e.path.append(next(k for _, k, x in entries if x is val))  # first holder failed, as for lists
        raise


_ENCODERS: dict[type, _Encoder] = {
    type(None): _enc_none,
    bool: _enc_bool,
    int: _enc_int,
    float: _enc_float,
    str: _enc_str,
    bytes: _enc_bytes,
    bytearray: _enc_bytes,
    memoryview: _enc_memoryview,
    list: _enc_list,
    tuple: _enc_list,
    dict: _enc_dict,
    CID: _enc_cid,
}


def encode(obj: Any) -> bytes:
    """The canonical DAG-CBOR bytes of a data-model value; EncodeError names the offending path."""
    out = bytearray()
    try:
        (_ENCODERS.get(type(obj)) or nearest_encoder(_ENCODERS, obj))(obj, out, 0)
    except Unencodable as e:
        raise e.to_error() from None
    return bytes(out)


# -- decoding -------------------------------------------------------------------------------------
def _truncated(what: str, offset: int) -> DecodeError:
    return DecodeError(f"truncated input: {what} at byte offset {offset} runs past the end")


def _arg(data: bytes, pos: int, ib: int) -> tuple[int, int]:
    """Read the argument of the header at pos; return it and the offset after the header."""
    info = ib & 0x1F
    if info < 24:
        return info, pos + 1
    if info > 27:
        if info == 31:
            raise DecodeError(f"indefinite-length item at byte offset {pos} is not allowed in DAG-CBOR")
        raise DecodeError(f"reserved additional information {info} at byte offset {pos}")
    width = 1 << (info - 24)
    end = pos + 1 + width
    if end > len(data):
        raise _truncated("header", pos)
    (n,) = _UNPACK_ARG[width](data, pos + 1)
    if n < _MIN_FOR_WIDTH[width]:
        raise DecodeError(f"non-minimal encoding at byte offset {pos}: {n} fits a shorter header")
    return n, end


def _simple(data: bytes, pos: int, info: int) -> tuple[Any, int]:
    """Major type 7: only false, true, null and finite 64-bit floats are in DAG-CBOR."""
    if info == 20:
        return False, pos + 1
    if info == 21:
        return True, pos + 1
    if info == 22:
        return None, pos + 1
    if info == 27:
        if pos + 9 > len(data):
            raise _truncated("float", pos)
        (v,) = _UNPACK_F64(data, pos + 1)
        if not _isfinite(v):
            raise DecodeError(f"float {v} at byte offset {pos} is not allowed: NaN and Infinity are not data")
        return v, pos + 9
    if info in (25, 26):
        bits = 16 if info == 25 else 32
        raise DecodeError(f"{bits}-bit float at byte offset {pos}; DAG-CBOR floats must be 64-bit")
    if info == 23:
        raise DecodeError(f"undefined at byte offset {pos} is not allowed")
    if info == 31:
        raise DecodeError(f"unexpected break at byte offset {pos}; indefinite-length items are not allowed")
    raise DecodeError(f"simple value (additional information {info}) at byte offset {pos} is not allowed")


def _item(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    """Decode the data item at pos; return it and the offset after it."""
    try:
        ib = data[pos]
    except IndexError:
        raise DecodeError(f"truncated input: expected a data item at byte offset {pos}") from None
    if ib < 24:  # the commonest item, a small unsigned integer
        return ib, pos + 1
    major = ib >> 5
    if major == 7:
        return _simple(data, pos, ib & 0x1F)
    n, p = _arg(data, pos, ib)
    if major == 0:
        return n, p
    if major == 1:
        return -1 - n, p
    if major == 3 or major == 2:
        end = p + n
        if end > len(data):
            raise _truncated(f"{n}-byte string", pos)
        if major == 2:
            return data[p:end], end
        try:
            return data[p:end].decode(), end
        except UnicodeDecodeError as e:
            raise DecodeError(f"invalid UTF-8 in text string at byte offset {p + e.start}") from None
    if major == 6:
        if n != 42:
            raise DecodeError(f"tag {n} at byte offset {pos} is not allowed; DAG-CBOR only has tag 42 (CID)")
        return _link(data, p, pos)
    if depth >= MAX_DEPTH:
        raise DecodeError(f"nesting deeper than {MAX_DEPTH} levels at byte offset {pos}")
    if major == 4:
        if n > len(data) - p:  # every element takes at least one byte
            raise _truncated(f"array of {n} items", pos)
        out = []
        for _ in range(n):
            v, p = _item(data, p, depth + 1)
            out.append(v)
        return out, p
    return _map(data, p, pos, n, depth)


def _map(data: bytes, p: int, pos: int, n: int, depth: int) -> tuple[dict[str, Any], int]:
    if n > (len(data) - p) // 2:  # every entry takes at least two bytes
        raise _truncated(f"map of {n} entries", pos)
    out: dict[str, Any] = {}
    prev = b""  # no key's encoding is empty, so the first key always sorts after this
    prev_key = ""
    for _ in range(n):
        kpos = p
        if p < len(data) and data[p] >> 5 != 3:
            raise DecodeError(f"map key at byte offset {p} is not a string (major type {data[p] >> 5})")
        key, p = _item(data, p, depth)
        raw = data[kpos:p]
        # With minimal headers, bytewise order of the encoded keys is exactly length-first order.
        if raw <= prev:
            if raw == prev:
                raise DecodeError(f"duplicate map key {key!r} at byte offset {kpos}")
            raise DecodeError(f"map key {key!r} at byte offset {kpos} is out of order: it must sort after "
                              f"{prev_key!r} (keys sort by length, then bytewise)")
        prev, prev_key = raw, key
        out[key], p = _item(data, p, depth + 1)
    return out, p


def _link(data: bytes, p: int, tag_pos: int) -> tuple[CID, int]:
    if p >= len(data) or data[p] >> 5 != 2:
        raise DecodeError(f"tag 42 at byte offset {tag_pos} must wrap a byte string")
    raw, end = _item(data, p, 0)
    if raw[:1] != b"\x00":
        raise DecodeError(f"CID at byte offset {p} lacks the 0x00 multibase prefix")
    try:
        return CID.from_bytes(raw[1:]), end
    except CatsError as e:
        raise DecodeError(f"invalid CID in tag 42 at byte offset {p}: {e}") from None


def decode(data: bytes | bytearray | memoryview) -> Any:
    """Decode one DAG-CBOR block, rejecting anything that would not re-encode to the same bytes."""
    buf = bytes(data)
    value, end = _item(buf, 0, 0)
    if end != len(buf):
        raise DecodeError(f"{len(buf) - end} trailing bytes after the top-level item at byte offset {end}")
    return value


# -- links --------------------------------------------------------------------------------------
def links(obj: Any) -> Iterator[CID]:
    """Every CID inside a data-model value, depth-first in document order (maps in their own order,
    which for decoded maps is the canonical key order)."""
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, CID):
            yield x
        elif isinstance(x, dict):
            stack.extend(reversed(x.values()))
        elif isinstance(x, (list, tuple)):
            stack.extend(reversed(x))


def block_links(data: bytes | bytearray | memoryview) -> list[CID]:
    """The links of an encoded block, e.g. to walk a DAG without keeping the decoded values."""
    return list(links(decode(data)))
