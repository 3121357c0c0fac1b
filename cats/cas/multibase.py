"""Multibase: the one-character prefix that says how a CID string is encoded.

Written out by hand rather than through base64/binascii alone because multibase wants unpadded
lower-case base32 and base58btc, which the standard library lacks.

Decoding is strict: a string is accepted only when it is exactly the encoding of its bytes in the
base its prefix names. The rfc4648 bases (base16, base32, base64) leave unused bits in their last
character, and the standard library decoders also take either letter case, `=` padding or (for hex)
spaces; each of those writes the same bytes as another string. Refusing all but the canonical
string keeps one text per CID, so a mistyped character can never silently name the same, or
another, object through a second spelling.
"""

from __future__ import annotations

import base64
import binascii

from cats.errors import InvalidCID, UnknownCodec

B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
B36_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_INDEX = {alphabet: {c: i for i, c in enumerate(alphabet)} for alphabet in (B58_ALPHABET, B36_ALPHABET)}


def _radix_encode(data: bytes, alphabet: str) -> str:
    """Big-number encoding (base58btc, base36): leading zero bytes become the alphabet's zero digit."""
    zeros = len(data) - len(data.lstrip(b"\0"))
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, len(alphabet))
        out.append(alphabet[r])
    return alphabet[0] * zeros + "".join(reversed(out))


def _radix_decode(text: str, alphabet: str) -> bytes:
    """The inverse of _radix_encode, and only of it: each leading zero digit is one zero byte and
    the rest is the number in its fewest bytes, so every string over the alphabet has one decoding
    that encodes back to that very string."""
    index = _INDEX[alphabet]
    zeros = len(text) - len(text.lstrip(alphabet[0]))
    n = 0
    for c in text:
        try:
            n = n * len(alphabet) + index[c]
        except KeyError:
            raise InvalidCID(f"invalid character {c!r}") from None
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body


def b58encode(data: bytes) -> str:
    return _radix_encode(data, B58_ALPHABET)


def b58decode(text: str) -> bytes:
    return _radix_decode(text, B58_ALPHABET)


def _b32encode(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def _b32decode(text: str) -> bytes:
    return base64.b32decode(text + "=" * (-len(text) % 8), casefold=True)


def _b64decode(text: str, altchars: bytes | None) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=altchars, validate=True)


# prefix -> (name, encode, decode); a decoder may accept more than the canonical text, `decode` checks
_BASES = {
    "z": ("base58btc", b58encode, b58decode),
    "b": ("base32", _b32encode, _b32decode),
    "B": ("base32upper", lambda d: _b32encode(d).upper(), _b32decode),
    "k": ("base36", lambda d: _radix_encode(d, B36_ALPHABET), lambda t: _radix_decode(t.lower(), B36_ALPHABET)),
    "K": ("base36upper", lambda d: _radix_encode(d, B36_ALPHABET).upper(),
          lambda t: _radix_decode(t.lower(), B36_ALPHABET)),
    "f": ("base16", lambda d: d.hex(), lambda t: base64.b16decode(t, casefold=True)),
    "F": ("base16upper", lambda d: d.hex().upper(), lambda t: base64.b16decode(t, casefold=True)),
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
    """Return (base name, bytes) for a multibase string, refusing any but the canonical text of its bytes."""
    if not text:
        raise InvalidCID("empty multibase string")
    try:
        name, enc, dec = _BASES[text[0]]
    except KeyError:
        raise UnknownCodec(f"unknown multibase prefix {text[0]!r}") from None
    body = text[1:]
    try:
        data = dec(body)
    except (ValueError, binascii.Error) as e:
        raise InvalidCID(f"invalid {name} text: {e}") from None
    canonical = enc(data)
    if body != canonical:
        raise InvalidCID(f"not the canonical {name} encoding of its bytes ({_hint(body, canonical, name)})")
    return name, data


def _hint(body: str, canonical: str, name: str) -> str:
    """Why a string that decodes is still refused, in the words a user can act on."""
    if body.lower() == canonical.lower():
        return f"{name} is written in {'upper' if name.endswith('upper') else 'lower'} case"
    if len(body) == len(canonical) and body[:-1] == canonical[:-1]:
        return "did you mistype the last character?"
    return "multibase writes no '=' padding and no characters beyond the canonical ones"
