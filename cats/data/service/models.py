"""The Data Service's wire format, shared by the app (which validates it) and the client (which parses it).

Every error the service answers has the same body, `ErrorBody` (`{"detail": "..."}`), validation
errors included, so one client path reads them all.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

PRINCIPAL = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"
MAX_SIGN_TTL_S = 24 * 3600.0
MAX_DATASET_TTL_S = 10 * 365 * 24 * 3600.0
MAX_REPLICAS = 16

Principal = Annotated[str, Field(pattern=PRINCIPAL, description="a principal's name")]
URIText = Annotated[str, Field(min_length=1, max_length=4096, description="a data URI: scheme://...")]


class Checksums(BaseModel):
    """Digests of the bytes and the source's version token; further digests (e.g. `blake3`) are allowed as strings."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, str] = Field(init=False)

    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the whole object")
    version: str | None = Field(None, description="the source's version when registered (ETag, mtime-size, CID)")


class Chunk(BaseModel):
    """One independently readable piece: a Parquet row group, the data block of a .npy file, ..."""

    offset: int = Field(ge=0, description="first byte")
    size: int = Field(ge=0, description="bytes")
    rows: int | None = Field(None, ge=0, description="rows in it, for tabular data")


class Chunking(BaseModel):
    kind: str = Field(description="e.g. row-groups (Parquet), contiguous (.npy), fixed (equal byte ranges)")
    chunks: list[Chunk] = Field(default_factory=list)


class Meta(BaseModel):
    """What a reader needs to plan range reads without fetching first. Every field is optional."""

    model_config = ConfigDict(extra="forbid")

    format: str | None = Field(None, description="parquet, npy, arrow, zip, gzip, ... (by magic bytes)")
    size: int | None = Field(None, ge=0, description="bytes")
    dtype: str | None = Field(None, description="element type, e.g. float64 (numpy names)")
    shape: list[Annotated[int, Field(ge=0)]] | None = Field(None, description="e.g. [rows, columns]")
    layout: str | None = Field(None, description="C or F (row/column-major arrays), columnar (Parquet), ...")
    columns: dict[str, str] | None = Field(None, description="column name -> Arrow type, for tables")
    partitioning: list[str] | None = Field(None, description="keys the dataset is partitioned by (year, month, ...)")
    chunking: Chunking | None = None
    checksums: Checksums | None = None
    attrs: dict[str, Any] | None = Field(None, description="free-form JSON the owner attaches")


class RegisterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    uri: URIText
    replicas: list[URIText] = Field(default_factory=list, max_length=MAX_REPLICAS,
                                    description="further URIs holding the same bytes")
    meta: Meta = Field(default_factory=Meta)
    ttl_s: float | None = Field(None, gt=0, le=MAX_DATASET_TTL_S,
                                description="seconds until the dataset expires (410); none: never")
    readers: list[Principal] = Field(default_factory=list, description="principals besides the owner who may read")


class Dataset(BaseModel):
    handle: str
    uri: str = Field(description="the first URI (replica 0)")
    uris: list[str] = Field(description="every URI, replica index = position")
    meta: Meta
    owner: str
    readers: list[str]
    created_at: datetime
    expires_at: datetime | None


class SignRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    handle: str
    ttl_s: float = Field(3600.0, gt=0, le=MAX_SIGN_TTL_S, description="seconds the signed URL stays valid")
    replica: int = Field(0, ge=0, lt=MAX_REPLICAS + 1, description="which of the dataset's URIs it reads")


class Signed(BaseModel):
    handle: str
    signed_uri: str = Field(description="GET it with the bearer token of `sub`")
    sub: str = Field(description="the principal the signature is bound to (the requester)")
    expires_at: datetime


class LogEntry(BaseModel):
    time: datetime
    principal: str | None = Field(description="none: the request carried no valid token")
    handle: str | None
    action: str = Field(description="register, get, sign, fetch, log, delete")
    status: int = Field(description="the HTTP status answered")
    bytes: int = Field(description="bytes of dataset content sent")
    detail: str | None = Field(description="why it was refused or failed")


class AccessLog(BaseModel):
    handle: str
    entries: list[LogEntry]


class ErrorBody(BaseModel):
    detail: str = Field(description="what went wrong, naming the handle or URI")


class Health(BaseModel):
    status: str
    version: str
