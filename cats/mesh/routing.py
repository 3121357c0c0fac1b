"""Where data is, in the terms of the IPFS HTTP routing v1 API (`GET /routing/v1/providers/{cid}`).

A node names itself as a provider of what it holds, and the trusted peers it knows to hold a DAG:
those that pinned it here (they pushed it) and those it pulled it from, recorded as it happens
(`Sources`), so a query costs lookups, never a request to anyone. Records follow the spec's `peer`
schema, so IPFS tooling reads them: `ID` is the libp2p peer ID of the node's Ed25519 key (its
did:key in libp2p's terms), `Addrs` its HTTP address as a multiaddr, `Protocols`
`transport-ipfs-gateway-http` (it serves blocks and CARs as a trustless gateway); a `cats` field the
spec lets clients ignore carries the DID, the URL and, for the answering node, the bytes it holds.

`locate` is the client side: it asks each trusted peer's node about each input and adds up the
bytes each holds, for `cats mesh submit --to auto`.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cats._sqlite import connect
from cats.cas import dagpb, multibase
from cats.cas.cid import CID, DAG_PB, RAW
from cats.errors import CatsError

PROTOCOL = "transport-ipfs-gateway-http"
JSON = "application/json"
NDJSON = "application/x-ndjson"
MAX_PROVIDERS = 100  # the spec's limit for a JSON answer
_ED25519_PUB = b"\xed\x01"  # the multicodec prefix of a did:key's Ed25519 key
_SCHEMA = "CREATE TABLE IF NOT EXISTS holders (cid TEXT NOT NULL, did TEXT NOT NULL, url TEXT, time REAL NOT NULL, " \
          "PRIMARY KEY (cid, did))"


def peer_id(did: str) -> str:
    """The libp2p peer ID of an Ed25519 did:key: the identity multihash of its protobuf public key, in base58."""
    if not did.startswith("did:key:z"):
        raise CatsError(f"{did[:60]!r} is not a did:key")
    raw = multibase.b58decode(did[len("did:key:z"):])
    if raw[:2] != _ED25519_PUB or len(raw) != 34:
        raise CatsError(f"{did[:60]} is not an Ed25519 did:key")
    key = b"\x08\x01\x12\x20" + raw[2:]  # PublicKey{Type: Ed25519, Data: 32 bytes}
    return multibase.b58encode(b"\x00" + bytes([len(key)]) + key)


def multiaddr(url: str) -> str:
    """An http(s) URL as a multiaddr: http://127.0.0.1:8480 is /ip4/127.0.0.1/tcp/8480/http."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CatsError(f"{url[:80]!r} is not an http(s) URL")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        kind = "ip4" if ipaddress.ip_address(host).version == 4 else "ip6"
    except ValueError:
        kind = "dns"
    return f"/{kind}/{host}/tcp/{port}/{'tls/http' if parts.scheme == 'https' else 'http'}"


def dag_bytes(cid: CID, block: bytes) -> int:
    """The bytes of the DAG under a block as the block declares them (its links' sizes), without walking it:
    a UnixFS file or folder states them; another block counts as itself."""
    if cid.codec == DAG_PB:
        try:
            return len(block) + sum(link.tsize or 0 for link in dagpb.decode(block).links)
        except CatsError:
            return len(block)
    return len(block) if cid.codec != RAW or block else 0


def record(did: str, url: str, **cats: object) -> dict[str, object]:
    """A provider record (the spec's `peer` schema) for a node."""
    return {"Schema": "peer", "ID": peer_id(did), "Addrs": [multiaddr(url)], "Protocols": [PROTOCOL],
            "cats": {"did": did, "url": url, **cats}}


def encode(records: list[dict[str, object]], ndjson: bool) -> bytes:
    if ndjson:
        return b"".join(json.dumps(r).encode() + b"\n" for r in records)
    return json.dumps({"Providers": records[:MAX_PROVIDERS]}).encode()


class Sources:
    """Which trusted peers are known to hold which DAGs (`CATS_HOME/sources.sqlite`): those that pinned
    one here, and those one was pulled from."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, cid: CID, did: str, url: str | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = connect(self.path, _SCHEMA)
        try:
            db.execute("INSERT INTO holders VALUES (?, ?, ?, ?) ON CONFLICT(cid, did) DO UPDATE SET "
                       "url = coalesce(excluded.url, url), time = excluded.time",
                       (str(cid.to_v1()), did, url, time.time()))
        finally:
            db.close()

    def holders(self, cid: CID) -> list[tuple[str, str | None]]:
        """(did, url) of the peers known to hold cid's DAG, most recently learnt first."""
        if not self.path.exists():
            return []
        db = connect(self.path, _SCHEMA)
        try:
            rows = db.execute("SELECT did, url FROM holders WHERE cid = ? ORDER BY time DESC LIMIT ?",
                              (str(cid.to_v1()), MAX_PROVIDERS)).fetchall()
        finally:
            db.close()
        return [(str(did), None if url is None else str(url)) for did, url in rows]


# -- the client side ------------------------------------------------------------------------------------


@dataclass
class Holding:
    """What one trusted peer's node said it holds of the inputs asked about."""

    did: str
    url: str
    bytes: int = 0
    inputs: dict[str, int] = field(default_factory=dict)  # input CID -> bytes held there
    error: str | None = None  # why it could not be asked


@dataclass
class Placement:
    """The peer chosen for an Order (the one holding most of its input bytes) and why."""

    chosen: Holding
    asked: list[Holding]
    reason: str

    def summary(self) -> dict[str, object]:
        return {"url": self.chosen.url, "did": self.chosen.did, "bytes": self.chosen.bytes, "reason": self.reason,
                "asked": [{"did": h.did, "url": h.url, "bytes": h.bytes, "inputs": h.inputs, "error": h.error}
                          for h in self.asked]}


def providers(url: str, cid: CID, timeout: float = 10.0) -> list[dict[str, object]]:
    """The provider records a node answers for cid (none on 404)."""
    import httpx

    try:
        response = httpx.get(f"{url.rstrip('/')}/routing/v1/providers/{cid}", headers={"Accept": JSON},
                             timeout=timeout)
    except httpx.HTTPError as e:
        raise CatsError(f"cannot ask {url} where {cid} is: {str(e) or type(e).__name__}") from None
    if response.status_code == 404:
        return []
    if response.status_code != 200:
        raise CatsError(f"{url} answered {response.status_code} to GET /routing/v1/providers/{cid}")
    try:
        found = response.json().get("Providers") or []
    except (ValueError, AttributeError):
        raise CatsError(f"{url} answered GET /routing/v1/providers/{cid} with something that is not its JSON") \
            from None
    return [r for r in found if isinstance(r, dict)]


def holdings(inputs: Iterable[CID], peers: Iterable[tuple[str, str]]) -> list[Holding]:
    """What each peer's node (did, url) holds whole of the inputs, by what it says of itself under the DID
    it is trusted as; a node that cannot be asked has its `error`."""
    inputs = list(inputs)
    asked = []
    for did, url in peers:
        holding = Holding(did=did, url=url)
        try:
            for cid in inputs:
                for r in providers(url, cid):
                    about = r.get("cats")
                    if isinstance(about, dict) and about.get("did") == did and isinstance(about.get("bytes"), int):
                        holding.inputs[str(cid)] = about["bytes"]
            holding.bytes = sum(holding.inputs.values())
        except CatsError as e:
            holding.error = str(e)
        asked.append(holding)
    return asked


def locate(inputs: Iterable[CID], peers: Iterable[tuple[str, str]]) -> Placement:
    """Ask each peer's node (did, url) where each input is; choose the one holding the most input bytes
    (the first asked on a tie). A node counts what it says of itself, under the DID it is trusted as."""
    asked = holdings(inputs, peers)
    reachable = [h for h in asked if h.error is None]
    if not reachable:
        why = "; ".join(f"{h.url}: {h.error}" for h in asked) or "no trusted peer has a node URL " \
                                                                  "(cats mesh trust add DID --url URL)"
        raise CatsError(f"--to auto found no node to send the Order to: {why}")
    best = max(reachable, key=lambda h: h.bytes)  # max keeps the first of equals
    if best.bytes:
        held = ", ".join(f"{cid} ({n} bytes)" for cid, n in best.inputs.items())
        reason = f"it holds {best.bytes} of the input bytes ({held})"
        others = [h for h in reachable if h is not best]
        if others:
            reason += "; " + ", ".join(f"{h.url} holds {h.bytes}" for h in others)
    else:
        reason = "no trusted peer holds any input; it is the first that answered"
    return Placement(chosen=best, asked=asked, reason=reason)
