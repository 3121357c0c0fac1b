"""The service's secret key, the HMAC signatures of signed URLs, and bearer tokens.

The key is 32 random bytes in `key` (mode 0600), made on first start and reused, so URLs signed
before a restart stay valid. It is written to a private temporary file and hard-linked into place,
so two services starting at once agree on one key and nobody reads a half-written one.

A signature is HMAC-SHA256(key, "handle|uri|sub|exp") in hex. Handles, principal names and the
integer expiry contain no "|", so the message splits one way only, whatever the URI holds.

Tokens are random; only their SHA-256 is stored, so the database does not give them away.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from cats.errors import CatsError

KEY_BYTES = 32


def load_key(folder: Path) -> bytes:
    """The key in `folder/key`, created on first use; refused if others may read it or it has the wrong size."""
    path = folder / "key"
    if not path.exists():
        tmp = folder / f".key-{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
                os.link(tmp, path)
        finally:
            tmp.unlink()
    mode = path.stat().st_mode
    if stat.S_IMODE(mode) & 0o077:
        raise CatsError(f"{path} is readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it")
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise CatsError(f"{path} holds {len(key)} bytes, not a {KEY_BYTES}-byte key; remove it to make a new one "
                        "(URLs signed with the old key then stop working)")
    return key


def signature(key: bytes, handle: str, uri: str, sub: str, exp: int) -> str:
    return hmac.new(key, f"{handle}|{uri}|{sub}|{exp}".encode(), hashlib.sha256).hexdigest()


def verify(key: bytes, sig: str, handle: str, uri: str, sub: str, exp: int) -> bool:
    """Whether `sig` is the signature of these fields, compared in constant time."""
    return hmac.compare_digest(signature(key, handle, uri, sub, exp).encode(), sig.lower().encode())


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
