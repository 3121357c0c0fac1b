"""The one interface every URI scheme implements, and the pieces they share.

A resolver implements `stat` and `_fetch` (a bounded range read that also reports the version it
read); `read`, `open` and the limits and version checks are common, so every scheme enforces them
the same way.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

from cats.cas.reader import RangeFile
from cats.errors import CatsError, DataError, DataIntegrityError, FetchTooLarge, UnsupportedScheme

GiB = 1 << 30


@dataclass(frozen=True, slots=True)
class Info:
    """What `stat` and `pin` report: size, and a token that changes when the bytes do (None: the source has none)."""

    uri: str
    size: int
    version: str | None


def env_number(name: str, default: float) -> float:
    """A numeric setting from the environment, read on each use so tests and workers can change it."""
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise CatsError(f"{name}={text!r} is not a number") from None
    if value < 0:
        raise CatsError(f"{name}={text!r} must not be negative")
    return value


def max_fetch() -> int:
    """The most bytes one read may transfer: `CATS_DATA_MAX_FETCH`, default 1 GiB."""
    return int(env_number("CATS_DATA_MAX_FETCH", GiB))


class Resolver(ABC):
    """Reads (and where the scheme can, writes) the bytes a URI names, by byte range."""

    @abstractmethod
    def stat(self, uri: str) -> Info: ...

    @abstractmethod
    def _fetch(self, uri: str, offset: int, n: int) -> tuple[bytes, str | None]:
        """At most n (> 0) bytes from offset, fewer at the end, and the version they were read at (None: unknown).

        Implementations must not transfer more than n bytes where the source supports ranges.
        """

    def read(self, uri: str, offset: int = 0, length: int | None = None, expect: Info | None = None) -> bytes:
        """Bytes [offset, offset+length) (to the end if length is None); with `expect`, only from that version."""
        if offset < 0 or (length is not None and length < 0):
            raise DataError(f"offset and length must not be negative (reading {uri})", uri)
        limit = max_fetch()
        n = limit + 1 if length is None else min(length, limit + 1)  # one byte more tells "too large"
        if n == 0:
            return b""
        data, version = self._fetch(uri, offset, n)
        if expect is not None:
            self._check(uri, expect, version)
        if len(data) > limit:
            raise FetchTooLarge(f"reading {uri} from byte {offset} would transfer more than CATS_DATA_MAX_FETCH="
                                f"{limit} bytes; read it by ranges (offset, length) or raise the limit", uri)
        return data

    def open(self, uri: str, expect: Info | None = None) -> RangeFile:
        """A seekable read-only file; its reads never mix two versions of the source (it pins on open)."""
        info = self.stat(uri)
        if expect is not None:
            self._check(uri, expect, info.version)
        pinned = expect or (info if info.version is not None else None)
        return RangeFile(info.size, lambda offset, n: self.read(uri, offset, n, expect=pinned), uri)

    def write(self, uri: str, data: bytes) -> Info:
        raise UnsupportedScheme(f"cannot write {uri}: {uri.partition(':')[0]}:// is read-only", uri)

    def _check(self, uri: str, expect: Info, version: str | None) -> None:
        if version is None:  # the response carried no token (e.g. a 416): ask the source
            version = self.stat(uri).version
        if version != expect.version:
            raise DataIntegrityError(f"{uri} changed since it was pinned: version {expect.version} then, "
                                     f"{version} now", uri)
