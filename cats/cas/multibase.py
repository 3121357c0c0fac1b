"""Multibase: the one-character prefix that says how a CID string is encoded.

Written out by hand rather than through base64/binascii alone because multibase wants unpadded
lower-case base32 and base58btc, which the standard library lacks.
"""

from __future__ import annotations

import base64
import binascii

from cats.errors import InvalidCID, UnknownCodec

B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(B58_ALPHABET)}
B36_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def b58encode(data: bytes) -> str:
    zeros = len(data) - len(data.lstrip(b"\0"))
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(B58_ALPHABET[r])
    return "1" * zeros + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    zeros = len(text) - len(text.lstrip("1"))
    n = 0
    for c in text:
        try:
            n = n * 58 + _B58_INDEX[c]
        except KeyError:
            raise InvalidCID(f"invalid base58btc character {c!r}") from None
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body


def _b36encode(data: bytes) -> str:
    zeros = len(data) - len(data.lstrip(b"\0"))
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 36)
        out.append(B36_ALPHABET[r])
    return "0" * zeros + "".join(reversed(out))


def _b36decode(text: str) -> bytes:
    text = text.lower()
    zeros = len(text) - len(text.lstrip("0"))
    try:
        n = int(text, 36) if text else 0
    except ValueError:
        raise InvalidCID("invalid base36 text") from None
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body


def _b32encode(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def _b32decode(text: str) -> bytes:
    text = text.upper()
    return base64.b32decode(text + "=" * (-len(text) % 8))


def _b64decode(text: str, altchars: bytes | None) -> bytes:
    text = text.rstrip("=")
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=altchars, validate=True)


# prefix -> (name, encode, decode)
_BASES = {
    "z": ("base58btc", b58encode, b58decode),
    "b": ("base32", _b32encode, _b32decode),
    "B": ("base32upper", lambda d: _b32encode(d).upper(), _b32decode),
    "k": ("base36", _b36encode, _b36decode),
    "K": ("base36upper", lambda d: _b36encode(d).upper(), _b36decode),
    "f": ("base16", lambda d: d.hex(), bytes.fromhex),
    "F": ("base16upper", lambda d: d.hex().upper(), bytes.fromhex),
    "m": ("base64", lambda d: base64.b64encode(d).decode().rstrip("="), lambda t: _b64decode(t, None)),
    "u": ("base64url", lambda d: base64.urlsafe_b64encode(d).decode().rstrip("="), lambda t: _b64decode(t, b"-_")),
}
_BY_NAME = {name: prefix for prefix, (name, _, _) in _BASES.items()}
NAMES = tuple(_BY_NAME)


def encode(data: bytes, base: str = "base32") -> str:
    try:
        prefix = _BY_NAME[base]
    except KeyError:
        raise UnknownCodec(f"unknown multibase {base!r}; known: {', '.join(NAMES)}") from None
    return prefix + _BASES[prefix][1](data)


def decode(text: str) -> tuple[str, bytes]:
    """Return (base name, bytes) for a multibase string."""
    if not text:
        raise InvalidCID("empty multibase string")
    try:
        name, _, dec = _BASES[text[0]]
    except KeyError:
        raise UnknownCodec(f"unknown multibase prefix {text[0]!r}") from None
    try:
        return name, dec(text[1:])
    except (ValueError, binascii.Error) as e:
        raise InvalidCID(f"invalid {name} text: {e}") from None
