"""Multihash: a digest tagged with the function that made it (code, length, digest)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from cats.cas import varint
from cats.errors import DecodeError, UnknownCodec

IDENTITY = 0x00
SHA2_256 = 0x12
SHA2_512 = 0x13
BLAKE3 = 0x1E

NAMES = {IDENTITY: "identity", SHA2_256: "sha2-256", SHA2_512: "sha2-512", BLAKE3: "blake3"}
CODES = {name: code for code, name in NAMES.items()}
# Prefixes for the common fixed-length digests, precomputed because every block pays for them.
_SHA256_PREFIX = bytes((SHA2_256, 32))


def _blake3(data: bytes | memoryview) -> bytes:
    try:
        from blake3 import blake3
    except ImportError:  # pragma: no cover - blake3 is a declared dependency
        raise UnknownCodec("blake3 needs the 'blake3' package") from None
    return blake3(data, max_threads=1).digest()


_DIGESTERS: dict[int, Callable[[bytes | memoryview], bytes]] = {
    SHA2_256: lambda d: hashlib.sha256(d).digest(),
    SHA2_512: lambda d: hashlib.sha512(d).digest(),
    BLAKE3: _blake3,
    IDENTITY: bytes,
}


def code_of(name: str) -> int:
    try:
        return CODES[name]
    except KeyError:
        raise UnknownCodec(f"unknown hash function {name!r}; known: {', '.join(CODES)}") from None


def digest(data: bytes | memoryview, code: int = SHA2_256) -> bytes:
    """Hash data and return the full multihash bytes."""
    if code == SHA2_256:
        return _SHA256_PREFIX + hashlib.sha256(data).digest()
    try:
        d = _DIGESTERS[code](data)
    except KeyError:
        raise UnknownCodec(f"unsupported multihash function 0x{code:x}") from None
    return varint.encode(code) + varint.encode(len(d)) + d


def wrap(code: int, raw_digest: bytes) -> bytes:
    """Multihash bytes for a digest computed elsewhere (e.g. in a worker thread)."""
    if code == SHA2_256 and len(raw_digest) == 32:
        return _SHA256_PREFIX + raw_digest
    return varint.encode(code) + varint.encode(len(raw_digest)) + raw_digest


def decode(mh: bytes | memoryview, offset: int = 0) -> tuple[int, bytes, int]:
    """Return (function code, digest, offset after the multihash)."""
    code, i = varint.decode(mh, offset)
    length, i = varint.decode(mh, i)
    end = i + length
    if end > len(mh):
        raise DecodeError(f"multihash digest truncated: {length} bytes declared, {len(mh) - i} present")
    return code, bytes(mh[i:end]), end


def name_of(code: int) -> str:
    return NAMES.get(code, f"0x{code:x}")
