"""How views touch bytes: pinned range reads (counted), coalesced and fetched in parallel, and the
in-process cache of parsed footers and headers that every backend shares.

Every byte a view reads goes through `cats.data.read(uri, offset, length, expect=pinned, cache=cache)`,
so a changed source raises DataIntegrityError and a `Cache` serves repeated ranges from disk; or, read
on someone else's behalf, through `reach=` instead (cats.data.reach).
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cats import data
from cats.cas.reader import RangeFile
from cats.data.resolvers import Info, env_number
from cats.errors import ViewError

if TYPE_CHECKING:
    from cats.data.cache import Cache
    from cats.data.reach import Reach

PIECE = 16 << 20  # the most one request transfers: bigger ranges are split and fetched in parallel
WORKERS = 8  # parallel requests per fetch, unless CATS_VIEW_WORKERS says otherwise
GAP_EXACT = 0  # Parquet and Arrow ranges: only touching ones are merged, no byte is read twice or in vain
MAX_REQUESTS = 4096  # past this many ranges, neighbours are merged (reading the gaps) to bound the requests
_METER_LOCK = threading.Lock()


@dataclass
class Meter:
    """What one `materialize` (or anything else given it) read: range requests and the bytes they returned.

    Reads served by a `Cache` count as well (the cache decides whether they reach the source); the
    server side of a transfer is what tests and the benchmark measure to tell the two apart.
    """

    requests: int = 0
    bytes: int = 0


class Reader:
    """Range reads of one pinned source, counted into an optional Meter and served through an optional Cache,
    or read within a `Reach` (someone else's reads: never cached)."""

    def __init__(self, info: Info, cache: Cache | None = None, meter: Meter | None = None,
                 reach: Reach | None = None) -> None:
        self.info, self.cache, self.meter, self.reach = info, cache, meter, reach
        self.uri = info.uri
        self._expect = info if info.version is not None else None  # a view made by hand without a pin reads unpinned

    def read(self, offset: int, length: int) -> bytes:
        out = data.read(self.uri, offset, length, expect=self._expect, cache=self.cache, reach=self.reach)
        if self.meter is not None:
            with _METER_LOCK:
                self.meter.requests += 1
                self.meter.bytes += len(out)
        if len(out) != length:
            raise ViewError(f"{self.uri}: asked for {length} bytes at {offset}, got {len(out)}; the source is "
                            f"shorter than the {self.info.size} bytes it had when the view was made", self.uri)
        return out

    def fetch(self, ranges: Sequence[tuple[int, int]], gap: int = GAP_EXACT,
              max_requests: int = MAX_REQUESTS) -> list[tuple[int, bytes | bytearray]]:
        """The (start, end) ranges' bytes as (start, buffer) per coalesced range, sorted; parallel requests.

        Ranges closer than `gap` bytes are merged (reading the gap too); a range longer than PIECE is
        fetched as several requests into one buffer.
        """
        merged = coalesce(ranges, gap, max_requests)
        pieces = [(start, min(end, p + PIECE) - p, p - start, i)
                  for i, (start, end) in enumerate(merged) for p in range(start, end, PIECE)]
        buffers: list[bytes | bytearray] = [bytearray(end - start) if end - start > PIECE else b""
                                            for start, end in merged]

        def one(piece: tuple[int, int, int, int]) -> None:
            start, n, at, i = piece
            chunk = self.read(start + at, n)
            if isinstance(buffers[i], bytearray):
                buffers[i][at:at + n] = chunk  # type: ignore[index]
            else:
                buffers[i] = chunk

        threads = min(workers(), len(pieces))
        if threads <= 1:
            for piece in pieces:
                one(piece)
        else:
            with ThreadPoolExecutor(threads, thread_name_prefix="cats-view") as pool:
                list(pool.map(one, pieces))  # list(): re-raise the first failure
        return [(start, buffers[i]) for i, (start, _) in enumerate(merged)]


def workers() -> int:
    """Parallel range requests per fetch: `CATS_VIEW_WORKERS` (read on each use), default 8, at least 1."""
    return max(1, int(env_number("CATS_VIEW_WORKERS", WORKERS)))


def coalesce(ranges: Sequence[tuple[int, int]], gap: int = GAP_EXACT,
             max_requests: int = MAX_REQUESTS) -> list[tuple[int, int]]:
    """Sorted, merged (start, end) ranges: overlapping ones and those at most `gap` bytes apart become one.

    If more than `max_requests` remain, the gap doubles until they fit (a few gap bytes cost less
    than thousands of requests).
    """
    spans = sorted((s, e) for s, e in ranges if e > s)
    while True:
        out: list[tuple[int, int]] = []
        for s, e in spans:
            if out and s - out[-1][1] <= gap:
                if e > out[-1][1]:
                    out[-1] = (out[-1][0], e)
            else:
                out.append((s, e))
        if len(out) <= max_requests:
            return out
        gap = max(2 * gap, 4096)


class SparseFile(RangeFile):
    """A seekable file of `size` bytes of which only some ranges are held; pyarrow reads it like the source.

    Reads inside held ranges are served from memory without copying; any other read is fetched
    through `reader` and counted in `misses`, so a decoder wanting more than planned still works
    and the surplus shows up in tests.
    """

    def __init__(self, size: int, segments: list[tuple[int, bytes | bytearray]], reader: Reader) -> None:
        super().__init__(size, self.get, reader.uri)  # type: ignore[arg-type]  # memoryviews read like bytes
        self.reader = reader
        self._segments = sorted(segments, key=lambda s: s[0])
        self._starts = [s for s, _ in self._segments]
        self.misses: list[tuple[int, int]] = []

    def get(self, offset: int, n: int) -> memoryview | bytes:
        """Bytes [offset, offset+n), from a held range when one covers it, else from the source."""
        i = bisect.bisect_right(self._starts, offset) - 1
        if i >= 0:
            start, buf = self._segments[i]
            if offset + n <= start + len(buf):
                return memoryview(buf)[offset - start:offset - start + n]
        self.misses.append((offset, n))
        return self.reader.read(offset, n)


# -- the parsed footers and headers, once per (uri, version) per process -----------------------------------

_SOURCES: OrderedDict[tuple[str, str, str, int], Any] = OrderedDict()
_SOURCES_LOCK = threading.Lock()
_SOURCES_MAX = 128


def source(fmt: str, reader: Reader, load: Callable[[Reader], Any]) -> Any:
    """The format's parsed metadata for the reader's pinned source, loaded at most once per process per version.

    A source without a version token is parsed on every use: nothing would tell that it changed.
    """
    info = reader.info
    key = None if info.version is None else (info.uri, info.version, fmt, info.size)
    if key is not None:
        with _SOURCES_LOCK:
            if key in _SOURCES:
                _SOURCES.move_to_end(key)
                return _SOURCES[key]
    parsed = load(reader)
    if key is not None:
        with _SOURCES_LOCK:
            _SOURCES[key] = parsed
            while len(_SOURCES) > _SOURCES_MAX:
                _SOURCES.popitem(last=False)
    return parsed


def forget() -> None:
    """Drop every parsed footer and header held in this process (tests and benchmarks use it)."""
    with _SOURCES_LOCK:
        _SOURCES.clear()


def tail(reader: Reader, n: int) -> tuple[int, bytes]:
    """(offset, bytes) of the last n bytes of the source (all of it if smaller)."""
    size = reader.info.size
    start = max(0, size - n)
    return start, reader.read(start, size - start) if size > start else b""
