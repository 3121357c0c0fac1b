"""Data references by URI: one small interface, resolvers chosen by scheme (as fsspec does).

    stat("s3://bucket/data.parquet")                  -> Info(uri, size, version)
    read("https://host/file", offset=100, length=10)  -> exactly those bytes, fetched by range
    open("ipfs://CID/table.parquet")                  -> a seekable file pyarrow can read
    info = pin(uri); read(uri, expect=info)           -> DataIntegrityError if the source changed

Schemes: mem://, file:// (inside `CATS_DATA_ROOTS`), http(s)://, s3://, ipfs://. Others register
a factory with `register`; factories are imported lazily, so boto3 loads only for s3://.
"""

from __future__ import annotations

from collections.abc import Callable

from cats.data.cache import Cache
from cats.data.resolvers import Info, RangeFile, Resolver
from cats.data.uri import parse
from cats.errors import DataError, UnsupportedScheme

__all__ = ["Cache", "Info", "RangeFile", "Resolver", "open", "pin", "read", "register", "resolve", "stat", "write"]

SCHEMES: dict[str, Callable[[str], Resolver]] = {}


def register(scheme: str, factory: Callable[[str], Resolver]) -> None:
    """Make `factory(uri)` the resolver for `scheme://` URIs (replacing any before it)."""
    SCHEMES[scheme.lower()] = factory


def resolve(uri: str) -> Resolver:
    """The resolver for the URI's scheme; UnsupportedScheme if none, MalformedURI if it is no URI."""
    scheme = parse(uri).scheme
    if scheme not in SCHEMES:
        raise UnsupportedScheme(f"no resolver for {scheme}:// (in {uri}); supported: "
                                f"{', '.join(s + '://' for s in sorted(SCHEMES))}", uri)
    return SCHEMES[scheme](uri)


def stat(uri: str) -> Info:
    return resolve(uri).stat(uri)


def read(uri: str, offset: int = 0, length: int | None = None, expect: Info | None = None,
         cache: Cache | None = None) -> bytes:
    """Bytes [offset, offset+length) of the URI (to the end if length is None), fetched by range.

    With `cache`, a range read before at the same version is served from local disk (see cats.data.cache).
    """
    if cache is not None:
        return cache.read(uri, offset, length, expect)
    return resolve(uri).read(uri, offset, length, expect)


def open(uri: str, expect: Info | None = None) -> RangeFile:
    """A seekable read-only binary file over range reads (named like fsspec's; shadows the builtin here only)."""
    return resolve(uri).open(uri, expect)


def write(uri: str, data: bytes) -> Info:
    """Store data at the URI (mem://, file://, s3://) and report its new version."""
    return resolve(uri).write(uri, data)


def pin(uri: str) -> Info:
    """Record the source's current version, for `read(..., expect=info)` to insist on later."""
    info = stat(uri)
    if info.version is None:
        raise DataError(f"{uri} has no version token (no ETag or Last-Modified), so it cannot be pinned", uri)
    return info


def _mem(uri: str) -> Resolver:
    from cats.data.resolvers.mem import MemResolver

    return MemResolver()


def _file(uri: str) -> Resolver:
    from cats.data.resolvers.file import FileResolver

    return FileResolver()


def _http(uri: str) -> Resolver:
    from cats.data.resolvers.http import HTTPResolver

    return HTTPResolver()


def _s3(uri: str) -> Resolver:
    from cats.data.resolvers.s3 import S3Resolver

    return S3Resolver()


def _ipfs(uri: str) -> Resolver:
    from cats.data.resolvers.ipfs import IPFSResolver

    return IPFSResolver()


def _not_yet(uri: str) -> Resolver:
    scheme = parse(uri).scheme
    raise UnsupportedScheme(f"{scheme}:// is not supported yet (in {uri})", uri)


register("mem", _mem)
register("file", _file)
register("http", _http)
register("https", _http)
register("s3", _s3)
register("ipfs", _ipfs)
register("gs", _not_yet)
