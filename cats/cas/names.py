"""Folder entry names: bytes in a dag-pb link, `str` in Python.

dag-pb keeps a link's Name as bytes, and kubo copies a file's name bytes there as the file system
gives them, so a folder can hold names that are not UTF-8 (a latin-1 `b"caf\\xe9"`, say). CATs holds
every name as the str that UTF-8 with surrogateescape decodes from those bytes, which is what
`os.fsdecode` gives on POSIX: valid UTF-8 reads as usual, each other byte becomes a lone surrogate,
and `encode` gives back the very same bytes, so such a name round-trips from disk through the DAG
and back to disk. Symlink targets, file-system bytes too, take the same road. UTF-8 is fixed here
rather than taken from the locale, so a CID never depends on it.
"""

from __future__ import annotations

import re

from cats.errors import EncodeError, UnsafePath

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def encode(name: str) -> bytes:
    """The bytes a name is stored and hashed as. Only the str `decode` gives for some bytes is a name:
    escapes that would stand for a valid UTF-8 sequence (two strs, one byte string) are refused."""
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise EncodeError(f"name {name!r} holds a lone surrogate that stands for no byte") from None
    if raw.decode("utf-8", "surrogateescape") != name:
        raise EncodeError(f"name {name!r} escapes bytes that are valid UTF-8: it is not a name read from bytes")
    return raw


def is_text(name: str) -> bool:
    """Whether the name is UTF-8 text (it holds no escaped byte), as DAG-CBOR strings must be."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def display(name: str) -> str:
    """For people: the name as text, each byte that is not UTF-8 and each control character (a NUL,
    a newline) written as a `\\xNN` escape, so a name always prints on one line as what it is."""
    text = encode(name).decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def check(name: str, where: str, seen: set[str]) -> None:
    """Refuse a name that is not one entry of its folder once on disk: empty, `.`, `..`, holding `/` or NUL
    (it would land elsewhere than in its folder), or one `seen` already holds (two entries, one path:
    the later one would be written over, or through, the earlier). Adds the name to `seen`."""
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise UnsafePath(f"unsafe entry name '{display(name)}' in {where}")
    if name in seen:
        raise UnsafePath(f"duplicate entry name '{display(name)}' in {where}")
    seen.add(name)
