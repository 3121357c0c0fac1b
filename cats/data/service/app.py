"""The Data Service's HTTP API (FastAPI), and `serve`, which runs it on uvicorn in the foreground.

Every request authenticates with `Authorization: Bearer TOKEN`; every access, refused ones
included, becomes one row of the access log. Signed URLs (`GET /d/{handle}?replica&exp&sub&sig`)
need a valid, unexpired signature *and* the token of the principal it is bound to; they stream the
bytes of the dataset's URI through `cats.data` (one `Range: bytes=a-b` answered 206 with
Content-Range, ETag = the source's version), so the project's own http resolver reads them by range.
Reads larger than `CATS_DATA_MAX_FETCH` are refused (413); the source's errors map to
404/403/502/504 naming the URI.

Every read goes through the service's `Reach` (cats.data.reach), never a user's own: no file://
until the operator sets `CATS_DATA_ROOTS`, never `CATS_HOME`, no special network address unless
allow-listed, ipfs:// only under pinned DAGs. Refusals answer 403 naming the URI and the setting.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cats import __version__, data
from cats.data.reach import Reach
from cats.data.resolvers import Info, max_fetch
from cats.data.service import models as m
from cats.data.service import signing
from cats.data.service.db import DatasetRow, LogRow, ServiceDB
from cats.data.uri import parse
from cats.errors import (
    DataError,
    DataForbidden,
    DataNotFound,
    DataTimeout,
    DataUnavailable,
    FetchTooLarge,
)
from cats.web import json_errors

CHUNK = 1 << 20  # bytes per read from the source while streaming
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_NO_SHARED_STATE = ("mem",)  # schemes whose objects live in one process: the service could never read them
_NEEDS_AUTHORITY = ("http", "https", "s3", "ipfs")

_bearer = HTTPBearer(auto_error=False, description="a token made by `cats data token add NAME`")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]

_WHY = {
    401: "No bearer token, or one that names no principal",
    403: "Not the owner (or a reader); a forged, altered, expired or foreign signature; a source outside what "
         "the service may read (CATS_DATA_ROOTS, CATS_HOME, special addresses, unpinned CIDs); or the source refused",
    404: "No such dataset, or the source has no such object",
    410: "The dataset's TTL has passed",
    413: "The read is larger than CATS_DATA_MAX_FETCH",
    416: "The Range cannot be served",
    422: "Malformed request, malformed URI or unsupported scheme",
    502: "The source failed or kept failing",
    504: "The source did not answer in time",
}
_BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": m.ErrorBody, "description": _WHY[code]} for code in codes}


def _time(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _dataset(row: DatasetRow) -> m.Dataset:
    return m.Dataset(handle=row.handle, uri=row.uris[0], uris=row.uris, meta=m.Meta.model_validate(row.meta),
                     owner=row.owner, readers=row.readers, created_at=_time(row.created),
                     expires_at=None if row.expires is None else _time(row.expires))


class _Access:
    """One access-log entry, written when the request's handler ends, however it ends."""

    def __init__(self, db: ServiceDB, action: str, handle: str | None = None) -> None:
        self.db, self.action, self.handle = db, action, handle
        self.principal: str | None = None
        self.status, self.bytes = 200, 0

    def __enter__(self) -> _Access:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        status, detail = self.status, None
        if isinstance(error, HTTPException):
            status, detail = error.status_code, str(error.detail)
        elif error is not None:
            status, detail = 500, f"{type(error).__name__}: {error}"
        self.db.log(LogRow(time.time(), self.principal, self.handle, self.action, status,
                           self.bytes if error is None else 0, detail))


def _check_uri(uri: str, reach: Reach) -> None:
    """422 unless the URI parses and some resolver takes its scheme."""
    try:
        parts = parse(uri)
        if parts.scheme in _NO_SHARED_STATE:
            raise HTTPException(422, f"cannot register {uri}: {parts.scheme}:// lives in one process's memory, "
                                     "so the data service could never read it")
        data.resolve(uri, reach)
    except DataError as e:
        raise HTTPException(422, f"cannot register {uri}: {e}") from None
    if parts.scheme in _NEEDS_AUTHORITY and not parts.authority:
        raise HTTPException(422, f"cannot register {uri}: malformed, expected {parts.scheme}://host/...")


def _source_error(handle: str, error: DataError) -> HTTPException:
    status = 502
    for kind, code in ((FetchTooLarge, 413), (DataNotFound, 404), (DataForbidden, 403), (DataTimeout, 504),
                       (DataUnavailable, 502)):
        if isinstance(error, kind):
            status = code
            break
    return HTTPException(status, f"dataset {handle}: reading its source failed: {error}")


def _range(header: str | None, size: int, etag: dict[str, str]) -> tuple[int, int, bool]:
    """(first byte, end exclusive, partial?) for a single-range header; 416 for anything else."""
    if header is None:
        return 0, size, False

    def refuse(why: str) -> HTTPException:
        return HTTPException(416, f"Range {header!r}: {why}", headers={"Content-Range": f"bytes */{size}", **etag})

    match = _RANGE.fullmatch(header.strip())
    if not match or not any(match.groups()):
        raise refuse("only one range, as bytes=first-last, bytes=first- or bytes=-suffix, is served")
    first, last = match.groups()
    if first:
        start = int(first)
        if last and int(last) < start:
            raise refuse("the last byte comes before the first")
        end = min(int(last) + 1, size) if last else size
    else:
        if int(last) == 0:
            raise refuse("an empty suffix")
        start, end = max(0, size - int(last)), size
    if start >= size:
        raise refuse(f"starts at or past the end ({size} bytes)")
    return start, end, True


def create_app(folder: Path, reach: Reach | None = None) -> FastAPI:
    """The application over the state in `folder` (`CATS_HOME/dataservice/` normally), reading sources
    within `reach` (default: `Reach.service()`, configured by the environment)."""
    reach = reach or Reach.service()
    db = ServiceDB(folder / "state.sqlite")
    key = signing.load_key(folder)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        yield
        db.close()

    app = FastAPI(title="CATs Data Service", version=__version__, lifespan=lifespan,
                  description="Registers datasets by URI with metadata, answers who may read them, and signs "
                              "expiring URLs bound to one principal that stream the bytes by range. "
                              "It executes no compute.")
    app.state.db = db

    json_errors(app)

    def who(access: _Access, creds: HTTPAuthorizationCredentials | None) -> str:
        challenge = {"WWW-Authenticate": "Bearer"}
        if creds is None:
            raise HTTPException(401, "missing bearer token: send Authorization: Bearer TOKEN "
                                     "(`cats data token add NAME` makes one)", headers=challenge)
        name = db.principal(signing.token_digest(creds.credentials))
        if name is None:
            raise HTTPException(401, "unknown bearer token", headers=challenge)
        access.principal = name
        return name

    def found(handle: str) -> DatasetRow:
        row = db.dataset(handle)
        if row is None:
            raise HTTPException(404, f"no dataset {handle}")
        return row

    def live(row: DatasetRow) -> DatasetRow:
        if row.expires is not None and time.time() >= row.expires:
            raise HTTPException(410, f"dataset {row.handle} expired at {_time(row.expires).isoformat()}")
        return row

    def readable(handle: str, principal: str) -> DatasetRow:
        row = found(handle)
        if not row.may_read(principal):
            raise HTTPException(403, f"dataset {handle}: {principal} is neither its owner nor a reader")
        return live(row)

    def owned(handle: str, principal: str) -> DatasetRow:
        row = found(handle)
        if row.owner != principal:
            raise HTTPException(403, f"dataset {handle}: only its owner {row.owner} may do this, not {principal}")
        return row

    @app.get("/health", response_model=m.Health, summary="Liveness; needs no token")
    def health() -> m.Health:
        return m.Health(status="ok", version=__version__)

    @app.post("/data/register", response_model=m.Dataset, status_code=201, responses=_errors(401, 422),
              summary="Register a dataset by URI (and replicas); the requester owns it")
    def register(body: m.RegisterRequest, creds: Credentials) -> m.Dataset:
        with _Access(db, "register") as access:
            owner = who(access, creds)
            uris = [body.uri, *body.replicas]
            for uri in uris:
                _check_uri(uri, reach)
            readers = sorted(set(body.readers) - {owner})
            unknown = sorted(set(readers) - db.known(readers))
            if unknown:
                raise HTTPException(422, f"cannot register {body.uri}: unknown readers {', '.join(unknown)}")
            handle = secrets.token_hex(8)
            while db.dataset(handle) is not None:
                handle = secrets.token_hex(8)
            access.handle = handle
            now = time.time()
            row = DatasetRow(handle, owner, uris, readers, body.meta.model_dump(exclude_none=True), now,
                             None if body.ttl_s is None else now + body.ttl_s)
            db.create(row)
            access.status = 201
            return _dataset(row)

    @app.get("/data/{handle}", response_model=m.Dataset, responses=_errors(401, 403, 404, 410, 422),
             summary="A dataset's URIs and metadata, for its owner and readers")
    def get(handle: str, creds: Credentials) -> m.Dataset:
        with _Access(db, "get", handle) as access:
            return _dataset(readable(handle, who(access, creds)))

    @app.delete("/data/{handle}", status_code=204, response_class=Response, responses=_errors(401, 403, 404, 422),
                summary="Forget a dataset (its owner only); its access log stays")
    def delete(handle: str, creds: Credentials) -> Response:
        with _Access(db, "delete", handle) as access:
            owned(handle, who(access, creds))
            db.delete(handle)
            access.status = 204
            return Response(status_code=204)

    @app.get("/data/{handle}/log", response_model=m.AccessLog, responses=_errors(401, 403, 404, 422),
             summary="The dataset's access log, oldest first (its owner only)")
    def log(handle: str, creds: Credentials,
            limit: Annotated[int, Query(ge=1, le=100_000, description="the newest this many entries")] = 1000,
            ) -> m.AccessLog:
        with _Access(db, "log", handle) as access:
            owned(handle, who(access, creds))
            entries = [m.LogEntry(time=_time(e.time), principal=e.principal, handle=e.handle, action=e.action,
                                  status=e.status, bytes=e.bytes, detail=e.detail) for e in db.entries(handle, limit)]
            return m.AccessLog(handle=handle, entries=entries)

    @app.post("/data/sign", response_model=m.Signed, responses=_errors(401, 403, 404, 410, 422),
              summary="A URL of this service that streams the dataset, bound to the requester, expiring")
    def sign(body: m.SignRequest, request: Request, creds: Credentials) -> m.Signed:
        with _Access(db, "sign", body.handle) as access:
            principal = who(access, creds)
            row = readable(body.handle, principal)
            if body.replica >= len(row.uris):
                raise HTTPException(422, f"dataset {row.handle} has {len(row.uris)} URI(s); no replica {body.replica}")
            exp = math.ceil(time.time() + body.ttl_s)
            if row.expires is not None:
                exp = min(exp, math.floor(row.expires))  # a signature never outlives its dataset
            sig = signing.signature(key, row.handle, row.uris[body.replica], principal, exp)
            query = urlencode({"replica": body.replica, "exp": exp, "sub": principal, "sig": sig})
            base = str(request.base_url).rstrip("/")
            return m.Signed(handle=row.handle, signed_uri=f"{base}/d/{row.handle}?{query}", sub=principal,
                            expires_at=_time(exp))

    @app.get("/d/{handle}", response_class=Response,
             responses={200: {"content": _BINARY, "description": "The whole object"},
                        206: {"content": _BINARY, "description": "The requested range, with Content-Range"},
                        **_errors(401, 403, 404, 410, 413, 416, 422, 502, 504)},
             summary="Fetch through a signed URL (made by POST /data/sign) with the bearer token of its `sub`")
    def fetch(handle: str, creds: Credentials,
              replica: Annotated[str, Query(description="index of the dataset's URI")] = "0",
              exp: Annotated[str, Query(description="expiry, seconds since the epoch")] = "",
              sub: Annotated[str, Query(description="the principal it is bound to")] = "",
              sig: Annotated[str, Query(description="hex HMAC-SHA256 of handle|uri|sub|exp")] = "",
              range_header: Annotated[str | None, Header(alias="Range", description="bytes=first-last")] = None,
              ) -> Response:
        with _Access(db, "fetch", handle) as access:
            principal = who(access, creds)
            row = found(handle)
            if not (_small_int(replica) and _small_int(exp) and int(replica) < len(row.uris)):
                raise HTTPException(403, f"dataset {handle}: the signed URL is malformed (replica, exp, sub, sig)")
            uri, expiry = row.uris[int(replica)], int(exp)
            if not signing.verify(key, sig, handle, uri, sub, expiry):
                raise HTTPException(403, f"dataset {handle}: the signature does not match; the URL was forged "
                                         "or altered")
            if time.time() > expiry:
                raise HTTPException(403, f"dataset {handle}: the signed URL expired at {_time(expiry).isoformat()}")
            if principal != sub:
                raise HTTPException(403, f"dataset {handle}: the signed URL is bound to {sub}, not {principal}")
            if not row.may_read(sub):
                raise HTTPException(403, f"dataset {handle}: {sub} may no longer read it")
            live(row)
            try:
                info = data.stat(uri, reach)
            except DataError as e:
                raise _source_error(handle, e) from None
            etag = {} if info.version is None else {"ETag": _etag(info.version)}
            start, end, partial = _range(range_header, info.size, etag)
            limit = max_fetch()
            if end - start > limit:
                raise HTTPException(413, f"dataset {handle}: reading {end - start} bytes of {uri} from byte {start} "
                                         f"exceeds CATS_DATA_MAX_FETCH={limit}; read it by ranges")
            pinned = info if info.version is not None else None
            try:
                first = data.read(uri, start, min(CHUNK, end - start), expect=pinned, reach=reach) \
                    if end > start else b""
            except DataError as e:
                raise _source_error(handle, e) from None
            headers = {"Accept-Ranges": "bytes", "Content-Length": str(end - start), **etag}
            if partial:
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
            access.status, access.bytes = (206 if partial else 200), end - start
            body = _stream(db, access, uri, reach, pinned, first, start, end)
            return StreamingResponse(body, status_code=access.status, headers=headers,
                                     media_type="application/octet-stream")

    return app


def _small_int(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 12


def _etag(version: str) -> str:
    return version if version.startswith(('"', 'W/"')) else '"' + version.replace('"', "") + '"'


def _stream(db: ServiceDB, access: _Access, uri: str, reach: Reach, pinned: Info | None, first: bytes, start: int,
            end: int) -> Iterator[bytes]:
    """The first chunk (read before answering, so source errors still get their status), then the rest.

    A failure after the headers went out can only cut the connection short: the client then sees
    fewer bytes than Content-Length and fails rather than keeping a truncated read. It is logged.
    """
    yield first
    pos = start + len(first)
    while pos < end:
        try:
            chunk = data.read(uri, pos, min(CHUNK, end - pos), expect=pinned, reach=reach)
            if not chunk:
                raise DataError(f"{uri} ended at byte {pos}, before the {end} its size promised", uri)
        except DataError as e:
            db.log(LogRow(time.time(), access.principal, access.handle, "fetch", 502, pos - start,
                          f"aborted after {pos - start} bytes: {e}"))
            raise
        yield chunk
        pos += len(chunk)
