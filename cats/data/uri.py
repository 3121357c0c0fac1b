"""Splitting `scheme://authority/path` once, strictly, so every resolver sees the same parts.

No percent-decoding here: what a path means is the scheme's business (file:// decodes, s3:// and
mem:// keys are literal, http:// passes the text to the server unchanged).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cats.errors import MalformedURI

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class URI:
    """A parsed data URI: the original text, its scheme (lower case), authority and path ('' or '/...')."""

    text: str
    scheme: str
    authority: str
    path: str


def parse(uri: object) -> URI:
    """Parse `scheme://authority/path`; anything else raises MalformedURI naming the text."""
    if not isinstance(uri, str) or not uri:
        raise MalformedURI(f"a data URI must be a non-empty string like scheme://..., not {uri!r}")
    if _CONTROL.search(uri):
        raise MalformedURI(f"URI {uri!r} contains control characters", uri)
    scheme, sep, rest = uri.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        raise MalformedURI(f"{uri!r} is not a URI: expected scheme://... (e.g. s3://bucket/key)", uri)
    authority, slash, path = rest.partition("/")
    return URI(uri, scheme.lower(), authority, slash + path)


def split_key(uri: str, what: str) -> tuple[str, str]:
    """(authority, key) of `scheme://authority/key` where both are required (`what` names them for errors)."""
    parts = parse(uri)
    key = parts.path[1:]
    if not parts.authority or not key:
        raise MalformedURI(f"{uri!r} is malformed: expected {parts.scheme}://{what}", uri)
    return parts.authority, key
