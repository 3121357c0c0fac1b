"""The peers a node trusts: DIDs (with a name and, optionally, the URL of their node) in `CATS_HOME/trust.json`.

Trusted peers may write to this node (push blocks and BOMs, submit Orders) and, on a private
node, read from it. The file is rewritten atomically, so a crash never leaves half a trust list.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, TypeAdapter

from cats.config import home
from cats.errors import CatsError
from cats.identity import public_key


class Peer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    did: str
    name: str | None = None
    url: str | None = None
    added: float


_PEERS = TypeAdapter(list[Peer])


class Trust:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or home() / "trust.json"

    def peers(self) -> list[Peer]:
        if not self.path.exists():
            return []
        try:
            return _PEERS.validate_json(self.path.read_bytes())
        except ValueError as e:
            raise CatsError(f"{self.path} is not a trust list: {str(e).splitlines()[0]}") from None

    def __contains__(self, did: object) -> bool:
        return any(p.did == did for p in self.peers())

    def get(self, did: str) -> Peer | None:
        return next((p for p in self.peers() if p.did == did), None)

    def add(self, did: str, name: str | None = None, url: str | None = None) -> Peer:
        """Trust did (replacing its name and URL if it was trusted already)."""
        public_key(did)  # a malformed DID is refused here, not when it first signs something
        peer = Peer(did=did, name=name, url=url.rstrip("/") if url else None, added=time.time())
        self._write([p for p in self.peers() if p.did != did] + [peer])
        return peer

    def rm(self, did: str) -> None:
        peers = self.peers()
        if not any(p.did == did for p in peers):
            raise CatsError(f"{did} is not trusted; `cats mesh trust ls` lists who is")
        self._write([p for p in peers if p.did != did])

    def _write(self, peers: list[Peer]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps([p.model_dump() for p in peers], indent=2))
        os.replace(tmp, self.path)
