"""Signed HTTP requests between nodes: the signer's DID, the DID of the node it is meant for, a date, a
nonce and the body's digest, signed over the method and path, so a request cannot be altered,
replayed, moved to another path or taken to another node.

    headers = sign_request(me, node_did, "POST", "/blocks", body)          # the client
    signed = verify_request(headers, "POST", "/blocks", node=my_did, seen=nonces.seen)   # the server
    check = signed.body()                                                  # then, as the body streams in
    check.update(chunk); ...; check.done()

`verify_request` decides everything the headers can tell before a byte of the body is read: it raises
RequestRejected(401) for a missing or malformed header, an invalid or stale date, a request meant for
another node, a forged signature and a replay (a nonce seen within the window). The body is checked
against the signed digest as it arrives (`BodyCheck`). What the signer may do (trusted or not: 403)
is the server's business, not this module's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import time
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass

from cats.errors import CatsError
from cats.identity import Identity, verify

WINDOW_S = 300.0  # a signed request is good this long either side of the server's clock
HEADERS = ("x-cats-key", "x-cats-node", "x-cats-date", "x-cats-nonce", "x-cats-digest", "x-cats-signature")
_DATE = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")  # seconds since the epoch: finite, no sign, exponent or NaN
_NONCE = re.compile(r"[0-9a-f]{16,64}")
_DIGEST = re.compile(r"sha-256=[A-Za-z0-9+/]{43}=")


class RequestRejected(CatsError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _digest(sha256: hashlib._Hash) -> str:
    return "sha-256=" + base64.b64encode(sha256.digest()).decode()


def _message(method: str, path: str, node: str, date: str, nonce: str, digest: str, did: str) -> bytes:
    return "\n".join(["cats-request-v2", method.upper(), path, node, date, nonce, digest, did]).encode()


def sign_request(identity: Identity, node: str, method: str, path: str, body: bytes = b"") -> dict[str, str]:
    """Headers that sign this request for the node whose DID is `node` (path with its query string, as
    that node will see it)."""
    date, nonce, digest = f"{time.time():.3f}", secrets.token_hex(16), _digest(hashlib.sha256(body))
    signature = identity.sign(_message(method, path, node, date, nonce, digest, identity.did))
    return {"X-Cats-Key": identity.did, "X-Cats-Node": node, "X-Cats-Date": date, "X-Cats-Nonce": nonce,
            "X-Cats-Digest": digest, "X-Cats-Signature": base64.b64encode(signature).decode()}


class BodyCheck:
    """The body's SHA-256 as it streams in; `done()` refuses (401) a body that is not the one signed."""

    def __init__(self, digest: str) -> None:
        self.digest = digest
        self._sha256 = hashlib.sha256()

    def update(self, chunk: bytes) -> None:
        self._sha256.update(chunk)

    def done(self) -> None:
        if _digest(self._sha256) != self.digest:
            raise RequestRejected(401, "the body does not match X-Cats-Digest")


@dataclass(frozen=True)
class Signed:
    """A request whose headers check out: who signed it, and the digest its body must have."""

    did: str
    digest: str

    def body(self) -> BodyCheck:
        return BodyCheck(self.digest)


def verify_request(headers: Mapping[str, str], method: str, path: str, *, node: str,
                   seen: Callable[[str, float], bool], trusted: Container[str] | None = None,
                   now: float | None = None, window_s: float = WINDOW_S) -> Signed:
    """Who signed this request for `node` (this server's DID); RequestRejected(401, why) if it is
    unsigned, malformed, stale, meant for another node, forged or replayed, and RequestRejected(403)
    if `trusted` is given and the signer is not in it.

    `seen(nonce, expires)` records a nonce and says whether it was recorded before (the server keeps
    them until `expires`, after which the date check alone refuses the request). Trust is decided after
    the signature (a forger learns nothing of the trust list) and before the nonce is recorded (anyone can
    make a did:key: an untrusted one must not cost the server a row).
    """
    lower = {k.lower(): v for k, v in headers.items()}
    missing = [h for h in HEADERS if h not in lower]
    if missing:
        raise RequestRejected(401, f"unsigned request: missing {', '.join(missing)}")
    did, target, date, nonce, digest = (lower[h] for h in HEADERS[:5])
    if not _DATE.fullmatch(date):
        raise RequestRejected(401, f"invalid X-Cats-Date {date[:40]!r}: not a time in seconds since the epoch "
                                   "(as 1700000000.123)")
    signed_at = float(date)
    now = time.time() if now is None else now
    if abs(now - signed_at) > window_s:
        raise RequestRejected(401, f"request signed {now - signed_at:+.0f} s from now, outside the {window_s:.0f} s "
                                   "window (check the clocks)")
    if target != node:
        raise RequestRejected(401, f"request signed for node {target[:80]!r}, not this node ({node}): a signed request "
                                   "is good only at the node it was made for")
    if not _NONCE.fullmatch(nonce):
        raise RequestRejected(401, "malformed X-Cats-Nonce: 16 to 64 lowercase hex digits expected")
    if not _DIGEST.fullmatch(digest):
        raise RequestRejected(401, "malformed X-Cats-Digest: sha-256=<base64 of 32 bytes> expected")
    try:
        signature = base64.b64decode(lower["x-cats-signature"], validate=True)
        valid = verify(did, _message(method, path, node, date, nonce, digest, did), signature)
    except (CatsError, binascii.Error, ValueError) as e:
        raise RequestRejected(401, f"bad signature: {str(e)[:200]}") from None
    if not valid:
        raise RequestRejected(401, f"the signature is not {did}'s over {method.upper()} {path[:200]}")
    if trusted is not None and did not in trusted:
        raise RequestRejected(403, f"{did} is not trusted by this node (its operator adds it with "
                                   f"`cats mesh trust add {did}`)")
    if seen(nonce, signed_at + window_s):
        raise RequestRejected(401, "replayed request: this nonce was used already")
    return Signed(did, digest)
