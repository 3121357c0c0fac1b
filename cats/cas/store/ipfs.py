"""A block store in an IPFS daemon, spoken to over its kubo RPC API (`/api/v0/...`).

Select it with `CATS_IPFS_API` (`http://127.0.0.1:5001` or the multiaddr `/ip4/127.0.0.1/tcp/5001`)
or the store URL `ipfs+http://host:port` (`ipfs+https://...` for TLS).

The calls are plain HTTP POSTs with httpx rather than `ipfshttpclient`: its `connect()` refuses
current daemons by their version, and its `block.put` sends only the deprecated `format` option,
never kubo's `cid-codec`, so the codec of the CID the daemon computes could not be chosen the
modern way. (js-ipfs in turn knows only `format`: `put` falls back to it when the daemon answers
with another codec than asked for.)

A daemon keys blocks by multihash, so `__iter__` gives each block's CID as the daemon reports it
(kubo: CIDv1 with the raw codec), and `has`/`get`/`delete` find a block under any codec of its
multihash.

Pins and gc (`PinningStore`): CATs' pins are recursive pins in the daemon, and CATs' gc is the
daemon's `repo/gc`, which keeps what the daemon pins (CATs' and anyone else's) and removes the rest.
It spares no block by age, unlike CATs' own gc: a DAG an Order is still writing is unpinned until
its BOM is, so run it when no Order writes to the daemon. What js-ipfs 0.66 does here:
- `pin/add` of a DAG with a missing block waits for the network (it ignores `offline`), for ever
  unless given a `timeout`, then answers "request timed out" without naming the block; kubo fails at
  once. So `pin` passes a `timeout` shorter than this client's (the daemon gives up and pins
  nothing), and `Pins.add` walks the DAG first, which names the missing block.
- It answers CIDs in base58btc (`zdpu…`) and keys pins by multihash: pinning the CIDv1 of a pinned
  CIDv0 replaces that pin, and unpinning either removes it. `pin/rm` of an unpinned CID is an HTTP 500
  "... is not pinned".
- `repo/gc` reports removed blocks as raw CIDv1s, and its errors only with `stream-errors=true`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx

from cats.cas import multihash
from cats.cas.cid import CID
from cats.cas.store import PinningStore, missing
from cats.errors import CatsError, IntegrityError

# How long the daemon may look for a block before saying it has none. With `offline=true` kubo
# looks in its own blockstore only and answers at once; js-ipfs ignores that option and waits for
# the network even when started --offline, so for it this timeout is what "missing" costs.
LOOKUP_TIMEOUT = "1s"
_NOT_FOUND = re.compile(r"not found|no such|does not exist|could not find|timed? ?out|deadline", re.I)
_NOT_PINNED = re.compile(r"not pinned", re.I)
# How much longer this client waits than the daemon is told to: the daemon gives up and answers first.
_MARGIN = 5.0


def api_url(address: str) -> str:
    """`http://host:port` from a URL, an `ipfs+http(s)://` store URL or a multiaddr."""
    address = address.strip()
    if address.startswith("/"):
        parts = address.strip("/").split("/")
        if len(parts) >= 4 and parts[0] in ("ip4", "ip6", "dns", "dns4", "dns6") and parts[2] == "tcp":
            host = f"[{parts[1]}]" if parts[0] == "ip6" else parts[1]
            scheme = "https" if "https" in parts[4:] or "tls" in parts[4:] else "http"
            return f"{scheme}://{host}:{parts[3]}"
        raise CatsError(f"cannot read IPFS API multiaddr {address!r} (expected /ip4/HOST/tcp/PORT)")
    if address.startswith("ipfs+"):
        address = address[len("ipfs+"):]
    if "://" not in address:
        address = "http://" + address
    url = urlsplit(address)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise CatsError(f"cannot read IPFS API address {address!r} (expected http://HOST:PORT)")
    return f"{url.scheme}://{url.netloc}"


class IPFSStore(PinningStore):
    def __init__(self, api: str, timeout: float = 60.0) -> None:
        self.api = api_url(api)
        self.timeout = timeout
        self._client = httpx.Client(base_url=self.api + "/api/v0", timeout=timeout)
        self._legacy_format = False  # True once the daemon turns out to ignore `cid-codec`

    def __repr__(self) -> str:
        return f"IPFSStore({self.api!r})"

    @property
    def url(self) -> str:
        return f"ipfs+{self.api}"

    def close(self) -> None:
        self._client.close()

    # -- the RPC call ---------------------------------------------------------------------
    def _call(self, command: str, params: dict[str, str] | list[tuple[str, str]] | None = None,
              **kwargs: object) -> httpx.Response:
        try:
            return self._client.post("/" + command, params=params, **kwargs)  # type: ignore[arg-type]
        except httpx.TransportError as exc:
            raise CatsError(f"IPFS daemon at {self.api} is unreachable or not answering ({command}): {exc}") from exc

    def _failed(self, command: str, response: httpx.Response) -> CatsError:
        return CatsError(f"IPFS daemon at {self.api}: {command} failed with HTTP {response.status_code}: "
                         f"{_message(response)}")

    # -- BlockStore -----------------------------------------------------------------------
    def _has(self, cid: CID) -> bool:
        r = self._call("block/stat", {"arg": str(cid), "offline": "true", "timeout": LOOKUP_TIMEOUT})
        if r.status_code == 200:
            return True
        if r.status_code == 500 and _NOT_FOUND.search(_message(r)):
            return False
        raise self._failed("block/stat", r)

    def put(self, cid: CID, data: bytes | memoryview) -> None:
        legacy = self._legacy_format
        got = self._put(cid, bytes(data), legacy)
        if got.codec != cid.codec and got.multihash == cid.multihash and not legacy:
            # The daemon ignored `cid-codec` (js-ipfs knows only the deprecated `format`): it keys
            # blocks by multihash, so the same block is stored; say it again in the daemon's words.
            self._legacy_format = True
            got = self._put(cid, bytes(data), True)
        if got.to_v1() != cid.to_v1():
            raise IntegrityError(f"IPFS daemon at {self.api} stored block {cid} as {got}, not as {cid}", cid)

    def _put(self, cid: CID, data: bytes, legacy: bool) -> CID:
        code, digest, _ = multihash.decode(cid.multihash)
        params = {"mhtype": multihash.name_of(code), "mhlen": str(len(digest)), "pin": "false"}
        if legacy:
            params.update({"format": cid.codec_name, "version": str(cid.version)})
        else:
            params["cid-codec"] = cid.codec_name
        r = self._call("block/put", params, files={"data": ("block", data, "application/octet-stream")})
        if r.status_code != 200:
            raise self._failed("block/put", r)
        try:
            return CID.parse(json.loads(r.text.splitlines()[0])["Key"])
        except (ValueError, KeyError, IndexError, CatsError) as exc:
            raise CatsError(f"IPFS daemon at {self.api}: block/put answered {r.text[:200]!r}") from exc

    def delete(self, cid: CID) -> None:
        r = self._call("block/rm", {"arg": str(cid), "force": "true"})
        if r.status_code != 200:
            raise self._failed("block/rm", r)
        for line in r.text.splitlines():  # {"Hash": ..., "Error": ...} per block; absent is fine
            error = json.loads(line).get("Error") if line.strip() else None
            if error and not _NOT_FOUND.search(error):
                raise CatsError(f"IPFS daemon at {self.api}: block/rm {cid}: {error}")

    def __iter__(self) -> Iterator[CID]:
        r = self._call("refs/local")
        if r.status_code != 200:
            raise self._failed("refs/local", r)
        for line in r.text.splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            if entry.get("Err"):
                raise CatsError(f"IPFS daemon at {self.api}: refs/local: {entry['Err']}")
            yield CID.parse(entry["Ref"]).to_v1()

    def _get_unverified(self, cid: CID) -> bytes:
        r = self._call("block/get", {"arg": str(cid), "offline": "true", "timeout": LOOKUP_TIMEOUT})
        if r.status_code == 200:
            return r.content
        if r.status_code == 500 and _NOT_FOUND.search(_message(r)):
            raise missing(cid)
        raise self._failed("block/get", r)

    # -- PinningStore ---------------------------------------------------------------------
    def pin(self, cid: CID) -> None:
        r = self._call("pin/add", {"arg": str(cid), "recursive": "true", "offline": "true",
                                   "timeout": f"{self.timeout:g}s"}, timeout=self.timeout + _MARGIN)
        if r.status_code != 200:
            message = _message(r)
            hint = "; every block of its DAG must be in the daemon" if _NOT_FOUND.search(message) else ""
            raise CatsError(f"IPFS daemon at {self.api}: cannot pin {cid}: {message}{hint}")

    def unpin(self, cid: CID) -> bool:
        r = self._call("pin/rm", {"arg": str(cid)})
        if r.status_code == 200:
            return True
        if r.status_code == 500 and _NOT_PINNED.search(_message(r)):
            return False
        raise self._failed("pin/rm", r)

    def pins(self) -> list[CID]:
        r = self._call("pin/ls", {"type": "recursive"})
        if r.status_code != 200:
            raise self._failed("pin/ls", r)
        return sorted(CID.parse(key) for key in json.loads(r.text)["Keys"])

    def collect(self) -> list[CID]:
        r = self._call("repo/gc", {"stream-errors": "true"})
        if r.status_code != 200:
            raise self._failed("repo/gc", r)
        removed, errors = [], []
        for line in filter(str.strip, r.text.splitlines()):
            entry = json.loads(line)
            if entry.get("Error"):
                errors.append(entry["Error"])
            else:
                removed.append(CID.parse(entry["Key"]["/"]).to_v1())
        if errors:
            raise CatsError(f"IPFS daemon at {self.api}: repo/gc removed {len(removed)} blocks, then failed: "
                            + "; ".join(errors[:3]))
        return removed


def _message(response: httpx.Response) -> str:
    try:
        return str(json.loads(response.text).get("Message", response.text))
    except (ValueError, AttributeError):
        return response.text[:500]
