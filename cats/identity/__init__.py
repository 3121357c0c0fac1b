"""Who a CAT Node is: an Ed25519 key pair in `CATS_HOME/identity/`, named as a `did:key`.

    me = Identity.load()                  # created (mode 0600) on first use
    me.did                                # did:key:z6Mk…
    verify(me.did, message, me.sign(message))

A did:key carries its public key (multicodec ed25519-pub, 0xed 0x01, then the 32 key bytes, in
base58btc after a `z`), so checking a signature needs only the DID: no key server, no registry.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cats.cas.multibase import b58decode, b58encode
from cats.config import home
from cats.errors import CatsError

if TYPE_CHECKING:  # cryptography is imported where a key is made, read or checked: every Factory process imports
    # this module, and a run whose BOM already exists (or a worker) signs nothing
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = ["Identity", "public_key", "verify"]

_ED25519_PUB = b"\xed\x01"  # multicodec ed25519-pub as a varint
_PREFIX = "did:key:z"


class Identity:
    """This node's signing key; `did` names it to everyone else."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        from cryptography.hazmat.primitives import serialization

        self._key = key
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.did = _PREFIX + b58encode(_ED25519_PUB + raw)

    @classmethod
    def load(cls, folder: Path | None = None) -> Identity:
        """The key in `folder` (default CATS_HOME/identity), made on first use; a key others can read is refused."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        folder = folder or home() / "identity"
        path = folder / "ed25519.pem"
        if not path.exists():
            cls._create(path)
        if path.stat().st_mode & 0o077:
            raise CatsError(f"{path} is readable by others (mode {path.stat().st_mode & 0o777:o}); "
                            f"chmod 600 it or remove it to make a new identity")
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except ValueError as e:
            raise CatsError(f"{path} is not a PEM private key: {e}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise CatsError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
        return cls(key)

    @staticmethod
    def _create(path: Path) -> None:
        """Write a new key atomically, mode 0600 from the start; a concurrent creator's key wins if first."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        path.parent.mkdir(parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption())
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # never replaces a key another process made meanwhile
        finally:
            tmp.unlink(missing_ok=True)

    def sign(self, message: bytes) -> bytes:
        """A 64-byte Ed25519 signature."""
        return self._key.sign(message)


def public_key(did: str) -> Ed25519PublicKey:
    """The Ed25519 key a did:key names; CatsError for anything else."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not isinstance(did, str) or not did.startswith(_PREFIX):
        raise CatsError(f"{did!r} is not a did:key (expected did:key:z6Mk…)")
    try:
        raw = b58decode(did[len(_PREFIX):])
    except Exception:
        raise CatsError(f"{did!r} is not a did:key: its key is not base58btc") from None
    if len(raw) != 34 or raw[:2] != _ED25519_PUB:
        raise CatsError(f"{did!r} is not an Ed25519 did:key (ed25519-pub, 32 bytes)")
    return Ed25519PublicKey.from_public_bytes(raw[2:])


def verify(did: str, message: bytes, signature: bytes) -> bool:
    """Whether `signature` is did's signature over message (a malformed DID raises CatsError)."""
    from cryptography.exceptions import InvalidSignature

    try:
        public_key(did).verify(signature, message)
        return True
    except InvalidSignature:
        return False
