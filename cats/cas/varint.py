"""Unsigned LEB128 varints as used by multiformats (CIDs, multihash, CAR sections)."""

from __future__ import annotations

from typing import BinaryIO

from cats.errors import DecodeError

# The multiformats spec caps varints at 9 bytes (63 bits).
MAX_LEN = 9


def encode(n: int) -> bytes:
    if n < 0:
        raise ValueError(f"varint must be non-negative, got {n}")
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def decode(buf: bytes | memoryview, offset: int = 0) -> tuple[int, int]:
    """Return (value, offset after the varint); rejects truncated and non-minimal encodings."""
    found = decode_prefix(buf, offset)
    if found is None:
        raise DecodeError("truncated varint")
    return found


def decode_prefix(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int] | None:
    """Like decode, but None when buf ends inside the varint: a stream read in pieces may complete it."""
    n = shift = 0
    for i in range(offset, min(len(buf), offset + MAX_LEN)):
        b = buf[i]
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            if b == 0 and i > offset:
                raise DecodeError("varint is not minimally encoded")
            return n, i + 1
        shift += 7
    if len(buf) - offset >= MAX_LEN:
        raise DecodeError("varint longer than 9 bytes")
    return None


def read(stream: BinaryIO) -> int | None:
    """Read one varint from a stream, a byte at a time; None at a clean end of stream."""
    buf = bytearray()
    while c := stream.read(1):
        buf += c
        found = decode_prefix(buf)
        if found is not None:
            return found[0]
    if buf:
        raise DecodeError("truncated varint")
    return None
