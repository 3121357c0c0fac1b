"""Signed HTTP requests between nodes: the signer's DID, a date, a nonce and the body's digest,
signed over the method and path, so a request cannot be altered, replayed or moved elsewhere.

    headers = sign_request(me, "POST", "/blocks", body)        # the client
    did = verify_request(headers, "POST", "/blocks", body, seen=nonces.seen)   # the server

`verify_request` raises RequestRejected(401) for a missing, malformed, stale, altered or forged
signature and for a replay (a nonce seen within the window). What the signer may do (trusted or
not: 403) is the server's business, not this module's.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Callable, Mapping

from cats.errors import CatsError
from cats.identity import Identity, verify

WINDOW_S = 300.0  # a signed request is good this long either side of the server's clock
HEADERS = ("x-cats-key", "x-cats-date", "x-cats-nonce", "x-cats-digest", "x-cats-signature")


class RequestRejected(CatsError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _digest(body: bytes) -> str:
    return "sha-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()


def _message(method: str, path: str, date: str, nonce: str, digest: str, did: str) -> bytes:
    return "\n".join(["cats-request-v1", method.upper(), path, date, nonce, digest, did]).encode()


def sign_request(identity: Identity, method: str, path: str, body: bytes = b"") -> dict[str, str]:
    """Headers that sign this request (path with its query string, as the server will see it)."""
    date, nonce, digest = f"{time.time():.3f}", secrets.token_hex(16), _digest(body)
    signature = identity.sign(_message(method, path, date, nonce, digest, identity.did))
    return {"X-Cats-Key": identity.did, "X-Cats-Date": date, "X-Cats-Nonce": nonce, "X-Cats-Digest": digest,
            "X-Cats-Signature": base64.b64encode(signature).decode()}


def verify_request(headers: Mapping[str, str], method: str, path: str, body: bytes, *,
                   seen: Callable[[str, float], bool], now: float | None = None,
                   window_s: float = WINDOW_S) -> str:
    """The DID that signed this request; RequestRejected(401, why) if it is unsigned, stale, altered or replayed.

    `seen(nonce, expires)` records a nonce and says whether it was recorded before (the server keeps
    them until `expires`, after which the date check alone refuses the request).
    """
    lower = {k.lower(): v for k, v in headers.items()}
    missing = [h for h in HEADERS if h not in lower]
    if missing:
        raise RequestRejected(401, f"unsigned request: missing {', '.join(missing)}")
    did, date, nonce, digest = (lower[h] for h in HEADERS[:4])
    now = time.time() if now is None else now
    try:
        signed_at = float(date)
    except ValueError:
        raise RequestRejected(401, f"malformed X-Cats-Date {date!r}") from None
    if abs(now - signed_at) > window_s:
        raise RequestRejected(401, f"request signed {now - signed_at:+.0f} s from now, outside the {window_s:.0f} s "
                                   "window (check the clocks)")
    if digest != _digest(body):
        raise RequestRejected(401, "the body does not match X-Cats-Digest")
    try:
        signature = base64.b64decode(lower["x-cats-signature"], validate=True)
        valid = verify(did, _message(method, path, date, nonce, digest, did), signature)
    except (CatsError, ValueError) as e:
        raise RequestRejected(401, f"bad signature: {e}") from None
    if not valid:
        raise RequestRejected(401, f"the signature is not {did}'s over {method.upper()} {path}")
    if seen(nonce, signed_at + window_s):
        raise RequestRejected(401, "replayed request: this nonce was used already")
    return did
