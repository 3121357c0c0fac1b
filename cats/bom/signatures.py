"""Signatures on BOMs: DSSE envelopes over the BOM's CID, kept beside the BOM, never inside it.

The BOM's CID stays what it is however many parties sign; each signature is over DSSE's
pre-authentication encoding of (payload type, the CID's text), so it cannot be taken for a
signature over anything else, and verifying one needs only the envelope and the signer's DID.

    envelope = sign(Identity.load(), bom_cid)              # or countersign: sign(other, bom_cid, envelope)
    envelope.signers()                                     # the DIDs whose signatures verify
    Signatures().add(envelope)                             # CATS_HOME/signatures/<cid>.json, merged
    signers, bad = Signatures().check(bom_cid)             # what holds for this BOM, and what does not and why

A kept signature that does not hold is evidence of tampering, never the same as no signature: `check`
names each one with its claimed signer and the reason, and an envelope that cannot even be read is an
EnvelopeError naming the file and the field.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cats.cas.cid import CID
from cats.config import home
from cats.errors import CatsError, EnvelopeError
from cats.identity import Identity, public_key, verify

PAYLOAD_TYPE = "application/vnd.cats.bom-cid"
# A kept envelope is ~250 bytes a signature: this allows thousands and keeps a planted file from filling memory
MAX_ENVELOPE = 1 << 20
_SIGNATURE_BYTES = 64  # Ed25519
# A key id or signature is short printable ASCII: longer, or holding spaces or control characters, is malformed
_TOKEN = r"^[\x21-\x7e]+$"
_TOKEN_MAX = 128
_KEYID = re.compile(r'"keyid"\s*:\s*"([\x21\x23-\x5b\x5d-\x7e]{1,128})"')  # what a broken envelope still claims


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what is actually signed."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


class Signature(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    keyid: str = Field(max_length=_TOKEN_MAX, pattern=_TOKEN, description="the signer's did:key")
    sig: str = Field(max_length=_TOKEN_MAX, pattern=_TOKEN,
                     description="base64 Ed25519 signature over the PAE of (payloadType, payload)")


class BadSignature(BaseModel):
    """A signature kept for a BOM that does not hold: the signer it claims (None when the envelope is
    too broken to name one) and why it fails."""

    signer: str | None
    reason: str


class Envelope(BaseModel):
    """A DSSE envelope (field names as DSSE spells them): over a BOM CID's text, or any payloadType's bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    payloadType: str = Field(default=PAYLOAD_TYPE, max_length=_TOKEN_MAX)  # DSSE's own field names
    payload: str = Field(description="base64 of the BOM CID's text")
    signatures: list[Signature] = Field(default_factory=list)

    @classmethod
    def parse(cls, raw: object, where: str) -> Envelope:
        """An envelope from JSON text (or already decoded JSON); anything else is an EnvelopeError
        starting with `where` and naming the first field at fault."""
        data = raw
        if isinstance(raw, (bytes, str)):
            try:
                data = json.loads(raw)
            except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, or nesting too deep to decode
                text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
                raise EnvelopeError(f"{where}: not JSON ({str(e).splitlines()[0][:200]})",
                                    list(dict.fromkeys(_KEYID.findall(text)))) from None
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise EnvelopeError(f"{where}: {first_error(e)}", _claimed(data)) from None

    @property
    def bom(self) -> CID:
        if self.payloadType != PAYLOAD_TYPE:
            raise CatsError(f"envelope payloadType is {self.payloadType!r}, not {PAYLOAD_TYPE!r}")
        try:
            text = base64.b64decode(self.payload, validate=True).decode()
            cid = CID.parse(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise CatsError(f"envelope payload is not a BOM CID: {str(e).splitlines()[0][:200]}") from None
        # One spelling per BOM: signatures over one CID all sign the same bytes, so they merge into one envelope
        if text != str(cid):
            raise CatsError(f"envelope payload spells BOM {cid} as {text[:80]!r}; sign its canonical text")
        return cid

    def valid(self, signature: Signature) -> bool:
        return self._fault(signature) is None

    def signers(self) -> list[str]:
        """The DIDs whose signatures verify, in signing order (forged or malformed ones are left out)."""
        return [s.keyid for s in self.signatures if self.valid(s)]

    def check(self, bom: CID, known: Iterable[str] = ()) -> tuple[list[str], list[BadSignature]]:
        """Every signature judged as one over `bom`: the DIDs whose signatures hold, and each one that
        does not, with why. `known` DIDs (and the envelope's other signers) are tried on a signature
        its key id does not verify, to tell a swapped key id from a forged signature."""
        if not self.signatures:  # kept envelopes always hold one: all were taken out
            return [], [BadSignature(signer=None, reason="the envelope holds no signature")]
        try:
            over = self.bom
            wrong = None if over.to_v1() == bom.to_v1() else f"the payload is BOM {over}, not this one"
        except CatsError as e:
            wrong = str(e)
        candidates = [*known, *(s.keyid for s in self.signatures)]
        valid: list[str] = []
        bad: list[BadSignature] = []
        for s in self.signatures:
            reason = wrong or self._fault(s, candidates)
            if reason is None:
                valid.append(s.keyid)
            else:
                bad.append(BadSignature(signer=s.keyid, reason=reason))
        return valid, bad

    def _fault(self, signature: Signature, candidates: Iterable[str] = ()) -> str | None:
        """Why `signature` does not hold over this envelope's payload, or None when it does."""
        try:
            public_key(signature.keyid)
        except CatsError:
            return "unknown algorithm: the key id is not an Ed25519 did:key"
        try:
            raw = base64.b64decode(signature.sig, validate=True)
        except ValueError:
            return "the signature is not base64"
        try:
            message = pae(self.payloadType, base64.b64decode(self.payload, validate=True))
        except ValueError:
            return "the payload is not base64"
        if len(raw) != _SIGNATURE_BYTES:
            return f"the signature is {len(raw)} bytes, an Ed25519 signature is {_SIGNATURE_BYTES}"
        if verify(signature.keyid, message, raw):
            return None
        for other in dict.fromkeys(candidates):
            if other != signature.keyid and _holds(other, message, raw):
                return f"the key id does not match the key: the signature was made by {other}"
        return "bad signature: it does not verify under the key id's public key"


def _holds(did: str, message: bytes, raw: bytes) -> bool:
    try:
        return verify(did, message, raw)
    except CatsError:
        return False


def first_error(error: ValidationError) -> str:
    """The first field a validation error names, and what is wrong with it (never the input itself)."""
    first = error.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{where or 'the envelope'}: {first.get('msg')}{more}"


def _claimed(data: object) -> list[str]:
    """The key ids a malformed envelope still names, for a report to say whose signatures fell."""
    if not isinstance(data, dict) or not isinstance(data.get("signatures"), list):
        return []
    ids = (s.get("keyid") for s in data["signatures"] if isinstance(s, dict))
    return [k for k in ids if isinstance(k, str) and len(k) <= _TOKEN_MAX and re.fullmatch(_TOKEN, k)]


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
        """The envelope kept for `bom`, None if there is none; EnvelopeError if it cannot be read."""
        path = self._path(bom)
        where = f"signature envelope {path} of BOM {bom}"
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_ENVELOPE + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise EnvelopeError(f"{where}: unreadable ({e.strerror})") from None
        if len(raw) > MAX_ENVELOPE:
            raise EnvelopeError(f"{where}: larger than {MAX_ENVELOPE:,} bytes")
        return Envelope.parse(raw, where)

    def check(self, bom: CID, known: Iterable[str] = ()) -> tuple[list[str], list[BadSignature]]:
        """The DIDs whose signatures over `bom` hold, and every kept one that does not, with why (an
        unreadable envelope fails for each signer it still names, or for nobody in particular)."""
        try:
            envelope = self.get(bom)
        except EnvelopeError as e:
            signers: list[str | None] = [*e.claimed] or [None]
            return [], [BadSignature(signer=s, reason=str(e)) for s in signers]
        return envelope.check(bom, known) if envelope is not None else ([], [])

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
