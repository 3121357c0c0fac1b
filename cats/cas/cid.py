"""Content identifiers, v0 and v1, byte-compatible with the multiformats CID spec.

Kept small and without run-time type checks on purpose: the importer creates one CID per 256 KiB
block, so construction must stay a few microseconds.
"""

from __future__ import annotations

from functools import lru_cache

from cats.cas import multibase, multihash, varint
from cats.cas.multihash import SHA2_256
from cats.errors import CatsError, InvalidCID, UnknownCodec

RAW = 0x55
DAG_PB = 0x70
DAG_CBOR = 0x71
DAG_JSON = 0x0129
LIBP2P_KEY = 0x72

CODEC_NAMES = {RAW: "raw", DAG_PB: "dag-pb", DAG_CBOR: "dag-cbor", DAG_JSON: "dag-json", LIBP2P_KEY: "libp2p-key"}


class CID:
    """An immutable CID. `str()` gives the canonical text form, `bytes()` the binary form."""

    __slots__ = ("version", "codec", "multihash", "_bytes", "_str")

    version: int
    codec: int
    multihash: bytes
    _bytes: bytes | None  # the binary and text forms, made on first use
    _str: str | None

    def __init__(self, version: int, codec: int, mh: bytes) -> None:
        if version == 0:
            if codec != DAG_PB:
                raise InvalidCID(f"CIDv0 must be dag-pb, not {CODEC_NAMES.get(codec, hex(codec))}")
            if len(mh) != 34 or mh[0] != multihash.SHA2_256 or mh[1] != 32:
                raise InvalidCID("CIDv0 must carry a 32-byte sha2-256 multihash")
        elif version != 1:
            raise InvalidCID(f"unsupported CID version {version}")
        object.__setattr__(self, "version", version)
        object.__setattr__(self, "codec", codec)
        object.__setattr__(self, "multihash", mh)
        object.__setattr__(self, "_bytes", None)
        object.__setattr__(self, "_str", None)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("CID is immutable")

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def hash(cls, data: bytes | memoryview, codec: int = RAW, version: int = 1,
             hashfn: int = SHA2_256) -> CID:
        """The CID of a block with the given bytes."""
        return cls(version, codec, multihash.digest(data, hashfn))

    @classmethod
    def from_bytes(cls, buf: bytes | memoryview) -> CID:
        cid, end = cls.read(buf, 0)
        if end != len(buf):
            raise InvalidCID(f"{len(buf) - end} trailing bytes after CID")
        return cls_cache(cid, bytes(buf))

    @classmethod
    def read(cls, buf: bytes | memoryview, offset: int) -> tuple[CID, int]:
        """Decode a binary CID at offset; return it and the offset after it (CAR sections need this)."""
        try:
            if buf[offset] == multihash.SHA2_256 and len(buf) - offset >= 2 and buf[offset + 1] == 32:
                end = offset + 34
                if end > len(buf):
                    raise InvalidCID("truncated CIDv0")
                return cls(0, DAG_PB, bytes(buf[offset:end])), end
            if buf[offset] == 1 and buf[offset + 1] < 0x80 and buf[offset + 2] == multihash.SHA2_256 \
                    and buf[offset + 3] == 32:  # the common case, v1 + one-byte codec + sha2-256, read directly
                end = offset + 36
                if end > len(buf):
                    raise InvalidCID("truncated CID")
                return cls(1, buf[offset + 1], bytes(buf[offset + 2:end])), end
            version, i = varint.decode(buf, offset)
            if version != 1:
                raise InvalidCID(f"unsupported CID version {version}")
            codec, i = varint.decode(buf, i)
            _, _, end = multihash.decode(buf, i)
            return cls(1, codec, bytes(buf[i:end])), end
        except IndexError:
            raise InvalidCID("truncated CID") from None
        except InvalidCID:
            raise
        except CatsError as e:
            raise InvalidCID(f"malformed CID: {e}") from None

    @classmethod
    def parse(cls, text: str | bytes | CID) -> CID:
        """Parse any common text form (v0 base58btc, or v1 in any supported multibase).

        Only the canonical text of a CID in its base is accepted: no surrounding whitespace, no other
        letter case, padding or unused bits (see multibase), so one CID never has two spellings in a base.
        """
        if isinstance(text, CID):
            return text
        if isinstance(text, (bytes, bytearray, memoryview)):
            return cls.from_bytes(text)
        return _parse_text(text)

    @classmethod
    def _parse_text(cls, text: str) -> CID:
        try:
            if text != text.strip():
                raise InvalidCID("a CID has no whitespace")
            if len(text) == 46 and text.startswith("Qm"):
                cid = cls.from_bytes(multibase.b58decode(text))
            else:
                _, raw = multibase.decode(text)
                if raw[:1] == b"\x12":
                    raise InvalidCID("a CIDv0 is only valid as bare base58btc")
                cid = cls.from_bytes(raw)
        except (InvalidCID, UnknownCodec) as e:
            raise InvalidCID(f"malformed CID {text!r}: {e}") from None
        if text[0] == "b":  # base32, checked canonical: str() need not encode it again
            object.__setattr__(cid, "_str", text)
        return cid

    # -- forms ----------------------------------------------------------------------------
    def __bytes__(self) -> bytes:
        b = self._bytes
        if b is None:
            b = self.multihash if self.version == 0 else b"\x01" + varint.encode(self.codec) + self.multihash
            object.__setattr__(self, "_bytes", b)
        return b

    def __str__(self) -> str:
        s = self._str
        if s is None:
            s = multibase.b58encode(self.multihash) if self.version == 0 else multibase.encode(bytes(self))
            object.__setattr__(self, "_str", s)
        return s

    def encode(self, base: str | None = None) -> str:
        """Text form in a chosen multibase (v1 only; v0 has exactly one form)."""
        if base is None:
            return str(self)
        if self.version == 0:
            if base != "base58btc":
                raise InvalidCID("a CIDv0 can only be written in base58btc; convert with to_v1()")
            return str(self)
        return multibase.encode(bytes(self), base)

    def __repr__(self) -> str:
        return f"CID({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CID) and bytes(self) == bytes(other)

    def __hash__(self) -> int:
        return hash(bytes(self))

    def __lt__(self, other: CID) -> bool:
        return bytes(self) < bytes(other)

    def __reduce__(self) -> tuple[type[CID], tuple[int, int, bytes]]:
        return (CID, (self.version, self.codec, self.multihash))

    # -- views ----------------------------------------------------------------------------
    @property
    def codec_name(self) -> str:
        return CODEC_NAMES.get(self.codec, f"0x{self.codec:x}")

    @property
    def hashfn(self) -> int:
        return multihash.decode(self.multihash)[0]

    @property
    def digest(self) -> bytes:
        return multihash.decode(self.multihash)[1]

    def to_v1(self) -> CID:
        return self if self.version == 1 else CID(1, self.codec, self.multihash)

    def to_v0(self) -> CID:
        return self if self.version == 0 else CID(0, self.codec, self.multihash)

    def verify(self, data: bytes | memoryview) -> bool:
        """True when data hashes to this CID's multihash."""
        code = self.hashfn
        return multihash.digest(data, code) == self.multihash


# A run reads the same CIDs as text many times over (a result's CID in the run index, the record, the
# merge): CIDs are immutable, so one parse serves every later one of the same text.
_parse_text = lru_cache(maxsize=1 << 14)(CID._parse_text)


def cls_cache(cid: CID, raw: bytes) -> CID:
    """Remember the binary form we just parsed so bytes(cid) costs nothing later."""
    object.__setattr__(cid, "_bytes", raw)
    return cid
