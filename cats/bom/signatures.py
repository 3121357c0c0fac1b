"""Signatures on BOMs: DSSE envelopes over the BOM's CID, kept beside the BOM, never inside it.

The BOM's CID stays what it is however many parties sign; each signature is over DSSE's
pre-authentication encoding of (payload type, the CID's text), so it cannot be taken for a
signature over anything else, and verifying one needs only the envelope and the signer's DID.

    envelope = sign(Identity.load(), bom_cid)              # or countersign: sign(other, bom_cid, envelope)
    envelope.signers()                                     # the DIDs whose signatures verify
    Signatures().add(envelope)                             # CATS_HOME/signatures/<cid>.json, merged
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from cats.cas.cid import CID
from cats.config import home
from cats.errors import CatsError
from cats.identity import Identity, verify

PAYLOAD_TYPE = "application/vnd.cats.bom-cid"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what is actually signed."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


class Signature(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    keyid: str = Field(description="the signer's did:key")
    sig: str = Field(description="base64 Ed25519 signature over the PAE of (payloadType, payload)")


class Envelope(BaseModel):
    """A DSSE envelope (field names as DSSE spells them): over a BOM CID's text, or any payloadType's bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    payloadType: str = PAYLOAD_TYPE  # noqa: N815 - DSSE's own field names
    payload: str = Field(description="base64 of the BOM CID's text")
    signatures: list[Signature] = Field(default_factory=list)

    @property
    def bom(self) -> CID:
        if self.payloadType != PAYLOAD_TYPE:
            raise CatsError(f"envelope payloadType is {self.payloadType!r}, not {PAYLOAD_TYPE!r}")
        try:
            return CID.parse(base64.b64decode(self.payload, validate=True).decode())
        except (ValueError, UnicodeDecodeError) as e:
            raise CatsError(f"envelope payload is not a BOM CID: {e}") from None

    def valid(self, signature: Signature) -> bool:
        try:
            raw = base64.b64decode(signature.sig, validate=True)
            return verify(signature.keyid, pae(self.payloadType, base64.b64decode(self.payload)), raw)
        except (CatsError, ValueError):
            return False

    def signers(self) -> list[str]:
        """The DIDs whose signatures verify, in signing order (forged or malformed ones are left out)."""
        return [s.keyid for s in self.signatures if self.valid(s)]


def sign(identity: Identity, bom: CID, envelope: Envelope | None = None) -> Envelope:
    """An envelope over `bom` with identity's signature added (a countersignature if `envelope` is given)."""
    payload = str(bom).encode()
    if envelope is None:
        envelope = Envelope(payload=base64.b64encode(payload).decode())
    elif envelope.bom != bom:
        raise CatsError(f"the envelope is over {envelope.bom}, not {bom}")
    if identity.did in envelope.signers():
        return envelope
    sig = base64.b64encode(identity.sign(pae(envelope.payloadType, payload))).decode()
    return envelope.model_copy(update={"signatures": [*envelope.signatures, Signature(keyid=identity.did, sig=sig)]})


class Signatures:
    """Envelopes by BOM CID in a folder (default CATS_HOME/signatures); adding merges valid signatures."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or home() / "signatures"

    def _path(self, bom: CID) -> Path:
        return self.folder / f"{bom.to_v1()}.json"

    def get(self, bom: CID) -> Envelope | None:
        path = self._path(bom)
        if not path.exists():
            return None
        return Envelope.model_validate_json(path.read_bytes())

    def add(self, envelope: Envelope) -> Envelope:
        """Keep the envelope's valid signatures with those already kept; refuse one with none."""
        bom = envelope.bom
        fresh = [s for s in envelope.signatures if envelope.valid(s)]
        if not fresh:
            raise CatsError(f"the envelope over {bom} carries no valid signature")
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as lock:  # two signers at once must not drop each other
            fcntl.flock(lock, fcntl.LOCK_EX)
            kept = self.get(bom) or Envelope(payload=envelope.payload)
            known = {s.keyid for s in kept.signatures}
            merged = kept.model_copy(update={"signatures": [*kept.signatures,
                                                            *(s for s in fresh if s.keyid not in known)]})
            path = self._path(bom)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(merged.model_dump(), indent=1))
            os.replace(tmp, path)
        return merged
