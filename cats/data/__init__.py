"""Data references by URI: one small interface, resolvers chosen by scheme (as fsspec does).

    stat("s3://bucket/data.parquet")                  -> Info(uri, size, version)
    read("https://host/file", offset=100, length=10)  -> exactly those bytes, fetched by range
    open("ipfs://CID/table.parquet")                  -> a seekable file pyarrow can read
    info = pin(uri); read(uri, expect=info)           -> DataIntegrityError if the source changed

Schemes: mem://, file:// (inside `CATS_DATA_ROOTS`), http(s)://, s3://, ipfs://. Others register
a factory with `register`; factories are imported lazily, so boto3 loads only for s3://. Resolvers
are built once per scheme and settings and shared (one boto3 client for every s3:// read). Every
resolver is confined to a `Reach` (cats.data.reach): a user's own by default, the Data Service's
stricter one when it reads for a caller.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from cats.data.cache import Cache
from cats.data.reach import Reach
from cats.data.resolvers import Info, RangeFile, Resolver
from cats.data.uri import parse
from cats.errors import DataError, UnsupportedScheme

__all__ = ["Cache", "Info", "RangeFile", "Reach", "Resolver", "open", "pin", "read", "register", "resolve", "stat",
           "write"]

SCHEMES: dict[str, Callable[[str, Reach], Resolver]] = {}
# What a scheme's resolvers depend on besides the scheme; schemes listed here share one instance per value.
OPTIONS: dict[str, Callable[[Reach], Hashable]] = {}
_SHARED: OrderedDict[Hashable, Resolver] = OrderedDict()  # (scheme, factory, options) -> resolver, oldest first
_SHARED_MAX = 64
_SHARED_LOCK = threading.Lock()


def register(scheme: str, factory: Callable[[str, Reach], Resolver],
             options: Callable[[Reach], Hashable] | None = None) -> None:
    """Make `factory(uri, reach)` the resolver for `scheme://` URIs (replacing any before it).

    With `options`, resolvers are built once per value of `options(reach)` (everything the factory
    reads: the reach's parts it uses, the settings in the environment) and shared by every URI and
    thread of the scheme, as fsspec caches its filesystems: an S3 run reuses one client and its
    connections. Such a factory must not depend on the URI, and its resolver must be thread-safe.
    """
    SCHEMES[scheme.lower()] = factory
    if options is None:
        OPTIONS.pop(scheme.lower(), None)
    else:
        OPTIONS[scheme.lower()] = options


def resolve(uri: str, reach: Reach | None = None) -> Resolver:
    """The resolver for the URI's scheme, confined to `reach` (default: `Reach.local()`, a user's own process).

    UnsupportedScheme if no resolver takes the scheme, MalformedURI if it is no URI.
    """
    scheme = parse(uri).scheme
    factory = SCHEMES.get(scheme)
    if factory is None:
        raise UnsupportedScheme(f"no resolver for {scheme}:// (in {uri}); supported: "
                                f"{', '.join(s + '://' for s in sorted(SCHEMES))}", uri)
    reach = reach or Reach.local()
    options = OPTIONS.get(scheme)
    if options is None:
        return factory(uri, reach)
    key = (scheme, factory, options(reach))
    with _SHARED_LOCK:  # built under the lock: threads reading a new source at once build one resolver
        resolver = _SHARED.get(key)
        if resolver is None:
            resolver = _SHARED[key] = factory(uri, reach)
            if len(_SHARED) > _SHARED_MAX:
                _SHARED.popitem(last=False)
        else:
            _SHARED.move_to_end(key)
        return resolver


def stat(uri: str, reach: Reach | None = None) -> Info:
    return resolve(uri, reach).stat(uri)


def read(uri: str, offset: int = 0, length: int | None = None, expect: Info | None = None,
         cache: Cache | None = None, reach: Reach | None = None) -> bytes:
    """Bytes [offset, offset+length) of the URI (to the end if length is None), fetched by range.

    With `cache`, a range read before at the same version is served from local disk (see cats.data.cache),
    which reads as a user's own process does.
    """
    if cache is not None:
        if reach is not None:
            raise ValueError("a cached read is a user's own read: pass cache or reach, not both")
        return cache.read(uri, offset, length, expect)
    return resolve(uri, reach).read(uri, offset, length, expect)


def open(uri: str, expect: Info | None = None, reach: Reach | None = None) -> RangeFile:
    """A seekable read-only binary file over range reads (named like fsspec's; shadows the builtin here only)."""
    return resolve(uri, reach).open(uri, expect)


def write(uri: str, data: bytes) -> Info:
    """Store data at the URI (mem://, file://, s3://) and report its new version."""
    return resolve(uri).write(uri, data)


def pin(uri: str, reach: Reach | None = None) -> Info:
    """Record the source's current version, for `read(..., expect=info)` to insist on later."""
    info = stat(uri, reach)
    if info.version is None:
        raise DataError(f"{uri} has no version token (no ETag or Last-Modified), so it cannot be pinned", uri)
    return info


def _environ(*names: str) -> tuple[str | None, ...]:
    return tuple(os.environ.get(name) for name in names)


def _mem(uri: str, reach: Reach) -> Resolver:
    from cats.data.resolvers.mem import MemResolver

    return MemResolver()


def _file(uri: str, reach: Reach) -> Resolver:
    from cats.data.resolvers.file import FileResolver

    return FileResolver(reach)


def _http(uri: str, reach: Reach) -> Resolver:
    from cats.data.resolvers.http import HTTPResolver

    return HTTPResolver(reach)


def _s3(uri: str, reach: Reach) -> Resolver:
    from cats.data.resolvers.s3 import S3Resolver

    return S3Resolver()


def _s3_options(reach: Reach) -> Hashable:
    """The endpoint, the client's timeouts and retries, and the AWS environment (credentials, region,
    profile, config files) a boto3 client is built from."""
    aws = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    return (*_environ("CATS_S3_ENDPOINT", "CATS_DATA_TIMEOUT", "CATS_DATA_RETRIES"), aws)


def _ipfs(uri: str, reach: Reach) -> Resolver:
    from cats.data.resolvers.ipfs import IPFSResolver

    return IPFSResolver(reach)


def _not_yet(uri: str, reach: Reach) -> Resolver:
    scheme = parse(uri).scheme
    raise UnsupportedScheme(f"{scheme}:// is not supported yet (in {uri})", uri)


register("mem", _mem, lambda reach: ())
register("file", _file, lambda reach: reach)
register("http", _http, lambda reach: reach.hosts)
register("https", _http, lambda reach: reach.hosts)
register("s3", _s3, _s3_options)
register("ipfs", _ipfs, lambda reach: (reach, *_environ("CATS_STORE", "CATS_IPFS_API", "CATS_HOME", "HOME")))
register("gs", _not_yet)
